"""The references between config objects: what an object needs in force, and what a removal
may not take away.

One rule, used by both sides: the fold (:meth:`.config.ConfigState.applied`) refuses a
config record that breaks it (reason ``broken_reference`` or ``still_referenced``, see
:data:`.refusal.CONFIG_REASON_CODES`); ``config apply`` checks the file's references with
the same functions (:func:`tariff_use`, :func:`policy_use`, :func:`rate_code`,
:func:`account_currency`, over its own objects by name), then folds its plan with the
readers' fold before appending anything, so a plan the readers would refuse is never
published. Each function takes anything with the collections it reads as attributes
(``tariffs``, ``service_policies``, ...), mapping names to objects with the fields it reads.

An object is checked against the environment as it stands before it: ``config apply``
appends what is referred to first (tariffs before rates, products before accounts...), so a
reference to an object defined earlier in the same plan holds. Redefining an object does
not re-check the objects referring to it (the file's own checks see the whole file), and
rates are history: a removed tariff's or destination's rates stay, and do not block the
removal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Mapping

if TYPE_CHECKING:  # pragma: no cover - types only: config imports this module
    from imbill.domain.config import EnvironmentConfig

__all__ = ["broken_references", "referrers", "tariff_use", "policy_use", "rate_code", "account_currency", "unknown"]

Problem = tuple[str, str]
"""(field, what is wrong)."""


def broken_references(env: EnvironmentConfig, obj: Any) -> list[Problem]:
    """What ``obj`` refers to that ``env`` lacks, or that is of the wrong sort ([] when none)."""
    check = _CHECKS.get(type(obj).__name__)
    return list(check(env, obj)) if check is not None else []


def referrers(env: EnvironmentConfig, kind: str, key: str) -> list[str]:
    """The objects in force (rates aside) that refer to the object ``kind``/``key``."""
    found = []
    for other_kind, objects in _REFERRING.get(kind, ()):
        for other_key, other in getattr(env, objects).items():
            if key in _targets(other_kind, other, kind):
                found.append(f"{other_kind} {other_key!r}")
    return found


def unknown(word: str, name: str, known: Mapping[str, Any]) -> str:
    """'unknown tariff "Z" (defined: "A", "B")': the words of a reference not found."""
    defined = ", ".join(f'"{n}"' for n in list(known)[:10]) or "none"
    return f'unknown {word} "{name}" (defined: {defined})'


def policy_use(env: Any, name: str | None, service_type: str | None = None) -> Iterator[Problem]:
    """A service policy referred to: it exists, and is of ``service_type`` when one is needed."""
    if name is None:
        return
    policy = env.service_policies.get(name)
    if policy is None:
        yield "service_policy", unknown("service policy", name, env.service_policies)
    elif service_type is not None and policy.service_type != service_type:
        yield "service_policy", f'"{name}" is a {policy.service_type} policy, not a {service_type} one'


def tariff_use(env: Any, name: str, applied_to: str, user: str, service: str) -> Iterator[Problem]:
    """A tariff referred to by ``user`` (a usage charge, a connection): it exists, is applied
    to ``applied_to`` and is a tariff of ``service``."""
    tariff = env.tariffs.get(name)
    if tariff is None:
        yield "tariff", unknown("tariff", name, env.tariffs)
    elif tariff.applied_to != applied_to:
        yield "tariff", f'"{name}" is a {tariff.applied_to} tariff; {user} needs a {applied_to} tariff'
    elif tariff.service != service:
        yield "tariff", f'"{name}" is a {tariff.service} tariff, not a {service} one'


def rate_code(env: Any, code: str) -> Iterator[Problem]:
    """A rate code is digits, ``|`` (any number) or a destination prefix."""
    if code != "|" and not code.isdigit() and code not in env.destinations:
        yield "rate_code", f'unknown destination "{code}" (a rate code is digits, | or a destination prefix)'


def account_currency(env: Any, customer: Any, product: Any) -> Iterator[Problem]:
    """Every customer tariff of the account's product is in its customer's currency."""
    for charge in product.usage_charges:
        tariff = env.tariffs.get(charge.tariff)
        if tariff is not None and tariff.applied_to == "customer" and tariff.currency != customer.currency:
            yield "product", (f'"{product.name}" charges {charge.service} with tariff "{tariff.name}" in '
                              f"{tariff.currency}, not in the customer's currency {customer.currency}")


def _rate(env: EnvironmentConfig, rate: Any) -> Iterator[Problem]:
    if rate.tariff not in env.tariffs:
        yield "tariff", unknown("tariff", rate.tariff, env.tariffs)
    yield from rate_code(env, rate.rate_code)


def _connection(env: EnvironmentConfig, connection: Any) -> Iterator[Problem]:
    if connection.vendor not in env.vendors:
        yield "vendor", unknown("vendor", connection.vendor, env.vendors)
    yield from tariff_use(env, connection.tariff, "vendor", "a connection", connection.service_type)
    yield from policy_use(env, connection.service_policy, connection.service_type)


def _product(env: EnvironmentConfig, product: Any) -> Iterator[Problem]:
    for charge in product.usage_charges:
        yield from tariff_use(env, charge.tariff, "customer", "a usage charge", charge.service)
    yield from policy_use(env, product.service_policy)


def _account(env: EnvironmentConfig, account: Any) -> Iterator[Problem]:
    customer = env.customers.get(account.customer)
    if customer is None:
        yield "customer", unknown("customer", account.customer, env.customers)
    product = env.products.get(account.product)
    if product is None:
        yield "product", unknown("product", account.product, env.products)
    if product is not None and customer is not None:
        yield from account_currency(env, customer, product)
    others = (change.product for change in account.product_history if change.product != account.product)
    for name in dict.fromkeys(others):  # each once, in order
        earlier = env.products.get(name)  # a product the account had (or will have): rated then
        if earlier is None:
            yield "product_history", unknown("product", name, env.products)
        elif customer is not None:
            yield from account_currency(env, customer, earlier)
    yield from policy_use(env, account.service_policy)


_CHECKS = {"Rate": _rate, "VendorConnection": _connection, "Product": _product, "Account": _account}

_REFERRING: Mapping[str, tuple[tuple[str, str], ...]] = {
    "tariff": (("vendor_connection", "vendor_connections"), ("product", "products")),
    "vendor": (("vendor_connection", "vendor_connections"),),
    "service_policy": (("vendor_connection", "vendor_connections"), ("product", "products"),
                       ("account", "accounts")),
    "product": (("account", "accounts"),),
    "customer": (("account", "accounts"),),
}
"""Kind referred to -> (kind, collection) of the objects that may refer to it (rates aside)."""


def _targets(kind: str, obj: Any, target_kind: str) -> set[str]:
    """The names of ``target_kind`` objects ``obj`` (of ``kind``) refers to."""
    if target_kind == "service_policy":
        return {obj.service_policy} if obj.service_policy else set()
    if kind == "vendor_connection":
        return {obj.tariff} if target_kind == "tariff" else {obj.vendor}
    if kind == "product":
        return {charge.tariff for charge in obj.usage_charges}
    if target_kind == "product":
        return {obj.product, *(change.product for change in obj.product_history)}
    return {obj.customer}
