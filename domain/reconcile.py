"""Reconciling the topics: does every account's money add up, and does every attempt have
exactly one outcome? A pure comparison over events (read from the topics by the caller).

For every account of the environment, and every account an event names:

- **balance**: opening balance + payments applied - charges (the effective amount of each
  charge chain) must equal the balance the processor holds, the ``balance`` of the account's
  latest BalanceChanged (its opening balance when it has none);
- **projection**: the same expected balance must be what the projection shows (its latest
  ``balance_event`` row), when a projection is given;
- **outcomes**: every attempt id on the attempts topic has exactly one outcome id, a charge
  (kind ``charge``) or a rejection. Copies of an attempt count once, and so does an outcome
  re-sent byte for byte (the commit protocol re-sends an outbox after a crash); two different
  outcome ids, or none, are differences. So is a charge id carrying two amounts.

- **corrections**: re-rating's corrections chain: revision n + 1 of an attempt names in
  ``corrects`` the outcome it supersedes, revision n's charge id (or, for revision 2, the
  attempt's rejection: a rejection that became a charge), and carries its ``difference``, its
  amount minus the superseded amount (a rejection's is 0). A correction naming anything else,
  or whose difference is not that, is a difference.

Charges: a charge id's latest record counts, unless a correction supersedes it: the expected
balance takes **the latest revision's amount** of each attempt (:func:`charge_total`). Adding
every revision's difference instead (a first charge's being its amount;
:func:`difference_total`), as a downstream consumer may, gives the same total whenever the
corrections chain as above, which the corrections check makes sure of. The
balance the processor holds moves with every BalanceChanged, whatever its cause (a charge, a
payment, a correction): its latest is compared. Payments: a payment id counts once, unless
it was refused (a PaymentRejected for it and no BalanceChanged caused by it).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Iterable, Mapping

from imbill.domain.events import BalanceChanged, Charge, Payment, PaymentRejected, Rejection

__all__ = ["AttemptSeen", "Topics", "Difference", "Reconciliation", "reconcile", "charge_total", "difference_total",
           "latest_revisions"]

ZERO = Decimal(0)
CENT = Decimal("0.01")
SHOWN_IDS = 3
"""How many attempt ids a difference line names before "and N more"."""


@dataclass(frozen=True, slots=True)
class AttemptSeen:
    """An attempt on the attempts topic: its id (``undecodable-<partition>-<offset>`` for a
    record that is no MessageAttempt) and the account that sent it ("" when unknown)."""

    attempt_id: str
    account: str


@dataclass(frozen=True)
class Topics:
    """What the topics hold for one environment, each in topic order."""

    attempts: Iterable[AttemptSeen] = ()
    charges: Iterable[Charge] = ()
    rejections: Iterable[Rejection] = ()
    payments: Iterable[Payment] = ()
    payment_rejections: Iterable[PaymentRejected] = ()
    balances: Iterable[BalanceChanged] = ()


@dataclass(frozen=True, slots=True)
class Difference:
    """One line of the report: an account, what was checked, what was expected and found."""

    account: str
    check: str
    expected: str
    found: str
    detail: str = ""


@dataclass(frozen=True)
class Reconciliation:
    differences: list[Difference] = field(default_factory=list)
    accounts: int = 0
    attempts: int = 0

    @property
    def clean(self) -> bool:
        return not self.differences


def reconcile(opening: Mapping[str, Decimal], topics: Topics, projected: Mapping[str, Decimal] | None = None,
              *, account: str | None = None) -> Reconciliation:
    """Compare ``topics`` with the ``opening`` balances of the environment's accounts and,
    when given, the ``projected`` balances; only ``account`` when one is named."""
    charges = list(topics.charges)
    balances = _latest_balances(topics.balances)
    applied = _applied_payments(topics.payments, topics.payment_rejections, topics.balances)
    accounts = set(opening) | {c.account for c in charges} | set(balances) | set(applied)
    if account is not None:
        accounts &= {account}
    differences: list[Difference] = []
    for name in sorted(accounts):
        differences += _balance_differences(name, opening.get(name), charges, applied.get(name, {}),
                                            balances.get(name), projected)
    rejections = list(topics.rejections)
    outcome_differences, attempts = _outcome_differences(topics.attempts, charges, rejections, account)
    correction_differences = _correction_differences(charges, rejections, account)
    return Reconciliation(differences + outcome_differences + correction_differences, len(accounts), attempts)


def charge_total(charges: Iterable[Charge]) -> Decimal:
    """The effective amount of ``charges`` (one account's): the amount of each latest
    revision, the revisions no correction supersedes."""
    return sum((c.amount for c in latest_revisions(charges)), ZERO)


def difference_total(charges: Iterable[Charge]) -> Decimal:
    """The same total added as a downstream consumer may: the difference of every revision
    (a charge id's latest record), a first charge's difference being its amount."""
    return sum((_difference(c) for c in _latest_records(charges).values()), ZERO)


def latest_revisions(charges: Iterable[Charge]) -> list[Charge]:
    """The revisions no correction supersedes (of a charge id, its latest record): the latest
    of each attempt's chain. Two first charges of one attempt (a double charge, which the
    outcome check reports) both stay: each was charged."""
    records = _latest_records(charges)
    superseded = {c.corrects for c in records.values() if c.kind == "correction" and c.corrects}
    return [c for charge_id, c in records.items() if charge_id not in superseded]


def _latest_records(charges: Iterable[Charge]) -> dict[str, Charge]:
    latest: dict[str, Charge] = {}
    for charge in charges:
        latest[charge.charge_id] = charge
    return latest


def _difference(charge: Charge) -> Decimal:
    return charge.amount if charge.difference is None else charge.difference


def _latest_balances(events: Iterable[BalanceChanged]) -> dict[str, Decimal]:
    latest: dict[str, Decimal] = {}
    for event in events:
        latest[event.account] = event.balance
    return latest


def _applied_payments(payments: Iterable[Payment], refused: Iterable[PaymentRejected],
                      balances: Iterable[BalanceChanged]) -> dict[str, dict[str, Decimal]]:
    """Account -> payment id -> amount, for every payment not refused."""
    credited = {b.cause_id for b in balances if b.cause == "payment"}
    rejected = {r.payment_id for r in refused} - credited
    applied: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for payment in payments:
        if payment.payment_id not in rejected:
            applied[payment.account].setdefault(payment.payment_id, payment.amount)
    return applied


def _balance_differences(account: str, opening: Decimal | None, charges: list[Charge],
                         payments: Mapping[str, Decimal], processor: Decimal | None,
                         projected: Mapping[str, Decimal] | None) -> list[Difference]:
    own = [c for c in charges if c.account == account]
    if opening is None:
        return [Difference(account, "balance", "an account of the config", "no such account",
                           f"{len(own)} charges, {len(payments)} payments")]
    paid, charged = sum(payments.values(), ZERO), charge_total(own)
    expected = opening + paid - charged
    how = f"opening {_money(opening)} + payments {_money(paid)} - charges {_money(charged)}"
    found = []
    held = opening if processor is None else processor
    if held != expected:
        found.append(Difference(account, "balance", _money(expected), _money(held), f"processor; {how}"))
    if projected is not None:
        shown = projected.get(account, opening)
        if shown != expected:
            found.append(Difference(account, "projection", _money(expected), _money(shown), f"balance_event; {how}"))
    return found


def _money(amount: Decimal) -> str:
    """An amount with 2 decimals, or as many as it needs (events carry 6)."""
    cents = amount.quantize(CENT)
    return f"{cents if cents == amount else amount.normalize():f}"


def _outcome_differences(attempts: Iterable[AttemptSeen], charges: list[Charge], rejections: list[Rejection],
                         account: str | None) -> tuple[list[Difference], int]:
    outcomes: dict[str, set[str]] = defaultdict(set)
    owner: dict[str, str] = {}
    amounts: dict[str, set[Decimal]] = defaultdict(set)
    charged: dict[str, str] = {}
    for charge in charges:
        amounts[charge.charge_id].add(charge.amount)
        charged[charge.charge_id] = charge.account
        if charge.kind == "charge":
            outcomes[charge.attempt_id].add(charge.charge_id)
            owner.setdefault(charge.attempt_id, charge.account)
    for rejection in rejections:
        outcomes[rejection.attempt_id].add(rejection.rejection_id)
        owner.setdefault(rejection.attempt_id, rejection.account)
    seen: dict[str, str] = {}
    for attempt in attempts:
        seen.setdefault(attempt.attempt_id, owner.get(attempt.attempt_id) or attempt.account)
    if account is not None:
        seen = {attempt_id: who for attempt_id, who in seen.items() if who == account}
    missing, doubled = defaultdict(list), defaultdict(list)
    for attempt_id, who in seen.items():
        count = len(outcomes.get(attempt_id, ()))
        if count != 1:
            (missing if count == 0 else doubled)[who].append(attempt_id)
    lines = [Difference(who or "-", "outcome", "1 per attempt", f"none for {len(ids)}", _ids(ids))
             for who, ids in sorted(missing.items())]
    lines += [Difference(who or "-", "outcome", "1 per attempt", f"2 or more for {len(ids)}",
                         _ids(ids, outcomes)) for who, ids in sorted(doubled.items())]
    twice = defaultdict(list)
    for charge_id, values in amounts.items():
        if len(values) > 1:
            twice[charged[charge_id]].append(charge_id)
    lines += [Difference(who or "-", "charge id", "1 amount per charge id", f"2 or more for {len(ids)}", _ids(ids))
              for who, ids in sorted(twice.items()) if account is None or who == account]
    return lines, len(seen)


def _ids(ids: list[str], outcomes: Mapping[str, set[str]] | None = None) -> str:
    named = [f"{i} ({', '.join(sorted(outcomes[i]))})" if outcomes else i for i in sorted(ids)[:SHOWN_IDS]]
    more = f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
    return ", ".join(named) + more


def _correction_differences(charges: list[Charge], rejections: list[Rejection],
                            account: str | None) -> list[Difference]:
    """Corrections that do not chain: naming no outcome of their attempt at the revision
    before, or carrying another difference than their amount minus the superseded amount."""
    records = _latest_records(charges)
    rejected = {(r.attempt_id, r.rejection_id) for r in rejections}
    orphans, wrong = defaultdict(list), defaultdict(list)
    for correction in records.values():
        if correction.kind != "correction" or account not in (None, correction.account):
            continue
        superseded = _superseded_amount(correction, records, rejected)
        if superseded is None:
            orphans[correction.account].append(correction.charge_id)
        elif _difference(correction) != correction.amount - superseded:
            wrong[correction.account].append(correction.charge_id)
    lines = [Difference(who, "correction", "corrects its attempt's revision before", f"none for {len(ids)}",
                        _ids(ids)) for who, ids in sorted(orphans.items())]
    lines += [Difference(who, "correction", "difference = amount - superseded amount", f"another for {len(ids)}",
                         _ids(ids)) for who, ids in sorted(wrong.items())]
    return lines


def _superseded_amount(correction: Charge, records: Mapping[str, Charge],
                       rejected: set[tuple[str, str]]) -> Decimal | None:
    """The amount of the outcome ``correction`` supersedes (a rejection's is 0), or None when
    it names no outcome of its attempt at the revision before."""
    before = records.get(correction.corrects or "")
    if before is not None and before.attempt_id == correction.attempt_id \
            and before.revision == correction.revision - 1:
        return before.amount
    if correction.revision == 2 and (correction.attempt_id, correction.corrects) in rejected:
        return ZERO
    return None
