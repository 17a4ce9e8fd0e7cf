"""Re-rating corrections through live workers on the real local broker: the correction is
appended to the charges topic once and moves the balance once, also when it is sent again
and when it is sent again to the next worker after a restart; two workers sharing the
partitions apply each one where its account's balance is."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from imbill.domain.config import Account
from imbill.domain.events import correction_id_of
from tests.builders import ENV, checklist
from tests.test_processor import Worker, key_of, message, partition_of, publish, publish_config, records_of, wait_for


def corrected(charge: dict, amount: str, revision: int = 2) -> tuple[str, str, dict]:
    """The correction of the live ``charge`` record to ``amount``, as a re-rating run sends it."""
    record = {**charge, "charge_id": correction_id_of(charge["attempt_id"], revision), "kind": "correction",
              "corrects": charge["charge_id"], "revision": revision, "amount": Decimal(amount),
              "difference": Decimal(amount) - charge["amount"], "rerate_run": "run-1",
              "rated_at": datetime.now(timezone.utc).replace(microsecond=0)}  # timestamp-millis holds it
    return f"{ENV}/{charge['account']}", "Charge", record


def assigned(worker: Worker, topic: str) -> list[str]:
    """The partitions of ``topic`` in each assignment the worker logged, in order ("{1, 3}")."""
    return re.findall(rf"\| {re.escape(topic)} +\| (\{{[^}}]*\}})", worker.log())


def charged(bootstrap: str, topic: str) -> list[str]:
    return [c["charge_id"] for c in records_of(bootstrap, topic)]


@pytest.mark.integration
def test_a_correction_sent_twice_is_appended_once_and_moves_the_balance_once(bootstrap, topics, tmp_path):
    publish_config(bootstrap, topics, checklist(balance_model="prepaid"))
    publish(bootstrap, topics.attempts, [message("a0"), message("a1"), message("a2")])
    worker = Worker(bootstrap, topics, tmp_path, "w-corrections")
    try:
        wait_for(lambda: len(records_of(bootstrap, topics.balances)) == 3, worker, 40, "the three charges")
        live = {c["attempt_id"]: c for c in records_of(bootstrap, topics.charges)}
        cheaper, dearer = corrected(live["a1"], "0.10"), corrected(live["a0"], "0.95")
        publish(bootstrap, topics.corrections, [cheaper, cheaper, dearer])  # a resumed run sends one again
        wait_for(lambda: "chg-a0#2" in charged(bootstrap, topics.charges), worker, 30, "the corrections")
    finally:
        worker.stop()
    assert charged(bootstrap, topics.charges) == ["chg-a0", "chg-a1", "chg-a2", "chg-a1#2", "chg-a0#2"]
    balances = [(b["cause"], b["cause_id"], b["delta"], b["balance"]) for b in records_of(bootstrap, topics.balances)]
    assert balances[3:] == [("correction", "chg-a1#2", Decimal("0.05"), Decimal("0.60")),  # 1.00 - 0.45 + 0.05
                            ("correction", "chg-a0#2", Decimal("-0.80"), Decimal("-0.20"))]  # never refused
    statuses = [(s["status"], s["reason"], s["cause_id"]) for s in records_of(bootstrap, topics.service_status)]
    assert statuses == [("suspended", "wallet empty", "chg-a0#2")]
    appended = {c["charge_id"]: c for c in records_of(bootstrap, topics.charges)}["chg-a1#2"]
    assert appended == cheaper[2]  # the correction as the run wrote it

    # sent again to the next worker, with a refund after it: the copy still changes nothing
    refund = corrected(live["a2"], "0.00")
    publish(bootstrap, topics.corrections, [cheaper, refund])
    again = Worker(bootstrap, topics, tmp_path, "w-corrections-2")
    try:
        wait_for(lambda: "chg-a2#2" in charged(bootstrap, topics.charges), again, 40, "the refund after the restart")
    finally:
        again.stop()
    assert charged(bootstrap, topics.charges).count("chg-a1#2") == 1
    balances = [(b["cause_id"], b["balance"]) for b in records_of(bootstrap, topics.balances)]
    assert [cause for cause, _ in balances].count("chg-a1#2") == 1
    assert balances[-1] == ("chg-a2#2", Decimal("-0.05"))
    assert not [r for r in records_of(bootstrap, topics.rejections)]


ACCOUNTS = [f"4416329{n:05d}" for n in range(8)]


@pytest.mark.integration
def test_two_workers_apply_each_correction_on_the_balance_its_account_s_charges_left(bootstrap, topics, tmp_path):
    """The corrections topic is co-partitioned with the attempts and the balance table: with
    two workers sharing the partitions, each correction is decided by the owner of its
    account, against the balance its charges left (not an opening balance)."""
    builder = checklist(balance_model="prepaid")
    for account in ACCOUNTS:
        builder.define(Account(account, "Acme", "IM product", balance_model="prepaid", opening_balance=Decimal("3")))
    publish_config(bootstrap, topics, builder)
    first, second = Worker(bootstrap, topics, tmp_path, "w-a", 2.0), Worker(bootstrap, topics, tmp_path, "w-b", 2.0)
    try:
        first.wait_ready()
        second.wait_ready()
        publish(bootstrap, topics.attempts, [message(f"{account}-{n}", sender=account)
                                             for n in range(2) for account in ACCOUNTS])
        wait_for(lambda: len(records_of(bootstrap, topics.balances)) == 16, first, 40, "the sixteen charges")
        live = {c["attempt_id"]: c for c in records_of(bootstrap, topics.charges)}
        publish(bootstrap, topics.corrections, [corrected(live[f"{account}-0"], "0.05") for account in ACCOUNTS])
        wait_for(lambda: len(records_of(bootstrap, topics.balances)) == 24, second, 40, "the eight corrections")
    finally:
        first.stop()
        second.stop()
    assert {p for p in map(partition_of, (key_of(a) for a in ACCOUNTS))} == {0, 1, 2, 3}
    for worker in (first, second):  # every assignment gave a worker its accounts' corrections with their attempts
        assert assigned(worker, topics.corrections) == assigned(worker, topics.attempts) != []
    assert any(found != "{0-3}" for found in assigned(first, topics.corrections) + assigned(second, topics.corrections))
    fixes = [b for b in records_of(bootstrap, topics.balances) if b["cause"] == "correction"]
    assert sorted((b["account"], b["delta"], b["balance"]) for b in fixes) == [
        (account, Decimal("0.10"), Decimal("2.80")) for account in ACCOUNTS]  # 3.00 - 2 x 0.15 + 0.10
