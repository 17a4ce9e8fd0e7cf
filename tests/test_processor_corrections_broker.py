"""Re-rating corrections through a live worker on the real local broker: the correction is
appended to the charges topic once and moves the balance once, also when it is sent again
and when it is sent again to the next worker after a restart."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from imbill.domain.events import correction_id_of
from tests.builders import ALICE, ENV, checklist
from tests.test_processor import Worker, message, publish, publish_config, records_of, wait_for


def corrected(charge: dict, amount: str, revision: int = 2) -> tuple[str, str, dict]:
    """The correction of the live ``charge`` record to ``amount``, as a re-rating run sends it."""
    record = {**charge, "charge_id": correction_id_of(charge["attempt_id"], revision), "kind": "correction",
              "corrects": charge["charge_id"], "revision": revision, "amount": Decimal(amount),
              "difference": Decimal(amount) - charge["amount"], "rerate_run": "run-1",
              "rated_at": datetime.now(timezone.utc).replace(microsecond=0)}  # timestamp-millis holds it
    return f"{ENV}/{ALICE}", "Charge", record


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
