"""Benchmark of re-rating: the dry run's attempts/s against the rule functions' own rate, and
the real run's corrections/s, in the same run on the same machine.

    python bench/bench_rerate.py              # 200,000 attempts, 2,000 accounts
    python bench/bench_rerate.py --quick      # 20,000 attempts, smoke run

A fresh local broker (Tansu) is started on a free port. The config of bench_processor.py (MSGN
at 0.05) is appended, N attempts are preloaded onto the attempts topic and their charges (the
live rules' outcome of each, computed here as the processor would) onto the charges topic.
Then the MSGN rate is corrected to 0.04 from before the first attempt, and:

(a) rules: ``domain.rerate.rerate`` over every attempt and its charge in memory: the rule
    functions alone (the live ``rate_attempt`` and the comparison);
(b) dry run: ``imbill rerate --dry-run``'s use case: offsets-for-times, reading and decoding
    the attempts and the charges, re-rating, comparing, summing;
(c) real run: (b) plus appending a correction per attempt and waiting until one processor
    worker (``python -m imbill process``, a subprocess) has applied every one of them (its
    balance moves and the correction on the charges topic).

Aim: (b) >= 50% of (a)'s rate: reading and decoding must not dominate.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from aiokafka import AIOKafkaProducer

from bench_processor import ENV, T0, _free_port, attempt, config_objects, preload, publish_config
from imbill.broker import start_broker
from imbill.bus import EventProducer, create_topics
from imbill.domain.config import KIND_BY_CLASS, ConfigState, Rate, to_record
from imbill.domain.events import MessageAttempt
from imbill.domain.keys import account_key
from imbill.domain.rating import charge_of, rate_attempt
from imbill.domain.rerate import RerateFilter, rerate
from imbill.rerating import rerate_period
from imbill.schemas.codec import encode_event
from imbill.schemas.topics import Topics
from imbill.settings import load_settings


def folded(accounts: int, *extra) -> ConfigState:
    state = ConfigState()
    for n, obj in enumerate((*config_objects(accounts), *extra)):
        state = state.apply(KIND_BY_CLASS[type(obj)].event,
                            {"event_id": f"cfg-{n}", "environment": ENV, "occurred_at": T0, **to_record(obj)})
    return state


async def preload_charges(bootstrap: str, topics: Topics, attempts: list[MessageAttempt], config: ConfigState) -> list:
    """The live rules' charge of every attempt, appended as the processor appends it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=262_144,
                                enable_idempotence=False)
    await producer.start()
    charges, pending = [], []
    try:
        for sent in attempts:
            charge = charge_of(sent, rate_attempt(sent, config, rated_at=sent.received_at), sent.received_at)
            charges.append(charge)
            key = account_key(ENV, charge.account)
            pending.append(await producer.send(topics.charges, encode_event(charge), key=key))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return charges


def rules_rate(attempts: list[MessageAttempt], charges: list, config: ConfigState, now: datetime) -> tuple[float, int]:
    started = time.perf_counter()
    changed = sum(1 for sent, charge in zip(attempts, charges)
                  if rerate(sent, charge, config, run_id="rr-bench", rated_at=now) is not None)
    return len(attempts) / (time.perf_counter() - started), changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 attempts instead of 200,000")
    parser.add_argument("--attempts", type=int, default=None)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--profile", default=None, metavar="FILE", help="also cProfile the dry run into FILE")
    args = parser.parse_args()
    n = args.attempts or (20_000 if args.quick else 200_000)
    port = _free_port()
    with tempfile.TemporaryDirectory() as data, start_broker(port=port) as broker:
        bootstrap = broker.bootstrap_servers
        topics = Topics(prefix="bench.")
        create_topics(bootstrap, topics.specs())
        publish_config(bootstrap, topics, args.accounts)
        records = [attempt(i, args.accounts) for i in range(n)]
        attempts = [MessageAttempt(**record) for record in records]
        before = folded(args.accounts)
        loaded = asyncio.run(preload(bootstrap, topics, n, args.accounts))
        charges = asyncio.run(preload_charges(bootstrap, topics, attempts, before))
        print(f"preloaded {n:,} attempts and their charges in {loaded:.1f}s + charges", flush=True)

        correction = Rate("B", "MSGN", Decimal("0.04"), T0)
        producer = EventProducer(bootstrap)
        producer.publish(topics.config, ENV, "RateDefined",
                         {"event_id": "cfg-correction", "environment": ENV, "occurred_at": T0, **to_record(correction)})
        producer.close()
        after = folded(args.accounts, correction)
        now = datetime.now(timezone.utc)

        rules, changed = rules_rate(attempts, charges, after, now)
        print(f"(a) rules:    {rules:10,.0f} attempts/s ({changed:,} changed)", flush=True)

        settings = load_settings(bootstrap_servers=bootstrap, topic_prefix=topics.prefix, environment=ENV)
        period = RerateFilter(start=T0, end=T0 + timedelta(days=1), environment=ENV)
        profile = cProfile.Profile() if args.profile else None
        started = time.perf_counter()
        if profile is not None:
            profile.enable()
        dry = rerate_period(settings, period, dry_run=True, requested_by="bench")
        dry_rate = n / (time.perf_counter() - started)
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile)
        print(f"(b) dry run:  {dry_rate:10,.0f} attempts/s ({dry.run.changed:,} changed) = "
              f"{dry_rate / rules:.2f} of (a) (aim >= 0.50)", flush=True)

        log = Path(data) / "worker.log"
        worker = subprocess.Popen([sys.executable, "-m", "imbill", "--bootstrap-servers", bootstrap, "--topic-prefix",
                                   topics.prefix, "process", "--worker-id", "bench-rerate", "--data-dir", data,
                                   "--session-timeout", "6"], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            while "Worker ready" not in log.read_text(errors="replace"):
                if worker.poll() is not None:
                    sys.exit(f"the worker exited: {log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.2)
            started = time.perf_counter()
            real = rerate_period(settings, period, dry_run=False, requested_by="bench", wait=3_600)
            elapsed = time.perf_counter() - started
            print(f"(c) real run: {real.appended / elapsed:10,.0f} corrections/s ({real.appended:,} found, appended "
                  f"and applied by one worker in {elapsed:.1f}s)", flush=True)
        finally:
            worker.terminate()
            worker.wait(timeout=30)


if __name__ == "__main__":
    main()
