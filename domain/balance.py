"""Balances: charging a rated message to an account, and topping it up.

BRIEF rule 8: a prepaid account is refused when its balance cannot cover the charge, a
postpaid one when the charge would take it below minus its credit limit. When a prepaid
wallet runs empty the messaging service is suspended, and a top-up that takes the balance
above 0 resumes it; both are ServiceStatusChanged events.

The exact rules, for prepaid accounts:

- a charge that brings the balance to 0 or below suspends the service ("wallet empty");
- a charge refused for funds suspends a service that is not yet suspended
  ("insufficient funds"): the wallet cannot pay for the next message either;
- a suspended account is refused ``service_suspended`` for every message, free ones too.

Postpaid accounts are never suspended here. A zero-amount charge (incoming messages, free
MSGN rates) changes no balance and emits no BalanceChanged, but is still "charged".
A charge in another currency than the balance's is refused ``currency_mismatch`` (there is
no conversion); a payment in another currency is not applied.

Idempotence: the state remembers the offset of the last attempt and payment it applied, so a
redelivered record (offset at or below the last one: "already_applied") changes nothing and
emits nothing. Whether a record is a copy of one decided earlier, at any distance, is the
caller's ``sighting`` (:mod:`.dedup`): a copy is a "duplicate" and changes nothing either; a
record too old for the dedup window is refused ``outside_dedup_window``. Event ids derive from the cause: ``bal-<charge or payment id>``,
``st-<cause id>-<status>``.

A re-rating correction (:func:`correct`) moves the balance by minus its difference and is
never refused for funds: the message it re-rates was delivered, so a prepaid balance may go
below zero. It suspends and resumes the service as a charge and a top-up do.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from imbill.domain.config import Account
from imbill.domain.events import (BalanceChanged, Charge, Payment, PaymentRejected, ServiceStatusChanged,
                                  charge_id_of, rejection_id_of)
from imbill.domain.rating import Rated

__all__ = ["AccountState", "BillResult", "Event", "open_account", "bill", "top_up", "correct", "payment_rejected"]

Event = BalanceChanged | ServiceStatusChanged | PaymentRejected


@dataclass(frozen=True, slots=True)
class AccountState:
    balance: Decimal
    currency: str
    suspended: bool
    last_attempt_offset: int = -1
    last_payment_offset: int = -1


@dataclass(frozen=True, slots=True)
class BillResult:
    """The new state, the outcome (charged, insufficient_funds, service_suspended,
    currency_mismatch, outside_dedup_window, duplicate or already_applied) and the events to
    append."""

    state: AccountState
    outcome: str
    events: list[Event]

    @property
    def charged(self) -> bool:
        return self.outcome == "charged"


def open_account(account: Account, currency: str) -> AccountState:
    """The state of an account before any charge: its opening balance, service active."""
    return AccountState(balance=account.opening_balance, currency=currency, suspended=False)


def bill(state: AccountState, rated: Rated, *, attempt_id: str, offset: int, occurred_at: datetime,
         sighting: str = "new") -> BillResult:
    """Charge ``rated`` (the attempt at ``offset``) to the account in ``state``; ``sighting``
    is the attempt id's :func:`.dedup.verdict` (new, copy or stale)."""
    if offset <= state.last_attempt_offset:
        return BillResult(state, "already_applied", [])
    if sighting != "new":
        outcome = "duplicate" if sighting == "copy" else "outside_dedup_window"
        return BillResult(_seen(state, offset, state.balance, state.suspended), outcome, [])
    amount, prepaid = rated.amount, rated.balance_model == "prepaid"
    refused = _refused(state, rated, amount, prepaid)
    if refused == "insufficient_funds" and prepaid:
        status = _status(rated, "suspended", "insufficient funds", rejection_id_of(attempt_id), occurred_at)
        return BillResult(_seen(state, offset, state.balance, True), refused, [status])
    if refused or not amount:
        return BillResult(_seen(state, offset, state.balance, state.suspended), refused or "charged", [])
    charge_id = charge_id_of(attempt_id)
    balance = state.balance - amount
    events = [_balance_changed(rated.environment, rated.account, "charge", charge_id, -amount, balance,
                               state.currency, occurred_at)]
    suspend = prepaid and balance <= 0
    if suspend:
        events.append(_status(rated, "suspended", "wallet empty", charge_id, occurred_at))
    return BillResult(_seen(state, offset, balance, suspend), "charged", events)


def _seen(state: AccountState, offset: int, balance: Decimal, suspended: bool) -> AccountState:
    """``state`` after billing the attempt at ``offset``: built directly, not with
    ``dataclasses.replace`` (three times dearer), as every attempt passes here."""
    return AccountState(balance=balance, currency=state.currency, suspended=suspended, last_attempt_offset=offset,
                        last_payment_offset=state.last_payment_offset)


def _refused(state: AccountState, rated: Rated, amount: Decimal, prepaid: bool) -> str:
    """Why ``amount`` cannot be charged to the account ("" when it can)."""
    if state.suspended and prepaid:
        return "service_suspended"
    if amount and rated.currency != state.currency:
        return "currency_mismatch"
    if _cannot_pay(state.balance, amount, prepaid, rated.credit_limit):
        return "insufficient_funds"
    return ""


def _cannot_pay(balance: Decimal, amount: Decimal, prepaid: bool, credit_limit: Decimal) -> bool:
    if prepaid:
        return balance < amount
    return balance - amount < -credit_limit


def top_up(state: AccountState, payment: Payment, *, offset: int, occurred_at: datetime,
           push_events: bool = False, sighting: str = "new") -> tuple[AccountState, list[Event]]:
    """Apply a Payment; resume a suspended service the payment lifts above 0.

    ``push_events`` is the account's product policy attribute (``rating.account_push_events``);
    ``sighting`` the payment id's :func:`.dedup.verdict`: a copy is credited once (nothing
    again), a payment too old for the dedup window is refused.
    """
    if offset <= state.last_payment_offset:
        return state, []
    payment_id, amount = payment.payment_id, payment.amount
    seen = replace(state, last_payment_offset=offset)
    if sighting == "copy":
        return seen, []
    if sighting == "stale":
        return seen, [payment_rejected(payment, "outside_dedup_window",
                                       f"payment {payment_id} is dated more than 24 hours before the newest payment "
                                       f"of account {payment.account}: it cannot be checked against its copies",
                                       occurred_at)]
    if payment.currency != state.currency:
        return seen, [payment_rejected(payment, "currency_mismatch",
                                       f"payment {payment_id} is in {payment.currency}; the balance of account "
                                       f"{payment.account} is kept in {state.currency}", occurred_at)]
    balance = state.balance + amount
    environment, account = payment.environment, payment.account
    events = [_balance_changed(environment, account, "payment", payment_id, amount, balance, state.currency,
                               occurred_at)]
    resume = state.suspended and balance > 0
    if resume:
        events.append(_status_changed(environment, account, "active", "top-up", payment_id, occurred_at,
                                      push_events))
    return replace(seen, balance=balance, suspended=state.suspended and not resume), events


def correct(state: AccountState, correction: Charge, *, prepaid: bool, occurred_at: datetime,
            push_events: bool = False) -> tuple[AccountState, list[Event]]:
    """Apply a re-rating correction: the balance moves by minus its ``difference`` (what the
    message costs now minus what its superseded outcome cost), whatever the balance.

    The message was delivered when it was first decided, so a correction is a fact about
    its price, not a request the wallet may refuse: a prepaid balance may go below zero. A
    positive difference that leaves a prepaid balance at 0 or below suspends the service
    ("wallet empty"), as a charge does; a refund that lifts a suspended balance above 0
    resumes it ("correction"), as a top-up does. A zero difference changes nothing.
    ``push_events``: the account's product policy attribute, carried on a status change.
    """
    difference = correction.difference or 0
    if not difference:
        return state, []
    environment, account, cause_id = correction.environment, correction.account, correction.charge_id
    balance = state.balance - difference
    events: list[Event] = [_balance_changed(environment, account, "correction", cause_id, -difference, balance,
                                            state.currency, occurred_at)]
    suspended = state.suspended
    if difference > 0 and prepaid and not suspended and balance <= 0:
        suspended = True
        events.append(_status_changed(environment, account, "suspended", "wallet empty", cause_id, occurred_at,
                                      push_events))
    elif difference < 0 and suspended and balance > 0:
        suspended = False
        events.append(_status_changed(environment, account, "active", "correction", cause_id, occurred_at,
                                      push_events))
    return replace(state, balance=balance, suspended=suspended), events


def _balance_changed(environment: str, account: str, cause: str, cause_id: str, delta: Decimal,
                     balance: Decimal, currency: str, occurred_at: datetime) -> BalanceChanged:
    return BalanceChanged(event_id="bal-" + cause_id, environment=environment, account=account, cause=cause,
                          cause_id=cause_id, delta=delta, balance=balance, currency=currency,
                          occurred_at=occurred_at)


def _status(rated: Rated, status: str, reason: str, cause_id: str, occurred_at: datetime) -> ServiceStatusChanged:
    return _status_changed(rated.environment, rated.account, status, reason, cause_id, occurred_at, rated.push_events)


def _status_changed(environment: str, account: str, status: str, reason: str, cause_id: str,
                    occurred_at: datetime, push_events: bool) -> ServiceStatusChanged:
    return ServiceStatusChanged(event_id=f"st-{cause_id}-{status}", environment=environment, account=account,
                                service="messaging", status=status, reason=reason, cause_id=cause_id,
                                occurred_at=occurred_at, push_events=push_events)


def payment_rejected(payment: Payment, reason_code: str, message: str, rejected_at: datetime) -> PaymentRejected:
    """A PaymentRejected event: the payment is not lost, it is refused where everyone sees it."""
    return PaymentRejected(payment_id=payment.payment_id, environment=payment.environment,
                           account=payment.account, amount=payment.amount, currency=payment.currency,
                           received_at=payment.received_at, rejected_at=rejected_at, reason_code=reason_code,
                           message=message)
