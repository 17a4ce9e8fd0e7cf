"""The SIP edge's reading of the service-status topic: every partition from offset 0, folded
into each environment's :class:`~imbill.domain.service_status.SuspendedAccounts`, then
followed by a background task for as long as the edge runs.

:meth:`ServiceStatusReader.catch_up` (before the edge opens) waits, like the ConfigReader,
for a fetch answered after the call on every partition and for the fold to reach each
partition's fetch high-watermark (ListOffsets "latest" is never asked: PLATFORM-NOTES,
quirk 1). A record that is no ServiceStatusChanged is logged and skipped: it decides nothing
at the edge, and the processor decides every attempt anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from imbill.domain.config import ConfigState
from imbill.domain.errors import BrokerError, SchemaError
from imbill.domain.events import ServiceStatusChanged
from imbill.domain.service_status import SuspendedAccounts
from imbill.schemas.codec import decode_event
from imbill.streams.faust_adapter import force_metadata_update

__all__ = ["ServiceStatusReader"]

log = logging.getLogger(__name__)


class ServiceStatusReader:
    """``suspended(account, environment)``: why the account's messaging is suspended in the
    environment (None: the reader's own), or None. Every environment's events are folded
    (an edge serves several by domain), each into its own :class:`SuspendedAccounts`, which
    keeps only accounts of that environment's config."""

    def __init__(self, bootstrap_servers: str | list[str], topic: str, environment: str,
                 config: Callable[[], ConfigState], *, fetch_wait_ms: int = 500,
                 client_id: str = "imbill-edge-status") -> None:
        self.topic, self._environment, self._config = topic, environment, config
        self._bootstrap, self._fetch_wait_ms, self._client_id = bootstrap_servers, fetch_wait_ms, client_id
        self._accounts: dict[str, SuspendedAccounts] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._partitions: list[TopicPartition] = []
        self._next: dict[TopicPartition, int] = {}
        self.skipped = 0

    def suspended(self, account: str, environment: str | None = None) -> str | None:
        name = self._environment if environment is None else environment
        accounts = self._accounts.get(name)
        return accounts.reason(account, self._config().environment(name)) if accounts is not None else None

    @property
    def suspended_count(self) -> int:
        return sum(map(len, self._accounts.values()))

    async def start(self, timeout: float = 30.0) -> None:
        if self._task is not None:
            return
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None, client_id=self._client_id,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    fetch_max_wait_ms=self._fetch_wait_ms)
        try:
            await consumer.start()
            partitions = await _partitions_of(consumer, self.topic, timeout)
        except KafkaError as exc:
            await consumer.stop()
            raise BrokerError(f"cannot read the service-status topic {self.topic}: {exc}") from exc
        except BaseException:
            await consumer.stop()
            raise
        self._partitions = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(self._partitions)
        for tp in self._partitions:
            consumer.seek(tp, 0)
            self._next[tp] = 0
        self._consumer = consumer
        self._task = asyncio.create_task(self._fold(), name=f"status-reader {self.topic}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def catch_up(self, timeout: float = 30.0) -> None:
        """Return once every partition is folded up to the high-watermark of a fetch answered
        after this call."""
        await self.start(timeout)
        asked_ms = int(time.time() * 1000)
        deadline = time.monotonic() + timeout
        while not all(self._caught_up(tp, asked_ms) for tp in self._partitions):
            if self._task is not None and self._task.done():
                raise BrokerError(f"the reader of {self.topic} stopped") from self._task.exception()
            if time.monotonic() > deadline:
                raise BrokerError(f"service-status topic {self.topic} not read to its end in {timeout}s")
            await asyncio.sleep(0.01)

    def _caught_up(self, tp: TopicPartition, asked_ms: int) -> bool:
        consumer = self._consumer
        if consumer is None:
            return False
        answered_ms, highwater = consumer.last_poll_timestamp(tp), consumer.highwater(tp)
        return (answered_ms is not None and answered_ms > asked_ms and highwater is not None
                and self._next[tp] >= highwater)

    async def _fold(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, messages in batches.items():
                config = self._config()
                for message in messages:
                    self._apply(message, config)
                if messages:
                    self._next[tp] = messages[-1].offset + 1

    def _apply(self, message, config: ConfigState) -> None:  # type: ignore[no-untyped-def]
        try:
            event = decode_event(message.value or b"")
        except SchemaError as exc:
            event, why = None, str(exc)
        else:
            why = f"a {type(event).__name__}, not a ServiceStatusChanged"
        if type(event) is not ServiceStatusChanged:
            self.skipped += 1
            log.warning("service-status record %s[%d]@%d skipped: %s", message.topic, message.partition,
                        message.offset, why[:1000])
            return
        env = config.environment(event.environment)
        if env is None:
            return  # no such environment: the processor emits nothing for it, and nothing is kept
        accounts = self._accounts.get(event.environment)
        if accounts is None:
            accounts = self._accounts[event.environment] = SuspendedAccounts(event.environment)
        accounts.apply(event, env)


async def _partitions_of(consumer: AIOKafkaConsumer, topic: str, timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while not (partitions := consumer.partitions_for_topic(topic)):
        if time.monotonic() > deadline:
            raise BrokerError(f"service-status topic {topic} does not exist (run `imbill topics create`)")
        await force_metadata_update(consumer)
        await asyncio.sleep(0.1)
    return partitions
