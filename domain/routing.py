"""Vendor routing of an off-net message: the routing list and the vendor cost.

The candidates are the external vendor connections for Messaging whose tariff has a rate in
force for the destination (the longest matching code of each tariff, ``|`` as its last
resort). They are ordered by vendor cost (billing units x the vendor rate, rounded to the
vendor tariff's currency), then routing preference (lower first), then vendor and
connection name; the first is used, and the whole list is recorded on the charge.

Speed: one dict holds every route's codes, so one pass over a number's prefixes finds each
route's candidate rates. They are shared by the numbers with the same longest matching code
(which match the same codes) and remembered per number in a bounded memo. When every
candidate code has a single rate already in force, the routing no longer depends on the
time: it depends on the winning rates and the billing units only, and is remembered per
(winning rates, units), shared by every number with the same winners.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from imbill.domain.tariff_rates import History, Price, TariffRates, longest_code, matching, remember

__all__ = ["Route", "Routing", "Candidates", "RoutingTable"]

_SHARED_LIMIT = 20_000
"""Distinct sets of winning rates remembered with their routing per billing units."""


class Route(NamedTuple):
    """A vendor connection for Messaging and its vendor tariff."""

    vendor: str
    connection: str
    tariff: str
    currency: str
    preference: int
    rates: TariffRates
    label: str


class Routing(NamedTuple):
    """The first route, its vendor cost, and the labels of the routing list."""

    cost: Decimal
    route: Route
    labels: tuple[str, ...]


_Chain = tuple[tuple[int, History], ...]
"""(route position, history) pairs: each route's candidate codes, longest first, ``|`` last."""


class Candidates:
    """A number's candidate rates over every route, and when they stop depending on time."""

    __slots__ = ("chain", "fixed_from", "by_units")

    def __init__(self, chain: _Chain, fixed_from: datetime | None, by_units: dict[int, Routing | None]) -> None:
        self.chain, self.fixed_from, self.by_units = chain, fixed_from, by_units


class RoutingTable:
    """Every external route's codes in one dict."""

    __slots__ = ("routes", "codes", "lengths", "any", "memo", "by_code", "shared")

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes
        codes: dict[str, list[tuple[int, History]]] = {}
        for i, route in enumerate(routes):
            for code, history in route.rates.prefixes.items():
                codes.setdefault(code, []).append((i, history))
        self.codes = {code: tuple(entries) for code, entries in codes.items()}
        self.lengths = tuple(sorted({len(code) for code in codes}, reverse=True))
        self.any = tuple((i, r.rates.any) for i, r in enumerate(routes) if r.rates.any is not None)
        self.memo: dict[str | None, Candidates] = {}
        self.by_code: dict[str | None, Candidates] = {}  # at most one per code
        self.shared: dict[tuple[tuple[int, Price], ...], dict[int, Routing | None]] = {}

    def routing(self, number: str | None, when: datetime, units: int) -> Routing | None:
        """The routing of ``units`` billing units to ``number`` at ``when``; None when no
        route's tariff has a rate in force for the number."""
        candidates = self.memo.get(number) or self._remembered(number)
        fixed_from = candidates.fixed_from
        if fixed_from is None or when < fixed_from:
            return self._priced(candidates.chain, when, units)
        by_units = candidates.by_units
        if units in by_units:
            return by_units[units]
        found = by_units[units] = self._priced(candidates.chain, when, units)
        return found

    def _remembered(self, number: str | None) -> Candidates:
        code = longest_code(self.codes, self.lengths, number)
        found = self.by_code.get(code)
        if found is None:
            found = self.by_code[code] = self._candidates(code)
        return remember(self.memo, number, found)

    def _candidates(self, code: str | None) -> Candidates:
        """The candidate rates of the numbers whose longest matching code is ``code``."""
        found = matching(self.codes, self.lengths, code)
        chain = (*(candidate for candidates in found for candidate in candidates), *self.any)
        if not all(history.only is not None for _, history in chain):
            return Candidates(chain, None, {})
        winners: dict[int, Price] = {}
        for i, history in chain:
            winners.setdefault(i, history.only)
        key = tuple(sorted(winners.items()))
        by_units = self.shared.get(key)
        if by_units is None:
            by_units = remember(self.shared, key, {}, _SHARED_LIMIT)
        return Candidates(chain, max((h.first for _, h in chain), default=None), by_units)

    def _priced(self, chain: _Chain, when: datetime, units: int) -> Routing | None:
        """Routes by (vendor cost, routing preference, position by name)."""
        prices: dict[int, Price] = {}
        for i, history in chain:
            if i not in prices:
                price = history.at(when)
                if price is not None:
                    prices[i] = price
        if not prices:
            return None
        routes = self.routes
        priced = sorted((price.amount(units), routes[i].preference, i) for i, price in prices.items())
        return Routing(priced[0][0], routes[priced[0][2]], tuple(routes[i].label for _, _, i in priced))
