"""The SQL fragments that differ per database, on SQLite in memory (PostgreSQL's are run by
tests/test_analyst_views.py): exact money over fixed-point text, UTC days."""

from __future__ import annotations

import sqlite3

import pytest

from imbill.projections.dialects import money_difference, money_sum, utc_day


def sqlite_value(expression: str, rows: list[tuple]) -> object:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (a TEXT, b TEXT)")
    db.executemany("INSERT INTO t VALUES (?, ?)", rows)
    return db.execute(f"SELECT {expression} FROM t").fetchone()[0]


@pytest.mark.parametrize("values, total", [
    (["0.050000", "0.100000"], "0.150000"),
    (["0.050000", "-0.120000"], "-0.070000"),
    (["-0.050000", "-1.000000"], "-1.050000"),
    (["123456789012.123456", "-0.000001", "0.100000"], "123456789012.223455"),
    (["0.100000"] * 10, "1.000000"),  # 0.1 ten times: exactly 1, not 0.9999999999999999
    ([None, "0.010000"], "0.010000"),
    ([None, None], None),
])
def test_sqlite_money_sum_is_exact(values, total):
    assert sqlite_value(money_sum("sqlite", "a"), [(v, None) for v in values]) == total


@pytest.mark.parametrize("a, b, difference", [
    ("0.240000", "0.060000", "0.180000"),
    ("0.010000", "0.050000", "-0.040000"),
    ("-0.050000", "-10.000000", "9.950000"),
    ("0.000000", "0.000000", "0.000000"),
    (None, "0.010000", None),
])
def test_sqlite_money_difference_is_exact(a, b, difference):
    assert sqlite_value(money_difference("sqlite", "a", "b"), [(a, b)]) == difference


def test_sqlite_day_of_a_stored_instant():
    assert sqlite_value(utc_day("sqlite", "a"), [("2024-05-01 23:59:59.999000", None)]) == "2024-05-01"


@pytest.mark.parametrize("fragment", [utc_day, money_sum])
def test_another_database_is_refused_in_one_line(fragment):
    with pytest.raises(NotImplementedError, match="SQLite and PostgreSQL, not mysql"):
        fragment("mysql", "a")
