"""``imbill project --rebuild``: every projection built again from offset zero, swapped in at once.

The projectors fold the topics into fresh tables first, beside the live ones: a new SQLite
file (``<database>.rebuild``) or a PostgreSQL schema of its own (``imbill_rebuild``). Then
one transaction on the live database replaces the content of every live table with the
rebuilt one (offsets included). Readers keep seeing the old rows until that transaction
commits and the whole new content after it (SQLite in WAL mode and PostgreSQL's MVCC both
give a reader a snapshot), so nobody ever sees a half-built table. The fresh file or schema
is dropped afterwards. The engine's own projector must not run meanwhile (stop ``imbill
run`` first): it would go on writing the old positions.

The fresh file or schema is made by the same alembic migrations as the live database (so it
has every column); the analyst views are not swapped: the live ones read the live tables,
which hold the rebuilt rows once the swap commits.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import sqlalchemy as sa
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from imbill.domain.errors import BrokerError
from imbill.projections.models import connect, metadata, migrate
from imbill.projections.projector import ConfigProjector, RegistrationProjector, XdrProjector
from imbill.schemas.topics import Topics

__all__ = ["rebuild", "REBUILD_SCHEMA", "Progress"]

REBUILD_SCHEMA = "imbill_rebuild"
ATTACHED = "rebuilt"
Progress = Callable[[int, int], None]
"""Told (records applied so far, records on the topics)."""


def rebuild(database_url: str, bootstrap_servers: str, topics: Topics, progress: Progress) -> dict[str, int]:
    """Rebuild every projection of ``database_url`` from the topics; returns rows per table."""
    migrate(database_url)
    live = connect(database_url)
    try:
        if live.dialect.name == "sqlite":
            return _rebuild_sqlite(live, bootstrap_servers, topics, progress)
        return _rebuild_in_schema(live, database_url, bootstrap_servers, topics, progress)
    finally:
        live.dispose()


def _rebuild_sqlite(live: sa.Engine, bootstrap_servers: str, topics: Topics, progress: Progress) -> dict[str, int]:
    path = Path(live.url.database).resolve()
    fresh = path.with_name(path.name + ".rebuild")
    for leftover in (fresh, fresh.with_name(fresh.name + "-wal"), fresh.with_name(fresh.name + "-shm")):
        leftover.unlink(missing_ok=True)
    _project_everything(f"sqlite:///{fresh}", None, bootstrap_servers, topics, progress)
    with live.connect() as conn:
        conn.exec_driver_sql(f"ATTACH DATABASE '{fresh}' AS {ATTACHED}")
        conn.commit()  # (ATTACH is outside any transaction; the swap is one of its own)
        try:
            counts = _swap_in(conn, ATTACHED)
        finally:
            conn.exec_driver_sql(f"DETACH DATABASE {ATTACHED}")
            conn.commit()
    fresh.unlink()
    return counts


def _rebuild_in_schema(live: sa.Engine, database_url: str, bootstrap_servers: str, topics: Topics,
                       progress: Progress) -> dict[str, int]:
    with live.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {REBUILD_SCHEMA} CASCADE")
        conn.exec_driver_sql(f"CREATE SCHEMA {REBUILD_SCHEMA}")
    try:
        _project_everything(database_url, REBUILD_SCHEMA, bootstrap_servers, topics, progress)
        with live.connect() as conn:
            return _swap_in(conn, REBUILD_SCHEMA)
    finally:
        with live.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {REBUILD_SCHEMA} CASCADE")


def _project_everything(database_url: str, schema: str | None, bootstrap_servers: str, topics: Topics,
                        progress: Progress) -> None:
    total = _records_on(bootstrap_servers, topics)
    done = 0
    for projector_class in (XdrProjector, ConfigProjector, RegistrationProjector):
        with projector_class(database_url, bootstrap_servers, topics, schema=schema, max_poll_records=5000) as running:
            before = done
            applied = running.run_until_idle(timeout=3600, progress=lambda n: progress(before + n, max(total, before + n)))
            done = before + applied


def _records_on(bootstrap_servers: str, topics: Topics) -> int:
    """About how many records the projections read (ListOffsets: may be short by a batch
    on the local broker; the bar only shows it)."""
    names = [topics.charges, topics.rejections, topics.balances, topics.service_status, topics.config,
             topics.config_rejections, topics.registrations]
    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, client_id="imbill-rebuild")
    except KafkaError as exc:
        raise BrokerError(f"cannot reach {bootstrap_servers}: {exc}") from exc
    try:
        tps = [TopicPartition(t, p) for t in names for p in (consumer.partitions_for_topic(t) or ())]
        return sum(consumer.end_offsets(tps).values()) if tps else 0
    finally:
        consumer.close()


def _swap_in(conn: sa.Connection, source: str) -> dict[str, int]:
    """One transaction: each live table's rows replaced by those of ``source``'s table."""
    counts = {}
    started = time.monotonic()
    with conn.begin():
        for table in metadata.sorted_tables:
            columns = ", ".join(f'"{c.name}"' for c in table.columns)
            conn.exec_driver_sql(f'DELETE FROM "{table.name}"')
            conn.exec_driver_sql(f'INSERT INTO "{table.name}" ({columns}) SELECT {columns} FROM {source}."{table.name}"')
            counts[table.name] = conn.exec_driver_sql(f'SELECT count(*) FROM "{table.name}"').scalar_one()
    counts["_swap_seconds"] = round(time.monotonic() - started, 3)
    return counts
