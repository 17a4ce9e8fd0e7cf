"""Every use of faust's and aiokafka's private API, in one place, each with what it works around.

faust-streaming 0.15 and aiokafka 0.14 (pinned) give no public way to do five things the
processor needs; each is done here and nowhere else, and ``tests/test_faust_adapter.py``
fails loudly when an upgrade removes an attribute this module relies on:

1. Recover tables to the changelog's true end. faust recovers a table by reading its
   changelog up to ``consumer.highwaters()``, which its aiokafka driver answers with
   ListOffsets "latest" (``AIOKafkaConsumerThread._highwaters``). The local broker (Tansu)
   answers that with the first offset of the last produced batch + 1, so a restarted
   worker stopped one batch short and lost those updates (PLATFORM-NOTES, quirk 1).
   :class:`TrueEndTransport` overrides ``_highwaters`` (only table recovery calls it) with
   :func:`true_end_offsets`: a separate consumer seeked to ``max(reported - 1, 0)`` fetches
   once, and the fetch response's high-watermark is the end (on Apache Kafka the same
   answer, one extra fetch per recovered partition).
2. The table's changelog codec. A faust Table takes a value *type*; the processor's records
   need a codec (:data:`CHANGELOG_CODEC`), set after construction, so the changelog topic
   made in ``Table.__init__`` is made again (``Table._new_changelog_topic``).
3. Throughput: one aiokafka batch per topic partition (``create_batch``/``send_batch`` on
   the producer behind ``app.producer._ensure_producer()``) instead of a send and a future
   per record; and the table's memory written directly (``table.data.data``,
   ``table.data._key_partition``), the entries being written to the changelog by the batch.
4. Metadata for a topic just created: ``AIOKafkaConsumer._client.force_metadata_update()``.
5. Delivering a fetched message to its stream without four tasks: the consumer's
   ``wait_first`` (a mode ``Service`` method, called by faust's drain loop for every
   message) runs the delivery at once, as far as it goes without waiting (:func:`eager_first`).

:class:`FaustLog` implements :class:`.commit.Log` for a real worker with them.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any, Awaitable, Callable, Generator, Iterable, List, Mapping, MutableMapping

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.serializers.codecs import Codec
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.services import WaitResults

from imbill.bus.partitioner import partition_for
from imbill.domain.errors import BrokerError
from imbill.streams.changelog import Entry, Flushed, Seen, decode_record, encode_record

__all__ = ["true_end_offsets", "TrueEndTransport", "install_true_end_offsets", "CHANGELOG_CODEC",
           "use_changelog_codec", "FaustLog", "force_metadata_update", "eager_first"]

log = logging.getLogger(__name__)


# -- 1. recovering tables to the changelog's true end ---------------------------------------------

async def true_end_offsets(bootstrap_servers: str | list[str], reported: Mapping[Any, int], *,
                           timeout: float = 10.0, client_id: str = "imbill-end-offsets") -> dict[Any, int]:
    """The fetch high-watermark of each partition in ``reported`` (partition -> the end
    that ListOffsets latest reported for it; 0 means an empty partition)."""
    ends = {tp: 0 for tp, end in reported.items() if not end}
    pending = {tp: end for tp, end in reported.items() if end}
    if not pending:
        return ends
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, client_id=client_id,
                             enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=50)
    await probe.start()
    try:
        tps = {tp: TopicPartition(tp[0], tp[1]) for tp in pending}
        probe.assign(list(tps.values()))
        for tp, end in pending.items():
            probe.seek(tps[tp], max(end - 1, 0))
        ends.update(await _fetch_highwaters(probe, tps, timeout))
    finally:
        await probe.stop()
    return ends


async def _fetch_highwaters(probe: AIOKafkaConsumer, tps: Mapping[Any, TopicPartition],
                            timeout: float) -> dict[Any, int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = {tp: probe.highwater(ktp) for tp, ktp in tps.items()}
        if all(end is not None for end in found.values()):
            return found
        if loop.time() > deadline:
            missing = sorted(str(tp) for tp, end in found.items() if end is None)
            raise BrokerError(f"no fetch response with a high-watermark for {', '.join(missing)}")
        await probe.getmany(timeout_ms=100, max_records=1)


class _TrueEndConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def _highwaters(self, partitions: List[TP]) -> Mapping[TP, int]:
        """Private: the one method behind ``consumer.highwaters()`` (Tansu ListOffsets quirk)."""
        if self.consumer.in_transaction:  # read_committed: the last stable offset, as faust does
            return await super()._highwaters(partitions)
        reported = await self._ensure_consumer().end_offsets(partitions)  # private: the thread's consumer
        servers = faust_aiokafka.server_list(self.transport.url, self.transport.default_port)
        ends = await true_end_offsets(servers, reported, timeout=self.app.conf.broker_request_timeout)
        if ends != dict(reported):
            log.info("changelog ends by fetch %s (ListOffsets latest said %s)", _show(ends), _show(reported))
        return ends


class _TrueEndConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        """Private: the factory of the consumer thread, the only way to put ours in."""
        return _TrueEndConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        """Private: faust's drain loop (``Consumer._drain_messages``, the only caller on a
        consumer) awaits ``wait_first(callback(message), suspend_flow.wait())`` for every
        message: four tasks each, ~70 us of CPU per message on these machines. See 5."""
        if timeout is None and len(coros) == 2 and not (
                self._stopped.is_set() or self._crashed.is_set() or self.suspend_flow.is_set()):
            return await eager_first(super().wait_first, *coros)
        return await super().wait_first(*coros, timeout=timeout)


class TrueEndTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport, recovering tables to the fetch high-watermark."""

    Consumer = _TrueEndConsumer


def install_true_end_offsets(app: faust.App) -> None:
    """Make ``app`` (a faust App on a ``kafka://`` broker, not started yet) recover its
    tables to the true end of their changelogs."""
    app.transport = TrueEndTransport(app.conf.broker_consumer, app)


def _show(ends: Mapping[Any, int]) -> str:
    return ", ".join(f"{tp[0]}[{tp[1]}]={end}" for tp, end in sorted(ends.items()))


# -- 2. the table's changelog codec ---------------------------------------------------------------

class _ChangelogCodec(Codec):
    """faust codecs implement the private ``_dumps``/``_loads`` (its documented extension point)."""

    def _dumps(self, obj: Any) -> bytes:
        return encode_record(obj)

    def _loads(self, s: bytes) -> Any:
        return decode_record(s)


CHANGELOG_CODEC = _ChangelogCodec()
"""The faust value codec of the processor's table (recovery decodes with it)."""


def use_changelog_codec(table: Any) -> None:
    """Give ``table`` the changelog codec: a codec, not a type, so set after construction,
    and the changelog topic that ``Table.__init__`` made is made again with it."""
    table.value_serializer = CHANGELOG_CODEC
    table.changelog_topic = table._new_changelog_topic()  # private: no public way to remake it


# -- 3. the commit protocol's port for a real worker ----------------------------------------------

class FaustLog:
    """:class:`.commit.Log` over a faust app, its table and its producer."""

    def __init__(self, app: faust.App, table: Any) -> None:
        self.app, self.table = app, table
        self._sink: _Sink | None = None

    @property
    def records(self) -> MutableMapping[bytes, Any]:
        return self.table.data.data  # the memory store's dict: the table's values, no per-key event

    def keep(self, partition: int, key: bytes, record: Entry | Flushed | Seen) -> None:
        self.table.data.data[key] = record
        self.table.data._key_partition[key] = partition  # private: how faust drops revoked partitions' keys

    def forget(self, key: bytes) -> None:
        self.table.data.data.pop(key, None)
        self.table.data._key_partition.pop(key, None)

    async def write_changelog(self, partition: int, key: bytes, value: bytes | None) -> None:
        await self._open().add(self.table.changelog_topic_name, partition, key, value)

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        await self._open().add(topic, None, key, value)

    async def acknowledged(self) -> None:
        sink, self._sink = self._open(), None
        await sink.acknowledged()

    async def enqueued(self) -> None:
        sink, self._sink = self._open(), None
        await sink.enqueued()

    def _open(self) -> _Sink:
        if self._sink is None:
            self._sink = _Sink(self.app.producer._ensure_producer())  # private: the aiokafka producer
        return self._sink

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        await self.app.consumer.seek_wait({TP(topic, partition): offset})

    def assignment(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self.app.consumer.assignment()}

    async def earliest_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        found = await self.app.consumer.earliest_offsets(*(TP(t, p) for t, p in partitions))
        return {(tp.topic, tp.partition): offset for tp, offset in found.items()}

    def highwater(self, topic: str, partition: int) -> int | None:
        return self.app.consumer.highwater(TP(topic, partition))

    async def end_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The true end of each partition: ``consumer.highwaters`` goes through the consumer
        thread installed above, which answers with the fetch high-watermark."""
        tps = [TP(t, p) for t, p in partitions]
        ends = await self.app.consumer.highwaters(*tps) if tps else {}
        return {(tp.topic, tp.partition): end for tp, end in ends.items()}

    async def position(self, topic: str, partition: int) -> int | None:
        return await self.app.consumer.position(TP(topic, partition))


class _Sink:
    """Records appended to one aiokafka batch per topic partition: far cheaper per record
    than a send (and a future) each. Keys are partitioned as the default partitioner does
    (:func:`imbill.bus.partitioner.partition_for`), so records land where kafka-python,
    aiokafka or the Java client put them."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._open: dict[tuple[str, int], Any] = {}
        self._sent: list[asyncio.Future] = []

    async def add(self, topic: str, partition: int | None, key: bytes, value: bytes | None) -> None:
        if partition is None:
            partition = await self._partition_of(topic, key)
        batch = self._open.get((topic, partition))
        if batch is None:
            batch = self._open[topic, partition] = self._producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:  # full
            self._sent.append(await self._producer.send_batch(batch, topic, partition=partition))
            batch = self._open[topic, partition] = self._producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)

    async def _partition_of(self, topic: str, key: bytes) -> int:
        count = _PARTITION_COUNTS.get(topic)
        if count is None:
            count = _PARTITION_COUNTS[topic] = len(await self._producer.partitions_for(topic))
        return partition_for(key, count)

    async def enqueued(self) -> list[asyncio.Future]:
        """Hand every open batch to the producer; the futures of their acknowledgements."""
        for (topic, partition), batch in self._open.items():
            self._sent.append(await self._producer.send_batch(batch, topic, partition=partition))
        self._open.clear()
        return self._sent

    async def acknowledged(self) -> None:
        await asyncio.gather(*await self.enqueued())


_PARTITION_COUNTS: dict[str, int] = {}


# -- 4. metadata for a topic just created ---------------------------------------------------------

async def force_metadata_update(consumer: AIOKafkaConsumer) -> None:
    """Ask the broker for metadata now: ``partitions_for_topic`` only reads the cache, and a
    topic created a moment ago is not in it yet."""
    await consumer._client.force_metadata_update()  # private: the consumer's client


# -- 5. delivering a message without four tasks ---------------------------------------------------

async def eager_first(wait_first: Callable[..., Awaitable[Any]], first: Any, other: Any) -> Any:
    """``await wait_first(first, other)`` (mode's: the first of two awaitables to finish,
    the other cancelled), with the coroutine ``first`` run at once as far as it goes
    without waiting. Delivering a message to a stream's queue with room finishes there:
    then ``other`` is never started and no task is made. A ``first`` that has to wait (a
    full queue, a flow being suspended) is raced against ``other`` as before."""
    if not (asyncio.iscoroutine(first) and asyncio.iscoroutine(other)):
        return await wait_first(first, other)
    try:
        pending = first.send(None)
    except StopIteration as finished:
        other.close()
        return WaitResults([first], [finished.value], False)
    except BaseException:
        other.close()
        raise
    return await wait_first(_resumed(first, pending), other)


async def _resumed(coro: Any, pending: Any) -> Any:
    """The rest of ``coro``, which has already yielded ``pending`` to the event loop."""
    return await _Resume(coro, pending)


class _Resume:
    """Awaiting it drives a started coroutine on exactly as ``yield from`` would: what it
    yielded goes up to the task, what the task sends or throws goes down to it."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Any, pending: Any) -> None:
        self.coro, self.pending = coro, pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self.coro, self.pending
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - thrown in by the task: the coroutine's to handle
                step = partial(coro.throw, exc)
            else:
                step = partial(coro.send, sent)
            try:
                pending = step()
            except StopIteration as finished:
                return finished.value
