"""Re-rating's corrections: one xdr row per attempt (its latest revision), every revision in
xdr_revision, rejections superseded by a charge, and the analyst views that follow.

- ``xdr``: one row per attempt, as its latest revision says (a unique index on
  ``attempt_id``), plus ``rerate_run`` (the run that made that revision).
- ``xdr_revision``: every revision of an attempt's outcome (1 the charge, 2, 3, ... its
  corrections) with kind, corrects, amount, difference, units, price, rate code, vendor cost,
  rated_at and rerate_run, keyed by charge id.
- ``rejected_attempt.superseded_by``: the charge id of the correction that charged a
  rejected attempt after all (NULL while the rejection stands).
- The views count an attempt once (its latest revision) and a rejection only while it
  stands: ``messages`` is the attempts whose latest revision bills at least one unit (a
  reversal bills none); money sums are sums of the latest revisions.

This upgrade copies every xdr row into xdr_revision (revision 1's difference is its
amount; an older correction row's is unknown: NULL), then keeps in xdr only the highest
revision of each attempt. Before this revision no processor wrote corrections, so on a real
database every row is a revision 1 and nothing is removed.

Downgrade keeps in xdr the latest revision of each attempt; the earlier revisions are gone
with xdr_revision (``imbill project --rebuild`` brings everything back from the topics).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 18:00:00

"""
from typing import Callable, Sequence, Union

import sqlalchemy as sa
from alembic import context, op

from imbill.projections.dialects import money_sum, utc_day

revision: str = "0006"
down_revision: Union[str, Sequence[str], None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_MONEY = sa.Numeric(24, 6).with_variant(sa.String(32), "sqlite")
_TIME = sa.DateTime(timezone=True)
REVISION_COLUMNS = ("charge_id", "attempt_id", "revision", "kind", "corrects", "environment", "account",
                    "customer", "direction", "attempted_at", "rated_at", "destination", "tariff", "rate_code",
                    "billing_units", "unit_price", "amount", "difference", "currency", "vendor_cost",
                    "vendor_currency", "rerate_run", "source_topic", "source_partition", "source_offset")
REVISION_INDEXES = {
    "ix_xdr_revision_attempt_id_revision": ["attempt_id", "revision"],
    "ix_xdr_revision_environment_attempted_at": ["environment", "attempted_at"],
    "ix_xdr_revision_account_attempted_at": ["account", "attempted_at"],
}
MESSAGES = "sum(CASE WHEN billing_units > 0 THEN 1 ELSE 0 END)"
"""An attempt charged: its latest revision bills at least one unit (a reversal bills none)."""


def daily_customer_totals(d: str) -> str:
    day = utc_day(d, "attempted_at")
    return f"""
SELECT environment, customer, {day} AS day, currency,
       {MESSAGES} AS messages,
       sum(billing_units) AS billing_units,
       {money_sum(d, "amount")} AS amount
FROM xdr
GROUP BY environment, customer, {day}, currency"""


def daily_net_traffic(d: str) -> str:
    day = utc_day(d, "attempted_at")
    network = "CASE WHEN on_net THEN 'on-net' ELSE 'off-net' END"
    return f"""
SELECT environment, {day} AS day, direction, {network} AS network, currency,
       {MESSAGES} AS messages,
       sum(billing_units) AS billing_units,
       {money_sum(d, "amount")} AS revenue
FROM xdr
GROUP BY environment, {day}, direction, {network}, currency"""


def vendor_destination_margin(d: str) -> str:
    return f"""
SELECT environment, vendor, connection, rate_code,
       max(destination_description) AS destination_description, currency, vendor_currency,
       {MESSAGES} AS messages,
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
WHERE superseded_by IS NULL
GROUP BY environment, {day}, reason_code"""


VIEWS: dict[str, Callable[[str], str]] = {view.__name__: view for view in (
    daily_customer_totals, daily_net_traffic, vendor_destination_margin, daily_rejections)}
"""The views this revision defines again (account_balance_history stays as 0004 made it)."""


def _revision_table() -> None:
    op.create_table(
        "xdr_revision",
        sa.Column("charge_id", sa.String(), nullable=False),
        sa.Column("attempt_id", sa.String(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("corrects", sa.String(), nullable=True),
        sa.Column("environment", sa.String(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("customer", sa.String(), nullable=False),
        sa.Column("direction", sa.String(), nullable=False),
        sa.Column("attempted_at", _TIME, nullable=False),
        sa.Column("rated_at", _TIME, nullable=False),
        sa.Column("destination", sa.String(), nullable=False),
        sa.Column("tariff", sa.String(), nullable=False),
        sa.Column("rate_code", sa.String(), nullable=False),
        sa.Column("billing_units", sa.Integer(), nullable=False),
        sa.Column("unit_price", _MONEY, nullable=False),
        sa.Column("amount", _MONEY, nullable=False),
        sa.Column("difference", _MONEY, nullable=True),
        sa.Column("currency", sa.String(), nullable=False),
        sa.Column("vendor_cost", _MONEY, nullable=False),
        sa.Column("vendor_currency", sa.String(), nullable=True),
        sa.Column("rerate_run", sa.String(), nullable=True),
        sa.Column("source_topic", sa.String(), nullable=False),
        sa.Column("source_partition", sa.Integer(), nullable=False),
        sa.Column("source_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("charge_id"),
    )
    for name, columns in REVISION_INDEXES.items():
        op.create_index(name, "xdr_revision", columns)


def _copy_revisions() -> None:
    """Every xdr row as a revision; then only the latest revision of an attempt stays in xdr."""
    selected = ", ".join("CASE WHEN revision = 1 THEN amount ELSE NULL END" if c == "difference" else c
                         for c in REVISION_COLUMNS)
    op.execute(f"INSERT INTO xdr_revision ({', '.join(REVISION_COLUMNS)}) SELECT {selected} FROM xdr")
    op.execute("DELETE FROM xdr WHERE EXISTS (SELECT 1 FROM xdr later WHERE later.attempt_id = xdr.attempt_id "
               "AND (later.revision > xdr.revision OR (later.revision = xdr.revision "
               "AND later.charge_id > xdr.charge_id)))")


def _drop_views(names: Sequence[str]) -> None:
    for name in names:
        op.execute(f"DROP VIEW IF EXISTS {name}")


def _create_views(views: dict[str, Callable[[str], str]]) -> None:
    dialect = op.get_bind().dialect.name
    for name, view in views.items():
        op.execute(f"CREATE VIEW {name} AS {view(dialect)}")


def upgrade() -> None:
    _drop_views(list(VIEWS))
    op.add_column("xdr", sa.Column("rerate_run", sa.String(), nullable=True))
    op.add_column("rejected_attempt", sa.Column("superseded_by", sa.String(), nullable=True))
    _revision_table()
    _copy_revisions()
    op.create_index("ux_xdr_attempt_id", "xdr", ["attempt_id"], unique=True)
    superseding = ("FROM xdr_revision r WHERE r.corrects = rejected_attempt.rejection_id "
                   "AND r.attempt_id = rejected_attempt.attempt_id")
    op.execute(f"UPDATE rejected_attempt SET superseded_by = (SELECT min(r.charge_id) {superseding}) "
               f"WHERE EXISTS (SELECT 1 {superseding})")
    _create_views(VIEWS)


def downgrade() -> None:
    """Back to 0005: 0004's views again, read from 0004's own module."""
    before = context.script.get_revision("0004").module.VIEWS
    _drop_views(list(before))
    op.drop_index("ux_xdr_attempt_id", table_name="xdr")
    for name in REVISION_INDEXES:
        op.drop_index(name, table_name="xdr_revision")
    op.drop_table("xdr_revision")
    with op.batch_alter_table("rejected_attempt") as batch:
        batch.drop_column("superseded_by")
    with op.batch_alter_table("xdr") as batch:
        batch.drop_column("rerate_run")
    _create_views(before)
