"""`imbill run`: the whole engine on embedded defaults, as a small process supervisor.

It takes the data directory's lock (a second ``imbill run`` there refuses at once, naming
the owner's pid), starts the durable local broker (``imbill broker``: Tansu behind the
journal, restored from ``<data dir>/journal``; unless the bootstrap servers were given, then
that broker is used), creates the topics, applies the example config if the environment
has none, and runs the processor, the projectors and the SIP edge as child processes (one
process each, as in production): ``python -m imbill process|project|edge``, given the same
settings through their environment (:func:`imbill.settings.child_environment`).

Stopping is bounded and always complete: the first SIGINT, SIGTERM or SIGHUP starts it,
further signals are ignored until it is done; children get SIGINT in reverse order, and
SIGKILL if they have not exited within :data:`STOP_SECONDS`; the broker stops last. Every
child also dies with the supervisor (Linux PR_SET_PDEATHSIG), so a SIGKILLed ``imbill run``
leaves no process behind. "imbill is running" is printed only once the edge answers SIP.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from imbill.broker import accepts, die_with_parent, port_is_free
from imbill.bus import create_topics
from imbill.domain.errors import BrokerError, ImbillError
from imbill.settings import Settings, child_environment
from imbill.usecases import apply_config_file, config_at

__all__ = ["Supervisor", "run_engine", "DataDirLock", "STOP_SECONDS"]

STOP_SECONDS = 10.0
START_SECONDS = 60.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stop(Exception):
    """A signal asked the engine to stop."""


class DataDirLock:
    """``<data dir>/run.lock``, held (flock) for as long as ``imbill run`` lives; the kernel
    releases it when the process dies, however it dies. It names the owner's pid."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "run.lock"
        self._file: TextIO | None = None

    def acquire(self) -> None:
        file = open(self.path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            owner = file.read().strip() or "unknown"
            file.close()
            raise ImbillError(f"imbill run is already running in {self.path.parent} (pid {owner}); "
                              "stop it first, or use another IMBILL_DATA_DIR") from None
        file.seek(0)
        file.truncate()
        file.write(str(os.getpid()))
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class Supervisor:
    settings: Settings
    say: Callable[[str], None] = print
    children: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.settings.data_dir / f"{name}.log", "ab")
        process = subprocess.Popen([sys.executable, "-m", "imbill", "--debug", *args],  # tracebacks in logs
                                   env=child_environment(self.settings), stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=die_with_parent)
        self.children.append((name, process))
        self.say(f"started {name} (pid {process.pid}, log {log.name})")
        return process

    def check(self) -> str | None:
        """Why a child exited, if one did."""
        for name, process in self.children:
            if process.poll() is not None:
                return f"{name} exited with status {process.returncode}: {self.last_line(name)}"
        return None

    def last_line(self, name: str) -> str:
        path = self.settings.data_dir / f"{name}.log"
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else f"(see {path})"

    def stop(self) -> None:
        """Stop every child, newest first: SIGINT, then SIGKILL after :data:`STOP_SECONDS`."""
        for _, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_SECONDS
        for name, process in reversed(self.children):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                self.say(f"killed {name}: it did not stop within {STOP_SECONDS:.0f} s")
            else:
                self.say(f"stopped {name}")
        self.children.clear()


def _stop_on_signal(signum: int, frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


def _ignore_signals() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def run_engine(settings: Settings, example: Path, say: Callable[[str], None] = print,
               until: Callable[[], bool] = lambda: False) -> int:
    """Run everything until a signal (or ``until()`` is true); return an exit status."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(settings.data_dir)
    lock.acquire()
    if not settings.external_broker:
        settings = settings.with_overrides(bootstrap_servers=f"127.0.0.1:{settings.broker_port}")
    supervisor = Supervisor(settings, say)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop_on_signal)
    try:
        _start(settings, example, supervisor, say)
        return _watch(settings, supervisor, say, until)
    except (Stop, KeyboardInterrupt):
        say("stopping")
        return 0
    except ImbillError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        _ignore_signals()  # a second Ctrl-C, or make's second SIGTERM, must not cut the clean-up short
        supervisor.stop()
        lock.release()


def _start(settings: Settings, example: Path, supervisor: Supervisor, say: Callable[[str], None]) -> None:
    if settings.external_broker:
        say(f"using the broker at {settings.bootstrap_servers}")
    else:
        _start_broker(settings, supervisor, say)
    create_topics(settings.bootstrap_servers, settings.topics.specs())
    if config_at(settings).environment(settings.environment) is None:
        result = apply_config_file(settings, example)
        say(f"applied {example} to environment {result.environment}: {len(result.events)} events")
    else:
        say(f"environment {settings.environment} has its config already: {example} not applied")
    supervisor.spawn("processor", "process")
    supervisor.spawn("projector", "project")
    supervisor.spawn("edge", "edge")
    _wait_for_edge(settings, supervisor)
    say(f"imbill is running: SIP edge on udp://{settings.edge_host}:{settings.edge_port}, "
        f"xDRs in {settings.database_url}. Ctrl-C stops it.")


def _start_broker(settings: Settings, supervisor: Supervisor, say: Callable[[str], None]) -> None:
    port = settings.broker_port
    if not port_is_free("127.0.0.1", port):
        raise BrokerError(f"127.0.0.1:{port} is taken by a process this data directory did not start; stop it, "
                          "or set IMBILL_BOOTSTRAP_SERVERS to use that broker on purpose")
    process = supervisor.spawn("broker", "broker", "--port", str(port))
    deadline = time.monotonic() + START_SECONDS
    while not accepts("127.0.0.1", port):
        if process.poll() is not None:
            raise BrokerError(f"the local broker exited at start: {supervisor.last_line('broker')}")
        if time.monotonic() > deadline:
            raise BrokerError(f"the local broker did not open 127.0.0.1:{port} in {START_SECONDS:.0f} s")
        time.sleep(0.05)
    say(f"local broker on 127.0.0.1:{port}, its history in {settings.data_dir / 'journal'}")


def _wait_for_edge(settings: Settings, supervisor: Supervisor) -> None:
    """Until the edge answers a SIP OPTIONS (with 405: it takes MESSAGE only), or a child exits."""
    deadline = time.monotonic() + START_SECONDS
    while not _edge_answers(settings.edge_host, settings.edge_port):
        problem = supervisor.check()
        if problem:
            raise ImbillError(problem)
        if time.monotonic() > deadline:
            raise ImbillError(f"the SIP edge did not answer on udp://{settings.edge_host}:{settings.edge_port} "
                              f"in {START_SECONDS:.0f} s; see {settings.data_dir}/edge.log")


def _edge_answers(host: str, port: int) -> bool:
    call_id = f"{uuid.uuid4().hex}@imbill-run"
    probe = (f"OPTIONS sip:{host}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{uuid.uuid4().hex}\r\n"
             f"Max-Forwards: 70\r\nFrom: <sip:imbill-run@{host}>;tag=run\r\nTo: <sip:{host}>\r\n"
             f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.sendto(probe, (host, port))
            answer, _ = sock.recvfrom(65535)
        except OSError:
            return False
    return answer.startswith(b"SIP/2.0 ") and call_id.encode() in answer


def _watch(settings: Settings, supervisor: Supervisor, say: Callable[[str], None], until: Callable[[], bool]) -> int:
    while not until():
        problem = supervisor.check()
        if problem:
            say(f"error: {problem}; see {settings.data_dir}/*.log")
            return 1
        time.sleep(0.5)
    return 0
