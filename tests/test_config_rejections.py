"""Hostile config records against a live worker: each is refused by the fold with a precise
reason, said once on the config-rejections topic (ConfigEventRejected, id derived from its
offset, not repeated by a restarted worker), shown with the same reason by ``imbill config
history``; the config in force is unchanged and billing goes on. Also: a payment maximum set
lower than the default rejects a payment above it (PaymentRejected amount_too_large)."""

from __future__ import annotations

import time
from collections import Counter
from decimal import Decimal

import pytest

from imbill.bus import EventProducer, create_topics, read_to_end
from imbill.domain.config import to_record
from imbill.domain.refusal import CONFIG_REASON_CODES
from imbill.producers.config_publisher import config_history, current_state
from imbill.projections.rebuild import rebuild
from imbill.domain.config import Account
from imbill.schemas.codec import record_of
from imbill.streams.worker import CONFIG_REJECTIONS_SECONDS
from tests.builders import ALICE, BOB, ENV, T0, attempt_record, checklist, payment
from tests.test_processor import Worker, publish, wait_for

pytestmark = pytest.mark.integration

HOSTILE = [  # (reason code, how the record is written)
    ("undecodable_config", lambda p: p._producer.send(TOPICS.config, key=ENV.encode(), value=b"\xc3\x01garbage!")),
    ("broken_reference", lambda p: p.publish(TOPICS.config, ENV, "AccountDefined", {
        "event_id": "h-account", "environment": ENV, "occurred_at": T0,
        **to_record(Account("9001", "Acme", "Gold product"))})),
    ("still_referenced", lambda p: p.publish(TOPICS.config, ENV, "ConfigObjectRemoved", {
        "event_id": "h-remove", "environment": ENV, "occurred_at": T0, "kind": "product", "key": "IM product"})),
    ("broken_reference", lambda p: p.publish(TOPICS.config, ENV, "RateDefined", {
        "event_id": "h-rate", "environment": ENV, "occurred_at": T0, "tariff": "No such tariff", "rate_code": "44",
        "unit_price": Decimal("0.01"), "effective_from": T0, "rating_mode": "flat", "description": ""})),
    ("not_config_event", lambda p: p.publish(TOPICS.config, ENV, "Payment", record_of(payment("5.00")))),
    ("invalid_config_object", lambda p: p.publish(TOPICS.config, "a/b", "CustomerDefined", {
        "event_id": "h-env", "environment": "a/b", "occurred_at": T0, "name": "X", "currency": "USD",
        "description": ""})),
]
TOPICS = None


@pytest.fixture
def live(bootstrap, topics, tmp_path):
    global TOPICS
    TOPICS = topics
    create_topics(bootstrap, topics.specs())
    publish(bootstrap, topics.config, [(ENV, name, record) for name, record in checklist().events])
    worker = Worker(bootstrap, topics, tmp_path, "cfg", session_timeout=3, flags=("--payment-maximum", "100"))
    worker.wait_ready()
    yield bootstrap, topics, worker, tmp_path
    worker.stop()


def _rejections(bootstrap, topics) -> list[dict]:
    return [e.record for e in read_to_end(bootstrap, topics.config_rejections)]


def test_each_hostile_config_record_is_rejected_once_with_its_reason_and_billing_goes_on(live):
    bootstrap, topics, worker, tmp_path = live
    before = current_state(bootstrap, topics)
    first = len(list(read_to_end(bootstrap, topics.config)))
    producer = EventProducer(bootstrap)
    for _, write in HOSTILE:
        write(producer)
    producer.flush()
    producer.close()
    publish(bootstrap, topics.attempts, [(f"{ENV}/{ALICE}", "MessageAttempt",
                                          attempt_record(attempt_id="after-1", call_id="after-1@t", body_chars=10))])

    found = wait_for(lambda: (lambda r: r if len(r) >= len(HOSTILE) else None)(_rejections(bootstrap, topics)),
                     worker, 40, "the config rejections")
    assert [(r["config_offset"], r["reason_code"]) for r in found] == [
        (first + i, code) for i, (code, _) in enumerate(HOSTILE)]
    assert all(r["rejection_id"] == f"cfgrej-{topics.config}-0-{r['config_offset']}" for r in found)
    assert all(r["reason_code"] in CONFIG_REASON_CODES and r["message"] for r in found)
    assert found[1]["kind"] == "account" and found[1]["key"] == "9001" and found[1]["event_id"] == "h-account"
    assert "Gold product" in found[1]["message"] and "IM product" in found[2]["message"]
    assert current_state(bootstrap, topics).environments == before.environments  # nothing of them in force

    charges = wait_for(lambda: [e.record for e in read_to_end(bootstrap, topics.charges)], worker, 30, "the charge")
    assert [(c["attempt_id"], c["amount"]) for c in charges] == [("after-1", Decimal("0.050000"))]

    history = {h.offset: h for h in config_history(bootstrap, topics)}
    for rejection in found:  # the CLI says the same as the event
        entry = history[rejection["config_offset"]]
        assert entry.event.startswith(("(undecodable)", "(refused ")), entry
        assert entry.key.startswith(rejection["reason_code"] + ": "), (entry, rejection)

    counts = rebuild(f"sqlite:///{tmp_path / 'p.db'}", bootstrap, topics, lambda done, total: None)
    assert counts["rejected_config_event"] == len(HOSTILE) and counts["xdr"] == 1  # --rebuild covers them
    assert counts["config_object"] == len(list(checklist().state.environments[ENV].objects()))

    worker.stop()  # a restarted worker folds the same records again, and says nothing twice
    again = Worker(bootstrap, topics, tmp_path, "cfg2", session_timeout=3)
    try:
        again.wait_ready()
        publish(bootstrap, topics.attempts, [(f"{ENV}/{ALICE}", "MessageAttempt",
                                              attempt_record(attempt_id="after-2", call_id="after-2@t", body_chars=10))])
        wait_for(lambda: len(list(read_to_end(bootstrap, topics.charges))) == 2, again, 30, "the second charge")
        time.sleep(3 * CONFIG_REJECTIONS_SECONDS)  # the restarted owner's emitter has run since
        assert Counter(r["rejection_id"] for r in _rejections(bootstrap, topics)) == Counter(
            r["rejection_id"] for r in found)
    finally:
        again.stop()


def test_a_payment_over_the_configured_maximum_is_rejected(live):
    bootstrap, topics, worker, tmp_path = live
    publish(bootstrap, topics.payments, [(f"{ENV}/{BOB}", "Payment", record_of(payment(amount, payment_id=pid,
                                                                                         account=BOB)))
                                         for pid, amount in (("big", "150.00"), ("ok", "50.00"))])
    rejected = wait_for(lambda: [e.record for e in read_to_end(bootstrap, topics.rejections)
                                 if e.name == "PaymentRejected"], worker, 30, "the payment rejection")
    assert [(r["payment_id"], r["reason_code"]) for r in rejected] == [("big", "amount_too_large")]
    assert "maximum 100" in rejected[0]["message"]
    applied = wait_for(lambda: [e.record for e in read_to_end(bootstrap, topics.balances)], worker, 30, "the top-up")
    assert [(b["cause_id"], b["delta"]) for b in applied] == [("ok", Decimal("50.000000"))]
    counts = rebuild(f"sqlite:///{tmp_path / 'p.db'}", bootstrap, topics, lambda done, total: None)
    assert counts["rejected_payment"] == 1 and counts["balance_event"] == 1
