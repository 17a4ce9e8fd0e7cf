"""An engine you can stop and start: `imbill run` keeps its history across a clean stop and
across a SIGKILL of every process; stopping always cleans up; one engine per data directory.

Every SIP 202 ends in exactly one outcome (an xDR or a rejected attempt), no config is
applied twice, and every account's balance equals its opening balance minus its charges.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from imbill.broker import port_is_free
from imbill.producers.attempt import attempt_id_for
from imbill.producers.sip_client import Credentials, send_message
from tests.test_end_to_end import EXAMPLE_PASSWORDS
from tests.conftest import free_port
from tests.test_end_to_end import free_port_udp

pytestmark = pytest.mark.integration
OPENING = {"1001": Decimal("10.00"), "1002": Decimal("0")}  # examples/instant-messaging.yaml


STARTED: list["Engine"] = []
"""Every engine a test started: stopped after the test whatever it asserted."""


@pytest.fixture(autouse=True)
def _no_engine_left():
    yield
    while STARTED:
        engine = STARTED.pop()
        if engine.process is not None and engine.process.poll() is None:
            for pid in reversed(engine.tree()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            engine.process.wait(timeout=10)


class Engine:
    """`imbill run` in a data directory of its own, on ports of its own."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.broker_port, self.edge_port = folder, free_port(), free_port_udp()
        self.database = folder / "imbill.db"
        self.env = dict(os.environ, IMBILL_BROKER_PORT=str(self.broker_port), IMBILL_EDGE_PORT=str(self.edge_port),
                        IMBILL_DATA_DIR=str(folder / "data"), IMBILL_DATABASE_URL=f"sqlite:///{self.database}",
                        COLUMNS="200")
        self.env.pop("IMBILL_BOOTSTRAP_SERVERS", None)
        self.process: subprocess.Popen | None = None
        self.output: list[str] = []
        self.accepted: set[str] = set()
        self.refused = 0

    def start(self, ready: bool = True) -> subprocess.Popen:
        self.output = []
        self.process = subprocess.Popen([sys.executable, "-m", "imbill", "run"], env=self.env, cwd=self.folder,
                                        text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        STARTED.append(self)
        if ready:
            self.wait_for("Ctrl-C stops it")
        return self.process

    def wait_for(self, text: str, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            self.output.append(line)
            if text in line:
                return "".join(self.output)
            if not line and self.process.poll() is not None:
                break
        raise AssertionError(f"{text!r} not printed; got:\n{''.join(self.output)}")

    def send(self, count: int, tag: str) -> None:
        for n in range(count):
            sender = "1001" if n % 2 else "1002"
            call_id = f"{tag}-{n}@restart-test"
            answer = send_message("127.0.0.1", self.edge_port, from_user=sender, to_user="1002" if n % 2 else "1001",
                                  text=f"message {n}", call_id=call_id, timeout=10.0,
                                  credentials=Credentials(sender, EXAMPLE_PASSWORDS[sender]))
            if answer.status == 403 and sender == "1001" and b"is suspended" in answer.raw:
                self.refused += 1  # prepaid 1001's wallet is empty: refused at the edge, nothing published
                continue
            assert answer.status == 202, answer
            self.accepted.add(attempt_id_for(call_id, 2 if answer.challenged else 1, "MESSAGE"))

    def outcomes(self, timeout: float = 90.0) -> dict[str, list]:
        """attempt id -> its outcome rows, once every accepted attempt has one."""
        engine = sa.create_engine(f"sqlite:///{self.database}")
        deadline = time.monotonic() + timeout
        try:
            while True:
                found: dict[str, list] = defaultdict(list)
                with engine.connect() as conn:
                    for attempt_id, amount in conn.execute(sa.text("select attempt_id, amount from xdr")):
                        found[attempt_id].append(("charge", Decimal(str(amount))))
                    for (attempt_id,) in conn.execute(sa.text("select attempt_id from rejected_attempt")):
                        found[attempt_id].append(("rejection", None))
                if self.accepted <= found.keys() or time.monotonic() > deadline:
                    return found
                time.sleep(0.5)
        finally:
            engine.dispose()

    def balances(self) -> dict[str, Decimal]:
        """Each account's latest balance as the projection shows it."""
        engine = sa.create_engine(f"sqlite:///{self.database}")
        with engine.connect() as conn:
            rows = conn.execute(sa.text("select account, balance from balance_event order by source_offset")).all()
        engine.dispose()
        return {account: Decimal(str(balance)) for account, balance in rows}

    def config_events(self) -> int:
        engine = sa.create_engine(f"sqlite:///{self.database}")
        with engine.connect() as conn:
            count = conn.execute(sa.text("select count(*) from config_event")).scalar_one()
        engine.dispose()
        return count

    def tree(self) -> list[int]:
        """The pids of `imbill run` and of everything it started (children and grandchildren)."""
        pids, frontier = [self.process.pid], [self.process.pid]
        while frontier:
            parent = frontier.pop()
            for child in _children(parent):
                pids.append(child)
                frontier.append(child)
        return pids

    def stop(self, *signals: int) -> str:
        for sig in signals:
            self.process.send_signal(sig)
            time.sleep(0.2)
        output = self.process.communicate(timeout=60)[0]
        return "".join(self.output) + output


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = task / "children"
        if children.exists():
            found += [int(p) for p in children.read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def assert_exact(engine: Engine) -> None:
    found = engine.outcomes()
    missing = engine.accepted - found.keys()
    assert not missing, f"{len(missing)} accepted attempts have no outcome"
    doubled = {a: rows for a, rows in found.items() if len(rows) != 1}
    assert not doubled, f"{len(doubled)} attempts have more than one outcome"
    assert found.keys() == engine.accepted
    charged: dict[str, Decimal] = defaultdict(Decimal)
    engine_db = sa.create_engine(f"sqlite:///{engine.database}")
    with engine_db.connect() as conn:
        for account, amount in conn.execute(sa.text("select account, amount from xdr")):
            charged[account] += Decimal(str(amount))
    engine_db.dispose()
    balances = engine.balances()
    for account, opening in OPENING.items():
        assert balances.get(account, opening) == opening - charged[account], account


def test_history_survives_a_sigkill_of_every_process_and_a_clean_stop(tmp_path):
    engine = Engine(tmp_path)
    engine.start()
    engine.send(2000, "first")
    assert_exact(engine)
    assert engine.refused > 0  # 1001's 10.00 pays 200 messages: the edge then refuses it (403)
    configured = engine.config_events()
    assert configured > 0

    pids = engine.tree()
    assert len(pids) >= 6  # run, broker (and its Tansu), processor, projector, edge
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    engine.process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if _alive(pid)]

    engine.start()
    banner = "".join(engine.output)
    assert "has its config already" in banner and "applied" not in banner.replace("not applied", "")
    refused = engine.refused
    engine.send(2000, "second")
    assert_exact(engine)
    assert engine.refused - refused == 1000  # the restarted edge knew 1001 is suspended before answering
    assert engine.config_events() == configured

    assert engine.stop(signal.SIGINT) and engine.process.returncode == 0
    engine.start()
    engine.send(100, "third")
    assert_exact(engine)
    assert engine.config_events() == configured
    engine.stop(signal.SIGINT)


def test_signals_twice_leave_no_process_and_a_second_run_refuses(tmp_path):
    engine = Engine(tmp_path)
    engine.start()
    second = subprocess.run([sys.executable, "-m", "imbill", "run"], env=engine.env, cwd=tmp_path, text=True,
                            capture_output=True, timeout=60)
    assert second.returncode != 0
    refusal = second.stdout + second.stderr
    assert "already running" in refusal and f"pid {engine.process.pid}" in refusal
    assert "started" not in second.stdout

    pids = engine.tree()
    output = engine.stop(signal.SIGINT, signal.SIGINT, signal.SIGTERM, signal.SIGTERM)
    assert engine.process.returncode == 0, output
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if _alive(pid)], output
    assert port_is_free("127.0.0.1", engine.broker_port)


def test_a_broker_this_data_directory_did_not_start_is_not_reused(tmp_path):
    engine = Engine(tmp_path)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", engine.broker_port))
        squatter.listen()
        process = engine.start(ready=False)
        output = process.communicate(timeout=60)[0]
    assert process.returncode != 0
    assert f"127.0.0.1:{engine.broker_port} is taken" in output and "started processor" not in output
