"""Re-rating one attempt: the live rules again, with what is known now about the past."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from imbill.domain.config import Rate
from imbill.domain.decide import decide_attempt
from imbill.domain.events import Charge, Rejection, correction_id_of
from imbill.domain.keys import account_key
from imbill.domain.rerate import RerateFilter, latest_outcomes, rerate, run_id_of
from imbill.schemas.codec import decode_event_as, encode_event
from tests.builders import ALICE, BOB, ENV, T0, attempt, checklist

NOW = T0 + timedelta(days=30)
RUN = "rr-test"


def live_outcome(config, sent=None):
    """The live processor's outcome of ``sent`` (ALICE to BOB by default) under ``config``."""
    sent = sent or attempt()
    decision = decide_attempt(None, sent, config.state, key=account_key(ENV, ALICE), offset=0,
                              now=sent.received_at)
    [outcome] = [e for e in decision.events if type(e) in (Charge, Rejection)]
    return outcome


def test_a_corrected_past_rate_gives_revision_two_with_the_difference() -> None:
    old = live_outcome(checklist(msgn_price="0.05"))
    corrected = checklist(msgn_price="0.05").define(Rate("B", "MSGN", Decimal("0.04"), T0), at=NOW)
    change = rerate(attempt(), old, corrected.state, run_id=RUN, rated_at=NOW)
    new = change.new
    assert (new.kind, new.revision, new.corrects, new.charge_id) == (
        "correction", 2, old.charge_id, correction_id_of(old.attempt_id, 2))
    assert (new.amount, new.difference, new.rerate_run) == (Decimal("0.04"), Decimal("-0.01"), RUN)
    assert new.rated_at == NOW and change.reason == "price 0.05 -> 0.04"
    assert decode_event_as(Charge, encode_event(new)) == new


def test_an_unchanged_attempt_gives_nothing() -> None:
    config = checklist(msgn_price="0.05")
    assert rerate(attempt(), live_outcome(config), config.state, run_id=RUN, rated_at=NOW) is None


def test_the_same_rate_defined_again_from_another_instant_moves_no_money() -> None:
    config = checklist(msgn_price="0.05")
    old = live_outcome(config)
    config.define(Rate("B", "MSGN", Decimal("0.05"), T0 + timedelta(minutes=30)), at=NOW)
    assert rerate(attempt(), old, config.state, run_id=RUN, rated_at=NOW) is None


def test_a_correction_of_a_correction_is_the_next_revision() -> None:
    config = checklist(msgn_price="0.05")
    first = live_outcome(config)
    config.define(Rate("B", "MSGN", Decimal("0.04"), T0), at=NOW)
    second = rerate(attempt(), first, config.state, run_id=RUN, rated_at=NOW).new
    config.define(Rate("B", "MSGN", Decimal("0.03"), T0), at=NOW)
    third = rerate(attempt(), second, config.state, run_id="rr-2", rated_at=NOW).new
    assert (third.revision, third.corrects, third.amount, third.difference) == (
        3, second.charge_id, Decimal("0.03"), Decimal("-0.01"))


def test_a_no_rate_rejection_becomes_a_charge_once_a_rate_is_added_for_the_past() -> None:
    config = checklist(msgn_price="0.05")
    config.remove("rate", "B|MSGN|" + T0.isoformat())
    old = live_outcome(config)
    assert type(old) is Rejection and old.reason_code == "no_rate"
    config.define(Rate("B", "MSGN", Decimal("0.02"), T0 - timedelta(days=1)), at=NOW)
    change = rerate(attempt(), old, config.state, run_id=RUN, rated_at=NOW)
    assert (change.new.revision, change.new.corrects, change.new.difference) == (2, old.rejection_id, Decimal("0.02"))
    assert change.reason == "now rated (was no_rate)"


def test_a_charge_now_without_a_rate_is_reversed_to_zero_once() -> None:
    config = checklist(msgn_price="0.05")
    old = live_outcome(config)
    config.remove("rate", "B|MSGN|" + T0.isoformat())
    reversal = rerate(attempt(), old, config.state, run_id=RUN, rated_at=NOW).new
    assert (reversal.billing_units, reversal.amount, reversal.difference) == (0, Decimal(0), Decimal("-0.05"))
    assert rerate(attempt(), reversal, config.state, run_id=RUN, rated_at=NOW) is None


def test_billing_refusals_and_accounts_gone_today_are_left_as_they_are() -> None:
    config = checklist(msgn_price="0.05")
    old = live_outcome(config)
    funds = Rejection(rejection_id="rej-att-1", attempt_id="att-1", environment=ENV, account=ALICE,
                      attempted_at=T0, rejected_at=T0, reason_code="insufficient_funds", message="", to_user=BOB,
                      to_domain="")
    assert rerate(attempt(), funds, config.state, run_id=RUN, rated_at=NOW) is None
    config.remove("account", ALICE)
    assert rerate(attempt(), old, config.state, run_id=RUN, rated_at=NOW) is None


def test_the_latest_outcome_is_the_highest_revision_and_a_charge_beats_a_rejection() -> None:
    config = checklist(msgn_price="0.05")
    config.remove("rate", "B|MSGN|" + T0.isoformat())
    rejected = live_outcome(config)
    config.define(Rate("B", "MSGN", Decimal("0.02"), T0), at=NOW)
    second = rerate(attempt(), rejected, config.state, run_id=RUN, rated_at=NOW).new
    config.define(Rate("B", "MSGN", Decimal("0.03"), T0), at=NOW)
    third = rerate(attempt(), second, config.state, run_id=RUN, rated_at=NOW).new
    assert latest_outcomes([third, rejected, second, rejected]) == {"att-1": third}
    assert latest_outcomes([rejected]) == {"att-1": rejected}
    assert latest_outcomes([third], wanted={"other": None}) == {}


def test_a_filter_takes_the_period_and_selects_by_either_outcome() -> None:
    config = checklist(msgn_price="0.05")
    old = live_outcome(config)
    wanted = RerateFilter(start=T0, end=T0 + timedelta(days=1), environment=ENV, account=ALICE, rate_code="MSGN")
    assert wanted.takes(attempt()) and not wanted.takes(attempt(received_at=T0 + timedelta(days=2)))
    assert not wanted.takes(attempt(environment="other"))
    assert wanted.selects(old, None) and not RerateFilter(T0, NOW, customer="Other").selects(old)
    assert RerateFilter.from_json(wanted.as_json()) == wanted


def test_a_run_id_is_stable_for_the_same_start_filter_and_config() -> None:
    period = RerateFilter(T0, NOW)
    assert run_id_of(NOW, period, NOW) == run_id_of(NOW, period, NOW) != run_id_of(NOW, period, T0)
    assert run_id_of(NOW, period, NOW).startswith("rr-")
