"""Reading the xDR projection: filtered rows as dicts, and their CSV / JSON / text forms.

Rows are plain dicts of column name -> value (``Decimal`` money, tz-aware UTC timestamps),
so the CLI can render them with rich and an analyst's script can use them as they are.
In CSV and JSON, decimals are written as exact strings and timestamps in ISO 8601.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Iterable, Literal, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from imbill.projections.models import Xdr

__all__ = ["XDR_COLUMNS", "SUMMARY_COLUMNS", "query_xdrs", "format_xdrs"]

XDR_COLUMNS: tuple[str, ...] = tuple(Xdr.__table__.columns.keys())
"""Every column of an xDR row, in table order."""

SUMMARY_COLUMNS: tuple[str, ...] = ("attempted_at", "environment", "account", "direction", "to_user",
                                    "destination", "on_net", "billing_units", "unit_price", "amount",
                                    "currency", "service_policy", "charge_id")
"""The columns of the text table (all of them do not fit a terminal)."""


def query_xdrs(engine: Engine, *, account: str | None = None, environment: str | None = None,
               since: datetime | None = None, until: datetime | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
    """xDRs attempted in ``[since, until)``, oldest first, optionally of one account or
    environment; ``since``/``until`` must be tz-aware."""
    table = Xdr.__table__
    query = sa.select(table).order_by(table.c.attempted_at, table.c.charge_id)
    if account is not None:
        query = query.where(table.c.account == account)
    if environment is not None:
        query = query.where(table.c.environment == environment)
    if since is not None:
        query = query.where(table.c.attempted_at >= since)
    if until is not None:
        query = query.where(table.c.attempted_at < until)
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    return str(value)


def _json_value(value: Any) -> Any:
    return _text(value) if isinstance(value, (Decimal, datetime)) else value


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(rows[0]) if rows else list(XDR_COLUMNS)


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = _columns(rows)
    writer.writerow(columns)
    writer.writerows([_text(row[c]) for c in columns] for row in rows)
    return out.getvalue()


def _json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps([{k: _json_value(v) for k, v in row.items()} for row in rows], indent=2,
                      ensure_ascii=False)


def _table(rows: Sequence[dict[str, Any]]) -> str:
    columns = [c for c in SUMMARY_COLUMNS if not rows or c in rows[0]]
    cells = [[_text(row[c]) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    numeric = {"billing_units", "unit_price", "amount"}

    def line(values: Iterable[str]) -> str:
        return "  ".join(v.rjust(w) if c in numeric else v.ljust(w)
                         for c, v, w in zip(columns, values, widths)).rstrip()

    return "\n".join([line(columns), line("-" * w for w in widths), *map(line, cells)]) + "\n"


_FORMATS = {"csv": _csv, "json": _json, "table": _table}


def format_xdrs(rows: Sequence[dict[str, Any]], fmt: Literal["table", "csv", "json"] = "table") -> str:
    """``rows`` (from :func:`query_xdrs`) as a text table, CSV with a header, or a JSON array."""
    if fmt not in _FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(_FORMATS)}")
    return _FORMATS[fmt](rows)
