"""The config state: a fold over the append-only config events.

Config is never edited in place. Each object of the operator's checklist (service types,
dialing rules, destinations, service policies, tariffs and their rates, vendors and
vendor connections, products, customers, accounts) is defined by an event that carries
its whole new value, and removed by ``ConfigObjectRemoved``. Folding the events of a topic
in order gives the config in force; folding those up to an instant gives the config in
force then (:func:`fold` with ``until``).

Every object is a frozen dataclass whose fields are exactly the fields of its Avro event
(less the envelope: event_id, environment, occurred_at), so a desired object read from a
YAML file and the object folded from the topic compare equal when nothing changed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable, Iterable, Mapping

__all__ = [
    "ServiceTypes", "DialingRulesConfig", "Destination", "ServicePolicy", "Tariff", "Rate",
    "Vendor", "VendorConnection", "UsageCharge", "Product", "Customer", "Account",
    "Kind", "KINDS", "KIND_BY_EVENT", "KIND_BY_NAME", "KIND_BY_CLASS", "EnvironmentConfig", "ConfigState", "fold",
    "object_key", "to_record", "from_record",
]


@dataclass(frozen=True)
class ServiceTypes:
    """BillingEngine ServiceTypes: the Messaging service must be enabled."""

    messaging_enabled: bool
    voice_enabled: bool = True


@dataclass(frozen=True)
class DialingRulesConfig:
    country_code: str
    international_prefix: str = "00"
    national_prefix: str = "0"
    area_code: str = ""
    min_length: int = 7
    max_length: int = 15


@dataclass(frozen=True)
class Destination:
    prefix: str
    format: str = "custom"
    description: str = ""


@dataclass(frozen=True)
class ServicePolicy:
    name: str
    service_type: str
    match_priority: int = 0
    pattern: str | None = None
    description: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Tariff:
    name: str
    currency: str
    service: str = "messaging"
    applied_to: str = "customer"
    routing: bool = False
    managed_by: str = "administrator"
    description: str = ""


@dataclass(frozen=True)
class Rate:
    tariff: str
    rate_code: str
    unit_price: Decimal
    effective_from: datetime
    rating_mode: str = "flat"
    description: str = ""


@dataclass(frozen=True)
class Vendor:
    name: str
    internal: bool = False
    description: str = ""


@dataclass(frozen=True)
class VendorConnection:
    vendor: str
    description: str
    tariff: str
    service_type: str = "messaging"
    connection_type: str = "SIP/SIMPLE"
    internal: bool = False
    use_for: str | None = None
    routing_preference: int = 0
    service_policy: str | None = None


@dataclass(frozen=True)
class UsageCharge:
    service: str
    node: str
    tariff: str


@dataclass(frozen=True)
class Product:
    name: str
    services: tuple[str, ...] = ()
    usage_charges: tuple[UsageCharge, ...] = ()
    service_policy: str | None = None


@dataclass(frozen=True)
class Customer:
    name: str
    currency: str
    description: str = ""


@dataclass(frozen=True)
class Account:
    account_id: str
    customer: str
    product: str
    service_password: str = ""
    aliases: tuple[str, ...] = ()
    service_policy: str | None = None
    balance_model: str = "postpaid"
    opening_balance: Decimal = Decimal(0)
    credit_limit: Decimal = Decimal(0)


@dataclass(frozen=True)
class Kind:
    """One kind of config object: its event, its class, how it is keyed and stored."""

    name: str
    event: str
    cls: type
    key: Callable[[Any], str]
    collection: str
    singleton: bool = False


def _rate_key(rate: Rate) -> str:
    return f"{rate.tariff}|{rate.rate_code}|{rate.effective_from.isoformat()}"


KINDS: tuple[Kind, ...] = (
    Kind("service_types", "ServiceTypesSet", ServiceTypes, lambda o: "", "service_types", True),
    Kind("dialing_rules", "DialingRulesSet", DialingRulesConfig, lambda o: "", "dialing_rules", True),
    Kind("destination", "DestinationDefined", Destination, lambda o: o.prefix, "destinations"),
    Kind("service_policy", "ServicePolicyDefined", ServicePolicy, lambda o: o.name, "service_policies"),
    Kind("tariff", "TariffDefined", Tariff, lambda o: o.name, "tariffs"),
    Kind("rate", "RateDefined", Rate, _rate_key, "rates"),
    Kind("vendor", "VendorDefined", Vendor, lambda o: o.name, "vendors"),
    Kind("vendor_connection", "VendorConnectionDefined", VendorConnection,
         lambda o: f"{o.vendor}/{o.description}", "vendor_connections"),
    Kind("product", "ProductDefined", Product, lambda o: o.name, "products"),
    Kind("customer", "CustomerDefined", Customer, lambda o: o.name, "customers"),
    Kind("account", "AccountDefined", Account, lambda o: o.account_id, "accounts"),
)
KIND_BY_EVENT: Mapping[str, Kind] = {k.event: k for k in KINDS}
KIND_BY_NAME: Mapping[str, Kind] = {k.name: k for k in KINDS}
KIND_BY_CLASS: Mapping[type, Kind] = {k.cls: k for k in KINDS}


def object_key(obj: Any) -> tuple[str, str]:
    """(kind name, key) of a config object."""
    kind = KIND_BY_CLASS[type(obj)]
    return kind.name, kind.key(obj)


def to_record(obj: Any) -> dict[str, Any]:
    """The event body of a config object (without the envelope)."""
    record = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    for name, value in record.items():
        if isinstance(value, tuple):
            record[name] = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
        elif isinstance(value, Mapping):
            record[name] = dict(value)
    return record


def from_record(kind: Kind, record: Mapping[str, Any]) -> Any:
    """The config object carried by a ``<Kind>Defined``/``Set`` event record."""
    values = {}
    for f in dataclasses.fields(kind.cls):
        value = record[f.name]
        if isinstance(value, list):
            value = tuple(UsageCharge(**v) if isinstance(v, Mapping) else v for v in value)
        elif isinstance(value, Mapping):
            value = dict(value)
        values[f.name] = value
    return kind.cls(**values)


@dataclass
class EnvironmentConfig:
    """The config in force in one virtual environment."""

    name: str
    service_types: dict[str, ServiceTypes] = field(default_factory=dict)
    dialing_rules: dict[str, DialingRulesConfig] = field(default_factory=dict)
    destinations: dict[str, Destination] = field(default_factory=dict)
    service_policies: dict[str, ServicePolicy] = field(default_factory=dict)
    tariffs: dict[str, Tariff] = field(default_factory=dict)
    rates: dict[str, Rate] = field(default_factory=dict)
    vendors: dict[str, Vendor] = field(default_factory=dict)
    vendor_connections: dict[str, VendorConnection] = field(default_factory=dict)
    products: dict[str, Product] = field(default_factory=dict)
    customers: dict[str, Customer] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    version: int = 0
    """Count of events applied; rule indexes cache against it."""

    @property
    def messaging_enabled(self) -> bool:
        types = self.service_types.get("")
        return bool(types and types.messaging_enabled)

    def collection(self, kind: Kind) -> dict[str, Any]:
        return getattr(self, kind.collection)

    def objects(self) -> Iterable[Any]:
        for kind in KINDS:
            yield from self.collection(kind).values()

    def get(self, kind_name: str, key: str) -> Any | None:
        return self.collection(KIND_BY_NAME[kind_name]).get(key)


@dataclass
class ConfigState:
    """Every environment's config, and where in the config topic it was read up to."""

    environments: dict[str, EnvironmentConfig] = field(default_factory=dict)
    events_applied: int = 0
    last_event_at: datetime | None = None

    def environment(self, name: str) -> EnvironmentConfig | None:
        return self.environments.get(name)

    def apply(self, name: str, record: Mapping[str, Any]) -> None:
        """Fold one config event into the state (unknown event types are ignored)."""
        env = self.environments.get(record["environment"])
        if env is None:
            env = self.environments[record["environment"]] = EnvironmentConfig(record["environment"])
        if name == "ConfigObjectRemoved":
            env.collection(KIND_BY_NAME[record["kind"]]).pop(record["key"], None)
        elif name in KIND_BY_EVENT:
            kind = KIND_BY_EVENT[name]
            obj = from_record(kind, record)
            env.collection(kind)[kind.key(obj)] = obj
        else:
            return
        env.version += 1
        self.events_applied += 1
        self.last_event_at = record["occurred_at"]


def fold(events: Iterable[tuple[str, Mapping[str, Any]]], until: datetime | None = None) -> ConfigState:
    """The config state after ``events`` (only those that occurred at or before ``until``)."""
    state = ConfigState()
    for name, record in events:
        if until is None or record["occurred_at"] <= until:
            state.apply(name, record)
    return state
