"""A tariff's rates: rate codes, the rate in force at an instant, amounts per billing units.

A rate code is a prefix of the destination number (the longest matching code wins), ``|``
(any number: the last resort) or ``MSGN`` (on-net messages). Each code keeps its rates by
effective_from; the rate in force at an instant is the latest that started at or before it,
and a code with no rate in force yet is skipped for the next shorter code.

Speed: the codes a number starts with are found by trying only the code lengths the tariff
has, longest first, and remembered per number in a bounded memo; a code with a single rate
costs one time comparison; an amount (billing units x unit price, rounded ROUND_HALF_UP to
the minor units of the tariff's currency) is remembered per rate and number of units, and
a zero price costs no Decimal arithmetic at all.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from itertools import islice
from typing import Any, Iterable

from imbill.domain.config import Rate

__all__ = ["MSGN", "ANY_NUMBER", "MEMO_LIMIT", "Price", "History", "TariffRates", "longest_code", "matching",
           "number_of", "remember"]

MSGN = "MSGN"
ANY_NUMBER = "|"
MEMO_LIMIT = 20_000
"""Entries per rate code memo (one per tariff)."""
_AMOUNTS_PER_PRICE = 64
"""Amounts remembered per rate (one per number of billing units seen)."""


def remember(memo: dict, key: Any, value: Any, limit: int = MEMO_LIMIT) -> Any:
    """Store ``value`` in a bounded memo; a full memo forgets its older half (insertion order)."""
    if len(memo) >= limit:
        for old in list(islice(memo, len(memo) // 2)):
            del memo[old]
    memo[key] = value
    return value


def number_of(destination: str) -> str | None:
    """The digits rate codes are matched against: ``destination`` without a leading ``+``;
    None when it is not a number (then only ``|`` can match)."""
    digits = destination[1:] if destination[:1] == "+" else destination
    return digits if digits.isdigit() and digits.isascii() else None


class Price:
    """One rate of a tariff, and the amounts it gives per number of billing units."""

    __slots__ = ("rate", "unit_price", "rate_code", "effective_from", "quantum", "free", "amounts")

    def __init__(self, rate: Rate, quantum: Decimal) -> None:
        self.rate, self.unit_price, self.quantum = rate, rate.unit_price, quantum
        self.rate_code, self.effective_from = rate.rate_code, rate.effective_from
        # units x a zero price is a zero of the price's sign whatever the units: round it once
        self.free = rate.unit_price.quantize(quantum, ROUND_HALF_UP) if not rate.unit_price else None
        self.amounts: dict[int, Decimal] | None = None

    def amount(self, units: int) -> Decimal:
        """``units`` x the unit price, rounded ROUND_HALF_UP to the currency's minor units."""
        if self.free is not None:
            return self.free
        amounts = self.amounts
        if amounts is None:
            amounts = self.amounts = {}
        found = amounts.get(units)
        if found is None:
            found = (units * self.unit_price).quantize(self.quantum, ROUND_HALF_UP)
            if len(amounts) < _AMOUNTS_PER_PRICE:
                amounts[units] = found
        return found


class History:
    """The rates of one rate code, by effective_from."""

    __slots__ = ("first", "only", "times", "prices")

    def __init__(self, prices: list[Price]) -> None:
        prices.sort(key=lambda p: p.effective_from)
        self.first = prices[0].effective_from
        self.only = prices[0] if len(prices) == 1 else None
        self.prices = tuple(prices) if self.only is None else ()  # () costs nothing: the empty tuple is shared
        self.times = tuple(p.effective_from for p in prices) if self.only is None else ()

    def at(self, when: datetime) -> Price | None:
        """The rate in force at ``when``, None before the first one."""
        if when < self.first:
            return None
        if self.only is not None:
            return self.only
        return self.prices[bisect_right(self.times, when) - 1]


def _histories(rates: Iterable[Rate], quantum: Decimal) -> dict[str, History]:
    codes: dict[str, list[Price]] = {}
    for rate in rates:
        codes.setdefault(rate.rate_code, []).append(Price(rate, quantum))
    return {code: History(prices) for code, prices in codes.items()}


def matching(codes: dict[str, Any], lengths: tuple[int, ...], number: str | None) -> list[Any]:
    """The values of the codes ``number`` starts with, longest code first (``lengths``: the
    distinct code lengths, longest first)."""
    if number is None:
        return []
    size = len(number)
    return [found for length in lengths if length <= size and (found := codes.get(number[:length])) is not None]


def longest_code(codes: dict[str, Any], lengths: tuple[int, ...], number: str | None) -> str | None:
    """The longest of the codes ``number`` starts with. Every other code it starts with is a
    prefix of that one, so numbers with the same longest code match the same codes."""
    if number is not None:
        size = len(number)
        for length in lengths:
            if length <= size and number[:length] in codes:
                return number[:length]
    return None


class TariffRates:
    """One tariff's rates: prefix codes, ``|`` and MSGN apart. The codes matching a number
    are remembered per number (a bounded memo), so a repeated destination costs one look-up;
    numbers with the same longest matching code share them."""

    __slots__ = ("prefixes", "lengths", "any", "msgn", "memo", "chains")

    def __init__(self, rates: Iterable[Rate], quantum: Decimal) -> None:
        self.prefixes = _histories(rates, quantum)
        self.any = self.prefixes.pop(ANY_NUMBER, None)
        self.msgn = self.prefixes.pop(MSGN, None)
        self.lengths = tuple(sorted({len(code) for code in self.prefixes}, reverse=True))
        self.memo: dict[str | None, tuple[History, ...]] = {}
        self.chains: dict[str | None, tuple[History, ...]] = {}  # at most one per code

    def longest(self, number: str | None, when: datetime) -> Price | None:
        """The rate of the longest code ``number`` starts with that is in force, else ``|``'s."""
        if not self.lengths:  # only | (the internal vendor's tariff A) or nothing
            return self.any.at(when) if self.any is not None else None
        for history in self.memo.get(number) or self._chain(number):
            price = history.at(when)
            if price is not None:
                return price
        return None

    def _chain(self, number: str | None) -> tuple[History, ...]:
        """The histories of the codes ``number`` starts with, longest first, ``|`` last (remembered)."""
        code = longest_code(self.prefixes, self.lengths, number)
        chain = self.chains.get(code)
        if chain is None:
            found = matching(self.prefixes, self.lengths, code)
            chain = self.chains[code] = (*found, self.any) if self.any is not None else tuple(found)
        return remember(self.memo, number, chain)
