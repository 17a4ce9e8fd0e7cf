"""The processor worker (``imbill process``): attempts and payments in; charges, rejections,
balance and service-status events out.

    python -m imbill.streams.processor --bootstrap HOST:PORT [--topic-prefix P] [--worker-id W]
                                       [--data-dir DIR] [--batch-size N] [--session-timeout S]

Thin faust wiring around the rules (:mod:`.rules.rating`, :mod:`.rules.balance`). Each agent
takes a batch of records, decides every record with no I/O (:func:`bill_attempts`,
:func:`top_up_payments`) and then commits the batch in three steps, each acknowledged
before the next starts:

1. the changelog entry of every key the batch touched: the account's balance state, the
   offsets decided for the key and the outbox, the encoded events those decisions caused;
2. the outboxes, to the charge, rejection, balance-event and service-status topics;
3. per partition, a Flushed marker: every offset up to it is decided and its events are
   on their topics (its own ack is not awaited). Faust commits the input offsets later
   (take_events acks a batch when the next one is asked for).

Kafka transactions are not available, so the entries are the commit point: once a key's
entry is acknowledged its decisions are final. A worker that takes over a partition sends
again every outbox the partition's marker does not cover (same bytes, same ids), and skips
the records at or below a key's decided offset when they are delivered again. An attempt
is therefore decided once, even if a payment for the account arrives in between on replay,
and a charge id never carries two amounts. One lock around deciding and steps 1-3 keeps the
two agents from writing state that holds the other's unacknowledged decisions.

Records are decided strictly in offset order per partition, from the marker on: faust
drops records in flight when a rebalance suspends its flow, and may commit past them, so a
record that arrives after a gap is left and the partition is read again from the gap
(:meth:`Batch.admit`). While a rebalance is under way nothing is decided.

Every worker folds the whole config topic itself (:class:`.config_reader.ConfigReader`) and
catches up before deciding each batch. Tables are recovered to the changelog's true end
(:func:`.recovery.install_true_end_offsets`), which the local broker misreports. A batch
that cannot be committed stops the worker at once, as a crash would.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, MutableMapping, Sequence

import faust
from faust.types import TP

from imbill.bus.partitioner import partition_for
from imbill.domain.errors import SchemaError
from imbill.schemas.codec import decode_as, encode
from imbill.settings import Settings, load_settings
from imbill.domain.config import ConfigState
from imbill.streams.config_reader import ConfigReader
from imbill.streams.recovery import (CHANGELOG_CODEC, Entry, Flushed, Output, encode_record, flushed_key,
                                     install_true_end_offsets, pending_outboxes)
from imbill.domain.balance import AccountState, bill, open_account, payment_rejected, top_up
from imbill.domain.rating import (REASON_CODES, Rated, Refused, account_push_events, charge_record,
                                         rate_attempt, rejection_record)
from imbill.schemas.topics import ACCOUNT_PARTITIONS, Topics

__all__ = ["Record", "Batch", "bill_attempts", "top_up_payments", "Processor", "create_app", "run_worker",
           "main", "TABLE_NAME"]

log = logging.getLogger(__name__)

TABLE_NAME = "account-state"
STALL_SECONDS = 5.0
TOPIC_KINDS = {"Charge": "charges", "Rejection": "rejections", "PaymentRejected": "rejections",
               "BalanceChanged": "balances",
               "ServiceStatusChanged": "service_status"}

Record = tuple[int, int, "bytes | None", "bytes | None"]
"""An input record: (partition, offset, key, value)."""


# -- deciding a batch: no I/O ------------------------------------------------------------------

@dataclass
class Batch:
    """The decisions of one batch: the new entry of every key it touched, how far each
    partition got, and the partitions whose records came with a gap."""

    source: str
    expected: Mapping[int, int]
    """Partition -> the next offset to decide (every offset below it is decided)."""
    entries: dict[bytes, Entry] = field(default_factory=dict)
    next_offsets: dict[int, int] = field(default_factory=dict)
    gaps: dict[int, int] = field(default_factory=dict)
    """Partition -> the offset to read it again from: a record after it came first."""

    def admit(self, partition: int, offset: int) -> bool:
        """Whether to decide the record at ``offset``: only the next one of its partition.

        Offsets below it are decided already (delivered again after a restart or a
        rebalance). An offset above it means records were not delivered (faust drops the
        records in flight when a rebalance suspends its flow): the rest of the partition
        is left for after a rewind, never decided out of order.
        """
        want = self.next_offsets.get(partition, self.expected.get(partition))
        if want is None or partition in self.gaps:
            return False  # not a partition this worker owns now, or one already left
        if offset != want:
            if offset > want:
                self.gaps[partition] = want
            return False
        self.next_offsets[partition] = offset + 1
        return True

    def touch(self, committed: Mapping[bytes, Any], key: bytes, partition: int, offset: int) -> Entry:
        entry = self.entries.get(key)
        if entry is None:
            old = committed.get(key)
            entry = Entry(None, partition) if type(old) is not Entry else Entry(
                old.state, partition, old.attempts_decided, old.payments_decided)
            self.entries[key] = entry
        entry.source, entry.source_offset = self.source, offset
        return entry


def entry_key(key: bytes | None, partition: int) -> bytes:
    """The changelog key of an input key (NUL-prefixed keys are the processor's own)."""
    if key is None:
        return b"\x00nokey/%d" % partition
    return b"\x00raw/" + key if key[:1] == b"\x00" else key


def _decided(committed: Mapping[bytes, Any], batch: Batch, key: bytes, offset: int, attr: str) -> bool:
    """Decided by a batch whose entries were written but whose marker was not (a crash)."""
    entry = batch.entries.get(key) or committed.get(key)
    return type(entry) is Entry and offset <= getattr(entry, attr)


def bill_attempts(committed: Mapping[bytes, Any], config: ConfigState, records: Iterable[Record], *,
                  now: datetime, expected: Mapping[int, int]) -> Batch:
    """Rate and bill MessageAttempt records against ``committed`` entries (not modified)."""
    return _decide(Batch("a", expected), "attempts_decided", _attempt_outcome, committed, config, records, now)


def top_up_payments(committed: Mapping[bytes, Any], config: ConfigState, records: Iterable[Record], *,
                    now: datetime, expected: Mapping[int, int]) -> Batch:
    """Apply Payment records to the balances of ``committed`` entries (not modified)."""
    return _decide(Batch("p", expected), "payments_decided", _payment_outcome, committed, config, records, now)


def _decide(batch: Batch, decided: str, outcome: Callable[..., Iterable[Output]], committed: Mapping[bytes, Any],
            config: ConfigState, records: Iterable[Record], now: datetime) -> Batch:
    """Each admitted record not yet decided for its key: its outcome joins the key's outbox."""
    for partition, offset, raw_key, value in records:
        if not batch.admit(partition, offset):
            continue
        key = entry_key(raw_key, partition)
        if _decided(committed, batch, key, offset, decided):
            continue
        entry = batch.touch(committed, key, partition, offset)
        setattr(entry, decided, offset)
        entry.outbox.extend(outcome(entry, raw_key, partition, offset, value, config, now))
    return batch


def _attempt_outcome(entry: Entry, key: bytes | None, partition: int, offset: int, value: bytes | None,
                     config: ConfigState, now: datetime) -> list[Output]:
    try:
        attempt = decode_as("MessageAttempt", value or b"")
    except SchemaError as exc:
        malformed = {"attempt_id": f"undecodable-{partition}-{offset}"}
        return [_rejection(malformed, Refused("malformed_attempt", str(exc), ""), now, key)]
    try:
        return _rate_and_bill(entry, key, offset, attempt, config, now)
    except Exception as exc:  # a rule failing on one record must not stop the partition
        log.exception("attempt %s[%d]@%d could not be billed", attempt.get("attempt_id"), partition, offset)
        return [_rejection(attempt, Refused("malformed_attempt", f"billing failed: {exc!r}", ""), now, key)]


def _rate_and_bill(entry: Entry, key: bytes | None, offset: int, attempt: dict[str, Any], config: ConfigState,
                   now: datetime) -> list[Output]:
    rated = rate_attempt(attempt, config, rated_at=now)
    if type(rated) is Refused:
        return [_rejection(attempt, rated, now, key)]
    if rated.direction != "outgoing":  # free, billed to the recipient, whose balance is elsewhere
        return [_event("Charge", charge_record(attempt, rated, now))]
    if _account_key(rated.environment, rated.account) != key:
        refused = Refused("malformed_attempt", f"the record key {key!r} does not name the sending account",
                          rated.account)
        return [_rejection(attempt, refused, now, key)]
    result = bill(entry.state or _opened(config, rated), rated, attempt_id=attempt["attempt_id"], offset=offset,
                  occurred_at=now)
    if result.outcome == "charged":
        outcome = [_event("Charge", charge_record(attempt, rated, now))]
    elif result.outcome in ("duplicate", "already_applied"):
        outcome = []
    else:
        refused = Refused(result.outcome, REASON_CODES.get(result.outcome, result.outcome), rated.account)
        outcome = [_rejection(attempt, refused, now, key)]
    outcome += [_event(name, record) for name, record in result.events]
    entry.state = result.state  # only once every event of the decision is encoded
    return outcome


def _opened(config: ConfigState, rated: Rated) -> AccountState:
    """A balance is always kept in the customer's currency, whichever event opens it."""
    return _opened_account(config, rated.environment, rated.account, fallback_currency=rated.currency)


def _payment_outcome(entry: Entry, key: bytes | None, partition: int, offset: int, value: bytes | None,
                     config: ConfigState, now: datetime) -> list[Output]:
    try:
        payment = decode_as("Payment", value or b"")
    except SchemaError as exc:
        log.warning("payment %d@%d not applied: %s", partition, offset, exc)
        return []
    environment, account = payment["environment"], payment["account"]
    if _account_key(environment, account) != key:
        log.warning("payment %s not applied: record key %r is not %s/%s", payment["payment_id"], key,
                    environment, account)
        return []
    state = entry.state or _opened_account(config, environment, account)
    if state is None:
        log.warning("payment %s not applied: %s is no account of environment %s", payment["payment_id"],
                    account, environment)
        return [_event(*payment_rejected(payment, "unknown_account",
                                         f"account {account} does not exist in environment {environment}", now))]
    state, events = top_up(state, payment, offset=offset, occurred_at=now,
                           push_events=account_push_events(config, environment, account))
    outcome = [_event(name, record) for name, record in events]
    entry.state = state
    return outcome


def _opened_account(config: ConfigState, environment: str, account: str, *,
                    fallback_currency: str = "") -> AccountState | None:
    env = config.environments.get(environment)
    found = env.accounts.get(account) if env is not None else None
    if found is None:
        return None
    customer = env.customers.get(found.customer)
    return open_account(found, customer.currency if customer is not None else fallback_currency)


def _account_key(environment: str, account: str) -> bytes:
    return f"{environment}/{account}".encode()


def _event(name: str, record: Mapping[str, Any]) -> Output:
    return TOPIC_KINDS[name], _account_key(record["environment"], record["account"]), encode(name, record)


def _rejection(attempt: Mapping[str, Any], refused: Refused, now: datetime, key: bytes | None) -> Output:
    record = rejection_record(attempt, refused, now)
    out_key = _account_key(record["environment"], refused.account) if refused.account else key
    return "rejections", out_key or b"", encode("Rejection", record)


# -- committing a batch: faust and Kafka --------------------------------------------------------

class Processor:
    """One worker's state and the I/O of committing batches (see the module doc)."""

    def __init__(self, app: faust.App, table: Any, reader: ConfigReader, topics: Topics) -> None:
        self.app, self.table, self.reader, self.topics = app, table, reader, topics
        self.lock = asyncio.Lock()
        self.ready = False
        """Set once the table is recovered for the current assignment, cleared on revocation."""
        self.partitions: set[int] = set()
        self._topic_names = {kind: getattr(topics, kind) for kind in TOPIC_KINDS.values()}
        self._sources = {"a": topics.attempts, "p": topics.payments}
        self._rewound: dict[tuple[str, int], tuple[int, float]] = {}
        self._progress: dict[tuple[str, int], int] = {}
        self.batches = 0

    @property
    def records(self) -> MutableMapping[bytes, Any]:
        """The table's in-memory data: changelog key -> Entry or Flushed."""
        return self.table.data.data

    async def attempts(self, events: Sequence[Any]) -> None:
        await self._process("a", events, bill_attempts)

    async def payments(self, events: Sequence[Any]) -> None:
        await self._process("p", events, top_up_payments)

    async def _process(self, source: str, events: Sequence[Any], decide: Callable[..., Batch]) -> None:
        async with self.lock:
            if not self.ready:  # a rebalance is under way: these are read again after recovery
                return
            try:
                await self._commit(source, events, decide)
            except Exception:  # noqa: BLE001 - any failure leaves memory ahead of the changelog
                log.critical("a batch could not be committed; stopping at once, the next owner of "
                             "these partitions recovers them from the changelog", exc_info=True)
                logging.shutdown()
                os._exit(70)

    async def _commit(self, source: str, events: Sequence[Any], decide: Callable[..., Batch]) -> None:
        config = await self.reader.catch_up()
        records = [(m.partition, m.offset, m.key, m.value) for m in (e.message for e in events)]
        batch = decide(self.records, config, records, now=datetime.now(timezone.utc),
                       expected=self._expected(source))
        await self._write_entries(batch.entries)
        await self._send_outboxes(batch.entries.values())
        decided = {partition: offset - 1 for partition, offset in batch.next_offsets.items()}
        await self._mark_flushed(source, decided, batch.entries.values())
        await self._rewind(source, batch.gaps)
        self.batches += 1

    def _expected(self, source: str) -> dict[int, int]:
        markers = {p: self.records.get(flushed_key(p)) for p in self.partitions}
        return {p: (m.attempts if source == "a" else m.payments) + 1 for p, m in markers.items()
                if type(m) is Flushed}

    async def _write_entries(self, entries: Mapping[bytes, Entry]) -> None:
        records, key_partitions = self.records, self.table.data._key_partition
        sink = self._sink()
        for key, entry in entries.items():
            await sink.add(self.table.changelog_topic_name, entry.partition, key, encode_record(entry))
            records[key] = entry
            key_partitions[key] = entry.partition
        await sink.acknowledged()

    async def _send_outboxes(self, entries: Iterable[Entry]) -> None:
        sink, names = self._sink(), self._topic_names
        for entry in entries:
            for kind, key, value in entry.outbox:
                await sink.add(names[kind], None, key, value)
        await sink.acknowledged()

    async def _mark_flushed(self, source: str, decided: Mapping[int, int], entries: Iterable[Entry]) -> None:
        """Advance the partitions' markers to ``decided`` (every offset up to it is decided
        and its events acknowledged); then outboxes are no longer kept in memory."""
        records, sink = self.records, self._sink()
        for partition, offset in decided.items():
            key = flushed_key(partition)
            old = records.get(key)
            marker = Flushed(partition, old.attempts, old.payments) if type(old) is Flushed else Flushed(partition)
            if source == "a":
                marker.attempts = max(marker.attempts, offset)
            else:
                marker.payments = max(marker.payments, offset)
            records[key] = marker
            self.table.data._key_partition[key] = partition
            await sink.add(self.table.changelog_topic_name, partition, key, encode_record(marker))
        await sink.enqueued()  # acks not awaited: a lost marker means replaying and re-sending more
        for entry in entries:
            entry.outbox = []  # on its topics now; the changelog keeps it until a marker covers it

    async def _rewind(self, source: str, gaps: Mapping[int, int]) -> None:
        topic, now = self._sources[source], time.monotonic()
        for partition, offset in gaps.items():
            last = self._rewound.get((topic, partition))
            if last is not None and last[0] == offset and now - last[1] < STALL_SECONDS:
                continue  # records fetched before the last rewind are still arriving
            await self._seek(topic, partition, offset, "a record after offset %d came first")

    async def _seek(self, topic: str, partition: int, offset: int, why: str) -> None:
        self._rewound[topic, partition] = (offset, time.monotonic())
        log.info(f"%s[%d]: {why}; reading again from it", topic, partition, offset)
        await self.app.consumer.seek_wait({TP(topic, partition): offset})

    async def unstall(self) -> None:
        """Every few seconds: read again a partition that made no progress since the last
        look although faust has read past its next offset and there are records to decide
        (faust dropped the tail it was fetching when a rebalance suspended its flow and
        committed past it, or records fetched before a rewind overtook it)."""
        async with self.lock:
            if not self.ready:
                return
            for source, topic in self._sources.items():
                for partition, offset in self._expected(source).items():
                    tp = TP(topic, partition)
                    seen = self._progress.get((topic, partition))
                    self._progress[topic, partition] = offset
                    if seen == offset and await self._fetched_past(tp, offset):
                        await self._seek(topic, partition, offset, "no progress towards offset %d")

    async def _fetched_past(self, tp: TP, offset: int) -> bool:
        """Whether there are records from ``offset`` on and the consumer has fetched past it."""
        consumer = self.app.consumer
        try:
            highwater = consumer.highwater(tp)
            position = await consumer.position(tp)
        except Exception:  # noqa: BLE001 - unassigned in a rebalance that just began
            return False
        return highwater is not None and highwater > offset and position is not None and position > offset

    def _sink(self) -> _Sink:
        return _Sink(self.app.producer._ensure_producer())

    async def recovered(self) -> None:
        """After the table is recovered for a new assignment: start markers where the
        partitions begin, send the outboxes a previous owner may not have delivered."""
        async with self.lock:
            assigned = [tp for tp in self.app.consumer.assignment() if tp.topic in self._sources.values()]
            partitions = {tp.partition for tp in assigned}
            earliest = await self.app.consumer.earliest_offsets(*assigned) if assigned else {}
            for partition in partitions - {p for p in partitions if flushed_key(p) in self.records}:
                start = {topic: earliest.get(TP(topic, partition)) or 0 for topic in self._sources.values()}
                self.records[flushed_key(partition)] = Flushed(partition, start[self.topics.attempts] - 1,
                                                               start[self.topics.payments] - 1)
                self.table.data._key_partition[flushed_key(partition)] = partition
            pending = pending_outboxes(self.records, partitions)
            if pending:
                log.info("re-sending the outboxes of %d keys on partitions %s", len(pending), sorted(partitions))
                await self._send_outboxes(pending)
            for entry in self.records.values():
                if type(entry) is Entry:
                    entry.outbox = []  # a crash before the markers move only sends them again
            self.partitions, self.ready = partitions, True

    async def revoked(self, *args: Any, **kwargs: Any) -> None:
        self.ready = False
        self._progress.clear()


class _Sink:
    """Records appended to one aiokafka batch per topic partition: far cheaper per record
    than a send (and a future) each. Keys are partitioned as the default partitioner does
    (murmur2), so records land where kafka-python, aiokafka or the Java client put them."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._open: dict[tuple[str, int], Any] = {}
        self._sent: list[asyncio.Future] = []

    async def add(self, topic: str, partition: int | None, key: bytes, value: bytes) -> None:
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


class Batches:
    """A stream's events in batches of at most ``size`` (or what came ``within`` seconds),
    handled one batch at a time and acknowledged after it, like ``take_events``, but while
    one batch is handled the next one fills: faust's delivery of events runs while the
    handler waits for the broker (config catch-up, changelog and output acks)."""

    def __init__(self, stream: Any, handle: Callable[[Sequence[Any]], Any], size: int, within: float) -> None:
        self.stream, self.handle, self.size, self.within = stream.noack(), handle, size, within
        self._buffer: list[Any] = []
        self._running: asyncio.Future | None = None
        self._handing = asyncio.Lock()

    async def run(self) -> None:
        flusher = asyncio.ensure_future(self._flush_every())
        try:
            async for event in self.stream.events():
                self._buffer.append(event)
                if len(self._buffer) >= self.size:
                    await self._hand_over()
        finally:
            flusher.cancel()

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self.within)
            if self._buffer and (self._running is None or self._running.done()):
                await self._hand_over()

    async def _hand_over(self) -> None:
        async with self._handing:
            if self._running is not None:
                await self._running  # one batch at a time, in order
            if self._buffer:
                batch, self._buffer = self._buffer, []
                self._running = asyncio.ensure_future(self._handled(batch))

    async def _handled(self, batch: list[Any]) -> None:
        try:
            await self.handle(batch)
        except Exception:  # noqa: BLE001 - never ack what was not handled
            log.critical("a batch could not be handled; stopping at once", exc_info=True)
            logging.shutdown()
            os._exit(70)
        for event in batch:
            await self.stream.ack(event)


# -- the faust app ---------------------------------------------------------------------------

def create_app(settings: Settings, *, worker_id: str | None = None, batch_size: int = 4000,
               batch_within: float = 0.2, session_timeout: float = 6.0) -> faust.App:
    """The processor app: its id is ``<topic prefix><processor id>``, so its balance table's
    changelog is ``<prefix>imbill-processor-account-state-changelog`` (the catalogue's).

    ``session_timeout`` (seconds) is how long the group waits for a worker that died
    without leaving before its partitions move (about twice that on the local broker)."""
    topics = settings.topics
    worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
    datadir = settings.data_dir / "processor" / worker_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.topic_prefix + settings.processor_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        broker_client_id=f"imbill-processor-{worker_id}",
        store="memory://",
        datadir=str(datadir),
        topic_partitions=ACCOUNT_PARTITIONS,
        topic_disable_leader=True,
        table_standby_replicas=0,
        web_enabled=False,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=0.5,
        broker_rebalance_timeout=session_timeout,
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_linger=0.005,
        producer_max_batch_size=262_144,
        stream_buffer_maxsize=2 * batch_size,
    )
    install_true_end_offsets(app)
    table = app.Table(TABLE_NAME, default=None, partitions=ACCOUNT_PARTITIONS, key_type=bytes,
                      help="balance state and outbox per attempts/payments key")
    table.value_serializer = CHANGELOG_CODEC  # a codec, not a type: so set here, and the
    table.changelog_topic = table._new_changelog_topic()  # topic made in __init__ made again
    reader = ConfigReader(settings.bootstrap_servers.split(","), topics.config,
                          client_id=f"imbill-config-reader-{worker_id}")
    processor = Processor(app, table, reader, topics)
    table.on_recover(processor.recovered)
    app.on_partitions_revoked.connect(processor.revoked)

    def source(name: str) -> Any:
        return app.topic(name, key_type=bytes, value_type=bytes, partitions=ACCOUNT_PARTITIONS,
                         value_serializer="raw", key_serializer="raw")

    @app.agent(source(topics.attempts), name="bill-attempts")
    async def _bill_attempts(stream: Any) -> None:
        await Batches(stream, processor.attempts, batch_size, batch_within).run()

    @app.agent(source(topics.payments), name="top-up-payments")
    async def _top_up_payments(stream: Any) -> None:
        await Batches(stream, processor.payments, batch_size, batch_within).run()

    @app.timer(STALL_SECONDS)
    async def _unstall() -> None:
        await processor.unstall()

    @app.on_before_shutdown.connect
    async def _stop_reader(app: Any, **kwargs: Any) -> None:
        await reader.stop()

    return app


def run_worker(settings: Settings, *, worker_id: str | None = None, loglevel: str = "info",
               batch_size: int = 4000, session_timeout: float = 6.0) -> None:
    """Run one processor worker until SIGINT/SIGTERM (several may share the partitions)."""
    try:
        import mode.loop

        mode.loop.use("uvloop")
    except ImportError:  # uvloop is optional
        pass
    app = create_app(settings, worker_id=worker_id, batch_size=batch_size, session_timeout=session_timeout)
    gc.set_threshold(100_000, 50, 100)  # faust makes several objects per event: collect less often
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.spinner = None  # faust's spinner sets the root logger to DEBUG: every debug call costs
    worker.execute_from_commandline()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="imbill process", description="Run a processor worker: message "
                                     "attempts and payments in; charges, rejections, balance and "
                                     "service-status events out. Several workers share the partitions.")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (host:port[,host:port])")
    parser.add_argument("--topic-prefix", help="prefix of every topic name and of the consumer group")
    parser.add_argument("--worker-id", help="this worker's name (default: host-pid)")
    parser.add_argument("--data-dir", help="directory for the worker's local files")
    parser.add_argument("--batch-size", type=int, default=4000, help="most records decided per batch")
    parser.add_argument("--session-timeout", type=float, default=6.0,
                        help="seconds before the group gives up on a worker that died (default 6)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    settings = load_settings(bootstrap_servers=args.bootstrap, topic_prefix=args.topic_prefix,
                             data_dir=Path(args.data_dir) if args.data_dir else None)
    run_worker(settings, worker_id=args.worker_id, loglevel=args.log_level, batch_size=args.batch_size,
               session_timeout=args.session_timeout)


if __name__ == "__main__":
    main()
