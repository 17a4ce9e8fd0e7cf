"""Committing a decided batch, and taking over partitions: the protocol, against a port.

The processor has three inputs, all keyed by account and co-partitioned: attempts,
payments and re-rating corrections. Each batch of records of one of them is decided with no
I/O (:mod:`.batch`) and then committed in three steps, each acknowledged before the next
starts:

1. the changelog entry of every key the batch touched: the account's balance state, the
   offsets decided for the key and the outbox, the encoded events those decisions caused;
   with it, the Seen chunk of the ids the batch added to the key's dedup memory (:mod:`.dedup`);
2. the outboxes, to the charge, rejection, balance-event and service-status topics;
3. per partition, a Flushed marker: every offset up to it is decided and its events are
   on their topics (its own ack is not awaited). The input offsets are committed later
   by the stream, once the batch is handled. Chunks of the dedup memory that fell out of its
   window are dropped with them (tombstones; a lost one is dropped again later).

Kafka transactions are not available (PLATFORM-NOTES, quirk 4), so the entries are the
commit point: once a key's entry is acknowledged its decisions are final. A worker that
takes over a partition (:meth:`Committer.recovered`) sends again every outbox the
partition's marker does not cover (same bytes, same ids), and the batch decision skips the
records at or below a key's decided offset when they are delivered again. A charge id
therefore never carries two amounts. One lock around deciding and steps 1-3 keeps the
three streams from writing state that holds another's unacknowledged decisions: the lock
makes the worker the single writer of each account it owns, so a correction and a live
charge of the same account never race. Any failure while committing leaves memory ahead of
the changelog: the ``halt`` callback stops the worker at once, as a crash would.

The protocol speaks to Kafka only through :class:`Log`, so it runs the same on faust
(:class:`.faust_adapter.FaustLog`) and on an in-memory log in the tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from functools import partial
from typing import Any, Awaitable, Callable, Iterable, Mapping, MutableMapping, Protocol, Sequence

from imbill.domain.config import ConfigState
from imbill.domain.decide import DEFAULT_LIMITS, Limits
from imbill.domain.errors import LogReset
from imbill.schemas.topics import Topics
from imbill.streams.batch import Batch, Record, bill_attempts, correct_charges, top_up_payments
from imbill.streams.changelog import (OUTPUT_KINDS, Entry, Flushed, Seen, encode_record, flushed_key,
                                      pending_outboxes)
from imbill.streams.dedup import DedupMemory

__all__ = ["Log", "Committer", "STALL_SECONDS"]

logger = logging.getLogger(__name__)

STALL_SECONDS = 5.0
"""How long a partition may make no progress, records waiting, before it is read again."""


class Log(Protocol):
    """What the commit protocol needs of Kafka and of the worker's table.

    ``write_changelog`` and ``send`` append; ``acknowledged`` hands over everything
    appended since the last hand-over and waits for the broker's acks, ``enqueued`` hands
    it over without waiting.
    """

    @property
    def records(self) -> MutableMapping[bytes, Any]:
        """The table in memory: changelog key -> Entry or Flushed, as recovered."""

    def keep(self, partition: int, key: bytes, record: Entry | Flushed | Seen) -> None:
        """Hold ``record`` in memory as the table's value of ``key`` on ``partition``."""

    def forget(self, key: bytes) -> None:
        """Drop ``key`` from the table in memory."""

    async def write_changelog(self, partition: int, key: bytes, value: bytes | None) -> None:
        """Append ``value`` (None: a tombstone, the key is deleted at recovery)."""

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Append to ``topic`` on the partition the default partitioner gives ``key``."""

    async def acknowledged(self) -> None: ...

    async def enqueued(self) -> None: ...

    async def seek(self, topic: str, partition: int, offset: int) -> None: ...

    def assignment(self) -> set[tuple[str, int]]: ...

    async def earliest_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]: ...

    def highwater(self, topic: str, partition: int) -> int | None: ...

    async def end_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]: ...

    async def position(self, topic: str, partition: int) -> int | None: ...


class Committer:
    """One worker's commit protocol (see the module doc)."""

    def __init__(self, log: Log, topics: Topics, config: Callable[[], Awaitable[ConfigState]], *,
                 clock: Callable[[], datetime], halt: Callable[[], None] | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.log, self.topics, self.config, self.clock = log, topics, config, clock
        self.limits = limits
        """The bounds on inputs the deployment set (settings), handed to every decision."""
        self.halt = halt or (lambda: None)
        """Called when a batch could not be committed; if it returns, the error is raised."""
        self.lock = asyncio.Lock()
        self.ready = False
        """Set once the table is recovered for the current assignment, cleared on revocation."""
        self.partitions: set[int] = set()
        self._topic_names = {kind: getattr(topics, kind) for kind in OUTPUT_KINDS}
        self._sources = {"a": topics.attempts, "p": topics.payments, "c": topics.corrections}
        self._source_of = {topic: source for source, topic in self._sources.items()}
        self._rewound: dict[tuple[str, int], tuple[int, float]] = {}
        self._progress: dict[tuple[str, int], int] = {}
        self.memory = DedupMemory()
        """The dedup memory of the partitions owned, rebuilt from the table at each recovery."""
        self._tombstones: list[tuple[int, bytes]] = []
        self.batches = 0

    async def attempts(self, records: Sequence[Record]) -> None:
        await self._process("a", records, bill_attempts)

    async def payments(self, records: Sequence[Record]) -> None:
        await self._process("p", records, top_up_payments)

    async def corrections(self, records: Sequence[Record]) -> None:
        await self._process("c", records, partial(correct_charges, topic=self.topics.corrections))

    async def _process(self, source: str, records: Sequence[Record], decide: Callable[..., Batch]) -> None:
        async with self.lock:
            if not self.ready:  # a rebalance is under way: these are read again after recovery
                return
            try:
                await self._commit(source, records, decide)
            except Exception:  # noqa: BLE001 - any failure leaves memory ahead of the changelog
                logger.critical("a batch could not be committed; stopping at once, the next owner of "
                                "these partitions recovers them from the changelog", exc_info=True)
                self.halt()
                raise

    async def _commit(self, source: str, records: Sequence[Record], decide: Callable[..., Batch]) -> None:
        config = await self.config()
        batch = decide(self.log.records, config, records, now=self.clock(), expected=self._expected(source),
                       memory=self.memory, limits=self.limits)
        await self._write_entries(batch.entries)
        touched = self._touched_windows(source, batch.entries)
        await self._send_outboxes(batch.entries.values())
        self._drop_expired(touched)
        await self._mark_flushed(source, batch.decided, batch.entries.values())
        await self._rewind(source, batch.gaps)
        self.batches += 1

    def _expected(self, source: str) -> dict[int, int]:
        markers = {p: self.log.records.get(flushed_key(p)) for p in self.partitions}
        return {p: m.decided(source) + 1 for p, m in markers.items() if type(m) is Flushed}

    async def _write_entries(self, entries: Mapping[bytes, Entry]) -> None:
        """Step 1: the entries, and the Seen chunk of each entry's remembered ids."""
        for key, entry in entries.items():
            await self.log.write_changelog(entry.partition, key, encode_record(entry))
            self.log.keep(entry.partition, key, entry)
            if entry.remembered:
                await self._write_seen(key, entry)
        await self.log.acknowledged()

    async def _write_seen(self, key: bytes, entry: Entry) -> None:
        chunk = Seen(entry.source, key, entry.partition, list(entry.remembered))
        chunk_key = self.memory.add_entry(key, entry)
        await self.log.write_changelog(entry.partition, chunk_key, encode_record(chunk))
        self.log.keep(entry.partition, chunk_key, Seen(entry.source, key, entry.partition, []))  # ids: in memory

    def _touched_windows(self, source: str, entries: Mapping[bytes, Entry]) -> list[tuple[str, bytes]]:
        """The (source, key) windows the batch added ids to (its entries are acknowledged)."""
        return [(source, key) for key, entry in entries.items() if entry.remembered]

    def _drop_expired(self, touched: Iterable[tuple[str, bytes]]) -> None:
        """Tombstones for the chunks out of the window, handed over with the markers."""
        for partition, chunk_key in self.memory.expire(touched):
            self.log.forget(chunk_key)
            self._tombstones.append((partition, chunk_key))

    async def _send_outboxes(self, entries: Iterable[Entry]) -> None:
        names = self._topic_names
        for entry in entries:
            for kind, key, value in entry.outbox:
                await self.log.send(names[kind], key, value)
        await self.log.acknowledged()

    async def _mark_flushed(self, source: str, decided: Mapping[int, int], entries: Iterable[Entry]) -> None:
        """Advance the partitions' markers to ``decided`` (every offset up to it is decided
        and its events acknowledged); then outboxes are no longer kept in memory."""
        for partition, offset in decided.items():
            old = self.log.records.get(flushed_key(partition))
            marker = (old if type(old) is Flushed else Flushed(partition)).advanced(source, offset)
            self.log.keep(partition, flushed_key(partition), marker)
            await self.log.write_changelog(partition, flushed_key(partition), encode_record(marker))
        tombstones, self._tombstones = self._tombstones, []
        for partition, chunk_key in tombstones:
            await self.log.write_changelog(partition, chunk_key, None)
        await self.log.enqueued()  # acks not awaited: a lost marker means replaying and re-sending more
        for entry in entries:
            entry.outbox = []  # on its topics now; the changelog keeps it until a marker covers it
            entry.remembered = []  # in the memory and in its Seen chunk

    async def _rewind(self, source: str, gaps: Mapping[int, int]) -> None:
        topic, now = self._sources[source], time.monotonic()
        for partition, offset in gaps.items():
            last = self._rewound.get((topic, partition))
            if last is not None and last[0] == offset and now - last[1] < STALL_SECONDS:
                continue  # records fetched before the last rewind are still arriving
            await self._seek(topic, partition, offset, "a record after offset %d came first")

    async def _seek(self, topic: str, partition: int, offset: int, why: str) -> None:
        self._rewound[topic, partition] = (offset, time.monotonic())
        logger.info(f"%s[%d]: {why}; reading again from it", topic, partition, offset)
        await self.log.seek(topic, partition, offset)

    async def unstall(self) -> None:
        """Every few seconds: read again a partition that made no progress since the last
        look although the consumer has read past its next offset and there are records to
        decide (faust dropped the tail it was fetching when a rebalance suspended its flow
        and committed past it, or records fetched before a rewind overtook it)."""
        async with self.lock:
            if not self.ready:
                return
            for source, topic in self._sources.items():
                for partition, offset in self._expected(source).items():
                    self._check_log(topic, partition, offset - 1, self.log.highwater(topic, partition))
                    seen = self._progress.get((topic, partition))
                    self._progress[topic, partition] = offset
                    if seen == offset and await self._fetched_past(topic, partition, offset):
                        await self._seek(topic, partition, offset, "no progress towards offset %d")

    async def _fetched_past(self, topic: str, partition: int, offset: int) -> bool:
        """Whether there are records from ``offset`` on and the consumer has fetched past it."""
        try:
            highwater = self.log.highwater(topic, partition)
            position = await self.log.position(topic, partition)
        except Exception:  # noqa: BLE001 - unassigned in a rebalance that just began
            return False
        return highwater is not None and highwater > offset and position is not None and position > offset

    async def recovered(self, *args: Any, **kwargs: Any) -> None:
        """After the table is recovered for a new assignment: start markers where the
        partitions begin, send the outboxes a previous owner may not have delivered."""
        async with self.lock:
            assigned = [tp for tp in self.log.assignment() if tp[0] in self._sources.values()]
            partitions = {partition for _, partition in assigned}
            await self._start_markers(partitions, assigned)
            ends = await self.log.end_offsets(assigned)
            for (topic, partition), end in ends.items():
                marker = self.log.records.get(flushed_key(partition))
                if type(marker) is Flushed:
                    self._check_log(topic, partition, marker.decided(self._source_of[topic]), end)
            await self._recover_memory(partitions)
            pending = pending_outboxes(self.log.records, partitions)
            if pending:
                logger.info("re-sending the outboxes of %d keys on partitions %s", len(pending), sorted(partitions))
                await self._send_outboxes(pending)
            for entry in self.log.records.values():
                if type(entry) is Entry:
                    entry.outbox = []  # a crash before the markers move only sends them again
            self.partitions, self.ready = partitions, True

    async def _recover_memory(self, partitions: set[int]) -> None:
        """The dedup memory of the table as recovered: a chunk found only in its entry is
        written again (before the entry is overwritten), expired chunks are dropped."""
        missing = self.memory.recover(self.log.records, partitions)
        for chunk_key, chunk in missing:
            await self.log.write_changelog(chunk.partition, chunk_key, encode_record(chunk))
            self.log.keep(chunk.partition, chunk_key, Seen(chunk.source, chunk.key, chunk.partition, []))
        if missing:
            await self.log.acknowledged()
        self._tombstones = []
        for partition, chunk_key in self.memory.expire_all():
            self.log.forget(chunk_key)
            self._tombstones.append((partition, chunk_key))
        windows = sum(len(w.ids) for w in self.memory.windows.values())
        logger.info("dedup memory: %d ids of %d keys (%d chunks written again)", windows,
                    len(self.memory.windows), len(missing))

    async def _start_markers(self, partitions: set[int], assigned: list[tuple[str, int]]) -> None:
        """A partition without a marker starts one before its earliest offsets (in memory
        only: the first batch writes it). A marker written before the processor read
        corrections starts its corrections there too."""
        earliest = await self.log.earliest_offsets(assigned) if assigned else {}
        for partition in sorted(partitions):
            start = {source: earliest.get((topic, partition)) or 0 for source, topic in self._sources.items()}
            marker = self.log.records.get(flushed_key(partition))
            if type(marker) is not Flushed:
                marker = Flushed(partition, start["a"] - 1, start["p"] - 1, start["c"] - 1)
            elif marker.corrections == -1 and start["c"] > 0:
                marker = Flushed(partition, marker.attempts, marker.payments, start["c"] - 1)
            else:
                continue
            self.log.keep(partition, flushed_key(partition), marker)

    def _check_log(self, topic: str, partition: int, decided: int, end: int | None) -> None:
        """Stop when the log ends at or before an offset the changelog says is decided: it is
        not the log the balances were built from (a reset broker, a re-created topic, another
        cluster). Nothing more is written; going on would skip or re-read records silently."""
        if end is None or decided < end:
            return
        message = (f"{topic}[{partition}] ends at offset {end}, but this processor's changelog has decided it "
                   f"up to offset {decided}: the broker was reset or the topic re-created. Stopping; restore "
                   "the broker's journal, or start from scratch (README: 'Starting from scratch')")
        logger.critical(message)
        self.halt()
        raise LogReset(message)

    async def revoked(self, *args: Any, **kwargs: Any) -> None:
        self.ready = False
        self._progress.clear()

