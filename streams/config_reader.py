"""Each worker's own reading of the whole config topic, folded into a ConfigState.

The config topic has one partition, so every reader folds the same total order. A worker
reads it outside its consumer group (manual assignment from offset 0, in a background
task), because every worker needs every environment's config, whichever account
partitions it owns.

Before rating a batch the processor calls :meth:`ConfigReader.catch_up`: it waits for a
fetch response that arrived after the call and for the fold to reach that response's
high-watermark. A config event acknowledged before an attempt was produced is therefore
in force when the attempt is rated. ListOffsets "latest" is never asked: the local broker
misreports it (PLATFORM-NOTES, quirk 1), the fetch high-watermark is right.

A record that cannot be decoded, or that the fold refuses (:meth:`ConfigState.folded`, the
same fold as every other reader's), is logged and skipped: one bad record must not stop
billing. Its ConfigEventRejected is kept in :attr:`ConfigReader.refused`, in topic order,
for the worker that emits them (:mod:`.config_rejections`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Any, Iterator

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from imbill.domain.config import ConfigState
from imbill.domain.decide import config_event_rejected
from imbill.domain.errors import BrokerError, SchemaError
from imbill.domain.events import ConfigEventRejected
from imbill.schemas.codec import decode
from imbill.streams.faust_adapter import force_metadata_update

__all__ = ["ConfigReader"]

log = logging.getLogger(__name__)


class ConfigReader:
    """``await reader.catch_up()`` returns the ConfigState folded up to the topic's end."""

    def __init__(self, bootstrap_servers: str | list[str], topic: str, *, fetch_wait_ms: int = 10,
                 client_id: str = "imbill-config-reader") -> None:
        self.state = ConfigState()
        self.topic = topic
        self._tp = TopicPartition(topic, 0)
        self._bootstrap = bootstrap_servers
        self._fetch_wait_ms = fetch_wait_ms
        self._client_id = client_id
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None
        self._starting = asyncio.Lock()
        self._next_offset = 0
        self.skipped = 0
        self.refused: list[ConfigEventRejected] = []
        """The rejection of every record skipped, in topic order (one per record)."""

    async def start(self, timeout: float = 30.0) -> None:
        async with self._starting:
            if self._task is not None:
                return
            consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None,
                                        client_id=self._client_id, enable_auto_commit=False,
                                        auto_offset_reset="earliest", fetch_max_wait_ms=self._fetch_wait_ms)
            try:
                await consumer.start()
            except KafkaError as exc:
                await consumer.stop()
                raise BrokerError(f"cannot read the config topic {self.topic}: {exc}") from exc
            try:
                await _wait_for_topic(consumer, self.topic, timeout)
            except BaseException:
                await consumer.stop()
                raise
            consumer.assign([self._tp])
            consumer.seek(self._tp, 0)
            self._consumer = consumer
            self._task = asyncio.create_task(self._fold(), name=f"config-reader {self.topic}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def catch_up(self, timeout: float = 10.0) -> ConfigState:
        """The state folded up to the high-watermark of a fetch answered after this call."""
        await self.start()
        asked_ms = int(time.time() * 1000)
        deadline = time.monotonic() + timeout
        while not self._caught_up(asked_ms):
            if self._task is not None and self._task.done():
                raise BrokerError(f"the config reader of {self.topic} stopped") from self._task.exception()
            if time.monotonic() > deadline:
                raise BrokerError(f"config topic {self.topic} not read to its end in {timeout}s")
            await asyncio.sleep(0.001)
        return self.state

    def _caught_up(self, asked_ms: int) -> bool:
        consumer = self._consumer
        if consumer is None:
            return False
        answered_ms = consumer.last_poll_timestamp(self._tp)
        highwater = consumer.highwater(self._tp)
        return (answered_ms is not None and answered_ms > asked_ms and highwater is not None
                and self._next_offset >= highwater)

    async def _fold(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(self._tp, timeout_ms=500, max_records=10_000)
            messages = batches.get(self._tp, ())
            if messages:
                self.state = self.state.folded(self._records(messages), self._refused)
                self._next_offset = messages[-1].offset + 1

    def _records(self, messages: Any) -> Iterator[tuple[Any, str, dict[str, Any]]]:
        """(position, event name, record) of each decodable message; the undecodable refused."""
        for message in messages:
            try:
                name, record = decode(message.value or b"")
            except SchemaError as exc:
                self._refused((message, None, {}), "undecodable_config", str(exc))
                continue
            yield (message, name, record), name, record

    def _refused(self, position: tuple[Any, str | None, dict[str, Any]], reason_code: str, why: str) -> None:
        message, name, record = position
        self.skipped += 1
        log.warning("config record %s[%d]@%d skipped (%s): %s", message.topic, message.partition, message.offset,
                    reason_code, why[:1000])
        self.refused.append(config_event_rejected(message.topic, message.partition, message.offset, name, record,
                                                  reason_code, why, _now()))


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def _wait_for_topic(consumer: AIOKafkaConsumer, topic: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not consumer.partitions_for_topic(topic):
        if time.monotonic() > deadline:
            raise BrokerError(f"config topic {topic} does not exist (run `imbill topics create`)")
        await force_metadata_update(consumer)  # the topic may have just been created
        await asyncio.sleep(0.1)
