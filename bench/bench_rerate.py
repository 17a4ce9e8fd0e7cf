"""Benchmark of re-rating: the dry run's attempts/s against the rule functions' own rate, and
the real run's corrections/s, in the same run on the same machine.

    python bench/bench_rerate.py              # 200,000 attempts, 2,000 accounts
    python bench/bench_rerate.py --quick      # 20,000 attempts, smoke run

A fresh local broker (Tansu) is started on a free port. The config of bench_processor.py (MSGN
at 0.05) is appended, N attempts are preloaded onto the attempts topic, and one processor
worker (``python -m imbill process``, a subprocess) bills them all before anything is timed:
the charges on the charges topic are the processor's, and (c) times the corrections alone,
not the billing of the attempts too. Then the MSGN rate is corrected to 0.04 from before the
first attempt, and:

(a) rules: ``domain.rerate.rerate`` over every attempt and its charge in memory: the rule
    functions alone (the live ``rate_attempt`` and the comparison);
(b) dry run: ``imbill rerate --dry-run``'s use case: offsets-for-times, reading and decoding
    the attempts and the charges, re-rating, comparing, summing;
(c) real run: (b) plus appending a correction per attempt and waiting until the worker has
    applied every one of them (its balance moves and the correction on the charges topic);
    the worker's CPU seconds over (c) are printed with it.

Aim: (b) >= 50% of (a)'s rate: reading and decoding must not dominate.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path


from bench_processor import (ENV, T0, _free_port, attempt, config_objects, count_outputs, cpu_seconds, preload,
                             publish_config)
from imbill.broker import start_broker
from imbill.bus import EventProducer, create_topics
from imbill.domain.config import KIND_BY_CLASS, ConfigState, Rate, to_record
from imbill.domain.events import MessageAttempt
from imbill.domain.rating import charge_of, rate_attempt
from imbill.domain.rerate import RerateFilter, rerate
from imbill.rerating import QUIET, rerate_period
from imbill.schemas.topics import Topics
from imbill.settings import load_settings


def folded(accounts: int, *extra) -> ConfigState:
    state = ConfigState()
    for n, obj in enumerate((*config_objects(accounts), *extra)):
        state = state.apply(KIND_BY_CLASS[type(obj)].event,
                            {"event_id": f"cfg-{n}", "environment": ENV, "occurred_at": T0, **to_record(obj)})
    return state


def live_charges(attempts: list[MessageAttempt], config: ConfigState) -> list:
    """The live rules' charge of every attempt, as the processor bills it, for (a)."""
    return [charge_of(sent, rate_attempt(sent, config, rated_at=sent.received_at), sent.received_at)
            for sent in attempts]


def start_worker(bootstrap: str, topics: Topics, data: str, profile: str | None) -> tuple[subprocess.Popen, Path]:
    log = Path(data) / "worker.log"
    profiled = ["-m", "cProfile", "-o", profile] if profile else []
    worker = subprocess.Popen([sys.executable, *profiled, "-m", "imbill", "--bootstrap-servers", bootstrap,
                               "--topic-prefix", topics.prefix, "process", "--worker-id", "bench-rerate", "--data-dir",
                               data, "--session-timeout", "6"], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return worker, log


class StageTimes:
    """A run's progress as the seconds each stage started after the first (``--stages``)."""

    def __init__(self) -> None:
        self.first = time.perf_counter()

    def stage(self, name: str, total: int | None):
        print(f"    {time.perf_counter() - self.first:7.2f}s {name} ({total if total is not None else '?'})",
              flush=True)
        return lambda done: None


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
    parser.add_argument("--profile-worker", default=None, metavar="FILE", help="cProfile the worker of (c) into FILE")
    parser.add_argument("--stages", action="store_true", help="print when each stage of (b) and (c) starts")
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
        charges = live_charges(attempts, before)
        worker, log = start_worker(bootstrap, topics, data, args.profile_worker)
        try:
            billed = time.perf_counter()
            count, _, _, _ = asyncio.run(count_outputs(bootstrap, topics, n, timeout=3_600))
            if count < n:
                sys.exit(f"the worker billed {count:,} of {n:,} attempts: {log.read_text(errors='replace')[-2000:]}")
            print(f"preloaded {n:,} attempts in {loaded:.1f}s; the worker billed them in "
                  f"{time.perf_counter() - billed:.1f}s", flush=True)
            measure(args, bootstrap, topics, n, attempts, charges, worker)
        finally:
            worker.send_signal(signal.SIGINT if args.profile_worker else signal.SIGTERM)
            worker.wait(timeout=60)


def measure(args: argparse.Namespace, bootstrap: str, topics: Topics, n: int, attempts: list[MessageAttempt],
            charges: list, worker: subprocess.Popen) -> None:
    """(a), (b) and (c), once the worker has billed every attempt."""
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
    stages = StageTimes() if args.stages else QUIET
    dry = rerate_period(settings, period, dry_run=True, requested_by="bench", progress=stages)
    dry_rate = n / (time.perf_counter() - started)
    if profile is not None:
        profile.disable()
        profile.dump_stats(args.profile)
    print(f"(b) dry run:  {dry_rate:10,.0f} attempts/s ({dry.run.changed:,} changed) = "
          f"{dry_rate / rules:.2f} of (a) (aim >= 0.50)", flush=True)

    started, worker_cpu = time.perf_counter(), cpu_seconds(worker.pid)
    real = rerate_period(settings, period, dry_run=False, requested_by="bench", wait=3_600,
                         progress=StageTimes() if args.stages else QUIET)
    elapsed, worker_cpu = time.perf_counter() - started, cpu_seconds(worker.pid) - worker_cpu
    print(f"(c) real run: {real.appended / elapsed:10,.0f} corrections/s ({real.appended:,} found, appended "
          f"and applied by one worker in {elapsed:.1f}s; the worker's CPU {worker_cpu:.1f}s)", flush=True)


if __name__ == "__main__":
    main()
