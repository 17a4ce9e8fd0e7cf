"""`imbill xdr --revisions` and the rejections a correction charged, as a user runs them, on
SQLite and PostgreSQL: charges and corrections on the session's broker, projected by the real
xDR projector."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imbill.bus import EventProducer
from imbill.projections.projector import XdrProjector
from imbill.projections.queries import REVISION_COLUMNS
from tests.test_cli_xdr import imbill, in_terminal
from tests.test_projection_revisions import charged_after_all, correction
from tests.test_projection_xdr import T0, charge, rejection, send_charges

pytestmark = [pytest.mark.integration]

D = Decimal
RECORDS = [
    charge(1, amount="0.100000"),
    correction(1, 2, "0.080000", "0.100000"),
    correction(1, 3, "0.120000", "0.080000"),
    charge(2, account="bob", amount="0.050000"),
    correction(2, 2, "0.000000", "0.050000", account="bob", units=0),  # a reversal
    charged_after_all(5),
]
"""at-1: three revisions; at-2: charged, then reversed; at-r5: rejected (rj-5), then charged."""


@pytest.fixture
def projected(database_url, bootstrap, topics) -> str:
    producer = EventProducer(bootstrap)
    try:
        producer.send(topics.rejections, "demo/alice", "Rejection", rejection(5))
        producer.send(topics.rejections, "demo/alice", "Rejection", rejection(6))
        send_charges(producer, topics, RECORDS)
    finally:
        producer.close()
    with XdrProjector(database_url, bootstrap, topics) as projector:
        assert projector.run_until_idle() == len(RECORDS) + 2
    return database_url


def csv_rows(output: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(output)))


def test_revisions_lists_every_revision_with_every_column(projected):
    result = imbill(projected, "xdr", "--revisions", "--oldest-first", "--format", "csv")
    assert result.exit_code == 0, result.output
    got = csv_rows(result.output)
    assert list(got[0]) == list(REVISION_COLUMNS)
    assert [(r["charge_id"], r["revision"], r["kind"], r["corrects"], r["amount"], r["difference"]) for r in got] == [
        ("ch-1", "1", "charge", "", "0.10", "0.10"),
        ("chg-at-1#2", "2", "correction", "ch-1", "0.08", "-0.02"),
        ("chg-at-1#3", "3", "correction", "chg-at-1#2", "0.12", "0.04"),
        ("ch-2", "1", "charge", "", "0.05", "0.05"),
        ("chg-at-2#2", "2", "correction", "ch-2", "0.00", "-0.05"),
        ("chg-at-r5#2", "2", "correction", "rj-5", "0.05", "0.05")]
    newest = csv_rows(imbill(projected, "xdr", "--revisions", "--format", "csv", "--limit", "2").output)
    assert [r["charge_id"] for r in newest] == ["chg-at-r5#2", "chg-at-2#2"]
    # the latest revisions, one per attempt, are what `imbill xdr` lists
    latest = csv_rows(imbill(projected, "xdr", "--format", "csv").output)
    assert sorted(r["charge_id"] for r in latest) == ["chg-at-1#3", "chg-at-2#2", "chg-at-r5#2"]


def test_revisions_filters(projected):
    def ids(*args: str) -> list[str]:
        result = imbill(projected, "xdr", "--revisions", "--oldest-first", "--format", "json", *args)
        assert result.exit_code == 0, result.output
        return [r["charge_id"] for r in json.loads(result.output)]

    assert ids("--attempt", "at-1") == ["ch-1", "chg-at-1#2", "chg-at-1#3"]
    assert ids("--account", "bob") == ["ch-2", "chg-at-2#2"]
    assert ids("--rerate-run", "run-3") == ["chg-at-1#3"]
    assert ids("--since", (T0 + timedelta(seconds=2)).isoformat(), "--until", (T0 + timedelta(seconds=5)).isoformat()) \
        == ["ch-2", "chg-at-2#2"]
    assert ids("--customer", "nobody") == []
    latest_of_run = imbill(projected, "xdr", "--rerate-run", "run-1", "--format", "csv").output
    assert [r["charge_id"] for r in csv_rows(latest_of_run)] == ["chg-at-r5#2"]


def test_revisions_json_and_parquet_are_typed(projected, tmp_path):
    rows = json.loads(imbill(projected, "xdr", "--revisions", "--attempt", "at-1", "--format", "json").output)
    assert rows[0]["revision"] == 3 and rows[0]["difference"] == "0.04" and rows[0]["rerate_run"] == "run-3"
    assert rows[-1]["corrects"] is None and rows[-1]["difference"] == "0.10"
    path = tmp_path / "revisions.parquet"
    result = imbill(projected, "xdr", "--revisions", "--format", "parquet", "--output", str(path))
    assert result.exit_code == 0 and "6 rows written" in result.output
    table = pq.read_table(path)
    assert table.column_names == list(REVISION_COLUMNS)
    assert pa.types.is_decimal(table.schema.field("difference").type)
    assert sum(table.column("difference").to_pylist()) == D("0.17")  # = the latest amounts: 0.12 + 0 + 0.05


def test_the_default_revisions_table_fits_80_columns(projected):
    table = imbill(projected, "xdr", "--revisions")
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in table.output
    for header in ("attempted_at", "account", "rev", "amount", "difference", "currency"):
        assert header in table.output
    assert any("-0.02" in line and "alice" in line for line in lines)
    if projected.startswith("sqlite"):
        shown = in_terminal(["--database-url", projected, "--environment", "demo", "xdr", "--revisions"])
        shown_lines = shown.strip("\n").splitlines()
        assert max(len(line) for line in shown_lines) <= 80, shown
        assert len(shown_lines) == 4 + 6 + 1, shown  # title, header, a line per revision (none wrapped), bottom


def test_columns_of_the_revision_table(projected):
    result = imbill(projected, "xdr", "--revisions", "--columns", "charge_id,difference,rerate_run", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert next(csv.reader(io.StringIO(result.output))) == ["charge_id", "difference", "rerate_run"]
    wrong = imbill(projected, "xdr", "--revisions", "--columns", "charge_id,margin")
    assert wrong.exit_code == 2 and "no xDR revision column margin; the columns are charge_id," in wrong.output
    assert imbill(projected, "xdr", "--columns", "difference").exit_code == 2  # a revision's column, not an xDR's


def test_by_totals_the_latest_revisions_only(projected):
    refused = imbill(projected, "xdr", "--revisions", "--by", "day")
    assert refused.exit_code == 2 and "without --revisions" in refused.output
    totals = json.loads(imbill(projected, "xdr", "--by", "customer", "--format", "json").output)
    # 0.12 (at-1, revision 3) + 0 (at-2, reversed) + 0.05 (at-r5): the sum of every difference
    assert totals == [{"customer": "acme", "currency": "EUR", "xdrs": 3, "billing_units": 2, "amount": "0.17"}]


def test_rejections_lists_those_that_stand_unless_superseded_is_asked(projected):
    standing = csv_rows(imbill(projected, "rejections", "--format", "csv").output)
    assert [(r["rejection_id"], r["superseded_by"]) for r in standing] == [("rj-6", "")]
    every = csv_rows(imbill(projected, "rejections", "--superseded", "--format", "csv").output)
    assert [(r["rejection_id"], r["superseded_by"]) for r in every] == [("rj-6", ""), ("rj-5", "chg-at-r5#2")]
