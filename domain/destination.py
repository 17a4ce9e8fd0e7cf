"""Where an outgoing message goes and what it costs: on-net or off-net.

On-net, when ``local_lookup`` is on and the destination (or the To user part as dialed) is
an account id or alias of the environment: SIP only (``smpp_on_net`` otherwise), rate MSGN of
the customer tariff, and the vendor cost of the internal vendor's SIP-UA connection (the
first by vendor, then connection name; no vendor fields without one).

Off-net: the customer tariff's longest matching rate code in force (``|`` as the last
resort, ``no_rate`` without one); then, only when ``external_routing`` is on
(``undeliverable`` otherwise), the routing list of :mod:`.routing` (``no_route`` when no
vendor connection rates the destination); the first route is used.

The destination is a :data:`~.rating_index.Dialed`: the To user part as dialed, or its
E.164 translation when the policy translates, with the number rate codes match against.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from imbill.domain.money import ZERO
from imbill.domain.rating_index import Dialed, Index, Plan, Policy
from imbill.domain.refusal import Refusal
from imbill.domain.routing import Route
from imbill.domain.tariff_rates import Price

__all__ = ["Delivery", "price_and_route", "named"]


class Delivery(NamedTuple):
    """The rate and the route of an outgoing message."""

    on_net: bool
    destination: str
    price: Price
    route: Route | None
    cost: Decimal
    """Vendor cost: billing units x the vendor rate (zero on-net without an internal rate)."""
    routing: tuple[str, ...]


_new = tuple.__new__  # a NamedTuple without its generated __new__'s Python frame: the hot path


def price_and_route(index: Index, plan: Plan, policy: Policy, dialed: Dialed, when: datetime,
            units: int) -> Delivery | Refusal:
    """The delivery of ``units`` billing units to ``dialed`` at ``when`` and the route that delivers them
    (see the module doc)."""
    destination, number, local = dialed
    if policy.local_lookup and local is not None:
        return _on_net(index, plan, policy, destination, number, when, units)
    return _off_net(index, plan, policy, destination, number, when, units)


def named(policy: Policy) -> str:
    """The policy as refusal messages name it."""
    name = policy.service_policy
    return f"service policy {name!r}" if name is not None else "no service policy applies and the default"


def _on_net(index: Index, plan: Plan, policy: Policy, destination: str, number: str | None, when: datetime,
            units: int) -> Delivery | Refusal:
    if policy.transport_protocol == "SMPP":
        return Refusal("smpp_on_net", f"{named(policy)} delivers over SMPP, which cannot deliver to the "
                       f"on-net number {destination!r}")
    msgn = plan.rates.msgn
    price = msgn.at(when) if msgn is not None else None
    if price is None:
        return Refusal("no_rate", f"tariff {plan.tariff!r} has no rate for MSGN in force at {when.isoformat()}")
    route = index.internal
    vendor_price = route.rates.longest(number, when) if route is not None else None
    cost = vendor_price.amount(units) if vendor_price is not None else ZERO
    return _new(Delivery, (True, destination, price, route, cost, ()))


def _off_net(index: Index, plan: Plan, policy: Policy, destination: str, number: str | None, when: datetime,
             units: int) -> Delivery | Refusal:
    price = plan.rates.longest(number, when)
    if price is None:
        return Refusal("no_rate", f"tariff {plan.tariff!r} has no rate for {destination!r} "
                       f"in force at {when.isoformat()}")
    if not policy.external_routing:
        return Refusal("undeliverable", f"{destination!r} is off-net and {named(policy)} has "
                       "external_routing off")
    routing = index.external.routing(number, when, units)
    if routing is None:
        return Refusal("no_route", f"no vendor connection for Messaging has a rate for {destination!r}")
    cost, route, labels = routing
    return _new(Delivery, (False, destination, price, route, cost, labels))
