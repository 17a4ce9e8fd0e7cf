"""Rating: tables of attempts against the operator checklist and what rating decides."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from tests.builders import ALICE, BOB, DOMAIN, ENV, IM_ATTRIBUTES, POLICY, T0, ConfigBuilder, attempt, checklist
from imbill.schemas.codec import decode_event, encode_event
from imbill.domain.config import (Account, Destination, Product, Rate, ServicePolicy, ServiceTypes, Tariff, UsageCharge,
                                   Vendor, VendorConnection)
from imbill.domain.rating import (REASON_CODES, Rated, Refusal, account_push_events, charge_of, rate_attempt,
                                  rejection_of)

LATER = T0 + timedelta(days=30)
ROUTED = {**IM_ATTRIBUTES, "msg.external_routing": True}


def d(text: str) -> Decimal:
    return Decimal(text)


def off_net_rates(builder: ConfigBuilder) -> ConfigBuilder:
    """Customer rates for 44 and 447 and |, and two external vendors for Messaging."""
    return builder.define(
        Rate("B", "44", d("0.10"), T0), Rate("B", "447", d("0.20"), T0), Rate("B", "|", d("0.50"), T0),
        Vendor("Carrier One"), Vendor("Carrier Two"), Vendor("Carrier Three"),
        Tariff("C1", "USD", applied_to="vendor"), Rate("C1", "44", d("0.03"), T0),
        Tariff("C2", "EUR", applied_to="vendor"), Rate("C2", "447", d("0.02"), T0),
        Tariff("C3", "USD", applied_to="vendor"), Rate("C3", "33", d("0.01"), T0),
        VendorConnection("Carrier One", "SMPP out", "C1"),
        VendorConnection("Carrier Two", "SIP out", "C2"),
        VendorConnection("Carrier Three", "France only", "C3"),
    )


def rate(builder: ConfigBuilder, **fields) -> Rated | Refusal:
    return rate_attempt(attempt(**fields), builder.state, rated_at=LATER)


# (case id, config, attempt fields, expected Rated fields); the seed's examples included.
RATED = [
    ("on-net number is MSGN", checklist(), {},
     dict(on_net=True, destination=BOB, rate_code="MSGN", amount=d("0.05"), currency="USD", tariff="B",
          vendor="Internal vendor", connection="Internal messaging via SIP", vendor_tariff="A",
          vendor_cost=d("0.00"), vendor_currency="USD", service_policy=POLICY, policies=(POLICY,))),
    ("on-net via alias is MSGN", checklist(), {"to_user": "bob"},
     dict(on_net=True, destination="bob", rate_code="MSGN", amount=d("0.05"))),
    ("on-net national number translated to E.164", checklist(), {"to_user": "01632960002"},
     dict(on_net=True, destination=BOB, rate_code="MSGN")),
    ("MSGN whatever the number (on-net beats prefix rates)", off_net_rates(checklist(attributes=ROUTED)), {},
     dict(on_net=True, rate_code="MSGN", unit_price=d("0.05"))),
    ("150 characters at billing_unit_size 60 are 3 units", checklist(), {"body_chars": 150},
     dict(billing_units=3, amount=d("0.15"))),
    ("60 characters are 1 unit, 61 are 2", checklist(), {"body_chars": 61}, dict(billing_units=2)),
    ("billing_unit_size undefined: 1 unit whatever the length",
     checklist(attributes={k: v for k, v in IM_ATTRIBUTES.items() if k != "msg.billing_unit_size"}),
     {"body_chars": 5000}, dict(billing_units=1, amount=d("0.05"))),
    ("tariff currency EUR", checklist(currency="EUR"), {}, dict(currency="EUR", vendor_currency="EUR")),
    ("JPY has no minor units, half rounds up", checklist(currency="JPY", msgn_price="1.5"),
     {"body_chars": 180}, dict(billing_units=3, amount=d("5"), currency="JPY")),
    ("KWD has 3 minor units", checklist(currency="KWD", msgn_price="0.0125"), {"body_chars": 150},
     dict(amount=d("0.038"))),
    ("rate in force at the attempt time", checklist().define(Rate("B", "MSGN", d("0.08"), T0 + timedelta(days=10))),
     {"received_at": T0 + timedelta(days=9)}, dict(unit_price=d("0.05"), rate_effective_from=T0)),
    ("a newer rate applies from its effective_from",
     checklist().define(Rate("B", "MSGN", d("0.08"), T0 + timedelta(days=10))),
     {"received_at": T0 + timedelta(days=10)}, dict(unit_price=d("0.08"), rate_effective_from=T0 + timedelta(days=10))),
    ("off-net longest prefix 447", off_net_rates(checklist(attributes=ROUTED)), {"to_user": "447700900123"},
     dict(on_net=False, rate_code="447", unit_price=d("0.20"), destination="447700900123")),
    ("off-net prefix 44", off_net_rates(checklist(attributes=ROUTED)), {"to_user": "442079460000"},
     dict(rate_code="44", unit_price=d("0.10"), vendor="Carrier One", connection="SMPP out",
          vendor_tariff="C1", vendor_cost=d("0.03"), vendor_currency="USD",
          routing=("Carrier One/SMPP out",))),
    ("off-net | matches any number", off_net_rates(checklist(attributes=ROUTED)), {"to_user": "+33612345678"},
     dict(rate_code="|", unit_price=d("0.50"), vendor="Carrier Three", destination="33612345678")),
    ("external routing: cheapest vendor first", off_net_rates(checklist(attributes=ROUTED)),
     {"to_user": "07700900123", "body_chars": 120},
     dict(destination="447700900123", vendor="Carrier Two", connection="SIP out", vendor_cost=d("0.04"),
          vendor_currency="EUR", amount=d("0.40"), routing=("Carrier Two/SIP out", "Carrier One/SMPP out"))),
    ("equal cost: lower routing preference first",
     off_net_rates(checklist(attributes=ROUTED)).define(
         Rate("C1", "447", d("0.02"), T0), VendorConnection("Carrier One", "SMPP out", "C1", routing_preference=0),
         VendorConnection("Carrier Two", "SIP out", "C2", routing_preference=1)),
     {"to_user": "447700900123"}, dict(vendor="Carrier One", routing=("Carrier One/SMPP out", "Carrier Two/SIP out"))),
    ("local lookup off: an account's number is rated off-net",
     off_net_rates(checklist(attributes={**ROUTED, "msg.local_lookup": False})), {}, dict(on_net=False, rate_code="44")),
    ("no internal SIP-UA connection: vendor fields null",
     checklist().remove("vendor_connection", "Internal vendor/Internal messaging via SIP"), {},
     dict(vendor=None, connection=None, vendor_tariff=None, vendor_cost=d("0"), vendor_currency=None)),
    ("incoming is free, units counted, charged to the recipient", checklist(),
     {"direction": "incoming", "from_user": "+33612345678", "to_user": "alice", "body_chars": 150},
     dict(account=ALICE, direction="incoming", amount=d("0.00"), billing_units=3, rate_code="", tariff="",
          vendor=None, currency="USD")),
    ("incoming to a national number of an account", checklist(),
     {"direction": "incoming", "to_user": "01632960002"}, dict(account=BOB, destination="01632960002")),
    ("static policy overrides per attribute",
     checklist().define(ServicePolicy("Long SMS", "messaging", 0, None, "", {"msg.billing_unit_size": 160}),
                        Account(ALICE, "Acme", "IM product", aliases=("alice",), service_policy="Long SMS")),
     {"body_chars": 200}, dict(billing_units=2, transport_protocol="SIP", on_net=True, service_policy="Long SMS",
                               policies=("Long SMS", POLICY))),
    ("product policy push_events",
     checklist().define(ServicePolicy("CMMS", "messaging", 0, None, "", {"audiocodes.cmms.push_events": True}),
                        Product("IM product", ("messaging",), (UsageCharge("messaging", "PortaSIP", "B"),), "CMMS")),
     {}, dict(push_events=True)),
]


@pytest.mark.parametrize(("config", "fields", "expected"), [c[1:] for c in RATED], ids=[c[0] for c in RATED])
def test_rated(config: ConfigBuilder, fields: dict, expected: dict) -> None:
    rated = rate(config, **fields)
    assert isinstance(rated, Rated), rated
    assert {name: getattr(rated, name) for name in expected} == expected


def no_types() -> ConfigBuilder:
    return ConfigBuilder().define(Tariff("B", "USD"))


# (case id, config, attempt fields, reason code, words the message must name)
REFUSED = [
    ("malformed: unknown direction", checklist(), {"direction": "sideways"}, "malformed_attempt", ("sideways",)),
    ("implausible: 2^31-1 characters", checklist(), {"body_chars": 2**31 - 1}, "implausible_attempt", ("2147483647",)),
    ("implausible: -500 characters", checklist(), {"body_chars": -500}, "implausible_attempt", ("-500",)),
    ("implausible: dated in 2100", checklist(), {"received_at": datetime(2100, 1, 1, tzinfo=timezone.utc)},
     "implausible_attempt", ("2100",)),
    ("unknown environment", checklist(), {"environment": "globex"}, "unknown_environment", ("globex",)),
    ("environment without service types", no_types(), {}, "unknown_environment", (ENV,)),
    ("Messaging disabled", checklist().define(ServiceTypes(messaging_enabled=False)), {}, "service_disabled", (ENV,)),
    ("incoming to nobody", checklist(), {"direction": "incoming", "to_user": "nobody"}, "unknown_recipient",
     ("nobody",)),
    ("sender is no account", checklist(), {"from_user": "mallory"}, "unknown_account", ("mallory",)),
    ("product without Messaging",
     checklist().define(Product("IM product", ("voice",), (UsageCharge("messaging", "PortaSIP", "B"),))), {},
     "service_not_in_product", ("IM product",)),
    ("product without usage charge", checklist().define(Product("IM product", ("voice", "messaging"), ())), {},
     "no_usage_charge", ("IM product",)),
    ("outgoing_aaa off: authenticated only", checklist(attributes={**IM_ATTRIBUTES, "msg.outgoing_aaa": False}),
     {}, "not_accounted", (POLICY,)),
    ("no policy matches: billed by default, local lookup off, so rated off-net",
     checklist().define(ServicePolicy(POLICY, "messaging", 5, "%.example.org", "", IM_ATTRIBUTES)), {},
     "no_rate", ()),
    ("SMPP cannot deliver on-net", checklist(attributes={**IM_ATTRIBUTES, "msg.transport_protocol": "SMPP"}),
     {"to_user": "bob"}, "smpp_on_net", (POLICY, "bob")),
    ("off-net without a rate in tariff B", checklist(), {"to_user": "447700900123"}, "no_rate",
     ("'B'", "447700900123")),
    ("MSGN rate not yet in force", checklist(), {"received_at": T0 - timedelta(seconds=1)}, "no_rate",
     ("MSGN",)),
    ("external routing off", checklist().define(Rate("B", "|", d("0.5"), T0)), {"to_user": "447700900123"},
     "undeliverable", ("447700900123", POLICY)),
    ("no vendor rates the destination", off_net_rates(checklist(attributes=ROUTED)), {"to_user": "+4915112345678"},
     "no_route", ("4915112345678",)),
]


@pytest.mark.parametrize(("config", "fields", "code", "words"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused(config: ConfigBuilder, fields: dict, code: str, words: tuple[str, ...]) -> None:
    refused = rate(config, **fields)
    assert isinstance(refused, Refusal), refused
    assert refused.reason_code == code
    assert code in REASON_CODES
    assert all(word in refused.message for word in words), refused.message


BILLING_CODES = {"insufficient_funds", "service_suspended", "currency_mismatch", "outside_dedup_window",  # test_rules_balance
                 "undelivered"}  # tests/test_decide.py


def test_every_reason_code_is_reachable() -> None:
    assert {case[3] for case in REFUSED} | BILLING_CODES == set(REASON_CODES)


def test_refusal_names_the_sender_or_recipient() -> None:
    assert rate(checklist(), from_user="mallory").account == "mallory"
    assert rate(checklist(), direction="incoming", to_user="nobody").account == "nobody"


def test_late_processing_gets_the_rate_of_its_own_time() -> None:
    config = checklist().define(Rate("B", "MSGN", d("0.08"), T0 + timedelta(days=1)))
    early = attempt(received_at=T0 + timedelta(hours=23))
    assert rate_attempt(early, config.state, rated_at=T0 + timedelta(days=400)).unit_price == d("0.05")


def test_config_changes_are_seen_at_once() -> None:
    config = checklist()
    assert rate(config).amount == d("0.05")
    config.define(Rate("B", "MSGN", d("0.07"), T0))
    assert rate(config).amount == d("0.07")
    config.remove("account", ALICE)
    assert rate(config).reason_code == "unknown_account"


def test_environments_are_separate() -> None:
    config = checklist()
    checklist_events = checklist("globex", msgn_price="0.09").events
    for name, record in checklist_events:
        config.state = config.state.apply(name, record)
    assert rate(config, environment="globex").amount == d("0.09")
    assert rate(config).amount == d("0.05")


def test_snapshots_at_the_same_version_do_not_share_indexes() -> None:
    live, replay = checklist(msgn_price="0.05"), checklist(msgn_price="0.09")
    assert live.env.version == replay.env.version
    for _ in range(2):
        assert rate(live).amount == d("0.05")
        assert rate(replay).amount == d("0.09")


def test_account_push_events() -> None:
    config = checklist().define(
        ServicePolicy("CMMS", "messaging", 0, None, "", {"audiocodes.cmms.push_events": True}),
        Product("IM product", ("messaging",), (UsageCharge("messaging", "PortaSIP", "B"),), "CMMS"))
    assert account_push_events(config.state, ENV, ALICE) is True
    assert account_push_events(checklist().state, ENV, ALICE) is False
    assert account_push_events(config.state, ENV, "mallory") is False
    assert account_push_events(config.state, "globex", ALICE) is False


def test_charge_record_matches_the_schema() -> None:
    config = off_net_rates(checklist(attributes=ROUTED))
    for fields in ({}, {"to_user": "447700900123"}, {"direction": "incoming", "to_user": "alice"}):
        message = attempt(**fields)
        charge = charge_of(message, rate_attempt(message, config.state, rated_at=LATER), LATER)
        assert charge.charge_id == "chg-att-1" and charge.kind == "charge" and charge.corrects is None
        assert decode_event(encode_event(charge)) == charge


def test_rejection_record_matches_the_schema() -> None:
    message = attempt(from_user="mallory")
    rejection = rejection_of(message, rate_attempt(message, checklist().state, rated_at=LATER), LATER)
    assert rejection.rejection_id == "rej-att-1" and rejection.reason_code == "unknown_account"
    assert rejection.account == "mallory" and rejection.to_domain == DOMAIN
    assert decode_event(encode_event(rejection)) == rejection


@pytest.mark.parametrize("attributes, fields, expected", [
    (ROUTED, {}, (ALICE, "On-net instant messages", "PortaSIP", "Linphone/5.2.0")),
    (ROUTED, {"to_user": "07700900123", "user_agent": None}, (ALICE, "UK mobile", "PortaSIP", None)),
    (ROUTED, {"to_user": "44123", "from_user": ALICE}, (ALICE, "UK", "PortaSIP", "Linphone/5.2.0")),
    (ROUTED, {"direction": "incoming", "from_user": "07700900123", "to_user": "alice"},
     ("447700900123", None, "PortaSIP", "Linphone/5.2.0")),
    ({**ROUTED, "msg.userpart_e164_translation": False},
     {"direction": "incoming", "from_user": "07700900123", "to_user": "alice"},
     ("07700900123", None, "PortaSIP", "Linphone/5.2.0")),
])
def test_the_charge_carries_what_an_xdr_shows(attributes, fields, expected) -> None:
    """CLI as translated, the destination's description, the usage charge's node, the user
    agent; a first charge is revision 1 of the messaging service."""
    config = off_net_rates(checklist(attributes=attributes)).define(
        Destination("44", "custom", "UK"), Destination("447", "custom", "UK mobile"))
    message = attempt(**fields)
    charge = charge_of(message, rate_attempt(message, config.state, rated_at=LATER), LATER)
    assert (charge.cli_translated, charge.destination_description, charge.node, charge.user_agent) == expected
    assert (charge.revision, charge.service, charge.from_user) == (1, "messaging", message.from_user)
