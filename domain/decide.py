"""Deciding one input record of one account: "bill one attempt", "apply one payment" and
"apply one re-rating correction".

These are the processor's whole decision for a record, as pure functions: the account's
state, the record (a domain event), the config snapshot, the record's Kafka key and
offset, and the clock in; the new state and the events it causes out. The live processor
and re-rating call the same functions with other snapshots and other sources of attempts.

A refusal is an event (Rejection, PaymentRejected), never an exception. An exception from
here is a bug in a rule: the caller must not turn it into a decision a customer sees. A
correction is no attempt and has no rejection event: one that is not applied is a Decision
without events whose ``refused`` says why, for the caller to log.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal
from operator import attrgetter
from types import SimpleNamespace
from typing import Any, Mapping

from imbill.domain.balance import AccountState, Event, bill, correct, open_account, payment_rejected, top_up
from imbill.domain.config import KIND_BY_EVENT, KIND_BY_NAME, ConfigState
from imbill.domain.dedup import UNSEEN, Sighting, verdict
from imbill.domain.events import (Charge, ConfigEventRejected, MessageAttempt, Payment, PaymentRejected, Rejection,
                                  charge_id_of, config_rejection_id_of, correction_id_of, rejection_id_of)
from imbill.domain.keys import account_key
from imbill.domain.money import BALANCE_LIMIT, PAYMENT_LIMIT, ZERO
from imbill.domain.rating import CLOCK_SKEW, MAX_TEXT_CHARS, REASON_CODES, text_chars, Rated, Refusal, account_push_events, charge_of, rate_attempt, rejection_of

__all__ = ["Decision", "Limits", "DEFAULT_LIMITS", "decide_attempt", "decide_payment", "decide_correction",
           "opened_account", "undecodable_attempt", "undecodable_payment", "config_event_rejected",
           "PAYMENT_REASON_CODES", "CORRECTION_REASON_CODES", "CORRECTION_TEXT_LIMIT"]

PAYMENT_REASON_CODES = {
    "malformed_payment": "The record is no Payment (garbage, an unknown schema, a missing field).",
    "key_mismatch": "The record key is not the account the payment names.",
    "invalid_amount": "The amount is zero, negative or not a number.",
    "amount_too_large": "The amount is over the single-payment maximum (IMBILL_PAYMENT_MAXIMUM, at most "
                        "money.PAYMENT_LIMIT).",
    "unknown_account": "The account does not exist in the environment.",
    "currency_mismatch": "The payment is in another currency than the account's balance.",
    "balance_limit": "The payment would take the balance past money.BALANCE_LIMIT.",
    "outside_dedup_window": "The payment is dated more than 24 hours before the account's newest payment "
                            "(domain/dedup.py): a first copy of it may be forgotten.",
}
"""Why a payment is not applied: the reason codes of PaymentRejected."""

SKIPPED = ("duplicate", "already_applied")
FAILED = "failed"
"""The ``delivery`` of an attempt the SIP edge could not deliver."""
UNREMEMBERED = (*SKIPPED, "outside_dedup_window")


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds a deployment sets on its inputs (``imbill/settings.py`` reads them; the domain
    constants are the defaults and the largest values the events' types hold)."""

    payment_maximum: Decimal = PAYMENT_LIMIT
    """The largest single payment applied (amount_too_large above it)."""
    clock_skew: timedelta = CLOCK_SKEW
    """How far after the rating clock an attempt may be dated (implausible_attempt beyond)."""
    charge_undelivered: bool = False
    """Whether an attempt the SIP edge failed to deliver (``delivery`` failed) is charged as
    any other (PortaBilling bills the authorization); by default it is refused undelivered."""

    def __post_init__(self) -> None:
        if not ZERO < self.payment_maximum <= PAYMENT_LIMIT:
            raise ValueError(f"payment maximum: must be over 0 and at most {PAYMENT_LIMIT}, "
                             f"not {self.payment_maximum}")
        if not timedelta(0) <= self.clock_skew <= timedelta(days=1):
            raise ValueError(f"attempt clock skew: must be 0 to 86400 seconds, not "
                             f"{self.clock_skew.total_seconds():g}")


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Decision:
    """The account's state after a record (None: the key is no account), the events the
    record causes, and whether its id joins the account's dedup memory (:mod:`.dedup`)."""

    state: AccountState | None
    events: tuple[Charge | Rejection | Event, ...] = ()
    remember: bool = False
    refused: tuple[str, str] | None = None
    """A correction not applied: (reason code of CORRECTION_REASON_CODES, words), to be logged."""


def decide_attempt(state: AccountState | None, attempt: MessageAttempt, config: ConfigState, *,
                   key: bytes | None, offset: int, now: datetime, sighting: Sighting = UNSEEN,
                   limits: Limits = DEFAULT_LIMITS) -> Decision:
    """Rate and bill ``attempt`` (the record at ``offset`` under ``key``) for its sender;
    ``sighting`` is what the account's dedup memory knows of its attempt id."""
    if text_chars(attempt) > MAX_TEXT_CHARS:
        return Decision(state, (_oversized(attempt, now),))
    seen = verdict(sighting, offset=offset, at=min(attempt.received_at, now))
    rated = rate_attempt(attempt, config, rated_at=now, clock_skew=limits.clock_skew)
    if type(rated) is Refusal:
        return _once(state, seen, rejection_of(attempt, rated, now))
    if attempt.delivery == FAILED and not limits.charge_undelivered:
        return _once(state, seen, rejection_of(attempt, _undelivered(attempt, rated), now))
    if rated.direction != "outgoing":  # free, billed to the recipient, whose balance is elsewhere
        return _once(state, seen, charge_of(attempt, rated, now))
    if account_key(rated.environment, rated.account) != key:
        refusal = Refusal("malformed_attempt", f"the record key {key!r} does not name the sending account",
                          rated.account)
        return _once(state, seen, rejection_of(attempt, refusal, now))
    result = bill(state or _opened(config, rated), rated, attempt_id=attempt.attempt_id, offset=offset,
                  occurred_at=now, sighting=seen)
    return Decision(result.state, _outcome(attempt, rated, result.outcome, now) + tuple(result.events),
                    remember=result.outcome not in UNREMEMBERED)


def _undelivered(attempt: MessageAttempt, rated: Rated) -> Refusal:
    return Refusal("undelivered", f"the SIP edge could not deliver the message to {attempt.to_user!r}: SIP "
                   f"{attempt.delivery_code}", rated.account)


def _once(state: AccountState | None, seen: str, event: Charge | Rejection) -> Decision:
    """An outcome decided without the account's balance (a refusal, even of an unknown
    sender; the free charge of an incoming message), remembered as a bill is: a copy of its
    attempt (``seen`` is the id's :func:`.dedup.verdict`) emits nothing, even in a later
    batch, where deciding it again would give another ``rejected_at``/``rated_at`` (copies of
    an outcome must be byte-identical). A stale id is decided, not remembered, as billing does."""
    if seen == "copy":
        return Decision(state)
    return Decision(state, (event,), remember=seen == "new")


def _oversized(attempt: MessageAttempt, now: datetime) -> Rejection:
    """The implausible_attempt Rejection of an attempt longer than a SIP datagram: recorded
    against no account (the input record's key), its texts cut, so that it stays small."""
    attempt_id = _text(attempt.attempt_id) or ""
    return Rejection(rejection_id=rejection_id_of(attempt_id), attempt_id=attempt_id, environment="", account="",
                     attempted_at=attempt.received_at, rejected_at=now, reason_code="implausible_attempt",
                     message=f"its text fields hold {text_chars(attempt):,} characters, more than a SIP datagram "
                             f"({MAX_TEXT_CHARS:,})",
                     to_user=_text(attempt.to_user) or "", to_domain=_text(attempt.to_domain) or "")


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
                   offset: int, now: datetime, sighting: Sighting = UNSEEN,
                   limits: Limits = DEFAULT_LIMITS) -> Decision:
    """Apply ``payment`` (the record at ``offset`` under ``key``) to its account's balance;
    ``sighting`` is what the account's dedup memory knows of its payment id."""
    environment, account = payment.environment, payment.account
    unfit = _unfit_payment(payment, now)
    if unfit is not None:
        return Decision(state, (unfit,))
    refused = _implausible_payment(payment, key, limits.payment_maximum)
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


def _implausible_payment(payment: Payment, key: bytes | None, maximum: Decimal) -> tuple[str, str] | None:
    """(reason code, words) of a payment that is refused whatever the account's state."""
    amount = payment.amount
    if account_key(payment.environment, payment.account) != key:
        return "key_mismatch", (f"payment {payment.payment_id}: the record key {key!r} is not the account's "
                                f"({payment.environment}/{payment.account})")
    if not amount.is_finite() or amount <= 0:
        return "invalid_amount", f"payment {payment.payment_id} of {amount} is not a positive amount"
    if amount > maximum:
        return "amount_too_large", f"payment {payment.payment_id} of {amount} is over the maximum {maximum}"
    return None


PAYMENT_TEXT_LIMIT = 16_384
"""The most characters a payment's texts hold together (ids, account, currency, reference):
``imbill payment`` writes far less; more cannot be repeated in a PaymentRejected and a key."""
_AMOUNT_BOUND = Decimal(10) ** 18
"""What the events' decimal(24, 6) holds: |amount| below it."""


def _unfit_payment(payment: Payment, now: datetime) -> PaymentRejected | None:
    """The PaymentRejected of a payment too large to repeat (texts past PAYMENT_TEXT_LIMIT, an
    amount past decimal(24, 6)): recorded against no account (the input record's key), its
    texts cut and its amount 0, so that the rejection stays small and encodable."""
    chars = (len(payment.payment_id) + len(payment.environment) + len(payment.account) + len(payment.currency)
             + len(payment.reference))
    if chars > PAYMENT_TEXT_LIMIT:
        code, why = "malformed_payment", f"its texts hold {chars:,} characters, over {PAYMENT_TEXT_LIMIT:,}"
    elif not payment.amount.is_finite() or abs(payment.amount) >= _AMOUNT_BOUND:
        code, why = "invalid_amount", f"the amount {str(payment.amount)[:40]} does not fit decimal(24, 6)"
    else:
        return None
    return PaymentRejected(payment_id=_text(payment.payment_id) or "", environment="", account="", amount=ZERO,
                           currency="", received_at=payment.received_at, rejected_at=now, reason_code=code,
                           message=f"payment {_text(payment.payment_id)}: {why}")


CORRECTION_REASON_CODES = {
    "not_a_correction": "The Charge on the corrections topic is not of kind correction.",
    "oversized_correction": "Its texts hold together more than CORRECTION_TEXT_LIMIT characters.",
    "invalid_direction": "Its direction is neither outgoing nor incoming.",
    "invalid_revision": "Its revision is under 2 (revision 1 is the first outcome, decided live).",
    "inconsistent_id": "Its charge id is not correction_id_of(attempt id, revision), or it does not name in "
                       "corrects an outcome of its attempt at the revision before (chg-/rej-<attempt> for "
                       "revision 2, chg-<attempt>#<n - 1> after).",
    "key_mismatch": "The record key is not the account the correction names.",
    "invalid_amount": "The difference is missing, not a number or past the events' decimal(24, 6); the amount "
                      "is negative or past it; or the difference is more than the amount (the superseded "
                      "outcome would have cost less than 0).",
    "unknown_account": "The account does not exist in the environment (nor has a balance).",
    "currency_mismatch": "The difference is not zero and in another currency than the account's balance.",
    "balance_limit": "The correction would take the balance past plus or minus money.BALANCE_LIMIT.",
    "outside_dedup_window": "The correction is dated (rated_at) more than 24 hours before the account's newest "
                            "correction: a first copy of it may be forgotten.",
}
"""Why a re-rating correction is not applied (logged with its topic, partition and offset: a
correction is made by the operators' re-rating tool, and has no rejection event)."""

CORRECTION_TEXT_LIMIT = 262_144
"""The most characters a correction's texts hold together: a charge of a SIP datagram's texts
and its config names is far less; more would make changelog records near the broker's 1 MiB."""


def decide_correction(state: AccountState | None, correction: Charge, config: ConfigState, *, key: bytes | None,
                      offset: int, now: datetime, sighting: Sighting = UNSEEN) -> Decision:
    """Apply the re-rating ``correction`` (the record at ``offset`` under ``key`` on the
    corrections topic) through the account's single writer: the Charge is emitted as it is
    (for the charges topic) and the balance moves by minus its difference.

    A correction is never refused for funds (the message was delivered). One that cannot
    be real is not applied and emits nothing (:data:`CORRECTION_REASON_CODES`): a hostile
    record must never create money. ``sighting`` is what the account's dedup memory knows
    of its charge id: a copy (a resumed re-rating run sending it again) changes nothing.
    """
    environment, account = correction.environment, correction.account
    opened = state or opened_account(config, environment, account)
    seen = verdict(sighting, offset=offset, at=min(correction.rated_at, now))  # a future date moves no window
    refused = _unapplicable(correction, key, opened, seen)
    if refused is not None:
        return Decision(state, refused=refused)
    if seen == "copy":  # sent again (a resumed re-rating run): the first copy was applied
        return Decision(state)
    if correction.direction != "outgoing":  # billed to nobody (an incoming message is free): the xDR only
        return Decision(state, (correction,), remember=True)
    found = config.environments[environment].accounts.get(account) if environment in config.environments else None
    prepaid = found is not None and found.balance_model == "prepaid"
    opened, events = correct(opened, correction, prepaid=prepaid, occurred_at=now,
                             push_events=account_push_events(config, environment, account))
    return Decision(opened, (correction, *events), remember=True)


def _unapplicable(correction: Charge, key: bytes | None, opened: AccountState | None,
                  seen: str) -> tuple[str, str] | None:
    """(reason code, words) of a correction not applied; None when it is applied (or a copy)."""
    refused = _implausible_correction(correction, key)
    if refused is None and opened is None:
        refused = "unknown_account", (f"account {correction.account} does not exist in environment "
                                      f"{correction.environment}")
    if refused is None and opened is not None and correction.direction == "outgoing":
        refused = _unpayable_correction(opened, correction)
    if refused is None and seen == "stale":
        refused = "outside_dedup_window", (f"{correction.charge_id} is dated {correction.rated_at.isoformat()}, "
                                           f"more than 24 hours before the newest correction of account "
                                           f"{correction.account}")
    return refused


def _implausible_correction(correction: Charge, key: bytes | None) -> tuple[str, str] | None:
    """(reason code, words) of a correction refused whatever the account's state."""
    charge_id, attempt_id, revision = correction.charge_id, correction.attempt_id, correction.revision
    chars = sum(len(value) for value in _correction_texts(correction))
    if chars > CORRECTION_TEXT_LIMIT:
        return "oversized_correction", f"its texts hold {chars:,} characters, over {CORRECTION_TEXT_LIMIT:,}"
    if correction.kind != "correction":
        return "not_a_correction", f"{charge_id} is of kind {correction.kind!r}, not 'correction'"
    if correction.direction not in ("outgoing", "incoming"):
        return "invalid_direction", f"{charge_id} has direction {correction.direction!r}"
    if revision < 2:
        return "invalid_revision", f"{charge_id} has revision {revision}: a correction is revision 2 or more"
    superseded = (charge_id_of(attempt_id), rejection_id_of(attempt_id)) if revision == 2 else (
        correction_id_of(attempt_id, revision - 1),)
    if not attempt_id or charge_id != correction_id_of(attempt_id, revision) or correction.corrects not in superseded:
        return "inconsistent_id", (f"{charge_id} (corrects {correction.corrects}) is not revision {revision} of "
                                   f"attempt {attempt_id}'s outcome")
    if account_key(correction.environment, correction.account) != key:
        return "key_mismatch", (f"{charge_id}: the record key {key!r} is not the account's "
                                f"({correction.environment}/{correction.account})")
    return _implausible_amounts(correction)


def _implausible_amounts(correction: Charge) -> tuple[str, str] | None:
    amount, difference = correction.amount, correction.difference
    if difference is None or not _fits(difference):
        return "invalid_amount", f"{correction.charge_id}: the difference {str(difference)[:40]} is no amount"
    if not _fits(amount) or amount < 0:
        return "invalid_amount", f"{correction.charge_id}: the amount {str(amount)[:40]} is no charge"
    if difference > amount:
        return "invalid_amount", (f"{correction.charge_id}: the difference {difference} is more than the amount "
                                  f"{amount}: the outcome it supersedes would have cost less than 0")
    return None


def _unpayable_correction(state: AccountState, correction: Charge) -> tuple[str, str] | None:
    """Why the balance cannot take the correction's difference (funds are never a reason)."""
    difference = correction.difference or ZERO
    if difference and correction.currency != state.currency:
        return "currency_mismatch", (f"{correction.charge_id} is in {correction.currency}; the balance of account "
                                     f"{correction.account} is kept in {state.currency}")
    if abs(state.balance - difference) > BALANCE_LIMIT:
        return "balance_limit", (f"{correction.charge_id} would take account {correction.account} past the balance "
                                 f"limit {BALANCE_LIMIT}")
    return None


def _fits(value: Decimal) -> bool:
    """Whether ``value`` is a number the events' decimal(24, 6) holds exactly."""
    return value.is_finite() and abs(value) < _AMOUNT_BOUND and int(value.as_tuple().exponent) >= -6


def _correction_texts(correction: Charge) -> list[str]:
    texts = [value for value in _CHARGE_VALUES(correction) if type(value) is str]
    return [*texts, *correction.policies]


_CHARGE_VALUES = attrgetter(*(f.name for f in fields(Charge)))


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


_TEXT_LIMIT = 1_000
"""The longest text a ConfigEventRejected repeats from the record it refuses (then "...")."""


def config_event_rejected(topic: str, partition: int, offset: int, name: str | None, record: Mapping[str, Any],
                          reason_code: str, message: str, now: datetime) -> ConfigEventRejected:
    """The ConfigEventRejected of the config record at ``topic[partition]@offset`` (``name`` and
    ``record``: what could be decoded of it, None and {} if nothing): what is known of it,
    each text cut to a bounded length, so a hostile record cannot make a large rejection."""
    kind = KIND_BY_EVENT[name] if name in KIND_BY_EVENT else None
    if name == "ConfigObjectRemoved" and record.get("kind") in KIND_BY_NAME:
        kind = KIND_BY_NAME[record["kind"]]
    return ConfigEventRejected(
        rejection_id=config_rejection_id_of(topic, partition, offset), config_topic=topic,
        config_partition=partition, config_offset=offset, event_id=_text(record.get("event_id")), event=_text(name),
        environment=_text(record.get("environment")), kind=kind.name if kind is not None else None,
        key=_text(_key_of(kind, name, record)), reason_code=reason_code, message=_text(message) or "",
        rejected_at=now)


def _key_of(kind: Any, name: str | None, record: Mapping[str, Any]) -> Any:
    if name == "ConfigObjectRemoved":
        return record.get("key")
    if kind is None or kind.singleton:
        return None
    try:
        return kind.key(SimpleNamespace(**record))
    except Exception:  # noqa: BLE001 - a hostile record may lack or mistype any field
        return None


def _text(value: Any) -> str | None:
    if type(value) is not str:
        return None
    return value if len(value) <= _TEXT_LIMIT else value[:_TEXT_LIMIT] + "..."
