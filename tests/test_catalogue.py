"""The service policy attribute catalogue against domain/service-policies.txt."""

import pickle
import re

import pytest

from tests.shared import shared_path

from imbill.domain.errors import ConfigError
from imbill.domain.catalogue import (
    CATALOGUE,
    CATALOGUE_COLUMNS,
    MESSAGING_CATALOGUE,
    USAGES,
    VOICE_CATALOGUE,
    InvalidPolicyAttribute,
    attribute_key,
    catalogue_rows,
    check_applicability,
    parse_attributes,
)

POLICY = "Instant messaging"
TON = ("unknown", "international", "national", "network_specific", "subscriber_number",
       "alphanumeric", "abbreviated")
NPI = ("unknown", "isdn", "data", "telex", "national", "private", "ermes", "internet",
       "wap_client_id")

# key, type, allowed, minimum, maximum, default, applies_to
MESSAGING = [
    ("audiocodes.cmms.push_events", "bool", None, None, None, False, {"product"}),
    ("msg.billing_unit_size", "int", None, 1, None, None, {"domain_policy"}),
    ("msg.bind_as", "enum", ("transceiver", "transmitter", "receiver"), None, None, None,
     {"connection"}),
    ("msg.dest_addr_npi", "enum", NPI, None, None, None, {"connection"}),
    ("msg.dest_addr_ton", "enum", TON, None, None, None, {"connection"}),
    ("msg.external_routing", "bool", None, None, None, False, {"domain_policy"}),
    ("msg.heartbeat_interval", "int", None, 0, None, 0, {"connection"}),
    ("msg.incoming_aaa", "bool", None, None, None, False, {"domain_policy"}),
    ("msg.local_lookup", "bool", None, None, None, False, {"domain_policy"}),
    ("msg.outgoing_aaa", "bool", None, None, None, True, {"domain_policy"}),
    ("msg.reconnect_interval", "int", None, 0, None, None, {"connection"}),
    ("msg.registered_delivery", "int", None, 0, 3, 0, {"connection"}),
    ("msg.reject_error_codes", "list", None, None, None, None, {"connection"}),
    ("msg.source_addr_npi", "enum", NPI, None, None, None, {"connection"}),
    ("msg.source_addr_ton", "enum", TON, None, None, None, {"connection"}),
    ("msg.system_type", "string", None, None, None, None, {"connection"}),
    ("msg.transport_protocol", "enum", ("SIP", "SMPP"), None, None, "SIP", {"domain_policy"}),
    ("msg.userpart_e164_translation", "bool", None, None, None, False, {"domain_policy"}),
    ("qualution.push_events", "bool", None, None, None, None, {"product"}),
    ("ro.rise_mscc_result_code", "bool", None, None, None, False, {"connection"}),
]

SECTION_COUNTS = {
    ("voice", "ics"): 1,
    ("voice", "ro"): 2,
    ("voice", "sdp"): 1,
    ("voice", "sip"): 28,
    ("voice", "sip.identity"): 6,
    ("voice", "udptl"): 2,
    ("voice", "voice.location"): 1,
    ("messaging", "audiocodes.cmms"): 1,
    ("messaging", "msg"): 17,
    ("messaging", "qualution"): 1,
    ("messaging", "ro"): 1,
}


@pytest.mark.parametrize("key, type_, allowed, minimum, maximum, default, applies_to", MESSAGING)
def test_every_messaging_attribute_is_catalogued(key, type_, allowed, minimum, maximum, default,
                                                 applies_to):
    spec = MESSAGING_CATALOGUE[key]
    assert (spec.service, spec.key, spec.type, spec.allowed) == ("messaging", key, type_, allowed)
    assert (spec.minimum, spec.maximum, spec.default) == (minimum, maximum, default)
    assert spec.applies_to == frozenset(applies_to)
    assert spec.description.endswith(".")


def test_messaging_catalogue_has_nothing_else():
    assert sorted(MESSAGING_CATALOGUE) == sorted(row[0] for row in MESSAGING)


def test_counts_per_section():
    counts: dict[tuple[str, str], int] = {}
    for service, catalogue in CATALOGUE.items():
        for spec in catalogue.values():
            counts[service, spec.section] = counts.get((service, spec.section), 0) + 1
    assert counts == SECTION_COUNTS
    assert (len(VOICE_CATALOGUE), len(MESSAGING_CATALOGUE)) == (41, 20)


def _document_attributes(text: str) -> set[tuple[str, str, str]]:
    """(service, section, name) of every attribute, read from the document's tables."""
    text = re.sub(r"_ ?\s*\n\s*\n?\s*", "_", text)  # names broken over lines: "allow_callee_early_"
    text = re.sub(r"_ (?=[a-z])", "_", text)  # "userpart_e164_ translation"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    found, service, section = set(), "voice", None
    for line, following in zip(lines, lines[1:] + [""]):
        if line == "Messaging services":
            service, section = "messaging", None
        elif not re.fullmatch(r"[a-z][a-z0-9_.]*", line) or line in {"connection", "product"}:
            continue
        elif following.startswith("This section describes"):
            section = line
        elif section is not None:
            found.add((service, section, line.removeprefix(f"{section}.")))
    return found


def test_catalogue_is_exactly_the_document():
    document = shared_path("domain/service-policies.txt")
    catalogued = {(s.service, s.section, s.name) for c in CATALOGUE.values() for s in c.values()}
    assert catalogued == _document_attributes(document.read_text())


def test_keys_and_usages():
    assert attribute_key("msg", "outgoing_aaa") == "msg.outgoing_aaa"
    assert attribute_key("audiocodes.cmms", "push_events") == "audiocodes.cmms.push_events"
    for catalogue in CATALOGUE.values():
        for key, spec in catalogue.items():
            assert key == spec.key and spec.applies_to and spec.applies_to <= USAGES
            assert spec.type in {"bool", "int", "enum", "string", "list"}


def test_shared_key_applies_to_the_same_usages():
    shared = VOICE_CATALOGUE.keys() & MESSAGING_CATALOGUE.keys()
    assert shared == {"ro.rise_mscc_result_code"}
    assert all(VOICE_CATALOGUE[k].applies_to == MESSAGING_CATALOGUE[k].applies_to for k in shared)


@pytest.mark.parametrize(
    "service, attributes, expected",
    [
        ("messaging", {"msg": {"billing_unit_size": 60}}, {"msg.billing_unit_size": 60}),
        ("messaging", {"msg": {"billing_unit_size": "160"}}, {"msg.billing_unit_size": 160}),
        ("messaging", {"msg": {"outgoing_aaa": True}}, {"msg.outgoing_aaa": True}),
        ("messaging", {"msg": {"outgoing_aaa": "Yes"}}, {"msg.outgoing_aaa": True}),
        ("messaging", {"msg": {"local_lookup": "NO"}}, {"msg.local_lookup": False}),
        ("messaging", {"msg": {"external_routing": "true"}}, {"msg.external_routing": True}),
        ("messaging", {"msg": {"incoming_aaa": " False "}}, {"msg.incoming_aaa": False}),
        ("messaging", {"msg": {"userpart_e164_translation": "yes"}},
         {"msg.userpart_e164_translation": True}),
        ("messaging", {"msg": {"transport_protocol": "smpp"}}, {"msg.transport_protocol": "SMPP"}),
        ("messaging", {"msg": {"transport_protocol": "SIP"}}, {"msg.transport_protocol": "SIP"}),
        ("messaging", {"msg": {"bind_as": "Transceiver"}}, {"msg.bind_as": "transceiver"}),
        ("messaging", {"msg": {"dest_addr_ton": "Network Specific"}},
         {"msg.dest_addr_ton": "network_specific"}),
        ("messaging", {"msg": {"source_addr_ton": "subscriber-number"}},
         {"msg.source_addr_ton": "subscriber_number"}),
        ("messaging", {"msg": {"source_addr_npi": "WAP Client ID"}},
         {"msg.source_addr_npi": "wap_client_id"}),
        ("messaging", {"msg": {"dest_addr_npi": "Privete"}}, {"msg.dest_addr_npi": "private"}),
        ("messaging", {"msg": {"registered_delivery": 3}}, {"msg.registered_delivery": 3}),
        ("messaging", {"msg": {"registered_delivery": 0}}, {"msg.registered_delivery": 0}),
        ("messaging", {"msg": {"heartbeat_interval": 0}}, {"msg.heartbeat_interval": 0}),
        ("messaging", {"msg": {"reconnect_interval": 30}}, {"msg.reconnect_interval": 30}),
        ("messaging", {"msg": {"reject_error_codes": ["00000058", "58", "0x58", "0X0b"]}},
         {"msg.reject_error_codes": ("0x00000058",) * 3 + ("0x0000000B",)}),
        ("messaging", {"msg": {"reject_error_codes": "00000058, 0x45"}},
         {"msg.reject_error_codes": ("0x00000058", "0x00000045")}),
        ("messaging", {"msg": {"reject_error_codes": []}}, {"msg.reject_error_codes": ()}),
        ("messaging", {"msg": {"system_type": " VMA "}}, {"msg.system_type": "VMA"}),
        ("messaging", {"audiocodes.cmms": {"push_events": "yes"}},
         {"audiocodes.cmms.push_events": True}),
        ("messaging", {"audiocodes": {"cmms": {"push_events": True}}},
         {"audiocodes.cmms.push_events": True}),
        ("messaging", {"qualution": {"push_events": False}}, {"qualution.push_events": False}),
        ("messaging", {"ro": {"rise_mscc_result_code": "Yes"}}, {"ro.rise_mscc_result_code": True}),
        ("messaging", {"msg.outgoing_aaa": "no", "msg": {"local_lookup": True}},
         {"msg.outgoing_aaa": False, "msg.local_lookup": True}),
        ("messaging", {}, {}),
        ("voice", {"sip": {"sdp_cline_mode": 4}}, {"sip.sdp_cline_mode": 4}),
        ("voice", {"sip": {"sdp_ptime_remove": "all"}}, {"sip.sdp_ptime_remove": "all"}),
        ("voice", {"sip": {"sdp_ptime_remove": False}}, {"sip.sdp_ptime_remove": "no"}),
        ("voice", {"sip": {"sdp_ptime_remove": 20}}, {"sip.sdp_ptime_remove": 20}),
        ("voice", {"sip": {"sdp_ptime_remove": "30"}}, {"sip.sdp_ptime_remove": 30}),
        ("voice", {"sip": {"call_progress_filter": "ringing_only"}},
         {"sip.call_progress_filter": "ringing_only"}),
        ("voice", {"sip": {"gw_longpound_event": "sonus"}}, {"sip.gw_longpound_event": "Sonus"}),
        ("voice", {"sip": {"hunt_stop_codes": [486, "603"]}}, {"sip.hunt_stop_codes": (486, 603)}),
        ("voice", {"sip": {"hunt_stop_codes": "486, 603"}}, {"sip.hunt_stop_codes": (486, 603)}),
        ("voice", {"sdp": {"codec_order_list": "G729, G711"}},
         {"sdp.codec_order_list": ("G729", "G711")}),
        ("voice", {"sip": {"initial_negotiation_codecs": []}},
         {"sip.initial_negotiation_codecs": ()}),
        ("voice", {"sip": {"keep_alive_interval": 0}}, {"sip.keep_alive_interval": 0}),
        ("voice", {"sip.identity": {"outgoing_headers_trusted": ["pai", "RPID"]}},
         {"sip.identity.outgoing_headers_trusted": ("pai", "rpid")}),
        ("voice", {"sip": {"identity": {"out_hdr_pai": "fcli"}}},
         {"sip.identity.out_hdr_pai": "fcli"}),
        ("voice", {"udptl": {"t38_fax_max_datagram": 849, "t38_fax_udp_ec": "redundancy"}},
         {"udptl.t38_fax_max_datagram": 849, "udptl.t38_fax_udp_ec": "redundancy"}),
        ("voice", {"voice.location": {"primary_location": "fr.GSTN014411500"}},
         {"voice.location.primary_location": "fr.GSTN014411500"}),
        ("voice", {"ro": {"provision_cld": "no"}}, {"ro.provision_cld": False}),
        ("Messaging", {"msg": {"outgoing_aaa": 'yes'}}, {"msg.outgoing_aaa": True}),
    ],
)
def test_good_values_are_normalised(service, attributes, expected):
    parsed = parse_attributes(service, attributes, policy=POLICY)
    assert parsed == expected
    assert parse_attributes(service, parsed, policy=POLICY) == parsed  # normalising is idempotent


def _refusal(service, attributes, policy=POLICY) -> str:
    with pytest.raises(InvalidPolicyAttribute) as caught:
        parse_attributes(service, attributes, policy=policy)
    return str(caught.value)


PREFIX = 'service policy "Instant messaging": attribute '


@pytest.mark.parametrize(
    "service, attributes, message",
    [
        # out of range
        ("messaging", {"msg": {"registered_delivery": 7}},
         "msg.registered_delivery = 7 is out of range; allowed: 0..3"),
        ("messaging", {"msg": {"billing_unit_size": 0}},
         "msg.billing_unit_size = 0 is out of range; allowed: >= 1"),
        ("messaging", {"msg": {"heartbeat_interval": -5}},
         "msg.heartbeat_interval = -5 is out of range; allowed: >= 0"),
        ("voice", {"sip": {"sdp_cline_mode": 5}},
         "sip.sdp_cline_mode = 5 is out of range; allowed: 0..4"),
        ("voice", {"sip": {"sdp_ptime_remove": 0}},
         "sip.sdp_ptime_remove = 0 is out of range; allowed: no, all or an integer >= 1"),
        # bad type
        ("messaging", {"msg": {"billing_unit_size": "sixty"}},
         'msg.billing_unit_size = "sixty" is not an integer; allowed: >= 1'),
        ("messaging", {"msg": {"billing_unit_size": True}},
         "msg.billing_unit_size = true is not an integer; allowed: >= 1"),
        ("messaging", {"msg": {"billing_unit_size": 1.5}},
         "msg.billing_unit_size = 1.5 is not an integer; allowed: >= 1"),
        ("messaging", {"msg": {"outgoing_aaa": "maybe"}},
         'msg.outgoing_aaa = "maybe" is not a boolean; allowed: true, false, yes, no'),
        ("messaging", {"msg": {"local_lookup": 1}},
         "msg.local_lookup = 1 is not a boolean; allowed: true, false, yes, no"),
        ("messaging", {"msg": {"system_type": 42}},
         "msg.system_type = 42 is not text; allowed: text"),
        ("messaging", {"msg": {"system_type": "  "}},
         'msg.system_type = "  " is empty; allowed: text'),
        ("messaging", {"msg": {"reject_error_codes": 58}},
         "msg.reject_error_codes = 58 is not a list; allowed: "
         "a list of hexadecimal codes such as 00000058, 58, 0x58"),
        ("messaging", {"msg": {"outgoing_aaa": None}},
         "msg.outgoing_aaa has no value; allowed: true, false, yes, no"),
        # not in the enum
        ("messaging", {"msg": {"transport_protocol": "HTTP"}},
         'msg.transport_protocol = "HTTP" is not an allowed value; allowed: SIP, SMPP'),
        ("messaging", {"msg": {"bind_as": "both"}},
         'msg.bind_as = "both" is not an allowed value; '
         "allowed: transceiver, transmitter, receiver"),
        ("messaging", {"msg": {"dest_addr_ton": 1}},
         "msg.dest_addr_ton = 1 is not an allowed value; allowed: " + ", ".join(TON)),
        ("voice", {"sip": {"sdp_ptime_remove": True}},
         "sip.sdp_ptime_remove = true is not an allowed value; "
         "allowed: no, all or an integer >= 1"),
        ("voice", {"udptl": {"t38_fax_udp_ec": "crc"}},
         'udptl.t38_fax_udp_ec = "crc" is not an allowed value; allowed: fec, redundancy, none'),
        # list items
        ("messaging", {"msg": {"reject_error_codes": ["58", "0xZZ"]}},
         'msg.reject_error_codes = ["58", "0xZZ"] has an item "0xZZ" that is not a hexadecimal '
         "code; allowed: a list of hexadecimal codes such as 00000058, 58, 0x58"),
        ("messaging", {"msg": {"reject_error_codes": ["123456789"]}},
         'msg.reject_error_codes = ["123456789"] has an item "123456789" that is not a '
         "hexadecimal code; allowed: a list of hexadecimal codes such as 00000058, 58, 0x58"),
        ("messaging", {"msg": {"reject_error_codes": [58]}},
         "msg.reject_error_codes = [58] has an item 58 that is not quoted hexadecimal text; "
         "allowed: a list of hexadecimal codes such as 00000058, 58, 0x58"),
        ("voice", {"sip": {"hunt_stop_codes": [486, 999]}},
         "sip.hunt_stop_codes = [486, 999] has an item 999 that is out of range; "
         "allowed: a list of SIP response codes 100..699"),
        ("voice", {"sip.identity": {"outgoing_headers_trusted": "pai, none"}},
         'sip.identity.outgoing_headers_trusted = "pai, none" combines "none" with other values; '
         "allowed: a list of pai, rpid, none"),
        ("voice", {"voice.location": {"primary_location": "GSTN0144115"}},
         'voice.location.primary_location = "GSTN0144115" does not match the format; '
         "allowed: fr.GSTN followed by R1R2C1C2C3C4C5XX"),
        # unknown, wrong service, twice
        ("messaging", {"msg": {"billing_unit": 60}},
         "msg.billing_unit is unknown; allowed: " + ", ".join(
             sorted(k for k in MESSAGING_CATALOGUE if k.startswith("msg.")))),
        ("messaging", {"sms": {"bind_as": "receiver"}},
         "sms.bind_as is unknown; allowed: messaging sections audiocodes.cmms, msg, qualution, ro"),
        ("messaging", {"sip": {"keep_alive_interval": 60}},
         "sip.keep_alive_interval is a voice attribute, not a messaging one; "
         "allowed: messaging sections audiocodes.cmms, msg, qualution, ro"),
        ("voice", {"msg": {"outgoing_aaa": True}},
         "msg.outgoing_aaa is a messaging attribute, not a voice one; allowed: voice sections "
         "ics, ro, sdp, sip, sip.identity, udptl, voice.location"),
        ("messaging", {"msg.outgoing_aaa": True, "msg": {"outgoing_aaa": True}},
         "msg.outgoing_aaa is set more than once; allowed: one value"),
    ],
)
def test_bad_values_are_refused(service, attributes, message):
    assert _refusal(service, attributes) == PREFIX + message


def test_refusal_is_a_config_error_that_names_its_parts():
    with pytest.raises(ConfigError) as caught:
        parse_attributes("messaging", {"msg": {"registered_delivery": 7}}, policy=POLICY)
    error = caught.value
    assert (error.policy, error.attribute, error.problem, error.allowed) == (
        POLICY, "msg.registered_delivery", "= 7 is out of range", "0..3")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    assert str(InvalidPolicyAttribute("", "msg.x", "is unknown", "...")) == (
        "service policy: attribute msg.x is unknown; allowed: ...")


def test_unknown_service_type_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown service type 'fax'"):
        parse_attributes("fax", {})


@pytest.mark.parametrize(
    "attrs, usages",
    [
        ({"msg.outgoing_aaa": True, "msg.billing_unit_size": 60}, {"domain_policy"}),
        ({"msg.bind_as": "receiver", "msg.registered_delivery": 1}, {"connection"}),
        ({"audiocodes.cmms.push_events": True, "qualution.push_events": True}, {"product"}),
        ({"msg.bind_as": "receiver", "msg.local_lookup": True}, {"connection", "domain_policy"}),
        ({"ro.rise_mscc_result_code": True}, {"connection"}),
        ({"sip.fake_180_ringing": True, "sip.force_sip_proxy": True},
         {"calling_party", "called_party"}),
        ({"sip.always_reliable_1xx": True, "sip.keep_alive_interval": 60},
         {"dynamic_policy", "calling_party", "called_party"}),
        ({"sip.remote_address_sip_field": "X-Real-IP"}, {"call_handling_rule"}),
        ({}, set()),
    ],
)
def test_attributes_that_apply(attrs, usages):
    assert check_applicability(attrs, usages, policy=POLICY) is None


@pytest.mark.parametrize(
    "attrs, usages, message",
    [
        ({"msg.bind_as": "receiver"}, {"domain_policy"},
         "msg.bind_as does not apply to domain_policy; allowed: connection"),
        ({"msg.reject_error_codes": ("0x00000058",)}, {"domain_policy"},
         "msg.reject_error_codes does not apply to domain_policy; allowed: connection"),
        ({"msg.outgoing_aaa": False}, {"connection"},
         "msg.outgoing_aaa does not apply to connection; allowed: domain_policy"),
        ({"audiocodes.cmms.push_events": True}, {"domain_policy"},
         "audiocodes.cmms.push_events does not apply to domain_policy; allowed: product"),
        ({"qualution.push_events": True}, {"connection", "domain_policy"},
         "qualution.push_events does not apply to connection, domain_policy; allowed: product"),
        ({"sip.always_reliable_1xx": True}, {"calling_party", "called_party"},
         "sip.always_reliable_1xx does not apply to called_party, calling_party; "
         "allowed: dynamic_policy"),
        ({"ro.provision_cld": True}, {"called_party"},
         "ro.provision_cld does not apply to called_party; allowed: connection"),
        ({"msg.billing_unit_size": 60}, set(),
         "msg.billing_unit_size does not apply to a policy with no usage; allowed: domain_policy"),
        ({"msg.nonsense": 1}, {"domain_policy"},
         "msg.nonsense is unknown; allowed: see `imbill policy attributes`"),
    ],
)
def test_attributes_that_do_not_apply(attrs, usages, message):
    with pytest.raises(InvalidPolicyAttribute) as caught:
        check_applicability(attrs, usages, policy=POLICY)
    assert str(caught.value) == PREFIX + message


def test_unknown_usage_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown usages"):
        check_applicability({}, {"dynamic"})


@pytest.mark.parametrize(
    "row",
    [
        ("msg.billing_unit_size", "messaging", "int", ">= 1", "", "domain_policy",
         MESSAGING_CATALOGUE["msg.billing_unit_size"].description),
        ("msg.registered_delivery", "messaging", "int", "0..3", "0", "connection",
         MESSAGING_CATALOGUE["msg.registered_delivery"].description),
        ("msg.transport_protocol", "messaging", "enum", "SIP, SMPP", "SIP", "domain_policy",
         MESSAGING_CATALOGUE["msg.transport_protocol"].description),
        ("ro.rise_mscc_result_code", "messaging", "bool", "true, false, yes, no", "false",
         "connection", MESSAGING_CATALOGUE["ro.rise_mscc_result_code"].description),
        ("sip.call_progress_filter", "voice", "enum", "full_progress, ringing_only",
         "full_progress", "called_party, calling_party, connection",
         VOICE_CATALOGUE["sip.call_progress_filter"].description),
        ("udptl.t38_fax_max_datagram", "voice", "int", ">= 1", "849", "dynamic_policy",
         VOICE_CATALOGUE["udptl.t38_fax_max_datagram"].description),
    ],
)
def test_catalogue_rows(row):
    assert row in catalogue_rows()


def test_catalogue_rows_cover_every_attribute_once():
    rows = catalogue_rows()
    assert len(rows) == 61 and all(len(row) == len(CATALOGUE_COLUMNS) for row in rows)
    assert [row[1] for row in catalogue_rows("messaging")] == ["messaging"] * 20
    assert len({(row[0], row[1]) for row in rows}) == 61
