"""What rating looks up in one environment, built once per config version.

An :class:`Index` holds an environment's accounts and aliases by number, each tariff's
rates (:mod:`.tariff_rates`), each product's messaging plan, the internal vendor connection
used on-net and the routing table of the external ones (:mod:`.routing`). It is built on
first use of a config snapshot and kept with it (``EnvironmentConfig.derived``), so two
snapshots (live and a replay) never share or evict each other's indexes.

Bounded memos, kept in the index and so forgotten with it, make repeats cheap: the
effective policy per (static policy, recipient domain), and per To user part its
:data:`Dialed` destinations (as dialed and E.164-translated, each with the number rate
codes match against and the local account whose id or alias it is).
"""

from __future__ import annotations

from typing import NamedTuple

from imbill.domain.config import Account, EnvironmentConfig, Product, Rate
from imbill.domain.e164 import to_e164
from imbill.domain.money import quantum
from imbill.domain.policy import effective_attributes
from imbill.domain.refusal import Refusal
from imbill.domain.routing import Route, RoutingTable
from imbill.domain.tariff_rates import TariffRates, number_of, remember

__all__ = ["Plan", "Policy", "Dialed", "Index", "index_of", "product_refusal", "CACHE_LIMIT"]

CACHE_LIMIT = 50_000
"""Entries per bounded memo of destinations or policies (a full memo forgets its older half)."""


class Plan(NamedTuple):
    """A product's messaging plan: tariff B, its currency and rates, push_events."""

    messaging: bool
    tariff: str | None
    currency: str
    rates: TariffRates | None
    push_events: bool
    node: str | None = None
    """The node of the product's Messaging usage charge (as PortaBilling names it: PortaSIP)."""


def product_refusal(account: Account, plan: Plan | None, product: str | None = None) -> Refusal:
    """Why the account's ``product`` (in force when the attempt was received; default: its
    product now) cannot rate messages (``plan`` lacks Messaging or a tariff)."""
    product = account.product if product is None else product
    if plan is None or not plan.messaging:
        return Refusal("service_not_in_product", f"product {product!r} of account "
                       f"{account.account_id!r} does not include Messaging")
    return Refusal("no_usage_charge", f"product {product!r} has no Messaging usage charge "
                   "with a defined tariff")


class Policy(NamedTuple):
    """The service policy attributes rating reads, as the effective policy sets them."""

    outgoing_aaa: bool
    local_lookup: bool
    userpart_e164_translation: bool
    transport_protocol: str
    billing_unit_size: int | None
    """None when undefined or below 1 (one unit per message)."""
    external_routing: bool
    service_policy: str | None
    policies: tuple[str, ...]


Dialed = tuple[str, "str | None", "str | None"]
"""A destination, as the To user part dialed it or translated to E.164: (destination, the
number rate codes are matched against (None: not a number, only ``|`` matches), the id of
the account whose id or alias it is (then it is on-net)). A plain tuple of strings, which
the garbage collector stops tracking (it never untracks a NamedTuple)."""


class Index:
    """One environment's rating indexes at one config version."""

    def __init__(self, env: EnvironmentConfig) -> None:
        self.env, self.version, self.name = env, env.version, env.name
        self.set_up, self.enabled = bool(env.service_types), env.messaging_enabled
        self.accounts = env.accounts
        self.aliases = {alias: a for a in env.accounts.values() for alias in a.aliases}
        self.rates = {name: TariffRates(rates, quantum(env.tariffs[name].currency))
                      for name, rates in _rates_by_tariff(env).items()}
        self.plans = {name: self._plan(product) for name, product in env.products.items()}
        self.rules = env.dialing_rules.get("")
        routes = sorted(self._routes(), key=lambda r: (r[1].vendor, r[1].connection))
        self.internal = next((route for internal, route in routes if internal), None)
        self.external = RoutingTable(tuple(route for internal, route in routes if not internal))
        self.policies: dict[tuple[str | None, str], Policy] = {}
        self.dialed: dict[str, tuple[Dialed, Dialed]] = {}
        self.descriptions = {prefix: d.description for prefix, d in env.destinations.items()}
        """Rate code -> the description of the destination with that prefix (None: not defined)."""
        self.clis: dict[str, str] = {}
        """User part (a CLI) -> its E.164 translation (:meth:`cli`), a bounded memo."""

    def _plan(self, product: Product) -> Plan:
        charge = next((c for c in product.usage_charges if c.service == "messaging"), None)
        tariff = self.env.tariffs.get(charge.tariff) if charge is not None else None
        policy = self.env.service_policies.get(product.service_policy or "")
        push = bool(policy and policy.attributes.get("audiocodes.cmms.push_events"))
        node = charge.node if charge is not None else None
        if tariff is None:
            return Plan("messaging" in product.services, None, "", None, push, node)
        return Plan("messaging" in product.services, tariff.name, tariff.currency, self.rates[tariff.name], push,
                    node)

    def _routes(self) -> list[tuple[bool, Route]]:
        found = []
        for conn in self.env.vendor_connections.values():
            vendor, tariff = self.env.vendors.get(conn.vendor), self.env.tariffs.get(conn.tariff)
            if conn.service_type != "messaging" or tariff is None:
                continue
            internal = conn.internal or bool(vendor and vendor.internal)
            if internal and conn.use_for != "SIP-UA":
                continue
            found.append((internal, Route(conn.vendor, conn.description, tariff.name, tariff.currency,
                                          conn.routing_preference, self.rates[tariff.name],
                                          f"{conn.vendor}/{conn.description}")))
        return found

    def local(self, number: str) -> str | None:
        """The id of the account whose id or alias ``number`` is (an account id wins over an alias)."""
        account = self.accounts.get(number) or self.aliases.get(number)
        return account.account_id if account is not None else None

    def policy(self, account: Account, to_domain: str) -> Policy:
        """The effective policy of ``account`` sending to ``to_domain`` (remembered)."""
        key = (account.service_policy, to_domain)
        found = self.policies.get(key)
        if found is None:
            found = remember(self.policies, key, _policy(self.env, account, to_domain), CACHE_LIMIT)
        return found

    def cli(self, user: str) -> str:
        """A sender's user part (a CLI) as userpart_e164_translation translates it: what
        :meth:`dial` gives as E.164 (``user`` itself when it is no number under the dialing
        rules). Remembered apart from :attr:`dialed`: senders would evict the destinations
        (each new one cost a full dial, the local look-ups included)."""
        found = self.clis.get(user)
        if found is None:
            e164 = to_e164(user, self.rules) if self.rules is not None else None
            found = remember(self.clis, user, e164 or user, CACHE_LIMIT)
        return found

    def recipient(self, to_user: str) -> Account | None:
        """The account of an incoming message's recipient: whose id or alias ``to_user`` is,
        as dialed or else translated to E.164."""
        as_dialed, translated = self.dialed.get(to_user) or self.dial(to_user)
        return self.accounts.get(as_dialed[2] if as_dialed[2] is not None else translated[2])

    def dial(self, to_user: str) -> tuple[Dialed, Dialed]:
        """``to_user`` as dialed, and E.164-translated when it is a number under the dialing
        rules (else the same :data:`Dialed`); remembered."""
        found = self.dialed.get(to_user)
        if found is None:
            local = self.local(to_user)
            dialed = (to_user, number_of(to_user), local)
            e164 = to_e164(to_user, self.rules) if self.rules is not None else None
            if e164 and e164 != to_user:
                found_e164 = self.local(e164)
                local = found_e164 if found_e164 is not None else local
            found = remember(self.dialed, to_user, (dialed, (e164, e164, local) if e164 else dialed), CACHE_LIMIT)
        return found


def _rates_by_tariff(env: EnvironmentConfig) -> dict[str, list[Rate]]:
    by_tariff: dict[str, list[Rate]] = {name: [] for name in env.tariffs}
    for rate in env.rates.values():
        if rate.tariff in by_tariff:
            by_tariff[rate.tariff].append(rate)
    return by_tariff


def _policy(env: EnvironmentConfig, account: Account, to_domain: str) -> Policy:
    eff = effective_attributes(env, account=account, to_domain=to_domain)
    size = eff.values.get("msg.billing_unit_size")
    unit_size = int(size) if size is not None else None
    return Policy(outgoing_aaa=bool(eff.get("msg.outgoing_aaa")), local_lookup=bool(eff.get("msg.local_lookup")),
                  userpart_e164_translation=bool(eff.get("msg.userpart_e164_translation")),
                  transport_protocol=eff.get("msg.transport_protocol", "SIP"),
                  billing_unit_size=unit_size if unit_size is not None and unit_size >= 1 else None,
                  external_routing=bool(eff.get("msg.external_routing")), service_policy=eff.service_policy,
                  policies=eff.policies)


def index_of(env: EnvironmentConfig) -> Index:
    """The index of the snapshot ``env``, built on first use and kept with the snapshot."""
    return env.derived("rating", Index)
