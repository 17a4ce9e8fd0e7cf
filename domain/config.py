"""The config state: a fold over the append-only config events.

Config is never edited in place. Each object of the operator's checklist (service types,
dialing rules, destinations, service policies, tariffs and their rates, vendors and
vendor connections, products, customers, accounts) is defined by an event that carries
its whole new value, and removed by ``ConfigObjectRemoved``. Folding the events of a topic
in order gives the config in force. Rates have a valid time (``effective_from``), and so
has an account's product (``Account.product_history``); what was in force at an instant,
as known at another, is :mod:`.bitemporal`'s.

Every object is a frozen dataclass whose fields are exactly the fields of its Avro event
(less the envelope: event_id, environment, occurred_at), so a desired object read from a
YAML file and the object folded from the topic compare equal when nothing changed.
"""

from __future__ import annotations

import dataclasses
import sys
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import partial
from datetime import datetime, timezone
from decimal import Decimal
from operator import attrgetter
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

from imbill.domain.catalogue import parse_attributes
from imbill.domain.digest import ALGORITHMS, default_realm, ha1
from imbill.domain.e164 import DialingRules
from imbill.domain.errors import ConfigError, ConfigRefused
from imbill.domain.keys import KEY_SEPARATOR
from imbill.domain.money import BALANCE_LIMIT, PRICE_LIMIT, amount_problem
from imbill.domain.references import broken_references, referrers
from imbill.domain.sip_domains import check_domains, taken

__all__ = [
    "ServiceTypes", "SipSettings", "DialingRules", "Destination", "ServicePolicy", "Tariff", "Rate",
    "Vendor", "VendorConnection", "UsageCharge", "Product", "Customer", "Account",
    "Kind", "KINDS", "KIND_BY_EVENT", "KIND_BY_NAME", "KIND_BY_CLASS", "EnvironmentConfig", "ConfigState", "fold",
    "object_key", "to_record", "from_record", "NAME_LIMIT", "Skipped", "Refused", "SKIPPABLE", "refusal_of",
    "DEFAULT_SIP", "account_credentials", "check_algorithms", "ProductChange", "ORIGIN", "product_history_problem",
    "with_product_from",
]


@dataclass(frozen=True)
class ServiceTypes:
    """BillingEngine ServiceTypes: the Messaging service must be enabled."""

    messaging_enabled: bool
    voice_enabled: bool = True


@dataclass(frozen=True)
class SipSettings:
    """How the SIP edge treats the environment's requests (config: ``sip``).

    ``authentication``: digest authentication of every MESSAGE (and REGISTER) with the
    account's service password; off only for trusted peers and benchmarks. ``realm``: the
    digest realm ("" means the environment's name). ``proxy``: challenge as a proxy (407
    Proxy-Authenticate) instead of as a user agent server (401 WWW-Authenticate).
    ``algorithms``: offered in this order, one challenge each (RFC 8760: the preferred
    first; a client that takes the first challenge, as SIPp 3.6.1 does, needs MD5 first).
    ``domains``: the SIP domains served (schema version 2 of SipSettingsSet)."""

    authentication: bool = True
    realm: str = ""
    proxy: bool = False
    algorithms: tuple[str, ...] = ALGORITHMS
    domains: tuple[str, ...] = ()
    """The SIP domains the environment serves (config: ``sip_domains``): a request whose
    domain one of them is belongs to it (:mod:`.sip_domains`); none: the edge's default
    environment's, see the README's "Environments by domain"."""

    def realm_of(self, environment: str) -> str:
        return self.realm or default_realm(environment)


DEFAULT_SIP = SipSettings()
"""An environment without a ``sip`` config: authentication on, realm = its name, 401."""


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


class ProductChange(NamedTuple):
    """From ``effective_from`` on, the account's product is ``product`` (valid time)."""

    effective_from: datetime
    product: str


ORIGIN = datetime(1970, 1, 1, tzinfo=timezone.utc)
"""The ``effective_from`` of the change that records the product an account had before its
first change: a product in force since always (the epoch: the earliest Avro timestamp-millis
every reader writes and reads alike)."""

_effective_from = attrgetter("effective_from")


def product_history_problem(product: str, history: tuple[ProductChange, ...]) -> str:
    """Why ``history`` is no valid product history of an account whose product (now) is
    ``product`` ("" when it is): sorted, each instant once, the last change's product is
    ``product``, every instant timezone-aware."""
    if not history:
        return ""
    instants = [change.effective_from for change in history]
    if any(type(at) is not datetime or at.tzinfo is None for at in instants):
        return "product_history: every effective_from must be an instant with a time zone"
    if any(later <= earlier for earlier, later in zip(instants, instants[1:])):
        return "product_history: the changes must be in order of effective_from, each instant once"
    if history[-1].product != product:
        return (f"product_history: the latest change is to {history[-1].product!r}, "
                f"but the account's product is {product!r}")
    return ""


@dataclass(frozen=True, slots=True)
class Account:
    """A subscriber. Slots: a deployment holds a million of them (README, "Benchmarks")."""

    account_id: str
    customer: str
    product: str
    aliases: tuple[str, ...] = ()
    service_policy: str | None = None
    balance_model: str = "postpaid"
    opening_balance: Decimal = Decimal(0)
    credit_limit: Decimal = Decimal(0)
    digest_realm: str = ""
    """The realm of the HA1s below; "" when the account has no service password."""
    ha1_md5: str = ""
    """MD5(account_id:realm:service password), hex: what digest needs of the password."""
    ha1_sha256: str = ""
    """SHA-256(account_id:realm:service password), hex."""
    product_history: tuple[ProductChange, ...] = ()
    """The account's product in valid time: each change says "from ``effective_from`` on,
    the product is ``product``", sorted by ``effective_from``, each instant once, the last
    one's product being :attr:`product`. Empty: the account has always had :attr:`product`.
    Before the earliest change, the earliest change's product applies: ``imbill account
    product`` records the product an account had before its first change as a change at
    :data:`ORIGIN`, so the earliest entry is the account's first product."""

    def product_at(self, when: datetime) -> str:
        """The product in force at ``when`` (rating an attempt received then, however late)."""
        history = self.product_history
        if not history:
            return self.product
        found = bisect_right(history, when, key=_effective_from)
        return history[found - 1].product if found else history[0].product

    def ha1(self, algorithm: str, realm: str) -> str | None:
        """The account's HA1 for ``algorithm`` in ``realm``, or None (no password, other realm)."""
        if not self.digest_realm or self.digest_realm != realm:
            return None
        return {"MD5": self.ha1_md5, "SHA-256": self.ha1_sha256}.get(algorithm) or None


def with_product_from(account: Account, product: str, effective_from: datetime) -> Account:
    """``account`` whose product is ``product`` from ``effective_from`` on (valid time): the
    change is put in its place in the history (replacing a change at the same instant), the
    product the account had before its first change kept as a change at :data:`ORIGIN`, and
    a change to the product already in force dropped. A history that says one product only
    is no history: ``product_history`` is then empty (the account as if never changed)."""
    if effective_from.tzinfo is None:
        raise ValueError("effective_from must be timezone-aware")
    history = account.product_history or (ProductChange(ORIGIN, account.product),)
    by_instant = {change.effective_from: change for change in history}
    by_instant[effective_from] = ProductChange(effective_from, product)
    changes: list[ProductChange] = []
    for change in sorted(by_instant.values(), key=_effective_from):
        if not changes or changes[-1].product != change.product:
            changes.append(change)
    kept = tuple(changes) if len(changes) > 1 else ()
    return dataclasses.replace(account, product=changes[-1].product, product_history=kept)


def account_credentials(account_id: str, realm: str, password: str) -> dict[str, str]:
    """The Account fields that stand for a service password (none for an empty one)."""
    if not password:
        return {"digest_realm": "", "ha1_md5": "", "ha1_sha256": ""}
    return {"digest_realm": realm, "ha1_md5": ha1("MD5", account_id, realm, password),
            "ha1_sha256": ha1("SHA-256", account_id, realm, password)}


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
    Kind("dialing_rules", "DialingRulesSet", DialingRules, lambda o: "", "dialing_rules", True),
    Kind("sip_settings", "SipSettingsSet", SipSettings, lambda o: "", "sip_settings", True),
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
            record[name] = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else
                            v._asdict() if type(v) is ProductChange else v for v in value]
        elif isinstance(value, Mapping):
            record[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
    return record


_SHARED_NAMES: Mapping[type, tuple[str, ...]] = {
    Account: ("customer", "product", "service_policy", "balance_model", "opening_balance", "credit_limit"),
    Rate: ("tariff",),
}
"""Fields whose values many objects repeat (the customer and product they name, the same
opening balance): each decoded record brings its own copy, so one object per value is kept
instead (~300 MB less for a million accounts; README, "Benchmarks")."""

_AMOUNTS_SEEN: dict[str, Decimal] = {}
_AMOUNTS_SEEN_LIMIT = 4_096


def _shared(value: Any) -> Any:
    """One object per equal value of a :data:`_SHARED_NAMES` field: names interned, amounts
    remembered by their exact text (``10.00`` and ``10.0`` are kept apart; bounded)."""
    if type(value) is str:
        return sys.intern(value)
    if type(value) is Decimal:
        text = str(value)
        found = _AMOUNTS_SEEN.get(text)
        if found is None:
            if len(_AMOUNTS_SEEN) >= _AMOUNTS_SEEN_LIMIT:
                _AMOUNTS_SEEN.clear()
            found = _AMOUNTS_SEEN[text] = value
        return found
    return value


def from_record(kind: Kind, record: Mapping[str, Any]) -> Any:
    """The config object carried by a ``<Kind>Defined``/``Set`` event record, checked as
    ``config apply`` checks it (:func:`_checked`): every reader agrees on what is invalid.
    An AccountDefined written before passwords were hashed is read as the HA1s of its
    password in the environment's default realm (:func:`_without_password`)."""
    if kind.cls is Account:
        record = _without_password(record)
    values, shared = {}, _SHARED_NAMES.get(kind.cls, ())
    for f in dataclasses.fields(kind.cls):
        value = record[f.name]
        if f.name in shared:
            value = _shared(value)
        elif f.name == "product_history":
            value = tuple(ProductChange(change["effective_from"], _shared(change["product"])) for change in value)
        elif isinstance(value, list):
            value = tuple(UsageCharge(**v) if isinstance(v, Mapping) else v for v in value)
        elif isinstance(value, Mapping):
            value = dict(value)
        values[f.name] = value
    return _checked(kind.cls(**values))


@dataclass(frozen=True)
class EnvironmentConfig:
    """The config in force in one virtual environment: a snapshot, never changed once folded
    (:meth:`ConfigState.applied` makes a new one; its collections are read-only to all)."""

    name: str
    service_types: dict[str, ServiceTypes] = field(default_factory=dict)
    dialing_rules: dict[str, DialingRules] = field(default_factory=dict)
    sip_settings: dict[str, SipSettings] = field(default_factory=dict)
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
    """Count of events applied to this environment."""
    derived_by_name: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """What :meth:`derived` has built from this snapshot, by name (read directly where one
    method call per message counts: ``rating.rate_attempt``)."""

    @property
    def messaging_enabled(self) -> bool:
        types = self.service_types.get("")
        return bool(types and types.messaging_enabled)

    @property
    def sip(self) -> SipSettings:
        return self.sip_settings.get("", DEFAULT_SIP)

    @property
    def realm(self) -> str:
        """The digest realm of the environment's SIP edge."""
        return self.sip.realm_of(self.name)

    def collection(self, kind: Kind) -> dict[str, Any]:
        return getattr(self, kind.collection)

    def objects(self) -> Iterable[Any]:
        for kind in KINDS:
            yield from self.collection(kind).values()

    def get(self, kind_name: str, key: str) -> Any | None:
        return self.collection(KIND_BY_NAME[kind_name]).get(key)

    def derived(self, name: str, build: Callable[[EnvironmentConfig], Any]) -> Any:
        """What the rules derive from this snapshot (an index), built once and kept with it:
        cached by the snapshot's identity, so a live and a replay snapshot of the same
        environment never share or evict each other's indexes."""
        found = self.derived_by_name.get(name)
        if found is None:
            found = self.derived_by_name[name] = build(self)
        return found


Skipped = Callable[[str, Mapping[str, Any], Exception], None]
"""Told of a config record the fold refuses: (event name, record, why)."""

Refused = Callable[[Any, str, str], None]
"""Told of a config record :meth:`ConfigState.folded` refuses: (its position, reason code, words)."""

SKIPPABLE = (KeyError, TypeError, ValueError, AttributeError, ConfigError)
"""What a record that does not describe a valid config object raises while folded."""


def refusal_of(exc: Exception) -> tuple[str, str]:
    """(reason code of ``refusal.CONFIG_REASON_CODES``, words) of a record the fold skipped
    with ``exc``: what ConfigEventRejected and ``imbill config history`` say about it."""
    if isinstance(exc, ConfigRefused):
        return exc.reason_code, str(exc)
    if isinstance(exc, KeyError):
        return "invalid_config_object", f"lacks the field {exc.args[0]}" if exc.args else "lacks a field"
    return "invalid_config_object", str(exc)


@dataclass(frozen=True)
class ConfigState:
    """Every environment's config, and how many config events were folded into it."""

    environments: Mapping[str, EnvironmentConfig] = field(default_factory=dict)
    events_applied: int = 0
    last_event_at: datetime | None = None

    def environment(self, name: str) -> EnvironmentConfig | None:
        return self.environments.get(name)

    def apply(self, name: str, record: Mapping[str, Any]) -> ConfigState:
        """The state after one more config event (this one is not changed)."""
        return self.applied([(name, record)], on_skip=_raise)

    def applied(self, events: Iterable[tuple[str, Mapping[str, Any]]], *, on_skip: Skipped | None = None) -> ConfigState:
        """The state after ``events``, in order. Unknown event types are ignored; a record
        that is no valid config object is skipped (``on_skip`` is told) and changes nothing.
        Each touched environment is copied once per call, never changed in place."""
        drafts: dict[str, _Draft] = {}
        count, last = self.events_applied, self.last_event_at
        for name, record in events:
            try:
                draft = _draft_of(drafts, self.environments, record["environment"])
                changed = draft.apply(name, record, partial(_domains_in_force, drafts, self.environments))
            except SKIPPABLE as exc:
                (on_skip or _ignore)(name, record, exc)
                continue
            if changed:
                count, last = count + 1, record["occurred_at"]
        if not drafts:
            return ConfigState(self.environments, count, last)
        environments = dict(self.environments)
        environments.update((env_name, draft.build()) for env_name, draft in drafts.items())
        return ConfigState(environments, count, last)

    def folded(self, records: Iterable[tuple[Any, str, Mapping[str, Any]]], on_refused: Refused) -> ConfigState:
        """The state after ``records`` ((position, event name, record) in topic order): how every
        reader of the config topic folds it. ``on_refused`` is told of each record that changes
        nothing and why (``refusal.CONFIG_REASON_CODES``): an event that is no config event, a
        record :meth:`applied` skips."""
        at: list[Any] = [None]

        def skipped(name: str, record: Mapping[str, Any], exc: Exception) -> None:
            on_refused(at[0], *refusal_of(exc))

        def config_events() -> Iterator[tuple[str, Mapping[str, Any]]]:
            for position, name, record in records:
                if name != "ConfigObjectRemoved" and name not in KIND_BY_EVENT:
                    on_refused(position, "not_config_event", f"{name} is no config event")
                    continue
                at[0] = position
                yield name, record

        return self.applied(config_events(), on_skip=skipped)


NAME_LIMIT = 4_096
"""The longest text of a config object other than a description (names, keys, patterns,
aliases): names are copied into every Charge, which must stay far below the broker's 1 MiB."""

_AMOUNTS: Mapping[str, tuple[tuple[str, Decimal], ...]] = {
    "Rate": (("unit_price", PRICE_LIMIT),),
    "Account": (("opening_balance", BALANCE_LIMIT), ("credit_limit", BALANCE_LIMIT)),
}
"""The amounts of config objects and their bounds (``config apply`` refuses the same)."""


def _checked(obj: Any) -> Any:
    """A config object as ``config apply`` would have let it through, or an error: a record
    written straight onto the topic gets the same checks (a service policy's attributes
    against the catalogue; amounts within their bounds; dialing rules check themselves)."""
    for name, limit in _AMOUNTS.get(type(obj).__name__, ()):
        problem = amount_problem(getattr(obj, name), limit)
        if problem:
            raise ValueError(f"{name} {problem}")
    for f in dataclasses.fields(obj):
        if f.name != "description" or type(obj) is VendorConnection:  # a connection's description names it
            _check_length(f.name, getattr(obj, f.name))
    if type(obj) is ServicePolicy:
        attributes = parse_attributes(obj.service_type, obj.attributes, policy=obj.name)
        return dataclasses.replace(obj, attributes=attributes)
    if type(obj) is Account and obj.product_history:
        problem = product_history_problem(obj.product, obj.product_history)
        if problem:
            raise ValueError(problem)
        for change in obj.product_history:
            _check_length("product_history", change.product)
    if type(obj) is SipSettings:
        check_algorithms(obj.algorithms)
        check_domains(obj.domains)
    return obj


def check_algorithms(algorithms: tuple[str, ...]) -> None:
    """Digest algorithms the edge can offer: SHA-256 and MD5, at least one, each once."""
    if not algorithms or len(set(algorithms)) != len(algorithms) or not set(algorithms) <= set(ALGORITHMS):
        raise ConfigError(f"algorithms must be some of {', '.join(ALGORITHMS)}, each once, got {list(algorithms)}")


def _without_password(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """An AccountDefined record with its clear ``service_password`` (written before 0.2,
    see the README's "Authentication") turned into HA1s: the password goes no further."""
    password = record.get("service_password")
    if not password:
        return record
    hashed = {name: value for name, value in record.items() if name != "service_password"}
    realm = default_realm(record.get("environment", ""))
    return hashed | account_credentials(record["account_id"], realm, password)


def _check_length(name: str, value: Any) -> None:
    for text in value if type(value) is tuple else (value,):
        if type(text) is str and len(text) > NAME_LIMIT:
            raise ValueError(f"{name} is {len(text):,} characters long, over {NAME_LIMIT:,}")


def _raise(name: str, record: Mapping[str, Any], exc: Exception) -> None:
    raise exc


def _ignore(name: str, record: Mapping[str, Any], exc: Exception) -> None:
    pass


def _draft_of(drafts: dict[str, _Draft], environments: Mapping[str, EnvironmentConfig], name: str) -> _Draft:
    if type(name) is not str:
        raise TypeError(f"environment name must be a string, not {type(name).__name__}")
    if not name.strip() or KEY_SEPARATOR in name or len(name) > NAME_LIMIT:
        raise ValueError(f"environment name {name[:80]!r} must not be empty, longer than {NAME_LIMIT:,} "
                         f"characters nor contain {KEY_SEPARATOR!r}")
    draft = drafts.get(name)
    if draft is None:
        draft = drafts[name] = _Draft(environments.get(name) or EnvironmentConfig(name))
    return draft


def _domains_in_force(drafts: Mapping[str, _Draft], environments: Mapping[str, EnvironmentConfig]
                      ) -> dict[str, tuple[str, ...]]:
    """Environment -> the SIP domains it serves, drafts (the events folded so far) first."""
    served = {name: env.sip.domains for name, env in environments.items()}
    for name, draft in drafts.items():
        settings = draft.view().sip_settings.get("")
        served[name] = settings.domains if settings is not None else ()
    return served


class _Draft:
    """A new snapshot of one environment under construction: a collection is copied the
    first time an event touches it, so the old snapshot stays as it was."""

    def __init__(self, base: EnvironmentConfig) -> None:
        self.base, self.version = base, base.version
        self.copied: dict[str, dict[str, Any]] = {}

    def apply(self, name: str, record: Mapping[str, Any],
              domains: Callable[[], Mapping[str, tuple[str, ...]]] = lambda: {}) -> bool:
        """Apply one event; raise (one of SKIPPABLE, changing nothing) if it is refused.
        ``domains``: the SIP domains each environment serves, for the check that no two
        environments serve one domain."""
        if name == "ConfigObjectRemoved":
            kind, key = KIND_BY_NAME[record["kind"]], record["key"]
            self._check_removal(kind, key)
            self._collection(kind).pop(key, None)
        elif name in KIND_BY_EVENT:
            kind = KIND_BY_EVENT[name]
            obj = from_record(kind, record)
            self._check_references(kind, obj)
            if kind.cls is SipSettings and obj.domains:
                self._check_domains(obj, domains())
            self._collection(kind)[kind.key(obj)] = obj
        else:
            return False
        self.version += 1
        return True

    def view(self) -> Any:
        """The environment's collections as they stand now (the draft's own: read only)."""
        return _View(self)

    def _check_references(self, kind: Kind, obj: Any) -> None:
        problems = broken_references(self.view(), obj)
        if problems:
            raise ConfigRefused("broken_reference", f"{kind.name} {kind.key(obj)!r}: " + "; ".join(
                f"{field_name}: {text}" for field_name, text in problems))

    def _check_domains(self, sip: SipSettings, domains: Mapping[str, tuple[str, ...]]) -> None:
        problem = taken(self.base.name, sip.domains, domains)
        if problem:
            raise ConfigRefused("domain_taken", f"sip_domains: {problem}")

    def _check_removal(self, kind: Kind, key: Any) -> None:
        if type(key) is not str:
            raise TypeError(f"the key of a removed object must be a string, not {type(key).__name__}")
        users = referrers(self.view(), kind.name, key)
        if users:
            raise ConfigRefused("still_referenced", f"{kind.name} {key!r} cannot be removed: "
                                f"{', '.join(users[:5])}{' ...' if len(users) > 5 else ''} still refer to it")

    def _collection(self, kind: Kind) -> dict[str, Any]:
        found = self.copied.get(kind.collection)
        if found is None:
            found = self.copied[kind.collection] = dict(self.base.collection(kind))
        return found

    def build(self) -> EnvironmentConfig:
        return dataclasses.replace(self.base, version=self.version, derived_by_name={}, **self.copied)


class _View:
    """A draft's collections by name, as an EnvironmentConfig has them (no copy)."""

    def __init__(self, draft: _Draft) -> None:
        self._draft = draft

    def __getattr__(self, name: str) -> Any:
        copied = self._draft.copied
        return copied[name] if name in copied else getattr(self._draft.base, name)


def fold(events: Iterable[tuple[str, Mapping[str, Any]]], *, on_skip: Skipped | None = None) -> ConfigState:
    """The config state after ``events``, in order (those known as of a record time:
    :func:`.bitemporal.known_as_of` first)."""
    return ConfigState().applied(events, on_skip=on_skip)
