"""`imbill run` as a newcomer uses it: everything starts, a MESSAGE becomes an xDR, Ctrl-C
stops every process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from imbill.broker import port_is_free
from imbill.producers.sip_client import Credentials, send_message
from tests.conftest import free_port
from tests.test_end_to_end import free_port_udp

pytestmark = pytest.mark.integration


def wait_for_line(process: subprocess.Popen, text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen.append(line)
        if text in line:
            return "".join(seen)
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"{text!r} not printed; got:\n{''.join(seen)}")


def test_run_starts_everything_and_ctrl_c_stops_it(tmp_path):
    broker_port, edge_port = free_port(), free_port_udp()
    env = dict(os.environ, IMBILL_BROKER_PORT=str(broker_port), IMBILL_EDGE_PORT=str(edge_port),
               IMBILL_DATA_DIR=str(tmp_path / "data"), IMBILL_DATABASE_URL=f"sqlite:///{tmp_path / 'run.db'}",
               COLUMNS="200")
    run = subprocess.Popen([sys.executable, "-m", "imbill.cli", "run"], env=env, cwd=tmp_path, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        banner = wait_for_line(run, "Ctrl-C stops it")
        assert "applied" in banner and "started processor" in banner and "started edge" in banner
        deadline = time.monotonic() + 30
        answer = None
        while answer is None and time.monotonic() < deadline:
            try:
                answer = send_message("127.0.0.1", edge_port, from_user="1001", to_user="1002", text="x" * 150,
                                      timeout=2.0, credentials=Credentials("1001", "alice-secret"))
            except TimeoutError:
                continue
        assert answer is not None and answer.status == 202
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'run.db'}")
        rows = []
        while not rows and time.monotonic() < deadline + 30:
            time.sleep(0.5)
            with engine.connect() as conn:
                if sa.inspect(conn).has_table("xdr"):
                    rows = conn.execute(sa.text("select account, billing_units, amount from xdr")).all()
        assert [(r[0], r[1], str(r[2])) for r in rows] == [("1001", 3, "0.150000")]
    finally:
        run.send_signal(signal.SIGINT)
        output = run.communicate(timeout=60)[0]
    assert run.returncode == 0, output
    assert "stopped broker" in output
    assert port_is_free("127.0.0.1", broker_port)
