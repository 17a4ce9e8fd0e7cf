"""The one wiring place: every process of the engine (broker, SIP edge, processor worker,
projectors, and ``imbill run`` which supervises them) is assembled here from a
:class:`~imbill.settings.Settings`; the CLI calls these functions.

Each runs until Ctrl-C/SIGTERM and reports what it started through ``say``.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Coroutine

import uvloop
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from imbill.broker import DurableBroker, start_broker
from imbill.producers.attempt_publisher import AttemptPublisher
from imbill.producers.edge import serve_edge
from imbill.producers.sip_auth import DigestAuthenticator
from imbill.producers.sip_domains import EnvironmentsByDomain
from imbill.producers.sip_guard import GuessingGuard
from imbill.producers.sip_registrar import Registrar, RegistrationPublisher, rebuilt_bindings
from imbill.projections.projector import ConfigProjector, RegistrationProjector, XdrProjector
from imbill.projections.rebuild import rebuild
from imbill.run import DataDirLock, run_engine
from imbill.settings import Settings
from imbill.streams.config_reader import ConfigReader
from imbill.streams.status_reader import ServiceStatusReader
from imbill.streams.worker import run_worker

__all__ = ["Say", "broker", "edge", "processor_worker", "projectors", "rebuild_projections", "run"]

Say = Callable[[str], None]


def broker(settings: Settings, port: int | None, say: Say, *, memory: bool = False) -> None:
    """The local broker on ``port`` (default: the settings'): Tansu behind the journal of
    ``settings.data_dir`` (restored first), or with ``memory`` Tansu alone."""
    if not memory:
        _run_until_signal(_durable_broker(settings, port or settings.broker_port, say))
        return
    running = start_broker(port=port or settings.broker_port)
    say(f"local broker on {running.bootstrap_servers} (Tansu, memory storage); Ctrl-C stops it")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while running.alive() and not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()


async def _durable_broker(settings: Settings, port: int, say: Say) -> None:
    running = DurableBroker("127.0.0.1", port, settings.data_dir)
    try:
        ends = await running.start(log_path=settings.data_dir / "tansu.log")
        say(f"local broker on {running.bootstrap_servers}: {sum(ends.values()):,} records of {len(ends)} "
            f"partitions restored from {running.journal.path} ({running.journal.size:,} bytes); Ctrl-C stops it")
        await asyncio.Event().wait()
    finally:
        await running.stop()


def edge(settings: Settings, say: Say) -> None:
    """The SIP edge, publishing attempts to the attempts topic.

    It authenticates requests with the accounts of the config topic, read to its end before
    the edge opens and followed while it runs (the processor's own ConfigReader, polling
    every 0.5 s: an applied config is in force at the edge within about a second). The same
    way it reads the service-status topic (every partition to its end, then followed): a
    MESSAGE from an account whose messaging the processor suspended is answered 403. It
    serves every environment of the config by SIP domain (producers/sip_domains.py), on UDP
    and TCP (the same port). Its registrar's bindings (every environment's) are rebuilt from
    the registrations topic (read to its end) before it opens, and MESSAGEs to registered
    recipients are delivered per ``settings.delivery``.

    The edge runs on uvloop, and once started the objects of start-up are frozen out of the
    garbage collector's way (gc.freeze), so full collections do not walk them again."""
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    edge_id = f"edge-{settings.edge_host}:{settings.edge_port}"
    delivery, register_limits = settings.delivery, settings.register_limits  # refused before anything starts

    def started(_edge: Any) -> None:
        gc.freeze()
        tcp = f" and tcp://{settings.edge_host}:{settings.edge_port}" if settings.tcp.on else ""
        say(f"SIP edge {edge_id} listening on udp://{settings.edge_host}:{settings.edge_port}{tcp}, "
            f"environment {settings.environment} (and others by SIP domain)")

    async def serve() -> None:
        config = ConfigReader(settings.bootstrap_servers, settings.topics.config, fetch_wait_ms=500,
                              client_id="imbill-edge-config")
        statuses = ServiceStatusReader(settings.bootstrap_servers, settings.topics.service_status,
                                       settings.environment, lambda: config.state)
        try:
            await config.catch_up(timeout=30.0)
            await statuses.catch_up(timeout=30.0)
            authentication = DigestAuthenticator(lambda: config.state, settings.environment,
                                                 guard=GuessingGuard(settings.guard))
            bindings = await asyncio.to_thread(rebuilt_bindings, settings.bootstrap_servers,
                                               settings.topics.registrations)
            async with AttemptPublisher(settings.bootstrap_servers, settings.topics.attempts) as publisher, \
                    RegistrationPublisher(settings.bootstrap_servers, settings.topics.registrations) as registrations:
                registrar = Registrar(settings.environment, lambda: config.state, bindings=bindings,
                                      publish=registrations, limits=register_limits)
                await serve_edge(publisher, environment=settings.environment, edge_id=edge_id,
                                 host=settings.edge_host, port=settings.edge_port, on_started=started,
                                 vendor_peers=frozenset(settings.edge_vendor_peers),
                                 authentication=authentication, service_status=statuses,
                                 registrar=registrar, delivery=delivery,
                                 environments=EnvironmentsByDomain(lambda: config.state, settings.environment,
                                                                   default=settings.edge_default_environment),
                                 tcp=settings.tcp)
        finally:
            await statuses.stop()
            await config.stop()

    _run_until_signal(serve())


def _run_until_signal(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine until it ends or SIGINT/SIGTERM cancels it."""

    async def main() -> None:
        task = asyncio.ensure_future(coroutine)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(main())


def processor_worker(settings: Settings, worker_id: str | None = None, *, loglevel: str = "info",
                     batch_size: int = 4000, session_timeout: float = 6.0) -> None:
    """One processor worker (faust); several share the partitions. Its local files are
    under ``settings.data_dir / "processor" / worker_id``."""
    run_worker(settings.bootstrap_servers, settings.topics, app_id=settings.topic_prefix + settings.processor_id,
               data_dir=settings.data_dir, worker_id=worker_id, loglevel=loglevel, batch_size=batch_size,
               session_timeout=session_timeout, limits=settings.limits)


def projectors(settings: Settings, once: bool, say: Say, *, max_poll_records: int = 500) -> None:
    """The xDR, config and registration projectors, one thread each (or, with ``once``, one
    after the other until idle)."""
    running = [XdrProjector(settings.database_url, settings.bootstrap_servers, settings.topics,
                         max_poll_records=max_poll_records),
               ConfigProjector(settings.database_url, settings.bootstrap_servers, settings.topics,
                               max_poll_records=max_poll_records),
               RegistrationProjector(settings.database_url, settings.bootstrap_servers, settings.topics,
                                     max_poll_records=max_poll_records)]
    try:
        if once:
            for projector in running:
                say(f"projector {projector.name}: {projector.run_until_idle(timeout=300)} records applied")
        else:
            _project_until_signal(running, settings.database_url, say)
    finally:
        for projector in running:
            projector.close()


def _project_until_signal(running: list[Any], database_url: str, say: Say) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    failures: list[BaseException] = []

    def project(projector: Any) -> None:
        try:
            projector.run(stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread, which stops
            failures.append(exc)
            stop.set()

    threads = [threading.Thread(target=project, args=(p,), name=f"projector-{p.name}", daemon=True)
               for p in running]
    for thread in threads:
        thread.start()
    say(f"projectors {', '.join(p.name for p in running)} writing to {database_url}")
    while not stop.wait(0.5):
        pass
    for thread in threads:
        thread.join(timeout=10)
    if failures:
        raise failures[0]


def rebuild_projections(settings: Settings, say: Say) -> None:
    """``imbill project --rebuild``: refused while ``imbill run`` holds the data directory
    (its projector would go on writing); a progress bar on stderr."""
    lock = DataDirLock(settings.data_dir)
    if settings.data_dir.exists():
        lock.acquire()
    columns = (TextColumn("rebuilding"), BarColumn(), MofNCompleteColumn(), TextColumn("records"),
               TextColumn("{task.fields[rate]:,.0f}/s"), TimeRemainingColumn())
    try:
        with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task("rebuild", total=None, rate=0.0)
            started = time.monotonic()

            def progress(done: int, total: int) -> None:
                rate = done / max(time.monotonic() - started, 1e-6)
                bar.update(task, completed=done, total=total, rate=rate)

            counts = rebuild(settings.database_url, settings.bootstrap_servers, settings.topics, progress)
    finally:
        lock.release()
    swap = counts.pop("_swap_seconds")
    say(f"projections rebuilt from offset zero and swapped in ({swap} s): "
        + ", ".join(f"{table} {rows:,}" for table, rows in counts.items()))


def run(settings: Settings, example: Path, say: Say) -> int:
    """Broker (unless one runs), topics, example config, then processor, projectors and edge
    as child processes (``imbill process``, ``imbill project``, ``imbill edge``)."""
    return run_engine(settings, example, say)
