"""The analyst's xDR: revision, service, node, CLI as translated, destination description,
user agent and margin columns; indexes by customer and by destination; the SQL views for
analysts.

Margin is a stored column, filled by the projector in exact decimals (amount - vendor_cost
when the vendor cost is in the charge's currency, NULL otherwise); this upgrade fills it for
the xDRs already projected, in SQL.

The views are defined here, once for both databases (:mod:`imbill.projections.dialects`
writes what differs); a later migration that changes one drops and creates it again. On
SQLite, a later migration that must rebuild (batch-alter) a table a view reads drops the
views first.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 15:00:00

"""
from typing import Callable, Sequence, Union

import sqlalchemy as sa
from alembic import op

from imbill.projections.dialects import money_difference, money_sum, utc_day

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def added_columns() -> list[sa.Column]:
    """The columns added to xdr (new objects at every call: a Column belongs to one table)."""
    return [
        sa.Column("revision", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("service", sa.String(), nullable=False, server_default="messaging"),
        sa.Column("node", sa.String(), nullable=True),
        sa.Column("cli_translated", sa.String(), nullable=True),
        sa.Column("destination_description", sa.String(), nullable=True),
        sa.Column("user_agent", sa.String(), nullable=True),
        sa.Column("margin", sa.Numeric(24, 6).with_variant(sa.String(32), "sqlite"), nullable=True),
    ]


INDEXES = {
    "ix_xdr_customer_attempted_at": ["customer", "attempted_at"],
    "ix_xdr_rate_code_attempted_at": ["rate_code", "attempted_at"],
    "ix_xdr_destination": ["destination"],
}


def daily_customer_totals(d: str) -> str:
    day = utc_day(d, "attempted_at")
    return f"""
SELECT environment, customer, {day} AS day, currency,
       sum(CASE WHEN kind = 'charge' THEN 1 ELSE 0 END) AS messages,
       sum(billing_units) AS billing_units,
       {money_sum(d, "amount")} AS amount
FROM xdr
GROUP BY environment, customer, {day}, currency"""


def daily_net_traffic(d: str) -> str:
    day = utc_day(d, "attempted_at")
    network = "CASE WHEN on_net THEN 'on-net' ELSE 'off-net' END"
    return f"""
SELECT environment, {day} AS day, direction, {network} AS network, currency,
       sum(CASE WHEN kind = 'charge' THEN 1 ELSE 0 END) AS messages,
       sum(billing_units) AS billing_units,
       {money_sum(d, "amount")} AS revenue
FROM xdr
GROUP BY environment, {day}, direction, {network}, currency"""


def vendor_destination_margin(d: str) -> str:
    return f"""
SELECT environment, vendor, connection, rate_code,
       max(destination_description) AS destination_description, currency, vendor_currency,
       sum(CASE WHEN kind = 'charge' THEN 1 ELSE 0 END) AS messages,
       sum(billing_units) AS billing_units,
       {money_sum(d, "amount")} AS revenue,
       {money_sum(d, "vendor_cost")} AS vendor_cost,
       {money_sum(d, "margin")} AS margin
FROM xdr
WHERE vendor IS NOT NULL
GROUP BY environment, vendor, connection, rate_code, currency, vendor_currency"""


def daily_rejections(d: str) -> str:
    day = utc_day(d, "attempted_at")
    return f"""
SELECT environment, {day} AS day, reason_code, count(*) AS rejections
FROM rejected_attempt
GROUP BY environment, {day}, reason_code"""


def account_balance_history(d: str) -> str:
    return f"""
SELECT environment, account,
       row_number() OVER (PARTITION BY environment, account
                          ORDER BY source_partition, source_offset) AS seq,
       occurred_at, {utc_day(d, "occurred_at")} AS day, cause, cause_id,
       {money_difference(d, "balance", "delta")} AS balance_before, delta, balance AS balance_after,
       currency, event_id
FROM balance_event"""


VIEWS: dict[str, Callable[[str], str]] = {view.__name__: view for view in (
    daily_customer_totals, daily_net_traffic, vendor_destination_margin, daily_rejections,
    account_balance_history)}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("xdr") as batch:
        for column in added_columns():
            batch.add_column(column)
    for name, columns in INDEXES.items():
        op.create_index(name, "xdr", columns)
    margin = money_difference(dialect, "amount", "vendor_cost")
    op.execute(f"UPDATE xdr SET margin = {margin} WHERE vendor_currency = currency")
    for name, view in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {view(dialect)}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for name in INDEXES:
        op.drop_index(name, table_name="xdr")
    with op.batch_alter_table("xdr") as batch:
        for column in reversed(added_columns()):
            batch.drop_column(column.name)
