"""Service policy matching (SQL LIKE patterns) and precedence, attribute by attribute."""

from __future__ import annotations

import pytest

from imbill.domain.config import Account, ServicePolicy
from imbill.domain.catalogue import MESSAGING_CATALOGUE
from imbill.domain.patterns import like, pattern_items
from imbill.domain.policy import DEFAULT, PolicyMatch, effective_attributes, explain
from tests.builders import ALICE, BOB, DOMAIN, IM_ATTRIBUTES, POLICY, ConfigBuilder, checklist

LIKE_CASES = [
    ("%", "sip.acme.example", True),
    ("%", "", True),
    ("sip.acme.example", "SIP.Acme.Example", True),
    ("%.example", "sip.acme.example", True),
    ("%.example", "sip.acme.example.org", False),
    ("sip._cme.example", "sip.acme.example", True),
    ("sip._cme.example", "sip.cme.example", False),
    ("sip.acme.example", "sipXacme.example", False),
    ("a+b(c)[d]*", "a+b(c)[d]*", True),
    ("a+b(c)[d]*", "aab(c)[d]", False),
    ("Cisco%, Sipura%, Grandstream%", "Grandstream GXP2000", True),
    ("Cisco%, Sipura%, Grandstream%", "sipura/SPA-2000", True),
    ("Cisco%, Sipura%, Grandstream%", "Linksys/SPA941-5.1.8", False),
    ("Linksys/SPA941-5.1.8", "Linksys/SPA941-5.1.8", True),
    ("Linksys/SPA941-5.1.8", "Linksys/SPA941-5.1.9", False),
    ("  acme.example ,, globex.example  ", "globex.example", True),
    ("", "anything", False),
    (None, "anything", False),
    (" , ", "", False),
    ("100%", "100% sure", True),
    ("%\\%", "a\\", True),
]


@pytest.mark.parametrize(("pattern", "text", "expected"), LIKE_CASES)
def test_like(pattern: str | None, text: str, expected: bool) -> None:
    assert like(pattern, text) is expected


def test_pattern_items() -> None:
    assert pattern_items(" Cisco%,Sipura% , ,Grandstream% ") == ("Cisco%", "Sipura%", "Grandstream%")


def with_policies(*policies: ServicePolicy, static: str | None = None) -> ConfigBuilder:
    return checklist().define(*policies, Account(ALICE, "Acme", "IM product", service_policy=static))


WIDE = ServicePolicy("Wide", "messaging", 5, "%", "", {"msg.billing_unit_size": 60, "msg.outgoing_aaa": True})
ACME = ServicePolicy("Acme domain", "messaging", 10, "%.acme.example", "", {"msg.billing_unit_size": 100})
TIE = ServicePolicy("Acme alike", "messaging", 10, "sip.%", "", {"msg.billing_unit_size": 140})
STATIC = ServicePolicy("Static", "messaging", 0, "nomatch.invalid", "", {"msg.transport_protocol": "SMPP"})
VOICE = ServicePolicy("Phones", "voice", 1, "Linksys%", "", {"sip.keep_alive_interval": 30})

# (case id, config, account's policy, to_domain, winner, static, billing_unit_size, its source)
PRECEDENCE = [
    ("% with match priority 5 matches any domain", checklist(), None, "anywhere.example", POLICY, None, 60, POLICY),
    ("highest match priority wins", with_policies(WIDE, ACME), None, DOMAIN, "Acme domain", None, 100,
     "Acme domain"),
    ("a pattern that does not match is not considered (then a tie at 5: name ascending)",
     with_policies(WIDE, ACME), None, "globex.example", POLICY, None, 60, POLICY),
    ("equal priorities: name ascending", with_policies(ACME, TIE), None, DOMAIN, "Acme alike", None, 140,
     "Acme alike"),
    ("static applies whatever its pattern", with_policies(STATIC, static="Static"), "Static", DOMAIN, POLICY,
     "Static", 60, POLICY),
    ("static attribute beats a higher dynamic one",
     with_policies(ACME, ServicePolicy("Mine", "messaging", 0, None, "", {"msg.billing_unit_size": 70}),
                   static="Mine"), "Mine", DOMAIN, "Acme domain", "Mine", 70, "Mine"),
    ("voice static policy does not apply to messaging", with_policies(VOICE, static="Phones"), "Phones", DOMAIN,
     POLICY, None, 60, POLICY),
    ("nothing matches: catalogue default", checklist().remove("service_policy", POLICY), None, DOMAIN, None, None,
     MESSAGING_CATALOGUE["msg.billing_unit_size"].default, DEFAULT),
]


@pytest.mark.parametrize(("config", "assigned", "domain", "winner", "static", "size", "source"),
                         [c[1:] for c in PRECEDENCE], ids=[c[0] for c in PRECEDENCE])
def test_precedence(config, assigned, domain, winner, static, size, source) -> None:
    assert config.env.accounts[ALICE].service_policy == assigned
    effective = effective_attributes(config.env, account=ALICE, to_domain=domain)
    assert (effective.winner, effective.static) == (winner, static)
    assert effective.values["msg.billing_unit_size"] == size
    assert effective.source["msg.billing_unit_size"] == source
    assert effective.service_policy == (static or winner)


def test_static_overrides_per_attribute_only() -> None:
    config = with_policies(STATIC, static="Static")
    effective = effective_attributes(config.env, account=ALICE, to_domain=DOMAIN)
    assert effective.values["msg.transport_protocol"] == "SMPP"
    assert effective.source["msg.transport_protocol"] == "Static"
    for key in set(IM_ATTRIBUTES) - {"msg.transport_protocol"}:
        assert (effective.values[key], effective.source[key]) == (IM_ATTRIBUTES[key], POLICY)
    assert effective.source["msg.external_routing"] == DEFAULT
    assert effective.values["msg.external_routing"] == MESSAGING_CATALOGUE["msg.external_routing"].default
    assert effective.policies == ("Static", POLICY)


def test_matched_lists_every_match_in_order() -> None:
    effective = effective_attributes(with_policies(WIDE, ACME, TIE).env, account=BOB, to_domain=DOMAIN)
    assert effective.matched == (PolicyMatch("Acme alike", 10), PolicyMatch("Acme domain", 10),
                                 PolicyMatch(POLICY, 5), PolicyMatch("Wide", 5))


def test_policy_without_attributes_does_not_contribute() -> None:
    config = with_policies(ServicePolicy("Empty", "messaging", 0, None, "", {}), static="Empty")
    effective = effective_attributes(config.env, account=ALICE, to_domain=DOMAIN)
    assert effective.service_policy == "Empty"
    assert effective.policies == (POLICY,)


def test_voice_policies_match_the_user_agent() -> None:
    config = with_policies(VOICE)
    effective = effective_attributes(config.env, account=ALICE, to_domain=DOMAIN, user_agent="linksys/SPA941",
                                     service_type="voice")
    assert effective.winner == "Phones" and effective.values["sip.keep_alive_interval"] == 30
    assert effective_attributes(config.env, account=ALICE, to_domain=DOMAIN, user_agent="Yealink",
                                service_type="voice").winner is None


def test_a_changed_policy_is_seen_at_once() -> None:
    config = checklist()
    assert effective_attributes(config.env, account=ALICE, to_domain=DOMAIN).values["msg.billing_unit_size"] == 60
    config.define(ServicePolicy(POLICY, "messaging", 5, "%", "", {**IM_ATTRIBUTES, "msg.billing_unit_size": 70}))
    assert effective_attributes(config.env, account=ALICE, to_domain=DOMAIN).values["msg.billing_unit_size"] == 70


def test_explain_rows() -> None:
    config = with_policies(WIDE, ACME, STATIC, VOICE, static="Static")
    explanation = explain(config.env, account=ALICE, to_domain="globex.example")
    roles = [(row.name, row.role) for row in explanation.policies]
    assert roles == [("Static", "static"), (POLICY, "winner"), ("Wide", "matched"), ("Acme domain", "not matched")]
    rows = {row.attribute: row for row in explanation.attributes}
    transport = rows["msg.transport_protocol"]
    assert (transport.value, transport.source, transport.static_value, transport.dynamic_value) == \
        ("SMPP", "Static", "SMPP", "SIP")
    assert rows["msg.billing_unit_size"].source == POLICY
    assert "msg.bind_as" not in rows
    everything = explain(config.env, account=ALICE, to_domain=DOMAIN, all_attributes=True)
    assert {row.attribute for row in everything.attributes} == set(MESSAGING_CATALOGUE)
