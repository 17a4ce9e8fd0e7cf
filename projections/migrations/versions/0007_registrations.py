"""Registrations and delivery: the ``registration`` table (the live bindings of REGISTER,
folded from the registrations topic) and the xDR's ``delivery`` and ``delivery_code``
(what became of an on-net message the SIP edge delivered itself; NULL for xDRs projected
before, and for messages the edge did not deliver).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 18:30:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: Union[str, Sequence[str], None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "registration",
        sa.Column("environment", sa.String(), primary_key=True),
        sa.Column("account", sa.String(), primary_key=True),
        sa.Column("contact_key", sa.String(), primary_key=True),
        sa.Column("contact", sa.String(), nullable=False),
        sa.Column("expires_at", _UTC, nullable=False),
        sa.Column("user_agent", sa.String(), nullable=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("transport", sa.String(), nullable=False),
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("cseq", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("source_topic", sa.String(), nullable=False),
        sa.Column("source_partition", sa.Integer(), nullable=False),
        sa.Column("source_offset", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_registration_expires_at", "registration", ["expires_at"])
    # plain ALTER TABLE ADD COLUMN on both databases: no view reads these columns
    op.execute("ALTER TABLE xdr ADD COLUMN delivery VARCHAR")
    op.execute("ALTER TABLE xdr ADD COLUMN delivery_code INTEGER")


def downgrade() -> None:
    op.execute("ALTER TABLE xdr DROP COLUMN delivery_code")  # SQLite 3.35+ and PostgreSQL
    op.execute("ALTER TABLE xdr DROP COLUMN delivery")
    op.drop_index("ix_registration_expires_at", table_name="registration")
    op.drop_table("registration")
