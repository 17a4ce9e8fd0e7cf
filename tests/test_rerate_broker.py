"""``imbill rerate`` on the real local broker, with a live processor: a rate corrected for the
past, a dry run that says what would change, the run that appends the corrections, a second
run that appends nothing; a no_rate rejection that becomes a charge; a charge reversed."""

from __future__ import annotations

import csv
import io
import random
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from click.testing import CliRunner

from imbill.cli import cli
from imbill.domain.config import Account, Customer, Rate
from imbill.schemas.topics import Topics
from tests.builders import ALICE, BOB, ENV, T0, checklist
from tests.test_processor import Worker, message, publish, publish_config, records_of, wait_for

pytestmark = pytest.mark.integration

PERIOD = ("--from", "2024-01-01", "--to", "2024-01-02", "--environment", ENV)


def imbill(bootstrap: str, topics: Topics, *args: str):
    return CliRunner().invoke(cli, ["--bootstrap-servers", bootstrap, "--topic-prefix", topics.prefix, *args],
                              env={"COLUMNS": "80", "NO_COLOR": "1"}, terminal_width=80)


def publish_more_config(bootstrap: str, topics: Topics, builder, already: int) -> int:
    """Publish the builder's events after the first ``already``; the new count."""
    publish(bootstrap, topics.config, [(ENV, name, record) for name, record in builder.events[already:]])
    return len(builder.events)


def outcomes(bootstrap: str, topics: Topics) -> int:
    return len(records_of(bootstrap, topics.charges)) + len(records_of(bootstrap, topics.rejections))


def changed_rows(result) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(result.stdout[result.stdout.index("attempt_id,"):])))


def test_a_corrected_rate_is_re_rated_once_and_balances_follow(bootstrap: str, topics: Topics, tmp_path) -> None:
    config = checklist(msgn_price="0.05")
    publish_config(bootstrap, topics, config)
    published = len(config.events)
    worker = Worker(bootstrap, topics, tmp_path, "w-rerate")
    try:
        publish(bootstrap, topics.attempts, [*[message(f"a{n}") for n in range(6)],
                                             *[message(f"b{n}", sender=BOB) for n in range(4)]])
        wait_for(lambda: outcomes(bootstrap, topics) >= 10, worker, 60, "the attempts to be charged")
        config.define(Rate("B", "MSGN", Decimal("0.04"), T0))
        publish_more_config(bootstrap, topics, config, published)

        dry = imbill(bootstrap, topics, "rerate", *PERIOD, "--dry-run", "--csv", "-")
        assert dry.exit_code == 0, dry.output
        rows = changed_rows(dry)
        assert len(rows) == 10 and {r["difference"] for r in rows} == {"-0.03"}
        assert {r["old_amount"]: r["new_amount"] for r in rows} == {"0.15": "0.12"}
        assert "dry run, nothing appended" in dry.stdout
        assert records_of(bootstrap, topics.corrections) == []

        real = imbill(bootstrap, topics, "rerate", *PERIOD, "--by", "ops")
        assert real.exit_code == 0, real.output
        corrections = [c for c in records_of(bootstrap, topics.charges) if c["kind"] == "correction"]
        assert len(corrections) == 10 and {c["difference"] for c in corrections} == {Decimal("-0.03")}
        refunds = [b for b in records_of(bootstrap, topics.balances) if b["cause"] == "correction"]
        assert sorted(b["delta"] for b in refunds) == [Decimal("0.03")] * 10
        latest = {b["account"]: b["balance"] for b in records_of(bootstrap, topics.balances)}
        assert latest == {ALICE: Decimal("1.00") - 6 * Decimal("0.12"), BOB: Decimal("1.00") - 4 * Decimal("0.12")}

        again = imbill(bootstrap, topics, "rerate", *PERIOD, "--by", "ops")
        assert again.exit_code == 0, again.output
        assert len(records_of(bootstrap, topics.corrections)) == 10
        runs = imbill(bootstrap, topics, "rerate", "list", "--format", "csv")
        rows = list(csv.DictReader(io.StringIO(runs.stdout)))
        assert [(r["state"], r["requested_by"], r["changed"], r["appended"]) for r in rows] == [
            ("finished", "ops", "10", "10"), ("finished", "ops", "0", "0")]
        shown = imbill(bootstrap, topics, "rerate", "show", rows[0]["run_id"], "--format", "csv")
        assert "differences,USD -0.30" in shown.stdout.replace('"', "")
    finally:
        worker.stop()


def test_a_no_rate_rejection_becomes_a_charge_and_a_charge_is_reversed(bootstrap: str, topics: Topics,
                                                                        tmp_path) -> None:
    config = checklist(msgn_price="0.05")
    publish_config(bootstrap, topics, config)
    published = len(config.events)
    worker = Worker(bootstrap, topics, tmp_path, "w-rerate-2")
    try:
        publish(bootstrap, topics.attempts, [message("charged")])
        wait_for(lambda: outcomes(bootstrap, topics) >= 1, worker, 60, "the first attempt to be charged")
        config.remove("rate", "B|MSGN|" + T0.isoformat())
        published = publish_more_config(bootstrap, topics, config, published)
        publish(bootstrap, topics.attempts, [message("refused", received_at=T0 + timedelta(hours=2))])
        wait_for(lambda: outcomes(bootstrap, topics) >= 2, worker, 60, "the second attempt to be refused")
        assert [r["reason_code"] for r in records_of(bootstrap, topics.rejections)] == ["no_rate"]

        config.define(Rate("B", "MSGN", Decimal("0.02"), T0 + timedelta(hours=1, minutes=30)))
        publish_more_config(bootstrap, topics, config, published)
        run = imbill(bootstrap, topics, "rerate", *PERIOD, "--csv", "-")
        assert run.exit_code == 0, run.output
        changes = {r["attempt_id"]: r for r in changed_rows(run)}
        assert changes["refused"]["reason"] == "now rated (was no_rate)"
        assert changes["refused"]["new_amount"] == "0.06" and changes["refused"]["difference"] == "0.06"
        assert changes["charged"]["reason"] == "reversed: now no_rate"
        assert changes["charged"]["new_amount"] == "0.00" and changes["charged"]["difference"] == "-0.15"
        balance = [b for b in records_of(bootstrap, topics.balances)][-1]["balance"]
        assert balance == Decimal("1.00") - Decimal("0.06")
    finally:
        worker.stop()


def _run_ids(bootstrap: str, topics: Topics) -> dict[str, str]:
    listed = imbill(bootstrap, topics, "rerate", "list", "--format", "csv")
    return {row["run_id"]: row["state"] for row in csv.DictReader(io.StringIO(listed.stdout))}


def test_a_re_rating_killed_three_times_with_live_traffic_finishes_without_doubling(bootstrap: str, topics: Topics,
                                                                                    tmp_path) -> None:
    config = checklist(msgn_price="0.05", balance_model="postpaid")
    config.define(*(replace(config.env.accounts[a], credit_limit=Decimal(1_000)) for a in (ALICE, BOB)))
    publish_config(bootstrap, topics, config)
    published = len(config.events)
    period = [message(f"p{n}", sender=ALICE if n % 2 else BOB, received_at=T0 + timedelta(hours=1, seconds=n))
              for n in range(1_500)]
    worker = Worker(bootstrap, topics, tmp_path, "w-rerate-kill")
    live = threading.Event()
    try:
        publish(bootstrap, topics.attempts, period)
        wait_for(lambda: outcomes(bootstrap, topics) >= 1_500, worker, 120, "the period's attempts to be charged")
        config.define(Rate("B", "MSGN", Decimal("0.04"), T0))
        publish_more_config(bootstrap, topics, config, published)

        def traffic() -> None:  # live attempts, dated now: outside the period, billed at the new rate
            n = 0
            while not live.is_set():
                publish(bootstrap, topics.attempts, [message(f"live{n}", received_at=datetime.now(timezone.utc))])
                n += 1
                time.sleep(0.05)

        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        command = [sys.executable, "-m", "imbill", "--bootstrap-servers", bootstrap, "--topic-prefix", topics.prefix,
                   "rerate", *PERIOD, "--by", "ops"]
        rng = random.Random(20261204)
        for _ in range(3):  # SIGKILL at a random point after the run says it started
            runs = {run: state for run, state in _run_ids(bootstrap, topics).items() if state == "started"}
            args = [*command[:command.index("--from")], "--resume", next(iter(runs))] if runs else command
            before = len(records_of(bootstrap, topics.rerate_runs))
            killed = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: len(records_of(bootstrap, topics.rerate_runs)) > before or killed.poll() is not None
                     or len(records_of(bootstrap, topics.corrections)) >= len(period), worker, 120,
                     "the re-rating to start")
            time.sleep(rng.uniform(0.0, 1.0))
            killed.kill()
            killed.wait()
        runs = {run: state for run, state in _run_ids(bootstrap, topics).items() if state == "started"}
        resume = ["--resume", next(iter(runs))] if runs else []
        args = [*command[:command.index("--from")], *resume] if resume else command
        finished = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr
        live.set()
        sender.join()
        wait_for(lambda: _settled(bootstrap, topics), worker, 60, "every live attempt to be decided")
    finally:
        live.set()
        worker.stop()
    charges = records_of(bootstrap, topics.charges)
    ids = [c["charge_id"] for c in charges]
    assert len(ids) == len(set(ids)), "a charge or correction appended twice"
    corrected = [c for c in charges if c["kind"] == "correction"]
    assert sorted(c["attempt_id"] for c in corrected) == sorted(r[2]["attempt_id"] for r in period)
    assert {c["revision"] for c in corrected} == {2} and {c["amount"] for c in corrected} == {Decimal("0.12")}
    latest: dict[str, dict] = {}
    for charge in charges:
        if charge["revision"] > latest.get(charge["attempt_id"], {"revision": 0})["revision"]:
            latest[charge["attempt_id"]] = charge
    balances = {b["account"]: b["balance"] for b in records_of(bootstrap, topics.balances)}
    for account in (ALICE, BOB):
        spent = sum(c["amount"] for c in latest.values() if c["account"] == account)
        assert balances[account] == Decimal("1.00") - spent, account
    assert set(_run_ids(bootstrap, topics).values()) == {"finished"}
    clean = imbill(bootstrap, topics, "--database-url", f"sqlite:///{tmp_path / 'none.db'}", "--environment", ENV,
                   "reconcile")
    assert clean.exit_code == 0 and clean.output.startswith("clean: "), clean.output


def _settled(bootstrap: str, topics: Topics) -> bool:
    attempts = {r["attempt_id"] for r in records_of(bootstrap, topics.attempts)}
    decided = {r["attempt_id"] for r in records_of(bootstrap, topics.charges)}
    decided |= {r["attempt_id"] for r in records_of(bootstrap, topics.rejections)}
    return attempts <= decided


CUSTOMERS = ("Alpha", "Bravo", "Charlie", "Delta")


def ten_thousand_config():
    """The checklist at MSGN 0.01 (a message of 150 characters: 3 units, 0.03; at 0.008, 0.024
    rounded to the cent: 0.02), and 100 postpaid accounts of four customers (25 each)."""
    config = checklist(msgn_price="0.01", balance_model="postpaid")
    config.define(*(Customer(name, "USD") for name in CUSTOMERS))
    config.define(*(Account(f"3{n:03d}", CUSTOMERS[n % 4], "IM product", balance_model="postpaid",
                            opening_balance=Decimal("5.00"), credit_limit=Decimal(1_000)) for n in range(100)))
    return config


def test_ten_thousand_attempts_re_rated_from_001_to_0008_agree_everywhere(bootstrap: str, topics: Topics, tmp_path,
                                                                          database_url: str) -> None:
    config = ten_thousand_config()
    publish_config(bootstrap, topics, config)
    published = len(config.events)
    attempts = [message(f"t{n:05d}", sender=f"3{n % 100:03d}", received_at=T0 + timedelta(hours=1, milliseconds=n)) for n in range(10_000)]
    worker = Worker(bootstrap, topics, tmp_path, "w-rerate-10k")
    try:
        publish(bootstrap, topics.attempts, attempts)
        wait_for(lambda: len(records_of(bootstrap, topics.charges)) >= 10_000, worker, 300,
                 "10,000 attempts to be charged at 0.01")
        config.define(Rate("B", "MSGN", Decimal("0.008"), T0))  # the rate in force since T0, corrected
        publish_more_config(bootstrap, topics, config, published)

        dry = imbill(bootstrap, topics, "rerate", *PERIOD, "--dry-run", "--csv", "-")
        assert dry.exit_code == 0, dry.output
        rows = changed_rows(dry)
        assert len(rows) == 10_000 and {r["difference"] for r in rows} == {"-0.01"}
        per_customer: dict[str, Decimal] = {}
        for row in rows:
            per_customer[row["customer"]] = per_customer.get(row["customer"], Decimal(0)) + Decimal(row["difference"])
        assert per_customer == {name: Decimal("-25.00") for name in CUSTOMERS}
        assert "│   10000 │   10000 │   10000 │        0 │" in dry.stdout

        real = imbill(bootstrap, topics, "rerate", *PERIOD, "--wait", "300")
        assert real.exit_code == 0, real.output
        corrections = [c for c in records_of(bootstrap, topics.charges) if c["kind"] == "correction"]
        assert len(corrections) == 10_000 == len({c["charge_id"] for c in corrections})
        again = imbill(bootstrap, topics, "rerate", *PERIOD)
        assert again.exit_code == 0, again.output
        assert len(records_of(bootstrap, topics.corrections)) == 10_000
    finally:
        worker.stop()

    balances = {b["account"]: b["balance"] for b in records_of(bootstrap, topics.balances)}
    assert balances == {f"3{n:03d}": Decimal("5.00") - 100 * Decimal("0.02") for n in range(100)}
    database = ["--database-url", database_url]
    assert imbill(bootstrap, topics, *database, "project", "--once").exit_code == 0
    totals = imbill(bootstrap, topics, *database, "--environment", ENV, "xdr", "--by", "customer", "--format", "csv")
    assert totals.exit_code == 0, totals.output
    by_customer = {r["customer"]: (r["xdrs"], r["amount"]) for r in csv.DictReader(io.StringIO(totals.stdout))}
    assert by_customer == {name: ("2500", "50.00") for name in CUSTOMERS}
    revisions = imbill(bootstrap, topics, *database, "--environment", ENV, "xdr", "--revisions", "--limit", "100000",
                       "--format", "csv")
    assert len(list(csv.DictReader(io.StringIO(revisions.stdout)))) == 20_000
    clean = imbill(bootstrap, topics, *database, "--environment", ENV, "reconcile")
    assert clean.exit_code == 0, clean.output
    assert clean.output.startswith("clean: "), clean.output
