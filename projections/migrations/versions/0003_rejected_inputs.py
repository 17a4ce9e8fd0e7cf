"""Rejected inputs: payments not applied (PaymentRejected) and config records every reader
skips (ConfigEventRejected).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 15:00:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def money() -> sa.types.TypeEngine:
    """NUMERIC(24, 6); exact decimal text on SQLite (see models.Money)."""
    return sa.Numeric(24, 6).with_variant(sa.String(32), "sqlite")


def instant() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True)


def source() -> list[sa.Column]:
    return [sa.Column("source_topic", sa.String(), nullable=False),
            sa.Column("source_partition", sa.Integer(), nullable=False),
            sa.Column("source_offset", sa.BigInteger(), nullable=False)]


def upgrade() -> None:
    op.create_table(
        "rejected_payment",
        sa.Column("payment_id", sa.String(), nullable=False),
        sa.Column("reason_code", sa.String(), nullable=False),
        sa.Column("environment", sa.String(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("amount", money(), nullable=False),
        sa.Column("currency", sa.String(), nullable=False),
        sa.Column("received_at", instant(), nullable=False),
        sa.Column("rejected_at", instant(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        *source(),
        sa.PrimaryKeyConstraint("payment_id", "reason_code"),
    )
    op.create_index("ix_rejected_payment_account_rejected_at", "rejected_payment", ["account", "rejected_at"])
    op.create_table(
        "rejected_config_event",
        sa.Column("rejection_id", sa.String(), nullable=False),
        sa.Column("config_topic", sa.String(), nullable=False),
        sa.Column("config_partition", sa.Integer(), nullable=False),
        sa.Column("config_offset", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=True),
        sa.Column("event", sa.String(), nullable=True),
        sa.Column("environment", sa.String(), nullable=True),
        sa.Column("kind", sa.String(), nullable=True),
        sa.Column("key", sa.String(), nullable=True),
        sa.Column("reason_code", sa.String(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("rejected_at", instant(), nullable=False),
        *source(),
        sa.PrimaryKeyConstraint("rejection_id"),
    )


def downgrade() -> None:
    op.drop_table("rejected_config_event")
    op.drop_index("ix_rejected_payment_account_rejected_at", table_name="rejected_payment")
    op.drop_table("rejected_payment")
