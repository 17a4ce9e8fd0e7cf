"""The projectors skip what the processor cannot have written, on SQLite and PostgreSQL:
an amount past decimal(24, 6), a key that is not the account's, an event off its topic, a
negative charge (a NUL character is no ground: it is projected, as U+FFFD on PostgreSQL); and project PaymentRejected
into rejected_payment and ConfigEventRejected into rejected_config_event, exactly."""

from __future__ import annotations

from decimal import Decimal

import pytest
import sqlalchemy as sa

from imbill.bus import EventProducer
from imbill.projections.models import RejectedConfigEvent, RejectedPayment, Xdr, connect
from imbill.projections.projector import ConfigProjector, XdrProjector
from tests.samples import SAMPLES

pytestmark = pytest.mark.integration

KEY = "default/1001"  # the samples' account


def rows(database_url: str, model) -> list[dict]:
    engine = connect(database_url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(model.__table__)).mappings()]
    finally:
        engine.dispose()


def charge(charge_id: str, **fields) -> dict:
    """The sample Charge as the charge of its own attempt (an xDR per attempt)."""
    return {**SAMPLES["Charge"], "charge_id": charge_id, "attempt_id": f"att-{charge_id}", **fields}


HOSTILE_CHARGES = [  # (key, record): none is the processor's
    (KEY, charge("huge-amount", amount=Decimal("1e30"))),
    (KEY, charge("negative", amount=Decimal("-0.150000"))),
    (KEY, charge("no-units", billing_units=0)),
    ("default/1002", charge("foreign-key")),
    (KEY, charge("long-text", to_domain="x" * 100_001)),
]


def test_hostile_account_events_are_skipped_and_the_valid_ones_after_them_projected(database_url, bootstrap, topics):
    producer = EventProducer(bootstrap)
    try:
        for key, record in HOSTILE_CHARGES:
            producer.send(topics.charges, key, "Charge", record)
        producer.send(topics.rejections, KEY, "Charge", charge("off-topic"))
        producer.send(topics.charges, KEY, "Charge", charge("valid"))
        producer.send(topics.charges, KEY, "Charge", charge("nul", to_user="10\x0002"))
        producer.send(topics.rejections, KEY, "PaymentRejected", {**SAMPLES["PaymentRejected"], "account": "1001"})
        producer.send(topics.rejections, KEY, "PaymentRejected", {**SAMPLES["PaymentRejected"], "account": "1001"})
        producer.flush()
    finally:
        producer.close()

    with XdrProjector(database_url, bootstrap, topics) as projector:
        assert projector.run_until_idle() == 4  # the valid charges and the rejection, offered twice
        assert projector.skipped == len(HOSTILE_CHARGES) + 1

    nul = "10\x0002" if database_url.startswith("sqlite") else "10\ufffd02"
    assert sorted((r["charge_id"], r["amount"], r["to_user"]) for r in rows(database_url, Xdr)) == [
        ("nul", Decimal("0.150000"), nul), ("valid", Decimal("0.150000"), SAMPLES["Charge"]["to_user"])]
    expected = SAMPLES["PaymentRejected"]
    assert [(r["payment_id"], r["account"], r["amount"], r["reason_code"], r["message"], r["rejected_at"])
            for r in rows(database_url, RejectedPayment)] == [
        (expected["payment_id"], "1001", Decimal("5.000000"), "currency_mismatch", expected["message"],
         expected["rejected_at"])]


def test_config_rejections_are_projected_once_per_id(database_url, bootstrap, topics):
    producer = EventProducer(bootstrap)
    try:
        for _ in range(2):  # a rejection sent again after a crash: one row
            producer.send(topics.config_rejections, "default", "ConfigEventRejected", SAMPLES["ConfigEventRejected"])
        producer.send(topics.config_rejections, "default", "ConfigEventRejected",
                      {**SAMPLES["ConfigEventRejected"], "rejection_id": "x", "message": "\x00"})
        producer.send(topics.config, "default", "ConfigEventRejected", {**SAMPLES["ConfigEventRejected"],
                                                                        "rejection_id": "on-the-config-topic"})
        producer.flush()
    finally:
        producer.close()
    with ConfigProjector(database_url, bootstrap, topics) as projector:
        projector.run_until_idle()
        assert projector.skipped == 1
    got = rows(database_url, RejectedConfigEvent)
    sample = SAMPLES["ConfigEventRejected"]
    assert sorted(r["rejection_id"] for r in got) == sorted([sample["rejection_id"], "x"])
    assert [{k: r[k] for k in sample} for r in got if r["rejection_id"] == sample["rejection_id"]] == [sample]
