"""The processor worker (``imbill process``): attempts, payments and re-rating corrections
in; charges, rejections, balance and service-status events out.

Thin faust wiring: three agents hand batches of records (:class:`Batches`) to the commit
protocol (:class:`.commit.Committer`), which decides them with the pure rules
(:mod:`.batch`) and commits them through :class:`.faust_adapter.FaustLog`. Every worker
folds the whole config topic itself (:class:`.config_reader.ConfigReader`) and catches up
before deciding each batch. Tables are recovered to the changelog's true end, which the
local broker misreports (:func:`.faust_adapter.install_true_end_offsets`). A batch that
cannot be committed stops the worker at once with status 70, as a crash would: the next
owner of its partitions recovers them from the changelog.

Settings are not read here: the caller (``imbill process``) passes every value.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

import faust
import mode.loop

from imbill.schemas.topics import ACCOUNT_PARTITIONS, Topics
from imbill.streams.batch import Record
from imbill.streams.commit import STALL_SECONDS, Committer
from imbill.domain.decide import DEFAULT_LIMITS, Limits
from imbill.domain.errors import BrokerError
from imbill.streams.config_reader import ConfigReader
from imbill.streams.config_rejections import ConfigRejections
from imbill.streams.faust_adapter import FaustLog, install_true_end_offsets, use_changelog_codec

__all__ = ["TABLE_NAME", "EXIT_UNCOMMITTED", "Batches", "create_app", "run_worker"]

log = logging.getLogger(__name__)

TABLE_NAME = "account-state"
EXIT_UNCOMMITTED = 70
"""The worker's exit status when a batch could not be handled or committed."""
CONFIG_REJECTIONS_SECONDS = 1.0
"""How often the owner of attempts partition 0 emits the rejections of refused config records."""


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
            _exit_now()
        for event in batch:
            await self.stream.ack(event)


def _exit_now() -> NoReturn:
    """Stop at once, acking nothing more: memory may be ahead of the changelog."""
    logging.shutdown()
    os._exit(EXIT_UNCOMMITTED)


def _records(events: Sequence[Any]) -> list[Record]:
    return [(m.partition, m.offset, m.key, m.value) for m in (e.message for e in events)]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def create_app(bootstrap_servers: str, topics: Topics, *, app_id: str, data_dir: Path,
               worker_id: str | None = None, batch_size: int = 4000, batch_within: float = 0.2,
               session_timeout: float = 6.0, limits: Limits = DEFAULT_LIMITS) -> faust.App:
    """The processor app. ``app_id`` (``<topic prefix><processor id>``) names the consumer
    group and the table's changelog, ``<app_id>-account-state-changelog`` (the catalogue's).

    ``session_timeout`` (seconds) is how long the group waits for a worker that died
    without leaving before its partitions move (about twice that on the local broker)."""
    worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
    datadir = data_dir / "processor" / worker_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=[f"kafka://{server}" for server in bootstrap_servers.split(",")],
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
                      help="balance state and outbox per account key of the three inputs")
    use_changelog_codec(table)
    reader = ConfigReader(bootstrap_servers.split(","), topics.config, client_id=f"imbill-config-reader-{worker_id}")
    log_port = FaustLog(app, table)
    committer = Committer(log_port, topics, reader.catch_up, clock=_now, halt=_exit_now, limits=limits)
    table.on_recover(committer.recovered)
    app.on_partitions_revoked.connect(committer.revoked)
    _wire(app, topics, committer, reader, batch_size, batch_within)
    _wire_config_rejections(app, topics, reader, log_port, bootstrap_servers)
    return app


def _wire_config_rejections(app: faust.App, topics: Topics, reader: ConfigReader, log_port: FaustLog,
                            bootstrap_servers: str) -> None:
    """The worker owning attempts partition 0 says which config records are refused, once."""

    async def send(topic: str, key: bytes, value: bytes) -> None:
        await app.producer.send_and_wait(topic, key, value, partition=0, timestamp=None, headers=None)

    rejections = ConfigRejections(reader, bootstrap_servers, topics.config_rejections, send)

    @app.timer(CONFIG_REJECTIONS_SECONDS)
    async def _reject_config() -> None:
        owner = (topics.attempts, 0) in log_port.assignment()
        try:
            if owner:
                await reader.catch_up()
            await rejections.emit(owner)
        except Exception as exc:  # noqa: BLE001 - billing goes on; the next tick says them again
            log.warning("config rejections not emitted yet: %s", exc, exc_info=not isinstance(exc, BrokerError))


def _wire(app: faust.App, topics: Topics, committer: Committer, reader: ConfigReader, batch_size: int,
          batch_within: float) -> None:
    """The agents, the unstall timer and the reader's shutdown."""

    def source(name: str) -> Any:
        return app.topic(name, key_type=bytes, value_type=bytes, partitions=ACCOUNT_PARTITIONS,
                         value_serializer="raw", key_serializer="raw")

    async def attempts(events: Sequence[Any]) -> None:
        await committer.attempts(_records(events))

    async def payments(events: Sequence[Any]) -> None:
        await committer.payments(_records(events))

    async def corrections(events: Sequence[Any]) -> None:
        await committer.corrections(_records(events))

    @app.agent(source(topics.attempts), name="bill-attempts")
    async def _bill_attempts(stream: Any) -> None:
        await Batches(stream, attempts, batch_size, batch_within).run()

    @app.agent(source(topics.payments), name="top-up-payments")
    async def _top_up_payments(stream: Any) -> None:
        await Batches(stream, payments, batch_size, batch_within).run()

    @app.agent(source(topics.corrections), name="correct-charges")
    async def _correct_charges(stream: Any) -> None:
        await Batches(stream, corrections, batch_size, batch_within).run()

    @app.timer(STALL_SECONDS)
    async def _unstall() -> None:
        await committer.unstall()

    @app.on_before_shutdown.connect
    async def _stop_reader(app: Any, **kwargs: Any) -> None:
        await reader.stop()


def run_worker(bootstrap_servers: str, topics: Topics, *, app_id: str, data_dir: Path,
               worker_id: str | None = None, loglevel: str = "info", batch_size: int = 4000,
               session_timeout: float = 6.0, limits: Limits = DEFAULT_LIMITS) -> None:
    """Run one processor worker until SIGINT/SIGTERM (several may share the partitions)."""
    try:
        mode.loop.use("uvloop")
    except ImportError:  # uvloop is optional
        pass
    app = create_app(bootstrap_servers, topics, app_id=app_id, data_dir=data_dir, worker_id=worker_id,
                     batch_size=batch_size, session_timeout=session_timeout, limits=limits)
    gc.set_threshold(100_000, 50, 100)  # faust makes several objects per event: collect less often
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.spinner = None  # faust's spinner sets the root logger to DEBUG: every debug call costs
    worker.execute_from_commandline()
