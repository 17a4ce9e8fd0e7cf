"""`imbill run`: the whole engine on embedded defaults, as a small process supervisor.

It starts the local broker (unless the bootstrap servers setting points at a running one),
creates the topics, applies the example config if the environment has none, and then runs
the processor, the projectors and the SIP edge as child processes (as in production, one
process each): ``python -m imbill process|project|edge``, given the same settings through
their environment (:func:`imbill.settings.child_environment`). Ctrl-C (or SIGTERM) stops
the children in reverse order, then the broker.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from imbill.broker import LocalBroker, port_is_free, start_broker
from imbill.bus import create_topics
from imbill.settings import Settings, child_environment
from imbill.usecases import apply_config_file, config_at

__all__ = ["Supervisor", "run_engine"]


@dataclass
class Supervisor:
    settings: Settings
    say: Callable[[str], None] = print
    children: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def spawn(self, name: str, *args: str) -> None:
        log = open(self.settings.data_dir / f"{name}.log", "ab")
        process = subprocess.Popen([sys.executable, "-m", "imbill", *args],
                                   env=child_environment(self.settings),
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.children.append((name, process))
        self.say(f"started {name} (pid {process.pid}, log {log.name})")

    def check(self) -> str | None:
        """The name of a child that exited, if any."""
        for name, process in self.children:
            if process.poll() is not None:
                return f"{name} exited with status {process.returncode}"
        return None

    def stop(self) -> None:
        for name, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 15
        for name, process in reversed(self.children):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            self.say(f"stopped {name}")


def _local_broker(settings: Settings, say: Callable[[str], None]) -> LocalBroker | None:
    host, _, port = settings.bootstrap_servers.partition(",")[0].rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port_is_free("127.0.0.1", int(port)):
        say(f"using the broker at {settings.bootstrap_servers}")
        return None
    broker = start_broker(port=int(port), log_path=settings.data_dir / "broker.log")
    say(f"started the local broker on {broker.bootstrap_servers} (memory storage)")
    return broker


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_engine(settings: Settings, example: Path, say: Callable[[str], None] = print,
               until: Callable[[], bool] = lambda: False) -> int:
    """Run everything until Ctrl-C (or ``until()`` is true); return an exit status."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)
    broker = _local_broker(settings, say)
    supervisor = Supervisor(settings, say)
    status = 0
    try:
        create_topics(settings.bootstrap_servers, settings.topics.specs())
        if config_at(settings).environment(settings.environment) is None:
            result = apply_config_file(settings, example)
            say(f"applied {example} to environment {result.environment}: {len(result.events)} events")
        supervisor.spawn("processor", "process")
        supervisor.spawn("projector", "project")
        supervisor.spawn("edge", "edge")
        say(f"imbill is running: SIP edge on udp://{settings.edge_host}:{settings.edge_port}, "
            f"xDRs in {settings.database_url}. Ctrl-C stops it.")
        while not until():
            problem = supervisor.check()
            if problem:
                say(f"error: {problem}; see {settings.data_dir}/*.log")
                status = 1
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        say("stopping")
    finally:
        supervisor.stop()
        if broker is not None:
            broker.stop()
            say("stopped the local broker")
    return status
