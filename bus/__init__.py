"""Thin Kafka plumbing over kafka-python: topics, an Avro event producer, reading to the end.

The local broker misreports ListOffsets "latest" (it answers the first offset of the last
batch + 1), so :func:`read_to_end` never trusts ``end_offsets`` for where a partition ends:
it reads until its position reaches the high-watermark of the fetch responses, which is
right on both Tansu and Apache Kafka. A partition whose reported end is 0 is empty.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition as AIOTopicPartition
from aiokafka.errors import KafkaError as AIOKafkaError
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, TopicAlreadyExistsError

from imbill.domain.errors import BrokerError, PublishError, SchemaError
from imbill.schemas.codec import decode, encode, encode_event
from imbill.schemas.topics import TopicSpec

__all__ = ["create_topics", "EventProducer", "append_all", "Envelope", "read_to_end", "read_raw", "offsets_at", "record_count", "partitions_of", "check_reachable",
           "Tail"]

log = logging.getLogger(__name__)


def check_reachable(bootstrap_servers: str, timeout: float = 3.0) -> None:
    """Raise :class:`BrokerError` naming the address unless one of the bootstrap servers
    accepts a TCP connection within ``timeout`` seconds in all (kafka-python itself would
    wait 30 s or more before saying anything)."""
    servers = [s.strip() for s in bootstrap_servers.split(",") if s.strip()]
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)),
                                          timeout=timeout / max(len(servers), 1)):
                return
        except (OSError, ValueError):
            continue
    raise BrokerError(f"no Kafka broker answers at {bootstrap_servers}: start one (`imbill run` or `imbill broker`) "
                      f"or point --bootstrap-servers / IMBILL_BOOTSTRAP_SERVERS at yours")


def create_topics(bootstrap_servers: str, specs: Iterable[TopicSpec], replication_factor: int = 1) -> list[str]:
    """Create the topics that do not exist yet; return the names created (idempotent)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="imbill-admin")
    try:
        existing = set(admin.list_topics())
        created = []
        for spec in specs:
            if spec.name in existing:
                continue
            try:
                admin.create_topics({spec.name: {"num_partitions": spec.partitions,
                                                 "replication_factor": replication_factor, "configs": spec.configs()}})
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
        return created
    except KafkaError as exc:
        raise BrokerError(f"cannot create topics on {bootstrap_servers}: {exc}") from exc
    finally:
        admin.close()


class EventProducer:
    """Single-object Avro encoded events onto topics, keyed, acknowledged by all replicas."""

    def __init__(self, bootstrap_servers: str, *, linger_ms: int = 2, **config: Any) -> None:
        try:
            self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all",
                                           linger_ms=linger_ms, **config)
        except KafkaError as exc:
            raise BrokerError(f"cannot connect to {bootstrap_servers}: {exc}") from exc

    def send(self, topic: str, key: str, name: str, record: Mapping[str, Any], partition: int | None = None):
        """Queue one event; returns kafka-python's future (``.get()`` waits for the ack)."""
        return self._producer.send(topic, key=key.encode(), value=encode(name, record), partition=partition)

    def send_event(self, topic: str, key: bytes, event: Any):
        """Queue one domain event; returns kafka-python's future."""
        return self._producer.send(topic, key=key, value=encode_event(event))

    def publish_event(self, topic: str, key: bytes, event: Any, timeout: float = 10.0) -> None:
        """Send one domain event and wait for the broker's acknowledgement."""
        try:
            self.send_event(topic, key, event).get(timeout=timeout)
        except KafkaError as exc:
            raise PublishError(f"{type(event).__name__} not acknowledged on {topic}: {exc}") from exc

    def publish(self, topic: str, key: str, name: str, record: Mapping[str, Any], timeout: float = 10.0) -> None:
        """Send one event and wait for the broker's acknowledgement."""
        try:
            self.send(topic, key, name, record).get(timeout=timeout)
        except KafkaError as exc:
            raise PublishError(f"{name} not acknowledged on {topic}: {exc}") from exc

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout=timeout)

    def close(self) -> None:
        self._producer.close()


@dataclass(frozen=True)
class Envelope:
    """One record read from a topic: where it was, and its decoded event (or why not)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    name: str | None
    record: dict[str, Any] | None
    error: str | None = None
    event: Any = None
    """The domain event (``imbill.domain.events``) when the reader asked for one."""


def partitions_of(consumer: KafkaConsumer, topic: str, timeout: float = 10.0) -> list[TopicPartition]:
    deadline = time.monotonic() + timeout
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        if time.monotonic() > deadline:
            raise BrokerError(f"topic {topic} does not exist (run `imbill topics create`)")
        time.sleep(0.1)


def _envelope(message: Any) -> Envelope:
    try:
        name, record = decode(message.value)
        return Envelope(message.topic, message.partition, message.offset, message.timestamp,
                        message.key, name, record)
    except SchemaError as exc:
        return Envelope(message.topic, message.partition, message.offset, message.timestamp,
                        message.key, None, None, str(exc))


def read_to_end(bootstrap_servers: str, topic: str, start: Mapping[int, int] | None = None,
                timeout: float = 30.0) -> Iterator[Envelope]:
    """Every record of ``topic`` from ``start`` (partition -> offset; default the beginning)
    up to its true end at the time of the call, partition by partition in offset order."""
    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                                 group_id=None, fetch_max_wait_ms=50)
    except KafkaError as exc:
        raise BrokerError(f"cannot read {topic} from {bootstrap_servers}: {exc}") from exc
    try:
        tps = partitions_of(consumer, topic)
        consumer.assign(tps)
        reported = consumer.end_offsets(tps)
        pending = {tp for tp in tps if reported[tp] > (start or {}).get(tp.partition, 0)}
        for tp in tps:
            consumer.seek(tp, (start or {}).get(tp.partition, 0))
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise BrokerError(f"reading {topic} to its end took more than {timeout}s")
            batches = consumer.poll(timeout_ms=200)
            for tp in sorted(batches, key=lambda t: t.partition):
                for message in batches[tp]:
                    yield _envelope(message)
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None and consumer.position(tp) >= highwater:
                    pending.discard(tp)
    finally:
        consumer.close()


def offsets_at(bootstrap_servers: str, topic: str, timestamp_ms: int) -> dict[int, int]:
    """Per partition, the offset of the first record timestamped at or after ``timestamp_ms``
    (ListOffsets by time); a partition with none starts at its end (on the local broker a little
    before it, which only reads a few records more). (The local broker
    answers offset 0 for a time after its last record, PLATFORM-NOTES quirk 2: reading from
    there is slower, never wrong.)"""
    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None)
    except KafkaError as exc:
        raise BrokerError(f"cannot read {topic} from {bootstrap_servers}: {exc}") from exc
    try:
        tps = partitions_of(consumer, topic)
        found = consumer.offsets_for_times({tp: max(timestamp_ms, 0) for tp in tps})
        consumer.assign(tps)
        starts = {}
        for tp in tps:
            at = found.get(tp)
            if at is None:
                consumer.seek_to_end(tp)
                starts[tp.partition] = consumer.position(tp)
            else:
                starts[tp.partition] = at.offset
        return starts
    except KafkaError as exc:
        raise BrokerError(f"cannot find the offsets of {topic} at a time on {bootstrap_servers}: {exc}") from exc
    finally:
        consumer.close()


def record_count(bootstrap_servers: str, topic: str, starts: Mapping[int, int]) -> int | None:
    """About how many records ``topic`` holds from ``starts`` on, for a progress bar (a little
    short on the local broker, whose end offsets are, PLATFORM-NOTES quirk 1); None if the
    broker does not say."""
    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None)
        try:
            ends = consumer.end_offsets(partitions_of(consumer, topic))
        finally:
            consumer.close()
    except (KafkaError, BrokerError):
        return None
    return sum(max(end - starts.get(tp.partition, 0), 0) for tp, end in ends.items())


Raw = tuple[int, int, "bytes | None", "bytes | None"]
"""A record as read: (partition, offset, key, value)."""


def read_raw(bootstrap_servers: str, topic: str, start: Mapping[int, int], timeout: float = 3_600.0,
             batch: int = 10_000) -> Iterator[list[Raw]]:
    """The records of ``topic`` from ``start`` (partition -> offset) to its true end (the
    fetch high-watermark) at the time of the call, in lists of up to ``batch``, undecoded.

    aiokafka, not kafka-python: its record batches are parsed in C, several times faster
    than kafka-python's pure Python for a scan of a long period (``imbill rerate``). Its
    own event loop is driven one fetch at a time, so the caller stays synchronous."""
    loop = asyncio.new_event_loop()
    reader = _RawReader(bootstrap_servers, topic, start)
    try:
        loop.run_until_complete(reader.start())
        deadline = time.monotonic() + timeout
        while reader.pending:
            if time.monotonic() > deadline:
                raise BrokerError(f"reading {topic} to its end took more than {timeout}s")
            records = loop.run_until_complete(reader.next(batch))
            if records:
                yield records
    finally:
        loop.run_until_complete(reader.stop())
        loop.close()


class _RawReader:
    """:func:`read_raw`'s consumer, inside its event loop."""

    def __init__(self, bootstrap_servers: str, topic: str, start: Mapping[int, int]) -> None:
        self.bootstrap_servers, self.topic, self.start_at = bootstrap_servers, topic, start
        self.consumer: AIOKafkaConsumer | None = None
        self.pending: set[AIOTopicPartition] = set()

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, group_id=None,
                                         enable_auto_commit=False, fetch_max_wait_ms=50,
                                         max_partition_fetch_bytes=8 * 1024 * 1024)
        try:
            await self.consumer.start()
        except AIOKafkaError as exc:
            raise BrokerError(f"cannot read {self.topic} from {self.bootstrap_servers}: {exc}") from exc
        partitions = self.consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise BrokerError(f"topic {self.topic} does not exist (run `imbill topics create`)")
        tps = [AIOTopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        ends = await self.consumer.end_offsets(tps)
        self.pending = {tp for tp in tps if ends[tp] > self.start_at.get(tp.partition, 0)}
        for tp in tps:
            self.consumer.seek(tp, self.start_at.get(tp.partition, 0))

    async def next(self, batch: int) -> list[Raw]:
        found = await self.consumer.getmany(*self.pending, timeout_ms=200, max_records=batch)
        for tp in list(self.pending):
            highwater = self.consumer.highwater(tp)
            if highwater is not None and await self.consumer.position(tp) >= highwater:
                self.pending.discard(tp)
        return [(m.partition, m.offset, m.key, m.value) for tp in sorted(found, key=lambda t: t.partition)
                for m in found[tp]]

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()


def append_all(bootstrap_servers: str, topic: str, records: Iterable[tuple[bytes, bytes]], *,
               timeout: float = 60.0, done: Callable[[int], None] = lambda count: None, window: int = 5_000) -> int:
    """Append ``records`` (key, value) to ``topic``, each acknowledged by all replicas, on the
    partition its key gives (the default partitioner, as :class:`EventProducer`'s); return
    how many. ``done`` hears how many more are acknowledged after each ``window``.

    aiokafka, not kafka-python: a re-rating run appends one correction per changed attempt,
    and kafka-python's per-record send in pure Python is several times slower (PLATFORM-NOTES).
    Raises :class:`PublishError` if one is not acknowledged: whatever was appended stays, and
    appending again is harmless to a reader that knows the ids (the processor does)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_append_all(bootstrap_servers, topic, records, timeout, done, window))
    finally:
        loop.close()


async def _append_all(bootstrap_servers: str, topic: str, records: Iterable[tuple[bytes, bytes]], timeout: float,
                      done: Callable[[int], None], window: int) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5,
                                enable_idempotence=False, max_batch_size=262_144,
                                request_timeout_ms=int(timeout * 1000))
    try:
        await producer.start()
    except AIOKafkaError as exc:
        await producer.stop()
        raise BrokerError(f"cannot append to {topic} on {bootstrap_servers}: {exc}") from exc
    count, pending = 0, []
    try:
        for key, value in records:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= window:
                count += await _acknowledged(pending, topic, timeout, done)
        return count + await _acknowledged(pending, topic, timeout, done)
    except AIOKafkaError as exc:
        raise PublishError(f"not every record acknowledged on {topic}: {exc}") from exc
    finally:
        await producer.stop()


async def _acknowledged(pending: list, topic: str, timeout: float, done: Callable[[int], None]) -> int:
    try:
        await asyncio.wait_for(asyncio.gather(*pending), timeout)
    except asyncio.TimeoutError:
        raise PublishError(f"records not acknowledged on {topic} within {timeout:g} s") from None
    count = len(pending)
    pending.clear()
    done(count)
    return count


class Tail:
    """What is appended to ``topics`` from now on: every partition, read from its end at the
    time the tail is opened (open it before causing what you wait for)."""

    def __init__(self, bootstrap_servers: str, topics: Iterable[str]) -> None:
        topics = list(topics)
        try:
            self._consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                                           group_id=None, fetch_max_wait_ms=50)
        except KafkaError as exc:
            raise BrokerError(f"cannot connect to {bootstrap_servers}: {exc}") from exc
        try:
            tps = [tp for topic in topics for tp in partitions_of(self._consumer, topic)]
            self._consumer.assign(tps)
            for tp, end in self._consumer.end_offsets(tps).items():
                self._consumer.seek(tp, end)
        except BaseException as exc:
            self._consumer.close()
            if isinstance(exc, KafkaError):
                raise BrokerError(f"cannot read {', '.join(topics)} on {bootstrap_servers}: {exc}") from exc
            raise

    def find(self, match: Callable[[Envelope], bool], timeout: float) -> Envelope | None:
        """The first decoded record appended since the tail opened that ``match`` accepts,
        or None when none comes within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            batches = self._consumer.poll(timeout_ms=max(1, int(min(left, 0.2) * 1000)))
            for messages in batches.values():
                for message in messages:
                    envelope = _envelope(message)
                    if envelope.record is not None and match(envelope):
                        return envelope
        return None

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> "Tail":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
