"""The SQL views for analysts, over rows projected from a real broker, on SQLite and
PostgreSQL: every expected row computed by hand (README, "SQL views for analysts")."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa

from imbill.bus import EventProducer
from imbill.projections.models import VIEWS, connect
from imbill.projections.projector import XdrProjector
from imbill.projections.rebuild import rebuild

pytestmark = [pytest.mark.integration]

MAY1, MAY2 = datetime(2024, 5, 1, tzinfo=timezone.utc), datetime(2024, 5, 2, tzinfo=timezone.utc)
INTERNAL = {"vendor": "Internal vendor", "connection": "SIP-UA", "vendor_tariff": "A", "rate_code": "MSGN",
            "destination_description": "On-net", "on_net": True}
CARRIER = {"vendor": "Carrier", "connection": "Carrier SIP", "vendor_tariff": "C", "rate_code": "44",
           "destination_description": "UK", "on_net": False}
EURO_CARRIER = {"vendor": "Euro carrier", "connection": "EC SIP", "vendor_tariff": "E", "rate_code": "44",
                "destination_description": "UK", "on_net": False, "vendor_currency": "EUR"}
INCOMING = {"vendor": None, "connection": None, "vendor_tariff": None, "vendor_currency": None, "rate_code": "",
            "destination_description": None, "on_net": False, "direction": "incoming", "tariff": ""}


def charge(n: int, at: datetime, units: int, amount: str, cost: str, route: dict, *, account: str = "alice",
           customer: str = "Acme", currency: str = "USD", **fields: object) -> dict:
    record = {
        "charge_id": f"chg-{n}", "attempt_id": f"att-{n}", "kind": "charge", "corrects": None,
        "environment": "demo", "account": account, "customer": customer, "direction": "outgoing",
        "attempted_at": at, "rated_at": at + timedelta(milliseconds=5), "from_user": account,
        "to_user": "0442071234567", "to_domain": "example.net", "destination": "442071234567", "on_net": False,
        "body_chars": 42, "billing_units": units, "unit_price": Decimal("0.05"), "amount": Decimal(amount),
        "currency": currency, "tariff": "B", "rate_code": "44", "rate_effective_from": MAY1 - timedelta(days=30),
        "service_policy": "IM", "policies": ["IM"], "transport_protocol": "SIP", "vendor": None,
        "connection": None, "vendor_tariff": None, "vendor_cost": Decimal(cost), "vendor_currency": currency,
        "revision": 1, "service": "messaging", "node": "PortaSIP", "cli_translated": account,
        "destination_description": None, "user_agent": "Linphone/5.2",
    }
    return record | route | fields


CHARGES = [
    charge(1, MAY1 + timedelta(hours=10), 1, "0.050000", "0.000000", INTERNAL),
    charge(2, MAY2 - timedelta(milliseconds=1), 2, "0.240000", "0.060000", CARRIER),
    charge(3, MAY2, 1, "0.120000", "0.030000", CARRIER, account="bob"),
    charge(4, MAY2 + timedelta(hours=8), 3, "0.360000", "0.050000", EURO_CARRIER, account="bob"),
    charge(5, MAY1 + timedelta(hours=12), 1, "0.040000", "0.000000", INTERNAL, account="carol",
           customer="Globex", currency="EUR"),
    charge(6, MAY1 + timedelta(hours=11), 1, "0.000000", "0.000000", INCOMING),
    # re-rating's correction of chg-2 (revision 2 of att-2): 1 unit for 0.12 instead of 2 for 0.24; the
    # xdr row of att-2 shows it (the views read the latest revision of each attempt)
    charge(2, MAY2 - timedelta(milliseconds=1), 1, "0.120000", "0.030000", CARRIER, kind="correction",
           corrects="chg-2", revision=2, charge_id="chg-att-2#2", difference=Decimal("-0.120000"),
           rerate_run="run-1"),
]
REJECTIONS = [(1, MAY1 + timedelta(hours=9), "insufficient_funds"), (2, MAY1 + timedelta(hours=22), "insufficient_funds"),
              (3, MAY1 + timedelta(hours=22, minutes=30), "no_rate"), (4, MAY2 + timedelta(seconds=1), "insufficient_funds")]
BALANCES = [("alice", "payment", "pay-1", "10.000000", "10.000000", MAY1 + timedelta(hours=8)),
            ("alice", "charge", "chg-1", "-0.050000", "9.950000", MAY1 + timedelta(hours=10)),
            ("alice", "charge", "chg-2", "-10.000000", "-0.050000", MAY2 - timedelta(milliseconds=1)),
            ("bob", "charge", "chg-3", "-0.120000", "-0.120000", MAY2)]


@pytest.fixture
def projected(database_url, bootstrap, topics):
    """The rows above, projected by the xDR projector."""
    producer = EventProducer(bootstrap)
    try:
        for record in CHARGES:
            producer.send(topics.charges, f"demo/{record['account']}", "Charge", record)
        for n, at, reason in REJECTIONS:
            producer.send(topics.rejections, "demo/alice", "Rejection", {
                "rejection_id": f"rej-{n}", "attempt_id": f"att-r{n}", "environment": "demo", "account": "alice",
                "attempted_at": at, "rejected_at": at, "reason_code": reason, "message": reason,
                "to_user": "bob", "to_domain": "example.net"})
        for n, (account, cause, cause_id, delta, balance, at) in enumerate(BALANCES):
            producer.send(topics.balances, f"demo/{account}", "BalanceChanged", {
                "event_id": f"bal-{n}", "environment": "demo", "account": account, "cause": cause,
                "cause_id": cause_id, "delta": Decimal(delta), "balance": Decimal(balance), "currency": "USD",
                "occurred_at": at})
        producer.flush()
    finally:
        producer.close()
    with XdrProjector(database_url, bootstrap, topics) as projector:
        assert projector.run_until_idle() == len(CHARGES) + len(REJECTIONS) + len(BALANCES)
    return database_url


def view(database_url: str, sql: str) -> list[tuple]:
    """The rows of ``sql``; days and money as text (exact: 6 decimals). On PostgreSQL the
    session is put far from UTC first: a day must still be the UTC day."""
    engine = connect(database_url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SET TIME ZONE 'Pacific/Kiritimati'"))
            return [tuple(str(v) if isinstance(v, (Decimal, date)) else v for v in row)
                    for row in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


def test_daily_totals_per_customer_and_currency(projected):
    assert view(projected, "SELECT environment, customer, day, currency, messages, billing_units, amount "
                           "FROM daily_customer_totals ORDER BY customer, day") == [
        # chg-1, chg-2 (23:59:59.999) as corrected (1 unit, 0.12), chg-6 (incoming, free): 3 messages
        ("demo", "Acme", "2024-05-01", "USD", 3, 3, "0.170000"),
        ("demo", "Acme", "2024-05-02", "USD", 2, 4, "0.480000"),
        ("demo", "Globex", "2024-05-01", "EUR", 1, 1, "0.040000"),
    ]


def test_on_net_and_off_net_volume_and_revenue_per_day(projected):
    assert view(projected, "SELECT environment, day, direction, network, currency, messages, billing_units, revenue "
                           "FROM daily_net_traffic ORDER BY day, direction DESC, network DESC, currency") == [
        ("demo", "2024-05-01", "outgoing", "on-net", "EUR", 1, 1, "0.040000"),
        ("demo", "2024-05-01", "outgoing", "on-net", "USD", 1, 1, "0.050000"),
        ("demo", "2024-05-01", "outgoing", "off-net", "USD", 1, 1, "0.120000"),
        ("demo", "2024-05-01", "incoming", "off-net", "USD", 1, 1, "0.000000"),
        ("demo", "2024-05-02", "outgoing", "off-net", "USD", 2, 4, "0.480000"),
    ]


def test_margin_per_vendor_and_destination(projected):
    assert view(projected, "SELECT environment, vendor, connection, rate_code, destination_description, currency, "
                           "vendor_currency, messages, billing_units, revenue, vendor_cost, margin "
                           "FROM vendor_destination_margin ORDER BY vendor, currency") == [
        # chg-2 as corrected 0.09, chg-3 0.09
        ("demo", "Carrier", "Carrier SIP", "44", "UK", "USD", "USD", 2, 2, "0.240000", "0.060000", "0.180000"),
        # a cost in EUR for a charge in USD: no margin
        ("demo", "Euro carrier", "EC SIP", "44", "UK", "USD", "EUR", 1, 3, "0.360000", "0.050000", None),
        ("demo", "Internal vendor", "SIP-UA", "MSGN", "On-net", "EUR", "EUR", 1, 1, "0.040000", "0.000000",
         "0.040000"),
        ("demo", "Internal vendor", "SIP-UA", "MSGN", "On-net", "USD", "USD", 1, 1, "0.050000", "0.000000",
         "0.050000"),
    ]


def test_the_xdr_margin_column(projected):
    assert view(projected, "SELECT charge_id, margin FROM xdr ORDER BY charge_id") == [
        ("chg-1", "0.050000"), ("chg-3", "0.090000"), ("chg-4", None), ("chg-5", "0.040000"), ("chg-6", None),
        ("chg-att-2#2", "0.090000")]


def test_rejections_per_reason_per_day(projected):
    assert view(projected, "SELECT environment, day, reason_code, rejections FROM daily_rejections "
                           "ORDER BY day, reason_code") == [
        ("demo", "2024-05-01", "insufficient_funds", 2),
        ("demo", "2024-05-01", "no_rate", 1),
        ("demo", "2024-05-02", "insufficient_funds", 1),
    ]


def test_balance_history_per_account(projected):
    assert view(projected, "SELECT environment, account, seq, day, cause, cause_id, balance_before, delta, "
                           "balance_after, currency FROM account_balance_history ORDER BY account, seq") == [
        ("demo", "alice", 1, "2024-05-01", "payment", "pay-1", "0.000000", "10.000000", "10.000000", "USD"),
        ("demo", "alice", 2, "2024-05-01", "charge", "chg-1", "10.000000", "-0.050000", "9.950000", "USD"),
        ("demo", "alice", 3, "2024-05-01", "charge", "chg-2", "9.950000", "-10.000000", "-0.050000", "USD"),
        ("demo", "bob", 1, "2024-05-02", "charge", "chg-3", "0.000000", "-0.120000", "-0.120000", "USD"),
    ]


def test_a_rebuild_brings_back_every_column_and_view_row(projected, bootstrap, topics):
    """``imbill project --rebuild`` folds the topics again into fresh tables (made by the same
    migrations) and swaps their rows in: the new columns and the views come back equal."""
    everything = {name: view(projected, f"SELECT * FROM {name} ORDER BY 1, 2, 3, 4")
                  for name in (*VIEWS, "xdr")}
    engine = connect(projected)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM xdr"))
            conn.execute(sa.text("DELETE FROM balance_event"))
    finally:
        engine.dispose()
    assert view(projected, "SELECT count(*) FROM daily_customer_totals") == [(0,)]
    rebuild(projected, bootstrap, topics, lambda done, total: None)
    assert {name: view(projected, f"SELECT * FROM {name} ORDER BY 1, 2, 3, 4") for name in everything} == everything


def test_every_view_is_tested_here():
    names = {name.removeprefix("test_") for name in globals()}
    assert VIEWS == ("daily_customer_totals", "daily_net_traffic", "vendor_destination_margin",
                     "daily_rejections", "account_balance_history")
    assert {"daily_totals_per_customer_and_currency", "on_net_and_off_net_volume_and_revenue_per_day",
            "margin_per_vendor_and_destination", "rejections_per_reason_per_day",
            "balance_history_per_account"} <= names
