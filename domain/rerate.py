"""Re-rating: an attempt, its latest outcome and the config known now in; a correction or nothing out.

Re-rating asks the live processor's question again with what is known now about the past:
:func:`.rating.rate_attempt` (the same rule function, no second implementation) against a
config snapshot folded up to the run's record time, at the attempt's own ``received_at``
(the rate in force then). The answer is compared with the attempt's latest outcome: its
charge of the highest revision, or its rejection when it has no charge.

- **Unchanged** (the same units, price, amount, currency, tariff, rate code, vendor and
  vendor cost; or refused again): nothing.
- **Changed**: a :class:`~.events.Charge` of kind ``correction``, revision n + 1 (a rejection
  counts as revision 1), ``corrects`` the superseded outcome's id, ``difference`` its amount
  minus the superseded amount, and ``charge_id`` :func:`~.events.correction_id_of` (attempt
  id, revision): a correction made twice has one id, and is applied once.
- **A charge that would now be refused** for a reason about rates or routes
  (:data:`REVERSIBLE`) is reversed: a correction to zero (no units, no amount).
- **A rejection that now rates** (e.g. ``no_rate`` before a rate was added for the past)
  becomes a charge, if it was refused for a rating reason (:data:`RERATABLE`). Refusals of
  billing (funds, a suspended service, a copy) and of the record itself (malformed,
  implausible) are facts of the moment: re-rating leaves them.

Objects without a valid time (environments, accounts, customers) hold whenever they are
asked, so an account removed today is no correction of its past: a charge that would now
be refused ``unknown_account`` is left as it is (:data:`REVERSIBLE` leaves it out).

Corrections are never refused for funds (the message was delivered): the processor moves
the balance by minus the difference, through the account's single writer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Iterable, Mapping

from imbill.domain.config import ConfigState
from imbill.domain.events import Charge, MessageAttempt, Rejection, correction_id_of
from imbill.domain.money import ZERO
from imbill.domain.rating import Rated, Refusal, charge_of, rate_attempt

__all__ = ["RERATABLE", "REVERSIBLE", "RerateFilter", "Correction", "Outcome", "latest_outcomes", "rerate",
           "run_id_of"]

Outcome = Charge | Rejection

RERATABLE = frozenset({"unknown_environment", "service_disabled", "unknown_recipient", "unknown_account",
                       "service_not_in_product", "no_usage_charge", "not_accounted", "smpp_on_net", "no_rate",
                       "undeliverable", "no_route"})
"""Rejections that re-rating may turn into charges: refusals of rating, which the config decides."""

REVERSIBLE = frozenset({"service_not_in_product", "no_usage_charge", "not_accounted", "smpp_on_net", "no_rate",
                        "undeliverable", "no_route"})
"""Refusals that reverse a charge when re-rating now gives them: they come from rates, routes,
products and service policies, which the config says for the past. (An environment, account
or recipient gone today is no statement about the past: see the module doc.)"""

COMPARED = ("billing_units", "unit_price", "amount", "currency", "tariff", "rate_code", "vendor", "connection",
            "vendor_cost", "vendor_currency")
"""What makes two charges of one attempt different (the rate's ``effective_from`` alone does
not: a rate defined again at the same price moves no money)."""


@dataclass(frozen=True, slots=True)
class RerateFilter:
    """Which attempts a run re-rates: received in [``start``, ``end``), and, when given, of
    one environment, and whose old or new outcome is of one account, customer, tariff or rate
    code."""

    start: datetime
    end: datetime
    environment: str | None = None
    account: str | None = None
    customer: str | None = None
    tariff: str | None = None
    rate_code: str | None = None

    def takes(self, attempt: MessageAttempt) -> bool:
        """Whether the attempt is in the period (and environment): the first, cheap test."""
        return self.start <= attempt.received_at < self.end and (
            self.environment is None or attempt.environment == self.environment)

    def selects(self, *outcomes: Outcome | None) -> bool:
        """Whether one of the attempt's outcomes (old, new) is of the account, customer,
        tariff and rate code asked for."""
        return all(wanted is None or any(getattr(o, name, None) == wanted for o in outcomes if o is not None)
                   for name, wanted in (("account", self.account), ("customer", self.customer),
                                        ("tariff", self.tariff), ("rate_code", self.rate_code)))

    def as_json(self) -> str:
        """The filter as the run records it (ISO 8601 times, unset filters left out)."""
        fields = {"from": self.start.isoformat(), "to": self.end.isoformat(), "environment": self.environment,
                  "account": self.account, "customer": self.customer, "tariff": self.tariff,
                  "rate_code": self.rate_code}
        return json.dumps({k: v for k, v in fields.items() if v is not None}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RerateFilter:
        raw = json.loads(text)
        return cls(start=datetime.fromisoformat(raw["from"]), end=datetime.fromisoformat(raw["to"]),
                   environment=raw.get("environment"), account=raw.get("account"), customer=raw.get("customer"),
                   tariff=raw.get("tariff"), rate_code=raw.get("rate_code"))


@dataclass(frozen=True, slots=True)
class Correction:
    """A changed attempt: its latest outcome, the correction superseding it, and why."""

    old: Outcome
    new: Charge
    reason: str

    @property
    def old_amount(self) -> Decimal:
        return self.old.amount if type(self.old) is Charge else ZERO

    @property
    def old_units(self) -> int:
        return self.old.billing_units if type(self.old) is Charge else 0


def run_id_of(started_at: datetime, re_filter: RerateFilter, config_as_of: datetime) -> str:
    """A run's id: when it started, and a digest of what it re-rates with what."""
    digest = hashlib.sha256(f"{re_filter.as_json()}|{config_as_of.isoformat()}".encode()).hexdigest()[:8]
    return f"rr-{started_at.strftime('%Y%m%dT%H%M%S')}-{digest}"


def latest_outcomes(outcomes: Iterable[Outcome], wanted: Mapping[str, object] | None = None) -> dict[str, Outcome]:
    """Per attempt id, its latest outcome: the charge of the highest revision, else its
    rejection (a rejection is revision 1: a correction of it is revision 2). Only the
    attempt ids in ``wanted`` when given."""
    latest: dict[str, Outcome] = {}
    for outcome in outcomes:
        attempt_id = outcome.attempt_id
        if wanted is not None and attempt_id not in wanted:
            continue
        found = latest.get(attempt_id)
        if found is None or _later(outcome, found):
            latest[attempt_id] = outcome
    return latest


def _later(outcome: Outcome, than: Outcome) -> bool:
    if type(outcome) is not Charge:
        return False  # a rejection never supersedes what is known of its attempt
    return type(than) is not Charge or outcome.revision > than.revision


def rerate(attempt: MessageAttempt, old: Outcome, config: ConfigState, *, run_id: str,
           rated_at: datetime) -> Correction | None:
    """The correction of ``attempt`` whose latest outcome is ``old``, rated now against
    ``config`` (the run's snapshot) at ``rated_at`` (the run's start: every correction of a
    run, made again when it resumes, is the same record); None when nothing changes."""
    if type(old) is Rejection and old.reason_code not in RERATABLE:
        return None
    rated = rate_attempt(attempt, config, rated_at=rated_at)
    if type(rated) is Refusal:
        return _reversal(old, rated, run_id, rated_at)
    if type(old) is Rejection:
        new = charge_of(attempt, rated, rated_at, revision=2, corrects=old.rejection_id, difference=rated.amount,
                        rerate_run=run_id)
        return Correction(old, new, f"now rated (was {old.reason_code})")
    changed = [name for name in COMPARED if getattr(old, name) != getattr(rated, name)]
    if not changed:
        return None
    new = charge_of(attempt, rated, rated_at, revision=old.revision + 1, corrects=old.charge_id,
                    difference=rated.amount - old.amount, rerate_run=run_id)
    return Correction(old, new, _why(old, rated, changed))


def _reversal(old: Outcome, refusal: Refusal, run_id: str, rated_at: datetime) -> Correction | None:
    """A charge now refused for a rating reason: its correction to zero (None when it is a
    rejection refused again, a reversal already, or refused for a reason that is no
    statement about the past)."""
    if type(old) is not Charge or refusal.reason_code not in REVERSIBLE or _reversed(old):
        return None
    revision = old.revision + 1
    zero = dataclasses.replace(old, charge_id=correction_id_of(old.attempt_id, revision), kind="correction",
                               corrects=old.charge_id, revision=revision, rated_at=rated_at, billing_units=0,
                               unit_price=ZERO, amount=ZERO, vendor_cost=ZERO, difference=-old.amount,
                               rerate_run=run_id)
    return Correction(old, zero, f"reversed: now {refusal.reason_code}")


def _reversed(charge: Charge) -> bool:
    return charge.kind == "correction" and charge.billing_units == 0 and not charge.amount


_WORDS = {"billing_units": "units", "unit_price": "price", "rate_code": "rate code", "vendor_cost": "vendor cost",
          "vendor_currency": "vendor currency"}


def _why(old: Charge, rated: Rated, changed: list[str]) -> str:
    """Words for a changed charge: each changed field, old -> new (money as plain decimals);
    the amount only when neither units nor price say why it changed."""
    if "amount" in changed and ("billing_units" in changed or "unit_price" in changed):
        changed = [name for name in changed if name != "amount"]
    return "; ".join(f"{_WORDS.get(name, name)} {_text(getattr(old, name))} -> {_text(getattr(rated, name))}"
                     for name in changed)


def _text(value: object) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value else "0"
    return "-" if value is None else str(value)
