"""Initial projection tables: xDRs, rejected attempts, balance and service-status events,
config events and objects, projection offsets.

Revision ID: 0001
Revises:
Create Date: 2024-06-01 00:00:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
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
        "xdr",
        sa.Column("charge_id", sa.String(), nullable=False),
        sa.Column("attempt_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("corrects", sa.String(), nullable=True),
        sa.Column("environment", sa.String(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("customer", sa.String(), nullable=False),
        sa.Column("direction", sa.String(), nullable=False),
        sa.Column("attempted_at", instant(), nullable=False),
        sa.Column("rated_at", instant(), nullable=False),
        sa.Column("from_user", sa.String(), nullable=False),
        sa.Column("to_user", sa.String(), nullable=False),
        sa.Column("to_domain", sa.String(), nullable=False),
        sa.Column("destination", sa.String(), nullable=False),
        sa.Column("on_net", sa.Boolean(), nullable=False),
        sa.Column("body_chars", sa.Integer(), nullable=False),
        sa.Column("billing_units", sa.Integer(), nullable=False),
        sa.Column("unit_price", money(), nullable=False),
        sa.Column("amount", money(), nullable=False),
        sa.Column("currency", sa.String(), nullable=False),
        sa.Column("tariff", sa.String(), nullable=False),
        sa.Column("rate_code", sa.String(), nullable=False),
        sa.Column("rate_effective_from", instant(), nullable=False),
        sa.Column("service_policy", sa.String(), nullable=True),
        sa.Column("policies", sa.Text(), nullable=False),
        sa.Column("transport_protocol", sa.String(), nullable=False),
        sa.Column("vendor", sa.String(), nullable=True),
        sa.Column("connection", sa.String(), nullable=True),
        sa.Column("vendor_tariff", sa.String(), nullable=True),
        sa.Column("vendor_cost", money(), nullable=False),
        sa.Column("vendor_currency", sa.String(), nullable=True),
        *source(),
        sa.PrimaryKeyConstraint("charge_id"),
    )
    op.create_index("ix_xdr_account_attempted_at", "xdr", ["account", "attempted_at"])
    op.create_index("ix_xdr_environment_attempted_at", "xdr", ["environment", "attempted_at"])

    op.create_table(
        "rejected_attempt",
        sa.Column("rejection_id", sa.String(), nullable=False),
        sa.Column("attempt_id", sa.String(), nullable=False),
        sa.Column("environment", sa.String(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("attempted_at", instant(), nullable=False),
        sa.Column("rejected_at", instant(), nullable=False),
        sa.Column("reason_code", sa.String(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("to_user", sa.String(), nullable=False),
        sa.Column("to_domain", sa.String(), nullable=False),
        *source(),
        sa.PrimaryKeyConstraint("rejection_id"),
    )
    op.create_index("ix_rejected_attempt_account_attempted_at", "rejected_attempt",
                    ["account", "attempted_at"])

    op.create_table(
        "balance_event",
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("environment", sa.String(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("cause", sa.String(), nullable=False),
        sa.Column("cause_id", sa.String(), nullable=False),
        sa.Column("delta", money(), nullable=False),
        sa.Column("balance", money(), nullable=False),
        sa.Column("currency", sa.String(), nullable=False),
        sa.Column("occurred_at", instant(), nullable=False),
        *source(),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("ix_balance_event_account_occurred_at", "balance_event", ["account", "occurred_at"])

    op.create_table(
        "service_status_event",
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("environment", sa.String(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("service", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("cause_id", sa.String(), nullable=False),
        sa.Column("occurred_at", instant(), nullable=False),
        sa.Column("push_events", sa.Boolean(), nullable=False),
        *source(),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("ix_service_status_event_account_occurred_at", "service_status_event",
                    ["account", "occurred_at"])

    op.create_table(
        "config_event",
        *source(),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("environment", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("occurred_at", instant(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("source_topic", "source_partition", "source_offset"),
    )
    op.create_index("ix_config_event_event_id", "config_event", ["event_id"])
    op.create_index("ix_config_event_object", "config_event", ["environment", "kind", "key"])

    op.create_table(
        "config_object",
        sa.Column("environment", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("updated_at", instant(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("environment", "kind", "key"),
    )

    op.create_table(
        "projection_offset",
        sa.Column("projector", sa.String(), nullable=False),
        sa.Column("topic", sa.String(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("projector", "topic", "partition"),
    )


def downgrade() -> None:
    op.drop_table("projection_offset")
    op.drop_table("config_object")
    op.drop_index("ix_config_event_object", table_name="config_event")
    op.drop_index("ix_config_event_event_id", table_name="config_event")
    op.drop_table("config_event")
    op.drop_index("ix_service_status_event_account_occurred_at", table_name="service_status_event")
    op.drop_table("service_status_event")
    op.drop_index("ix_balance_event_account_occurred_at", table_name="balance_event")
    op.drop_table("balance_event")
    op.drop_index("ix_rejected_attempt_account_attempted_at", table_name="rejected_attempt")
    op.drop_table("rejected_attempt")
    op.drop_index("ix_xdr_environment_attempted_at", table_name="xdr")
    op.drop_index("ix_xdr_account_attempted_at", table_name="xdr")
    op.drop_table("xdr")
