"""The processor's dedup memory: every attempt, payment and correction id decided per
account within the window (:mod:`imbill.domain.dedup`), one window per input, kept with the
same atomicity as the balance.

A batch remembers the ids it decided for a key twice in the same acknowledged changelog
write (:mod:`.commit`, step 1): in the key's :class:`~.changelog.Entry` (``remembered``)
and as a :class:`~.changelog.Seen` chunk record of their own, keyed by source, first offset
and key (:func:`~.changelog.seen_key`). The entry is the commit point: if it is on the
changelog, its ids are (a chunk lost with it is written again at recovery from the entry);
if only the chunk is, the batch is decided again from the same offsets, and an id found at
the very offset being decided is that record, not a copy. The next batch overwrites the
entry only after this one is acknowledged, so no id is ever only in memory.

In memory the ids are held once, by the key's :class:`Window` (the table keeps each chunk's
key, without its ids). A chunk is dropped (a tombstone on the changelog) once its newest id is more than the window
older than the newest id of its key: memory per key is the ids of the last 24 hours of that
key's records, not the account's whole history, and one chunk record per batch that
touched the key (at most one batch's records of the key each, so records stay far below
the broker's message size).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from imbill.domain.dedup import NEVER, UNSEEN, WINDOW_MS, Sighting
from imbill.streams.changelog import Entry, Remembered, Seen, seen_key

__all__ = ["Window", "DedupMemory", "BatchMemory", "KeyMemory", "packed", "unpacked"]


def packed(offset: int, fingerprint: int) -> int:
    """An id's first offset and its 32-bit content fingerprint as one int: one small object
    per remembered id instead of a tuple of two (~85 bytes less per id; README, "Benchmarks")."""
    return offset << 32 | fingerprint


def unpacked(first: int) -> tuple[int, int]:
    """(first offset, fingerprint) of a :func:`packed` int."""
    return first >> 32, first & 0xFFFFFFFF


@dataclass(slots=True)
class Window:
    """The ids remembered for one (source, key): id -> its first offset and fingerprint
    (:func:`packed`), and its chunks by their newest time, oldest first."""

    ids: dict[str, int] = field(default_factory=dict)
    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    """A heap of (newest time in ms, chunk key)."""
    members: dict[bytes, tuple[str, ...]] = field(default_factory=dict)
    newest_ms: int = NEVER

    def first(self, record_id: str) -> tuple[int, int] | None:
        """(first offset, fingerprint) of a remembered id; None when it is not remembered."""
        found = self.ids.get(record_id)
        return unpacked(found) if found is not None else None

    def add(self, chunk: bytes, remembered: Iterable[Remembered]) -> None:
        if chunk in self.members:
            return  # the same chunk again (an entry and its chunk record)
        names, newest = [], NEVER
        for attempt_id, offset, at_ms, fingerprint in remembered:
            first = self.ids.get(attempt_id)
            if first is None or offset < first >> 32:
                self.ids[attempt_id] = packed(offset, fingerprint)
            names.append(attempt_id)
            newest = max(newest, at_ms)
        self.members[chunk] = tuple(names)
        heapq.heappush(self.chunks, (newest, chunk))
        self.newest_ms = max(self.newest_ms, newest)

    def expire(self) -> list[bytes]:
        """Drop the chunks whose newest id is out of the window; their keys."""
        dropped, horizon = [], self.newest_ms - WINDOW_MS
        while self.chunks and self.chunks[0][0] < horizon:
            _, chunk = heapq.heappop(self.chunks)
            for attempt_id in self.members.pop(chunk):
                self.ids.pop(attempt_id, None)
            dropped.append(chunk)
        return dropped


class DedupMemory:
    """Every (source, key)'s :class:`Window` of the partitions a worker owns."""

    def __init__(self) -> None:
        self.windows: dict[tuple[str, bytes], Window] = {}
        self.partitions: dict[tuple[str, bytes], int] = {}

    def recover(self, records: Mapping[bytes, Any], partitions: Iterable[int]) -> list[tuple[bytes, Seen]]:
        """After a table recovery for ``partitions``: forget the windows of other partitions,
        take in the chunks and entries' ids recovered, and return the chunks that are only in
        an entry (their own record was lost in a crash) to write again. The table then keeps
        chunks without their ids (the windows hold them; the changelog keeps them whole)."""
        owned = set(partitions)
        for name in [name for name, partition in self.partitions.items() if partition not in owned]:
            del self.windows[name], self.partitions[name]
        for key, record in records.items():
            if type(record) is Seen and record.remembered:
                self.add(record.source, record.key, key, record.remembered, record.partition)
                record.remembered = []
        missing = []
        for key, record in records.items():
            if type(record) is Entry and record.remembered:
                chunk = self.add_entry(key, record)
                if chunk not in records:
                    missing.append((chunk, Seen(record.source, key, record.partition, list(record.remembered))))
                record.remembered = []
        return missing

    def add(self, source: str, key: bytes, chunk: bytes, remembered: Iterable[Remembered], partition: int) -> None:
        window = self.windows.get((source, key))
        if window is None:
            window = self.windows[source, key] = Window()
            self.partitions[source, key] = partition
        window.add(chunk, remembered)

    def add_entry(self, key: bytes, entry: Entry) -> bytes:
        """Remember an entry's ids under the key of their chunk record; that key."""
        chunk = seen_key(entry.source, key, entry.remembered[0][1])
        self.add(entry.source, key, chunk, entry.remembered, entry.partition)
        return chunk

    def window(self, source: str, key: bytes) -> Window | None:
        return self.windows.get((source, key))

    def expire(self, touched: Iterable[tuple[str, bytes]]) -> list[tuple[int, bytes]]:
        """Expire the windows of ``touched``; (partition, chunk key) of every chunk dropped."""
        dropped = []
        for name in touched:
            window = self.windows.get(name)
            if window is not None:
                partition = self.partitions[name]
                dropped.extend((partition, chunk) for chunk in window.expire())
        return dropped

    def expire_all(self) -> list[tuple[int, bytes]]:
        return self.expire(list(self.windows))


class KeyMemory:
    """One key's memory during a batch: the committed window and what the batch adds."""

    __slots__ = ("window", "fresh", "newest_ms", "entry")

    def __init__(self, window: Window | None, entry: Entry) -> None:
        self.window, self.entry = window, entry
        self.fresh: dict[str, int] = {}
        """What the batch remembered: id -> :func:`packed` first offset and fingerprint."""
        self.newest_ms = window.newest_ms if window is not None else NEVER

    def sighting(self, record_id: str) -> Sighting:
        first = self.fresh.get(record_id)
        if first is None and self.window is not None:
            first = self.window.ids.get(record_id)
        if first is None:
            return Sighting(newest_ms=self.newest_ms) if self.newest_ms != NEVER else UNSEEN
        return Sighting(first >> 32, first & 0xFFFFFFFF, self.newest_ms)

    def remember(self, record_id: str, offset: int, at_ms: int, fingerprint: int) -> None:
        self.fresh.setdefault(record_id, packed(offset, fingerprint))
        self.newest_ms = max(self.newest_ms, at_ms)
        self.entry.remembered.append((record_id, offset, at_ms, fingerprint))


class BatchMemory:
    """The dedup memory a batch decides against (the committed memory is not modified)."""

    def __init__(self, committed: DedupMemory | None, source: str) -> None:
        self.committed, self.source = committed, source
        self.keys: dict[bytes, KeyMemory] = {}

    def of(self, key: bytes, entry: Entry) -> KeyMemory:
        memory = self.keys.get(key)
        if memory is None:
            window = self.committed.window(self.source, key) if self.committed is not None else None
            memory = self.keys[key] = KeyMemory(window, entry)
        memory.entry = entry
        return memory
