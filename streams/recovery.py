"""Recovering a table from its changelog to the changelog's true end.

faust recovers a table by reading its changelog partitions up to the offsets that
``consumer.highwaters()`` returns, and its aiokafka driver answers that with ListOffsets
"latest" (``AIOKafkaConsumer.end_offsets``). The local broker (Tansu) answers ListOffsets
latest with the first offset of the last produced batch + 1, so a worker restarted after
multi-record batches stopped its recovery one batch short and lost those updates
(PLATFORM-NOTES, quirk 1).

:func:`true_end_offsets` finds the end that a fetch sees instead: for each non-empty
partition a separate consumer is seeked to ``max(reported - 1, 0)`` (the first record of
the last batch on Tansu, the last record on Apache Kafka), fetches once, and the fetch
response's high-watermark is the end. A reported end of 0 means an empty partition.

:func:`install_true_end_offsets` puts it under faust with the narrowest hook the aiokafka
driver has: a Transport whose Consumer's thread overrides ``_highwaters`` (the one method
behind ``consumer.highwaters()``, which only table recovery calls). On Apache Kafka the
answer is the same as ListOffsets latest, one extra fetch per recovered partition.

The changelog records themselves (:class:`Entry` per Kafka key, :class:`Flushed` per
partition, JSON with decimals as strings) are defined here too, with
:func:`pending_outboxes`: what a worker that took over a partition must re-send.

An Entry is the processor's commit record for one key of the attempts and payments
topics: the account's balance state (None when the key is no account), the offsets of the
last attempt and payment decided for the key, and the outbox: the Avro-encoded events
those decisions caused, as the topic kind, key and value to send. The processor writes
the entries of a batch, awaits their acks, then sends the outboxes, awaits those, then
writes a Flushed marker per partition: the attempt and payment offsets up to which every
record is decided and its events are on their topics. The next record a worker decides
on a partition is the one after its marker; an outbox whose source offset is above the
marker may be missing downstream and is sent again (same bytes, same ids).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterable, List, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.serializers.codecs import Codec
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from imbill.domain.errors import BrokerError
from imbill.domain.balance import AccountState

__all__ = ["true_end_offsets", "install_true_end_offsets", "TrueEndTransport", "Entry", "Flushed", "Output",
           "flushed_key", "encode_record", "decode_record", "CHANGELOG_CODEC", "pending_outboxes"]

log = logging.getLogger(__name__)


async def true_end_offsets(bootstrap_servers: str | list[str], reported: Mapping[Any, int], *,
                           timeout: float = 10.0, client_id: str = "imbill-end-offsets") -> dict[Any, int]:
    """The fetch high-watermark of each partition in ``reported`` (partition -> the end
    that ListOffsets latest reported for it)."""
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
        if self.consumer.in_transaction:  # read_committed: the last stable offset, as faust does
            return await super()._highwaters(partitions)
        reported = await self._ensure_consumer().end_offsets(partitions)
        servers = faust_aiokafka.server_list(self.transport.url, self.transport.default_port)
        ends = await true_end_offsets(servers, reported, timeout=self.app.conf.broker_request_timeout)
        if ends != dict(reported):
            log.info("changelog ends by fetch %s (ListOffsets latest said %s)", _show(ends), _show(reported))
        return ends


class _TrueEndConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _TrueEndConsumerThread(self, loop=self.loop, beacon=self.beacon)


class TrueEndTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport, recovering tables to the fetch high-watermark."""

    Consumer = _TrueEndConsumer


def install_true_end_offsets(app: Any) -> None:
    """Make ``app`` (a faust App on a ``kafka://`` broker, not started yet) recover its
    tables to the true end of their changelogs."""
    app.transport = TrueEndTransport(app.conf.broker_consumer, app)


def _show(ends: Mapping[Any, int]) -> str:
    return ", ".join(f"{tp[0]}[{tp[1]}]={end}" for tp, end in sorted(ends.items()))


Output = tuple[str, bytes, bytes]
"""An event to send: (topic kind: charges, rejections, balances or service_status; key; value)."""


@dataclass(slots=True)
class Entry:
    """The changelog record of one attempts/payments key (see the module doc)."""

    state: AccountState | None
    partition: int
    attempts_decided: int = -1
    payments_decided: int = -1
    outbox: list[Output] = field(default_factory=list)
    source: str = ""
    """Which input the outbox came from: "a" (attempts) or "p" (payments)."""
    source_offset: int = -1


@dataclass(slots=True)
class Flushed:
    """Per partition: the input offsets up to which every record is decided and every
    event it caused is acknowledged on its topic."""

    partition: int
    attempts: int = -1
    payments: int = -1

    def covers(self, entry: Entry) -> bool:
        return entry.source_offset <= (self.attempts if entry.source == "a" else self.payments)


def flushed_key(partition: int) -> bytes:
    """The changelog key of a partition's Flushed marker (no attempt key starts with NUL)."""
    return b"\x00flushed/%d" % partition


def encode_record(record: Entry | Flushed) -> bytes:
    if isinstance(record, Flushed):
        return json.dumps({"flushed": [record.partition, record.attempts, record.payments]}).encode()
    state = record.state
    return json.dumps({
        "state": None if state is None else [str(state.balance), state.currency, state.suspended,
                                             state.last_attempt_offset, state.last_payment_offset,
                                             list(state.recent_attempts), list(state.recent_payments)],
        "partition": record.partition, "attempts": record.attempts_decided,
        "payments": record.payments_decided, "source": [record.source, record.source_offset],
        "outbox": [[kind, _b64(key), _b64(value)] for kind, key, value in record.outbox],
    }, separators=(",", ":")).encode()


def decode_record(data: bytes) -> Entry | Flushed:
    raw = json.loads(data)
    if "flushed" in raw:
        return Flushed(*raw["flushed"])
    state = raw["state"]
    if state is not None:
        balance, currency, suspended, last_attempt, last_payment, recent, *payments = state
        state = AccountState(Decimal(balance), currency, suspended, last_attempt, last_payment, tuple(recent),
                             tuple(payments[0]) if payments else ())
    outbox = [(kind, base64.b64decode(key), base64.b64decode(value)) for kind, key, value in raw["outbox"]]
    source, source_offset = raw["source"]
    return Entry(state, raw["partition"], raw["attempts"], raw["payments"], outbox, source, source_offset)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _ChangelogCodec(Codec):
    def _dumps(self, obj: Any) -> bytes:
        return encode_record(obj)

    def _loads(self, s: bytes) -> Any:
        return decode_record(s)


CHANGELOG_CODEC = _ChangelogCodec()
"""The faust value codec of the processor's table (recovery decodes with it)."""


def pending_outboxes(records: Mapping[bytes, Entry | Flushed], partitions: Iterable[int]) -> list[Entry]:
    """The entries of ``partitions`` whose outbox is not covered by their partition's marker."""
    owned = set(partitions)
    markers = {p: records.get(flushed_key(p)) or Flushed(p) for p in owned}
    return [entry for entry in records.values()
            if type(entry) is Entry and entry.outbox and entry.partition in owned
            and not markers[entry.partition].covers(entry)]
