"""Money and billing units.

Amounts are :class:`~decimal.Decimal`, never float. A charge is rounded once, after
multiplying the billing units by the unit price, to the minor units of the tariff's
currency (ISO 4217: 2 for USD, EUR, GBP...; 0 for JPY, KRW...; 3 for KWD, BHD, JOD, OMR,
TND...; 2 for a currency not in the table), with ROUND_HALF_UP: a half minor unit rounds
away from zero, as on an invoice (0.125 USD -> 0.13, 0.5 JPY -> 1).

Billing units follow the ``msg.billing_unit_size`` service policy attribute: "the message
length to be charged as a single message. Long messages are charged for the number of
messages they consist of" (150 characters at size 60 are 3 units); "if this attribute is
not defined, the user will be charged for a single message, regardless of its length".
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Mapping

from iso4217 import Currency

__all__ = ["MINOR_UNITS", "DEFAULT_MINOR_UNITS", "ZERO", "PAYMENT_LIMIT", "PRICE_LIMIT", "BALANCE_LIMIT", "minor_units", "quantum", "round_amount", "billing_units", "amount_problem", "money_text"]

ZERO = Decimal(0)
DEFAULT_MINOR_UNITS = 2
PAYMENT_LIMIT = Decimal("1000000")
"""The largest single payment (top-up) applied; a larger one is refused (amount_too_large)."""
PRICE_LIMIT = Decimal("1000000")
"""The largest unit price of a rate: with at most 100,000 billing units an amount stays far
inside the events' decimal(24, 6)."""
BALANCE_LIMIT = Decimal("1000000000")
"""The largest balance an account may hold, far inside the Avro decimal(24, 6) of the events
(|value| < 10^18): a payment that would go past it is refused (balance_limit)."""

MINOR_UNITS: Mapping[str, int] = {c.code: c.exponent for c in Currency if c.exponent is not None}
"""ISO 4217 minor units of every currency that has them (the ISO table, from the `iso4217`
package); any other code (XAU, XDR, an unknown code) has 2."""

_QUANTA = {places: Decimal(1).scaleb(-places) for places in range(5)}


def minor_units(currency: str) -> int:
    """Decimal places of ``currency`` (ISO 4217 code, case-insensitive); 2 when unknown."""
    return MINOR_UNITS.get(currency.upper(), DEFAULT_MINOR_UNITS)


_QUANTUM_BY_CURRENCY: dict[str, Decimal] = {}


def quantum(currency: str) -> Decimal:
    """The smallest amount of ``currency`` (0.01 USD, 1 JPY, 0.001 KWD): what it rounds to."""
    found = _QUANTUM_BY_CURRENCY.get(currency)
    if found is None:
        found = _QUANTUM_BY_CURRENCY[currency] = _QUANTA[minor_units(currency)]
    return found


def round_amount(amount: Decimal, currency: str) -> Decimal:
    """``amount`` rounded ROUND_HALF_UP to the minor units of ``currency``."""
    return amount.quantize(quantum(currency), rounding=ROUND_HALF_UP)


def money_text(amount: Decimal, currency: str | None) -> str:
    """``amount`` as text with the minor units of ``currency`` (0.05 USD, 5 JPY, 0.050 BHD;
    none without a currency); digits past them only when they are not zero (a balance topped
    up by 0.123456 USD is ``0.123456``, never rounded on screen). Every output of imbill
    writes money with this."""
    amount = amount if amount else ZERO  # never "-0.00"
    places = minor_units(currency) if currency else 0
    exact = amount.normalize()
    if exact.as_tuple().exponent >= -places:  # type: ignore[operator]
        return f"{amount.quantize(Decimal(1).scaleb(-places)):f}"
    return f"{exact:f}"


_MICRO = Decimal("0.000001")


def amount_problem(amount: object, limit: Decimal) -> str:
    """Why ``amount`` is no config amount ("" when it is one): a Decimal, finite, not negative,
    at most ``limit`` (PRICE_LIMIT, BALANCE_LIMIT) and with at most 6 decimals."""
    if type(amount) is not Decimal or not amount.is_finite():
        return f"must be a finite decimal amount, got {str(amount)[:40]}"
    if amount < 0:
        return f"must not be negative, got {amount}"
    if amount > limit:
        return f"is over the limit {limit:,}, got {str(amount)[:40]}"
    if amount != amount.quantize(_MICRO):
        return f"has more than 6 decimals, got {amount}"
    return ""


def billing_units(body_chars: int, unit_size: int | None) -> int:
    """Billing units of a message: max(1, ceil(chars / size)); 1 when no size is defined.

    A size below 1 cannot be configured (the attribute catalogue refuses it); it is read
    as "not defined" rather than dividing by zero.
    """
    if unit_size is None or unit_size < 1 or body_chars <= unit_size:
        return 1
    return -(-body_chars // unit_size)
