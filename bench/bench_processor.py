"""Benchmark of the processor worker against a raw consume -> produce loop, same broker.

    python bench/bench_processor.py                 # 100,000 attempts, 3,000 accounts
    python bench/bench_processor.py --quick         # 20,000 attempts, smoke run
    python bench/bench_processor.py --profile FILE  # also cProfile the worker into FILE

A fresh local broker (Tansu) is started on a free port; the config (the operator checklist
plus the accounts, half prepaid, half postpaid, all able to pay for every message) is
appended to the config topic and N Avro MessageAttempts (150 characters, on-net, 3 billing
units) are preloaded onto the attempts topic before anything is timed.

(a) raw: one aiokafka consumer reading the 4 partitions -> decode -> encode -> one aiokafka
    producer to a scratch topic, acks=all, each poll's sends awaited: the floor that Kafka
    and Avro set on this machine.
(b) imbill: one worker (``python -m imbill process``, a subprocess) rating and
    billing every attempt: charges, balance events and the balance table's changelog.

Rates are attempts / second between the first and the last output record's timestamps
(start-up and group join excluded; the wall time including them is printed too). Beside
them, CPU time per attempt: of the raw loop's process, and of the worker from its first
output to its last (the broker's is in neither); it moves less than rates when other work
shares the machine.
Target: >= 5,000 attempts/s for one worker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from imbill.broker import start_broker
from imbill.bus import EventProducer, create_topics
from imbill.domain.keys import account_key
from imbill.schemas.codec import decode, encode
from imbill.domain.config import (Account, Customer, Destination, Product, Rate, ServicePolicy, ServiceTypes,
                                   Tariff, UsageCharge, Vendor, VendorConnection, to_record, KIND_BY_CLASS)
from imbill.schemas.topics import ACCOUNT_PARTITIONS, TopicSpec, Topics

ENV = "bench"
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
IM = {"msg.transport_protocol": "SIP", "msg.outgoing_aaa": True, "msg.local_lookup": True,
      "msg.billing_unit_size": 60}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config_objects(accounts: int) -> list:
    objects = [
        ServiceTypes(messaging_enabled=True), Destination("MSGN", "custom", "On-net"),
        ServicePolicy("Instant messaging", "messaging", 5, "%", "", IM), Vendor("Internal vendor", internal=True),
        Tariff("A", "USD", applied_to="vendor"), Rate("A", "|", Decimal(0), T0),
        VendorConnection("Internal vendor", "Internal messaging via SIP", "A", internal=True, use_for="SIP-UA"),
        Tariff("B", "USD"), Rate("B", "MSGN", Decimal("0.05"), T0),
        Product("IM", ("voice", "messaging"), (UsageCharge("messaging", "PortaSIP", "B"),)),
        Customer("Bench", "USD"),
    ]
    for i in range(accounts):
        model = "prepaid" if i % 2 else "postpaid"
        objects.append(Account(f"{1000 + i}", "Bench", "IM", balance_model=model,
                               opening_balance=Decimal("1000000"), credit_limit=Decimal("1000")))
    return objects


def publish_config(bootstrap: str, topics: Topics, accounts: int) -> None:
    producer = EventProducer(bootstrap)
    for n, obj in enumerate(config_objects(accounts)):
        record = {"event_id": f"cfg-{n}", "environment": ENV, "occurred_at": T0, **to_record(obj)}
        producer.send(topics.config, ENV, KIND_BY_CLASS[type(obj)].event, record)
    producer.flush()
    producer.close()


def attempt(i: int, accounts: int) -> dict:
    sender, receiver = 1000 + i % accounts, 1000 + (i * 7 + 1) % accounts
    return {"attempt_id": f"bench-{i:08d}", "received_at": T0 + timedelta(hours=1, milliseconds=i),
            "environment": ENV, "direction": "outgoing", "call_id": f"c{i}@bench", "cseq": 1,
            "from_user": str(sender), "from_domain": "bench.example", "to_user": str(receiver),
            "to_domain": "bench.example", "request_uri": f"sip:{receiver}@bench.example", "user_agent": None,
            "content_type": "text/plain", "body_chars": 150, "body_bytes": 150, "source_ip": "192.0.2.1",
            "source_port": 5060, "transport": "UDP", "edge_id": "bench"}


async def preload(bootstrap: str, topics: Topics, n: int, accounts: int) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=262_144, enable_idempotence=False)
    await producer.start()
    started = time.monotonic()
    try:
        pending = []
        for i in range(n):
            record = attempt(i, accounts)
            key = account_key(ENV, record["from_user"])
            pending.append(await producer.send(topics.attempts, encode("MessageAttempt", record), key=key))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - started


async def raw_loop(bootstrap: str, topics: Topics, out_topic: str, n: int) -> float:
    """(a): consume -> decode -> encode -> produce, each poll's sends awaited."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=50, max_partition_fetch_bytes=4 * 1024 * 1024)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=262_144, enable_idempotence=False)
    await consumer.start()
    await producer.start()
    try:
        tps = [TopicPartition(topics.attempts, p) for p in range(ACCOUNT_PARTITIONS)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        done, started = 0, time.monotonic()
        while done < n:
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            sent = []
            for messages in batches.values():
                for message in messages:
                    name, record = decode(message.value)
                    sent.append(await producer.send(out_topic, encode(name, record), key=message.key))
            await asyncio.gather(*sent)
            done += len(sent)
        return time.monotonic() - started
    finally:
        await consumer.stop()
        await producer.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def count_outputs(bootstrap: str, topics: Topics, n: int, timeout: float,
                        worker_pid: int = 0) -> tuple[int, int, int, float]:
    """Read charges + rejections until ``n`` records: (count, first ts, last ts, the worker's
    CPU seconds from the first output to the last). Records are counted, not decoded, so the
    reader takes little of the CPU the worker runs on."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=100, max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in (topics.charges, topics.rejections) for p in range(ACCOUNT_PARTITIONS)]
        while not all(consumer.partitions_for_topic(t) for t in (topics.charges, topics.rejections)):
            await consumer._client.force_metadata_update()
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        count, first, last, cpu_at_first = 0, None, 0, 0.0
        deadline = time.monotonic() + timeout
        while count < n and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                if first is None:
                    cpu_at_first = cpu_seconds(worker_pid)
                count += len(messages)
                first = min(m.timestamp for m in messages) if first is None else first
                last = max(last, messages[-1].timestamp)
        return count, first or 0, last, cpu_seconds(worker_pid) - cpu_at_first
    finally:
        await consumer.stop()


def run_worker(bootstrap: str, prefix: str, data_dir: Path, log_path: Path, profile: str | None,
               batch_size: int) -> subprocess.Popen:
    command = [sys.executable]
    if profile:
        command += ["-m", "cProfile", "-o", profile]
    command += ["-m", "imbill", "--bootstrap-servers", bootstrap, "--topic-prefix", prefix, "process",
                "--worker-id", "bench-1", "--data-dir", str(data_dir), "--batch-size", str(batch_size),
                "--log-level", "info"]
    return subprocess.Popen(command, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=3_000)
    parser.add_argument("--batch-size", type=int, default=4000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the worker into FILE")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.attempts
    work = Path(tempfile.mkdtemp(prefix="imbill-bench-"))
    with start_broker(port=_free_port(), log_path=work / "broker.log") as broker:
        bootstrap = broker.bootstrap_servers
        topics = Topics("bench.")
        scratch = TopicSpec("bench.raw-out", ACCOUNT_PARTITIONS, "", "delete", -1, (), "raw loop output")
        create_topics(bootstrap, [*topics.specs(), scratch])
        publish_config(bootstrap, topics, args.accounts)
        loaded = asyncio.run(preload(bootstrap, topics, n, args.accounts))
        print(f"preloaded {n:,} attempts for {args.accounts:,} accounts in {loaded:.1f}s")

        cpu = time.process_time()
        raw = asyncio.run(raw_loop(bootstrap, topics, scratch.name, n))
        raw_cpu = (time.process_time() - cpu) / n * 1e6
        print(f"(a) raw consume->decode->encode->produce: {n / raw:,.0f} attempts/s ({raw:.1f}s; "
              f"{raw_cpu:.0f} us CPU each)")

        started = time.monotonic()
        worker = run_worker(bootstrap, "bench.", work / "data", work / "worker.log", args.profile,
                            args.batch_size)
        try:
            count, first, last, worker_cpu = asyncio.run(count_outputs(bootstrap, topics, n, timeout=600,
                                                                       worker_pid=worker.pid))
            wall = time.monotonic() - started
        finally:
            stop(worker)
        if count < n:
            sys.exit(f"the worker decided {count:,} of {n:,} attempts; see {work / 'worker.log'}")
        span = max(last - first, 1) / 1000
        print(f"(b) imbill worker (rate + bill + changelog): {n / span:,.0f} attempts/s "
              f"({span:.1f}s from first to last output; {wall:.1f}s wall with start-up and join; "
              f"{worker_cpu / n * 1e6:.0f} us CPU each)")
        print(f"ratio imbill / raw: {(n / span) / (n / raw):.2f}")
        if args.profile:
            print(f"profile: python -c \"import pstats; pstats.Stats('{args.profile}')"
                  f".sort_stats('cumulative').print_stats(40)\"")
    print(f"logs in {work}")


if __name__ == "__main__":
    main()
