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

__all__ = ["MINOR_UNITS", "DEFAULT_MINOR_UNITS", "ZERO", "PAYMENT_LIMIT", "PRICE_LIMIT", "BALANCE_LIMIT", "minor_units", "quantum", "round_amount", "billing_units", "amount_problem"]

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

_ZERO_DECIMALS = ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX",
                  "UYI", "VND", "VUV", "XAF", "XOF", "XPF")
_THREE_DECIMALS = ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")
_TWO_DECIMALS = ("AED", "AUD", "BRL", "CAD", "CHF", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD",
                 "HUF", "ILS", "INR", "MXN", "NOK", "NZD", "PLN", "RON", "RUB", "SEK", "SGD",
                 "THB", "TRY", "UAH", "USD", "ZAR")

MINOR_UNITS: Mapping[str, int] = {
    **{code: 0 for code in _ZERO_DECIMALS},
    **{code: 2 for code in _TWO_DECIMALS},
    **{code: 3 for code in _THREE_DECIMALS},
}
"""ISO 4217 minor units of the currencies that need saying; any other code has 2."""

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
