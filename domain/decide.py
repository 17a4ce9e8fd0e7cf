"""Deciding one input record of one account: "bill one attempt" and "apply one payment".

These are the processor's whole decision for a record, as pure functions: the account's
state, the record (a domain event), the config snapshot, the record's Kafka key and
offset, and the clock in; the new state and the events it causes out. The live processor
and re-rating call the same functions with other snapshots and other sources of attempts.

A refusal is an event (Rejection, PaymentRejected), never an exception. An exception from
here is a bug in a rule: the caller must not turn it into a decision a customer sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from imbill.domain.balance import AccountState, Event, bill, open_account, payment_rejected, top_up
from imbill.domain.config import ConfigState
from imbill.domain.dedup import UNSEEN, Sighting, verdict
from imbill.domain.events import Charge, MessageAttempt, Payment, PaymentRejected, Rejection, rejection_id_of
from imbill.domain.keys import account_key
from imbill.domain.money import BALANCE_LIMIT, PAYMENT_LIMIT, ZERO
from imbill.domain.rating import REASON_CODES, Rated, Refusal, account_push_events, charge_of, rate_attempt, rejection_of

__all__ = ["Decision", "decide_attempt", "decide_payment", "opened_account", "undecodable_attempt",
           "undecodable_payment", "PAYMENT_REASON_CODES"]

PAYMENT_REASON_CODES = {
    "malformed_payment": "The record is no Payment (garbage, an unknown schema, a missing field).",
    "key_mismatch": "The record key is not the account the payment names.",
    "invalid_amount": "The amount is zero, negative or not a number.",
    "amount_too_large": "The amount is over the single-payment limit (money.PAYMENT_LIMIT).",
    "unknown_account": "The account does not exist in the environment.",
    "currency_mismatch": "The payment is in another currency than the account's balance.",
    "balance_limit": "The payment would take the balance past money.BALANCE_LIMIT.",
    "outside_dedup_window": "The payment is dated more than 24 hours before the account's newest payment "
                            "(domain/dedup.py): a first copy of it may be forgotten.",
}
"""Why a payment is not applied: the reason codes of PaymentRejected."""

SKIPPED = ("duplicate", "already_applied")
UNREMEMBERED = (*SKIPPED, "outside_dedup_window")


@dataclass(frozen=True, slots=True)
class Decision:
    """The account's state after a record (None: the key is no account), the events the
    record causes, and whether its id joins the account's dedup memory (:mod:`.dedup`)."""

    state: AccountState | None
    events: tuple[Charge | Rejection | Event, ...] = ()
    remember: bool = False


def decide_attempt(state: AccountState | None, attempt: MessageAttempt, config: ConfigState, *,
                   key: bytes | None, offset: int, now: datetime, sighting: Sighting = UNSEEN) -> Decision:
    """Rate and bill ``attempt`` (the record at ``offset`` under ``key``) for its sender;
    ``sighting`` is what the account's dedup memory knows of its attempt id."""
    rated = rate_attempt(attempt, config, rated_at=now)
    if type(rated) is Refusal:
        return Decision(state, (rejection_of(attempt, rated, now),))
    if rated.direction != "outgoing":  # free, billed to the recipient, whose balance is elsewhere
        return Decision(state, (charge_of(attempt, rated, now),))
    if account_key(rated.environment, rated.account) != key:
        refusal = Refusal("malformed_attempt", f"the record key {key!r} does not name the sending account",
                          rated.account)
        return Decision(state, (rejection_of(attempt, refusal, now),))
    result = bill(state or _opened(config, rated), rated, attempt_id=attempt.attempt_id, offset=offset,
                  occurred_at=now, sighting=verdict(sighting, offset=offset, at=min(attempt.received_at, now)))
    return Decision(result.state, _outcome(attempt, rated, result.outcome, now) + tuple(result.events),
                    remember=result.outcome not in UNREMEMBERED)


def _outcome(attempt: MessageAttempt, rated: Rated, outcome: str, now: datetime) -> tuple[Charge | Rejection, ...]:
    if outcome == "charged":
        return (charge_of(attempt, rated, now),)
    if outcome in SKIPPED:
        return ()
    refusal = Refusal(outcome, REASON_CODES.get(outcome, outcome), rated.account)
    return (rejection_of(attempt, refusal, now),)


def _opened(config: ConfigState, rated: Rated) -> AccountState:
    """A balance is always kept in the customer's currency, whichever event opens it."""
    opened = opened_account(config, rated.environment, rated.account, fallback_currency=rated.currency)
    assert opened is not None, "a rated account exists in its snapshot"
    return opened


def decide_payment(state: AccountState | None, payment: Payment, config: ConfigState, *, key: bytes | None,
                   offset: int, now: datetime, sighting: Sighting = UNSEEN) -> Decision:
    """Apply ``payment`` (the record at ``offset`` under ``key``) to its account's balance;
    ``sighting`` is what the account's dedup memory knows of its payment id."""
    environment, account = payment.environment, payment.account
    refused = _implausible_payment(payment, key)
    if refused is not None:
        return Decision(state, (payment_rejected(payment, *refused, now),))
    state = state or opened_account(config, environment, account)
    if state is None:
        return Decision(None, (payment_rejected(payment, "unknown_account", f"account {account} does not exist "
                                                f"in environment {environment}", now),))
    if state.balance + payment.amount > BALANCE_LIMIT:
        return Decision(state, (payment_rejected(payment, "balance_limit", f"payment {payment.payment_id} would take "
                                                 f"account {account} past the balance limit {BALANCE_LIMIT}", now),))
    seen = verdict(sighting, offset=offset, at=min(payment.received_at, now))  # a future date moves no window
    remember = seen == "new" and offset > state.last_payment_offset
    state, events = top_up(state, payment, offset=offset, occurred_at=now, sighting=seen,
                           push_events=account_push_events(config, environment, account))
    return Decision(state, tuple(events), remember=remember)


def _implausible_payment(payment: Payment, key: bytes | None) -> tuple[str, str] | None:
    """(reason code, words) of a payment that is refused whatever the account's state."""
    amount = payment.amount
    if account_key(payment.environment, payment.account) != key:
        return "key_mismatch", (f"payment {payment.payment_id}: the record key {key!r} is not the account's "
                                f"({payment.environment}/{payment.account})")
    if not amount.is_finite() or amount <= 0:
        return "invalid_amount", f"payment {payment.payment_id} of {amount} is not a positive amount"
    if amount > PAYMENT_LIMIT:
        return "amount_too_large", f"payment {payment.payment_id} of {amount} is over the limit {PAYMENT_LIMIT}"
    return None


def undecodable_payment(payment_id: str, why: str, now: datetime) -> PaymentRejected:
    """The ``malformed_payment`` PaymentRejected of a record that is no Payment."""
    return PaymentRejected(payment_id=payment_id, environment="", account="", amount=ZERO, currency="",
                           received_at=now, rejected_at=now, reason_code="malformed_payment", message=why)


def opened_account(config: ConfigState, environment: str, account: str, *,
                   fallback_currency: str = "") -> AccountState | None:
    """The state of an account before its first event: its opening balance, in its customer's
    currency (None when the account does not exist in the snapshot)."""
    env = config.environments.get(environment)
    found = env.accounts.get(account) if env is not None else None
    if found is None:
        return None
    customer = env.customers.get(found.customer)
    return open_account(found, customer.currency if customer is not None else fallback_currency)


def undecodable_attempt(attempt_id: str, why: str, now: datetime) -> Rejection:
    """The ``malformed_attempt`` Rejection of a record that is no MessageAttempt."""
    return Rejection(rejection_id=rejection_id_of(attempt_id), attempt_id=attempt_id, environment="", account="",
                     attempted_at=now, rejected_at=now, reason_code="malformed_attempt", message=why,
                     to_user="", to_domain="")
