"""Duplicates at any distance on the real local broker, through a live worker."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from imbill.schemas.codec import record_of
from tests.builders import ALICE, BOB, ENV, T0, checklist, payment
from tests.test_processor import Worker, message, publish, publish_config, records_of, wait_for


NEXT_DAY = T0 + timedelta(hours=26)  # 25 hours after the builders' attempts: BOB's first chunk expires


def charged(bootstrap: str, topic: str) -> list[str]:
    return [c["charge_id"] for c in records_of(bootstrap, topic)]


@pytest.mark.integration
def test_the_same_attempt_after_a_thousand_others_is_billed_once_also_after_a_restart(bootstrap, topics, tmp_path):
    publish_config(bootstrap, topics, checklist(balance_model="prepaid"))
    publish(bootstrap, topics.payments, [(f"{ENV}/{ALICE}", "Payment",
                                          record_of(payment("500.00", payment_id="pay-fund")))])
    worker = Worker(bootstrap, topics, tmp_path, "w-dedup")
    try:
        wait_for(lambda: records_of(bootstrap, topics.balances), worker, 40, "the top-up")
        publish(bootstrap, topics.attempts, [message("old", sender=BOB)])
        wait_for(lambda: "chg-old" in charged(bootstrap, topics.charges), worker, 20, "BOB's first message")
        publish(bootstrap, topics.attempts, [message("x"), *[message(f"o{n}") for n in range(1000)], message("x"),
                                             message("after-1"), message("new", sender=BOB, received_at=NEXT_DAY)])
        wait_for(lambda: {"chg-after-1", "chg-new"} <= set(charged(bootstrap, topics.charges)), worker, 90,
                 "the 1,004 attempts")
    finally:
        worker.stop()
    charges = charged(bootstrap, topics.charges)
    assert charges.count("chg-x") == 1 and len(set(charges)) == 1004
    causes = [b["cause_id"] for b in records_of(bootstrap, topics.balances)]
    assert causes.count("chg-x") == 1
    assert [r["attempt_id"] for r in records_of(bootstrap, topics.rejections)] == []

    # and again after a restart, which recovers BOB's expired chunk as a tombstone
    publish(bootstrap, topics.attempts, [message("x"), message("old", sender=BOB), message("after-2")])
    publish(bootstrap, topics.payments, [(f"{ENV}/{ALICE}", "Payment",
                                          record_of(payment("500.00", payment_id="pay-fund")))])
    again = Worker(bootstrap, topics, tmp_path, "w-dedup-2")
    try:
        wait_for(lambda: "chg-after-2" in charged(bootstrap, topics.charges)
                 and records_of(bootstrap, topics.rejections), again, 60, "the attempts after the restart")
    finally:
        again.stop()
    assert charged(bootstrap, topics.charges).count("chg-x") == 1
    assert [(r["attempt_id"], r["reason_code"]) for r in records_of(bootstrap, topics.rejections)] == [
        ("old", "outside_dedup_window")]
    balances = records_of(bootstrap, topics.balances)
    assert [b["cause_id"] for b in balances].count("pay-fund") == 1
    alice = [b for b in balances if b["account"] == ALICE]
    assert alice[-1]["balance"] == Decimal("1.00") + Decimal("500.00") - 1003 * Decimal("0.15")
