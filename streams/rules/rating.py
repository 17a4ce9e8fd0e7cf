"""Rating: a message attempt and the config snapshot in, a rated message or a refusal out.

Every attempt gets exactly one outcome: :class:`Rated` (then billed by :mod:`.balance`) or
:class:`Refused` with a stable reason code of :data:`REASON_CODES` (then a Rejection event).
An attempt whose policy has ``msg.outgoing_aaa`` off is authenticated only, with no
accounting: it is refused ``not_accounted``, so it leaves a Rejection and no charge.

The steps (BRIEF rules 1-7, domain/instant-messaging-setup.txt):

1. the environment has an IM setup (service types) and Messaging is enabled;
2. incoming: the recipient is a local account or alias; the message is free (amount 0,
   billing units still counted, no rate: rate_effective_from is the attempt time), charged
   to the recipient in its customer's currency;
3. outgoing: the sender account, its product (Messaging included, a Messaging usage charge
   whose tariff is the customer tariff), the effective service policy;
4. the destination: the To user part, E.164-translated when ``userpart_e164_translation`` is
   on and the environment has dialing rules (what is not a number stays as it is);
5. on-net (``local_lookup`` on and the destination or the To user part is an account id or
   alias here): SIP only, rate MSGN, vendor cost from the internal vendor's SIP-UA
   connection. Off-net: the longest matching rate code, ``|`` as the last resort, then the
   routing list when ``external_routing`` is on: the vendor connections whose tariff has a
   rate for the destination, by vendor cost, then routing preference (lower first), then
   vendor and connection name; the first is used.

The rate in force at the attempt's received_at applies, however late the attempt is rated
(``rated_at`` does not choose rates; it is the caller's clock, passed in, never read). A
rate code with no rate in force yet is skipped for the next shorter code. The internal
vendor connection used on-net is the first (by vendor, then connection name) internal
Messaging connection for SIP-UA.

Speed: each environment's indexes (:class:`_Index`: accounts and aliases by number, rate
histories per tariff and code, the routing table, products' plans) are built on first use
of each ``EnvironmentConfig.version`` and kept while the same EnvironmentConfig object is
at that version, so two snapshots (live and a replay) never share stale indexes. Effective
policies per (static policy, domain), E.164 translations and the rate codes matching a
number are remembered in bounded memos. Rating is then a handful of dict look-ups.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import islice
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

from imbill.streams.config import Account, ConfigState, EnvironmentConfig, Rate
from imbill.streams.rules.e164 import DialingRules, to_e164
from imbill.streams.rules.money import ZERO, billing_units, quantum, round_amount
from imbill.streams.rules.policy import effective_attributes

__all__ = ["Rated", "Refused", "REASON_CODES", "MSGN", "ANY_NUMBER", "rate_attempt", "charge_record",
           "rejection_record", "account_push_events"]

MSGN = "MSGN"
ANY_NUMBER = "|"
_CACHE_LIMIT = 50_000
"""Entries per bounded memo of translations or policies (a full memo forgets its older half)."""
_MEMO_LIMIT = 20_000
"""Entries per rate code memo (one per tariff, one for the routing table)."""

REASON_CODES: Mapping[str, str] = MappingProxyType({
    "malformed_attempt": "The attempt event cannot be decoded or lacks a field rating needs.",
    "unknown_environment": "The virtual environment has no instant messaging setup (no service types).",
    "service_disabled": "Messaging is not enabled in the environment (BillingEngine ServiceTypes).",
    "unknown_recipient": "An incoming message's recipient is no account or alias of the environment.",
    "unknown_account": "The sender is not an account of the environment.",
    "service_not_in_product": "The account's product does not include the Messaging service.",
    "no_usage_charge": "The product has no Messaging usage charge with a defined tariff.",
    "not_accounted": "The service policy has outgoing_aaa off: authentication only, no accounting.",
    "smpp_on_net": "The transport protocol is SMPP, which delivers off-net messages only.",
    "no_rate": "The customer tariff has no rate in force for the destination.",
    "undeliverable": "An off-net message while the service policy has external_routing off.",
    "no_route": "No vendor connection for Messaging has a rate for the destination.",
    "insufficient_funds": "The prepaid balance, or the postpaid credit limit, cannot cover the charge.",
    "service_suspended": "The account's messaging service is suspended (wallet empty) until a top-up.",
    "currency_mismatch": "The charge is in another currency than the account's balance.",
})


class Rated(NamedTuple):
    """What rating decides for a Charge, and the account facts billing needs."""

    environment: str
    account: str
    customer: str
    direction: str
    on_net: bool
    destination: str
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
    balance_model: str
    credit_limit: Decimal
    opening_balance: Decimal
    push_events: bool
    routing: tuple[str, ...] = ()
    """The routing list ("vendor/connection", best first) of an externally routed message."""


class Refused(NamedTuple):
    reason_code: str
    message: str
    account: str


class _History:
    """The rates of one rate code, by effective_from."""

    __slots__ = ("times", "rates", "first", "only")

    def __init__(self, rates: list[Rate]) -> None:
        self.rates = sorted(rates, key=lambda r: r.effective_from)
        self.times = [r.effective_from for r in self.rates]
        self.first = self.times[0]
        self.only = self.rates[0] if len(self.rates) == 1 else None

    def at(self, when: datetime) -> Rate | None:
        if when < self.first:
            return None
        if self.only is not None:
            return self.only
        return self.rates[bisect_right(self.times, when) - 1]


def _histories(rates: list[Rate]) -> dict[str, _History]:
    codes: dict[str, list[Rate]] = {}
    for rate in rates:
        codes.setdefault(rate.rate_code, []).append(rate)
    return {code: _History(group) for code, group in codes.items()}


def _matching(codes: Mapping[str, Any], lengths: tuple[int, ...], number: str | None) -> list[Any]:
    """The values of the codes ``number`` starts with, longest code first."""
    if number is None:
        return []
    size = len(number)
    return [found for length in lengths if length <= size and (found := codes.get(number[:length])) is not None]


def _remember(memo: dict, key: Any, value: Any, limit: int = _MEMO_LIMIT) -> Any:
    """Store ``value`` in a bounded memo; a full memo forgets its older half (insertion order)."""
    if len(memo) >= limit:
        for old in list(islice(memo, len(memo) // 2)):
            del memo[old]
    memo[key] = value
    return value


class _TariffRates:
    """One tariff's rates: prefix codes, ``|`` and MSGN apart; the codes matching a number
    are remembered per number (a bounded memo), so repeated destinations cost one look-up."""

    __slots__ = ("prefixes", "lengths", "any", "msgn", "memo")

    def __init__(self, rates: list[Rate]) -> None:
        self.prefixes = _histories(rates)
        self.any = self.prefixes.pop(ANY_NUMBER, None)
        self.msgn = self.prefixes.pop(MSGN, None)
        self.lengths = tuple(sorted({len(code) for code in self.prefixes}, reverse=True))
        self.memo: dict[str | None, tuple[_History, ...]] = {}

    def longest(self, number: str | None, when: datetime) -> Rate | None:
        """The rate of the longest code ``number`` starts with that is in force, else ``|``'s."""
        if not self.lengths:  # only | (the internal vendor's tariff A) or nothing
            return self.any.at(when) if self.any is not None else None
        chain = self.memo.get(number)
        if chain is None:
            found = _matching(self.prefixes, self.lengths, number)
            chain = _remember(self.memo, number, (*found, self.any) if self.any is not None else tuple(found))
        for history in chain:
            rate = history.at(when)
            if rate is not None:
                return rate
        return None


class _Route(NamedTuple):
    vendor: str
    connection: str
    tariff: str
    currency: str
    quantum: Decimal
    preference: int
    rates: _TariffRates
    label: str


_Routing = tuple[Decimal, _Route, tuple[str, ...]]  # (vendor cost, first route, routing list labels)


class _RoutingTable:
    """Every external route's codes in one dict: one pass over a number's prefixes finds
    each route's candidate rates (longest code first, ``|`` last), remembered per number.
    When every candidate has a single rate already in force, the routing list no longer
    depends on the time, and is remembered per number of billing units too."""

    __slots__ = ("routes", "codes", "lengths", "any", "memo")

    def __init__(self, routes: tuple[_Route, ...]) -> None:
        self.routes = routes
        codes: dict[str, list[tuple[int, _History]]] = {}
        for i, route in enumerate(routes):
            for code, history in route.rates.prefixes.items():
                codes.setdefault(code, []).append((i, history))
        self.codes = {code: tuple(entries) for code, entries in codes.items()}
        self.lengths = tuple(sorted({len(code) for code in codes}, reverse=True))
        self.any = tuple((i, r.rates.any) for i, r in enumerate(routes) if r.rates.any is not None)
        self.memo: dict[str | None, tuple[tuple[tuple[int, _History], ...], Any, dict[int, _Routing | None]]] = {}

    def routing(self, number: str | None, when: datetime, units: int) -> _Routing | None:
        """The cheapest route's cost, the route and the routing list for ``number``; None
        when no route's tariff has a rate in force for it."""
        entry = self.memo.get(number)
        if entry is None:
            found = _matching(self.codes, self.lengths, number)
            chain = (*(candidate for candidates in found for candidate in candidates), *self.any)
            single = all(history.only is not None for _, history in chain)
            entry = _remember(self.memo, number, (chain, max((h.first for _, h in chain), default=None)
                                                  if single else None, {}))
        chain, fixed_from, by_units = entry
        if fixed_from is None or when < fixed_from:
            return self._priced(chain, when, units)
        if units not in by_units:
            by_units[units] = self._priced(chain, when, units)
        return by_units[units]

    def _priced(self, chain: tuple[tuple[int, _History], ...], when: datetime, units: int) -> _Routing | None:
        """Routes by (vendor cost, routing preference, position by name)."""
        rates: dict[int, Rate] = {}
        for i, history in chain:
            if i not in rates:
                rate = history.at(when)
                if rate is not None:
                    rates[i] = rate
        if not rates:
            return None
        routes = self.routes
        priced = sorted(((units * rate.unit_price).quantize(routes[i].quantum, ROUND_HALF_UP),
                         routes[i].preference, i) for i, rate in rates.items())
        return priced[0][0], routes[priced[0][2]], tuple(routes[i].label for _, _, i in priced)


class _Plan(NamedTuple):
    """A product's messaging plan: tariff B, its currency and rates, push_events."""

    messaging: bool
    tariff: str | None
    currency: str
    quantum: Decimal
    rates: _TariffRates | None
    push_events: bool


class _Policy(NamedTuple):
    accounted: bool
    local_lookup: bool
    translate: bool
    transport: str
    unit_size: int | None
    external_routing: bool
    service_policy: str | None
    policies: tuple[str, ...]


class _Index:
    """What rating looks up in one environment, built once per config version."""

    def __init__(self, env: EnvironmentConfig) -> None:
        self.env, self.version, self.name = env, env.version, env.name
        self.set_up, self.enabled = bool(env.service_types), env.messaging_enabled
        self.accounts = env.accounts
        self.numbers = {alias: a for a in env.accounts.values() for alias in a.aliases}
        self.numbers.update(env.accounts)  # an account id wins over another account's alias
        by_tariff: dict[str, list[Rate]] = {}
        for rate in env.rates.values():
            by_tariff.setdefault(rate.tariff, []).append(rate)
        self.rates = {name: _TariffRates(by_tariff.get(name, [])) for name in env.tariffs}
        self.plans = {name: self._plan(product) for name, product in env.products.items()}
        rules = env.dialing_rules.get("")
        self.rules = _dialing_rules(rules) if rules is not None else None
        routes = sorted(self._routes(), key=lambda r: (r[1].vendor, r[1].connection))
        self.internal = next((route for internal, route in routes if internal), None)
        self.external = _RoutingTable(tuple(route for internal, route in routes if not internal))
        self.policies: dict[tuple[str | None, str], _Policy] = {}
        self.translated: dict[str, tuple[str, str | None]] = {}

    def _plan(self, product: Any) -> _Plan:
        charge = next((c for c in product.usage_charges if c.service == "messaging"), None)
        tariff = self.env.tariffs.get(charge.tariff) if charge is not None else None
        policy = self.env.service_policies.get(product.service_policy or "")
        push = bool(policy and policy.attributes.get("audiocodes.cmms.push_events"))
        if tariff is None:
            return _Plan("messaging" in product.services, None, "", ZERO, None, push)
        return _Plan("messaging" in product.services, tariff.name, tariff.currency, quantum(tariff.currency),
                     self.rates[tariff.name], push)

    def _routes(self) -> list[tuple[bool, _Route]]:
        found = []
        for conn in self.env.vendor_connections.values():
            vendor, tariff = self.env.vendors.get(conn.vendor), self.env.tariffs.get(conn.tariff)
            if conn.service_type != "messaging" or tariff is None:
                continue
            internal = conn.internal or bool(vendor and vendor.internal)
            if internal and conn.use_for != "SIP-UA":
                continue
            found.append((internal, _Route(conn.vendor, conn.description, tariff.name, tariff.currency,
                                           quantum(tariff.currency), conn.routing_preference,
                                           self.rates[tariff.name], f"{conn.vendor}/{conn.description}")))
        return found

    def local(self, number: str) -> Account | None:
        """The account whose id or alias ``number`` is."""
        return self.numbers.get(number)

    def policy(self, account: Account, to_domain: str) -> _Policy:
        key = (account.service_policy, to_domain)
        found = self.policies.get(key)
        return found if found is not None else _remember(self.policies, key, _policy(self.env, account, to_domain),
                                                         _CACHE_LIMIT)

    def destination(self, to_user: str) -> tuple[str, str | None]:
        """(``to_user`` in E.164 when it is a number under the dialing rules, else unchanged;
        the digits to match rate codes against)."""
        found = self.translated.get(to_user)
        if found is None:
            e164 = to_e164(to_user, self.rules) if self.rules is not None else None
            found = _remember(self.translated, to_user, (e164, e164) if e164 else (to_user, _number(to_user)),
                              _CACHE_LIMIT)
        return found


def _dialing_rules(config: Any) -> DialingRules | None:
    try:
        return DialingRules.from_mapping(vars(config))
    except ValueError:  # refused when the config was applied; never translate with bad rules
        return None


def _policy(env: EnvironmentConfig, account: Account, to_domain: str) -> _Policy:
    eff = effective_attributes(env, account=account, to_domain=to_domain)
    size = eff.values.get("msg.billing_unit_size")
    return _Policy(bool(eff.get("msg.outgoing_aaa")), bool(eff.get("msg.local_lookup")),
                   bool(eff.get("msg.userpart_e164_translation")), eff.get("msg.transport_protocol", "SIP"),
                   int(size) if size is not None else None, bool(eff.get("msg.external_routing")),
                   eff.service_policy, eff.policies)


_INDEXES: dict[str, _Index] = {}


def _index(env: EnvironmentConfig) -> _Index:
    index = _INDEXES.get(env.name)
    if index is None or index.version != env.version or index.env is not env:
        index = _INDEXES[env.name] = _Index(env)
    return index


def rate_attempt(attempt: Mapping[str, Any], config: ConfigState, *, rated_at: datetime) -> Rated | Refused:
    """Rate one MessageAttempt record against ``config`` (see the module doc for the steps)."""
    try:
        name, direction, when = attempt["environment"], attempt["direction"], attempt["received_at"]
        sender, to_user, to_domain = attempt["from_user"], attempt["to_user"], attempt["to_domain"]
        chars = attempt["body_chars"]
    except (KeyError, TypeError):
        return Refused("malformed_attempt", "the attempt lacks a field that rating needs", "")
    env = config.environments.get(name)
    index = _INDEXES.get(name)
    if index is None or index.env is not env or index.version != env.version:
        index = _index(env) if env is not None else None
    if index is None or not index.set_up or not index.enabled:
        party = to_user if direction == "incoming" else sender
        if index is None or not index.set_up:
            return Refused("unknown_environment", f"environment {name!r} has no instant messaging setup", party)
        return Refused("service_disabled", f"Messaging is not enabled in environment {name!r}", party)
    if direction == "outgoing":
        return _outgoing(index, sender, to_user, to_domain, chars, when)
    if direction == "incoming":
        return _incoming(index, to_user, to_domain, chars, when)
    return Refused("malformed_attempt", f"direction {direction!r} is neither outgoing nor incoming", sender)


def _outgoing(index: _Index, sender: str, to_user: str, to_domain: str, chars: int, when: datetime) -> Rated | Refused:
    account = index.accounts.get(sender)
    if account is None:
        return Refused("unknown_account", f"{sender!r} is not an account of environment {index.env.name!r}", sender)
    plan = index.plans.get(account.product)
    if plan is None or not plan.messaging or plan.rates is None:
        return _product_refusal(account, plan)
    policy = index.policies.get((account.service_policy, to_domain)) or index.policy(account, to_domain)
    if not policy.accounted:
        return Refused("not_accounted", f"{_named(policy)} has outgoing_aaa off: the message from {sender!r} "
                       "is authenticated only, not accounted", sender)
    if policy.translate:
        destination, number = index.translated.get(to_user) or index.destination(to_user)
    else:
        destination, number = to_user, _number(to_user)
    units = billing_units(chars, policy.unit_size)
    numbers = index.numbers
    if policy.local_lookup and (destination in numbers or (to_user is not destination and to_user in numbers)):
        return _on_net(index, account, plan, policy, destination, number, when, units)
    return _off_net(index, account, plan, policy, destination, number, when, units)


def _named(policy: _Policy) -> str:
    name = policy.service_policy
    return f"service policy {name!r}" if name is not None else "no service policy applies and the default"


def _product_refusal(account: Account, plan: _Plan | None) -> Refused:
    if plan is None or not plan.messaging:
        return Refused("service_not_in_product", f"product {account.product!r} of account "
                       f"{account.account_id!r} does not include Messaging", account.account_id)
    return Refused("no_usage_charge", f"product {account.product!r} has no Messaging usage charge "
                   "with a defined tariff", account.account_id)


def _on_net(index: _Index, account: Account, plan: _Plan, policy: _Policy, destination: str, number: str | None,
            when: datetime, units: int) -> Rated | Refused:
    if policy.transport == "SMPP":
        return Refused("smpp_on_net", f"{_named(policy)} delivers over SMPP, which cannot deliver to the "
                       f"on-net number {destination!r}", account.account_id)
    msgn = plan.rates.msgn
    rate = msgn.at(when) if msgn is not None else None
    if rate is None:
        return Refused("no_rate", f"tariff {plan.tariff!r} has no rate for MSGN in force at {when.isoformat()}",
                       account.account_id)
    route = index.internal
    vendor_rate = route.rates.longest(number, when) if route is not None else None
    cost = (units * vendor_rate.unit_price).quantize(route.quantum, ROUND_HALF_UP) if vendor_rate else ZERO
    return _rated(index, account, plan, policy, True, destination, units, rate, route, cost, ())


def _off_net(index: _Index, account: Account, plan: _Plan, policy: _Policy, destination: str, number: str | None,
             when: datetime, units: int) -> Rated | Refused:
    rate = plan.rates.longest(number, when)
    if rate is None:
        return Refused("no_rate", f"tariff {plan.tariff!r} has no rate for {destination!r} "
                       f"in force at {when.isoformat()}", account.account_id)
    if not policy.external_routing:
        return Refused("undeliverable", f"{destination!r} is off-net and {_named(policy)} has external_routing "
                       "off", account.account_id)
    routing = index.external.routing(number, when, units)
    if routing is None:
        return Refused("no_route", f"no vendor connection for Messaging has a rate for {destination!r}",
                       account.account_id)
    cost, route, labels = routing
    return _rated(index, account, plan, policy, False, destination, units, rate, route, cost, labels)


def _rated(index: _Index, account: Account, plan: _Plan, policy: _Policy, on_net: bool, destination: str,
           units: int, rate: Rate, route: _Route | None, cost: Decimal, routing: tuple[str, ...]) -> Rated:
    price = rate.unit_price
    return _new_rated(Rated, (
        index.name, account.account_id, account.customer, "outgoing", on_net, destination, units, price,
        (units * price).quantize(plan.quantum, ROUND_HALF_UP), plan.currency, plan.tariff, rate.rate_code,
        rate.effective_from, policy.service_policy, policy.policies, policy.transport,
        route and route.vendor, route and route.connection, route and route.tariff, cost,
        route and route.currency, account.balance_model, account.credit_limit, account.opening_balance,
        plan.push_events, routing,
    ))


_new_rated = tuple.__new__  # Rated(...) without the generated __new__'s Python frame: the hot path


def _number(destination: str) -> str | None:
    """The digits rate codes are matched against: ``destination`` without a leading ``+``;
    None when it is not a number (then only ``|`` can match)."""
    digits = destination[1:] if destination[:1] == "+" else destination
    return digits if digits.isdigit() and digits.isascii() else None


def _incoming(index: _Index, to_user: str, to_domain: str, chars: int, when: datetime) -> Rated | Refused:
    env = index.env
    account = index.local(to_user) or index.local(index.destination(to_user)[0])
    if account is None:
        return Refused("unknown_recipient", f"{to_user!r} is not an account or alias of environment "
                       f"{env.name!r}", to_user)
    policy = index.policy(account, to_domain)
    customer = env.customers.get(account.customer)
    currency = customer.currency if customer is not None else ""
    plan = index.plans.get(account.product)
    return Rated(
        env.name, account.account_id, account.customer, "incoming", False, to_user,
        billing_units(chars, policy.unit_size), ZERO, round_amount(ZERO, currency), currency, "", "",
        when, policy.service_policy, policy.policies, policy.transport, None, None, None, ZERO, None,
        account.balance_model, account.credit_limit, account.opening_balance,
        bool(plan and plan.push_events),
    )


def account_push_events(config: ConfigState, environment: str, account: str) -> bool:
    """Whether the account's product policy sets audiocodes.cmms.push_events (for top-ups)."""
    env = config.environments.get(environment)
    found = env.accounts.get(account) if env is not None else None
    plan = _index(env).plans.get(found.product) if found is not None else None
    return bool(plan and plan.push_events)


def charge_record(attempt: Mapping[str, Any], rated: Rated, rated_at: datetime) -> dict[str, Any]:
    """The Charge event of a rated attempt (a first charge: kind "charge", corrects None)."""
    return {
        "charge_id": "chg-" + attempt["attempt_id"], "attempt_id": attempt["attempt_id"], "kind": "charge",
        "corrects": None, "environment": rated.environment, "account": rated.account,
        "customer": rated.customer, "direction": rated.direction, "attempted_at": attempt["received_at"],
        "rated_at": rated_at, "from_user": attempt["from_user"], "to_user": attempt["to_user"],
        "to_domain": attempt["to_domain"], "destination": rated.destination, "on_net": rated.on_net,
        "body_chars": attempt["body_chars"], "billing_units": rated.billing_units,
        "unit_price": rated.unit_price, "amount": rated.amount, "currency": rated.currency,
        "tariff": rated.tariff, "rate_code": rated.rate_code, "rate_effective_from": rated.rate_effective_from,
        "service_policy": rated.service_policy, "policies": list(rated.policies),
        "transport_protocol": rated.transport_protocol, "vendor": rated.vendor, "connection": rated.connection,
        "vendor_tariff": rated.vendor_tariff, "vendor_cost": rated.vendor_cost,
        "vendor_currency": rated.vendor_currency,
    }


def rejection_record(attempt: Mapping[str, Any], refused: Refused, rejected_at: datetime) -> dict[str, Any]:
    """The Rejection event of a refused attempt (also for billing's refusals).

    Only attempt_id is required, so a malformed attempt can be rejected too: a missing
    received_at is the rejection time, missing strings are empty.
    """
    return {
        "rejection_id": "rej-" + attempt["attempt_id"], "attempt_id": attempt["attempt_id"],
        "environment": attempt.get("environment") or "", "account": refused.account,
        "attempted_at": attempt.get("received_at") or rejected_at, "rejected_at": rejected_at,
        "reason_code": refused.reason_code, "message": refused.message,
        "to_user": attempt.get("to_user") or "", "to_domain": attempt.get("to_domain") or "",
    }
