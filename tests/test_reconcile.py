"""imbill reconcile: the pure comparison with hand-made events (the command against a live
worker on the local broker is in tests/test_reconcile_broker.py)."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from imbill import presentation
from imbill.cli import cli
from imbill.domain.events import BalanceChanged, Charge, Payment, PaymentRejected, Rejection, correction_id_of
from imbill.domain.reconcile import (AttemptSeen, Difference, Topics, charge_total, difference_total,
                                     latest_revisions, reconcile)
from imbill.schemas.codec import event_of
from tests.conftest import free_port as conftest_free_port
from tests.samples import SAMPLES

CHARGE: Charge = event_of("Charge", SAMPLES["Charge"])
REJECTION: Rejection = event_of("Rejection", SAMPLES["Rejection"])
PAYMENT: Payment = event_of("Payment", SAMPLES["Payment"])
REFUSED: PaymentRejected = event_of("PaymentRejected", SAMPLES["PaymentRejected"])
BALANCE: BalanceChanged = event_of("BalanceChanged", SAMPLES["BalanceChanged"])
OPENING = {"1001": Decimal("10.00"), "1002": Decimal("0")}


@pytest.fixture
def free_port() -> int:
    return conftest_free_port()


def charge(attempt_id: str, amount: str, account: str = "1001", **fields) -> Charge:
    return replace(CHARGE, charge_id=f"chg-{attempt_id}", attempt_id=attempt_id, account=account,
                   amount=Decimal(amount), **fields)


def balance(cause_id: str, value: str, account: str = "1001", cause: str = "charge") -> BalanceChanged:
    return replace(BALANCE, event_id=f"bal-{cause_id}", cause=cause, cause_id=cause_id, account=account,
                   balance=Decimal(value))


def rejection(attempt_id: str, account: str = "1001") -> Rejection:
    return replace(REJECTION, rejection_id=f"rej-{attempt_id}", attempt_id=attempt_id, account=account)


def attempts(*ids: str, account: str = "1001") -> list[AttemptSeen]:
    return [AttemptSeen(attempt_id, account) for attempt_id in ids]


def clean_topics(**changes) -> Topics:
    """a1 and a2 charged 0.15 each, a3 rejected, a 5.00 top-up between them."""
    topics = Topics(attempts=attempts("a1", "a2", "a3"), charges=[charge("a1", "0.15"), charge("a2", "0.15")],
                    rejections=[rejection("a3")], payments=[PAYMENT],
                    balances=[balance("chg-a1", "9.85"), balance("pay-1", "14.85", cause="payment"),
                              balance("chg-a2", "14.70")])
    return replace(topics, **changes)


def lines(result) -> list[tuple[str, str, str, str]]:
    return [(d.account, d.check, d.expected, d.found) for d in result.differences]


def test_clean_topics_reconcile() -> None:
    result = reconcile(OPENING, clean_topics(), {"1001": Decimal("14.700000")})
    assert (result.clean, result.accounts, result.attempts) == (True, 2, 3)


def test_an_attempt_without_outcome_is_reported() -> None:
    result = reconcile(OPENING, clean_topics(attempts=attempts("a1", "a2", "a3", "a4")))
    assert lines(result) == [("1001", "outcome", "1 per attempt", "none for 1")]
    assert result.differences[0].detail == "a4"


def test_an_attempt_with_two_outcomes_is_reported() -> None:
    result = reconcile(OPENING, clean_topics(rejections=[rejection("a3"), rejection("a2")]))
    assert lines(result) == [("1001", "outcome", "1 per attempt", "2 or more for 1")]
    assert result.differences[0].detail == "a2 (chg-a2, rej-a2)"


def test_a_balance_off_by_a_cent_is_reported_with_its_terms() -> None:
    topics = clean_topics(balances=[balance("chg-a1", "9.85"), balance("pay-1", "14.85", cause="payment"),
                                    balance("chg-a2", "14.69")])
    [difference] = reconcile(OPENING, topics).differences
    assert (difference.check, difference.expected, difference.found) == ("balance", "14.70", "14.69")
    assert difference.detail == "processor; opening 10.00 + payments 5.00 - charges 0.30"


def test_the_projection_is_compared_when_given() -> None:
    result = reconcile(OPENING, clean_topics(), {"1001": Decimal("14.85")})
    assert lines(result) == [("1001", "projection", "14.70", "14.85")]
    assert reconcile(OPENING, clean_topics(), None).clean  # no projection: not compared


def test_copies_of_an_attempt_and_outcomes_sent_again_count_once() -> None:
    """A retransmission published twice is one attempt; an outbox re-sent after a crash puts
    the same charge on the topic twice: one outcome."""
    topics = clean_topics(attempts=attempts("a1", "a2", "a1", "a3", "a1"),
                          charges=[charge("a1", "0.15"), charge("a2", "0.15"), charge("a1", "0.15")])
    result = reconcile(OPENING, topics)
    assert (result.clean, result.attempts) == (True, 3)


def test_a_charge_id_with_two_amounts_is_reported() -> None:
    topics = clean_topics(charges=[charge("a1", "0.15"), charge("a2", "0.15"), charge("a1", "0.25")])
    result = reconcile(OPENING, topics)
    assert ("1001", "charge id", "1 amount per charge id", "2 or more for 1") in lines(result)
    assert ("1001", "balance", "14.60", "14.70") in lines(result)  # the latest record counts


def correction(attempt_id: str, revision: int, amount: str, previous: str, *, corrects: str | None = None,
               account: str = "1001", units: int = 1) -> Charge:
    """Revision ``revision`` of the attempt's outcome: ``amount`` instead of ``previous``."""
    return replace(charge(attempt_id, amount, account), charge_id=correction_id_of(attempt_id, revision),
                   kind="correction", revision=revision, billing_units=units,
                   corrects=corrects or (f"chg-{attempt_id}" if revision == 2
                                         else correction_id_of(attempt_id, revision - 1)),
                   difference=Decimal(amount) - Decimal(previous), rerate_run="run-1")


def test_a_correction_replaces_the_amount_of_the_charge_it_supersedes() -> None:
    fix = correction("a2", 2, "0.10", "0.15")
    assert charge_total([charge("a1", "0.15"), charge("a2", "0.15"), fix]) == Decimal("0.25")
    topics = clean_topics(charges=[charge("a1", "0.15"), charge("a2", "0.15"), fix],
                          balances=[balance("chg-a1", "9.85"), balance("pay-1", "14.85", cause="payment"),
                                    balance("chg-a2", "14.70"), balance(fix.charge_id, "14.75", cause="correction")])
    assert reconcile(OPENING, topics).clean  # a correction is no second outcome


CHAIN = [charge("a1", "0.15"), charge("a2", "0.15"), correction("a2", 2, "0.10", "0.15"),
         correction("a2", 3, "0.20", "0.10"), correction("a3", 2, "0.05", "0", corrects="rej-a3"),
         correction("a1", 2, "0", "0.15", units=0)]
"""a2 corrected twice (0.15, 0.10, 0.20), a3's rejection charged after all (0.05), a1 reversed."""
CHAIN_BALANCES = [balance("chg-a1", "9.85"), balance("pay-1", "14.85", cause="payment"), balance("chg-a2", "14.70"),
                  balance("chg-a2#2", "14.75", cause="correction"), balance("chg-a2#3", "14.65", cause="correction"),
                  balance("chg-a3#2", "14.60", cause="correction"), balance("chg-a1#2", "14.75", cause="correction")]


def test_chains_of_revisions_a_rejection_charged_and_a_reversal_reconcile() -> None:
    """The expected balance takes the latest revision of each attempt; adding every
    difference gives the same; the BalanceChanged of the corrections move the balance."""
    assert charge_total(CHAIN) == difference_total(CHAIN) == Decimal("0.25")  # 0 + 0.20 + 0.05
    assert sorted(c.charge_id for c in latest_revisions(CHAIN)) == ["chg-a1#2", "chg-a2#3", "chg-a3#2"]
    topics = clean_topics(charges=CHAIN, balances=CHAIN_BALANCES)
    result = reconcile(OPENING, topics, {"1001": Decimal("14.75")})
    assert (result.clean, result.attempts) == (True, 3), lines(result)
    resent = clean_topics(charges=[*CHAIN, CHAIN[3], CHAIN[2]], balances=CHAIN_BALANCES)  # an outbox re-sent
    assert reconcile(OPENING, resent).clean


def test_a_late_revision_still_leaves_the_highest_one_counted() -> None:
    late = [CHAIN[0], CHAIN[1], CHAIN[3], CHAIN[2]]  # revision 3 of a2 before revision 2
    assert charge_total(late) == difference_total(late) == Decimal("0.35")


def test_a_correction_balance_not_applied_is_reported() -> None:
    topics = clean_topics(charges=CHAIN, balances=CHAIN_BALANCES[:-1])  # the reversal's BalanceChanged missing
    assert lines(reconcile(OPENING, topics)) == [("1001", "balance", "14.75", "14.60")]


def test_a_correction_that_does_not_chain_is_reported() -> None:
    wrong_difference = replace(CHAIN[3], difference=Decimal("0.05"))
    orphan = correction("a2", 4, "0.30", "0.20", corrects="chg-a2#2")  # not the revision before
    unknown = correction("a9", 2, "0.05", "0", corrects="rej-a3")  # another attempt's rejection
    topics = clean_topics(charges=[*CHAIN[:3], wrong_difference, *CHAIN[4:], orphan, unknown],
                          attempts=attempts("a1", "a2", "a3", "a9"),
                          rejections=[rejection("a3"), rejection("a9", account="1002")])
    found = [(d.check, d.expected, d.found, d.detail) for d in reconcile(OPENING, topics).differences
             if d.check == "correction"]
    assert found == [("correction", "corrects its attempt's revision before", "none for 2", "chg-a2#4, chg-a9#2"),
                     ("correction", "difference = amount - superseded amount", "another for 1", "chg-a2#3")]
    assert difference_total(topics.charges) != charge_total(topics.charges)


@settings(max_examples=50, deadline=None)
@given(chains=st.lists(st.tuples(st.booleans(), st.lists(st.decimals(min_value=0, max_value=1000, places=2),
                                                         min_size=1, max_size=5)), min_size=1, max_size=6))
def test_the_latest_amounts_and_the_differences_always_agree(chains) -> None:
    """Any chains of revisions, starting with a charge or a rejection: both totals agree,
    and an account whose balance moved by them reconciles."""
    charges, rejections, ids = [], [], []
    for n, (rejected_first, amounts) in enumerate(chains):
        attempt_id = f"p{n}"
        ids.append(attempt_id)
        previous, start = Decimal(0), 2 if rejected_first else 1
        if rejected_first:
            rejections.append(rejection(attempt_id))
        for revision, amount in enumerate(amounts, start=start):
            if revision == 1:
                charges.append(charge(attempt_id, str(amount)))
            else:
                charges.append(correction(attempt_id, revision, str(amount), str(previous),
                                          corrects=f"rej-{attempt_id}" if revision == 2 and rejected_first else None))
            previous = amount
    total = sum(amounts[-1] for _, amounts in chains)
    assert charge_total(charges) == difference_total(charges) == total
    topics = Topics(attempts=attempts(*ids), charges=charges, rejections=rejections,
                    balances=[balance("last", str(OPENING["1001"] - total), cause="correction")])
    assert reconcile(OPENING, topics).clean


def test_a_refused_payment_is_not_counted_and_a_payment_twice_counts_once() -> None:
    refused = replace(PAYMENT, payment_id="pay-2", amount=Decimal("3"))
    topics = clean_topics(payments=[PAYMENT, PAYMENT, refused], payment_rejections=[REFUSED])
    assert reconcile(OPENING, topics).clean


def test_an_extra_balance_change_and_an_unknown_account_are_reported() -> None:
    topics = clean_topics(balances=[*clean_topics().balances, balance("chg-x", "1.00")],
                          charges=[*clean_topics().charges, charge("m1", "0.05", account="ghost")])
    result = reconcile(OPENING, topics)
    assert lines(result) == [("1001", "balance", "14.70", "1.00"),
                             ("ghost", "balance", "an account of the config", "no such account")]


def test_one_account_only() -> None:
    topics = clean_topics(attempts=[*attempts("a1", "a2", "a3"), AttemptSeen("b9", "1002")])
    everyone = reconcile(OPENING, topics)
    assert lines(everyone) == [("1002", "outcome", "1 per attempt", "none for 1")]
    alone = reconcile(OPENING, topics, account="1001")
    assert (alone.clean, alone.accounts, alone.attempts) == (True, 1, 3)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_differences_render_one_line_each(fmt: str) -> None:
    listing = presentation.reconcile_listing([Difference("1001", "balance", "14.70", "14.69", "processor")], "default")
    out = presentation.render(listing, fmt)
    assert "1001" in out and "14.69" in out
    if fmt == "csv":
        assert out.splitlines() == ["account,check,expected,found,detail", "1001,balance,14.70,14.69,processor"]
    assert presentation.render(presentation.reconcile_listing([], "default"), "csv") == \
        "account,check,expected,found,detail\n"


def test_reconcile_without_a_broker_is_one_line_and_exit_2(free_port) -> None:
    result = CliRunner().invoke(cli, ["--bootstrap-servers", f"127.0.0.1:{free_port}", "reconcile"],
                                terminal_width=200)
    assert result.exit_code == 2
    assert result.output.startswith(f"error: no Kafka broker answers at 127.0.0.1:{free_port}")
    assert "Traceback" not in result.output


def test_two_first_charges_of_one_attempt_both_count_and_are_reported() -> None:
    """A double charge is no chain: both amounts count (each was charged), and the attempt
    has two outcomes."""
    twice = replace(charge("a2", "0.15"), charge_id="chg-a2-again")
    topics = clean_topics(charges=[*clean_topics().charges, twice])
    assert charge_total(topics.charges) == difference_total(topics.charges) == Decimal("0.45")
    assert lines(reconcile(OPENING, topics)) == [("1001", "balance", "14.55", "14.70"),
                                                 ("1001", "outcome", "1 per attempt", "2 or more for 1")]
