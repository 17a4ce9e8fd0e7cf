"""Crash safety of the processor: SIGKILL at random points under a stream of attempts and
top-ups, on a broker without transactions, and balances still come out exact.

A producer thread appends a few thousand attempts from prepaid accounts (enough to empty
wallets, so suspensions and rejections happen), top-ups between them, unknown senders and
retransmissions published twice. The worker is killed with SIGKILL three times at random
moments after it became ready (the last two while it works through the backlog that piled
up while it was down) and a new one is started each time. Afterwards:

- every attempt has exactly one outcome: a charge or a rejection, never both, never two
  different ones; records sent again after a crash are byte-identical copies;
- each account's balance events chain (balance = previous + delta), and the last one equals
  opening balance + its top-ups - the sum of its distinct charges, exactly;
- every top-up was applied once, and no prepaid balance went below zero.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from decimal import Decimal

import pytest

from imbill.bus import EventProducer, read_to_end
from imbill.domain.config import Account
from imbill.schemas.codec import record_of
from tests.builders import ENV, checklist, payment
from tests.test_processor import Worker, message, publish_config

ACCOUNTS = [f"4416329{n:05d}" for n in range(24)]
OPENING = Decimal("3.00")
ATTEMPTS = 3000
TOP_UP = Decimal("1.00")
SESSION_TIMEOUT = 2.0


def produce(bootstrap: str, topics, rnd: random.Random, produced: dict, done: threading.Event) -> None:
    """About 300 attempts/s for 10 s, a top-up every 40 attempts, some noise."""
    producer = EventProducer(bootstrap, linger_ms=5)
    try:
        for n in range(ATTEMPTS):
            sender = "nobody" if n % 97 == 0 else rnd.choice(ACCOUNTS)
            key, name, record = message(f"k{n}", sender=sender)
            producer.send(topics.attempts, key, name, record)
            produced["attempts"].add(record["attempt_id"])
            if n % 61 == 0:  # a retransmission the edge published twice
                producer.send(topics.attempts, key, name, record)
            if n % 40 == 20:
                account = rnd.choice(ACCOUNTS)
                top_up = record_of(payment(str(TOP_UP), payment_id=f"pay-{n}", account=account))
                producer.send(topics.payments, f"{ENV}/{account}", "Payment", top_up)
                produced["payments"][account].append(top_up["payment_id"])
            if n % 30 == 29:
                producer.flush()
                time.sleep(0.1)
        producer.flush()
    finally:
        producer.close()
        done.set()


def decoded(bootstrap: str, topic: str) -> list:
    return [(e.record, e.key) for e in read_to_end(bootstrap, topic)]


def all_decided(bootstrap: str, topics, produced: dict) -> bool:
    ids = {r["attempt_id"] for r, _ in decoded(bootstrap, topics.charges)}
    ids |= {r["attempt_id"] for r, _ in decoded(bootstrap, topics.rejections)}
    paid = {r["cause_id"] for r, _ in decoded(bootstrap, topics.balances) if r["cause"] == "payment"}
    wanted = {p for ids_ in produced["payments"].values() for p in ids_}
    return produced["attempts"] <= ids and wanted <= paid


class Scenario:
    """The config, then a producer thread appending attempts and top-ups (see the module doc)."""

    def __init__(self, bootstrap: str, topics, tmp_path) -> None:
        self.bootstrap, self.topics, self.tmp_path = bootstrap, topics, tmp_path
        self.seed = random.randrange(1 << 30)
        self.rnd = random.Random(self.seed)
        config = checklist(balance_model="prepaid")
        config.define(*[Account(a, "Acme", "IM product", balance_model="prepaid", opening_balance=OPENING)
                        for a in ACCOUNTS])
        publish_config(bootstrap, topics, config)
        self.produced = {"attempts": set(), "payments": defaultdict(list)}
        self.done = threading.Event()
        self.thread = threading.Thread(target=produce, args=(bootstrap, topics, self.rnd, self.produced, self.done),
                                       daemon=True)
        self.workers: list[Worker] = []

    def worker(self, name: str) -> Worker:
        worker = Worker(self.bootstrap, self.topics, self.tmp_path, name, session_timeout=SESSION_TIMEOUT)
        self.workers.append(worker)
        return worker

    def drain(self) -> None:
        """Wait for the producer, then (at most a minute) for every outcome."""
        self.done.wait(timeout=60)
        deadline = time.monotonic() + 60
        while not all_decided(self.bootstrap, self.topics, self.produced) and time.monotonic() < deadline:
            time.sleep(0.5)  # the checks say what is missing, if anything

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()

    def check(self) -> str:
        """Every invariant of the module doc; returns a summary line."""
        bootstrap, topics, produced = self.bootstrap, self.topics, self.produced
        context = f"(seed {self.seed}; logs in {self.tmp_path})"
        by_charge = _copies(decoded(bootstrap, topics.charges), "charge_id", context)
        by_rejection = _copies(decoded(bootstrap, topics.rejections), "rejection_id", context)
        charged = {copies[0]["attempt_id"] for copies in by_charge.values()}
        rejected = {copies[0]["attempt_id"] for copies in by_rejection.values()}
        assert charged & rejected == set(), f"attempts both charged and rejected {context}"
        undecided = [(e.partition, e.offset) for e in read_to_end(bootstrap, topics.attempts)
                     if e.record["attempt_id"] in produced["attempts"] - charged - rejected]
        assert not undecided, f"attempts (partition, offset) without an outcome: {undecided} {context}"
        assert len(charged) > 500 and len(rejected) > 100, f"the scenario lost its point {context}"

        events: dict[str, dict[str, dict]] = defaultdict(dict)  # account -> event_id -> first copy, in order
        for record, _ in decoded(bootstrap, topics.balances):
            events[record["account"]].setdefault(record["event_id"], record)
        for account in ACCOUNTS:
            spent = sum((c[0]["amount"] for c in by_charge.values() if c[0]["account"] == account), Decimal(0))
            paid = produced["payments"][account]
            applied = [e["cause_id"] for e in events[account].values() if e["cause"] == "payment"]
            assert sorted(applied) == sorted(paid), f"{account}: top-ups applied {applied} != {paid} {context}"
            balance = OPENING
            for event in events[account].values():
                balance += event["delta"]
                assert event["balance"] == balance, f"{account}: balance chain broken at {event['event_id']} {context}"
                assert balance >= 0, f"{account}: prepaid balance below zero {context}"
            assert balance == OPENING + TOP_UP * len(paid) - spent, f"{account}: final balance {context}"
        copies = sum(len(c) - 1 for c in by_charge.values()) + sum(len(c) - 1 for c in by_rejection.values())
        return f"seed {self.seed}: {len(charged)} charged, {len(rejected)} rejected, {copies} records sent twice"


def _copies(records: list, id_field: str, context: str) -> dict[str, list]:
    """Records by id; the copies a crash made must be the same record, byte for byte."""
    by_id: dict[str, list] = defaultdict(list)
    for record, _ in records:
        by_id[record[id_field]].append(record)
    for event_id, copies in by_id.items():
        assert all(copy == copies[0] for copy in copies), f"{event_id} sent with different content {context}"
    return by_id


@pytest.mark.integration
def test_sigkill_at_random_points_keeps_every_balance_exact(bootstrap, topics, tmp_path):
    scenario = Scenario(bootstrap, topics, tmp_path)
    worker = scenario.worker("w0")
    try:
        worker.wait_ready()
        scenario.thread.start()
        for n in range(1, 4):
            # the first kill in the steady flow; the others while the new worker works through
            # the backlog that piled up while it started (batches of up to 4,000 attempts)
            time.sleep(scenario.rnd.uniform(0.3, 1.5) if n == 1 else scenario.rnd.uniform(0.0, 0.6))
            worker.kill()
            worker = scenario.worker(f"w{n}")
            worker.wait_ready()
        scenario.drain()
    finally:
        scenario.stop_all()
    print(scenario.check(), "after 3 kills")


@pytest.mark.integration
def test_two_workers_share_the_partitions_through_kills_and_restarts(bootstrap, topics, tmp_path):
    """Partitions move between live workers at every rebalance: one is killed, restarted,
    the other stopped gracefully and restarted, while the attempts keep coming."""
    scenario = Scenario(bootstrap, topics, tmp_path)
    first, second = scenario.worker("a0"), scenario.worker("b0")
    try:
        first.wait_ready()
        second.wait_ready()
        scenario.thread.start()
        time.sleep(scenario.rnd.uniform(0.5, 2.0))
        first.kill()
        first = scenario.worker("a1")
        first.wait_ready()
        time.sleep(scenario.rnd.uniform(0.0, 1.0))
        second.stop()
        second = scenario.worker("b1")
        second.wait_ready()
        scenario.drain()
    finally:
        scenario.stop_all()
    print(scenario.check(), "with two workers")
