"""What a projector refuses to write: a record the processor cannot have decided.

A projector is not the authority: it copies what the processor decided into SQL, so it
never writes a row the processor would not have produced. A record that breaks what the
processor guarantees of every event it writes is skipped (logged with its topic,
partition, offset and why, counted in ``skipped``, its offset advanced), and projection
goes on with the next record:

- the record key is the account's (``environment/account``) for an event of an account;
- every text is at most :data:`TEXT_LIMIT` characters (more than a SIP datagram holds); a
  NUL character is no ground (a SIP header may carry one to the processor, which bills the
  message): PostgreSQL, whose text cannot hold it, stores U+FFFD in its place;
- every amount fits the events' decimal(24, 6) (|amount| < 10^18), has at most 6 decimals
  and is finite;
- a charge (kind ``charge``) is revision 1, corrects nothing, has at least 1 billing unit,
  and neither its unit price nor its amount is negative;
- a correction (kind ``correction``, re-rating's) is revision 2 or more, its id is
  ``chg-<attempt id>#<revision>``, it names the outcome it supersedes in ``corrects`` and
  carries its ``difference``; its units, unit price and amount are not negative, and its
  units may be 0 (a reversal: amount 0, difference minus the old amount);
- no other kind;
- the event is one the catalogue puts on the topic it is on (a Charge on the rejections
  topic is not the processor's).

A duplicate id is not refused here: the row already written stays (``ON CONFLICT DO
NOTHING``), as for an event a restarted processor sends again.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Callable, Mapping

from imbill.domain.events import correction_id_of
from imbill.domain.keys import account_key

__all__ = ["implausible", "AMOUNT_BOUND", "TEXT_LIMIT"]

TEXT_LIMIT = 100_000
"""The longest text of an event: a SIP datagram is at most 65,535 bytes, and a rejection's
message adds a few words to what it quotes."""

AMOUNT_BOUND = Decimal(10) ** 18
"""Amounts are decimal(24, 6): their absolute value is below 10^18."""

_MICRO = Decimal("0.000001")


def implausible(name: str, record: Mapping[str, Any], key: bytes | None) -> str:
    """Why the processor cannot have written the ``name`` event ``record`` (as decoded from
    Avro) under ``key`` ("" when it can)."""
    for field, value in record.items():
        why = _value_problem(field, value)
        if why:
            return why
    account = record.get("account")
    if account and key != account_key(record.get("environment", ""), account):
        return f"the record key {key[:80] if key else key!r} is not the account's ({record.get('environment')}/{account})"
    check = _CHECKS.get(name)
    return check(record) if check is not None else ""


def _value_problem(name: str, value: Any) -> str:
    if type(value) is str:
        return _text_problem(name, value)
    if type(value) is list:
        return next((why for why in (_value_problem(name, item) for item in value) if why), "")
    if type(value) is dict:
        return next((why for why in (_value_problem(f"{name}.{k}", v) for k, v in value.items()) if why), "")
    if type(value) is Decimal:
        if not value.is_finite() or abs(value) >= AMOUNT_BOUND or value != value.quantize(_MICRO):
            return f"{name} {str(value)[:40]} does not fit decimal(24, 6)"
    if type(value) is datetime and value.utcoffset() is None:
        return f"{name} is not a UTC instant"
    return ""


def _text_problem(name: str, text: str) -> str:
    if len(text) > TEXT_LIMIT:
        return f"{name} is {len(text):,} characters long, over {TEXT_LIMIT:,}"
    return ""


def _charge(charge: Mapping[str, Any]) -> str:
    kind = charge["kind"]
    if kind == "charge":
        return _first_charge(charge)
    if kind == "correction":
        return _correction(charge)
    return f"a charge of kind {kind[:40]!r} (neither charge nor correction)"


def _first_charge(charge: Mapping[str, Any]) -> str:
    units, price, amount = charge["billing_units"], charge["unit_price"], charge["amount"]
    if units < 1 or amount < 0 or price < 0:
        return f"a charge of {units} units at {price} for {amount} cannot be rated"
    if charge.get("revision", 1) != 1 or charge["corrects"]:
        return f"a charge (not a correction) of revision {charge.get('revision')} correcting {charge['corrects']!r}"
    return ""


def _correction(charge: Mapping[str, Any]) -> str:
    units, price, amount = charge["billing_units"], charge["unit_price"], charge["amount"]
    revision = charge.get("revision", 1)
    if revision < 2:
        return f"a correction of revision {revision}: corrections are revision 2 or more"
    if charge["charge_id"] != correction_id_of(charge["attempt_id"], revision):
        return f"a correction's id is chg-<attempt id>#<revision>, not {charge['charge_id'][:100]!r}"
    if not charge["corrects"]:
        return "a correction that names no outcome it corrects"
    if charge.get("difference") is None:
        return "a correction without its difference"
    if units < 0 or amount < 0 or price < 0:
        return f"a correction of {units} units at {price} for {amount} cannot be rated"
    return ""


_CHECKS: Mapping[str, Callable[[Mapping[str, Any]], str]] = {"Charge": _charge}
