"""Projection offsets remember the record they follow (reset detection).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 00:00:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("projection_offset") as batch:
        batch.add_column(sa.Column("last_record", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projection_offset") as batch:
        batch.drop_column("last_record")
