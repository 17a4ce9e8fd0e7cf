"""The SQL that differs between SQLite and PostgreSQL, in one place.

The analyst views (migration 0004) are written once, with these fragments where the two
databases differ:

- :func:`utc_day`: the calendar day of an instant in UTC, whatever the session's time zone:
  a ``date`` on PostgreSQL (``timezone('UTC', t)``), ISO text ``YYYY-MM-DD`` on SQLite
  (which stores instants as naive UTC text).
- :func:`money_sum` and :func:`money_difference`: exact money arithmetic. PostgreSQL adds
  ``NUMERIC`` values exactly. SQLite keeps money as exact fixed-point text (``"0.050000"``,
  see ``models.Money``) and its ``sum`` would go through floats: there the text becomes an
  integer of millionths (``replace`` of the point, always 6 decimals), the integers are added
  and the result is written back as the same fixed-point text. Either way an analyst reads
  the exact decimal.
"""

from __future__ import annotations

__all__ = ["utc_day", "money_sum", "money_difference", "DIALECTS"]

DIALECTS = ("sqlite", "postgresql")
_MICROS = 1_000_000


def _check(dialect: str) -> None:
    if dialect not in DIALECTS:
        raise NotImplementedError(f"projections support SQLite and PostgreSQL, not {dialect}")


def utc_day(dialect: str, instant: str) -> str:
    """The UTC calendar day of the instant column ``instant``."""
    _check(dialect)
    if dialect == "postgresql":
        return f"CAST(timezone('UTC', {instant}) AS date)"
    return f"date({instant})"


def _micros(money: str) -> str:
    """SQLite: the money text ``money`` as an integer of millionths (exact)."""
    return f"CAST(replace({money}, '.', '') AS INTEGER)"


def _money_text(micros: str) -> str:
    """SQLite: an integer of millionths as fixed-point text with 6 decimals (NULL stays NULL)."""
    return (f"CASE WHEN ({micros}) IS NULL THEN NULL ELSE printf('%s%d.%06d', "
            f"CASE WHEN ({micros}) < 0 THEN '-' ELSE '' END, abs({micros}) / {_MICROS}, "
            f"abs({micros}) % {_MICROS}) END")


def money_sum(dialect: str, money: str) -> str:
    """The exact sum of the money column ``money`` (NULL when every value is NULL)."""
    _check(dialect)
    if dialect == "postgresql":
        return f"sum({money})"
    return _money_text(f"sum({_micros(money)})")


def money_difference(dialect: str, minuend: str, subtrahend: str) -> str:
    """``minuend - subtrahend`` of two money columns, exactly."""
    _check(dialect)
    if dialect == "postgresql":
        return f"({minuend} - {subtrahend})"
    return _money_text(f"{_micros(minuend)} - {_micros(subtrahend)}")
