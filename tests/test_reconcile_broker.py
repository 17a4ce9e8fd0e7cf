"""imbill reconcile on the real local broker: traffic through a live worker reconciles clean
(topics and projection), then a hand-appended extra BalanceChanged or a duplicated charge is
reported against its account with exit status 1."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from click.testing import CliRunner

from imbill.bus import EventProducer
from imbill.cli import cli
from imbill.schemas.codec import record_of
from tests.builders import ALICE, BOB, ENV, checklist, payment
from tests.test_processor import Worker, message, publish, publish_config, records_of, wait_for


def imbill(bootstrap, topics, database: str, *args: str):
    return CliRunner().invoke(cli, ["--bootstrap-servers", bootstrap, "--topic-prefix", topics.prefix,
                                    "--database-url", database, *args], terminal_width=80)


@pytest.mark.integration
def test_traffic_reconciles_clean_and_a_tampered_topic_is_reported(bootstrap, topics, tmp_path):
    database = f"sqlite:///{tmp_path / 'projection.db'}"
    publish_config(bootstrap, topics, checklist(balance_model="prepaid"))
    publish(bootstrap, topics.payments, [(f"{ENV}/{ALICE}", "Payment", record_of(payment("2.00", payment_id="p1"))),
                                         (f"{ENV}/{BOB}", "Payment",
                                          record_of(payment("1.00", payment_id="p2", account=BOB)))])
    worker = Worker(bootstrap, topics, tmp_path, "w-reconcile")
    try:
        wait_for(lambda: len(records_of(bootstrap, topics.balances)) >= 2, worker, 40, "the top-ups")
        publish(bootstrap, topics.attempts, [
            *[message(f"a{n}") for n in range(22)],   # 3.00 pays for 20 of 0.15: two refused, suspended
            message("a3"),                              # a copy: one outcome
            *[message(f"b{n}", sender=BOB) for n in range(3)],
            message("n1", sender="nobody"),
        ])
        wait_for(lambda: len(records_of(bootstrap, topics.charges)) + len(records_of(bootstrap, topics.rejections))
                 >= 26, worker, 40, "every attempt to be decided")
    finally:
        worker.stop()
    assert imbill(bootstrap, topics, database, "project", "--once").exit_code == 0

    clean = imbill(bootstrap, topics, database, "--environment", ENV, "reconcile")
    assert clean.exit_code == 0, clean.output
    assert clean.output.startswith("clean: 2 accounts, 26 attempts checked in acme from the topics; projection: "
                                   "balance_event in sqlite:///"), clean.output
    assert len(clean.output.splitlines()) == 1  # one line, even at 80 columns: grep finds it whole

    producer = EventProducer(bootstrap)
    try:
        last = records_of(bootstrap, topics.balances)[-1]
        tampered = {**last, "event_id": "bal-forged", "cause_id": "forged", "balance": Decimal("99.00")}
        producer.publish(topics.balances, f"{ENV}/{last['account']}", "BalanceChanged", tampered)
        extra = imbill(bootstrap, topics, database, "reconcile", "--environment", ENV, "--format", "csv")
        assert extra.exit_code == 1
        rows = [line.split(",") for line in extra.stdout.splitlines()]
        assert rows[0] == ["account", "check", "expected", "found", "detail"]
        assert [row[:2] + row[3:4] for row in rows[1:]] == [[last["account"], "balance", "99.00"]]

        bobs = [c for c in records_of(bootstrap, topics.charges) if c["account"] == BOB]
        copy = {**bobs[0], "charge_id": bobs[0]["charge_id"] + "-again"}
        producer.publish(topics.charges, f"{ENV}/{BOB}", "Charge", copy)
    finally:
        producer.close()
    doubled = imbill(bootstrap, topics, database, "reconcile", "--environment", ENV, "--account", BOB,
                     "--format", "json")
    assert doubled.exit_code == 1
    found = json.loads(doubled.stdout)
    assert {(row["account"], row["check"]) for row in found} == {(BOB, "outcome"), (BOB, "balance"),
                                                                 (BOB, "projection")}
    assert "differences in 1 account:" in doubled.stderr
