"""What the CLI prints, as values: money in its currency's minor units, and a listing as
CSV, JSON and Arrow with the same values (rich output tested at a fixed width elsewhere)."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pyarrow as pa
import pytest
from rich.console import Console

from imbill.presentation import Listing, arrow_table, listing_csv, listing_json, listing_table, money


@pytest.mark.parametrize(("value", "currency", "shown"), [
    ("0.050000", "USD", "0.05"), ("5.000000", "JPY", "5"), ("0.05", "BHD", "0.050"), ("0.125", "KWD", "0.125"),
    ("1", "CLF", "1.0000"), ("12.5", "EUR", "12.50"), ("0.123456", "USD", "0.123456"), ("0.0125", "USD", "0.0125"),
    ("-37.350000", "USD", "-37.35"), ("-0.000000", "USD", "0.00"), ("0", "JPY", "0"), ("1E+3", "USD", "1000.00"),
    ("2.5", "XAU", "2.50"), ("2.5", "usd", "2.50"),
])
def test_money_has_the_minor_units_of_its_currency_and_never_hides_a_digit(value, currency, shown):
    assert money(Decimal(value), currency) == shown


AT = datetime(2026, 12, 4, 9, 30, 15, 123000, tzinfo=timezone(timedelta(hours=2)))
LISTING = Listing("t", ("name", "count", "ok", "amount", "currency", "at", "note"),
                  [{"name": "a", "count": 3, "ok": True, "amount": Decimal("1.500000"), "currency": "USD", "at": AT,
                    "note": None},
                   {"name": "b", "count": 0, "ok": False, "amount": Decimal("7"), "currency": "JPY", "at": None,
                    "note": "x, y"}],
                  {"count": "integer", "ok": "boolean", "amount": "money", "at": "timestamp"})


def test_csv_writes_text_every_reader_parses():
    rows = list(csv.DictReader(io.StringIO(listing_csv(LISTING))))
    assert rows == [{"name": "a", "count": "3", "ok": "true", "amount": "1.50", "currency": "USD",
                     "at": "2026-12-04T07:30:15.123000+00:00", "note": ""},
                    {"name": "b", "count": "0", "ok": "false", "amount": "7", "currency": "JPY", "at": "",
                     "note": "x, y"}]


def test_json_keeps_numbers_booleans_and_nulls_typed_and_money_exact():
    assert json.loads(listing_json(LISTING)) == [
        {"name": "a", "count": 3, "ok": True, "amount": "1.50", "currency": "USD",
         "at": "2026-12-04T07:30:15.123000+00:00", "note": None},
        {"name": "b", "count": 0, "ok": False, "amount": "7", "currency": "JPY", "at": None, "note": "x, y"}]


def test_arrow_types_every_column():
    table = arrow_table(LISTING)
    assert table.schema.types == [pa.string(), pa.int64(), pa.bool_(), pa.decimal128(38, 6), pa.string(),
                                  pa.timestamp("us", tz="UTC"), pa.string()]
    assert table.column("amount").to_pylist() == [Decimal("1.5"), Decimal(7)]
    assert table.column("at").to_pylist()[0] == AT


def test_table_shows_times_in_utc_to_the_second_and_numbers_right_aligned():
    console = Console(width=120, record=True, color_system=None)
    console.print(listing_table(LISTING))
    shown = console.export_text()
    assert "│ a    │     3 │ yes │   1.50 │ USD      │ 2026-12-04 07:30:15 │      │" in shown
    assert "│ b    │     0 │ no  │      7 │ JPY      │                     │ x, y │" in shown
