"""Duplicates at any distance: the dedup rule, the per-account memory and its crash safety.

The memory is driven through the same Committer code as the live worker, on the in-memory
log of tests/test_commit_protocol.py (crashes and recovery included); the live worker on
the local broker is in tests/test_dedup_broker.py.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from imbill.domain.decide import decide_payment
from imbill.domain.dedup import NEVER, WINDOW, Sighting, millis, verdict
from imbill.domain.keys import account_key
from imbill.schemas.codec import decode, encode_event
from imbill.streams.batch import bill_attempts
from imbill.streams.changelog import Entry, Seen, encode_record, flushed_key, seen_key
from imbill.streams.dedup import DedupMemory, Window, packed, unpacked
from tests.builders import ALICE, ENV, T0, attempt, payment
from tests.test_commit_protocol import (CONFIG, NOW, P, TOPICS, MemoryLog, charge_ids, recover, run, started)
from tests.test_processor import FROM_START, key_of, records

AT = T0 + timedelta(hours=1)  # the builders' received_at


# -- the rule ---------------------------------------------------------------------------------------

# (case id, sighting, offset, record time, verdict)
VERDICTS = [
    ("never seen, nothing remembered", Sighting(), 5, AT, "new"),
    ("first copy at an earlier offset", Sighting(2, 0, millis(AT)), 5, AT, "copy"),
    ("first copy far away", Sighting(0, 0, millis(AT)), 1_000_000, AT, "copy"),
    ("the same record decided again after a crash", Sighting(5, 0, millis(AT)), 5, AT, "new"),
    ("new, 24 hours before the newest: still inside", Sighting(None, 0, millis(AT + WINDOW)), 5, AT, "new"),
    ("new, older than the window", Sighting(None, 0, millis(AT + WINDOW)), 5, AT - timedelta(milliseconds=1),
     "stale"),
    ("a copy older than the window is still a copy", Sighting(1, 0, millis(AT + 2 * WINDOW)), 5, AT, "copy"),
]


@pytest.mark.parametrize(("sighting", "offset", "at", "expected"), [c[1:] for c in VERDICTS],
                         ids=[c[0] for c in VERDICTS])
def test_verdict(sighting: Sighting, offset: int, at, expected: str) -> None:
    assert verdict(sighting, offset=offset, at=at) == expected


def test_a_payment_copy_is_credited_once_and_a_stale_one_refused() -> None:
    key = account_key(ENV, ALICE)
    first = decide_payment(None, payment("5.00"), CONFIG, key=key, offset=1, now=NOW)
    assert first.remember and first.state.balance == 6
    copy = decide_payment(first.state, payment("5.00"), CONFIG, key=key, offset=900, now=NOW,
                          sighting=Sighting(1, 0, millis(AT)))
    assert (copy.events, copy.remember, copy.state.balance, copy.state.last_payment_offset) == ((), False, 6, 900)
    late = payment("5.00", payment_id="pay-late")
    stale = decide_payment(first.state, late, CONFIG, key=key, offset=901, now=NOW,
                           sighting=Sighting(None, 0, millis(late.received_at + WINDOW) + 1))
    [refused] = stale.events
    assert (refused.reason_code, stale.remember, stale.state.balance) == ("outside_dedup_window", False, 6)


# -- the memory, through the commit protocol ----------------------------------------------------------

def many(first_offset: int, count: int, prefix: str = "o") -> list:
    """``count`` distinct free-standing attempts of ALICE from ``first_offset`` on."""
    return records(*[(first_offset + n, attempt(attempt_id=f"{prefix}{n}", body_chars=1)) for n in range(count)])


def funded(log: MemoryLog):
    """A worker whose ALICE has 100.00 (prepaid): enough for every test's messages."""
    worker = started(log)
    run(worker.payments([(P, 0, key_of(ALICE), encode_event(payment("99.00", payment_id="pay-fund")))]))
    return worker


def test_the_same_attempt_after_a_thousand_others_is_charged_once_even_across_a_restart() -> None:
    log = MemoryLog()
    worker = funded(log)
    x = records((0, attempt(attempt_id="x", body_chars=1)))
    run(worker.attempts(x))
    run(worker.attempts(many(1, 1000)))
    run(worker.attempts(records((1001, attempt(attempt_id="x", body_chars=1)))))
    assert charge_ids(log).count("chg-x") == 1 and len(charge_ids(log)) == 1001
    again = recover(log)
    run(started(again).attempts(records((1002, attempt(attempt_id="x", body_chars=1)))))
    assert charge_ids(again).count("chg-x") == 1
    assert again.records[flushed_key(P)].attempts == 1002


def test_copies_inside_one_batch_are_charged_once() -> None:
    log = MemoryLog()
    worker = funded(log)
    run(worker.attempts(records(*[(n, attempt(attempt_id="y" if n % 3 == 0 else f"z{n}", body_chars=1))
                                  for n in range(9)])))
    assert charge_ids(log).count("chg-y") == 1 and len(charge_ids(log)) == 7


def test_a_chunk_lost_with_its_entry_on_the_changelog_is_written_again_from_the_entry() -> None:
    """The entry is the commit point: its ids are in it too, so a lost Seen record is rebuilt
    before a later batch overwrites the entry."""
    log = MemoryLog()
    worker = funded(log)
    run(worker.attempts(records((0, attempt(attempt_id="x", body_chars=1)))))
    chunk = seen_key("a", key_of(ALICE), 0)
    log.changelog[:] = [line for line in log.changelog if line[1] != chunk]
    taker_log = recover(log)
    taker = started(taker_log)
    assert taker_log.changelog[-1][1] == chunk  # written again at recovery
    run(taker.attempts(many(1, 20)))  # overwrites the entry
    final = recover(taker_log)
    run(started(final).attempts(records((21, attempt(attempt_id="x", body_chars=1)))))
    assert charge_ids(final).count("chg-x") == 1


def test_a_chunk_written_whose_entry_was_lost_does_not_make_the_replayed_record_a_copy() -> None:
    """Only the Seen record reached the changelog (the entry's ack was lost): the same
    offset decided again is that record, not a copy of it, and is charged once."""
    log = MemoryLog()
    worker = funded(log)
    run(worker.attempts(records((0, attempt(attempt_id="x", body_chars=1)))))
    for lost in (key_of(ALICE), flushed_key(P)):  # the attempt batch's entry and marker
        last = max(n for n, line in enumerate(log.changelog) if line[1] == lost)
        del log.changelog[last]
    log.topics.clear()
    replay = recover(log)
    run(started(replay).attempts(records((0, attempt(attempt_id="x", body_chars=1)),
                                         (1, attempt(attempt_id="x", body_chars=1)))))
    assert charge_ids(replay) == ["chg-x"]


def test_old_chunks_expire_with_tombstones_and_a_copy_after_the_window_is_refused_not_charged() -> None:
    log = MemoryLog()
    worker = funded(log)
    run(worker.attempts(records((0, attempt(attempt_id="old", body_chars=1)))))
    day_later = AT + WINDOW + timedelta(minutes=1)
    run(worker.attempts(records((1, attempt(attempt_id="new", body_chars=1, received_at=day_later)))))
    old_chunk = seen_key("a", key_of(ALICE), 0)
    assert old_chunk not in log.records and (P, old_chunk, None) in log.changelog
    window = worker.memory.window("a", key_of(ALICE))
    assert set(window.ids) == {"new"}
    run(worker.attempts(records((2, attempt(attempt_id="old", body_chars=1)))))
    [rejection] = [decode(v)[1] for _, v in log.topics[TOPICS.rejections]]
    assert (rejection["attempt_id"], rejection["reason_code"]) == ("old", "outside_dedup_window")
    assert charge_ids(log) == ["chg-old", "chg-new"]
    replay = recover(log)  # the tombstone holds at recovery
    started(replay)
    assert old_chunk not in replay.records


def test_a_copy_with_other_content_is_the_duplicate_it_claims_to_be_and_is_logged(caplog) -> None:
    log = MemoryLog()
    worker = funded(log)
    run(worker.attempts(records((0, attempt(attempt_id="x", body_chars=1)))))
    with caplog.at_level(logging.WARNING, logger="imbill.streams.batch"):
        run(worker.attempts(records((1, attempt(attempt_id="x", body_chars=500, to_user="999")))))
    assert charge_ids(log) == ["chg-x"]
    assert "claims id 'x' of the one at offset 0" in caplog.text


def test_a_payment_published_again_far_away_is_credited_once() -> None:
    log = MemoryLog()
    worker = funded(log)
    run(worker.payments([(P, n, key_of(ALICE), encode_event(payment("1.00", payment_id=f"pay-{n}")))
                         for n in range(1, 200)]))
    run(worker.payments([(P, 200, key_of(ALICE), encode_event(payment("99.00", payment_id="pay-fund")))]))
    credited = [decode(v)[1]["cause_id"] for _, v in log.topics[TOPICS.balances]]
    assert credited.count("pay-fund") == 1 and len(credited) == 200


def decided_in_two_batches(first: list, second: list) -> tuple[list, list]:
    """The outputs of two batches, the second a minute later and against what the first
    committed (its entries, and their ids in the dedup memory, as the Committer adds them)."""
    memory = DedupMemory()
    one = bill_attempts({}, CONFIG, first, now=NOW, expected=FROM_START, memory=memory)
    for key, entry in one.entries.items():
        if entry.remembered:
            memory.add_entry(key, entry)
    after = {**FROM_START, **{partition: offset + 1 for partition, offset in one.decided.items()}}
    two = bill_attempts(one.entries, CONFIG, second, now=NOW + timedelta(minutes=1), expected=after, memory=memory)
    return ([value for entry in batch.entries.values() for _, _, value in entry.outbox] for batch in (one, two))


def test_a_refused_attempt_copied_into_a_later_batch_emits_nothing() -> None:
    """An unknown sender has no account state: its refusal's id is remembered all the same,
    so the copy (an edge's retransmission) is the duplicate, not a refusal decided again
    with another rejected_at."""
    refused = attempt(attempt_id="r1", from_user="mallory")
    first, second = decided_in_two_batches(records((0, refused), account="mallory"),
                                           records((1, refused), (2, replace(refused, attempt_id="r2")),
                                                   account="mallory"))
    [(name, rejection)] = [decode(value) for value in first]
    assert (name, rejection["attempt_id"], rejection["reason_code"]) == ("Rejection", "r1", "unknown_account")
    [(_, other)] = [decode(value) for value in second]  # r1 again: nothing; r2: its own refusal
    assert (other["attempt_id"], other["reason_code"], other["rejected_at"]) == (
        "r2", "unknown_account", NOW + timedelta(minutes=1))


def test_an_incoming_message_copied_into_a_later_batch_is_charged_once() -> None:
    """The free charge of an incoming message is decided without a balance too."""
    incoming = attempt(attempt_id="in1", direction="incoming", from_user="stranger", to_user=ALICE)
    first, second = decided_in_two_batches(records((0, incoming)), records((1, incoming)))
    assert [decode(value)[1]["charge_id"] for value in first] == ["chg-in1"] and second == []


@pytest.mark.parametrize("offset", [0, 1, 2**31, 2**63 - 1])
@pytest.mark.parametrize("content", [0, 1, 2**31, 2**32 - 1])
def test_an_ids_first_offset_and_fingerprint_are_kept_as_one_int_and_read_back(offset: int, content: int) -> None:
    assert unpacked(packed(offset, content)) == (offset, content)
    assert packed(offset, content) >> 32 == offset  # how Window.add compares a copy's offset with the first's


def test_the_memory_keeps_one_window_per_source_and_key() -> None:
    batch = bill_attempts({}, CONFIG, records((0, attempt(attempt_id="x", body_chars=1))), now=NOW,
                          expected=FROM_START)
    [entry] = batch.entries.values()
    assert entry.remembered == [("x", 0, millis(AT), entry.remembered[0][3])]
    window = Window()
    window.add(b"c1", entry.remembered)
    window.add(b"c1", entry.remembered)  # the entry and its chunk: the same ids once
    assert (set(window.ids), window.first("x"), window.newest_ms, window.expire()) == (
        {"x"}, (0, entry.remembered[0][3]), millis(AT), [])
    assert Window().newest_ms == NEVER


def test_a_chunk_of_a_full_batch_stays_far_below_the_broker_message_size() -> None:
    """A Seen record holds one batch's ids of one key: 4,000 (the worker's batch size) of
    64-character attempt ids is ~412 KB (103 bytes an id), under the 1 MB default
    max.message.bytes; an account's memory is its last 24 hours of ids, spread over chunks."""
    ids = [(f"{n:064x}", 10_000_000 + n, millis(AT) + n, 4_294_967_295) for n in range(4000)]
    size = len(encode_record(Seen("a", key_of(ALICE), P, ids)))
    entry = len(encode_record(Entry(None, P, 1, -1, [], "a", 1, ids)))
    assert size < 450_000 and entry < 450_000


def test_a_rebalance_keeps_the_windows_of_partitions_kept_and_drops_the_others() -> None:
    """The table keeps chunks without their ids once the windows hold them: a partition kept
    across a rebalance keeps its window, a revoked one's window goes with its records."""
    one, two = b"acme/one", b"acme/two"
    records = {seen_key("a", one, 0): Seen("a", one, 1, [("x", 0, 0, 0)]),
               seen_key("a", two, 0): Seen("a", two, 2, [("y", 0, 0, 0)])}
    memory = DedupMemory()
    assert memory.recover(records, {1, 2}) == []
    assert all(record.remembered == [] for record in records.values())  # held once, by the windows
    memory.recover({seen_key("a", one, 0): records[seen_key("a", one, 0)]}, {1})
    assert set(memory.window("a", one).ids) == {"x"} and memory.window("a", two) is None


def test_a_payment_dated_far_in_the_future_does_not_push_the_window_on() -> None:
    """A hostile received_at (year 9999) is remembered at the processor's clock: the
    account's next real payments are still applied."""
    log = MemoryLog()
    worker = funded(log)
    future = replace(payment("1.00", payment_id="pay-future"), received_at=datetime(9999, 1, 1, tzinfo=timezone.utc))
    following = replace(payment("2.00", payment_id="pay-next"), received_at=NOW - timedelta(minutes=1))
    run(worker.payments([(P, 1, key_of(ALICE), encode_event(future)), (P, 2, key_of(ALICE), encode_event(following))]))
    credited = [decode(v)[1]["cause_id"] for _, v in log.topics[TOPICS.balances]]
    assert credited == ["pay-fund", "pay-future", "pay-next"] and TOPICS.rejections not in log.topics
    window = worker.memory.window("p", key_of(ALICE))
    assert window.newest_ms == millis(NOW)
