"""The xDR projector, on a real broker, run once on SQLite and once on PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from kafka import KafkaProducer

from imbill.bus import EventProducer
from imbill.projections.models import (BalanceEvent, ProjectionOffset, RejectedAttempt, ServiceStatusEvent,
                                       Xdr, alembic_config, connect, metadata, migrate)
from imbill.projections.projector import XdrProjector
from imbill.presentation import format_xdrs
from imbill.projections.queries import query_xdrs

pytestmark = [pytest.mark.integration]

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def charge(n: int, *, account: str = "alice", environment: str = "demo", amount: str = "0.050000",
           **fields: object) -> dict:
    record = {
        "charge_id": f"ch-{n}", "attempt_id": f"at-{n}", "kind": "charge", "corrects": None,
        "environment": environment, "account": account, "customer": "acme", "direction": "outgoing",
        "attempted_at": T0 + timedelta(seconds=n), "rated_at": T0 + timedelta(seconds=n, milliseconds=7),
        "from_user": account, "to_user": "+442071234567", "to_domain": "example.net",
        "destination": "442071234567", "on_net": False, "body_chars": 42, "billing_units": 1,
        "unit_price": Decimal("0.050000"), "amount": Decimal(amount), "currency": "EUR",
        "tariff": "Messaging EUR", "rate_code": "44", "rate_effective_from": T0 - timedelta(days=30),
        "service_policy": "offnet", "policies": ["offnet", "static-alice"], "transport_protocol": "SIP",
        "vendor": "Carrier", "connection": "Carrier SIP", "vendor_tariff": "Carrier cost",
        "vendor_cost": Decimal("0.010000"), "vendor_currency": "EUR",
    }
    return record | fields


def rejection(n: int, account: str = "alice") -> dict:
    return {"rejection_id": f"rj-{n}", "attempt_id": f"at-r{n}", "environment": "demo", "account": account,
            "attempted_at": T0 + timedelta(seconds=n), "rejected_at": T0 + timedelta(seconds=n, milliseconds=3),
            "reason_code": "INSUFFICIENT_FUNDS", "message": "prepaid balance 0.01 < 0.05",
            "to_user": "bob", "to_domain": "example.net"}


def balance_changed(n: int, delta: str, balance: str) -> dict:
    return {"event_id": f"bal-{n}", "environment": "demo", "account": "alice", "cause": "charge",
            "cause_id": f"ch-{n}", "delta": Decimal(delta), "balance": Decimal(balance), "currency": "EUR",
            "occurred_at": T0 + timedelta(seconds=n)}


def status_changed(n: int, status: str) -> dict:
    return {"event_id": f"st-{n}", "environment": "demo", "account": "alice", "service": "messaging",
            "status": status, "reason": "wallet empty", "cause_id": f"bal-{n}",
            "occurred_at": T0 + timedelta(seconds=n), "push_events": True}


@pytest.fixture
def producer(bootstrap):
    events = EventProducer(bootstrap)
    yield events
    events.close()


def send_charges(producer: EventProducer, topics, records: list[dict]) -> None:
    for record in records:
        producer.send(topics.charges, f"{record['environment']}/{record['account']}", "Charge", record)
    producer.flush()


def rows(database_url: str, model: type) -> list[dict]:
    engine = connect(database_url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(model.__table__)).mappings()]
    finally:
        engine.dispose()


def applied_offsets(database_url: str, name: str = "xdr") -> int:
    """Records applied: the sum of the next offsets (fresh topics start at offset 0)."""
    return sum(r["next_offset"] for r in rows(database_url, ProjectionOffset) if r["projector"] == name)


def test_every_event_type_becomes_a_row_with_exact_amounts(database_url, bootstrap, topics, producer):
    big = charge(1, amount="123456789012.123456", unit_price=Decimal("123456789012.123456"))
    tiny = charge(2, account="bob", amount="0.000001", on_net=True, corrects="ch-0", kind="correction",
                  revision=2, charge_id="chg-at-2#2", difference=Decimal("-0.049999"), service_policy=None, policies=[], vendor=None, connection=None, vendor_tariff=None,
                  vendor_currency=None, vendor_cost=Decimal("0"))
    send_charges(producer, topics, [big, tiny])
    producer.send(topics.rejections, "demo/alice", "Rejection", rejection(3))
    producer.send(topics.balances, "demo/alice", "BalanceChanged", balance_changed(1, "-0.050000", "-12.345678"))
    producer.send(topics.service_status, "demo/alice", "ServiceStatusChanged", status_changed(4, "suspended"))
    producer.flush()

    with XdrProjector(database_url, bootstrap, topics) as projector:
        assert projector.run_until_idle() == 5
        assert projector.skipped == 0

    xdrs = {r["charge_id"]: r for r in rows(database_url, Xdr)}
    assert set(xdrs) == {"ch-1", "chg-at-2#2"}
    got = xdrs["ch-1"]
    assert got["amount"] == Decimal("123456789012.123456") and str(got["amount"]) == "123456789012.123456"
    assert got["unit_price"] == Decimal("123456789012.123456")
    assert got["attempted_at"] == T0 + timedelta(seconds=1)
    assert got["attempted_at"].utcoffset() == timedelta(0)
    assert got["rated_at"] == T0 + timedelta(seconds=1, milliseconds=7)
    assert got["policies"] == "offnet,static-alice"
    assert got["source_topic"] == topics.charges and got["source_offset"] == 0
    assert {k: got[k] for k in big if k != "policies"} == {k: v for k, v in big.items() if k != "policies"}
    corrected = xdrs["chg-at-2#2"]
    assert corrected["amount"] == Decimal("0.000001") and corrected["revision"] == 2
    assert corrected["policies"] == "" and corrected["vendor"] is None
    assert corrected["corrects"] == "ch-0" and corrected["on_net"] is True

    [rejected] = rows(database_url, RejectedAttempt)
    assert rejected["reason_code"] == "INSUFFICIENT_FUNDS" and rejected["rejected_at"] == T0 + timedelta(
        seconds=3, milliseconds=3)
    [balance] = rows(database_url, BalanceEvent)
    assert (balance["delta"], balance["balance"]) == (Decimal("-0.050000"), Decimal("-12.345678"))
    [status] = rows(database_url, ServiceStatusEvent)
    assert status["status"] == "suspended" and status["push_events"] is True
    assert applied_offsets(database_url) == 5


def test_the_same_charge_twice_leaves_one_row(database_url, bootstrap, topics, producer):
    send_charges(producer, topics, [charge(1), charge(1), charge(2)])
    with XdrProjector(database_url, bootstrap, topics) as projector:
        assert projector.run_until_idle() == 3
        send_charges(producer, topics, [charge(1, amount="9.990000"), charge(3)])  # a later poll
        assert projector.run_until_idle() == 2

    xdrs = {r["charge_id"]: r for r in rows(database_url, Xdr)}
    assert sorted(xdrs) == ["ch-1", "ch-2", "ch-3"]
    assert xdrs["ch-1"]["amount"] == Decimal("0.050000")  # the first one stays
    assert applied_offsets(database_url) == 5


def test_a_restarted_projector_resumes_from_its_stored_offsets(database_url, bootstrap, topics, producer):
    send_charges(producer, topics, [charge(n, account=f"acct{n % 5}") for n in range(20)])
    with XdrProjector(database_url, bootstrap, topics) as first:
        assert first.run_until_idle() == 20

    send_charges(producer, topics, [charge(n, account=f"acct{n % 5}") for n in range(20, 30)])
    with XdrProjector(database_url, bootstrap, topics) as second:
        assert second.run_until_idle() == 10  # not 30: it started where the first stopped
    with XdrProjector(database_url, bootstrap, topics) as third:
        assert third.run_until_idle() == 0

    assert sorted(r["charge_id"] for r in rows(database_url, Xdr)) == sorted(f"ch-{n}" for n in range(30))
    assert applied_offsets(database_url) == 30


def test_an_undecodable_record_is_skipped_counted_and_passed(database_url, bootstrap, topics, producer,
                                                             caplog):
    raw = KafkaProducer(bootstrap_servers=bootstrap)
    raw.send(topics.charges, key=b"demo/alice", value=b"junk", partition=0).get(timeout=10)
    raw.close()
    producer.send(topics.charges, "demo/alice", "Charge", charge(1), partition=0)
    producer.send(topics.charges, "demo/alice", "Payment",
                  {"payment_id": "p1", "environment": "demo", "account": "alice", "amount": Decimal("5"),
                   "currency": "EUR", "received_at": T0, "reference": "misrouted"}, partition=0)
    producer.flush()

    with caplog.at_level(logging.WARNING, logger="imbill.projections.projector"):
        with XdrProjector(database_url, bootstrap, topics) as projector:
            assert projector.run_until_idle() == 1
            assert projector.skipped == 2

    assert [r["charge_id"] for r in rows(database_url, Xdr)] == ["ch-1"]
    assert [(r["topic"], r["partition"], r["next_offset"]) for r in rows(database_url, ProjectionOffset)
            if r["next_offset"]] == [(topics.charges, 0, 3)]
    assert f"{topics.charges}[0]@0" in caplog.text and "C3 01" in caplog.text
    assert f"{topics.charges}[0]@2" in caplog.text and "Payment" in caplog.text


class Crash(Exception):
    """The process dies between writing the rows and committing them."""


def test_rows_and_offsets_are_committed_in_one_transaction(database_url, bootstrap, topics, producer):
    send_charges(producer, topics, [charge(n) for n in range(3)])
    seen_in_transaction = []

    def crash_before_commit(conn):
        seen_in_transaction.append((
            conn.execute(sa.text("SELECT count(*) FROM xdr")).scalar_one(),
            conn.execute(sa.text("SELECT coalesce(sum(next_offset), 0) FROM projection_offset")).scalar_one()))
        raise Crash()

    with XdrProjector(database_url, bootstrap, topics) as projector:
        sa.event.listen(projector.engine, "commit", crash_before_commit)
        with pytest.raises(Crash):
            projector.run_until_idle()
        assert seen_in_transaction == [(3, 3)]  # rows and offsets were written together...
        assert rows(database_url, Xdr) == [] and applied_offsets(database_url) == 0  # ...and undone
        sa.event.remove(projector.engine, "commit", crash_before_commit)

        assert projector.run_until_idle() == 3  # rewound to the committed offsets
    with XdrProjector(database_url, bootstrap, topics) as restarted:
        assert restarted.run_until_idle() == 0

    assert sorted(r["charge_id"] for r in rows(database_url, Xdr)) == ["ch-0", "ch-1", "ch-2"]
    assert applied_offsets(database_url) == 3


def test_query_and_format_xdrs(database_url, bootstrap, topics, producer):
    send_charges(producer, topics, [charge(1, amount="0.100000"), charge(2, account="bob"),
                                    charge(3, environment="other"), charge(4, amount="1.234567")])
    with XdrProjector(database_url, bootstrap, topics) as projector:
        projector.run_until_idle()
    engine = connect(database_url)
    try:
        assert [r["charge_id"] for r in query_xdrs(engine)] == ["ch-1", "ch-2", "ch-3", "ch-4"]
        assert [r["charge_id"] for r in query_xdrs(engine, account="alice")] == ["ch-1", "ch-3", "ch-4"]
        assert [r["charge_id"] for r in query_xdrs(engine, environment="demo", limit=2)] == ["ch-1", "ch-2"]
        window = query_xdrs(engine, since=T0 + timedelta(seconds=2), until=T0 + timedelta(seconds=4))
        assert [r["charge_id"] for r in window] == ["ch-2", "ch-3"]
        alice = query_xdrs(engine, account="alice", environment="demo")
    finally:
        engine.dispose()

    parsed = list(csv.DictReader(io.StringIO(format_xdrs(alice, "csv"))))
    assert [(r["charge_id"], r["amount"], r["attempted_at"], r["on_net"]) for r in parsed] == [
        ("ch-1", "0.10", "2024-05-01T12:00:01+00:00", "false"),  # EUR: 2 minor units, more only when not 0
        ("ch-4", "1.234567", "2024-05-01T12:00:04+00:00", "false")]
    as_json = json.loads(format_xdrs(alice, "json"))
    assert as_json[1]["amount"] == "1.234567" and as_json[1]["attempted_at"] == "2024-05-01T12:00:04+00:00"
    assert as_json[1]["billing_units"] == 1 and as_json[1]["corrects"] is None
    table = format_xdrs(alice, "table").splitlines()
    assert table[0].split()[:3] == ["attempted_at", "account", "destination"]
    assert len(table) == 4 and "1.234567" in table[3]
    assert format_xdrs([], "csv").startswith("charge_id,attempt_id,")
    with pytest.raises(ValueError):
        format_xdrs(alice, "xml")


def test_the_migrations_build_exactly_the_models(database_url):
    migrate(database_url)
    migrate(database_url)  # at every start: a no-op once at head
    engine = connect(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
            assert context.get_current_revision() == ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    finally:
        engine.dispose()


def test_a_nul_character_in_a_text_does_not_stop_the_projection(database_url, bootstrap, topics, producer):
    """PostgreSQL text cannot hold NUL: it becomes U+FFFD there (SQLite keeps it), and the
    other rows of the poll go in with it."""
    send_charges(producer, topics, [charge(1), charge(2, user_agent="UA\x00evil", to_user="bo\x00b"), charge(3)])
    with XdrProjector(database_url, bootstrap, topics) as projector:
        assert projector.run_until_idle() == 3
    xdrs = {r["charge_id"]: r for r in rows(database_url, Xdr)}
    assert sorted(xdrs) == ["ch-1", "ch-2", "ch-3"]
    nul = "\ufffd" if database_url.startswith("postgresql") else "\x00"
    assert (xdrs["ch-2"]["user_agent"], xdrs["ch-2"]["to_user"]) == (f"UA{nul}evil", f"bo{nul}b")
    assert applied_offsets(database_url) == 3
