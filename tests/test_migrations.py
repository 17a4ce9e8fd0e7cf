"""Upgrading a database that holds data: from the revision before the analyst xDR (0004) to
head, on SQLite and PostgreSQL. The revision before is read from 0004's own down_revision,
so the test follows when migrations are re-chained."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from imbill.projections.models import BalanceEvent, VIEWS, Xdr, alembic_config, connect, metadata, migrate

pytestmark = [pytest.mark.integration]

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
ADDED = ("revision", "service", "node", "cli_translated", "destination_description", "user_agent", "margin")


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


def before_0004(database_url: str) -> str:
    return ScriptDirectory.from_config(alembic_config(database_url)).get_revision("0004").down_revision


def test_an_upgrade_keeps_the_rows_and_fills_what_it_adds(database_url):
    migrate(database_url, before_0004(database_url))
    # the xdr table as it was: today's model without the added columns (money and times
    # stored as the models store them on each database)
    old = sa.Table("xdr", sa.MetaData(), *(sa.Column(c.name, c.type, primary_key=c.primary_key)
                                           for c in Xdr.__table__.columns if c.name not in ADDED))
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
