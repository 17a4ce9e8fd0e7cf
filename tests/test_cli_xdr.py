"""`imbill xdr` for analysts, on SQLite and on PostgreSQL: filters, newest first, totals
--by hour/day/customer/destination/vendor computed in SQL (expected rows worked out by
hand), and every output format read back (CSV, JSON, Parquet with pyarrow and DuckDB).

The rows get there as in production: Charge events on the session's broker, projected by
the real xDR projector."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from datetime import datetime, timezone
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from imbill.bus import EventProducer
from imbill.cli import cli
from imbill.projections.models import connect
from imbill.projections.projector import XdrProjector
from imbill.projections.queries import XDR_COLUMNS, XdrFilter, aggregate_xdrs, query_xdrs
from tests.test_projection_xdr import charge, send_charges

pytestmark = [pytest.mark.integration]

UTC = timezone.utc
D = Decimal


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# ch-6 is attempted at 01:30 on Jan 2 in +02:00: 23:30 UTC on Jan 1, in that hour and day.
XDRS = [
    charge(1, account="alice", customer="acme", attempted_at=at("2026-01-01T10:05:00+00:00"), destination="44",
           vendor="Carrier", billing_units=1, amount="0.050000"),
    charge(2, account="alice", customer="acme", attempted_at=at("2026-01-01T10:59:59.999+00:00"), destination="44",
           vendor="Carrier", billing_units=3, amount="0.150000"),
    charge(3, account="bob", customer="beta", attempted_at=at("2026-01-01T11:00:00+00:00"), destination="1002",
           vendor="Internal", billing_units=2, amount="0.100000"),
    charge(4, account="carol", customer="gamma", attempted_at=at("2026-01-02T09:30:00+00:00"), destination="44",
           vendor="Carrier", billing_units=1, amount="5.000000", currency="JPY", unit_price=D(5)),
    charge(5, account="bob", customer="beta", attempted_at=at("2026-01-02T09:45:00+00:00"), destination="1002",
           direction="incoming", vendor=None, connection=None, vendor_tariff=None, vendor_currency=None,
           vendor_cost=D(0), billing_units=1, amount="0.000000"),
    charge(6, account="alice", customer="acme", attempted_at=at("2026-01-02T01:30:00+02:00"), destination="33",
           vendor="Carrier", billing_units=2, amount="0.240000"),
    charge(7, account="alice", customer="acme", attempted_at=at("2026-01-01T10:10:00+00:00"), destination="44",
           environment="other", billing_units=9, amount="9.990000"),
]


def hour(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


EXPECTED = {
    "hour": [(hour("2026-01-02T09:00"), "EUR", 1, 1, D("0")), (hour("2026-01-02T09:00"), "JPY", 1, 1, D(5)),
             (hour("2026-01-01T23:00"), "EUR", 1, 2, D("0.24")), (hour("2026-01-01T11:00"), "EUR", 1, 2, D("0.10")),
             (hour("2026-01-01T10:00"), "EUR", 2, 4, D("0.20"))],
    "day": [(hour("2026-01-02T00:00"), "EUR", 1, 1, D("0")), (hour("2026-01-02T00:00"), "JPY", 1, 1, D(5)),
            (hour("2026-01-01T00:00"), "EUR", 4, 8, D("0.54"))],
    "customer": [("acme", "EUR", 3, 6, D("0.44")), ("beta", "EUR", 2, 3, D("0.10")), ("gamma", "JPY", 1, 1, D(5))],
    "destination": [("1002", "EUR", 2, 3, D("0.10")), ("33", "EUR", 1, 2, D("0.24")), ("44", "EUR", 2, 4, D("0.20")),
                    ("44", "JPY", 1, 1, D(5))],
    "vendor": [("Carrier", "EUR", 3, 6, D("0.44")), ("Carrier", "JPY", 1, 1, D(5)), ("Internal", "EUR", 1, 2, D("0.10")),
               (None, "EUR", 1, 1, D("0"))],
}


@pytest.fixture
def projected(database_url, bootstrap, topics) -> str:
    producer = EventProducer(bootstrap)
    try:
        send_charges(producer, topics, XDRS)
    finally:
        producer.close()
    with XdrProjector(database_url, bootstrap, topics) as projector:
        assert projector.run_until_idle() == len(XDRS)
    return database_url


def imbill(database_url: str, *args: str):
    return CliRunner().invoke(cli, ["--database-url", database_url, "--environment", "demo", *args],
                              env={"COLUMNS": "80", "NO_COLOR": "1"}, catch_exceptions=False)


def ids(rows) -> list[str]:
    return [r["charge_id"] for r in rows]


@pytest.mark.parametrize("by", list(EXPECTED))
def test_totals_by_are_summed_in_sql(projected, by):
    engine = connect(projected)
    try:
        got = aggregate_xdrs(engine, by, XdrFilter(environment="demo"))
    finally:
        engine.dispose()
    assert [(r[by], r["currency"], r["xdrs"], r["billing_units"], r["amount"]) for r in got] == EXPECTED[by]
    assert all(isinstance(r["amount"], Decimal) for r in got)


def test_totals_oldest_first_and_filtered(projected):
    engine = connect(projected)
    try:
        oldest = aggregate_xdrs(engine, "day", XdrFilter(environment="demo"), newest_first=False)
        outgoing = aggregate_xdrs(engine, "customer", XdrFilter(environment="demo", direction="outgoing"))
        window = aggregate_xdrs(engine, "hour", XdrFilter(environment="demo", since=hour("2026-01-01T10:30"),
                                                          until=hour("2026-01-01T11:00")))
    finally:
        engine.dispose()
    assert [r["day"] for r in oldest] == [hour("2026-01-01T00:00"), hour("2026-01-02T00:00"),
                                          hour("2026-01-02T00:00")]
    assert [(r["customer"], r["xdrs"], r["amount"]) for r in outgoing] == [
        ("acme", 3, D("0.44")), ("beta", 1, D("0.10")), ("gamma", 1, D(5))]
    assert [(r["hour"], r["xdrs"], r["amount"]) for r in window] == [(hour("2026-01-01T10:00"), 1, D("0.15"))]


def test_filters_and_newest_first(projected):
    engine = connect(projected)
    try:
        def select(**where):
            return ids(query_xdrs(engine, where=XdrFilter(environment="demo", **where), newest_first=True))

        assert select() == ["ch-5", "ch-4", "ch-6", "ch-3", "ch-2", "ch-1"]
        assert select(customer="acme") == ["ch-6", "ch-2", "ch-1"]
        assert select(account="bob") == ["ch-5", "ch-3"]
        assert select(destination="44") == ["ch-4", "ch-2", "ch-1"]
        assert select(direction="incoming") == ["ch-5"]
        assert select(since=hour("2026-01-01T11:00"), until=hour("2026-01-02T09:30")) == ["ch-6", "ch-3"]
    finally:
        engine.dispose()


def test_the_cli_lists_the_newest_first_and_limit_keeps_the_newest(projected):
    result = imbill(projected, "xdr", "--limit", "2", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert [r["charge_id"] for r in csv.DictReader(io.StringIO(result.output))] == ["ch-5", "ch-4"]
    oldest = imbill(projected, "xdr", "--limit", "2", "--oldest-first", "--format", "csv").output
    assert [r["charge_id"] for r in csv.DictReader(io.StringIO(oldest))] == ["ch-1", "ch-2"]
    filtered = imbill(projected, "xdr", "--customer", "acme", "--since", "2026-01-01T10:30:00Z", "--until",
                      "2026-01-02", "--format", "json").output
    assert [r["charge_id"] for r in json.loads(filtered)] == ["ch-6", "ch-2"]


def test_csv_and_json_have_every_column_and_money_in_minor_units(projected):
    rows = list(csv.DictReader(io.StringIO(imbill(projected, "xdr", "--format", "csv").output)))
    assert list(rows[0]) == list(XDR_COLUMNS)
    by_id = {r["charge_id"]: r for r in rows}
    assert by_id["ch-1"]["amount"] == "0.05" and by_id["ch-4"]["amount"] == "5"  # EUR 2, JPY 0
    assert by_id["ch-6"]["attempted_at"] == "2026-01-01T23:30:00+00:00"
    parsed = {r["charge_id"]: r for r in json.loads(imbill(projected, "xdr", "--format", "json").output)}
    assert parsed["ch-2"]["amount"] == "0.15" and parsed["ch-2"]["billing_units"] == 3
    assert parsed["ch-2"]["on_net"] is False and parsed["ch-5"]["vendor"] is None


def test_totals_in_every_format(projected):
    table = imbill(projected, "xdr", "--by", "customer")
    assert table.exit_code == 0
    assert [line.split()[1:6] for line in table.output.splitlines() if "acme" in line] == [
        ["acme", "│", "EUR", "│", "3"]]
    rows = list(csv.DictReader(io.StringIO(imbill(projected, "xdr", "--by", "vendor", "--format", "csv").output)))
    assert [(r["vendor"], r["currency"], r["xdrs"], r["billing_units"], r["amount"]) for r in rows] == [
        ("Carrier", "EUR", "3", "6", "0.44"), ("Carrier", "JPY", "1", "1", "5"), ("Internal", "EUR", "1", "2", "0.10"),
        ("", "EUR", "1", "1", "0.00")]
    days = json.loads(imbill(projected, "xdr", "--by", "day", "--format", "json").output)
    assert days[-1] == {"day": "2026-01-01T00:00:00+00:00", "currency": "EUR", "xdrs": 4, "billing_units": 8,
                        "amount": "0.54"}


def test_parquet_is_typed_and_its_totals_are_the_sql_totals(projected, tmp_path):
    path = tmp_path / "xdrs.parquet"
    result = imbill(projected, "xdr", "--format", "parquet", "--output", str(path))
    assert result.exit_code == 0 and "6 rows written" in result.output
    table = pq.read_table(path)
    assert table.column_names == list(XDR_COLUMNS)
    assert pa.types.is_decimal(table.schema.field("amount").type)
    assert table.schema.field("attempted_at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("billing_units").type == pa.int64()
    assert table.schema.field("on_net").type == pa.bool_()
    totals: dict[str, Decimal] = {}
    for currency, amount in zip(table.column("currency").to_pylist(), table.column("amount").to_pylist()):
        totals[currency] = totals.get(currency, D(0)) + amount
    engine = connect(projected)
    try:
        sql = {}
        for row in aggregate_xdrs(engine, "day", XdrFilter(environment="demo")):
            sql[row["currency"]] = sql.get(row["currency"], D(0)) + row["amount"]
    finally:
        engine.dispose()
    assert totals == sql == {"EUR": D("0.54"), "JPY": D(5)}
    assert table.column("attempted_at").to_pylist()[2] == at("2026-01-01T23:30:00+00:00")  # ch-6, newest first


def test_duckdb_reads_the_parquet(projected, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    path = tmp_path / "xdrs.parquet"
    imbill(projected, "xdr", "--format", "parquet", "--output", str(path))
    got = duckdb.sql(f"SELECT currency, count(*), sum(amount), typeof(sum(amount)) FROM read_parquet('{path}') "
                     "GROUP BY currency ORDER BY currency").fetchall()
    assert got == [("EUR", 5, D("0.54"), "DECIMAL(38,6)"), ("JPY", 1, D(5), "DECIMAL(38,6)")]


def test_pandas_reads_the_parquet(projected, tmp_path):
    pandas = pytest.importorskip("pandas")
    path = tmp_path / "xdrs.parquet"
    imbill(projected, "xdr", "--format", "parquet", "--output", str(path))
    frame = pandas.read_parquet(path)
    assert str(frame["attempted_at"].dt.tz) == "UTC" and sum(frame["amount"]) == D("5.54")


def test_columns_takes_any_column_of_the_xdr_table(projected):
    """The choice is the table's own column list: a column a migration adds is offered as is."""
    chosen = list(reversed(XDR_COLUMNS))
    result = imbill(projected, "xdr", "--columns", ",".join(chosen), "--format", "csv")
    assert result.exit_code == 0, result.output
    assert next(csv.reader(io.StringIO(result.output))) == chosen
    table = imbill(projected, "xdr", "--columns", "charge_id,vendor_cost,policies")
    assert "│ ch-1 " in table.output and "0.01" in table.output and "offnet,static-alice" in table.output


def test_wide_shows_every_column_and_the_default_fits_80_columns(projected):
    wide = imbill(projected, "xdr", "--wide")
    assert all(column in wide.output for column in ("vendor_tariff", "rate_effective_from", "source_offset"))
    narrow = imbill(projected, "xdr")
    assert max(len(line) for line in narrow.output.splitlines()) <= 80
    assert "2026-01-01 23:30:00" in narrow.output and "…" not in narrow.output


def in_terminal(args: list[str], columns: int = 80) -> str:
    """What a user sees running ``imbill ARGS`` in a terminal ``columns`` wide (a real pty)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | {"TERM": "xterm", "NO_COLOR": "1"}
    process = subprocess.Popen([sys.executable, "-m", "imbill", *args], stdin=terminal, stdout=terminal,
                               stderr=terminal, env=env, close_fds=True)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(timeout=60) == 0, output
    return re.sub(r"\x1b\[[0-9;]*m", "", output.decode()).replace("\r\n", "\n")


def test_the_default_table_fits_an_80_column_terminal(projected):
    if not projected.startswith("sqlite"):
        pytest.skip("the table is the same on PostgreSQL")
    shown = in_terminal(["--database-url", projected, "--environment", "demo", "xdr"])
    lines = shown.strip("\n").splitlines()
    assert max(len(line) for line in lines) <= 80, shown
    assert len(lines) == 4 + 6 + 1  # title, three header lines, a line per xDR (none wrapped), the bottom
    assert "2026-01-01 23:30:00" in shown and "…" not in shown
    for header in ("attempted_at", "account", "destination", "units", "amount", "currency"):
        assert header in lines[2]
    wide = in_terminal(["--database-url", projected, "--environment", "demo", "xdr", "--wide"])
    assert max(len(line) for line in wide.strip("\n").splitlines()) <= 80  # rich folds it into the terminal
