"""The config projector: config_object is streams.config.fold of the config topic, in SQL."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa

from imbill.bus import EventProducer, read_to_end
from imbill.projections.models import ConfigEvent, ConfigObject, connect, to_json
from imbill.projections.projector import ConfigProjector, redacted
from imbill.domain.config import (KIND_BY_CLASS, KINDS, Account, Customer, Destination, DialingRules,
                                   Product, Rate, ServicePolicy, ServiceTypes, Tariff, UsageCharge, Vendor,
                                   VendorConnection, account_credentials, fold, to_record)

pytestmark = [pytest.mark.integration]

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
ALICE = Account("alice", "ACME", "Messaging", ("+12125550101",), None, "prepaid", Decimal("10.5"), Decimal("0"),
                **account_credentials("alice", "default", "secret"))
HISTORY = [
    ("default", ServiceTypes(messaging_enabled=True)),
    ("default", DialingRules("1", "011", "1", "212", 11, 15)),
    ("default", Destination("MSGN", "custom", "On-net instant messages")),
    ("default", Destination("44", "e164", "United Kingdom")),
    ("default", ServicePolicy("Instant messaging", "messaging", 5, "%", "SIP on-net",
                              {"msg.transport_protocol": "SIP", "msg.outgoing_aaa": True,
                               "msg.billing_unit_size": 60, "msg.reject_error_codes": ["0x00000058"]})),
    ("default", Tariff("Messaging EUR", "EUR")),
    ("default", Rate("Messaging EUR", "MSGN", Decimal("0.05"), T0)),
    ("default", Rate("Messaging EUR", "MSGN", Decimal("0.04"), T0 + timedelta(days=30))),
    ("default", Vendor("Internal", internal=True)),
    ("default", Tariff("Internal cost", "EUR", applied_to="vendor")),
    ("default", Product("Messaging", ("messaging",), (UsageCharge("messaging", "SIP", "Messaging EUR"),))),
    ("default", Customer("ACME", "EUR")),
    ("default", Customer("Temp", "EUR")),
    ("default", ALICE),
    ("second", ServiceTypes(messaging_enabled=False)),
    ("second", Customer("Other", "USD", "second environment")),
    ("default", ("destination", "44")),                               # removed
    ("default", Rate("Messaging EUR", "MSGN", Decimal("0.045"), T0)),  # redefined: same key
    ("default", ("customer", "Temp")),                                # removed...
    ("default", Customer("Temp", "GBP")),                             # ...and defined again
    ("default", ("vendor", "Internal")),                              # removed for good
    ("default", replace(ALICE, aliases=("+12125550101", "+12125550199"))),
]


def config_event(n: int, environment: str, change) -> tuple[str, dict]:
    envelope = {"event_id": f"cfg-{n}", "environment": environment, "occurred_at": T0 + timedelta(seconds=n)}
    if isinstance(change, tuple):
        kind, key = change
        return "ConfigObjectRemoved", envelope | {"kind": kind, "key": key}
    return KIND_BY_CLASS[type(change)].event, envelope | to_record(change)


def publish_history(bootstrap: str, topic: str) -> list[tuple[str, dict]]:
    """Append the history; return it as decoded back from the topic (what both folds read)."""
    producer = EventProducer(bootstrap)
    for n, (environment, change) in enumerate(HISTORY):
        producer.send(topic, environment, *config_event(n, environment, change))
    producer.flush()
    producer.close()
    return [(e.name, e.record) for e in read_to_end(bootstrap, topic)]


def select(database_url: str, table: sa.Table, order_by=()) -> list[dict]:
    engine = connect(database_url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(table).order_by(*order_by)).mappings()]
    finally:
        engine.dispose()


@pytest.mark.parametrize("max_poll_records", [500, 3], ids=["one-batch", "batches-of-3"])
def test_config_object_is_the_fold_of_the_config_topic(database_url, bootstrap, topics, max_poll_records):
    events = publish_history(bootstrap, topics.config)
    assert len(events) == len(HISTORY)

    with ConfigProjector(database_url, bootstrap, topics, max_poll_records=max_poll_records) as projector:
        assert projector.run_until_idle() == len(HISTORY)
        assert projector.skipped == 0
    with ConfigProjector(database_url, bootstrap, topics) as restarted:
        assert restarted.run_until_idle() == 0

    state = fold(events)
    expected = {(env.name, kind.name, kind.key(obj)): json.loads(to_json(to_record(obj)))
                for env in state.environments.values() for kind in KINDS
                for obj in env.collection(kind).values()}
    objects = select(database_url, ConfigObject.__table__)
    assert {(o["environment"], o["kind"], o["key"]): json.loads(o["body"]) for o in objects} == expected

    by_key = {(o["environment"], o["kind"], o["key"]): o for o in objects}
    rate = by_key[("default", "rate", f"Messaging EUR|MSGN|{T0.isoformat()}")]
    assert json.loads(rate["body"])["unit_price"] == "0.045000"
    assert (rate["event_id"], rate["updated_at"]) == ("cfg-17", T0 + timedelta(seconds=17))
    assert json.loads(by_key[("default", "customer", "Temp")]["body"])["currency"] == "GBP"
    assert ("default", "destination", "44") not in by_key and ("default", "vendor", "Internal") not in by_key
    assert by_key[("default", "account", "alice")]["event_id"] == "cfg-21"


def test_every_config_event_is_kept_in_topic_order(database_url, bootstrap, topics):
    events = publish_history(bootstrap, topics.config)
    with ConfigProjector(database_url, bootstrap, topics, max_poll_records=5) as projector:
        projector.run_until_idle()

    logged = select(database_url, ConfigEvent.__table__, order_by=[ConfigEvent.source_offset])
    assert [(e["source_offset"], e["name"], e["event_id"]) for e in logged] == [
        (n, name, record["event_id"]) for n, (name, record) in enumerate(events)]
    assert [json.loads(e["record"]) for e in logged] == [json.loads(to_json(redacted(r))) for _, r in events]
    removed = logged[16]
    assert (removed["name"], removed["kind"], removed["key"]) == ("ConfigObjectRemoved", "destination", "44")
    rate = json.loads(logged[6]["record"])
    assert (rate["unit_price"], rate["occurred_at"]) == ("0.050000", "2024-05-01T00:00:06+00:00")
    assert (logged[6]["kind"], logged[6]["key"]) == ("rate", f"Messaging EUR|MSGN|{T0.isoformat()}")
    assert logged[0]["occurred_at"] == T0 and logged[0]["environment"] == "default"
