"""Benchmark of the xDR projector into PostgreSQL against a raw COPY of the same rows.

    python bench/bench_projection.py                  # 200,000 charges
    python bench/bench_projection.py --quick          # 20,000 charges, smoke run
    python bench/bench_projection.py --profile FILE   # also cProfile the projector into FILE

A fresh local broker (Tansu) is started on a free port and N Avro Charges (3,000 accounts,
4 in 5 on-net, the rest off-net through a carrier) are preloaded onto the charges topic; a
fresh PostgreSQL database is migrated to head (``IMBILL_BENCH_POSTGRES_URL``, default the
machine's PostgreSQL as the tests use it). Before anything is timed, the records are also
decoded and mapped once into the xDR rows the projector writes.

(a) raw COPY: those rows, already built, into a table made ``LIKE xdr INCLUDING ALL`` (the
    same columns, primary key and indexes) with one COPY in one transaction: the floor that
    PostgreSQL sets on this machine.
(b) imbill: ``XdrProjector`` reading the topic from offset zero (kafka-python), decoding,
    mapping and writing each poll's rows and offsets in one transaction (COPY in a
    savepoint), as ``imbill project --max-poll-records 5000`` does; timed from its first
    poll to the end of the topic.

Target: >= 50,000 xDR rows/s and >= 50% of the raw COPY's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import socket
import tempfile
import time
from collections import namedtuple
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

from imbill.broker import start_broker
from imbill.bus import create_topics
from imbill.projections.models import Xdr, connect, migrate
from imbill.projections.projector import XdrProjector, _envelope, charge_row
from imbill.schemas.codec import encode
from imbill.schemas.topics import Topics

POSTGRES = os.environ.get("IMBILL_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/")
DATABASE = "imbill_bench_projection"
ENV = "bench"
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
_Message = namedtuple("_Message", "topic partition offset timestamp key value")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def charge(i: int, accounts: int) -> dict:
    """The i-th charge: on-net 4 times in 5 (MSGN, internal vendor), else off-net to 44."""
    account = str(1000 + i % accounts)
    on_net = i % 5 != 0
    units = 1 + i % 3
    price, cost = (Decimal("0.050000"), Decimal(0)) if on_net else (Decimal("0.120000"), Decimal("0.030000"))
    at = T0 + timedelta(hours=1, milliseconds=i)
    return {
        "charge_id": f"chg-bench-{i:058d}", "attempt_id": f"bench-{i:058d}", "kind": "charge", "corrects": None,
        "environment": ENV, "account": account, "customer": f"Customer {i % 300}", "direction": "outgoing",
        "attempted_at": at, "rated_at": at + timedelta(milliseconds=3), "from_user": account,
        "to_user": str(1000 + (i * 7 + 1) % accounts) if on_net else "011442079460000",
        "to_domain": "bench.example", "destination": str(1000 + (i * 7 + 1) % accounts) if on_net else "442079460000",
        "on_net": on_net, "body_chars": 60 * units, "billing_units": units, "unit_price": price,
        "amount": price * units, "currency": "USD", "tariff": "B", "rate_code": "MSGN" if on_net else "44",
        "rate_effective_from": T0, "service_policy": "Instant messaging", "policies": ["Instant messaging"],
        "transport_protocol": "SIP", "vendor": "Internal vendor" if on_net else "Off-net carrier",
        "connection": "Internal messaging via SIP" if on_net else "Carrier SIP",
        "vendor_tariff": "A" if on_net else "C", "vendor_cost": cost * units, "vendor_currency": "USD",
        "revision": 1, "service": "messaging", "node": "PortaSIP", "cli_translated": account,
        "destination_description": "On-net messages" if on_net else "United Kingdom",
        "user_agent": "Linphone/5.2.0",
    }


async def preload(bootstrap: str, topic: str, n: int, accounts: int) -> list[_Message]:
    """N charges onto ``topic``; returns them as the projector will read them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=262_144, enable_idempotence=False)
    await producer.start()
    sent = []
    try:
        pending = []
        for i in range(n):
            record = charge(i, accounts)
            value, key = encode("Charge", record), f"{ENV}/{record['account']}".encode()
            pending.append((key, value, await producer.send(topic, value, key=key)))
            if len(pending) >= 5000:
                sent += [(k, v, await f) for k, v, f in pending]
                pending.clear()
        sent += [(k, v, await f) for k, v, f in pending]
    finally:
        await producer.stop()
    return [_Message(topic, meta.partition, meta.offset, meta.timestamp, key, value) for key, value, meta in sent]


def fresh_database() -> str:
    admin = sa.create_engine(POSTGRES.rstrip("/") + "/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
            conn.exec_driver_sql(f'CREATE DATABASE "{DATABASE}"')
    finally:
        admin.dispose()
    url = POSTGRES.rstrip("/") + "/" + DATABASE
    migrate(url)
    return url


def raw_copy(url: str, rows: list[dict]) -> tuple[float, float]:
    """(a): the built rows into a copy of the xdr table, one COPY, one transaction."""
    columns = list(Xdr.__table__.columns.keys())
    names = ", ".join(f'"{c}"' for c in columns)
    values = [tuple(row[c] for c in columns) for row in rows]
    engine = connect(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE xdr_raw_copy (LIKE xdr INCLUDING ALL)")
        started, cpu = time.perf_counter(), time.process_time()
        with engine.begin() as conn:
            cursor = conn.connection.driver_connection.cursor()
            with cursor.copy(f"COPY xdr_raw_copy ({names}) FROM STDIN") as copy:
                for row in values:
                    copy.write_row(row)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM xdr_raw_copy").scalar_one() == len(rows)
        return elapsed, cpu
    finally:
        engine.dispose()


def project(url: str, bootstrap: str, topics: Topics, n: int, max_poll_records: int,
            profile: str | None) -> tuple[float, float]:
    """(b): the projector from offset zero to the end of the topic."""
    with XdrProjector(url, bootstrap, topics, name="bench", max_poll_records=max_poll_records) as projector:
        profiler = cProfile.Profile() if profile else None
        started, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        applied = projector.run_until_idle(timeout=3600, poll_timeout=0.5)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile)
    engine = connect(url)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT count(*) FROM xdr").scalar_one()
    finally:
        engine.dispose()
    if applied != n or rows != n:
        raise SystemExit(f"the projector applied {applied:,} records and left {rows:,} xDRs, not {n:,}")
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charges", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=3_000)
    parser.add_argument("--max-poll-records", type=int, default=5000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the projector into FILE")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.charges
    work = Path(tempfile.mkdtemp(prefix="imbill-bench-"))
    url = fresh_database()
    with start_broker(port=_free_port(), log_path=work / "broker.log") as broker:
        topics = Topics("bench.")
        create_topics(broker.bootstrap_servers, topics.specs())
        started = time.monotonic()
        messages = asyncio.run(preload(broker.bootstrap_servers, topics.charges, n, args.accounts))
        rows = [charge_row(_envelope(message, typed=False)) for message in messages]
        print(f"preloaded {n:,} charges ({sum(len(m.value) for m in messages) / n:.0f} bytes each) and built "
              f"their rows in {time.monotonic() - started:.1f}s")

        raw, raw_cpu = raw_copy(url, rows)
        print(f"(a) raw COPY of the built rows: {n / raw:,.0f} rows/s ({raw:.1f}s; "
              f"{raw_cpu / n * 1e6:.0f} us of this process's CPU per row)")
        imbill, cpu = project(url, broker.bootstrap_servers, topics, n, args.max_poll_records, args.profile)
        print(f"(b) imbill xDR projector (topic -> decode -> map -> COPY + offsets per poll of "
              f"{args.max_poll_records:,}): {n / imbill:,.0f} rows/s ({imbill:.1f}s; "
              f"{cpu / n * 1e6:.0f} us of this process's CPU per row)")
        print(f"ratio imbill / raw COPY: {raw / imbill:.2f}")
        if args.profile:
            print(f"profile: python -c \"import pstats; pstats.Stats('{args.profile}')"
                  f".sort_stats('cumulative').print_stats(40)\"")
    print(f"broker log in {work}; database {DATABASE} kept for inspection")


if __name__ == "__main__":
    main()
