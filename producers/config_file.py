"""The declarative config file of one virtual environment: YAML in, desired config objects out.

An operator describes the whole config of one environment in one file, in the words and the
order of the instant messaging checklist (``examples/instant-messaging.yaml``)::

    environment: default
    billing_engine: {service_types: {messaging: true, voice: true}}
    dialing_rules: {country_code: "1", international_prefix: "011", national_prefix: "1"}
    destinations: [{prefix: MSGN, format: custom, description: On-net messages}]
    service_policies: [{name, service_type, recipient_domain_pattern, match_priority, attributes}]
    tariffs: [{name, currency, service, applied_to, routing, managed_by, rates: [...]}]
    vendors: [{name, internal, connections: [{description, type, tariff, use_for, ...}]}]
    products: [{name, services, usage_charges: [{service, node, tariff}], service_policy}]
    customers: [{name, currency, accounts: [{id, service_password, product, aliases, ...,
                                             product_history: [{product, effective_from}]}]}]
    sip: {authentication: true, realm: "", proxy: false}
    sip_domains: [im.example.com]      # the SIP domains this environment serves (README)

A service password never leaves this module in clear: the account's object carries its
HA1s (:func:`~imbill.domain.config.account_credentials`) for the realm of ``sip`` (the
environment's name when none is given), which is all SIP digest authentication needs.

The file is the whole truth: an object missing from it is removed when the file is applied
(rates excepted, see :mod:`imbill.producers.config_publisher`), and a missing section means
"none". :func:`load_config_file` reads it in three steps: YAML (duplicate keys refused), the
shape (pydantic models, unknown fields refused), then the rules that tie objects together
(references, duplicates, currencies, policy attributes from the catalogue, dialing rules);
the references are checked by ``domain.references``, the rule the config fold applies too.
Every problem found is reported, one per line, as ``file: object "name": field: problem``;
:class:`ConfigFileError` is a :class:`~imbill.domain.errors.ConfigError`.

Money (unit_price, opening_balance, credit_limit) is a :class:`~decimal.Decimal`, never a
float: write it as a string (``"0.05"``) or a number, at most 6 decimals, never negative.
A rate's ``effective_from`` defaults to the Unix epoch (in force since always); a time
without a zone, or a bare date, is read as UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from os import PathLike
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Iterable, Literal, Mapping, get_args

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from imbill.domain.errors import ConfigError
from imbill.domain.keys import KEY_SEPARATOR
from imbill.domain.money import BALANCE_LIMIT, PRICE_LIMIT
from imbill.domain.config import (KIND_BY_CLASS, Account, Customer, Destination,
                                   EnvironmentConfig, NAME_LIMIT, Product, Rate, ServicePolicy, ServiceTypes,
                                   SipSettings, Tariff, UsageCharge, Vendor, VendorConnection, account_credentials,
                                   ProductChange)
from imbill.domain.catalogue import InvalidPolicyAttribute, check_applicability, parse_attributes
from imbill.domain.e164 import DialingRules, InvalidDialingRules
from imbill.domain.references import account_currency, policy_use, rate_code, tariff_use, unknown
from imbill.domain.sip_domains import check_domains, domain_of

__all__ = ["ConfigFileError", "DesiredConfig", "EPOCH", "load_config_file", "parse_config", "desired_config",
           "rate_of"]

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
"""Default ``effective_from`` of a rate: in force since always."""

_MICRO = Decimal("0.000001")
_MAX_MONEY_DIGITS = 18  # Avro decimal(24, 6): 18 digits before the point


class ConfigFileError(ConfigError):
    """A config file is invalid. ``problems`` are the lines of the message (each names the
    file, the object and the field)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source, self.problems = source, [f"{source}: {p}" for p in problems]
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class DesiredConfig:
    """The config one file wants for its environment, and how each service policy is used."""

    source: str
    environment: str
    config: EnvironmentConfig
    policy_usages: Mapping[str, frozenset[str]] = field(default_factory=dict)
    unstated_histories: frozenset[str] = frozenset()
    """The accounts whose ``product_history`` the file does not list: the history known for
    them stays (``imbill account product`` appends it; a file that says nothing of it must not
    erase it)."""


# --- values -------------------------------------------------------------------------------

def _refuse(message: str, **context: Any) -> PydanticCustomError:
    return PydanticCustomError("imbill", message, context)


def _digits(value: Any) -> Any:
    """YAML reads ``id: 1001`` or ``rate_code: 44`` as an int: taken as its digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _text(value: Any) -> Any:
    """Text of at most NAME_LIMIT characters (names reach every Charge)."""
    value = _digits(value)
    if isinstance(value, str) and len(value) > NAME_LIMIT:
        raise _refuse("is {length} characters long, over {limit}", length=f"{len(value):,}", limit=f"{NAME_LIMIT:,}")
    return value


def _name(value: Any) -> Any:
    value = _text(value)
    if isinstance(value, str) and not value.strip():
        raise _refuse("must not be empty")
    return value


def _environment_name(value: Any) -> Any:
    """An environment name is the first part of every account's Kafka key
    (``domain.keys.account_key``): without "/" in it, no two (environment, account) pairs
    share a key, so no tenant can be billed from another's wallet."""
    value = _name(value)
    if isinstance(value, str) and KEY_SEPARATOR in value:
        raise _refuse(f'must not contain "{KEY_SEPARATOR}" (it separates the environment from the account in keys)')
    return value


def _at_most(limit: Decimal) -> Any:
    """A check that an amount is at most ``limit`` (domain.money's documented bounds)."""
    def check(amount: Decimal) -> Decimal:
        if amount > limit:
            raise _refuse("is over the limit {limit}, got {value}", limit=f"{limit:,}", value=str(amount))
        return amount
    return check


def _empty_text(value: Any) -> Any:
    return "" if value is None else _digits(value)


def _empty_list(value: Any) -> Any:
    return [] if value is None else value


def _money(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise _refuse("must be an amount such as \"0.05\", got {value}", value=repr(value))
    try:
        amount = Decimal(str(value).strip())  # a YAML float through str(): 0.05 -> "0.05"
    except InvalidOperation:
        raise _refuse("must be an amount such as \"0.05\", got {value}", value=repr(value)) from None
    if not amount.is_finite():
        raise _refuse("must be a finite amount, got {value}", value=str(value))
    if amount < 0:
        raise _refuse("must not be negative, got {value}", value=str(value))
    if amount.adjusted() >= _MAX_MONEY_DIGITS:
        raise _refuse("is too large, got {value}", value=str(value))
    if amount != amount.quantize(_MICRO, rounding=ROUND_DOWN):
        raise _refuse("has more than 6 decimals, got {value}", value=str(value))
    return amount.quantize(_MICRO)


def _instant(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise _refuse("must be a time such as 2026-01-01T00:00:00Z, got {value}", value=repr(value)) from None
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time(), timezone.utc)
    if not isinstance(value, datetime):
        raise _refuse("must be a time such as 2026-01-01T00:00:00Z, got {value}", value=repr(value))
    value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if value.microsecond % 1000:
        raise _refuse("must be whole milliseconds, got {value}", value=value.isoformat())
    return value


def _currency(value: Any) -> Any:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Z]{3}", value):
        raise _refuse("must be a three-letter currency code such as USD, got {value}", value=repr(value))
    return value


Text = Annotated[str, BeforeValidator(_text)]
Name = Annotated[str, BeforeValidator(_name)]
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
"""A whole number that fits the Avro int of its event."""
EnvironmentName = Annotated[str, BeforeValidator(_environment_name)]
Description = Annotated[str, BeforeValidator(_empty_text)]
Money = Annotated[Decimal, BeforeValidator(_money)]
Price = Annotated[Decimal, BeforeValidator(_money), AfterValidator(_at_most(PRICE_LIMIT))]
Balance = Annotated[Decimal, BeforeValidator(_money), AfterValidator(_at_most(BALANCE_LIMIT))]
Instant = Annotated[datetime, BeforeValidator(_instant)]
Currency = Annotated[str, BeforeValidator(_currency)]
Service = Literal["messaging", "voice"]
EmptyList = BeforeValidator(_empty_list)
"""A list section or field left empty in YAML (``accounts:``) is an empty list."""


# --- the file's shape ---------------------------------------------------------------------

class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceTypesModel(_Model):
    messaging: bool
    voice: bool = True


class BillingEngineModel(_Model):
    service_types: ServiceTypesModel


class DialingRulesModel(_Model):
    """Values are checked by :meth:`DialingRules.from_mapping` (prefixes must be quoted)."""

    country_code: Any
    international_prefix: Any = None
    national_prefix: Any = None
    area_code: Any = None
    min_length: Any = None
    max_length: Any = None


class DestinationModel(_Model):
    prefix: Name
    format: Literal["custom", "e164"] = "custom"
    description: Description = ""


class ServicePolicyModel(_Model):
    name: Name
    service_type: Service
    recipient_domain_pattern: Text | None = None
    sip_endpoint_pattern: Text | None = None
    match_priority: Int32 = 0
    description: Description = ""
    attributes: Annotated[dict[str, Any], BeforeValidator(lambda v: {} if v is None else v)] = {}


class RateModel(_Model):
    rate_code: Name
    rating_mode: Literal["flat"] = "flat"
    unit_price: Price
    effective_from: Instant = EPOCH
    description: Description = ""


class TariffModel(_Model):
    name: Name
    currency: Currency
    service: Service = "messaging"
    applied_to: Literal["vendor", "customer"]
    routing: bool = False
    managed_by: Text = "administrator"
    description: Description = ""
    rates: Annotated[list[RateModel], EmptyList] = []


class ConnectionModel(_Model):
    description: Name
    service_type: Service = "messaging"
    type: Text = "SIP/SIMPLE"
    tariff: Name
    internal: bool = False
    use_for: Text | None = None
    routing_preference: Int32 = 0
    service_policy: Text | None = None


class VendorModel(_Model):
    name: Name
    internal: bool = False
    description: Description = ""
    connections: Annotated[list[ConnectionModel], EmptyList] = []


class UsageChargeModel(_Model):
    service: Service
    node: Name = "PortaSIP"
    tariff: Name


class ProductModel(_Model):
    name: Name
    services: Annotated[list[Service], EmptyList] = []
    usage_charges: Annotated[list[UsageChargeModel], EmptyList] = []
    service_policy: Text | None = None


class ProductChangeModel(_Model):
    product: Name
    effective_from: Instant


class AccountModel(_Model):
    id: Name
    service_password: Description = ""
    product: Name
    aliases: Annotated[list[Name], EmptyList] = []
    service_policy: Text | None = None
    balance_model: Literal["prepaid", "postpaid"] = "postpaid"
    opening_balance: Balance = Decimal(0)
    credit_limit: Balance = Decimal(0)
    product_history: list[ProductChangeModel] | None = None
    """None: the file says nothing of it (``config apply`` keeps the known history)."""


class CustomerModel(_Model):
    name: Name
    currency: Currency
    description: Description = ""
    accounts: Annotated[list[AccountModel], EmptyList] = []


def _once(values: list[str]) -> list[str]:
    if not values or len(set(values)) != len(values):
        raise _refuse("must list SHA-256 and/or MD5, each once, got {value}", value=values)
    return values


def _realm(value: Any) -> Any:
    """A realm is sent as a quoted string in every challenge (RFC 7616 section 3.3)."""
    value = _empty_text(value)
    if isinstance(value, str) and re.search(r'["\\\x00-\x1f\x7f]', value):
        raise _refuse("must not contain quotes, backslashes or control characters, got {value}", value=repr(value))
    return value


def _sip_domain(value: Any) -> Any:
    """A SIP domain of the environment: a host (name, IPv4, [IPv6]) without port, lower-cased."""
    if not isinstance(value, str):
        return value
    domain = domain_of(value.strip())
    try:
        check_domains([domain])
    except ValueError:
        raise _refuse("{value} is no host name, IPv4 address or [IPv6] reference (without port)",
                      value=repr(value)) from None
    return domain


def _distinct_domains(values: list[str]) -> list[str]:
    try:
        check_domains(values)
    except ValueError as exc:
        raise _refuse(str(exc).removeprefix("sip_domains: ")) from None
    return values


SipDomains = Annotated[list[Annotated[str, BeforeValidator(_sip_domain)]], EmptyList,
                       AfterValidator(_distinct_domains)]


class SipModel(_Model):
    """The SIP edge's treatment of the environment (README, "Authentication")."""

    authentication: bool = True
    realm: Annotated[str, BeforeValidator(_realm)] = ""
    proxy: bool = False
    algorithms: Annotated[list[Literal["SHA-256", "MD5"]], AfterValidator(_once)] = ["SHA-256", "MD5"]


class ConfigFileModel(_Model):
    environment: EnvironmentName
    billing_engine: BillingEngineModel | None = None
    dialing_rules: DialingRulesModel | None = None
    destinations: Annotated[list[DestinationModel], EmptyList] = []
    service_policies: Annotated[list[ServicePolicyModel], EmptyList] = []
    tariffs: Annotated[list[TariffModel], EmptyList] = []
    vendors: Annotated[list[VendorModel], EmptyList] = []
    products: Annotated[list[ProductModel], EmptyList] = []
    customers: Annotated[list[CustomerModel], EmptyList] = []
    sip: SipModel | None = None
    sip_domains: SipDomains = []


# --- reading ------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses a key written twice in one mapping (the last would win silently)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, float, bool)):
            continue  # construct_mapping refuses unhashable keys itself
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config_file(path: str | PathLike[str]) -> DesiredConfig:
    """Read and validate a config file; raises :class:`ConfigFileError` naming ``path``."""
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(str(path), [f"cannot read: {getattr(exc, 'strerror', None) or exc}"]) from exc
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = "<config>") -> DesiredConfig:
    """Validate the YAML text of a config file (``source`` names it in error messages)."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigFileError(source, [f"{where}malformed YAML: {exc.problem or exc.context}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigFileError(source, [f"malformed YAML: {exc}"]) from exc
    return desired_config(data, source)


def desired_config(data: Any, source: str = "<config>") -> DesiredConfig:
    """Validate an already loaded file (a mapping) into the desired config of its environment."""
    if not isinstance(data, Mapping):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigFileError(source, [f"expected a mapping with environment and the config sections, got {got}"])
    try:
        model = ConfigFileModel.model_validate(data)
    except ValidationError as exc:
        raise ConfigFileError(source, [_problem(data, error) for error in exc.errors()]) from None
    checker = _Checker(model)
    problems = checker.problems()
    if problems:
        raise ConfigFileError(source, problems)
    return DesiredConfig(source, model.environment, _build(model, checker),
                         {name: frozenset(usages) for name, usages in checker.usages.items()},
                         frozenset(a.id for c in model.customers for a in c.accounts if a.product_history is None))


def product_change_of(product: Any, effective_from: Any, source: str = "account product") -> ProductChange:
    """One product change as a file's ``product_history`` would list it (a product name, a
    whole-millisecond time, UTC unless zoned); raises :class:`ConfigFileError` naming
    ``source`` and every problem, on one line."""
    try:
        model = ProductChangeModel.model_validate({"product": product, "effective_from": effective_from})
    except ValidationError as exc:
        raise ConfigFileError(source, ["; ".join(f"{'/'.join(str(p) for p in e['loc'])}: {_message(e)}"
                                                 for e in exc.errors())]) from None
    return ProductChange(model.effective_from, model.product)


def rate_of(tariff: Any, rate_code: Any, unit_price: Any, effective_from: Any, description: Any = "",
            source: str = "rate") -> Rate:
    """One rate as a file's tariff would define it, checked with the same rules (a price of
    at most 6 decimals within PRICE_LIMIT, a whole-millisecond time, UTC unless zoned);
    raises :class:`ConfigFileError` naming ``source`` and every problem, on one line."""
    data = {"rate_code": rate_code, "unit_price": unit_price, "effective_from": effective_from,
            "description": description}
    problems = [f"tariff: {_message(e)}" for e in _tariff_name_errors(tariff)]
    try:
        model = RateModel.model_validate(data)
    except ValidationError as exc:
        problems += [f"{'/'.join(str(p) for p in e['loc'])}: {_message(e)}" for e in exc.errors()]
    if problems:
        raise ConfigFileError(source, ["; ".join(problems)])
    return Rate(tariff, model.rate_code, model.unit_price, model.effective_from, model.rating_mode, model.description)


def _tariff_name_errors(name: Any) -> list[Any]:
    try:
        TariffModel.model_validate({"name": name, "currency": "USD", "applied_to": "customer"})
    except ValidationError as exc:
        return exc.errors()
    return []


# --- where a shape problem is: `tariff "B": rate "MSGN": unit_price` -------------------------

_ITEMS = {  # list section -> (object word, identifying fields)
    "destinations": ("destination", ("prefix",)),
    "service_policies": ("service policy", ("name",)),
    "tariffs": ("tariff", ("name",)),
    "rates": ("rate", ("rate_code",)),
    "vendors": ("vendor", ("name",)),
    "connections": ("connection", ("description",)),
    "products": ("product", ("name",)),
    "usage_charges": ("usage charge", ("service", "node")),
    "customers": ("customer", ("name",)),
    "accounts": ("account", ("id",)),
}


def _label(word: str, name: Any) -> str:
    text = str(name)
    return f'{word} "{text if len(text) <= 60 else text[:57] + "..."}"'


def _item_label(section: str, item: Any, index: int) -> str:
    word, fields = _ITEMS[section]
    if isinstance(item, Mapping):
        names = [str(item[f]) for f in fields if isinstance(item.get(f), (str, int)) and str(item[f]).strip()]
        if names:
            return _label(word, "/".join(names))
    return f"{word} #{index + 1}"


def _where(data: Any, loc: tuple) -> list[str]:
    parts: list[str] = []
    node, i = data, 0
    while i < len(loc):
        segment, following = loc[i], loc[i + 1] if i + 1 < len(loc) else None
        child = node.get(segment) if isinstance(node, Mapping) else None
        if segment in _ITEMS and isinstance(following, int) and isinstance(child, list):
            item = child[following] if following < len(child) else None
            parts.append(_item_label(segment, item, following))
            node, i = item, i + 2
            continue
        if isinstance(segment, int):
            parts.append(f"item {segment + 1}")
            child = node[segment] if isinstance(node, list) and segment < len(node) else None
        else:
            parts.append(str(segment))
        node, i = child, i + 1
    return parts


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _fields_at(loc: tuple) -> list[str]:
    model: type[BaseModel] | None = ConfigFileModel
    for segment in loc:
        if isinstance(segment, str) and model is not None:
            info = model.model_fields.get(segment)
            model = _model_in(info.annotation) if info else None
    return list(model.model_fields) if model else []


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_SIMPLE = {
    "string_type": "must be text", "int_type": "must be an integer", "int_parsing": "must be an integer",
    "int_from_float": "must be an integer", "bool_type": "must be true or false",
    "bool_parsing": "must be true or false", "list_type": "must be a list", "dict_type": "must be a mapping",
    "model_type": "must be a mapping", "model_attributes_type": "must be a mapping",
}


def _message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "imbill":
        return error["msg"]
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return f"unknown field (allowed: {', '.join(_fields_at(error['loc'][:-1]))})"
    if kind == "literal_error":
        return f"must be {error['ctx']['expected'].replace(chr(39), '')}, got {_shown(error['input'])}"
    return f"{_SIMPLE.get(kind, error['msg'])}, got {_shown(error.get('input'))}"


def _problem(data: Any, error: Mapping[str, Any]) -> str:
    if error["loc"] and error["loc"][-1] == "service_password":  # never echo what may be a password
        return ": ".join([*_where(data, tuple(error["loc"])), "must be text"])
    return ": ".join([*_where(data, tuple(error["loc"])), _message(error)])


# --- the rules that tie objects together --------------------------------------------------

_ACCOUNT_USAGES = {"messaging": {"domain_policy"}, "voice": {"calling_party", "called_party"}}
_PATTERN = {"messaging": "recipient_domain_pattern", "voice": "sip_endpoint_pattern"}
_PATTERN_USAGES = {"messaging": {"domain_policy"}, "voice": {"dynamic_policy", "calling_party", "called_party"}}


class _Checker:
    """Cross-object rules over a well-shaped file; :meth:`problems` lists every one broken.

    It also derives how each service policy is used (``usages``: a pattern or an account
    makes a messaging policy a ``domain_policy``, a connection a ``connection`` policy, a
    product a ``product`` policy; a voice pattern a ``dynamic_policy`` used for both
    parties), and checks the policy attributes apply to those usages.
    """

    def __init__(self, model: ConfigFileModel) -> None:
        self.model = model
        self.found: list[str] = []
        self.dialing_rules: DialingRules | None = None
        self.attributes: dict[str, dict[str, Any]] = {}
        self.usages: dict[str, set[str]] = {}
        self.policies = self._first("service policy", model.service_policies, "name")
        self.tariffs = self._first("tariff", model.tariffs, "name")
        self.products = self._first("product", model.products, "name")
        self._first("vendor", model.vendors, "name")
        self._first("customer", model.customers, "name")
        self.destinations = self._first("destination", model.destinations, "prefix")
        self.named = SimpleNamespace(tariffs=self.tariffs, service_policies=self.policies, products=self.products,
                                     destinations=self.destinations)
        """The file's objects by name, as ``domain.references`` reads an environment."""

    def problems(self) -> list[str]:
        self._check_dialing_rules()
        for destination in self.model.destinations:
            self._check_destination(destination)
        for policy in self.model.service_policies:
            self._check_policy(policy)
        for tariff in self.model.tariffs:
            self._check_tariff(tariff)
        for vendor in self.model.vendors:
            self._check_vendor(vendor)
        for product in self.model.products:
            self._check_product(product)
        self._check_customers()
        self._check_applicability()
        return self.found

    def _problem(self, where: str, field_name: str, text: str) -> None:
        self.found.append(f"{where}: {field_name}: {text}")

    def _first(self, word: str, items: list, key: str) -> dict[str, Any]:
        """Items by name; a name used twice is a problem."""
        first: dict[str, Any] = {}
        for item in items:
            name = getattr(item, key)
            if name in first:
                self._problem(_label(word, name), key, "defined twice")
            else:
                first[name] = item
        return first

    def _problems(self, where: str, problems: Iterable[tuple[str, str]]) -> bool:
        """Record ``domain.references``' problems at ``where``; whether there were any."""
        found = False
        for field_name, text in problems:
            self._problem(where, field_name, text)
            found = True
        return found

    def _reference(self, where: str, field_name: str, word: str, name: str, known: Mapping[str, Any]) -> Any:
        if name in known:
            return known[name]
        self._problem(where, field_name, unknown(word, name, known))
        return None

    def _use_policy(self, where: str, name: str | None, usages: Mapping[str, set[str]],
                    service_type: str | None = None) -> None:
        if name is None or self._problems(where, policy_use(self.named, name, service_type)):
            return
        self.usages[name] |= usages[self.policies[name].service_type]

    def _check_dialing_rules(self) -> None:
        if self.model.dialing_rules is None:
            return
        try:
            self.dialing_rules = DialingRules.from_mapping(self.model.dialing_rules.model_dump(exclude_none=True))
        except InvalidDialingRules as exc:
            hint = " (quote it: YAML reads 011 as the number 9)" if "must be str, got" in str(exc) else ""
            self.found.append(f"dialing_rules: {exc}{hint}")

    def _check_destination(self, destination: DestinationModel) -> None:
        if destination.format == "e164" and not destination.prefix.isdigit():
            self._problem(_label("destination", destination.prefix), "prefix", "an e164 destination is digits")

    def _check_policy(self, policy: ServicePolicyModel) -> None:
        where = _label("service policy", policy.name)
        right = _PATTERN[policy.service_type]
        wrong = _PATTERN["voice" if policy.service_type == "messaging" else "messaging"]
        if getattr(policy, wrong) is not None:
            self._problem(where, wrong, f"a {policy.service_type} policy is matched by {right}")
        usages = self.usages.setdefault(policy.name, set())
        if getattr(policy, right) is not None:
            usages |= _PATTERN_USAGES[policy.service_type]
        try:
            self.attributes[policy.name] = parse_attributes(policy.service_type, policy.attributes,
                                                            policy=policy.name)
        except InvalidPolicyAttribute as exc:
            self._problem(where, "attributes", f"{exc.attribute} {exc.problem}; allowed: {exc.allowed}")

    def _check_tariff(self, tariff: TariffModel) -> None:
        where = _label("tariff", tariff.name)
        if tariff.applied_to == "vendor" and tariff.service == "messaging" and tariff.routing:
            self._problem(where, "routing", "must be disabled for a vendor messaging tariff")
        seen: set[tuple[str, datetime]] = set()
        for rate in tariff.rates:
            rate_where = f"{where}: {_label('rate', rate.rate_code)}"
            if (rate.rate_code, rate.effective_from) in seen:
                self._problem(rate_where, "effective_from",
                              f"{rate.effective_from.isoformat()} is defined twice for rate code {rate.rate_code}")
            seen.add((rate.rate_code, rate.effective_from))
            self._problems(rate_where, rate_code(self.named, rate.rate_code))

    def _check_vendor(self, vendor: VendorModel) -> None:
        where = _label("vendor", vendor.name)
        seen: set[str] = set()
        for connection in vendor.connections:
            conn_where = f"{where}: {_label('connection', connection.description)}"
            if connection.description in seen:
                self._problem(conn_where, "description", "defined twice")
            seen.add(connection.description)
            self._check_tariff_use(conn_where, connection.tariff, "vendor", "a connection",
                                   connection.service_type)
            self._use_policy(conn_where, connection.service_policy,
                             {"messaging": {"connection"}, "voice": {"connection"}}, connection.service_type)

    def _check_tariff_use(self, where: str, name: str, applied_to: str, user: str, service: str) -> None:
        self._problems(where, tariff_use(self.named, name, applied_to, user, service))

    def _check_product(self, product: ProductModel) -> None:
        where = _label("product", product.name)
        for service in {s for s in product.services if product.services.count(s) > 1}:
            self._problem(where, "services", f"{service} is listed twice")
        seen: set[tuple[str, str]] = set()
        for charge in product.usage_charges:
            charge_where = f"{where}: {_label('usage charge', f'{charge.service}/{charge.node}')}"
            if (charge.service, charge.node) in seen:
                self._problem(charge_where, "service", "defined twice for this node")
            seen.add((charge.service, charge.node))
            if charge.service not in product.services:
                included = ", ".join(product.services) or "none"
                self._problem(charge_where, "service",
                              f"{charge.service} is not among the product's services ({included})")
            self._check_tariff_use(charge_where, charge.tariff, "customer", "a usage charge", charge.service)
        self._use_policy(where, product.service_policy, {"messaging": {"product"}, "voice": {"product"}})

    def _check_customers(self) -> None:
        account_ids = [a.id for c in self.model.customers for a in c.accounts]
        owners: dict[str, str] = {}
        alias_of: dict[str, str] = {}
        for customer in self.model.customers:
            for account in customer.accounts:
                where = f"{_label('customer', customer.name)}: {_label('account', account.id)}"
                if account.id in owners:
                    self._problem(where, "id", f'defined twice (also under customer "{owners[account.id]}")')
                owners.setdefault(account.id, customer.name)
                self._check_account(where, customer, account)
                self._check_aliases(where, account, account_ids, alias_of)

    def _check_account(self, where: str, customer: CustomerModel, account: AccountModel) -> None:
        product = self._reference(where, "product", "product", account.product, self.products)
        if product is not None:
            self._problems(where, account_currency(self.named, customer, product))
        self._check_product_history(where, customer, account)
        if account.balance_model == "prepaid" and account.credit_limit:
            self._problem(where, "credit_limit", "only a postpaid account has a credit limit")
        self._use_policy(where, account.service_policy, _ACCOUNT_USAGES)

    def _check_product_history(self, where: str, customer: CustomerModel, account: AccountModel) -> None:
        """Each change names a product of the file, each instant once; the latest is ``product``."""
        changes = sorted(account.product_history or (), key=lambda change: change.effective_from)
        for change in changes:
            found = self._reference(where, "product_history", "product", change.product, self.products)
            if found is not None and change.product != account.product:
                self._problems(where, account_currency(self.named, customer, found))
        instants = [change.effective_from for change in changes]
        for instant in sorted({at for at in instants if instants.count(at) > 1}):
            self._problem(where, "product_history", f"{instant.isoformat()} is listed twice")
        if changes and changes[-1].product != account.product:
            self._problem(where, "product_history", f'the latest change is to "{changes[-1].product}", '
                          f'not to the account\'s product "{account.product}"')

    def _check_aliases(self, where: str, account: AccountModel, account_ids: list[str],
                       alias_of: dict[str, str]) -> None:
        for alias in account.aliases:
            if alias in account_ids:
                self._problem(where, "aliases", f'"{alias}" is already account "{alias}"')
            elif alias in alias_of:
                self._problem(where, "aliases", f'"{alias}" is already an alias of account "{alias_of[alias]}"')
            else:
                alias_of[alias] = account.id

    def _check_applicability(self) -> None:
        for name, attributes in self.attributes.items():
            if not self.usages.get(name):
                continue  # not used anywhere yet: checked when it is
            try:
                check_applicability(attributes, self.usages[name], policy=name)
            except InvalidPolicyAttribute as exc:
                self._problem(_label("service policy", name), "attributes",
                              f"{exc.attribute} {exc.problem}; allowed: {exc.allowed}")


# --- the desired config objects -----------------------------------------------------------

def _avro_value(value: Any) -> Any:
    """Attribute values as the ServicePolicyDefined map carries them (lists are of text)."""
    return [str(item) for item in value] if isinstance(value, (tuple, list)) else value


def _put(env: EnvironmentConfig, obj: Any) -> None:
    kind = KIND_BY_CLASS[type(obj)]
    env.collection(kind)[kind.key(obj)] = obj


def _build(model: ConfigFileModel, checker: _Checker) -> EnvironmentConfig:
    env = EnvironmentConfig(model.environment)
    if model.billing_engine is not None:
        types = model.billing_engine.service_types
        _put(env, ServiceTypes(types.messaging, types.voice))
    if checker.dialing_rules is not None:
        _put(env, checker.dialing_rules)
    if model.sip is not None or model.sip_domains:
        sip = model.sip or SipModel()
        _put(env, SipSettings(sip.authentication, sip.realm, sip.proxy, tuple(sip.algorithms),
                              tuple(model.sip_domains)))
    for objects in (_destinations(model), _tariffs(model), _policies(model, checker), _vendors(model),
                    _products(model), _customers(model, env.realm)):
        for obj in objects:
            _put(env, obj)
    return env


def _destinations(model: ConfigFileModel) -> list[Any]:
    return [Destination(d.prefix, d.format, d.description) for d in model.destinations]


def _tariffs(model: ConfigFileModel) -> list[Any]:
    objects: list[Any] = []
    for t in model.tariffs:
        objects.append(Tariff(t.name, t.currency, t.service, t.applied_to, t.routing, t.managed_by, t.description))
        objects.extend(Rate(t.name, r.rate_code, r.unit_price, r.effective_from, r.rating_mode, r.description)
                       for r in t.rates)
    return objects


def _policies(model: ConfigFileModel, checker: _Checker) -> list[Any]:
    return [ServicePolicy(p.name, p.service_type, p.match_priority, getattr(p, _PATTERN[p.service_type]),
                          p.description, {k: _avro_value(v) for k, v in checker.attributes[p.name].items()})
            for p in model.service_policies]


def _vendors(model: ConfigFileModel) -> list[Any]:
    objects: list[Any] = []
    for v in model.vendors:
        objects.append(Vendor(v.name, v.internal, v.description))
        objects.extend(VendorConnection(v.name, c.description, c.tariff, c.service_type, c.type, c.internal,
                                        c.use_for, c.routing_preference, c.service_policy)
                       for c in v.connections)
    return objects


def _products(model: ConfigFileModel) -> list[Any]:
    return [Product(p.name, tuple(p.services), tuple(UsageCharge(u.service, u.node, u.tariff) for u in p.usage_charges),
                    p.service_policy)
            for p in model.products]


def _customers(model: ConfigFileModel, realm: str) -> list[Any]:
    """Customers and accounts; a service password becomes its HA1s in ``realm``."""
    objects: list[Any] = []
    for c in model.customers:
        objects.append(Customer(c.name, c.currency, c.description))
        objects.extend(Account(a.id, c.name, a.product, tuple(a.aliases), a.service_policy, a.balance_model,
                               a.opening_balance, a.credit_limit,
                               **account_credentials(a.id, realm, a.service_password),
                               product_history=_product_history(a))
                       for a in c.accounts)
    return objects


def _product_history(account: AccountModel) -> tuple[ProductChange, ...]:
    """The account's product changes in order of effective_from (the file may list them in any)."""
    changes = sorted(account.product_history or (), key=lambda change: change.effective_from)
    return tuple(ProductChange(change.effective_from, change.product) for change in changes)
