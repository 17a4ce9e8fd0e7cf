"""The read side of the projections: xDRs (filtered, or aggregated in SQL), their revisions,
rejected attempts, and balances, as plain dicts of column name -> value (``Decimal`` money, tz-aware
UTC timestamps), so the CLI can render them (``imbill.presentation``) and an analyst's
script can use them as they are.

Every query runs the same on SQLite and PostgreSQL. Sums of money are exact on both:
PostgreSQL sums ``NUMERIC``; on SQLite, where money is its fixed 6-decimal text, the sum is
taken over the integer count of micro units (the text without its point), never a float.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from imbill.projections.models import (BalanceEvent, ConfigObject, Registration, RejectedAttempt,
                                       ServiceStatusEvent, UtcDateTime, Xdr, XdrRevision)

__all__ = ["XDR_COLUMNS", "REVISION_COLUMNS", "AGGREGATIONS", "XdrFilter", "column_kinds", "query_xdrs",
           "query_revisions", "aggregate_xdrs",
           "AGGREGATE_KINDS", "REJECTION_COLUMNS", "query_rejections", "BALANCE_KINDS", "query_balances",
           "latest_balances", "REGISTRATION_COLUMNS", "query_registrations"]

XDR_COLUMNS: tuple[str, ...] = tuple(Xdr.__table__.columns.keys())
"""Every column of an xDR row, in table order (new columns of a migration included)."""

REVISION_COLUMNS: tuple[str, ...] = tuple(XdrRevision.__table__.columns.keys())
"""Every column of an xDR revision row (``xdr_revision``), in table order."""

REJECTION_COLUMNS: tuple[str, ...] = tuple(RejectedAttempt.__table__.columns.keys())
REGISTRATION_COLUMNS = ("account", "contact", "expires_at", "user_agent", "source", "transport", "state",
                        "updated_at")
"""The columns ``imbill registrations`` shows, in order."""

AGGREGATIONS: tuple[str, ...] = ("hour", "day", "customer", "destination", "vendor")
"""What ``aggregate_xdrs`` groups by (with the currency: amounts are summed per currency)."""

_MICRO = Decimal("0.000001")


def column_kinds(table: sa.Table) -> dict[str, str]:
    """Each column's kind, for whoever writes typed output (Parquet): ``money``,
    ``timestamp``, ``integer``, ``boolean`` or ``text``; read from the table itself, so a
    column added by a migration has its kind without more code."""
    return {column.name: _kind(column.type) for column in table.columns}


def _kind(column_type: sa.types.TypeEngine) -> str:
    if isinstance(column_type, (UtcDateTime, sa.DateTime)):
        return "timestamp"
    if isinstance(column_type, sa.Boolean):
        return "boolean"
    if isinstance(column_type, sa.Numeric) and not isinstance(column_type, (sa.Integer, sa.Float)):
        return "money"
    if isinstance(column_type, sa.Integer):
        return "integer"
    return "text"


@dataclass(frozen=True)
class XdrFilter:
    """Which xDRs (or revisions: the columns are in both tables): every field that is not
    None narrows the selection; ``since``/``until`` (tz-aware) bound ``attempted_at`` as
    ``[since, until)``; ``rerate_run`` keeps what that re-rating run made."""

    environment: str | None = None
    account: str | None = None
    customer: str | None = None
    destination: str | None = None
    direction: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    attempt_id: str | None = None
    rerate_run: str | None = None

    def where(self, table: sa.Table) -> list[sa.ColumnElement[bool]]:
        equal = {name: getattr(self, name) for name in ("environment", "account", "customer", "destination",
                                                         "direction", "attempt_id", "rerate_run")}
        clauses = [table.c[name] == value for name, value in equal.items() if value is not None]
        if self.since is not None:
            clauses.append(table.c.attempted_at >= self.since)
        if self.until is not None:
            clauses.append(table.c.attempted_at < self.until)
        return clauses


def query_xdrs(engine: Engine, *, account: str | None = None, environment: str | None = None,
               since: datetime | None = None, until: datetime | None = None, limit: int | None = None,
               newest_first: bool = False, where: XdrFilter | None = None) -> list[dict[str, Any]]:
    """xDRs attempted in ``[since, until)``, oldest first (``newest_first``: the latest
    first, so ``limit`` keeps the latest), narrowed by ``where`` and the keyword filters."""
    table = Xdr.__table__
    given = {"account": account, "environment": environment, "since": since, "until": until}
    where = replace(where or XdrFilter(), **{k: v for k, v in given.items() if v is not None})
    order = (table.c.attempted_at.desc(), table.c.charge_id.desc()) if newest_first else \
        (table.c.attempted_at, table.c.charge_id)
    query = sa.select(table).where(*where.where(table)).order_by(*order).limit(limit)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def query_revisions(engine: Engine, where: XdrFilter | None = None, *, limit: int | None = None,
                    newest_first: bool = False) -> list[dict[str, Any]]:
    """Every revision of the xDRs ``where`` selects (``xdr_revision``: a charge and each of
    its corrections), by attempt time, then attempt and revision (``newest_first``: the exact
    reverse, so ``limit`` keeps the latest)."""
    table = XdrRevision.__table__
    order = [table.c.attempted_at, table.c.attempt_id, table.c.revision]
    if newest_first:
        order = [column.desc() for column in order]
    query = sa.select(table).where(*(where or XdrFilter()).where(table)).order_by(*order).limit(limit)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


AGGREGATE_KINDS: Mapping[str, str] = {"hour": "timestamp", "day": "timestamp", "customer": "text",
                                      "destination": "text", "vendor": "text", "currency": "text",
                                      "xdrs": "integer", "billing_units": "integer", "amount": "money"}
"""The kinds of the columns ``aggregate_xdrs`` returns."""


def aggregate_xdrs(engine: Engine, by: str, where: XdrFilter | None = None, *, newest_first: bool = True,
                   limit: int | None = None) -> list[dict[str, Any]]:
    """xDRs grouped ``by`` an hour, a day (UTC), a customer, a destination or a vendor, and
    by currency: ``{by, currency, xdrs, billing_units, amount}`` per group, summed in SQL.
    Time groups come newest first (``newest_first=False``: oldest first), the others in
    the order of their key."""
    if by not in AGGREGATIONS:
        raise ValueError(f"cannot aggregate by {by!r}; choose one of {', '.join(AGGREGATIONS)}")
    table, where = Xdr.__table__, where or XdrFilter()
    dialect = engine.dialect.name
    key = _time_bucket(table.c.attempted_at, by, dialect) if by in ("hour", "day") else table.c[by]
    key = key.label(by)
    query = (sa.select(key, table.c.currency, sa.func.count().label("xdrs"),
                       sa.func.sum(table.c.billing_units).label("billing_units"),
                       _money_sum(table.c.amount, dialect).label("amount"))
             .where(*where.where(table)).group_by(key, table.c.currency))
    if by in ("hour", "day"):
        query = query.order_by(key.desc() if newest_first else key, table.c.currency)
    else:
        query = query.order_by(key.asc().nulls_last(), table.c.currency)
    with engine.connect() as conn:
        rows = [dict(row) for row in conn.execute(query.limit(limit)).mappings()]
    for row in rows:
        row["amount"] = _money(row["amount"], dialect)
    return rows


def _time_bucket(column: sa.ColumnElement[Any], by: str, dialect: str) -> sa.ColumnElement[Any]:
    """The start of the UTC hour or day of ``column``, read back as a tz-aware instant."""
    if dialect == "sqlite":  # stored as naive UTC text
        pattern = "%Y-%m-%d %H:00:00" if by == "hour" else "%Y-%m-%d 00:00:00"
        return sa.type_coerce(sa.func.strftime(pattern, column), UtcDateTime())
    utc = sa.func.timezone("UTC", column)
    return sa.type_coerce(sa.func.date_trunc(by, utc), UtcDateTime())


def _money_sum(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    if dialect == "sqlite":  # "-1.230000" -> -1230000 micro units: exact integer arithmetic
        return sa.func.sum(sa.cast(sa.func.replace(column, ".", ""), sa.Integer))
    return sa.type_coerce(sa.func.sum(column), sa.Numeric(38, 6, asdecimal=True))


def _money(value: Any, dialect: str) -> Decimal:
    if value is None:
        return Decimal(0).quantize(_MICRO)
    if dialect == "sqlite":
        return (Decimal(int(value)) * _MICRO).quantize(_MICRO)
    return Decimal(value).quantize(_MICRO)


def query_rejections(engine: Engine, *, environment: str | None = None, account: str | None = None,
                     reason: str | None = None, since: datetime | None = None, until: datetime | None = None,
                     limit: int | None = None, superseded: bool = False) -> list[dict[str, Any]]:
    """Rejected attempts, newest first, narrowed by account, reason code and ``[since, until)``;
    only those that stand, unless ``superseded`` (then also those a correction has charged
    since, whose ``superseded_by`` names that charge)."""
    table = RejectedAttempt.__table__
    clauses = [table.c[name] == value for name, value in
               {"environment": environment, "account": account, "reason_code": reason}.items() if value is not None]
    if not superseded:
        clauses.append(table.c.superseded_by.is_(None))
    if since is not None:
        clauses.append(table.c.attempted_at >= since)
    if until is not None:
        clauses.append(table.c.attempted_at < until)
    query = (sa.select(table).where(*clauses)
             .order_by(table.c.attempted_at.desc(), table.c.rejection_id.desc()).limit(limit))
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def query_registrations(engine: Engine, *, environment: str, now: datetime,
                        account: str | None = None) -> list[dict[str, Any]]:
    """The live bindings (``expires_at`` after ``now``: a lapsed one may still have its row
    until its expired event is projected), by account, the most recently changed first."""
    table = Registration.__table__
    clauses = [table.c.environment == environment, table.c.expires_at > now]
    if account is not None:
        clauses.append(table.c.account == account)
    query = sa.select(table).where(*clauses).order_by(table.c.account, table.c.updated_at.desc())
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


BALANCE_KINDS: Mapping[str, str] = {
    "account": "text", "customer": "text", "balance_model": "text", "balance": "money", "currency": "text",
    "credit_limit": "money", "status": "text", "last_movement": "timestamp", "last_cause": "text",
}
"""The columns of ``query_balances``, in order, and their kinds."""


def query_balances(engine: Engine, environment: str, account: str | None = None) -> list[dict[str, Any]]:
    """Per account of the projected config in force (``config_object``): its balance (the
    last BalanceChanged, else its opening balance), balance model, credit limit, messaging
    status and last movement, in account order."""
    objects = ConfigObject.__table__
    query = sa.select(objects.c.kind, objects.c.key, objects.c.body).where(
        objects.c.environment == environment, objects.c.kind.in_(("account", "customer")))
    with engine.connect() as conn:
        config = conn.execute(query).all()
        latest_balance = _latest(conn, BalanceEvent.__table__, environment, account)
        latest_status = _latest(conn, ServiceStatusEvent.__table__, environment, account)
    currencies = {key: json.loads(body)["currency"] for kind, key, body in config if kind == "customer"}
    accounts = sorted((json.loads(body) for kind, key, body in config
                       if kind == "account" and account in (None, key)), key=lambda a: a["account_id"])
    return [_balance_row(a, currencies.get(a["customer"], ""), latest_balance.get(a["account_id"]),
                         latest_status.get(a["account_id"])) for a in accounts]


def _latest(conn: sa.Connection, table: sa.Table, environment: str, account: str | None) -> dict[str, Any]:
    """The last event of each account of ``table`` (by its place on its partition)."""
    rank = sa.func.row_number().over(partition_by=table.c.account,
                                     order_by=(table.c.source_offset.desc(), table.c.occurred_at.desc()))
    inner = sa.select(table, rank.label("rank")).where(table.c.environment == environment)
    if account is not None:
        inner = inner.where(table.c.account == account)
    ranked = inner.subquery()
    rows = conn.execute(sa.select(ranked).where(ranked.c.rank == 1)).mappings()
    return {row["account"]: row for row in rows}


def _balance_row(account: Mapping[str, Any], currency: str, balance: Any, status: Any) -> dict[str, Any]:
    opening = Decimal(str(account.get("opening_balance", "0")))
    return {
        "account": account["account_id"], "customer": account["customer"],
        "balance_model": account.get("balance_model", "postpaid"),
        "balance": balance["balance"] if balance else opening,
        "currency": balance["currency"] if balance else currency,
        "credit_limit": Decimal(str(account.get("credit_limit", "0"))),
        "status": status["status"] if status else "active",
        "last_movement": balance["occurred_at"] if balance else None,
        "last_cause": f"{balance['cause']} {balance['cause_id']}" if balance else "opening balance",
    }


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
