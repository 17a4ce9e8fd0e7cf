"""Duplicates at any distance on the real local broker, through a live worker."""

from __future__ import annotations

from decimal import Decimal

import pytest

from imbill.schemas.codec import record_of
from tests.builders import ALICE, ENV, checklist, payment
from tests.test_processor import Worker, message, publish, publish_config, records_of, wait_for


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
        publish(bootstrap, topics.attempts, [message("x"), *[message(f"o{n}") for n in range(1000)], message("x"),
                                             message("after-1")])
        wait_for(lambda: "chg-after-1" in charged(bootstrap, topics.charges), worker, 90, "the 1,002 attempts")
    finally:
        worker.stop()
    charges = charged(bootstrap, topics.charges)
    assert charges.count("chg-x") == 1 and len(set(charges)) == 1002
    causes = [b["cause_id"] for b in records_of(bootstrap, topics.balances)]
    assert causes.count("chg-x") == 1
    assert [r["attempt_id"] for r in records_of(bootstrap, topics.rejections)] == []

    publish(bootstrap, topics.attempts, [message("x"), message("after-2")])  # and again, after a restart
    publish(bootstrap, topics.payments, [(f"{ENV}/{ALICE}", "Payment",
                                          record_of(payment("500.00", payment_id="pay-fund")))])
    again = Worker(bootstrap, topics, tmp_path, "w-dedup-2")
    try:
        wait_for(lambda: "chg-after-2" in charged(bootstrap, topics.charges), again, 60, "the attempt after it")
    finally:
        again.stop()
    assert charged(bootstrap, topics.charges).count("chg-x") == 1
    balances = records_of(bootstrap, topics.balances)
    assert [b["cause_id"] for b in balances].count("pay-fund") == 1
    assert balances[-1]["balance"] == Decimal("1.00") + Decimal("500.00") - 1003 * Decimal("0.15")
