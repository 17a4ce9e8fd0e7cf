"""Reading the xDR projection: filtered rows as dicts of values.

Rows are plain dicts of column name -> value (``Decimal`` money, tz-aware UTC timestamps),
so the CLI can render them (as a table, CSV or JSON: ``imbill.presentation``) and an
analyst's script can use them as they are.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from imbill.projections.models import BalanceEvent, Xdr

__all__ = ["XDR_COLUMNS", "query_xdrs", "latest_balances"]

XDR_COLUMNS: tuple[str, ...] = tuple(Xdr.__table__.columns.keys())
"""Every column of an xDR row, in table order."""


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


def latest_balances(engine: Engine, environment: str) -> dict[str, Decimal]:
    """Account -> the balance of its latest ``balance_event`` row (highest source offset:
    an account's events share one partition)."""
    table = BalanceEvent.__table__
    latest = (sa.select(table.c.account, sa.func.max(table.c.source_offset).label("offset"))
              .where(table.c.environment == environment).group_by(table.c.account).subquery())
    query = (sa.select(table.c.account, table.c.balance)
             .join(latest, sa.and_(table.c.account == latest.c.account, table.c.source_offset == latest.c.offset))
             .where(table.c.environment == environment))
    with engine.connect() as conn:
        return {account: balance for account, balance in conn.execute(query)}
