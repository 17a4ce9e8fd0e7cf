"""The service policy attribute catalogue (domain/service-policies.txt, voice and messaging).

Every attribute the document lists is an :class:`AttributeSpec`: its service, section, name,
type, allowed values or range, default and the usages it applies to. Its key is
``"<section>.<name>"`` (``msg.billing_unit_size``, ``audiocodes.cmms.push_events``).

Keys are unique within a service but not across services: ``ro.rise_mscc_result_code`` is
both a voice and a messaging attribute. So :data:`CATALOGUE` is keyed by service type first::

    CATALOGUE["messaging"]["msg.billing_unit_size"]   # -> AttributeSpec
    VOICE_CATALOGUE["sip.keep_alive_interval"]        # same as CATALOGUE["voice"][...]

Usages (``applies_to``), i.e. how a policy is used:

- ``calling_party`` / ``called_party``: applied to the caller / the callee of a call (a policy
  assigned to an account, or matched dynamically, is used for both parties);
- ``connection``: assigned to a vendor connection (incoming or outgoing);
- ``dynamic_policy``: a voice policy matched dynamically by its SIP end-point pattern;
- ``product``: assigned to a product;
- ``call_handling_rule``: assigned to a call handling rule;
- ``domain_policy``: a messaging "domain service policy", matched dynamically by recipient
  domain pattern or statically assigned to an account.

Values are normalised: bool accepts ``true/false/yes/no`` (any case) and gives a Python bool;
int accepts an int or a string of digits; an enum matches whatever the case, with spaces or
``-`` read as ``_`` (``Network Specific`` -> ``network_specific``) and gives the catalogue's
spelling; an enum with a ``minimum`` also takes integers (``sdp_ptime_remove``: no, all or
milliseconds); a list takes a sequence or a comma-separated string and gives a tuple.
``msg.reject_error_codes`` items are hexadecimal text (``00000058``, ``58``, ``0x58``) and
become ``"0x00000058"``; YAML integers are refused there, because YAML has already read
``58`` as decimal and ``0x58`` as 88. Normalising a normalised value gives it back unchanged.
Defaults are not filled in: an attribute that is not set is simply absent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from imbill.domain.errors import ConfigError

__all__ = [
    "AttributeSpec",
    "CATALOGUE",
    "CATALOGUE_COLUMNS",
    "InvalidPolicyAttribute",
    "MESSAGING_CATALOGUE",
    "SERVICE_TYPES",
    "USAGES",
    "VOICE_CATALOGUE",
    "attribute_key",
    "catalogue_rows",
    "check_applicability",
    "parse_attributes",
]

SERVICE_TYPES = ("voice", "messaging")
USAGES = frozenset(
    {"calling_party", "called_party", "connection", "dynamic_policy", "product",
     "call_handling_rule", "domain_policy"}
)


class InvalidPolicyAttribute(ConfigError):
    """A service policy attribute is unknown, mistyped, out of range or misapplied."""

    def __init__(self, policy: str, attribute: str, problem: str, allowed: str) -> None:
        self.policy, self.attribute = policy, attribute
        self.problem, self.allowed = problem, allowed
        subject = f'service policy "{policy}"' if policy else "service policy"
        super().__init__(f"{subject}: attribute {attribute} {problem}; allowed: {allowed}")

    def __reduce__(self):  # keep pickling (multiprocessing, faust) working with four arguments
        return type(self), (self.policy, self.attribute, self.problem, self.allowed)


@dataclass(frozen=True)
class AttributeSpec:
    """One attribute of the catalogue.

    ``item`` is the kind of a list's items ("string", "int", "enum", "hex"); ``pattern`` is a
    regular expression a string value must match in full.
    """

    service: str
    section: str
    name: str
    type: str
    allowed: tuple[str, ...] | None
    minimum: int | None
    maximum: int | None
    default: Any
    applies_to: frozenset[str]
    description: str
    item: str | None = None
    pattern: str | None = None

    @property
    def key(self) -> str:
        return attribute_key(self.section, self.name)


def attribute_key(section: str, name: str) -> str:
    """The catalogue key of an attribute: ``"<section>.<name>"``."""
    return f"{section}.{name}"


# --- the catalogue, in the document's order ----------------------------------------------

_TON = ("unknown", "international", "national", "network_specific", "subscriber_number",
        "alphanumeric", "abbreviated")
_NPI = ("unknown", "isdn", "data", "telex", "national", "private", "ermes", "internet",
        "wap_client_id")
_ALIASES = {"privete": "private"}  # the document spells the SMPP "Private" plan "Privete"


def _spec(service, section, name, type_, applies, description, *, allowed=None, minimum=None,
          maximum=None, default=None, item=None, pattern=None) -> AttributeSpec:
    return AttributeSpec(service, section, name, type_, allowed, minimum, maximum, default,
                         frozenset(applies.split()), description, item, pattern)


def _voice(section, name, type_, applies, description, **kw) -> AttributeSpec:
    return _spec("voice", section, name, type_, applies, description, **kw)


def _msg(section, name, type_, applies, description, **kw) -> AttributeSpec:
    return _spec("messaging", section, name, type_, applies, description, **kw)


_PARTIES = "calling_party called_party"
_IDENTITY = "called_party connection"

_VOICE_SPECS = (
    _voice("ics", "append_incoming_headers", "bool", "called_party",
           "Route the call to the IMS core and keep its Original Dialog Identifier."),
    _voice("ro", "provision_cld", "bool", "connection",
           "Add the Called-Party-Address to the Diameter response.", default=False),
    _voice("ro", "rise_mscc_result_code", "bool", "connection",
           "Copy the MSCC Result-Code into the Result-Code AVP of the Diameter CCA.",
           default=False),
    _voice("sdp", "codec_order_list", "list", "calling_party",
           "Reorder the codecs of the initial INVITE in this order.", item="string"),
    _voice("sip", "always_reliable_1xx", "bool", "dynamic_policy",
           "Treat unreliable 1xx responses with SDP as a confirmed answer."),
    _voice("sip", "allow_callee_early_sdp_change", "bool", "called_party",
           "Update the RTP session when the SDP changes during call setup."),
    _voice("sip", "call_progress_filter", "enum", f"{_PARTIES} connection",
           "How early media and 18x responses of the called party are re-sent.",
           allowed=("full_progress", "ringing_only"), default="full_progress"),
    _voice("sip", "call_progress_notification", "enum", "calling_party connection",
           "Generate ring-back tone or Music on Waiting instead of relaying 18x signaling.",
           allowed=("signaling", "audio_rbt", "mow"), default="signaling"),
    _voice("sip", "callee_stream_security_settings", "enum", "called_party",
           "Media encryption for the called party.",
           allowed=("as_caller", "decrypted", "sdes", "dtls", "zrtp"), default="as_caller"),
    _voice("sip", "caller_stream_relay_or_decrypt", "enum", "calling_party",
           "Media encryption and processing for the calling party.",
           allowed=("forced_relay", "relay_or_decrypt", "decrypt"), default="relay_or_decrypt"),
    _voice("sip", "early_media_timeout", "int", "called_party connection",
           "How long to wait for RTP after an 18x with SDP before playing ring-back tone.",
           minimum=0),
    _voice("sip", "fake_180_ringing", "bool", "calling_party",
           "Send 180 Ringing to the caller at once instead of waiting for the callee."),
    _voice("sip", "first_codec_for_moh", "bool", _PARTIES,
           "Play Music on Hold with the codec requested on re-negotiation."),
    _voice("sip", "force_sip_proxy", "bool", "called_party",
           "Always involve the SIP proxy in the call (helps with NAT)."),
    _voice("sip", "force_route_through_dsbc", "bool", "connection",
           "Send outgoing call requests through the dispatching SBC."),
    _voice("sip", "geo_location_method", "string", "connection call_handling_rule",
           "Handle the P-Access-Network-Info header to learn the operator handling the call."),
    _voice("sip", "gw_longpound_event", "enum", "calling_party",
           "Long pound (##) detection in SIP INFO from a PSTN gateway.",
           allowed=("none", "Sonus")),
    _voice("sip", "hunt_stop_codes", "list", "connection",
           "SIP response codes from an outgoing connection that stop further routing.",
           item="int", minimum=100, maximum=699),
    _voice("sip", "initial_negotiation_codecs", "list", _PARTIES,
           "Codecs offered on call pickup when both parties use late offer-answer.",
           item="string"),
    _voice("sip", "initial_sdp_on_transfer", "bool", "calling_party call_handling_rule",
           "Send the transferee's initial codec list to the transfer target."),
    _voice("sip", "keep_alive_interval", "int", _PARTIES,
           "Keep-alive re-INVITE interval in seconds; 0 disables keep-alives.", minimum=0),
    _voice("sip", "no_voice_rejects", "bool", "dynamic_policy",
           "Reject unauthorized calls with a SIP response, without a voice prompt."),
    _voice("sip", "old_uri_combining_for_aor", "bool", "dynamic_policy connection",
           "Put the dialed number in both the Request-URI and To of the called party's INVITE."),
    _voice("sip", "on_hold_media_direction", "enum", "connection",
           "Media stream direction towards an IP device while a call is on hold.",
           allowed=("sendrecv", "sendonly", "auto"), default="auto"),
    _voice("sip", "onjoin_renegotiation_delay", "int", _PARTIES,
           "Delay in milliseconds before the re-INVITE sent on call pickup.", minimum=0),
    _voice("sip", "passthrough_headers", "list", "calling_party",
           "SIP headers the B2BUA lets through to vendors.", item="string"),
    _voice("sip", "remote_address_sip_field", "string", "call_handling_rule",
           "The SIP header to take the remote IP address from."),
    _voice("sip", "sdp_cline_mode", "int", _PARTIES,
           "How c-lines are placed in outgoing SDP (0..4).", minimum=0, maximum=4),
    _voice("sip", "sdp_ptime_remove", "enum", _PARTIES,
           "Remove ptime from SDP: never (no), always (all) or when it equals this many ms.",
           allowed=("no", "all"), minimum=1, default="no"),
    _voice("sip", "sticky_1xx_sdp", "bool", "calling_party",
           "Repeat the first 18x SDP from the callee in every later 18x to the caller."),
    _voice("sip", "transfer_caller_cli_header", "string", "calling_party",
           "The REFER header that carries the CLI for caller authentication on blind transfer."),
    _voice("sip", "transfer_progress", "enum", _PARTIES,
           "Audio indication to the transferee during a blind transfer.",
           allowed=("no_indication", "transferor_moh", "transferor_moh_or_system",
                    "ringing_audio")),
    _voice("sip.identity", "out_hdr_contact", "enum", _IDENTITY,
           "Identity in the user part of the Contact header of the outgoing INVITE.",
           allowed=("acli", "cli")),
    _voice("sip.identity", "out_hdr_diversion", "enum", _IDENTITY,
           "Add a Diversion header to forwarded calls with this identity.", allowed=("fcli",)),
    _voice("sip.identity", "out_hdr_history", "enum", _IDENTITY,
           "Add a History-Info header to forwarded calls with this identity.", allowed=("fcli",)),
    _voice("sip.identity", "out_hdr_pai", "enum", _IDENTITY,
           "Add a P-Asserted-Identity header with this identity.", allowed=("acli", "fcli")),
    _voice("sip.identity", "out_hdr_rpid", "enum", _IDENTITY,
           "Add a Remote-Party-ID header with this identity.", allowed=("acli", "fcli")),
    _voice("sip.identity", "outgoing_headers_trusted", "list", _IDENTITY,
           "Privacy headers sent to trusted remote connections (pai, rpid or none).",
           item="enum", allowed=("pai", "rpid", "none")),
    _voice("udptl", "t38_fax_max_datagram", "int", "dynamic_policy",
           "Largest UDPTL data (bytes) accepted for T.38 fax.", minimum=1, default=849),
    _voice("udptl", "t38_fax_udp_ec", "enum", "dynamic_policy",
           "T.38 fax error correction scheme.", allowed=("fec", "redundancy", "none"),
           default="fec"),
    _voice("voice.location", "primary_location", "string", "connection",
           "Caller location for P-Access-Network-Info on an incoming connection.",
           pattern=r"fr\.GSTN[0-9A-Za-z]{9}"),
)

_MESSAGING_SPECS = (
    _msg("audiocodes.cmms", "push_events", "bool", "product",
         "Tell the AudioCodes CMMS server when a wallet empties or is topped up.", default=False),
    _msg("msg", "billing_unit_size", "int", "domain_policy",
         "Characters charged as one message; undefined: one unit per message.", minimum=1),
    _msg("msg", "bind_as", "enum", "connection",
         "SMPP bind mode towards the SMSC.", allowed=("transceiver", "transmitter", "receiver")),
    _msg("msg", "dest_addr_npi", "enum", "connection",
         "Numbering plan indicator of the destination SME.", allowed=_NPI),
    _msg("msg", "dest_addr_ton", "enum", "connection",
         "Type of number of the destination.", allowed=_TON),
    _msg("msg", "external_routing", "bool", "domain_policy",
         "Return a routing list of off-net vendors in the authorization response.", default=False),
    _msg("msg", "heartbeat_interval", "int", "connection",
         "Seconds between ENQUIRE_LINK requests; 0 sends none.", minimum=0, default=0),
    _msg("msg", "incoming_aaa", "bool", "domain_policy",
         "Authorize and bill incoming messages.", default=False),
    _msg("msg", "local_lookup", "bool", "domain_policy",
         "Look the destination number up among the accounts of the network.", default=False),
    _msg("msg", "outgoing_aaa", "bool", "domain_policy",
         "Send accounting for outgoing messages; off: authenticate only (imbill's default: "
         "on, so an account no policy matches is billed, never given free messages).", default=True),
    _msg("msg", "reconnect_interval", "int", "connection",
         "Seconds before reconnecting a failed outgoing SMPP connection.", minimum=0),
    _msg("msg", "registered_delivery", "int", "connection",
         "Delivery reports: 0 none, 1 always, 2 on error, 3 on delivery.",
         minimum=0, maximum=3, default=0),
    _msg("msg", "reject_error_codes", "list", "connection",
         "Vendor error codes (hexadecimal) after which an SMS is not resent.",
         item="hex"),
    _msg("msg", "source_addr_npi", "enum", "connection",
         "Numbering plan indicator of the originating SME.", allowed=_NPI),
    _msg("msg", "source_addr_ton", "enum", "connection",
         "Type of number of the originating SME.", allowed=_TON),
    _msg("msg", "system_type", "string", "connection",
         "ESME system type sent when binding to the SMSC."),
    _msg("msg", "transport_protocol", "enum", "domain_policy",
         "Delivery protocol: SIP on-net and off-net, SMPP off-net only.",
         allowed=("SIP", "SMPP"), default="SIP"),
    _msg("msg", "userpart_e164_translation", "bool", "domain_policy",
         "Translate the destination number with the dialing rules.", default=False),
    _msg("qualution", "push_events", "bool", "product",
         "Notify end users of their volume discount usage via Qualution."),
    _msg("ro", "rise_mscc_result_code", "bool", "connection",
         "Copy the MSCC Result-Code into the Result-Code AVP of the Diameter CCA.", default=False),
)

VOICE_CATALOGUE: Mapping[str, AttributeSpec] = MappingProxyType({s.key: s for s in _VOICE_SPECS})
MESSAGING_CATALOGUE: Mapping[str, AttributeSpec] = MappingProxyType(
    {s.key: s for s in _MESSAGING_SPECS}
)
CATALOGUE: Mapping[str, Mapping[str, AttributeSpec]] = MappingProxyType(
    {"voice": VOICE_CATALOGUE, "messaging": MESSAGING_CATALOGUE}
)


# --- values -------------------------------------------------------------------------------

class _Refused(Exception):
    """A value refused by a parser; the caller names the policy and the attribute."""


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def _fold(text: str) -> str:
    return re.sub(r"[\s-]+", "_", text.strip()).lower()


def _range_text(spec: AttributeSpec) -> str:
    if spec.maximum is None:
        return f">= {spec.minimum}"
    return f"{spec.minimum}..{spec.maximum}"


def _allowed_text(spec: AttributeSpec) -> str:
    if spec.type == "bool":
        return "true, false, yes, no"
    if spec.type == "int":
        return _range_text(spec) if spec.minimum is not None else "an integer"
    if spec.type == "enum":
        text = ", ".join(spec.allowed or ())
        return text if spec.minimum is None else f"{text} or an integer {_range_text(spec)}"
    if spec.type == "string":
        return "fr.GSTN followed by R1R2C1C2C3C4C5XX" if spec.pattern else "text"
    return {
        "string": "a list of text items",
        "int": f"a list of SIP response codes {_range_text(spec)}",
        "enum": "a list of " + ", ".join(spec.allowed or ()),
        "hex": "a list of hexadecimal codes such as 00000058, 58, 0x58",
    }[spec.item or "string"]


def _parse_bool(spec: AttributeSpec, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "yes", "false", "no"}:
        return value.strip().lower() in {"true", "yes"}
    raise _Refused("is not a boolean")


def _parse_int(spec: AttributeSpec, value: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Refused("is not an integer")
    if (spec.minimum is not None and value < spec.minimum) or (
        spec.maximum is not None and value > spec.maximum
    ):
        raise _Refused("is out of range")
    return value


def _parse_enum(spec: AttributeSpec, value: Any) -> str | int:
    if value is False and "no" in (spec.allowed or ()):
        return "no"  # YAML reads an unquoted `no` as false
    if spec.minimum is not None and not isinstance(value, bool) and (
        isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())
    ):
        return _parse_int(spec, value)
    if isinstance(value, str):
        folded = _ALIASES.get(_fold(value), _fold(value))
        for allowed in spec.allowed or ():
            if _fold(allowed) == folded:
                return allowed
    raise _Refused("is not an allowed value")


def _parse_string(spec: AttributeSpec, value: Any) -> str:
    if not isinstance(value, str):
        raise _Refused("is not text")
    if not value.strip():
        raise _Refused("is empty")
    if spec.pattern and not re.fullmatch(spec.pattern, value.strip()):
        raise _Refused("does not match the format")
    return value.strip()


def _parse_hex(spec: AttributeSpec, value: Any) -> str:
    if not isinstance(value, str):
        raise _Refused("is not quoted hexadecimal text")
    match = re.fullmatch(r"(?:0[xX])?([0-9a-fA-F]{1,8})", value.strip())
    if match is None:
        raise _Refused("is not a hexadecimal code")
    return f"0x{int(match.group(1), 16):08X}"


_ITEM_PARSERS = {"string": _parse_string, "int": _parse_int, "enum": _parse_enum, "hex": _parse_hex}


def _parse_list(spec: AttributeSpec, value: Any) -> tuple:
    if isinstance(value, str):
        value = [p.strip() for p in value.split(",")] if value.strip() else []
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise _Refused("is not a list")
    items = []
    for item in value:
        try:
            items.append(_ITEM_PARSERS[spec.item or "string"](spec, item))
        except _Refused as refused:
            raise _Refused(f"has an item {_show(item)} that {refused}") from None
    if spec.item == "enum" and "none" in items and len(items) > 1:
        raise _Refused('combines "none" with other values')
    return tuple(items)


_PARSERS = {"bool": _parse_bool, "int": _parse_int, "enum": _parse_enum,
            "string": _parse_string, "list": _parse_list}


def _normalise(policy: str, spec: AttributeSpec, value: Any) -> Any:
    if value is None:
        raise InvalidPolicyAttribute(policy, spec.key, "has no value", _allowed_text(spec))
    try:
        return _PARSERS[spec.type](spec, value)
    except _Refused as refused:
        problem = f"= {_show(value)} {refused}"
        raise InvalidPolicyAttribute(policy, spec.key, problem, _allowed_text(spec)) from None


# --- policies -----------------------------------------------------------------------------

def _flatten(attributes: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    for name, value in attributes.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            pairs.extend(_flatten(value, f"{key}."))
        else:
            pairs.append((key, value))
    return pairs


def _sections(catalogue: Mapping[str, AttributeSpec]) -> list[str]:
    return sorted({spec.section for spec in catalogue.values()})


def _lookup(policy: str, service_type: str, key: str) -> AttributeSpec:
    catalogue = CATALOGUE[service_type]
    if key in catalogue:
        return catalogue[key]
    for other, other_catalogue in CATALOGUE.items():
        if key in other_catalogue:
            problem = f"is a {other} attribute, not a {service_type} one"
            allowed = f"{service_type} sections " + ", ".join(_sections(catalogue))
            raise InvalidPolicyAttribute(policy, key, problem, allowed)
    sections = [s for s in _sections(catalogue) if key.startswith(f"{s}.")]
    if sections:
        section = max(sections, key=len)
        allowed = ", ".join(sorted(k for k, s in catalogue.items() if s.section == section))
    else:
        allowed = f"{service_type} sections " + ", ".join(_sections(catalogue))
    raise InvalidPolicyAttribute(policy, key, "is unknown", allowed)


def _service(service_type: str) -> str:
    folded = service_type.strip().lower()
    if folded not in CATALOGUE:
        allowed = ", ".join(SERVICE_TYPES)
        raise ValueError(f"unknown service type {service_type!r}; allowed: {allowed}")
    return folded


def parse_attributes(service_type: str, attributes: Mapping, *, policy: str = "") -> dict[str, Any]:
    """Check and normalise a policy's attributes, given as ``{section: {name: value}}``.

    Flat ``"section.name"`` keys are accepted too. Returns ``{"section.name": value}``;
    raises :class:`InvalidPolicyAttribute` for the first attribute that is refused.
    """
    service = _service(service_type)
    if not isinstance(attributes, Mapping):
        shape = "{section: {name: value}}"
        raise InvalidPolicyAttribute(policy, "attributes", "are not a mapping", shape)
    parsed: dict[str, Any] = {}
    for key, value in _flatten(attributes):
        spec = _lookup(policy, service, key)
        if key in parsed:
            raise InvalidPolicyAttribute(policy, key, "is set more than once", "one value")
        parsed[key] = _normalise(policy, spec, value)
    return parsed


def check_applicability(attrs: Mapping[str, Any], usages: set[str] | frozenset[str], *,
                        policy: str = "") -> None:
    """Refuse an attribute that applies to none of the policy's usages (see the module doc).

    ``attrs`` is keyed ``"section.name"`` (the result of :func:`parse_attributes`). A key shared
    by voice and messaging (``ro.rise_mscc_result_code``) applies to the same usages in both.
    """
    unknown = set(usages) - USAGES
    if unknown:
        raise ValueError(f"unknown usages {sorted(unknown)}; allowed: {', '.join(sorted(USAGES))}")
    for key in attrs:
        specs = [c[key] for c in CATALOGUE.values() if key in c]
        if not specs:
            allowed = "see `imbill policy attributes`"
            raise InvalidPolicyAttribute(policy, key, "is unknown", allowed)
        applies_to = specs[0].applies_to
        if not applies_to & set(usages):
            problem = "does not apply to " + (", ".join(sorted(usages)) or "a policy with no usage")
            raise InvalidPolicyAttribute(policy, key, problem, ", ".join(sorted(applies_to)))


# --- the CLI table ------------------------------------------------------------------------

CATALOGUE_COLUMNS = ("key", "service", "type", "allowed", "default", "applies to", "description")


def _default_text(spec: AttributeSpec) -> str:
    return "" if spec.default is None else _show(spec.default).strip('"')


def catalogue_rows(service_type: str | None = None) -> tuple[tuple[str, ...], ...]:
    """Rows of text for ``imbill policy attributes``, in :data:`CATALOGUE_COLUMNS` order."""
    services = SERVICE_TYPES if service_type is None else (_service(service_type),)
    return tuple(
        (spec.key, spec.service, spec.type, _allowed_text(spec), _default_text(spec),
         ", ".join(sorted(spec.applies_to)), spec.description)
        for service in services
        for spec in sorted(CATALOGUE[service].values(), key=lambda s: s.key)
    )
