"""The SQL projections: xDRs, rejected attempts, balance and service-status events, config.

Every row says where on the topics it came from (``source_topic``, ``source_partition``,
``source_offset``), and ``projection_offset`` holds, per projector and partition, the
next offset to apply: it is written in the same transaction as the rows, which is what
makes a projection exactly once (see :mod:`imbill.projections.projector`).

Money is ``NUMERIC(24, 6)`` on PostgreSQL and the exact decimal text (``"0.050000"``) on
SQLite, whose NUMERIC affinity (and SQLAlchemy's driver path) would round through a
float; either way Python sees a :class:`~decimal.Decimal`. Timestamps must be tz-aware,
are stored as UTC (``timestamptz`` on PostgreSQL, naive UTC text on SQLite) and come back
tz-aware in UTC.

Every schema is made by one way, the alembic migrations in ``migrations/``: :func:`migrate`
brings a database (or, on PostgreSQL, one schema of it: the rebuild's) to their head, with
the tables of these models and the analyst views (:data:`VIEWS`, migration 0004), and a
projector calls it at start.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "metadata", "Money", "UtcDateTime", "Xdr", "XdrRevision", "RejectedAttempt", "BalanceEvent",
           "ServiceStatusEvent", "Registration", "RejectedPayment", "RejectedConfigEvent", "ConfigEvent", "ConfigObject",
           "ProjectionOffset", "migrate", "alembic_config", "connect", "to_json", "MIGRATIONS", "VIEWS"]

MIGRATIONS = "imbill.projections:migrations"
VIEWS = ("daily_customer_totals", "daily_net_traffic", "vendor_destination_margin", "daily_rejections",
         "account_balance_history")
"""The SQL views for analysts (README, "SQL views for analysts"), made by the migrations."""
_SCALE = Decimal("0.000001")


class _DecimalText(sa.types.TypeDecorator):
    """A decimal kept exact as its fixed-point text (SQLite's stand-in for NUMERIC(24, 6))."""

    impl = sa.String(32)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else format(Decimal(value).quantize(_SCALE), "f")

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(str(value)).quantize(_SCALE)


Money = sa.Numeric(24, 6, asdecimal=True).with_variant(_DecimalText(), "sqlite")
"""Amounts, prices and balances: exact decimals with 6 places, never floats."""


class UtcDateTime(sa.types.TypeDecorator):
    """A tz-aware instant, stored as UTC, read back tz-aware in UTC; naive values are refused."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: imbill timestamps are tz-aware")
        utc = value.astimezone(timezone.utc)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {Decimal: Money, datetime: UtcDateTime, int: sa.Integer, str: sa.String}


metadata = Base.metadata


class _Source:
    """Where on the topics a row came from."""

    source_topic: Mapped[str]
    source_partition: Mapped[int]
    source_offset: Mapped[int] = mapped_column(sa.BigInteger)


class Xdr(_Source, Base):
    """One row per attempt charged: the xDR of a rated and billed message, as its latest
    revision says (a correction replaces the row of its attempt; every revision is a row of
    :class:`XdrRevision`). ``charge_id``, ``kind``, ``revision`` and ``rerate_run`` are those
    of the latest revision; ``attempt_id`` is unique.

    CLI and CLD as sent are ``from_user`` and ``to_user``; as translated, ``cli_translated``
    and ``destination``; ``rate_code`` is the destination (prefix) rated and
    ``destination_description`` its description; ``attempted_at`` is the connect time (UTC).
    ``margin`` = amount - vendor_cost when both are in one currency, else NULL: stored (not a
    view expression) so it is computed once, in exact decimals, the same on both databases,
    and every reader of the table (``imbill xdr``, CSV, a BI tool) sees it."""

    __tablename__ = "xdr"
    __table_args__ = (sa.Index("ix_xdr_account_attempted_at", "account", "attempted_at"),
                      sa.Index("ix_xdr_environment_attempted_at", "environment", "attempted_at"),
                      sa.Index("ix_xdr_customer_attempted_at", "customer", "attempted_at"),
                      sa.Index("ix_xdr_rate_code_attempted_at", "rate_code", "attempted_at"),
                      sa.Index("ix_xdr_destination", "destination"),
                      sa.Index("ux_xdr_attempt_id", "attempt_id", unique=True))

    charge_id: Mapped[str] = mapped_column(primary_key=True)
    attempt_id: Mapped[str]
    kind: Mapped[str]
    corrects: Mapped[str | None]
    environment: Mapped[str]
    account: Mapped[str]
    customer: Mapped[str]
    direction: Mapped[str]
    attempted_at: Mapped[datetime]
    rated_at: Mapped[datetime]
    from_user: Mapped[str]
    to_user: Mapped[str]
    to_domain: Mapped[str]
    destination: Mapped[str]
    on_net: Mapped[bool]
    body_chars: Mapped[int]
    billing_units: Mapped[int]
    unit_price: Mapped[Decimal]
    amount: Mapped[Decimal]
    currency: Mapped[str]
    tariff: Mapped[str]
    rate_code: Mapped[str]
    rate_effective_from: Mapped[datetime]
    service_policy: Mapped[str | None]
    policies: Mapped[str] = mapped_column(sa.Text, doc="Comma-separated policy names.")
    transport_protocol: Mapped[str]
    vendor: Mapped[str | None]
    connection: Mapped[str | None]
    vendor_tariff: Mapped[str | None]
    vendor_cost: Mapped[Decimal]
    vendor_currency: Mapped[str | None]
    revision: Mapped[int] = mapped_column(server_default="1")
    service: Mapped[str] = mapped_column(server_default="messaging")
    node: Mapped[str | None]
    cli_translated: Mapped[str | None]
    destination_description: Mapped[str | None]
    user_agent: Mapped[str | None]
    margin: Mapped[Decimal | None]
    rerate_run: Mapped[str | None]
    """The re-rating run that made the latest revision (None: revision 1)."""

    delivery: Mapped[str | None]
    """delivered or failed when the SIP edge delivered the message itself (migration 0007)."""
    delivery_code: Mapped[int | None]
    """The final SIP status of that delivery."""


class XdrRevision(_Source, Base):
    """One row per revision of an attempt's outcome: the charge (revision 1) and every
    correction after it (2, 3, ...), keyed by charge id, so a re-sent revision is one row.

    ``difference`` is what the revision changed: its amount minus the superseded outcome's
    (a rejection's is 0); on revision 1, whose record has none, its amount. So the
    differences of an attempt add up to the amount of its latest revision, and summing
    ``difference`` over any set of attempts gives what summing the latest ``xdr.amount``
    gives. ``corrects`` is the id of the outcome superseded (the previous revision's charge
    id, or the rejection's id when a rejection became a charge)."""

    __tablename__ = "xdr_revision"
    __table_args__ = (sa.Index("ix_xdr_revision_attempt_id_revision", "attempt_id", "revision"),
                      sa.Index("ix_xdr_revision_environment_attempted_at", "environment", "attempted_at"),
                      sa.Index("ix_xdr_revision_account_attempted_at", "account", "attempted_at"))

    charge_id: Mapped[str] = mapped_column(primary_key=True)
    attempt_id: Mapped[str]
    revision: Mapped[int]
    kind: Mapped[str]
    corrects: Mapped[str | None]
    environment: Mapped[str]
    account: Mapped[str]
    customer: Mapped[str]
    direction: Mapped[str]
    attempted_at: Mapped[datetime]
    rated_at: Mapped[datetime]
    destination: Mapped[str]
    tariff: Mapped[str]
    rate_code: Mapped[str]
    billing_units: Mapped[int]
    unit_price: Mapped[Decimal]
    amount: Mapped[Decimal]
    difference: Mapped[Decimal | None]
    currency: Mapped[str]
    vendor_cost: Mapped[Decimal]
    vendor_currency: Mapped[str | None]
    rerate_run: Mapped[str | None]


class RejectedAttempt(_Source, Base):
    """One row per Rejection: an attempt that was not charged, and why. ``superseded_by``:
    the charge id of the correction that later charged the attempt after all (re-rating
    found a rate), None while the rejection stands."""

    __tablename__ = "rejected_attempt"
    __table_args__ = (sa.Index("ix_rejected_attempt_account_attempted_at", "account", "attempted_at"),)

    rejection_id: Mapped[str] = mapped_column(primary_key=True)
    attempt_id: Mapped[str]
    environment: Mapped[str]
    account: Mapped[str]
    attempted_at: Mapped[datetime]
    rejected_at: Mapped[datetime]
    reason_code: Mapped[str]
    message: Mapped[str] = mapped_column(sa.Text)
    to_user: Mapped[str]
    to_domain: Mapped[str]
    superseded_by: Mapped[str | None]


class RejectedPayment(_Source, Base):
    """One row per PaymentRejected: a payment not applied, and why (one per payment and reason:
    a rejection re-emitted after a crash is the same row)."""

    __tablename__ = "rejected_payment"
    __table_args__ = (sa.Index("ix_rejected_payment_account_rejected_at", "account", "rejected_at"),)

    payment_id: Mapped[str] = mapped_column(primary_key=True)
    reason_code: Mapped[str] = mapped_column(primary_key=True)
    environment: Mapped[str]
    account: Mapped[str]
    amount: Mapped[Decimal]
    currency: Mapped[str]
    received_at: Mapped[datetime]
    rejected_at: Mapped[datetime]
    message: Mapped[str] = mapped_column(sa.Text)


class RejectedConfigEvent(_Source, Base):
    """One row per ConfigEventRejected: a config record every reader skips, and why."""

    __tablename__ = "rejected_config_event"

    rejection_id: Mapped[str] = mapped_column(primary_key=True)
    config_topic: Mapped[str]
    config_partition: Mapped[int]
    config_offset: Mapped[int] = mapped_column(sa.BigInteger)
    event_id: Mapped[str | None]
    event: Mapped[str | None]
    environment: Mapped[str | None]
    kind: Mapped[str | None]
    key: Mapped[str | None]
    reason_code: Mapped[str]
    message: Mapped[str] = mapped_column(sa.Text)
    rejected_at: Mapped[datetime]


class BalanceEvent(_Source, Base):
    """One row per BalanceChanged."""

    __tablename__ = "balance_event"
    __table_args__ = (sa.Index("ix_balance_event_account_occurred_at", "account", "occurred_at"),)

    event_id: Mapped[str] = mapped_column(primary_key=True)
    environment: Mapped[str]
    account: Mapped[str]
    cause: Mapped[str]
    cause_id: Mapped[str]
    delta: Mapped[Decimal]
    balance: Mapped[Decimal]
    currency: Mapped[str]
    occurred_at: Mapped[datetime]


class ServiceStatusEvent(_Source, Base):
    """One row per ServiceStatusChanged (messaging suspended or resumed)."""

    __tablename__ = "service_status_event"
    __table_args__ = (sa.Index("ix_service_status_event_account_occurred_at", "account", "occurred_at"),)

    event_id: Mapped[str] = mapped_column(primary_key=True)
    environment: Mapped[str]
    account: Mapped[str]
    service: Mapped[str]
    status: Mapped[str]
    reason: Mapped[str]
    cause_id: Mapped[str]
    occurred_at: Mapped[datetime]
    push_events: Mapped[bool]


class Registration(_Source, Base):
    """The live bindings of REGISTER: the fold of the registrations topic, one row per
    account and contact (bound or refreshed: the row; removed or expired: no row). A row
    whose ``expires_at`` is past has lapsed (its expired event may not be written yet)."""

    __tablename__ = "registration"
    __table_args__ = (sa.Index("ix_registration_expires_at", "expires_at"),)

    environment: Mapped[str] = mapped_column(primary_key=True)
    account: Mapped[str] = mapped_column(primary_key=True)
    contact_key: Mapped[str] = mapped_column(primary_key=True)
    contact: Mapped[str]
    expires_at: Mapped[datetime]
    user_agent: Mapped[str | None]
    source: Mapped[str]
    transport: Mapped[str]
    call_id: Mapped[str]
    cseq: Mapped[int] = mapped_column(sa.BigInteger)
    state: Mapped[str]
    updated_at: Mapped[datetime]
    event_id: Mapped[str]


class ConfigEvent(Base):
    """Every config event, keyed by its place on the config topic (the fold's order)."""

    __tablename__ = "config_event"
    __table_args__ = (sa.Index("ix_config_event_object", "environment", "kind", "key"),)

    source_topic: Mapped[str] = mapped_column(primary_key=True)
    source_partition: Mapped[int] = mapped_column(primary_key=True)
    source_offset: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    event_id: Mapped[str] = mapped_column(index=True)
    environment: Mapped[str]
    name: Mapped[str]
    kind: Mapped[str]
    key: Mapped[str]
    occurred_at: Mapped[datetime]
    record: Mapped[str] = mapped_column(sa.Text, doc="The event as JSON; decimals as strings.")


class ConfigObject(Base):
    """The config in force: the fold of config_event, one row per object."""

    __tablename__ = "config_object"

    environment: Mapped[str] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(sa.Text, doc="The object as JSON; decimals as strings.")
    updated_at: Mapped[datetime]
    event_id: Mapped[str]


class ProjectionOffset(Base):
    """Per projector and partition, the next offset to apply (committed with the rows)."""

    __tablename__ = "projection_offset"

    projector: Mapped[str] = mapped_column(primary_key=True)
    topic: Mapped[str] = mapped_column(primary_key=True)
    partition: Mapped[int] = mapped_column(primary_key=True)
    next_offset: Mapped[int] = mapped_column(sa.BigInteger)
    last_record: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    """Fingerprint of the record at next_offset - 1 (its key, value and timestamp): the
    projector checks the log still holds it there, else the log was reset."""


def _json_default(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(value: Any) -> str:
    """The JSON of the text columns: sorted keys, decimals as strings, timestamps ISO in UTC."""
    return json.dumps(value, default=_json_default, sort_keys=True, ensure_ascii=False)


def connect(database_url: str, schema: str | None = None, **engine_options: Any) -> Engine:
    """An engine for ``database_url``; a SQLite file is put in WAL mode so that readers
    (analysts, the CLI) never block a projector's commit, nor it them. ``schema``
    (PostgreSQL): every connection works in that schema (its search_path)."""
    if schema is not None:
        engine_options["connect_args"] = {"options": f"-c search_path={schema}"}
    engine = sa.create_engine(database_url, **engine_options)
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        sa.event.listen(engine, "connect", _sqlite_wal)
    return engine


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def alembic_config(database_url: str) -> Any:
    """An alembic Config for ``database_url`` whose scripts are the package's migrations."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migrate(database_url: str, revision: str = "head", schema: str | None = None) -> None:
    """``alembic upgrade head`` on ``database_url`` (safe to call at every start); with
    ``schema`` (PostgreSQL), in that existing schema: its tables, views and alembic_version."""
    from alembic import command

    config = alembic_config(database_url)
    if schema is None:
        command.upgrade(config, revision)
        return
    engine = connect(database_url, schema, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            connection.commit()
    finally:
        engine.dispose()
