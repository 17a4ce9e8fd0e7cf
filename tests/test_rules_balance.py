"""Balances: charges, refusals for funds, suspension and resumption, idempotence."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from imbill.domain.events import BalanceChanged, ServiceStatusChanged
from imbill.schemas.codec import decode_event, encode_event
from imbill.domain.balance import AccountState, bill, open_account, top_up
from imbill.domain.rating import REASON_CODES, Rated, rate_attempt
from tests.builders import ALICE, ENV, T0, attempt, checklist, payment

AT = T0 + timedelta(hours=3)


def rated(amount: str, *, model: str = "prepaid", credit: str = "0", currency: str = "USD",
          push: bool = False) -> Rated:
    message = attempt()
    base = rate_attempt(message, checklist().state, rated_at=AT)
    return base._replace(amount=Decimal(amount), balance_model=model, credit_limit=Decimal(credit),
                         currency=currency, push_events=push)


def state(balance: str, *, suspended: bool = False, **fields) -> AccountState:
    return AccountState(Decimal(balance), "USD", suspended, **fields)


def bal(cause_id: str, delta: str, balance: str) -> BalanceChanged:
    cause = "charge" if cause_id.startswith("chg-") else "payment"
    return BalanceChanged(event_id=f"bal-{cause_id}", environment=ENV, account=ALICE, cause=cause,
                          cause_id=cause_id, delta=Decimal(delta), balance=Decimal(balance), currency="USD",
                          occurred_at=AT)


def status(cause_id: str, value: str, reason: str, push: bool = False) -> ServiceStatusChanged:
    return ServiceStatusChanged(event_id=f"st-{cause_id}-{value}", environment=ENV, account=ALICE,
                                service="messaging", status=value, reason=reason, cause_id=cause_id,
                                occurred_at=AT, push_events=push)


# (case id, state before, rated, outcome, balance after, suspended after, events)
BILL = [
    ("prepaid covers the charge", state("1.00"), rated("0.05"), "charged", "0.95", False,
     [bal("chg-att-1", "-0.05", "0.95")]),
    ("prepaid charge empties the wallet: suspended", state("0.05"), rated("0.05", push=True), "charged", "0.00",
     True, [bal("chg-att-1", "-0.05", "0.00"), status("chg-att-1", "suspended", "wallet empty", True)]),
    ("prepaid cannot cover: refused and suspended", state("0.02"), rated("0.05"), "insufficient_funds", "0.02",
     True, [status("rej-att-1", "suspended", "insufficient funds")]),
    ("suspended account is refused", state("0.00", suspended=True), rated("0.05"), "service_suspended", "0.00",
     True, []),
    ("suspended account is refused free messages too", state("0.00", suspended=True), rated("0"),
     "service_suspended", "0.00", True, []),
    ("an account moved from prepaid to postpaid is not held by its old suspension",
     state("0.00", suspended=True), rated("0.50", model="postpaid", credit="5"), "charged", "-0.50", False,
     [bal("chg-att-1", "-0.50", "-0.50")]),
    ("zero amount changes nothing but is charged", state("0.00"), rated("0.00"), "charged", "0.00", False, []),
    ("postpaid within the credit limit", state("-4.00"), rated("0.50", model="postpaid", credit="5"), "charged",
     "-4.50", False, [bal("chg-att-1", "-0.50", "-4.50")]),
    ("postpaid exactly at the credit limit", state("-4.50"), rated("0.50", model="postpaid", credit="5"),
     "charged", "-5.00", False, [bal("chg-att-1", "-0.50", "-5.00")]),
    ("postpaid beyond the credit limit: refused, not suspended", state("-4.60"),
     rated("0.50", model="postpaid", credit="5"), "insufficient_funds", "-4.60", False, []),
    ("charge in another currency", state("1.00"), rated("0.05", currency="EUR"), "currency_mismatch", "1.00",
     False, []),
    ("retransmission published twice", state("1.00"), rated("0.05"), "duplicate", "1.00", False, [], "copy"),
    ("dated before the dedup window", state("1.00"), rated("0.05"), "outside_dedup_window", "1.00", False, [],
     "stale"),
    ("redelivered offset", state("1.00", last_attempt_offset=7), rated("0.05"), "already_applied", "1.00", False,
     []),
]


@pytest.mark.parametrize(("before", "charge", "outcome", "balance", "suspended", "events", "sighting"),
                         [(*c[1:], "new")[:7] for c in BILL], ids=[c[0] for c in BILL])
def test_bill(before: AccountState, charge: Rated, outcome: str, balance: str, suspended: bool,
              events: list, sighting: str) -> None:
    result = bill(before, charge, attempt_id="att-1", offset=7, occurred_at=AT, sighting=sighting)
    assert (result.outcome, result.state.balance, result.state.suspended) == (outcome, Decimal(balance), suspended)
    assert result.events == events
    assert outcome in REASON_CODES or outcome in {"charged", "duplicate", "already_applied"}
    for event in result.events:
        assert decode_event(encode_event(event)) == event


def test_bill_moves_the_offset_past_a_copy() -> None:
    first = bill(state("1.00"), rated("0.05"), attempt_id="att-1", offset=3, occurred_at=AT)
    assert first.state.last_attempt_offset == 3
    again = bill(first.state, rated("0.05"), attempt_id="att-1", offset=4, occurred_at=AT, sighting="copy")
    assert (again.outcome, again.state.balance, again.state.last_attempt_offset) == ("duplicate", Decimal("0.95"), 4)


# (case id, state before, payment amount, offset, balance after, suspended after, events)
TOP_UP = [
    ("top-up of an active account", state("0.50"), "5.00", 1, "5.50", False, [bal("pay-1", "5.00", "5.50")]),
    ("top-up lifts a suspended account above 0: resumed", state("0.00", suspended=True), "5.00", 1, "5.00", False,
     [bal("pay-1", "5.00", "5.00"), status("pay-1", "active", "top-up")]),
    ("top-up that leaves it at 0 keeps it suspended", state("-1.00", suspended=True), "1.00", 1, "0.00", True,
     [bal("pay-1", "1.00", "0.00")]),
    ("redelivered payment is skipped", state("0.50", last_payment_offset=1), "5.00", 1, "0.50", False, []),
]


@pytest.mark.parametrize(("before", "amount", "offset", "balance", "suspended", "events"),
                         [c[1:] for c in TOP_UP], ids=[c[0] for c in TOP_UP])
def test_top_up(before: AccountState, amount: str, offset: int, balance: str, suspended: bool,
                events: list) -> None:
    after, emitted = top_up(before, payment(amount), offset=offset, occurred_at=AT)
    assert (after.balance, after.suspended) == (Decimal(balance), suspended)
    assert emitted == events
    for event in emitted:
        assert decode_event(encode_event(event)) == event


def test_payment_in_another_currency_is_not_applied() -> None:
    after, emitted = top_up(state("1.00"), payment("5", currency="EUR"), offset=1, occurred_at=AT)
    assert (after.balance, after.last_payment_offset) == (Decimal("1.00"), 1)
    [rejected] = emitted
    assert (type(rejected).__name__, rejected.reason_code, rejected.amount) == (
        "PaymentRejected", "currency_mismatch", Decimal("5"))
    assert "kept in USD" in rejected.message
    assert decode_event(encode_event(rejected)) == rejected


def test_a_payment_published_twice_is_credited_once() -> None:
    once, emitted = top_up(state("1.00"), payment("5"), offset=1, occurred_at=AT)
    twice, again = top_up(once, payment("5"), offset=2, occurred_at=AT, sighting="copy")
    assert (once.balance, len(emitted), twice.balance, again) == (Decimal("6.00"), 1, Decimal("6.00"), [])
    assert twice.last_payment_offset == 2


def test_top_up_passes_push_events() -> None:
    _, emitted = top_up(state("0", suspended=True), payment("1"), offset=1, occurred_at=AT, push_events=True)
    assert emitted[-1] == status("pay-1", "active", "top-up", True)


def test_open_account_starts_from_the_opening_balance() -> None:
    account = checklist(balance_model="prepaid").env.accounts[ALICE]
    assert open_account(account, "USD") == AccountState(Decimal("1.00"), "USD", False)


def test_suspend_then_resume_story() -> None:
    current = open_account(checklist().env.accounts[ALICE], "USD")
    outcomes = []
    for offset in range(25):
        result = bill(current, rated("0.05"), attempt_id=f"m{offset}", offset=offset, occurred_at=AT)
        current, outcomes = result.state, [*outcomes, result.outcome]
    assert outcomes == ["charged"] * 20 + ["service_suspended"] * 5
    assert current.balance == 0 and current.suspended
    current, events = top_up(current, payment("0.10"), offset=0, occurred_at=AT)
    assert not current.suspended and [type(e).__name__ for e in events] == ["BalanceChanged", "ServiceStatusChanged"]
    assert bill(current, rated("0.05"), attempt_id="m99", offset=99, occurred_at=AT).outcome == "charged"
