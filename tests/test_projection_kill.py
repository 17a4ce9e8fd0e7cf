"""SIGKILL the projector process at random points while it works: no xDR lost, none doubled.

The charges are fed in four rounds (re-emitted duplicates among them, as a restarted
processor would send); each of the first three projector processes is killed with SIGKILL
a random few milliseconds after it is seen committing, the fourth runs to the end.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa

from imbill.bus import EventProducer
from imbill.projections.models import ProjectionOffset, Xdr, connect, migrate

pytestmark = [pytest.mark.integration]

DISTINCT = 20_000
DUPLICATES = 1_000
ROUNDS = 4
T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)


def charge(n: int, amount: Decimal) -> dict:
    account = f"acct{n % 40}"
    return {"charge_id": f"ch-{n}", "attempt_id": f"at-{n}", "kind": "charge", "corrects": None,
            "environment": "demo", "account": account, "customer": "acme", "direction": "outgoing",
            "attempted_at": T0 + timedelta(milliseconds=n), "rated_at": T0 + timedelta(milliseconds=n + 1),
            "from_user": account, "to_user": "+442071234567", "to_domain": "example.net",
            "destination": "442071234567", "on_net": False, "body_chars": 42, "billing_units": 1,
            "unit_price": amount, "amount": amount, "currency": "EUR", "tariff": "Messaging EUR",
            "rate_code": "44", "rate_effective_from": T0, "service_policy": None, "policies": [],
            "transport_protocol": "SIP", "vendor": None, "connection": None, "vendor_tariff": None,
            "vendor_cost": Decimal("0"), "vendor_currency": None}


def progress(engine: sa.Engine) -> int:
    table = ProjectionOffset.__table__
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(table.c.next_offset), 0))
                            .where(table.c.projector == "xdr")).scalar_one())


def start_projector(bootstrap: str, database_url: str, prefix: str, log) -> subprocess.Popen:
    """`imbill project` as an operator runs it (both projectors; this test watches the xDR one)."""
    return subprocess.Popen(
        [sys.executable, "-m", "imbill", "--bootstrap-servers", bootstrap, "--database-url", database_url,
         "--topic-prefix", prefix, "project", "--max-poll-records", "100"],
        stdout=log, stderr=subprocess.STDOUT)


def wait_for(condition, process: subprocess.Popen, log_path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"projector exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"projector made no progress in {timeout}s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.005)


def test_sigkill_at_random_points_neither_loses_nor_doubles(database_url, bootstrap, topics, tmp_path):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    charges = [charge(n, Decimal(rng.randint(1, 10**9)).scaleb(-6)) for n in range(DISTINCT)]
    stream = charges + rng.sample(charges, DUPLICATES)
    rng.shuffle(stream)
    rounds = [stream[i::ROUNDS] for i in range(ROUNDS)]

    migrate(database_url)
    engine = connect(database_url)
    producer = EventProducer(bootstrap)
    log_path = tmp_path / "projector.log"
    fed, killed_at = 0, []
    try:
        with open(log_path, "ab") as log:
            for number, batch in enumerate(rounds):
                for record in batch:
                    producer.send(topics.charges, f"demo/{record['account']}", "Charge", record)
                producer.flush()
                before, fed = progress(engine), fed + len(batch)
                process = start_projector(bootstrap, database_url, topics.prefix, log)
                if number < ROUNDS - 1:
                    wait_for(lambda: progress(engine) > before, process, log_path)
                    time.sleep(rng.uniform(0, 0.05))
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    killed_at.append((progress(engine), fed))
                else:
                    wait_for(lambda: progress(engine) >= len(stream), process, log_path)
                    process.terminate()
                    assert process.wait(timeout=15) == 0, log_path.read_text()[-3000:]

        with engine.connect() as conn:
            got = conn.execute(sa.select(Xdr.charge_id, Xdr.amount)).all()
            by_account = conn.execute(sa.select(Xdr.account, Xdr.amount)).all()
        assert progress(engine) == len(stream), f"seed {seed}"
    finally:
        producer.close()
        engine.dispose()

    assert any(applied < fed for applied, fed in killed_at), f"no kill landed mid-work: {killed_at}"
    assert len(got) == DISTINCT and {c for c, _ in got} == {c["charge_id"] for c in charges}, f"seed {seed}"
    assert sum(a for _, a in got) == sum(c["amount"] for c in charges), f"seed {seed}"
    on_topic: dict[str, list] = {}
    for c in charges:
        on_topic.setdefault(c["account"], []).append(c["amount"])
    in_sql: dict[str, list] = {}
    for account, amount in by_account:
        in_sql.setdefault(account, []).append(amount)
    assert {a: (len(v), sum(v)) for a, v in in_sql.items()} == {a: (len(v), sum(v)) for a, v in on_topic.items()}
    assert all(isinstance(a, Decimal) for _, a in got)
