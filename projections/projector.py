"""Projectors: fold topics into SQL, exactly once.

A projector owns its positions: it assigns every partition of its topics (no consumer
group), seeks each to the ``next_offset`` stored in ``projection_offset`` under its name,
and for every poll writes the rows and the new offsets in one SQL transaction. Killed at
any point, it restarts from the last committed offsets, so nothing is lost; a row whose
event id is already there is left as it is (``ON CONFLICT DO NOTHING``), so a charge
re-emitted by a restarted processor (same ``charge_id``) stays one row.

An xDR is one row per attempt, its latest revision: a first charge (revision 1) takes the
plain path below; a correction (re-rating's revision 2, 3, ...) takes a slower one, an upsert
on ``attempt_id`` that replaces the row only when its revision is higher (a revision late or
re-sent changes nothing). Every revision is also a row of ``xdr_revision`` (keyed by charge
id), and a rejection that a correction charges after all gets ``superseded_by``, whichever of
the two is projected first.

On PostgreSQL the rows of a poll go in with one ``COPY`` per table, inside a savepoint;
when one of them is already there (a re-delivered event: rare, after a processor's
recovery) the savepoint is rolled back and that table's rows go in again with ``INSERT ...
ON CONFLICT DO NOTHING``, which keeps the first; so they do when a text holds a NUL character
(a hostile User-Agent), which PostgreSQL text cannot hold: it becomes U+FFFD. SQLite gets the
INSERT directly (one executemany per table) and keeps texts as they are.

A record that cannot be decoded, whose event type the projector does not map, or that
the processor cannot have written (:mod:`.plausible`) is skipped: logged with its topic,
partition, offset and why, counted in ``skipped``, and its offset advanced with the rest.
The config projector folds the config topic as every reader does
(:meth:`ConfigState.folded`): a config record the processor skips is not projected either,
and its ConfigEventRejected (from the config-rejections topic) is a row of
``rejected_config_event``.

``XdrProjector`` (charges, rejections, balance and service-status events) and
``ConfigProjector`` (config events and the config in force) share one loop; each event
type has a small row mapper in a dispatch table. The xDR projector maps the decoded Avro
records (their fields are the columns); the config projector needs the domain events
(config records are checked as ``config apply`` checks them).

The broker's ListOffsets "latest" cannot be trusted (PLATFORM-NOTES), so "caught up"
means every partition's position has reached the high-watermark of its last fetch.
"""

from __future__ import annotations

import logging
import threading
import time
from itertools import groupby
from operator import itemgetter
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import psycopg
import sqlalchemy as sa
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, OffsetOutOfRangeError
from sqlalchemy.dialects import postgresql, sqlite

from imbill.bus import Envelope, partitions_of, read_to_end
from imbill.domain.errors import BrokerError, LogReset, SchemaError
from imbill.projections.models import (BalanceEvent, ConfigEvent, ConfigObject, ProjectionOffset, Registration,
                                       RejectedAttempt, RejectedConfigEvent, RejectedPayment, ServiceStatusEvent,
                                       Xdr, XdrRevision, connect, migrate, to_json)
from imbill.projections.plausible import implausible
from imbill.domain.config import KIND_BY_EVENT, ConfigState, object_key, to_record
from imbill.domain.events import ConfigObjectDefined, ConfigObjectRemoved
from imbill.domain.registrations import BOUND, REFRESHED, contact_key
from imbill.schemas.codec import decode, event_of
from imbill.projections.reset_check import check_log, fingerprint, reset_message
from imbill.schemas.topics import Topics

__all__ = ["XdrProjector", "ConfigProjector", "RegistrationProjector", "REGISTRATION_MAPPERS", "redacted",
           "XDR_MAPPERS", "CONFIG_MAPPERS", "insert_rows", "fold_config_objects", "charge_row", "revision_row",
           "write_charges", "write_corrections", "write_rejections"]

log = logging.getLogger(__name__)

Row = dict[str, Any]
Mapper = Callable[[Envelope], Row]
Writer = Callable[[sa.Connection, Iterator[Any]], int]
"""Writes the rows of a run of envelopes routed to it; returns how many were offered."""
Route = Callable[[Envelope], tuple[Writer, Any]]
"""An event's writer and what it writes (its row, or its rows)."""
Dispatch = Mapping[str, Route]

_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
VERIFY_SECONDS = 10.0
"""How often a running projector checks that its log is still the one it projected."""


def _insert(conn: sa.Connection, table: sa.Table) -> Any:
    try:
        return _INSERTS[conn.dialect.name](table)
    except KeyError:
        raise NotImplementedError(f"projections support SQLite and PostgreSQL, not {conn.dialect.name}") from None


def _source(envelope: Envelope) -> Row:
    return {"source_topic": envelope.topic, "source_partition": envelope.partition,
            "source_offset": envelope.offset}


_FIELDS: dict[tuple[sa.Table, str], tuple[tuple[str, ...], Callable[[Mapping[str, Any]], Any]]] = {}


def _columns_of(table: sa.Table, envelope: Envelope) -> Row:
    """The record's fields that are columns of ``table``, plus where it came from."""
    record = envelope.record
    found = _FIELDS.get((table, envelope.name))  # a record of one name always has the reader's fields
    if found is None:
        names = tuple(name for name in table.columns.keys() if name in record)
        found = _FIELDS[(table, envelope.name)] = names, itemgetter(*names)
    names, values = found
    row = dict(zip(names, values(record)))
    row["source_topic"], row["source_partition"], row["source_offset"] = (envelope.topic, envelope.partition,
                                                                        envelope.offset)
    return row


def charge_row(envelope: Envelope) -> Row:
    """The xDR of a Charge: its fields, the policies as one comma-separated text and the
    margin (amount - vendor cost when both are in one currency, else NULL)."""
    record = envelope.record
    row = _columns_of(Xdr.__table__, envelope)
    row["policies"] = ",".join(record["policies"])
    row["margin"] = record["amount"] - record["vendor_cost"] if record["vendor_currency"] == record["currency"] else None
    return row


_REVISION_FROM_XDR = tuple(name for name in XdrRevision.__table__.columns.keys() if name != "difference")
_revision_values = itemgetter(*_REVISION_FROM_XDR)


def revision_row(envelope: Envelope, xdr: Row) -> Row:
    """The xdr_revision row of a Charge whose xDR is ``xdr``: what the revision changed is
    its ``difference``, a first charge's being its amount."""
    row = dict(zip(_REVISION_FROM_XDR, _revision_values(xdr)))
    difference = envelope.record.get("difference")
    row["difference"] = xdr["amount"] if difference is None else difference
    return row


def rejection_row(envelope: Envelope) -> Row:
    return _columns_of(RejectedAttempt.__table__, envelope)


def payment_rejection_row(envelope: Envelope) -> Row:
    return _columns_of(RejectedPayment.__table__, envelope)


def config_rejection_row(envelope: Envelope) -> Row:
    return _columns_of(RejectedConfigEvent.__table__, envelope)


def balance_row(envelope: Envelope) -> Row:
    return _columns_of(BalanceEvent.__table__, envelope)


def service_status_row(envelope: Envelope) -> Row:
    return _columns_of(ServiceStatusEvent.__table__, envelope)


def _kind_and_key(event: ConfigObjectDefined | ConfigObjectRemoved) -> tuple[str, str]:
    if type(event) is ConfigObjectRemoved:
        return event.kind, event.key
    return object_key(event.object)


def config_event_row(envelope: Envelope) -> Row:
    event = envelope.event
    kind, key = _kind_and_key(event)
    return {"event_id": event.event_id, "environment": event.environment, "name": envelope.name,
            "kind": kind, "key": key, "occurred_at": event.occurred_at, "record": to_json(redacted(envelope.record)),
            **_source(envelope)}


REDACTED = ("service_password",)
"""Record fields never stored in SQL: an AccountDefined written before passwords were
hashed carries the password in clear (its HA1s are in config_object's body)."""


def redacted(record: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in record.items() if name not in REDACTED}


def _into(table: sa.Table, mapper: Mapper) -> Route:
    """The route of an event whose row goes into ``table`` (a row already there stays)."""
    def write(conn: sa.Connection, rows: Iterator[Row]) -> int:
        return _insert_new(conn, table, rows)

    return lambda envelope: (write, mapper(envelope))


def charge_route(envelope: Envelope) -> tuple[Writer, tuple[Row, Row]]:
    """A Charge's xDR and revision rows, to the plain path (a first charge: COPY) or to the
    corrections' (an upsert that keeps the latest revision of the attempt)."""
    xdr = charge_row(envelope)
    write = write_charges if xdr["kind"] == "charge" else write_corrections
    return write, (xdr, revision_row(envelope, xdr))


def rejection_route(envelope: Envelope) -> tuple[Writer, Row]:
    return write_rejections, rejection_row(envelope)


XDR_MAPPERS: Dispatch = {
    "Charge": charge_route,
    "Rejection": rejection_route,
    "PaymentRejected": _into(RejectedPayment.__table__, payment_rejection_row),
    "BalanceChanged": _into(BalanceEvent.__table__, balance_row),
    "ServiceStatusChanged": _into(ServiceStatusEvent.__table__, service_status_row),
}


def registration_row(envelope: Envelope) -> Row:
    """The binding a RegistrationChanged leaves (bound, refreshed; the key of a removed one)."""
    record = envelope.record
    return {**_columns_of(Registration.__table__, envelope), "contact_key": contact_key(record["contact"]),
            "updated_at": record["occurred_at"]}


REGISTRATION_MAPPERS: Dispatch = {"RegistrationChanged": _into(Registration.__table__, registration_row)}
"""(RegistrationProjector writes its rows itself: a binding replaces or deletes its row.)"""
_config_event_route = _into(ConfigEvent.__table__, config_event_row)
CONFIG_MAPPERS: Dispatch = {**{name: _config_event_route for name in (*KIND_BY_EVENT, "ConfigObjectRemoved")},
                            "ConfigEventRejected": _into(RejectedConfigEvent.__table__, config_rejection_row)}


def _envelope(message: Any, typed: bool = True) -> Envelope:
    """The record of ``message``, decoded, and its domain event when ``typed``."""
    try:
        name, record = decode(message.value or b"")
        event = event_of(name, record) if typed else None
    except SchemaError as exc:
        name, record, event, error = None, None, None, str(exc)
    else:
        error = implausible(name, record, message.key) or None
    return Envelope(message.topic, message.partition, message.offset, message.timestamp,
                    message.key, name, record, error, event)


class _TopicProjector:
    """The shared loop: poll, map, write rows and next offsets in one transaction."""

    typed = True
    """Whether the mappers read domain events (else the decoded records alone)."""

    def __init__(self, database_url: str, bootstrap_servers: str, topics: Topics, topic_names: Sequence[str],
                 mappers: Dispatch, *, name: str, max_poll_records: int = 500,
                 migrate_schema: bool = True, schema: str | None = None) -> None:
        """``schema`` (PostgreSQL): project into the tables of that existing schema, migrated
        here, instead of the default ones (``imbill project --rebuild`` builds there)."""
        if migrate_schema or schema is not None:
            migrate(database_url, schema=schema)
        self.name = name
        self.mappers = mappers
        self.engine = connect(database_url, schema)
        self._events_on = {spec.name: frozenset(spec.events) for spec in topics.specs()}
        """Topic -> the events the catalogue puts on it: any other is not the processor's."""
        self.skipped = 0
        self.applied = 0
        self._max_records = max_poll_records
        self._bootstrap = bootstrap_servers
        self._verified_at = 0.0
        try:
            self._consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None,
                                           enable_auto_commit=False, auto_offset_reset="none",
                                           fetch_max_wait_ms=100, max_poll_records=max_poll_records,
                                           client_id=f"imbill-projector-{name}")
        except KafkaError as exc:
            self.engine.dispose()
            raise BrokerError(f"projector {name} cannot reach {bootstrap_servers}: {exc}") from exc
        try:
            self._partitions = [tp for topic in topic_names for tp in partitions_of(self._consumer, topic)]
            self._consumer.assign(self._partitions)
            self._committed, self._fingerprints = self._load_offsets()
            self.verify()
            self._rewind()
        except BaseException:
            self.close()
            raise

    def _load_offsets(self) -> tuple[dict[TopicPartition, int], dict[TopicPartition, str | None]]:
        table = ProjectionOffset.__table__
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(table.c.topic, table.c.partition, table.c.next_offset, table.c.last_record)
                                .where(table.c.projector == self.name)).all()
        return ({TopicPartition(t, p): offset for t, p, offset, _ in rows},
                {TopicPartition(t, p): last for t, p, _, last in rows})

    def verify(self) -> None:
        """Check the log still holds, at each stored offset - 1, the record applied there;
        raise LogReset if not (see :func:`.reset_check.check_log`)."""
        check_log(self._bootstrap, self.name, self._committed, self._fingerprints)
        self._verified_at = time.monotonic()

    def _rewind(self) -> None:
        """Put every partition back at its committed offset (the beginning if none)."""
        for tp in self._partitions:
            if tp in self._committed:
                self._consumer.seek(tp, self._committed[tp])
            else:
                self._consumer.seek_to_beginning(tp)

    def run_once(self, timeout: float = 1.0) -> int:
        """One poll applied in one transaction; returns the number of records applied
        (rows offered: a duplicate event id offered again leaves the table unchanged)."""
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout * 1000), max_records=self._max_records)
        except OffsetOutOfRangeError as exc:
            raise LogReset(reset_message(self.name, f"the log ends before the stored offsets {exc}")) from None
        messages = [m for tp in sorted(batches) for m in batches[tp]]
        if not messages:
            return 0
        positions = {tp: records[-1].offset + 1 for tp, records in batches.items() if records}
        fingerprints = {tp: fingerprint(records[-1]) for tp, records in batches.items() if records}
        typed = self.typed
        try:
            with self.engine.begin() as conn:
                wanted, skipped = self._sorted_out(_envelope(m, typed) for m in messages)
                applied = self._apply(conn, wanted)
                self._store_offsets(conn, positions, fingerprints)
        except BaseException:
            self._rewind()
            raise
        self._committed.update(positions)
        self._fingerprints.update(fingerprints)
        self._applied_batch()
        self._log_skipped(skipped)
        self.applied += applied
        return applied

    def _sorted_out(self, envelopes: Iterable[Envelope]) -> tuple[Iterable[Envelope], list[tuple[Envelope, str]]]:
        """The envelopes to project (decoded, mapped, on their own topic, plausible), as they
        are decoded, and the others with why they are skipped (filled as the first are read)."""
        skipped: list[tuple[Envelope, str]] = []

        def wanted() -> Iterator[Envelope]:
            for e in envelopes:
                if e.error is not None:
                    skipped.append((e, e.error))
                elif e.name not in self.mappers:
                    skipped.append((e, f"no {self.name} projection of {e.name} events"))
                elif e.name not in self._events_on.get(e.topic, ()):
                    skipped.append((e, f"{e.name} is not an event of {e.topic}"))
                else:
                    yield e

        return wanted(), skipped

    def _applied_batch(self) -> None:
        """Told once the batch's transaction is committed."""

    def _apply(self, conn: sa.Connection, envelopes: Iterable[Envelope]) -> int:
        """Write the rows of the ``envelopes`` (all mapped); returns how many."""
        return insert_rows(conn, envelopes, self.mappers)[0]

    def _store_offsets(self, conn: sa.Connection, positions: Mapping[TopicPartition, int],
                       fingerprints: Mapping[TopicPartition, str]) -> None:
        insert = _insert(conn, ProjectionOffset.__table__)
        upsert = insert.on_conflict_do_update(
            index_elements=["projector", "topic", "partition"],
            set_={"next_offset": insert.excluded.next_offset, "last_record": insert.excluded.last_record})
        conn.execute(upsert, [{"projector": self.name, "topic": tp.topic, "partition": tp.partition,
                               "next_offset": offset, "last_record": fingerprints.get(tp)}
                              for tp, offset in positions.items()])

    def _log_skipped(self, skipped: Sequence[tuple[Envelope, str]]) -> None:
        for e, why in skipped:
            log.warning("projector %s skipped %s[%d]@%d: %s", self.name, e.topic, e.partition, e.offset, why[:1000])
        self.skipped += len(skipped)

    def caught_up(self) -> bool:
        """Every partition's position has reached the high-watermark of its last fetch."""
        for tp in self._partitions:
            highwater = self._consumer.highwater(tp)
            if highwater is None or self._consumer.position(tp) < highwater:
                return False
        return True

    def run_until_idle(self, timeout: float = 30.0, poll_timeout: float = 0.2,
                       progress: Callable[[int], None] | None = None) -> int:
        """Apply everything on the topics now; returns the records applied (``progress`` is
        told the running total after every poll)."""
        deadline = time.monotonic() + timeout
        total = 0
        while True:
            applied = self.run_once(poll_timeout)
            total += applied
            if progress is not None:
                progress(total)
            if applied == 0 and self.caught_up():
                return total
            if time.monotonic() > deadline:
                raise TimeoutError(f"projector {self.name} not idle after {timeout}s")

    def run(self, stop_event: threading.Event, poll_timeout: float = 1.0) -> None:
        """Project until ``stop_event`` is set (the ``imbill project`` loop)."""
        log.info("projector %s started at %s", self.name,
                 {f"{tp.topic}[{tp.partition}]": self._committed.get(tp, 0) for tp in self._partitions})
        while not stop_event.is_set():
            if time.monotonic() - self._verified_at > VERIFY_SECONDS:
                self.verify()
            self.run_once(poll_timeout)

    def close(self) -> None:
        self._consumer.close()
        self.engine.dispose()

    def __enter__(self) -> "_TopicProjector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _insert_new(conn: sa.Connection, table: sa.Table, rows: Iterator[Row]) -> int:
    """Insert the ``rows`` whose key is not in ``table`` yet (the first of equal keys);
    returns how many rows were offered."""
    return _write_new(conn, table, rows)[0]


def _write_new(conn: sa.Connection, table: sa.Table, rows: Iterator[Row], copy: bool = True) -> tuple[int, bool]:
    """:func:`_insert_new`, and whether the rows went in by COPY; ``copy=False`` (PostgreSQL):
    straight to the INSERT, when a COPY is known to fail (the poll's other rows were there)."""
    if conn.dialect.name != "postgresql":
        values = list(rows)
    elif not copy:
        values = [_without_nul(row) for row in rows]
    else:
        written: list[Row] = []
        try:
            with conn.begin_nested():
                _copy(conn, table, _kept(rows, written))
            return len(written), True
        except psycopg.errors.UniqueViolation:
            log.info("%s: a row of this poll is already there (a re-delivered event): inserting "
                     "those that are not", table.name)
            values = written + list(rows)
        except psycopg.DataError:
            every = written + list(rows)
            values = [_without_nul(row) for row in every]
            if values == every:
                raise  # no NUL: another fault, not to be hidden
            log.warning("%s: NUL characters (which PostgreSQL text cannot hold) replaced by U+FFFD", table.name)
    conn.execute(_insert(conn, table).on_conflict_do_nothing(), values)
    return len(values), False


def _without_nul(row: Row) -> Row:
    """The row with every NUL character of its texts replaced by U+FFFD."""
    return {name: value.replace("\x00", "\ufffd") if type(value) is str else value for name, value in row.items()}


def _kept(rows: Iterator[Row], into: list[Row]) -> Iterator[Row]:
    """The ``rows``, each also appended to ``into`` as it passes."""
    for row in rows:
        into.append(row)
        yield row


def _copy(conn: sa.Connection, table: sa.Table, rows: Iterator[Row]) -> None:
    """PostgreSQL: the ``rows`` (dicts with the same keys) into ``table`` with one COPY."""
    first = next(rows)
    columns = tuple(first)
    values = itemgetter(*columns)
    names = ", ".join(f'"{name}"' for name in columns)
    cursor = conn.connection.driver_connection.cursor()
    with cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
        write = copy.write_row
        write(values(first))
        for row in rows:
            write(values(row))


_XDR, _REVISIONS, _REJECTED = Xdr.__table__, XdrRevision.__table__, RejectedAttempt.__table__
_LOOKUP_CHUNK = 1000
"""Ids per IN list of a look-up (far below either database's limit of parameters)."""


def write_charges(conn: sa.Connection, items: Iterator[tuple[Row, Row]]) -> int:
    """First charges (revision 1): their xDRs (a COPY on PostgreSQL; an attempt that already
    has a row, from a later revision or a re-sent charge, keeps it), then their revisions."""
    revisions: list[Row] = []

    def xdrs() -> Iterator[Row]:
        for xdr, revision in items:
            revisions.append(revision)
            yield xdr

    written, copied = _write_new(conn, _XDR, xdrs())
    _write_new(conn, _REVISIONS, iter(revisions), copy=copied)  # a charge re-sent is in both tables
    return written


def write_corrections(conn: sa.Connection, items: Iterator[tuple[Row, Row]]) -> int:
    """Corrections (revision 2 or more): every revision kept; the xDR of the attempt shows
    the revision when it is later than the one it shows (a late or re-sent revision changes
    nothing); a rejection a correction supersedes is marked so."""
    items = list(items)
    _insert_new(conn, _REVISIONS, (revision for _, revision in items))
    _show_latest(conn, _latest_per_attempt([xdr for xdr, _ in items]))
    _mark_superseded(conn, [xdr for xdr, _ in items if xdr["corrects"]])
    return len(items)


def write_rejections(conn: sa.Connection, rows: Iterator[Row]) -> int:
    """Rejections; one that a correction already charged (projected first: another topic) is
    marked superseded at once."""
    seen: list[Row] = []
    written = _insert_new(conn, _REJECTED, _kept(rows, seen))
    _mark_superseded(conn, _corrections_of(conn, seen))
    return written


def _latest_per_attempt(xdrs: Sequence[Row]) -> list[Row]:
    """The xDR of the highest revision of each attempt (the first of equal revisions)."""
    latest: dict[str, Row] = {}
    for xdr in xdrs:
        shown = latest.get(xdr["attempt_id"])
        if shown is None or xdr["revision"] > shown["revision"]:
            latest[xdr["attempt_id"]] = xdr
    return list(latest.values())


def _show_latest(conn: sa.Connection, xdrs: list[Row]) -> None:
    """Each xDR as its attempt's row, unless that row shows the same or a later revision.
    A charge id already held by another attempt's row (no processor writes one) is left out
    and logged: the row already there stays, as for any duplicate id."""
    taken = _charge_ids_of_other_attempts(conn, xdrs)
    for xdr in xdrs:
        if xdr["charge_id"] in taken:
            log.warning("xdr: correction %s of attempt %s not shown: another attempt's xDR has that charge id",
                        xdr["charge_id"][:200], xdr["attempt_id"][:200])
    xdrs = [xdr for xdr in xdrs if xdr["charge_id"] not in taken]
    if not xdrs:
        return
    if conn.dialect.name == "postgresql":
        xdrs = [_without_nul(xdr) for xdr in xdrs]
    insert = _insert(conn, _XDR)
    conn.execute(insert.on_conflict_do_update(
        index_elements=["attempt_id"], set_={name: insert.excluded[name] for name in xdrs[0] if name != "attempt_id"},
        where=_XDR.c.revision < insert.excluded.revision), xdrs)


def _charge_ids_of_other_attempts(conn: sa.Connection, xdrs: Sequence[Row]) -> set[str]:
    attempt_of = {xdr["charge_id"]: xdr["attempt_id"] for xdr in xdrs}
    found = _select_in(conn, sa.select(_XDR.c.charge_id, _XDR.c.attempt_id), _XDR.c.charge_id, list(attempt_of))
    return {charge_id for charge_id, attempt_id in found if attempt_of[charge_id] != attempt_id}


def _corrections_of(conn: sa.Connection, rejections: Sequence[Row]) -> list[Row]:
    """The corrections already projected (their attempt, charge id and ``corrects``) that
    supersede one of the ``rejections``."""
    ids = {(rejection["attempt_id"], rejection["rejection_id"]) for rejection in rejections}
    c = _REVISIONS.c
    query = sa.select(c.attempt_id, c.charge_id, c.corrects).where(c.corrects.is_not(None))
    found = _select_in(conn, query, c.attempt_id, list({attempt_id for attempt_id, _ in ids}))
    return [{"attempt_id": attempt_id, "charge_id": charge_id, "corrects": corrects}
            for attempt_id, charge_id, corrects in found if (attempt_id, corrects) in ids]


def _select_in(conn: sa.Connection, query: sa.Select, column: sa.ColumnElement[Any],
               values: list[Any]) -> list[tuple[Any, ...]]:
    """The rows of ``query`` whose ``column`` is one of ``values``, looked up in chunks."""
    return [row for start in range(0, len(values), _LOOKUP_CHUNK)
            for row in conn.execute(query.where(column.in_(values[start:start + _LOOKUP_CHUNK]))).tuples()]


def _mark_superseded(conn: sa.Connection, corrections: Sequence[Row]) -> None:
    """The rejection each correction names in ``corrects`` (of its attempt, when there is
    one) superseded by the correction's charge id (the first one stays)."""
    if not corrections:
        return
    c = _REJECTED.c
    conn.execute(_REJECTED.update()
                 .where(c.rejection_id == sa.bindparam("rejection"), c.attempt_id == sa.bindparam("attempt"),
                        c.superseded_by.is_(None))
                 .values(superseded_by=sa.bindparam("charge")),
                 [{"rejection": x["corrects"], "attempt": x["attempt_id"], "charge": x["charge_id"]}
                  for x in corrections])


class XdrProjector(_TopicProjector):
    """xDRs, rejected attempts, balance and service-status events."""

    typed = False

    def __init__(self, database_url: str, bootstrap_servers: str, topics: Topics, name: str = "xdr",
                 **options: Any) -> None:
        super().__init__(database_url, bootstrap_servers, topics,
                         [topics.charges, topics.rejections, topics.balances, topics.service_status],
                         XDR_MAPPERS, name=name, **options)


class RegistrationProjector(_TopicProjector):
    """The live bindings of REGISTER into ``registration``: a bound or refreshed binding is
    its row (replacing the account's earlier row of that contact), a removed or expired one
    deletes it. Applied in topic order; one account's events are on one partition."""

    typed = False

    def __init__(self, database_url: str, bootstrap_servers: str, topics: Topics, name: str = "registrations",
                 **options: Any) -> None:
        super().__init__(database_url, bootstrap_servers, topics, [topics.registrations], REGISTRATION_MAPPERS,
                         name=name, **options)

    def _apply(self, conn: sa.Connection, envelopes: Iterable[Envelope]) -> int:
        last: dict[tuple[str, str, str], Row] = {}
        applied = 0
        for envelope in envelopes:
            row = registration_row(envelope)
            last[(row["environment"], row["account"], row["contact_key"])] = row
            applied += 1
        table = Registration.__table__
        for environment, account, key in last:
            conn.execute(table.delete().where(table.c.environment == environment, table.c.account == account,
                                              table.c.contact_key == key))
        kept = [row for row in last.values() if row["state"] in (BOUND, REFRESHED)]
        if conn.dialect.name == "postgresql":  # its text cannot hold NUL (a hostile User-Agent)
            kept = [_without_nul(row) for row in kept]
        if kept:
            conn.execute(table.insert(), kept)
        return applied


class ConfigProjector(_TopicProjector):
    """Every config event in force into config_event, their fold into config_object, and the
    rejections of the others into rejected_config_event.

    It folds the config topic as every reader does (:meth:`ConfigState.folded`), from offset
    0 at start: a record the fold refuses (a broken reference...) is skipped here too."""

    def __init__(self, database_url: str, bootstrap_servers: str, topics: Topics, name: str = "config",
                 **options: Any) -> None:
        super().__init__(database_url, bootstrap_servers, topics, [topics.config, topics.config_rejections],
                         CONFIG_MAPPERS, name=name, **options)
        self._config_topic = topics.config
        try:
            self.state = self._folded_so_far(bootstrap_servers)
        except BaseException:
            self.close()
            raise
        self._next_state = self.state

    def _folded_so_far(self, bootstrap_servers: str) -> ConfigState:
        """The fold of the config records this projector has already applied."""
        end = self._committed.get(TopicPartition(self._config_topic, 0), 0)
        if not end:
            return ConfigState()
        records = ((e.offset, e.name, e.record) for e in read_to_end(bootstrap_servers, self._config_topic)
                   if e.offset < end and e.record is not None)
        return ConfigState().folded(records, lambda *refused: None)

    def _sorted_out(self, envelopes: Iterable[Envelope]) -> tuple[list[Envelope], list[tuple[Envelope, str]]]:
        wanted, skipped = super()._sorted_out(envelopes)
        wanted = list(wanted)
        config = [e for e in wanted if e.topic == self._config_topic]
        refused: dict[int, str] = {}
        self._next_state = self.state.folded(((e.offset, e.name, e.record) for e in config),
                                             lambda offset, reason, words: refused.__setitem__(offset, f"{reason}: {words}"))
        skipped += [(e, refused[e.offset]) for e in config if e.offset in refused]
        return [e for e in wanted if e.topic != self._config_topic or e.offset not in refused], skipped

    def _applied_batch(self) -> None:
        self.state = self._next_state

    def _apply(self, conn: sa.Connection, envelopes: Iterable[Envelope]) -> int:
        envelopes = list(envelopes)
        applied = super()._apply(conn, envelopes)
        fold_config_objects(conn, [e for e in envelopes if e.topic == self._config_topic])
        return applied


def insert_rows(conn: sa.Connection, envelopes: Iterable[Envelope], mappers: Dispatch) -> tuple[int, list[Envelope]]:
    """Each routed envelope's rows written by its writer (a projector's writes; an event id
    already there is left as it is, a correction replaces an older revision of its attempt);
    returns how many were written, and the envelopes no route takes.

    The envelopes are decoded as they are written: each run of rows of one table is one
    COPY on PostgreSQL, so the server stores rows while the next ones are decoded."""
    unmapped: list[Envelope] = []

    def routed() -> Iterator[tuple[Writer, Any]]:
        for envelope in envelopes:
            route = mappers.get(envelope.name or "")
            if route is None:
                unmapped.append(envelope)
            else:
                yield route(envelope)

    applied = 0
    for write, run in groupby(routed(), key=itemgetter(0)):
        applied += write(conn, (rows for _, rows in run))
    return applied, unmapped


def fold_config_objects(conn: sa.Connection, envelopes: Sequence[Envelope]) -> None:
    """Bring config_object (the config in force) up to the config events of ``envelopes``."""
    upserts, removals = _fold_objects(envelopes)
    table = ConfigObject.__table__
    for environment, kind, key in removals:
        conn.execute(table.delete().where(table.c.environment == environment, table.c.kind == kind,
                                          table.c.key == key))
    if upserts:
        insert = _insert(conn, table)
        conn.execute(insert.on_conflict_do_update(
            index_elements=["environment", "kind", "key"],
            set_={c: insert.excluded[c] for c in ("body", "updated_at", "event_id")}), upserts)


def _fold_objects(envelopes: Sequence[Envelope]) -> tuple[list[Row], list[tuple[str, str, str]]]:
    """The last change of each object in a batch: its new row, or its removal."""
    last: dict[tuple[str, str, str], Row | None] = {}
    for envelope in envelopes:
        event = envelope.event
        kind, key = _kind_and_key(event)
        object_id = (event.environment, kind, key)
        if type(event) is ConfigObjectRemoved:
            last[object_id] = None
        else:
            last[object_id] = {"environment": object_id[0], "kind": kind, "key": key,
                               "body": to_json(to_record(event.object)), "updated_at": event.occurred_at,
                               "event_id": event.event_id}
    upserts = [row for row in last.values() if row is not None]
    removals = [object_id for object_id, row in last.items() if row is None]
    return upserts, removals
