"""The events of imbill, as frozen dataclasses: what every topic carries.

Each class has exactly the fields of its Avro schema (``schemas/avro/<ClassName>.avsc``);
:mod:`imbill.schemas.codec` turns them into bytes and back (``encode_event`` and
``decode_event``) and nothing else does. Producers, the processor, the projectors and
re-rating speak these types; the rules return them.

Config events are :class:`ConfigObjectDefined` (an envelope around one config object of
:mod:`.config`, whose kind names the Avro event: ``ServicePolicyDefined``, ``RateDefined``,
...) and :class:`ConfigObjectRemoved`.

Ids are stable, derived from the cause, so reprocessing never doubles an effect:
``chg-<attempt id>``, ``rej-<attempt id>``, ``bal-<charge or payment id>``,
``st-<cause id>-<status>``, ``cfgrej-<config topic>-<partition>-<offset>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any, Mapping

from imbill.domain.config import KIND_BY_CLASS

__all__ = ["MessageAttempt", "Charge", "Rejection", "Payment", "PaymentRejected", "BalanceChanged",
           "ServiceStatusChanged", "RegistrationChanged", "RerateRun", "ConfigObjectDefined", "ConfigEventRejected", "config_rejection_id_of", "ConfigObjectRemoved", "Event", "ConfigEvent",
           "ACCOUNT_EVENTS", "event_name", "field_names", "charge_id_of", "rejection_id_of", "correction_id_of"]


@dataclass(frozen=True, slots=True)
class MessageAttempt:
    """A SIP MESSAGE the edge accepted (answered 202): the input of rating."""

    attempt_id: str
    received_at: datetime
    environment: str
    direction: str
    call_id: str
    cseq: int
    from_user: str
    from_domain: str
    to_user: str
    to_domain: str
    request_uri: str
    user_agent: str | None
    content_type: str | None
    body_chars: int
    body_bytes: int
    source_ip: str
    source_port: int
    transport: str
    edge_id: str
    delivery: str | None = None
    """delivered or failed when the edge delivered the message to the recipient's registered
    Contact itself; None when it did not (off-net, delivery off, no binding)."""
    delivery_code: int | None = None
    """The final SIP status of that delivery (200, 480, 408, ...)."""


@dataclass(frozen=True, slots=True)
class Charge:
    """A rated and billed message (kind ``charge``), later its corrections."""

    charge_id: str
    attempt_id: str
    kind: str
    corrects: str | None
    environment: str
    account: str
    customer: str
    direction: str
    attempted_at: datetime
    rated_at: datetime
    from_user: str
    to_user: str
    to_domain: str
    destination: str
    on_net: bool
    body_chars: int
    billing_units: int
    unit_price: Decimal
    amount: Decimal
    currency: str
    tariff: str
    rate_code: str
    rate_effective_from: datetime
    service_policy: str | None
    policies: tuple[str, ...]
    transport_protocol: str
    vendor: str | None
    connection: str | None
    vendor_tariff: str | None
    vendor_cost: Decimal
    vendor_currency: str | None
    revision: int = 1
    """1 for a charge; a correction is revision n + 1 of the charge it corrects."""
    service: str = "messaging"
    node: str | None = None
    """The node of the usage charge that chose the tariff (PortaSIP in the checklist)."""
    cli_translated: str | None = None
    """The CLI (from_user, as sent) as translated: E.164 by the dialing rules when the policy
    translates (``destination`` is the CLD as translated)."""
    destination_description: str | None = None
    """The description of the destination whose prefix is the rate code (MSGN: on-net)."""
    user_agent: str | None = None
    """The SIP User-Agent of the attempt."""
    difference: Decimal | None = None
    """A correction: its amount minus the superseded outcome's (a rejection's is 0); None on
    a first charge, whose difference is its amount."""
    rerate_run: str | None = None
    """A correction: the re-rating run that made it."""
    delivery: str | None = None
    """delivered or failed when the SIP edge delivered the message itself; None otherwise."""
    delivery_code: int | None = None
    """The final SIP status of the edge's delivery (200, 480, 408, ...)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """An attempt not charged, with a stable reason code (``rating.REASON_CODES``)."""

    rejection_id: str
    attempt_id: str
    environment: str
    account: str
    attempted_at: datetime
    rejected_at: datetime
    reason_code: str
    message: str
    to_user: str
    to_domain: str


@dataclass(frozen=True, slots=True)
class Payment:
    """A top-up of an account balance."""

    payment_id: str
    environment: str
    account: str
    amount: Decimal
    currency: str
    received_at: datetime
    reference: str


@dataclass(frozen=True, slots=True)
class PaymentRejected:
    """A payment not applied: not lost, refused where everyone sees it."""

    payment_id: str
    environment: str
    account: str
    amount: Decimal
    currency: str
    received_at: datetime
    rejected_at: datetime
    reason_code: str
    message: str


@dataclass(frozen=True, slots=True)
class BalanceChanged:
    """Every change of an account balance, with its cause (a charge or a payment)."""

    event_id: str
    environment: str
    account: str
    cause: str
    cause_id: str
    delta: Decimal
    balance: Decimal
    currency: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class ServiceStatusChanged:
    """Messaging suspended (wallet empty) or resumed (top-up), for messaging servers."""

    event_id: str
    environment: str
    account: str
    service: str
    status: str
    reason: str
    cause_id: str
    occurred_at: datetime
    push_events: bool


@dataclass(frozen=True, slots=True)
class RegistrationChanged:
    """A binding of an account's Contact made, refreshed, removed or lapsed at the SIP edge
    (REGISTER, RFC 3261 section 10); the registrar's rules are :mod:`.registrations`."""

    event_id: str
    environment: str
    account: str
    contact: str
    """The Contact URI requests for the account are delivered to."""
    expires_at: datetime
    """When the binding lapses without a refresh (removed: when it was removed)."""
    user_agent: str | None
    source: str
    """host:port the REGISTER came from."""
    transport: str
    call_id: str
    cseq: int
    """The Call-ID and CSeq of the REGISTER (RFC 3261 10.3: a re-ordered older one is refused)."""
    state: str
    """bound, refreshed, removed or expired."""
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class RerateRun:
    """One state of a re-rating run (started, finished); a run's latest record is its state."""

    run_id: str
    state: str
    requested_by: str
    at: datetime
    started_at: datetime
    filter: str
    """The filter as JSON (from, to, environment, account, customer, tariff, rate_code)."""
    config_as_of: datetime
    scanned: int = 0
    rerated: int = 0
    changed: int = 0
    appended: int = 0
    differences: Mapping[str, str] = field(default_factory=dict)
    """Currency -> the sum of the corrections' differences (a decimal string)."""


@dataclass(frozen=True, slots=True)
class ConfigObjectDefined:
    """A config object defined or redefined (its whole new value): ``ServicePolicyDefined``,
    ``RateDefined``, ... by the object's kind."""

    event_id: str
    environment: str
    occurred_at: datetime
    object: Any

    @property
    def name(self) -> str:
        return KIND_BY_CLASS[type(self.object)].event


@dataclass(frozen=True, slots=True)
class ConfigObjectRemoved:
    """A config object removed from its environment (rates are never removed)."""

    event_id: str
    environment: str
    occurred_at: datetime
    kind: str
    key: str


@dataclass(frozen=True, slots=True)
class ConfigEventRejected:
    """A config record every reader skips (``refusal.CONFIG_REASON_CODES``), said once where
    everyone sees it. The processor worker that owns attempts partition 0 emits it (see
    ``streams/config_rejections.py``); its id is derived from where the record is."""

    rejection_id: str
    config_topic: str
    config_partition: int
    config_offset: int
    event_id: str | None
    event: str | None
    environment: str | None
    kind: str | None
    key: str | None
    reason_code: str
    message: str
    rejected_at: datetime


Event = (MessageAttempt | Charge | Rejection | Payment | PaymentRejected | BalanceChanged | ServiceStatusChanged
         | RegistrationChanged | ConfigObjectDefined | ConfigObjectRemoved | ConfigEventRejected)
ConfigEvent = ConfigObjectDefined | ConfigObjectRemoved
ACCOUNT_EVENTS = (Charge, Rejection, PaymentRejected, BalanceChanged, ServiceStatusChanged)
"""The processor's outputs: each belongs to one account of one environment."""


def event_name(event: Any) -> str:
    """The Avro schema name of an event."""
    return event.name if type(event) is ConfigObjectDefined else type(event).__name__


_FIELDS: dict[type, tuple[str, ...]] = {}


def field_names(cls: type) -> tuple[str, ...]:
    """The field names of an event class, in schema order (remembered)."""
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    return names


def charge_id_of(attempt_id: str) -> str:
    return "chg-" + attempt_id


def rejection_id_of(attempt_id: str) -> str:
    return "rej-" + attempt_id


def correction_id_of(attempt_id: str, revision: int) -> str:
    """The id of revision ``revision`` (2 or more) of an attempt's outcome: a re-send of the
    same correction has the same id, so it is never applied twice."""
    return f"chg-{attempt_id}#{revision}"


def config_rejection_id_of(topic: str, partition: int, offset: int) -> str:
    return f"cfgrej-{topic}-{partition}-{offset}"
