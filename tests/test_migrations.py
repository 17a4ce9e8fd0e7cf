"""Upgrading a database that holds data: from the revision before the analyst xDR (0004) to
head, and from the revision before the xDR revisions (0006) to head, on SQLite and
PostgreSQL. The revisions before are read from 0004's and 0006's own down_revision, so the
tests follow when migrations are re-chained."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from imbill.projections.models import (BalanceEvent, RejectedAttempt, VIEWS, Xdr, XdrRevision, alembic_config,
                                       connect, metadata, migrate)

pytestmark = [pytest.mark.integration]

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
ADDED = ("revision", "service", "node", "cli_translated", "destination_description", "user_agent", "margin")
ADDED_BY_0006 = ("rerate_run",)


def old_xdr(n: int, amount: str, cost: str, vendor_currency: str | None) -> dict:
    return {"charge_id": f"chg-{n}", "attempt_id": f"att-{n}", "kind": "charge", "corrects": None,
            "environment": "demo", "account": "alice", "customer": "Acme", "direction": "outgoing",
            "attempted_at": T0, "rated_at": T0, "from_user": "alice", "to_user": "bob", "to_domain": "example.net",
            "destination": "bob", "on_net": True, "body_chars": 10, "billing_units": 1,
            "unit_price": Decimal(amount), "amount": Decimal(amount), "currency": "USD", "tariff": "B",
            "rate_code": "MSGN", "rate_effective_from": T0, "service_policy": None, "policies": "",
            "transport_protocol": "SIP", "vendor": "Internal vendor", "connection": "SIP-UA",
            "vendor_tariff": "A", "vendor_cost": Decimal(cost), "vendor_currency": vendor_currency,
            "source_topic": "imbill.charges", "source_partition": 0, "source_offset": n}


def before(revision: str, database_url: str) -> str:
    return ScriptDirectory.from_config(alembic_config(database_url)).get_revision(revision).down_revision


def before_0004(database_url: str) -> str:
    return before("0004", database_url)


def table_without(table: sa.Table, *names: str) -> sa.Table:
    """``table`` as it was before ``names`` were added (money and times stored as the models
    store them on each database)."""
    return sa.Table(table.name, sa.MetaData(), *(sa.Column(c.name, c.type, primary_key=c.primary_key)
                                                 for c in table.columns if c.name not in names))


def test_an_upgrade_keeps_the_rows_and_fills_what_it_adds(database_url):
    migrate(database_url, before_0004(database_url))
    # the xdr table as it was: today's model without the added columns (money and times
    # stored as the models store them on each database)
    old = table_without(Xdr.__table__, *ADDED, *ADDED_BY_0006)
    engine = connect(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(old.insert(), [old_xdr(1, "0.240000", "0.060000", "USD"),
                                        old_xdr(2, "0.360000", "0.050000", "EUR"),
                                        old_xdr(3, "0.050000", "0.070000", "USD")])
            conn.execute(BalanceEvent.__table__.insert(), [{
                "event_id": "bal-1", "environment": "demo", "account": "alice", "cause": "charge",
                "cause_id": "chg-1", "delta": Decimal("-0.240000"), "balance": Decimal("-0.240000"),
                "currency": "USD", "occurred_at": T0, "source_topic": "imbill.balance-events",
                "source_partition": 0, "source_offset": 0}])
        migrate(database_url)

        with engine.connect() as conn:
            rows = conn.execute(sa.select(Xdr.__table__).order_by("charge_id")).mappings().all()
            assert [(r["charge_id"], r["revision"], r["service"], r["node"], r["user_agent"], r["margin"])
                    for r in rows] == [("chg-1", 1, "messaging", None, None, Decimal("0.180000")),
                                       ("chg-2", 1, "messaging", None, None, None),
                                       ("chg-3", 1, "messaging", None, None, Decimal("-0.020000"))]
            assert rows[0]["amount"] == Decimal("0.240000") and rows[0]["attempted_at"] == T0
            assert conn.execute(sa.text("SELECT messages, amount FROM daily_customer_totals")).one() == (
                3, Decimal("0.650000") if conn.dialect.name == "postgresql" else "0.650000")
            assert conn.execute(sa.text("SELECT balance_before FROM account_balance_history")).scalar_one() in (
                Decimal("0.000000"), "0.000000")
            for name in VIEWS:
                conn.execute(sa.text(f"SELECT * FROM {name}")).all()
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_a_downgrade_to_the_revision_before_and_up_again(database_url):
    migrate(database_url)
    command.downgrade(alembic_config(database_url), before_0004(database_url))
    engine = connect(database_url)
    try:
        assert not set(VIEWS) & set(sa.inspect(engine).get_view_names())
        assert not set(ADDED) & {c["name"] for c in sa.inspect(engine).get_columns("xdr")}
    finally:
        engine.dispose()
    migrate(database_url)
    engine = connect(database_url)
    try:
        assert set(VIEWS) <= set(sa.inspect(engine).get_view_names())
    finally:
        engine.dispose()


def rejection(n: int) -> dict:
    return {"rejection_id": f"rej-{n}", "attempt_id": f"att-{n}", "environment": "demo", "account": "alice",
            "attempted_at": T0, "rejected_at": T0, "reason_code": "no_rate", "message": "no rate",
            "to_user": "bob", "to_domain": "example.net", "source_topic": "imbill.rejections",
            "source_partition": 0, "source_offset": n}


def test_the_0006_upgrade_keeps_one_xdr_per_attempt_and_every_revision(database_url):
    """Rows written by 0005: two charges, an old-style correction row of the first (the
    projector wrote corrections as rows of their own), a correction charging a rejected
    attempt, and a rejection that still stands."""
    migrate(database_url, before("0006", database_url))
    old_xdr_table = table_without(Xdr.__table__, *ADDED_BY_0006)
    old_rejections = table_without(RejectedAttempt.__table__, "superseded_by")
    corrected = old_xdr(1, "0.100000", "0.010000", "USD") | {
        "charge_id": "chg-att-1#2", "kind": "correction", "corrects": "chg-1", "revision": 2, "source_offset": 10}
    charged_after_all = old_xdr(3, "0.050000", "0.000000", "USD") | {
        "charge_id": "chg-att-3#2", "kind": "correction", "corrects": "rej-3", "revision": 2}
    engine = connect(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(old_xdr_table.insert(), [
                old_xdr(1, "0.240000", "0.060000", "USD") | {"revision": 1, "margin": Decimal("0.180000")},
                old_xdr(2, "0.360000", "0.050000", "USD") | {"revision": 1, "margin": Decimal("0.310000")},
                corrected | {"margin": Decimal("0.090000")}, charged_after_all | {"margin": Decimal("0.050000")}])
            conn.execute(old_rejections.insert(), [rejection(3), rejection(4)])
        migrate(database_url)

        with engine.connect() as conn:
            xdrs = conn.execute(sa.select(Xdr.__table__).order_by("attempt_id")).mappings().all()
            assert [(r["attempt_id"], r["charge_id"], r["revision"], r["amount"], r["margin"], r["rerate_run"])
                    for r in xdrs] == [
                ("att-1", "chg-att-1#2", 2, Decimal("0.100000"), Decimal("0.090000"), None),
                ("att-2", "chg-2", 1, Decimal("0.360000"), Decimal("0.310000"), None),
                ("att-3", "chg-att-3#2", 2, Decimal("0.050000"), Decimal("0.050000"), None)]
            revisions = conn.execute(sa.select(XdrRevision.__table__).order_by("charge_id")).mappings().all()
            assert [(r["charge_id"], r["attempt_id"], r["revision"], r["kind"], r["corrects"], r["amount"],
                     r["difference"], r["vendor_cost"]) for r in revisions] == [
                ("chg-1", "att-1", 1, "charge", None, Decimal("0.240000"), Decimal("0.240000"), Decimal("0.060000")),
                ("chg-2", "att-2", 1, "charge", None, Decimal("0.360000"), Decimal("0.360000"), Decimal("0.050000")),
                # an old correction row's difference is not known
                ("chg-att-1#2", "att-1", 2, "correction", "chg-1", Decimal("0.100000"), None, Decimal("0.010000")),
                ("chg-att-3#2", "att-3", 2, "correction", "rej-3", Decimal("0.050000"), None, Decimal("0"))]
            assert revisions[2]["source_offset"] == 10 and revisions[0]["attempted_at"] == T0
            assert dict(conn.execute(sa.select(RejectedAttempt.rejection_id, RejectedAttempt.superseded_by)).all()) \
                == {"rej-3": "chg-att-3#2", "rej-4": None}
            assert conn.execute(sa.text("SELECT reason_code, rejections FROM daily_rejections")).all() == [
                ("no_rate", 1)]
            assert conn.execute(sa.text("SELECT messages, billing_units, amount FROM daily_customer_totals")).one() \
                == (3, 3, Decimal("0.510000") if conn.dialect.name == "postgresql" else "0.510000")
            for name in VIEWS:
                conn.execute(sa.text(f"SELECT * FROM {name}")).all()
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_a_0006_downgrade_keeps_the_latest_revision_of_each_attempt(database_url):
    migrate(database_url)
    engine = connect(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(Xdr.__table__.insert(), [old_xdr(1, "0.100000", "0.010000", "USD") | {
                "charge_id": "chg-att-1#2", "kind": "correction", "corrects": "chg-1", "revision": 2,
                "rerate_run": "run-1"}])
        command.downgrade(alembic_config(database_url), before("0006", database_url))
        inspector = sa.inspect(engine)
        assert "xdr_revision" not in inspector.get_table_names()
        assert "rerate_run" not in {c["name"] for c in inspector.get_columns("xdr")}
        assert "superseded_by" not in {c["name"] for c in inspector.get_columns("rejected_attempt")}
        assert set(VIEWS) <= set(inspector.get_view_names())
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT charge_id FROM xdr")).scalars().all() == ["chg-att-1#2"]
            assert conn.execute(sa.text("SELECT messages FROM daily_customer_totals")).scalar_one() == 0  # 0004's
        migrate(database_url)
    finally:
        engine.dispose()
