"""What the analysts' report shows, read from the xDR projection (SQLAlchemy Core).

One call, :func:`report_data`, reads one environment's xDRs and rejected attempts
attempted in ``[since, until)`` (optionally of one customer) and returns plain values:
traffic per hour, revenue per customer, the on-net/off-net split, the top destinations,
rejections by reason and the margin per vendor. ``imbill.report`` draws them.

Money is summed exactly and never across currencies: every amount is grouped by its
currency. PostgreSQL sums its ``NUMERIC`` column; SQLite keeps money as decimal text, whose
``sum()`` would go through floats, so on SQLite the sums use ``imbill_money_sum``, a
``Decimal`` aggregate registered on the connection. A vendor's margin (amount - vendor
cost) is computed only over xDRs whose currency is the vendor cost's currency; the others
are counted apart. An xDR row is an attempt as its latest revision says (a correction by
re-rating replaces it): money is summed over those rows, and messages are the rows that bill
at least one unit (a reversal bills none). A rejection counts while it stands: one that a
correction has since charged (``superseded_by``) is that charge's xDR. Hours are UTC.

A rejected attempt names its account, not its customer: with ``customer``, the
rejections counted are those of the customer's accounts (the accounts of the config in
force, and any account the customer's xDRs name).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from imbill.projections.models import ConfigObject, Money, RejectedAttempt, Xdr

__all__ = ["HourTraffic", "CustomerRevenue", "NetSplit", "DestinationTraffic", "RejectionCount",
           "VendorMargin", "VendorWithoutMargin", "ReportData", "report_data"]

TOP_DESTINATIONS = 10
_SCALE = Decimal("0.000001")
_XDR = Xdr.__table__
_REJECTED = RejectedAttempt.__table__
_CONFIG = ConfigObject.__table__


@dataclass(frozen=True, slots=True)
class HourTraffic:
    """One UTC hour: messages charged (xDRs billing at least one unit) and attempts rejected
    (rejections that stand)."""

    hour: datetime
    charged: int
    rejected: int


@dataclass(frozen=True, slots=True)
class CustomerRevenue:
    customer: str
    currency: str
    messages: int
    amount: Decimal


@dataclass(frozen=True, slots=True)
class NetSplit:
    on_net: bool
    currency: str
    messages: int
    amount: Decimal


@dataclass(frozen=True, slots=True)
class DestinationTraffic:
    destination: str
    on_net: bool
    messages: int


@dataclass(frozen=True, slots=True)
class RejectionCount:
    reason_code: str
    attempts: int


@dataclass(frozen=True, slots=True)
class VendorMargin:
    """A vendor's revenue, cost and margin in one currency, over the xDRs whose amount and
    vendor cost are both in that currency."""

    vendor: str
    currency: str
    messages: int
    revenue: Decimal
    cost: Decimal

    @property
    def margin(self) -> Decimal:
        return self.revenue - self.cost


@dataclass(frozen=True, slots=True)
class VendorWithoutMargin:
    """A vendor's xDRs whose vendor cost is in another currency than the amount: no margin."""

    vendor: str
    messages: int


@dataclass(frozen=True, slots=True)
class ReportData:
    environment: str
    since: datetime
    until: datetime
    customer: str | None
    traffic: tuple[HourTraffic, ...]
    revenue: tuple[CustomerRevenue, ...]
    net_split: tuple[NetSplit, ...]
    destinations: tuple[DestinationTraffic, ...]
    rejections: tuple[RejectionCount, ...]
    margins: tuple[VendorMargin, ...]
    without_margin: tuple[VendorWithoutMargin, ...]

    @property
    def messages(self) -> int:
        return sum(hour.charged for hour in self.traffic)

    @property
    def rejected(self) -> int:
        return sum(hour.rejected for hour in self.traffic)

    @property
    def empty(self) -> bool:
        return not (self.traffic or self.revenue)


class _MoneySum:
    """SQLite aggregate: the exact sum of decimal texts, as decimal text."""

    def __init__(self) -> None:
        self.total = Decimal(0)

    def step(self, value: Any) -> None:
        if value is not None:
            self.total += Decimal(str(value))

    def finalize(self) -> str:
        return format(self.total.quantize(_SCALE), "f")


def _money_sum(dialect: str) -> Callable[[sa.ColumnElement], sa.ColumnElement]:
    if dialect == "sqlite":
        return lambda column: sa.func.imbill_money_sum(column, type_=Money)
    return lambda column: sa.func.sum(column, type_=Money)


def _hour_of(dialect: str, column: sa.ColumnElement) -> sa.ColumnElement:
    """The UTC hour of a timestamp as ISO text, ``2024-05-01T12:00:00``."""
    if dialect == "sqlite":  # naive UTC text
        return sa.func.strftime(sa.literal_column("'%Y-%m-%dT%H:00:00'"), column)
    return sa.func.to_char(sa.func.timezone(sa.literal_column("'UTC'"), column),
                           sa.literal_column("'YYYY-MM-DD\"T\"HH24:00:00'"))


def _parse_hour(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


class _Reader:
    """The report's queries over one connection, for one environment, period and customer."""

    def __init__(self, conn: Connection, environment: str, since: datetime, until: datetime,
                 customer: str | None) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name
        self.money_sum = _money_sum(self.dialect)
        self.environment, self.since, self.until, self.customer = environment, since, until, customer
        if self.dialect == "sqlite":
            conn.connection.driver_connection.create_aggregate("imbill_money_sum", 1, _MoneySum)

    def xdrs(self, *where: sa.ColumnElement[bool]) -> list[sa.ColumnElement[bool]]:
        c = _XDR.c
        found = [c.environment == self.environment, c.attempted_at >= self.since, c.attempted_at < self.until]
        if self.customer is not None:
            found.append(c.customer == self.customer)
        return found + list(where)

    def rejections(self) -> list[sa.ColumnElement[bool]]:
        c = _REJECTED.c
        found = [c.environment == self.environment, c.attempted_at >= self.since, c.attempted_at < self.until,
                 c.superseded_by.is_(None)]
        if self.customer is not None:
            found.append(c.account.in_(self.customer_accounts()))
        return found

    def customer_accounts(self) -> list[str]:
        configured = self.conn.execute(sa.select(_CONFIG.c.key, _CONFIG.c.body).where(
            _CONFIG.c.environment == self.environment, _CONFIG.c.kind == "account")).all()
        billed = self.conn.execute(sa.select(_XDR.c.account).distinct().where(
            _XDR.c.environment == self.environment, _XDR.c.customer == self.customer)).scalars()
        return sorted({key for key, body in configured if json.loads(body).get("customer") == self.customer}
                      | set(billed))

    def traffic(self) -> tuple[HourTraffic, ...]:
        charged = self._per_hour(_XDR, self.xdrs(_charged()))
        rejected = self._per_hour(_REJECTED, self.rejections())
        return tuple(HourTraffic(_parse_hour(hour), charged.get(hour, 0), rejected.get(hour, 0))
                     for hour in sorted(charged.keys() | rejected.keys()))

    def _per_hour(self, table: sa.Table, where: list[sa.ColumnElement[bool]]) -> dict[str, int]:
        hour = _hour_of(self.dialect, table.c.attempted_at).label("hour")
        query = sa.select(hour, sa.func.count()).where(*where).group_by(hour)
        return dict(self.conn.execute(query).tuples().all())

    def revenue(self) -> tuple[CustomerRevenue, ...]:
        c = _XDR.c
        query = (sa.select(c.customer, c.currency, self._messages(), self.money_sum(c.amount))
                 .where(*self.xdrs()).group_by(c.customer, c.currency).order_by(c.customer, c.currency))
        return tuple(CustomerRevenue(*row) for row in self.conn.execute(query).tuples())

    def net_split(self) -> tuple[NetSplit, ...]:
        c = _XDR.c
        query = (sa.select(c.on_net, c.currency, self._messages(), self.money_sum(c.amount))
                 .where(*self.xdrs()).group_by(c.on_net, c.currency).order_by(c.on_net.desc(), c.currency))
        return tuple(NetSplit(bool(on_net), *rest) for on_net, *rest in self.conn.execute(query).tuples())

    def destinations(self, top: int) -> tuple[DestinationTraffic, ...]:
        c = _XDR.c
        messages = sa.func.count().label("messages")
        query = (sa.select(c.destination, c.on_net, messages).where(*self.xdrs(_charged()))
                 .group_by(c.destination, c.on_net).order_by(messages.desc(), c.destination).limit(top))
        return tuple(DestinationTraffic(destination, bool(on_net), count)
                     for destination, on_net, count in self.conn.execute(query).tuples())

    def rejection_counts(self) -> tuple[RejectionCount, ...]:
        c = _REJECTED.c
        attempts = sa.func.count().label("attempts")
        query = (sa.select(c.reason_code, attempts).where(*self.rejections())
                 .group_by(c.reason_code).order_by(attempts.desc(), c.reason_code))
        return tuple(RejectionCount(*row) for row in self.conn.execute(query).tuples())

    def margins(self) -> tuple[VendorMargin, ...]:
        c = _XDR.c
        query = (sa.select(c.vendor, c.currency, self._messages(), self.money_sum(c.amount),
                           self.money_sum(c.vendor_cost))
                 .where(*self.xdrs(c.vendor.is_not(None), self._same_currency()))
                 .group_by(c.vendor, c.currency).order_by(c.vendor, c.currency))
        return tuple(VendorMargin(*row) for row in self.conn.execute(query).tuples())

    def without_margin(self) -> tuple[VendorWithoutMargin, ...]:
        c = _XDR.c
        query = (sa.select(c.vendor, sa.func.count())
                 .where(*self.xdrs(c.vendor.is_not(None), sa.not_(self._same_currency())))
                 .group_by(c.vendor).order_by(c.vendor))
        return tuple(VendorWithoutMargin(*row) for row in self.conn.execute(query).tuples())

    @staticmethod
    def _same_currency() -> sa.ColumnElement[bool]:
        return sa.and_(_XDR.c.vendor_currency.is_not(None), _XDR.c.currency == _XDR.c.vendor_currency)

    def _messages(self) -> sa.ColumnElement[int]:
        """Messages: the xDRs (attempts) charged, whatever their revision."""
        return sa.func.count(sa.case((_charged(), 1)))


def _charged() -> sa.ColumnElement[bool]:
    """An xDR that charges a message: its latest revision bills at least one unit (a
    reversal, re-rating's correction to nothing, bills none)."""
    return _XDR.c.billing_units > 0


def report_data(engine: Engine, *, environment: str, since: datetime, until: datetime,
                customer: str | None = None, top: int = TOP_DESTINATIONS) -> ReportData:
    """The report's values for ``environment`` over ``[since, until)`` (tz-aware), of one
    ``customer`` or all; read in one transaction so the parts agree."""
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be timezone-aware")
    with engine.connect() as conn:
        _snapshot(conn)
        read = _Reader(conn, environment, since, until, customer)
        data = ReportData(environment, since, until, customer, read.traffic(), read.revenue(), read.net_split(),
                          read.destinations(top), read.rejection_counts(), read.margins(), read.without_margin())
        conn.rollback()
        return data


def _snapshot(conn: Connection) -> None:
    """One read snapshot for every query of the report, so its parts agree while a
    projector goes on writing: REPEATABLE READ on PostgreSQL, an explicit read transaction
    on SQLite (whose driver would otherwise run each SELECT on its own)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN")
    else:
        conn.execution_options(isolation_level="REPEATABLE READ")
