"""A reset log is detected wherever offsets are kept; projections rebuild from offset zero.

Each reset test runs its own broker (the session's one is shared), resets it under a live
consumer (stopped and started again empty on the same port, the topics created again and a
few new records produced) and checks the clear stop and that nothing is written after it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from imbill.broker import start_broker
from imbill.bus import EventProducer, create_topics, read_to_end
from imbill.domain.errors import LogReset
from imbill.projections.projector import XdrProjector
from imbill.projections.rebuild import rebuild
from imbill.schemas.topics import Topics
from tests.builders import ENV, attempt_record, checklist
from tests.conftest import _fresh_postgres_database, _postgres_available, free_port
from tests.test_projection_xdr import charge

pytestmark = pytest.mark.integration


def publish_charges(bootstrap: str, topics: Topics, numbers: range) -> None:
    producer = EventProducer(bootstrap)
    try:
        for n in numbers:
            producer.send(topics.charges, "demo/alice", "Charge", charge(n))
        producer.flush()
    finally:
        producer.close()


def rows(database_url: str, table: str = "xdr") -> list[tuple]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return sorted(tuple(r) for r in conn.execute(sa.text(f"select * from {table}")))
    finally:
        engine.dispose()


def test_a_live_projector_stops_on_a_reset_broker_and_writes_nothing_after(tmp_path: Path) -> None:
    port, topics = free_port(), Topics("reset.")
    database_url = f"sqlite:///{tmp_path / 'p.db'}"
    broker = start_broker(port)
    create_topics(broker.bootstrap_servers, topics.specs())
    publish_charges(broker.bootstrap_servers, topics, range(20))
    projector = XdrProjector(database_url, broker.bootstrap_servers, topics)
    try:
        projector.run_until_idle()
        before = rows(database_url)
        assert len(before) == 20
        broker.stop()
        broker = start_broker(port)  # the same address, an empty log
        create_topics(broker.bootstrap_servers, topics.specs())
        publish_charges(broker.bootstrap_servers, topics, range(100, 103))
        with pytest.raises(LogReset, match=r"imbill project --rebuild"):
            for _ in range(50):
                projector.verify()
                projector.run_once(0.2)
        assert rows(database_url) == before
    finally:
        projector.close()
        broker.stop()
    with pytest.raises(LogReset, match="has no record at offset"):  # and it refuses to start on it again
        broker = start_broker(port)
        try:
            create_topics(broker.bootstrap_servers, topics.specs())
            XdrProjector(database_url, broker.bootstrap_servers, topics).close()
        finally:
            broker.stop()


def test_a_live_processor_stops_on_a_reset_broker(tmp_path: Path) -> None:
    port, topics = free_port(), Topics("reset.")
    broker = start_broker(port)
    bootstrap = broker.bootstrap_servers
    create_topics(bootstrap, topics.specs())
    producer = EventProducer(bootstrap)
    for name, record in checklist().events:
        producer.send(topics.config, ENV, name, record)
    for n in range(10):
        record = attempt_record(attempt_id=f"r{n}", call_id=f"r{n}@test")
        producer.send(topics.attempts, f"{ENV}/{record['from_user']}", "MessageAttempt", record)
    producer.flush()
    producer.close()
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "imbill", "--bootstrap-servers", bootstrap, "--topic-prefix",
                               topics.prefix, "process", "--worker-id", "w1", "--data-dir", str(tmp_path),
                               "--session-timeout", "3"], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "decided" not in _charges_seen(bootstrap, topics) and time.monotonic() < deadline:
            time.sleep(0.5)
        broker.stop()
        broker = start_broker(port)
        create_topics(bootstrap, topics.specs())
        status = worker.wait(timeout=90)
    finally:
        if worker.poll() is None:
            worker.kill()
        broker.stop()
    text = log.read_text()
    assert status == 70, text[-2000:]
    assert "the broker was reset or the topic re-created" in text


def _charges_seen(bootstrap: str, topics: Topics) -> str:
    return "decided" if len(list(read_to_end(bootstrap, topics.charges, timeout=2))) >= 10 else ""


@pytest.fixture
def postgres_url(request) -> str:
    if not _postgres_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it)")
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    return _fresh_postgres_database(request.node.name)


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
def test_rebuild_equals_the_live_projection_and_readers_never_see_a_partial_table(
        where, bootstrap, topics, tmp_path, request) -> None:
    database_url = (f"sqlite:///{tmp_path / 'live.db'}" if where == "sqlite"
                    else request.getfixturevalue("postgres_url"))
    publish_charges(bootstrap, topics, range(3000))
    with XdrProjector(database_url, bootstrap, topics) as live:
        live.run_until_idle()
    expected = {table: rows(database_url, table) for table in ("xdr", "projection_offset")}
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:  # the live table went wrong: rows lost
        conn.execute(sa.text("delete from xdr where charge_id like 'ch-1%'"))
    damaged = len(rows(database_url))
    seen: set[int] = set()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            with engine.connect() as conn:
                seen.add(conn.execute(sa.text("select count(*) from xdr")).scalar_one())

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        progress: list[tuple[int, int]] = []
        counts = rebuild(database_url, bootstrap, topics, lambda done, total: progress.append((done, total)))
    finally:
        stop.set()
        reader.join()
        engine.dispose()
    assert counts["xdr"] == 3000 and progress and progress[-1][0] >= 3000
    assert {table: rows(database_url, table) for table in expected} == expected
    assert seen <= {damaged, 3000} and damaged in seen, seen
