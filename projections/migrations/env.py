"""Alembic environment of the projection tables (run by ``imbill.projections.models.migrate``).

Online only needs ``sqlalchemy.url`` (or a connection in ``config.attributes["connection"]``).
On PostgreSQL the upgrade holds a transaction-scoped advisory lock, so projectors starting
together against one database migrate it once, one after the other.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from imbill.projections.models import metadata

MIGRATION_LOCK = 0x1B_B111  # pg_advisory_xact_lock key: "imbill" migrations

config = context.config


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=metadata,
                      literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _upgrade(connection: sa.Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _upgrade(connection)
        return
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url"), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            _upgrade(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
