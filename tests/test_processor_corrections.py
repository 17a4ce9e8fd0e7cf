"""Re-rating corrections in the processor: applied through the account's single writer.

The rule (:func:`imbill.domain.decide.decide_correction`, :func:`imbill.domain.balance.correct`)
without I/O; then the batch (:func:`imbill.streams.batch.correct_charges`) and the commit
protocol on the in-memory log of tests/test_commit_protocol.py, crashes included; then the
changelog records written before corrections existed. The live worker on the local broker
is in tests/test_processor_corrections_broker.py.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest

from imbill.domain.balance import AccountState, correct
from imbill.domain.decide import CORRECTION_REASON_CODES, CORRECTION_TEXT_LIMIT, decide_correction
from imbill.domain.dedup import WINDOW, Sighting, millis
from imbill.domain.events import BalanceChanged, Charge, ServiceStatusChanged, correction_id_of
from imbill.domain.keys import account_key
from imbill.domain.money import BALANCE_LIMIT
from imbill.domain.rating import charge_of, rate_attempt
from imbill.schemas.codec import decode, decode_event, encode_event
from imbill.streams.batch import bill_attempts, correct_charges
from imbill.streams.changelog import Entry, Flushed, Seen, decode_record, encode_record, flushed_key, seen_key
from tests.builders import ALICE, BOB, ENV, attempt, checklist, payment
from tests.test_commit_protocol import (CONFIG, NOW, P, TOPICS, Crash, MemoryLog, charge_ids, recover, run, sent,
                                        started)
from tests.test_processor import FROM_START, LONG, key_of, records

RATED_AT = NOW - timedelta(minutes=5)  # the re-rating run's clock
POSTPAID = checklist(balance_model="postpaid").state


def live_charge(attempt_id: str = "a1", *, sender: str = ALICE, **fields) -> Charge:
    """The live Charge of a 150-character message (3 units of 0.05: 0.15)."""
    message = attempt(attempt_id=attempt_id, from_user=sender, body_chars=LONG, **fields)
    return charge_of(message, rate_attempt(message, CONFIG, rated_at=NOW), NOW)


def correction(amount: str, *, was: str = "0.15", attempt_id: str = "a1", revision: int = 2,
               corrects: str | None = None, **fields) -> Charge:
    """Revision ``revision`` of the outcome of ``attempt_id``: ``amount`` instead of ``was``."""
    base = live_charge(attempt_id, **{k: fields.pop(k) for k in ("sender", "direction", "to_user") if k in fields})
    superseded = corrects or (f"chg-{attempt_id}" if revision == 2 else correction_id_of(attempt_id, revision - 1))
    values = dict(charge_id=correction_id_of(attempt_id, revision), kind="correction", corrects=superseded,
                  revision=revision, amount=Decimal(amount), difference=Decimal(amount) - Decimal(was),
                  rerate_run="run-1", rated_at=RATED_AT)
    values.update(fields)
    return replace(base, **values)


def state(balance: str, *, suspended: bool = False, currency: str = "USD") -> AccountState:
    return AccountState(Decimal(balance), currency, suspended)


def bal(fix: Charge, balance: str) -> BalanceChanged:
    return BalanceChanged(event_id=f"bal-{fix.charge_id}", environment=ENV, account=fix.account, cause="correction",
                          cause_id=fix.charge_id, delta=-fix.difference, balance=Decimal(balance), currency="USD",
                          occurred_at=NOW)


def status(fix: Charge, value: str, reason: str) -> ServiceStatusChanged:
    return ServiceStatusChanged(event_id=f"st-{fix.charge_id}-{value}", environment=ENV, account=fix.account,
                                service="messaging", status=value, reason=reason, cause_id=fix.charge_id,
                                occurred_at=NOW, push_events=False)


def decided(before: AccountState | None, fix: Charge, *, config=CONFIG, key: bytes | None = None, offset: int = 5,
            sighting: Sighting = Sighting()):
    return decide_correction(before, fix, config, key=key or account_key(ENV, fix.account), offset=offset, now=NOW,
                             sighting=sighting)


# -- the rule ----------------------------------------------------------------------------------------

CHEAPER, DEARER, SAME = correction("0.10"), correction("0.65"), correction("0.15")
FROM_REJECTION = correction("0.15", was="0", attempt_id="a2", corrects="rej-a2")
DEARER_A3 = correction("0.65", attempt_id="a3")
REVERSAL = correction("0", revision=3)

# (case id, config, state before, correction, balance after, suspended after, events after the Charge)
APPLIED = [
    ("a refund", CONFIG, state("0.85"), CHEAPER, "0.90", False, [bal(CHEAPER, "0.90")]),
    ("a dearer price is taken whatever the wallet holds: never refused for funds", CONFIG, state("0.10"), DEARER,
     "-0.40", True, [bal(DEARER, "-0.40"), status(DEARER, "suspended", "wallet empty")]),
    ("a suspended wallet is not suspended again", CONFIG, state("0.00", suspended=True), DEARER, "-0.50", True,
     [bal(DEARER, "-0.50")]),
    ("a refund lifting a suspended wallet above 0 resumes it", CONFIG, state("0.00", suspended=True), CHEAPER,
     "0.05", False, [bal(CHEAPER, "0.05"), status(CHEAPER, "active", "correction")]),
    ("a refund that leaves it at 0 keeps it suspended", CONFIG, state("-0.05", suspended=True), CHEAPER, "0.00",
     True, [bal(CHEAPER, "0.00")]),
    ("a postpaid account goes past its credit limit, never suspended", POSTPAID, state("-4.90"), DEARER, "-5.40",
     False, [bal(DEARER, "-5.40")]),
    ("a rejection that becomes a charge", CONFIG, state("1.00"), FROM_REJECTION, "0.85", False,
     [bal(FROM_REJECTION, "0.85")]),
    ("a reversal of revision 2: the whole amount back", CONFIG, state("0.85"), replace(REVERSAL, difference=Decimal(
        "-0.15")), "1.00", False, [bal(replace(REVERSAL, difference=Decimal("-0.15")), "1.00")]),
    ("the same price: the Charge, no balance change", CONFIG, state("0.85"), SAME, "0.85", False, []),
    ("the first event of the account opens it", CONFIG, None, CHEAPER, "1.05", False, [bal(CHEAPER, "1.05")]),
]


@pytest.mark.parametrize(("config", "before", "fix", "balance", "suspended", "events"), [c[1:] for c in APPLIED],
                         ids=[c[0] for c in APPLIED])
def test_a_correction_is_emitted_as_it_is_and_moves_the_balance_by_minus_its_difference(
        config, before, fix, balance, suspended, events) -> None:
    decision = decided(before, fix, config=config)
    assert decision.events == (fix, *events) and decision.remember and decision.refused is None
    assert (decision.state.balance, decision.state.suspended) == (Decimal(balance), suspended)
    for event in decision.events:
        assert decode_event(encode_event(event)) == event


def test_balance_correct_carries_push_events_and_changes_nothing_for_a_zero_difference() -> None:
    after, events = correct(state("0", suspended=True), CHEAPER, prepaid=True, occurred_at=NOW, push_events=True)
    assert events[-1] == replace(status(CHEAPER, "active", "correction"), push_events=True) and not after.suspended
    assert correct(state("0.85"), SAME, prepaid=True, occurred_at=NOW) == (state("0.85"), [])


def test_an_incoming_correction_is_billed_to_nobody_and_only_emitted() -> None:
    free = correction("0", was="0", sender="15550001", direction="incoming", to_user=BOB)
    assert (free.account, free.direction) == (BOB, "incoming")
    decision = decided(None, replace(free, difference=Decimal("0.20"), amount=Decimal("0.20")))
    assert decision.state is None and len(decision.events) == 1 and decision.remember


def test_a_copy_changes_nothing_and_the_same_offset_decided_again_is_no_copy() -> None:
    copy = decided(state("0.85"), CHEAPER, offset=9, sighting=Sighting(5, 0, millis(RATED_AT)))
    assert (copy.events, copy.remember, copy.refused, copy.state) == ((), False, None, state("0.85"))
    replayed = decided(state("0.85"), CHEAPER, offset=5, sighting=Sighting(5, 0, millis(RATED_AT)))
    assert replayed.events[0] == CHEAPER and replayed.state.balance == Decimal("0.90")


def _hostile(**fields) -> Charge:
    return replace(CHEAPER, **fields)


# (case id, correction, record key, state before, reason code)
REFUSED = [
    ("a live charge on the corrections topic", live_charge(), None, state("0.85"), "not_a_correction"),
    ("a direction that is neither", _hostile(direction="sideways"), None, state("0.85"), "invalid_direction"),
    ("revision 1", _hostile(revision=1, charge_id=correction_id_of("a1", 1)), None, state("0.85"),
     "invalid_revision"),
    ("an id that is not the attempt's revision", _hostile(charge_id="chg-a1#7"), None, state("0.85"),
     "inconsistent_id"),
    ("correcting another attempt's charge", _hostile(corrects="chg-a2"), None, state("0.85"), "inconsistent_id"),
    ("revision 3 correcting the first charge", correction("0.10", revision=3, corrects="chg-a1"), None,
     state("0.85"), "inconsistent_id"),
    ("keyed to another account", CHEAPER, account_key(ENV, BOB), state("0.85"), "key_mismatch"),
    ("no difference", _hostile(difference=None), None, state("0.85"), "invalid_amount"),
    ("a difference that is not a number", _hostile(difference=Decimal("NaN")), None, state("0.85"),
     "invalid_amount"),
    ("a difference past decimal(24, 6)", _hostile(difference=Decimal("-1E18")), None, state("0.85"),
     "invalid_amount"),
    ("a difference finer than decimal(24, 6)", _hostile(difference=Decimal("-0.0000001")), None, state("0.85"),
     "invalid_amount"),
    ("a negative amount", _hostile(amount=Decimal("-1"), difference=Decimal("-1.15")), None, state("0.85"),
     "invalid_amount"),
    ("a difference above the amount: the old charge would have been negative",
     _hostile(difference=Decimal("0.20")), None, state("0.85"), "invalid_amount"),
    ("an unknown account", _hostile(account="nobody"), account_key(ENV, "nobody"), None, "unknown_account"),
    ("another currency than the balance", CHEAPER, None, state("0.85", currency="EUR"), "currency_mismatch"),
    ("a refund past the balance limit", _hostile(amount=Decimal("0"), difference=Decimal("-2")), None,
     state(str(BALANCE_LIMIT - 1)), "balance_limit"),
    ("texts past the limit", _hostile(to_user="9" * (CORRECTION_TEXT_LIMIT + 1)), None, state("0.85"),
     "oversized_correction"),
]


@pytest.mark.parametrize(("fix", "key", "before", "code"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_correction_that_cannot_be_real_is_not_applied_and_emits_nothing(fix, key, before, code) -> None:
    decision = decided(before, fix, key=key)
    assert (decision.events, decision.remember, decision.state) == ((), False, before)
    assert decision.refused[0] == code and code in CORRECTION_REASON_CODES


def test_a_zero_difference_in_another_currency_moves_nothing_and_is_emitted() -> None:
    decision = decided(state("0.85", currency="EUR"), SAME)
    assert decision.events == (SAME,) and decision.state == state("0.85", currency="EUR")


def test_a_correction_older_than_the_window_is_refused() -> None:
    newest = millis(RATED_AT + WINDOW) + 1
    decision = decided(state("0.85"), CHEAPER, sighting=Sighting(None, 0, newest))
    assert (decision.events, decision.refused[0]) == ((), "outside_dedup_window")


# -- the batch and the commit protocol --------------------------------------------------------------

def on_topic(*fixes: tuple[int, Charge], key: bytes | None = None) -> list:
    """(offset, correction) -> records of the corrections topic on ALICE's partition."""
    return [(P, offset, key or key_of(fix.account), encode_event(fix)) for offset, fix in fixes]


def balances(log: MemoryLog) -> list[tuple[str, Decimal]]:
    return [(r["cause_id"], r["balance"]) for r in (decode(v)[1] for _, v in log.topics[TOPICS.balances])]


def test_the_charge_is_sent_byte_for_byte_with_its_balance_change_keyed_by_the_account() -> None:
    batch = correct_charges({}, CONFIG, on_topic((0, CHEAPER)), now=NOW, expected=FROM_START)
    entry = batch.entries[key_of(ALICE)]
    (kind, key, value), (balance_kind, _, balance) = entry.outbox
    assert (kind, key, value) == ("charges", key_of(ALICE), on_topic((0, CHEAPER))[0][3])
    assert (balance_kind, decode(balance)[1]["cause"], decode(balance)[1]["delta"]) == (
        "balances", "correction", Decimal("0.05"))
    assert (entry.corrections_decided, entry.source, entry.state.balance) == (0, "c", Decimal("1.05"))
    assert [line[0] for line in entry.remembered] == [CHEAPER.charge_id]


def test_records_not_applied_are_logged_with_where_they_are_and_why(caplog) -> None:
    hostile = [*on_topic((0, _hostile(difference=Decimal("0.20")))), *on_topic((1, CHEAPER), key=key_of(BOB))]
    with caplog.at_level(logging.WARNING):
        batch = correct_charges({}, CONFIG, [*hostile, (P, 2, key_of(ALICE), b"garbage")], now=NOW,
                                expected=FROM_START, topic=TOPICS.corrections)
    assert all(entry.outbox == [] for entry in batch.entries.values()) and batch.next_offsets == {P: 3}
    lines = [r.getMessage() for r in caplog.records if "not applied" in r.getMessage()]
    assert lines[0].startswith(f"correction {TOPICS.corrections}[{P}]@0 not applied: invalid_amount: ")
    assert lines[1].startswith(f"correction {TOPICS.corrections}[{P}]@1 not applied: key_mismatch: ")
    assert lines[2].startswith(f"correction {TOPICS.corrections}[{P}]@2 not applied: undecodable: ")


def test_attempts_and_corrections_keep_each_others_decided_offsets() -> None:
    fixed = correct_charges({}, CONFIG, on_topic((4, CHEAPER)), now=NOW, expected={P: 4}).entries
    billed = bill_attempts(fixed, CONFIG, records((0, attempt(attempt_id="a2", body_chars=LONG))), now=NOW,
                           expected=FROM_START).entries[key_of(ALICE)]
    assert (billed.corrections_decided, billed.attempts_decided, billed.state.balance) == (4, 0, Decimal("0.90"))
    again = correct_charges({key_of(ALICE): billed}, CONFIG, on_topic((4, CHEAPER)), now=NOW, expected={P: 4})
    assert again.entries == {}  # decided already (an entry written, its marker not): skipped


def test_a_batch_of_corrections_writes_entries_then_outputs_then_its_own_marker() -> None:
    log = MemoryLog()
    log.keep(P, flushed_key(P), Flushed(P, 6, 2))
    run(started(log).corrections(on_topic((0, CHEAPER), (1, FROM_REJECTION))))
    assert log.ops == ["changelog", "changelog", "ack", "send", "send", "send", "send", "ack", "changelog",
                       "enqueued"]
    assert [key for _, key, _ in log.changelog] == [key_of(ALICE), seen_key("c", key_of(ALICE), 0), flushed_key(P)]
    assert log.records[flushed_key(P)] == Flushed(P, 6, 2, 1)
    assert charge_ids(log) == [CHEAPER.charge_id, FROM_REJECTION.charge_id]
    assert balances(log) == [(CHEAPER.charge_id, Decimal("1.05")), (FROM_REJECTION.charge_id, Decimal("0.90"))]


def test_a_correction_sent_again_is_applied_once_also_after_a_restart(caplog) -> None:
    log = MemoryLog()
    worker = started(log)
    run(worker.corrections(on_topic((0, CHEAPER), (1, CHEAPER))))  # a resumed run sends it again at once
    other = _hostile(amount=Decimal("0.01"), difference=Decimal("-0.14"))
    with caplog.at_level(logging.WARNING):
        run(worker.corrections(on_topic((2, other))))  # the same id, another content: the copy it claims to be
    assert "claims id 'chg-a1#2' of the one at offset 0 but its content differs" in caplog.text
    again = recover(log)
    run(started(again).corrections(on_topic((3, CHEAPER))))  # and again, to the next owner
    assert charge_ids(again) == [CHEAPER.charge_id]
    assert balances(again) == [(CHEAPER.charge_id, Decimal("1.05"))]
    assert again.records[flushed_key(P)].corrections == 3


@pytest.mark.parametrize(("crash_at", "copies"), [(("send", 0), 1), (("changelog", 2), 2)],
                         ids=["before the outputs are acknowledged", "between the outputs and the marker"])
def test_a_crash_after_the_entry_is_written_resends_the_same_bytes_and_applies_it_once(crash_at, copies) -> None:
    first = MemoryLog(crash_at=crash_at)
    with pytest.raises(Crash):
        run(started(first).corrections(on_topic((0, CHEAPER), (1, DEARER_A3))))
    entry = decode_record(first.changelog[0][2])
    assert (entry.source, entry.corrections_decided, entry.state.balance) == ("c", 1, Decimal("0.55"))
    second = recover(first)
    taker = started(second)
    # the next owner sends the outbox again: the same bytes, so the same ids and balances
    assert [v for _, v in second.topics[TOPICS.charges]] == [encode_event(CHEAPER), encode_event(DEARER_A3)] * copies
    assert balances(second) == [(CHEAPER.charge_id, Decimal("1.05")), (DEARER_A3.charge_id, Decimal("0.55"))] * copies
    before = sent(second)
    run(taker.corrections(on_topic((0, CHEAPER), (1, DEARER_A3), (2, CHEAPER))))  # delivered again, and a copy
    assert sent(second) == before and second.records[flushed_key(P)] == Flushed(P, -1, -1, 2)
    third = recover(second)
    started(third)  # a third owner: the marker covers the outbox now
    assert sent(third) == before


def test_corrections_and_live_charges_of_one_account_go_through_one_balance() -> None:
    log = MemoryLog()
    worker = started(log)
    run(worker.attempts(records(*[(n, attempt(attempt_id=f"a{n}", body_chars=LONG)) for n in range(3)])))
    run(worker.corrections(on_topic((0, CHEAPER))))  # a1 re-rated 0.10
    run(worker.payments([(P, 0, key_of(ALICE), encode_event(payment("1.00")))]))
    run(worker.attempts(records((3, attempt(attempt_id="a3", body_chars=LONG)))))
    assert balances(log)[-1] == ("chg-a3", Decimal("1.00") + 1 - 4 * Decimal("0.15") + Decimal("0.05"))
    assert log.records[flushed_key(P)] == Flushed(P, 3, 0, 0)


def test_a_correction_that_empties_a_prepaid_wallet_suspends_it_for_the_next_attempt() -> None:
    log = MemoryLog()
    worker = started(log)
    run(worker.corrections(on_topic((0, correction("1.50")))))  # 1.00 - 1.35
    run(worker.attempts(records((0, attempt(attempt_id="a9", body_chars=LONG)))))
    statuses = [decode(v)[1]["status"] for _, v in log.topics[TOPICS.service_status]]
    rejected = [decode(v)[1]["reason_code"] for _, v in log.topics[TOPICS.rejections]]
    assert (statuses, rejected, balances(log)) == (["suspended"], ["service_suspended"],
                                                   [(correction_id_of("a1", 2), Decimal("-0.35"))])


def test_a_marker_written_before_corrections_starts_them_at_the_topics_earliest_offset() -> None:
    class Trimmed(MemoryLog):
        async def earliest_offsets(self, partitions):
            return {tp: 7 if tp[0] == TOPICS.corrections else 0 for tp in partitions}

    log = Trimmed()
    log.keep(P, flushed_key(P), decode_record(b'{"flushed": [%d, 6, 1]}' % P))
    worker = started(log)
    assert log.records[flushed_key(P)] == Flushed(P, 6, 1, 6)
    run(worker.corrections(on_topic((7, CHEAPER))))
    assert charge_ids(log) == [CHEAPER.charge_id] and log.seeks == []


# -- changelog records written before corrections ------------------------------------------------------

OLD_ENTRY = (b'{"state":["0.85","USD",false,3,1,[],[]],"partition":1,"attempts":3,"payments":1,"source":["a",3],'
             b'"outbox":[["charges","YWNtZS8x","wwF4"]],"ids":[["a3",3,1700000000000,42]]}')
OLD_MARKER = b'{"flushed": [2, 6, 1]}'


def test_records_written_before_corrections_still_decode_and_are_written_the_same() -> None:
    """The records of the worker before corrections (bytes it wrote): they read as having
    decided no correction, and an entry or marker without one is written as before."""
    entry = decode_record(OLD_ENTRY)
    assert entry == Entry(AccountState(Decimal("0.85"), "USD", False, 3, 1), 1, 3, 1,
                          [("charges", b"acme/1", b"\xc3\x01x")], "a", 3, [("a3", 3, 1_700_000_000_000, 42)], -1)
    assert decode_record(OLD_MARKER) == Flushed(2, 6, 1, -1)
    assert (encode_record(entry), encode_record(decode_record(OLD_MARKER))) == (OLD_ENTRY, OLD_MARKER)


@pytest.mark.parametrize("record", [
    Entry(AccountState(Decimal("-0.35"), "USD", True), 3, 41, 7, [("charges", b"acme/1", b"v")], "c", 12,
          [("chg-a1#2", 12, 1_700_000_000_000, 9)], 12),
    Flushed(2, 99, -1, 5),
    Seen("c", b"acme/1", 1, [("chg-a1#2", 3, 0, 0)]),
])
def test_changelog_records_with_corrections_round_trip(record) -> None:
    assert decode_record(encode_record(record)) == record

