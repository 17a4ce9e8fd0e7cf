"""The commit and recovery protocol (:mod:`imbill.streams.commit`) without a broker.

:class:`MemoryLog` implements the :class:`~imbill.streams.commit.Log` port in memory: what
is appended waits until ``acknowledged``/``enqueued`` hands it over, and a crash (an
exception injected before an operation) loses what was not handed over. :func:`recover`
builds the next owner's table from the changelog as faust recovers it (the last value of
each key), so the same Committer code that runs on faust is driven through crashes here.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Iterable

import pytest

from imbill.domain import decide as decide_module
from imbill.domain.errors import LogReset, SchemaError
from imbill.schemas.codec import decode, encode_event
from imbill.schemas.topics import Topics
from imbill.streams import worker as worker_module
from imbill.streams.batch import bill_attempts
from imbill.streams.changelog import Flushed, decode_record, flushed_key, seen_key
from imbill.streams.commit import Committer
from tests.builders import ALICE, attempt, checklist, payment
from tests.test_processor import FROM_START, LONG, key_of, partition_of, records

NOW = datetime(2026, 1, 15, 9, 30, tzinfo=timezone.utc)
TOPICS = Topics("t.")
P = partition_of(key_of(ALICE))
CONFIG = checklist(balance_model="prepaid").state


class Crash(Exception):
    """The worker dies here (SIGKILL in production)."""


class MemoryLog:
    """The Log port in memory; ``crash_at`` = (operation, how many of it succeed first)."""

    def __init__(self, changelog: list | None = None, topics: dict | None = None, crash_at=None) -> None:
        self.records: dict[bytes, Any] = {}
        self.partitions: dict[bytes, int] = {}
        self.changelog: list[tuple[int, bytes, bytes]] = changelog if changelog is not None else []
        self.topics: dict[str, list[tuple[bytes, bytes]]] = topics if topics is not None else defaultdict(list)
        self.ops: list[str] = []
        self.seeks: list[tuple[str, int, int]] = []
        self.highwaters: dict[tuple[str, int], int] = {}
        self.positions: dict[tuple[str, int], int] = {}
        self._pending: list[tuple[str, Any, bytes, bytes]] = []
        self._crash_at, self._counts = crash_at, defaultdict(int)

    def _do(self, op: str) -> None:
        if self._crash_at is not None and self._crash_at[0] == op and self._counts[op] == self._crash_at[1]:
            raise Crash(op)
        self._counts[op] += 1
        self.ops.append(op)

    def keep(self, partition: int, key: bytes, record: Any) -> None:
        self.records[key], self.partitions[key] = record, partition

    def forget(self, key: bytes) -> None:
        self.records.pop(key, None)
        self.partitions.pop(key, None)

    async def write_changelog(self, partition: int, key: bytes, value: bytes) -> None:
        self._do("changelog")
        self._pending.append(("changelog", partition, key, value))

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        self._do("send")
        self._pending.append(("send", topic, key, value))

    async def acknowledged(self) -> None:
        self._do("ack")
        self._hand_over()

    async def enqueued(self) -> None:
        self._do("enqueued")
        self._hand_over()

    def _hand_over(self) -> None:
        for kind, where, key, value in self._pending:
            if kind == "changelog":
                self.changelog.append((where, key, value))
            else:
                self.topics[where].append((key, value))
        self._pending = []

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        self.seeks.append((topic, partition, offset))

    def assignment(self) -> set[tuple[str, int]]:
        return {(topic, partition) for topic in (TOPICS.attempts, TOPICS.payments, TOPICS.corrections, TOPICS.config)
                for partition in (P, P + 1)}

    async def earliest_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {tp: 0 for tp in partitions}

    def highwater(self, topic: str, partition: int) -> int | None:
        return self.highwaters.get((topic, partition))

    async def end_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {tp: self.highwaters[tp] for tp in partitions if tp in self.highwaters}

    async def position(self, topic: str, partition: int) -> int | None:
        return self.positions.get((topic, partition))


def recover(crashed: MemoryLog, crash_at=None) -> MemoryLog:
    """The next owner's log: the same broker, its table read back from the changelog."""
    log = MemoryLog(crashed.changelog, crashed.topics, crash_at)
    for partition, key, value in crashed.changelog:
        if value is None:  # a tombstone
            log.forget(key)
        else:
            log.keep(partition, key, decode_record(value))
    return log


def committer(log: MemoryLog, halted: list | None = None) -> Committer:
    async def config():
        return CONFIG

    halt = (lambda: halted.append(True)) if halted is not None else None
    return Committer(log, TOPICS, config, clock=lambda: NOW, halt=halt)


def started(log: MemoryLog) -> Committer:
    worker = committer(log)
    asyncio.run(worker.recovered())
    return worker


def run(coroutine) -> None:
    asyncio.run(coroutine)


def seven_attempts() -> list:
    return records(*[(n, attempt(attempt_id=f"a{n}", body_chars=LONG)) for n in range(7)])


def sent(log: MemoryLog) -> dict[str, list[tuple[bytes, bytes]]]:
    """Topic -> its records (key, value) in order; no topic is ordered against another."""
    return {topic: list(lines) for topic, lines in log.topics.items() if lines}


def by_topic(outbox: Iterable[tuple[str, bytes, bytes]]) -> dict[str, list[tuple[bytes, bytes]]]:
    grouped = defaultdict(list)
    for kind, key, value in outbox:
        grouped[getattr(TOPICS, kind)].append((key, value))
    return dict(grouped)


def charge_ids(log: MemoryLog) -> list[str]:
    return [decode(value)[1]["charge_id"] for _, value in log.topics[TOPICS.charges]]


def test_a_batch_writes_entries_then_outputs_then_markers():
    log = MemoryLog()
    run(started(log).attempts(seven_attempts()))
    outputs = sum(len(lines) for lines in sent(log).values())
    assert log.ops == ["changelog", "changelog", "ack", *["send"] * outputs, "ack", "changelog", "enqueued"]
    assert [key for _, key, _ in log.changelog] == [key_of(ALICE), seen_key("a", key_of(ALICE), 0), flushed_key(P)]
    assert log.records[flushed_key(P)] == Flushed(P, 6, -1)
    assert log.records[key_of(ALICE)].outbox == []  # on its topics: no longer kept in memory


def test_a_crash_between_entries_and_outputs_is_sent_once_by_the_next_owner_byte_for_byte():
    first = MemoryLog(crash_at=("send", 0))
    with pytest.raises(Crash):
        run(started(first).attempts(seven_attempts()))
    assert sent(first) == {} and [key for _, key, _ in first.changelog] == [key_of(ALICE),
                                                                         seen_key("a", key_of(ALICE), 0)]
    outbox = decode_record(first.changelog[0][2]).outbox
    second = recover(first)
    taker = started(second)
    resent = sent(second)
    assert resent == by_topic(outbox) and charge_ids(second) == [f"chg-a{n}" for n in range(6)]
    run(taker.attempts(seven_attempts()))  # delivered again: decided already, nothing new
    assert sent(second) == resent and second.records[flushed_key(P)] == Flushed(P, 6, -1)
    started(recover(second))  # a third owner: the marker covers the outbox now
    assert sent(second) == resent


def test_a_crash_after_the_outputs_resends_the_same_bytes_and_the_next_batch_goes_on():
    first = MemoryLog(crash_at=("changelog", 2))  # the entry and its ids are written, the marker is not
    with pytest.raises(Crash):
        run(started(first).attempts(seven_attempts()))
    before = sent(first)
    second = recover(first)
    taker = started(second)
    assert sent(second) == {topic: lines + lines for topic, lines in before.items()}  # same ids, same bytes
    eighth = records((7, attempt(attempt_id="a7", body_chars=LONG)))
    run(taker.attempts(seven_attempts() + eighth))  # 0-6 delivered again: skipped, decided already
    assert charge_ids(second) == [f"chg-a{n}" for n in range(6)] * 2  # a7: the account is suspended
    assert [decode(v)[1]["attempt_id"] for _, v in second.topics[TOPICS.rejections]] == ["a6", "a6", "a7"]
    assert second.records[flushed_key(P)].attempts == 7


def test_records_at_or_below_a_keys_decided_offset_are_skipped():
    log = MemoryLog()
    worker = started(log)
    decided = bill_attempts({}, CONFIG, seven_attempts()[:5], now=NOW, expected=FROM_START).entries
    for key, entry in decided.items():
        entry.outbox = []
        log.keep(P, key, entry)  # entries of offsets 0-4 committed, no marker written
    run(worker.attempts(seven_attempts()))
    assert charge_ids(log) == ["chg-a5"]  # a6 is the first refused: 1.00 pays for 6 messages
    assert log.records[flushed_key(P)] == Flushed(P, 6, -1)


def test_a_gap_rewinds_the_partition_once_and_decides_nothing_after_it():
    log = MemoryLog()
    worker = started(log)
    late = records((2, attempt(attempt_id="g2")), (3, attempt(attempt_id="g3")))
    run(worker.attempts(late))
    run(worker.attempts(late))  # fetched before the rewind: still arriving, no second seek
    assert log.seeks == [(TOPICS.attempts, P, 0)]
    assert sent(log) == {} and log.records[flushed_key(P)] == Flushed(P, -1, -1)


def test_markers_only_advance_and_each_source_moves_its_own():
    log = MemoryLog()
    log.keep(P, flushed_key(P), Flushed(P, 4, 9))
    worker = started(log)
    run(worker.attempts(seven_attempts()))  # 0-4 are below the marker, 5 and 6 are new
    assert log.records[flushed_key(P)] == Flushed(P, 6, 9)
    run(worker.attempts(seven_attempts()))  # all below: the marker stays
    top_up = [(P, 3, key_of(ALICE), encode_event(payment("1.00")))]
    run(worker.payments(top_up))  # below the payments marker: nothing
    assert log.records[flushed_key(P)] == Flushed(P, 6, 9)


def test_a_partition_with_no_progress_though_fetched_past_is_read_again():
    log = MemoryLog()
    worker = started(log)
    log.highwaters[TOPICS.attempts, P] = log.positions[TOPICS.attempts, P] = 5
    run(worker.unstall())
    assert log.seeks == []  # the first look only notes where it is
    run(worker.unstall())
    assert log.seeks == [(TOPICS.attempts, P, 0)]


def test_nothing_is_decided_while_a_rebalance_is_under_way():
    log = MemoryLog()
    worker = started(log)
    run(worker.revoked())
    run(worker.attempts(seven_attempts()))
    assert log.ops == [] and sent(log) == {}


def test_a_rule_failing_propagates_and_nothing_is_written(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the rules")

    monkeypatch.setattr(decide_module, "rate_attempt", broken)
    with pytest.raises(RuntimeError, match="a bug in the rules"):
        bill_attempts({}, CONFIG, seven_attempts(), now=NOW, expected=FROM_START)
    log, halted = MemoryLog(), []
    worker = committer(log, halted)
    run(worker.recovered())
    with pytest.raises(RuntimeError, match="a bug in the rules"):
        run(worker.attempts(seven_attempts()))
    assert halted == [True]  # the worker exits (status 70) and the next owner recovers
    assert log.ops == [] and log.changelog == [] and sent(log) == {}


def test_the_real_workers_halt_exits_with_status_70_at_once(monkeypatch):
    exits: list[int] = []
    monkeypatch.setattr(worker_module.os, "_exit", exits.append)
    monkeypatch.setattr(worker_module.logging, "shutdown", lambda: None)
    worker_module._exit_now()
    assert exits == [70] == [worker_module.EXIT_UNCOMMITTED]


def test_a_failed_commit_halts_the_worker_before_anything_else_runs():
    log, halted = MemoryLog(crash_at=("ack", 0)), []
    worker = committer(log, halted)
    run(worker.recovered())
    with pytest.raises(Crash):
        run(worker.attempts(seven_attempts()))
    assert halted == [True] and log.changelog == []


def test_an_undecodable_attempt_is_still_a_malformed_attempt_rejection():
    bad = [(P, 0, key_of(ALICE), b"not avro")]
    with pytest.raises(SchemaError):
        decode(b"not avro")
    (kind, _, value), = bill_attempts({}, CONFIG, bad, now=NOW, expected=FROM_START).entries[key_of(ALICE)].outbox
    assert (kind, decode(value)[1]["reason_code"]) == ("rejections", "malformed_attempt")


def test_a_log_that_ends_before_the_decided_offsets_stops_the_worker_and_nothing_is_written():
    """A broker reset under a live worker: the attempts log now ends before what the
    changelog says is decided. The worker stops (halt) with LogReset; no write follows."""
    log = MemoryLog()
    worker = started(log)
    run(worker.attempts(seven_attempts()))
    written = (len(log.changelog), sum(len(v) for v in log.topics.values()))
    log.highwaters[(TOPICS.attempts, P)] = 2  # the reset log holds 2 records; 7 were decided
    halted: list = []
    worker.halt = lambda: halted.append(True)
    with pytest.raises(LogReset, match=rf"{TOPICS.attempts}\[{P}\] ends at offset 2.*decided it up to offset 6"):
        run(worker.unstall())
    assert halted == [True]
    assert (len(log.changelog), sum(len(v) for v in log.topics.values())) == written


def test_a_worker_taking_over_a_reset_log_stops_before_deciding_anything():
    crashed = MemoryLog()
    run(started(crashed).attempts(seven_attempts()))
    log = recover(crashed)
    log.highwaters[(TOPICS.attempts, P)] = 0  # the topic was deleted and re-created
    halted: list = []
    worker = committer(log, halted)
    with pytest.raises(LogReset):
        run(worker.recovered())
    assert halted == [True] and not worker.ready


def test_an_intact_log_passes_the_check():
    log = MemoryLog()
    worker = started(log)
    run(worker.attempts(seven_attempts()))
    log.highwaters[(TOPICS.attempts, P)] = 7
    run(worker.unstall())
    assert worker.ready
