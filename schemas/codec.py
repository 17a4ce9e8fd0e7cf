"""Avro single-object encoding of every imbill event.

A record on a topic is ``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of
the writer schema's parsing canonical form + the Avro binary body (Avro specification,
"Single object encoding"). A consumer therefore identifies the writer schema from the
``.avsc`` files in ``schemas/avro/`` alone; :func:`decode` resolves it against the reader
schema of the same name, so readers keep decoding records written by older schemas.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from functools import cache
from importlib import resources
from operator import attrgetter, itemgetter
from typing import Any, Callable, Mapping

import fastavro
from fastavro.schema import to_parsing_canonical_form

from imbill.domain import events as ev
from imbill.domain.config import KIND_BY_EVENT, from_record, to_record
from imbill.domain.errors import ConfigError, SchemaError, UnknownSchema
from imbill.schemas.physical import PhysicalReader, PhysicalWriter

__all__ = ["MAGIC", "Schema", "schema", "schemas", "encode", "decode", "decode_as", "fingerprint", "writer_name",
           "leading_strings",
           "encode_event", "decode_event", "decode_event_as", "record_of", "event_of"]

MAGIC = b"\xc3\x01"
_EMPTY64 = 0xC15D213AA4D7A795


def _fp_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    return table


_FP_TABLE = _fp_table()


def fingerprint(canonical_form: str) -> bytes:
    """CRC-64-AVRO (Rabin) fingerprint of a canonical form, little-endian, as the spec says."""
    fp = _EMPTY64
    for byte in canonical_form.encode("utf-8"):
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ byte) & 0xFF]
    return struct.pack("<Q", fp)


@dataclass(frozen=True)
class Schema:
    """One event type: its name, parsed schema and single-object header."""

    name: str
    parsed: Any
    header: bytes
    raw: Mapping[str, Any]
    """The schema's JSON, as read."""

    def encode(self, record: Mapping[str, Any], *, tuple_notation: bool = True) -> bytes:
        out = io.BytesIO()
        out.write(self.header)
        try:
            fastavro.schemaless_writer(out, self.parsed, record, disable_tuple_notation=not tuple_notation)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SchemaError(f"cannot encode {self.name}: {exc}") from exc
        return out.getvalue()


def _load(text: str) -> Schema:
    raw = json.loads(text)
    parsed = fastavro.parse_schema(raw)
    header = MAGIC + fingerprint(to_parsing_canonical_form(parsed))
    return Schema(raw["name"], parsed, header, raw)


@cache
def schemas() -> Mapping[str, Schema]:
    """Every published schema by short record name (``Charge``, ``MessageAttempt``, ...)."""
    folder = resources.files("imbill.schemas") / "avro"
    loaded = [_load(f.read_text("utf-8")) for f in folder.iterdir() if f.name.endswith(".avsc")]
    return {s.name: s for s in sorted(loaded, key=lambda s: s.name)}


@cache
def _by_fingerprint() -> Mapping[bytes, Schema]:
    """Today's schemas and the older writer schemas kept in ``avro/history/`` (records they
    wrote stay on the topics forever, and decode with today's reader schema)."""
    folder = resources.files("imbill.schemas") / "avro" / "history"
    older = [_load(f.read_text("utf-8")) for f in folder.iterdir() if f.name.endswith(".avsc")]
    return {s.header: s for s in (*older, *schemas().values())}


def schema(name: str) -> Schema:
    try:
        return schemas()[name]
    except KeyError:
        raise SchemaError(f"no schema named {name!r}; known: {', '.join(schemas())}") from None


def encode(name: str, record: Mapping[str, Any]) -> bytes:
    """Single-object encode ``record`` with the schema called ``name``."""
    return schema(name).encode(record)


def register_writer(text: str) -> Schema:
    """Make an older writer schema (e.g. a golden sample's) known to :func:`decode`."""
    writer = _load(text)
    _extra_writers[writer.header] = writer
    return writer


_extra_writers: dict[bytes, Schema] = {}


_PHYSICAL: dict[str, PhysicalReader | None] = {}
"""Today's schemas' physical readers by name (None: the schema has none), made when first used."""
_NO_READER = object()


def decode(data: bytes) -> tuple[str, dict[str, Any]]:
    """Return (record name, record) of a single-object encoded event."""
    if len(data) < 10 or data[:2] != MAGIC:
        raise SchemaError("not an Avro single-object encoded record (missing C3 01 header)")
    header = bytes(data[:10])
    writer = _by_fingerprint().get(header) or _extra_writers.get(header)
    if writer is None:
        raise UnknownSchema(f"unknown writer schema fingerprint {header[2:].hex()}")
    reader = schemas().get(writer.name, writer)
    try:  # no reader schema when it is the writer's: fastavro would compare them, field by field, every time
        if reader is writer:
            physical = _PHYSICAL.get(writer.name, _NO_READER)
            if physical is _NO_READER:
                physical = _PHYSICAL[writer.name] = PhysicalReader.of(writer.raw)
            if physical is not None:
                return writer.name, physical.read(data[10:])
        record = fastavro.schemaless_reader(io.BytesIO(data[10:]), writer.parsed,
                                            None if reader is writer else reader.parsed)
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise SchemaError(f"cannot decode {writer.name}: {exc}") from exc
    return writer.name, record


def writer_name(data: bytes) -> str | None:
    """The record name of a single-object encoded record's writer schema, from its header
    alone; None when the header names no schema known here."""
    writer = _by_fingerprint().get(bytes(data[:10])) or _extra_writers.get(bytes(data[:10]))
    return writer.name if writer is not None and data[:2] == MAGIC else None


def leading_strings(data: bytes, count: int) -> tuple[str, ...] | None:
    """The first ``count`` fields of a single-object encoded record's body, read as Avro
    strings without decoding the rest; None if the body does not hold them.

    Only for records whose schemas (every writer version) begin with ``count`` string
    fields: the ids of a Charge (charge id, attempt id), a Rejection (rejection id, attempt
    id) or a MessageAttempt (attempt id). A scan that wants few of many records skips the
    others for the cost of reading two varints instead of decoding some forty fields."""
    found, at, end = [], 10, len(data)
    for _ in range(count):
        size, at = _varint(data, at)
        if size is None or size < 0 or at + size > end:
            return None
        try:
            found.append(bytes(data[at:at + size]).decode("utf-8"))
        except UnicodeDecodeError:
            return None
        at += size
    return tuple(found)


def _varint(data: bytes, at: int) -> tuple[int | None, int]:
    """The zigzag varint (an Avro long) at ``at``, and where the next field begins."""
    value, shift, end = 0, 0, len(data)
    while at < end and shift < 64:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (value >> 1) ^ -(value & 1), at
        shift += 7
    return None, at


def decode_as(name: str, data: bytes) -> dict[str, Any]:
    """Decode and check the record is a ``name``."""
    got, record = decode(data)
    if got != name:
        raise SchemaError(f"expected a {name} record, got {got}")
    return record


# -- the domain's event types <-> Avro records ---------------------------------------------------

_CLASSES: Mapping[str, type] = {cls.__name__: cls for cls in (
    ev.MessageAttempt, ev.Charge, ev.Rejection, ev.Payment, ev.PaymentRejected, ev.BalanceChanged,
    ev.ServiceStatusChanged, ev.ConfigObjectRemoved, ev.ConfigEventRejected, ev.RerateRun,
    ev.RegistrationChanged)}
_ARRAYS: Mapping[type, tuple[str, ...]] = {ev.Charge: ("policies",)}
"""The tuple fields of each event class (Avro arrays, decoded as lists)."""


@dataclass(frozen=True)
class _Shape:
    """How one event class meets its record, worked out once: the field names in class
    order, a getter of all of them at once (from an event or from a record) and the
    tuple fields. The processor converts two or three events per attempt: this is its
    hot path (README, "Benchmarks")."""

    cls: type
    names: tuple[str, ...]
    arrays: tuple[str, ...]
    values: Callable[[Any], tuple[Any, ...]]
    """The event's field values, in class order (one C call: operator.attrgetter)."""
    items: Callable[[Mapping[str, Any]], tuple[Any, ...]]
    """A record's values of the class's fields, in class order (operator.itemgetter)."""


def _shape(cls: type) -> _Shape:
    names = ev.field_names(cls)
    return _Shape(cls, names, _ARRAYS.get(cls, ()), _all_of(attrgetter, names), _all_of(itemgetter, names))


def _all_of(getter: Callable[..., Callable[[Any], Any]], names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """``getter(*names)`` that always returns a tuple (the operator getters return the bare
    value for one name)."""
    get = getter(*names)
    return get if len(names) > 1 else lambda obj: (get(obj),)


_SHAPES: Mapping[type, _Shape] = {cls: _shape(cls) for cls in _CLASSES.values()}
_SHAPE_BY_NAME: Mapping[str, _Shape] = {name: _SHAPES[cls] for name, cls in _CLASSES.items()
                                        if name not in KIND_BY_EVENT}
_ENVELOPE = ("event_id", "environment", "occurred_at")


def record_of(event: Any) -> dict[str, Any]:
    """The Avro record of a domain event (tuples become arrays)."""
    if type(event) is ev.ConfigObjectDefined:
        record = {"event_id": event.event_id, "environment": event.environment, "occurred_at": event.occurred_at,
                  **to_record(event.object)}
        return _with_defaults(ev.event_name(event), record)
    record = {name: getattr(event, name) for name in ev.field_names(type(event))}
    for name, value in record.items():
        if type(value) is tuple:
            record[name] = list(value)
    return record


def _with_defaults(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """A field the domain object no longer has (AccountDefined's service_password) is
    written as its schema default."""
    for field in schema(name).parsed["fields"]:
        if field["name"] not in record and "default" in field:
            record[field["name"]] = field["default"]
    return record


def event_of(name: str, record: Mapping[str, Any]) -> ev.Event:
    """The domain event of a decoded Avro record called ``name`` (arrays become tuples)."""
    shape = _SHAPE_BY_NAME.get(name)
    if shape is not None and len(record) == len(shape.names):
        try:
            values = shape.items(record)
            if shape.arrays:
                values = _with_tuples(shape, values)
        except (KeyError, TypeError):
            pass  # a field missing (another one extra), or no array: said by the general path
        else:
            return shape.cls(*values)  # exactly the class's fields: positionally, in class order
    return _event_of(name, record)


def _with_tuples(shape: _Shape, values: tuple[Any, ...]) -> list[Any]:
    values = list(values)
    for name in shape.arrays:
        index = shape.names.index(name)
        values[index] = tuple(values[index])
    return values


def _event_of(name: str, record: Mapping[str, Any]) -> ev.Event:
    kind = KIND_BY_EVENT.get(name)
    cls = _CLASSES.get(name)
    if kind is None and cls is None:
        raise SchemaError(f"no event type for {name!r}")
    try:
        if kind is not None:
            return ev.ConfigObjectDefined(record["event_id"], record["environment"], record["occurred_at"],
                                          from_record(kind, record))
        arrays = _ARRAYS.get(cls)
        if arrays:
            record = {**record, **{field: tuple(record[field]) for field in arrays}}
        return cls(**record)  # the reader schema's fields are exactly the class's (tests/test_schemas.py)
    except KeyError as exc:
        raise SchemaError(f"{name} lacks the field {exc.args[0]}") from None
    except TypeError as exc:
        missing = [field for field in ev.field_names(cls) if field not in record] if cls is not None else []
        why = f"lacks the field {missing[0]}" if missing else f"is not a valid event: {exc}"
        raise SchemaError(f"{name} {why}") from None
    except (ValueError, ConfigError) as exc:  # a config object refused by config apply's own checks
        raise SchemaError(f"{name} is not a valid event: {exc}") from None


def encode_event(event: Any) -> bytes:
    """Single-object encode a domain event with its schema."""
    shape = _SHAPES.get(type(event))
    if shape is None:
        return encode(ev.event_name(event), record_of(event))
    # Tuples stay tuples (fastavro writes them as arrays); with the tuple notation of unions
    # off, a tuple where no array belongs is refused, as the list record_of makes of it is.
    values = shape.values(event)
    writer = _WRITERS.get(shape.cls) or _writer(shape.cls)
    data = writer.encode(dict(zip(shape.names, values)))
    if data is None:  # a value fastavro's own path must judge (and, most likely, refuse)
        return schema(shape.cls.__name__).encode(dict(zip(shape.names, values)), tuple_notation=False)
    return data


_WRITERS: dict[type, PhysicalWriter] = {}


def _writer(cls: type) -> PhysicalWriter:
    found = schema(cls.__name__)
    writer = _WRITERS[cls] = PhysicalWriter(found.raw, found.header)
    return writer


def decode_event(data: bytes) -> ev.Event:
    """The domain event of a single-object encoded record."""
    return event_of(*decode(data))


def decode_event_as(cls: type, data: bytes) -> Any:
    """Decode and check the event is a ``cls``."""
    event = decode_event(data)
    if type(event) is not cls:
        raise SchemaError(f"expected a {cls.__name__} record, got {ev.event_name(event)}")
    return event
