"""A hostile input key or record never makes the processor write a record the broker would
refuse (which would stop its partition's billing): long keys are replaced by their digest in
the changelog and in the outputs they key, and oversized texts are cut (broker-less)."""

from __future__ import annotations

from datetime import timedelta

from imbill.domain.events import Payment
from imbill.schemas.codec import encode_event, record_of
from imbill.streams.batch import KEY_LIMIT, bill_attempts, top_up_payments
from imbill.streams.changelog import encode_record
from tests.builders import ENV, T0, attempt, checklist, payment

NOW = T0 + timedelta(hours=3)
BROKER_MAX = 1_000_000


def test_a_huge_key_and_huge_texts_give_small_changelog_records_and_outputs() -> None:
    config = checklist().state
    huge_key = b"k" * 900_000
    records = [(0, 0, huge_key, b"garbage"),
               (0, 1, huge_key, encode_event(attempt(attempt_id="h1", to_user="9" * 400_000))),
               (0, 2, f"{ENV}/{'1' * 300_000}".encode(), encode_event(attempt(attempt_id="h2", from_user="1" * 300_000)))]
    batch = bill_attempts({}, config, records, now=NOW, expected={0: 0})
    assert batch.decided == {0: 2}
    for key, entry in batch.entries.items():
        assert len(key) <= KEY_LIMIT and len(key) + len(encode_record(entry)) < BROKER_MAX
        for _, out_key, value in entry.outbox:
            assert len(out_key) + len(value) < BROKER_MAX


def test_a_payment_too_large_to_repeat_gives_a_small_rejection() -> None:
    config = checklist().state
    huge = record_of(payment("1.00"))
    huge["account"] = "1" * 400_000
    batch = top_up_payments({}, config, [(0, 0, f"{ENV}/{huge['account']}".encode(), encode_event(Payment(**huge)))],
                            now=NOW, expected={0: 0})
    [entry] = batch.entries.values()
    [(kind, out_key, value)] = entry.outbox
    assert kind == "rejections" and len(out_key) <= KEY_LIMIT and len(value) < 5_000
