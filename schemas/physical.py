"""Encoding a record with its logical values converted first, and decoding one with them
converted after: the same bytes and the same values, less work.

fastavro converts a logical value (``timestamp-millis``, ``decimal``) while it writes: for
every such value it works out the field's logical type from the schema, looks its converter
up in ``fastavro.write.LOGICAL_WRITERS`` and calls it. A Charge has six such values and
the processor writes a Charge and a BalanceChanged per attempt (README, "Benchmarks").

A :class:`PhysicalWriter` calls the same converters itself, from a list made once per
schema, and writes the converted record with the schema's *physical* form (each logical
field replaced by its underlying ``long`` or ``bytes``): Avro's binary encoding of a
logical value is that of its underlying type, so the bytes are the ones fastavro writes
(tests/test_schemas.py compares them). Decimals repeat (prices, amounts, deltas): their
converted bytes are remembered by the decimal's exact text (bounded).

Optional fields added at the end of a schema (Charge v3's four, all null on a first charge)
would each cost a union resolution: the null ones at the end of a record are written as
what Avro makes of them, one byte 0 each (union branch 0, ``"null"``, which has no
bytes), after the record written with a schema that ends before them.

Whatever fastavro would refuse or treat otherwise is left to fastavro: :meth:`encode`
returns None, and the caller encodes the record the usual way, with the usual error.

A :class:`PhysicalReader` is the reverse: it reads a body written with the schema itself
(no resolution against another version) with the physical form and converts the logical
values with fastavro's own readers (``fastavro.read.LOGICAL_READERS``). Reading a Charge so
takes about half the time (its three timestamps and four decimals were most of it): a
re-rating run decodes a charge per attempt, the processor a correction per correction.
Decimals are remembered by their bytes (bounded). A schema with a logical type anywhere but
a top-level field or a top-level ``["null", logical]`` union has no physical reader.
"""

from __future__ import annotations

import io
import json
from decimal import Decimal
from typing import Any, Callable, Mapping

import fastavro
from fastavro.read import LOGICAL_READERS
from fastavro.write import LOGICAL_WRITERS

__all__ = ["PhysicalWriter", "PhysicalReader"]

_MEMO_SIZE = 4096
"""Decimal conversions remembered per field before the memo starts again."""

Convert = Callable[[Any, Mapping[str, Any]], Any]


class PhysicalWriter:
    """Writes records of one record schema (``raw``: its JSON, ``header``: the bytes
    before the body)."""

    def __init__(self, raw: Mapping[str, Any], header: bytes) -> None:
        self.header = header
        fields, self.logical = [], []
        for field in raw["fields"]:
            kind = field["type"]
            if isinstance(kind, dict) and "logicalType" in kind:
                convert = LOGICAL_WRITERS.get(f"{kind['type']}-{kind['logicalType']}")
                if convert is not None:
                    memo = _remembered(convert) if kind["logicalType"] == "decimal" else convert
                    self.logical.append((field["name"], memo, kind))
                    field = {**field, "type": kind["type"]}
            fields.append(field)
        self.raw, self.fields = raw, fields
        self.parsed = fastavro.parse_schema({**raw, "fields": fields})
        self.optional = tuple(reversed([f["name"] for f in fields[len(fields) - _optional_tail(fields):]]))
        """The names of the trailing fields whose type is a union with "null" first, last first."""
        self.shorter: dict[int, Any] = {0: self.parsed}
        """Number of trailing fields left out -> the schema without them (made when first needed)."""

    def encode(self, record: dict[str, Any]) -> bytes | None:
        """The encoded record (its logical values converted in place), or None when
        fastavro's own path must say what becomes of it."""
        try:
            for name, convert, kind in self.logical:
                record[name] = convert(record[name], kind)
            nulls = 0
            for name in self.optional:  # the trailing nulls: one byte each, no union resolved
                if record[name] is not None:
                    break
                nulls += 1
            out = io.BytesIO()
            out.write(self.header)
            fastavro.schemaless_writer(out, self.shorter.get(nulls) or self._shorter(nulls), record,
                                       disable_tuple_notation=True)
            out.write(bytes(nulls))
        except Exception:  # noqa: BLE001 - the caller's usual encode raises the usual error
            return None
        return out.getvalue()

    def _shorter(self, nulls: int) -> Any:
        found = self.shorter[nulls] = fastavro.parse_schema({**self.raw, "fields": self.fields[:-nulls]})
        return found


def _optional_tail(fields: list[Mapping[str, Any]]) -> int:
    """How many fields at the end have a union type whose first branch is "null"."""
    count = 0
    for field in reversed(fields):
        kind = field["type"]
        if not (isinstance(kind, list) and kind and kind[0] == "null"):
            break
        count += 1
    return count


def _remembered(convert: Convert) -> Convert:
    """``convert`` for decimals, remembering its result by the decimal's exact text (one
    text per sign, digits and exponent: ``0.15`` and ``0.150`` are kept apart)."""
    memo: dict[str, Any] = {}

    def converted(value: Any, kind: Mapping[str, Any]) -> Any:
        if type(value) is not Decimal:
            return convert(value, kind)
        key = str(value)
        found = memo.get(key)
        if found is None:
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            found = memo[key] = convert(value, kind)
        return found

    return converted


class PhysicalReader:
    """Reads bodies written with one record schema (``raw``: its JSON)."""

    def __init__(self, raw: Mapping[str, Any], parsed: Any, logical: list[tuple[str, Convert, Mapping[str, Any]]]):
        self.raw, self.parsed, self.logical = raw, parsed, logical

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> "PhysicalReader | None":
        """The schema's reader, or None when one of its logical types is not where
        :meth:`read` converts them (fastavro's own path reads those records)."""
        fields, logical = [], []
        for field in raw["fields"]:
            kind = field["type"]
            nullable = isinstance(kind, list) and len(kind) == 2 and kind[0] == "null" and isinstance(kind[1], dict)
            inner = kind[1] if nullable else kind
            if isinstance(inner, dict) and "logicalType" in inner:
                convert = LOGICAL_READERS.get(f"{inner['type']}-{inner['logicalType']}")
                if convert is not None and isinstance(inner["type"], str):
                    memo = _remembered_bytes(convert) if inner["logicalType"] == "decimal" else convert
                    logical.append((field["name"], memo, inner))
                    physical = {"type": inner["type"]} if inner["type"] in ("bytes", "long", "int") else None
                    if physical is None:
                        return None
                    field = {**field, "type": ["null", inner["type"]] if nullable else inner["type"]}
            fields.append(field)
        if json.dumps([f["type"] for f in fields]).count("logicalType"):
            return None  # a logical type deeper in (an array's, a record's): not converted here
        return cls(raw, fastavro.parse_schema({**raw, "fields": fields}), logical)

    def read(self, body: bytes) -> dict[str, Any]:
        """The record of ``body``, its logical values converted (fastavro's errors raised)."""
        record = fastavro.schemaless_reader(io.BytesIO(body), self.parsed, None)
        for name, convert, kind in self.logical:
            value = record[name]
            if value is not None:
                record[name] = convert(value, kind, kind)
        return record


def _remembered_bytes(convert: Convert) -> Callable[..., Any]:
    """A decimal reader remembering its result by the bytes read (one field's scale)."""
    memo: dict[bytes, Any] = {}

    def converted(value: bytes, writer: Mapping[str, Any], reader: Mapping[str, Any]) -> Any:
        found = memo.get(value)
        if found is None:
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            found = memo[value] = convert(value, writer, reader)
        return found

    return converted
