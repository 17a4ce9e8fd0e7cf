"""What the CLI shows: rich tables and text built from values, and the one function that
turns a value (Decimal, datetime, bool, None, a sequence, a mapping) into text.

Each kind of output keeps its own look through a :class:`TextStyle`: config tables say
yes/no and drop trailing zeros, exports (CSV, JSON, the plain xDR table) say true/false with
exact decimals and UTC timestamps, the rich xDR table shows timestamps to the second.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Iterable, Literal, Mapping, Sequence

from rich.table import Table

from imbill.domain.catalogue import CATALOGUE_COLUMNS, catalogue_rows
from imbill.domain.config import Account, ConfigState, UsageCharge
from imbill.domain.policy import Explanation
from imbill.domain.rating import Rated, Refusal
from imbill.producers.config_publisher import PLAN_ORDER, HistoryEntry
from imbill.projections.queries import XDR_COLUMNS
from imbill.schemas.codec import schemas
from imbill.schemas.topics import CATALOGUE

__all__ = ["TextStyle", "CONFIG", "EXPLAIN", "EXPORT", "XDR_CELL", "SUMMARY_COLUMNS", "text",
           "topics_table", "schemas_table", "config_tables", "config_history_table", "attributes_table",
           "xdr_table", "format_xdrs", "explanation"]


@dataclass(frozen=True)
class TextStyle:
    """How :func:`text` writes the values that have more than one usual form."""

    true: str = "yes"
    false: str = "no"
    timespec: str = "auto"
    utc: bool = False
    """Timestamps converted to UTC first."""
    trim_zeros: bool = False
    """Decimals without trailing zeros (``0.05``, not ``0.050000``)."""
    join: bool = True
    """Sequences and mappings as ``a, b`` and ``k=v, ...`` (else as Python writes them)."""


CONFIG = TextStyle(trim_zeros=True)
EXPLAIN = TextStyle(join=False)
EXPORT = TextStyle(true="true", false="false", utc=True)
XDR_CELL = TextStyle(true="True", false="False", timespec="seconds")


def text(value: Any, style: TextStyle = CONFIG) -> str:
    """``value`` as text in ``style``; None is the empty text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return style.true if value else style.false
    if isinstance(value, Decimal):
        return _decimal(value, style.trim_zeros)
    if isinstance(value, datetime):
        return (value.astimezone(timezone.utc) if style.utc else value).isoformat(timespec=style.timespec)
    if isinstance(value, UsageCharge):
        return f"{value.service}/{value.node}/{value.tariff}"
    if style.join and isinstance(value, (tuple, list)):
        return ", ".join(text(v, style) for v in value)
    if style.join and isinstance(value, Mapping):
        return ", ".join(f"{k}={text(v, style)}" for k, v in value.items())
    return str(value)


def _decimal(value: Decimal, trim_zeros: bool) -> str:
    digits = f"{value:f}"
    return digits.rstrip("0").rstrip(".") if trim_zeros and "." in digits else digits


# --- catalogues ---------------------------------------------------------------------------

def topics_table(topic_prefix: str) -> Table:
    table = Table("topic", "partitions", "key", "cleanup", "retention", "events", title="Topic catalogue")
    for spec in CATALOGUE:
        retention = "forever" if spec.retention_ms < 0 else f"{spec.retention_ms} ms"
        table.add_row(topic_prefix + spec.name, str(spec.partitions), spec.key,
                      spec.cleanup_policy, retention, ", ".join(spec.events) or "(faust changelog)")
    return table


def schemas_table() -> Table:
    table = Table("schema", "namespace", "fingerprint (CRC-64-AVRO, LE)", "fields", title="Avro schemas")
    for name, schema in schemas().items():
        namespace, _, _ = schema.parsed["name"].rpartition(".")
        table.add_row(name, namespace, schema.header[2:].hex(), str(len(schema.parsed["fields"])))
    return table


def attributes_table(service: str) -> Table:
    table = Table(*CATALOGUE_COLUMNS, title="Service policy attributes")
    for row in catalogue_rows(None if service == "all" else service):
        table.add_row(*row)
    return table


# --- config -------------------------------------------------------------------------------

@dataclass(frozen=True)
class KindRows:
    """The objects of one kind in force, as text, for ``imbill config show``."""

    kind: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def config_rows(state: ConfigState, environment: str | None = None) -> list[KindRows]:
    """The config in force per kind (PLAN_ORDER), one row per object, first column the
    environment; only kinds with objects. ``environment`` limits it to one. What is kept of
    an account's service password (its realm and HA1s) is one column, ``service_password``:
    ``***`` when there is one."""
    names = sorted(state.environments) if environment is None else [environment]
    envs = [state.environments[n] for n in names if n in state.environments]
    found = []
    for kind in PLAN_ORDER:
        columns = ("environment", *_config_columns(kind.cls))
        rows = tuple((env.name, *(_config_cell(obj, c) for c in columns[1:]))
                     for env in envs for obj in env.collection(kind).values())
        if rows:
            found.append(KindRows(kind.name, columns, rows))
    return found


def config_tables(state: ConfigState, environment: str, at: datetime | None) -> list[Table | str]:
    """One table per kind in force (a service password shown as ``***``), or why there is none."""
    when = f" at {at.isoformat()}" if at else ""
    if state.environment(environment) is None:
        return [f"environment {environment} has no config{when} (imbill config apply FILE)"]
    tables: list[Table | str] = []
    for kind in config_rows(state, environment):
        table = Table(*kind.columns, title=f"{kind.kind} ({environment}{when})")
        for row in kind.rows:
            table.add_row(*row)
        tables.append(table)
    return tables


def _config_columns(cls: type) -> list[str]:
    names = [f.name for f in fields(cls)]
    if cls is Account:  # the realm and HA1s stand for a password: never printed
        names = [n for n in names if n not in _DIGEST_FIELDS]
        names.insert(names.index("product") + 1, "service_password")
    return names


def _config_cell(obj: Any, column: str) -> str:
    if column == "service_password":
        return "***" if obj.digest_realm else ""
    return text(getattr(obj, column), CONFIG)


_DIGEST_FIELDS = ("digest_realm", "ha1_md5", "ha1_sha256")


def config_history_table(entries: Iterable[HistoryEntry], environment: str) -> Table:
    table = Table("offset", "occurred at", "event", "object", title=f"Config history ({environment})")
    for entry in entries:
        table.add_row(str(entry.offset), text(entry.occurred_at), entry.event, entry.key)
    return table


# --- xDRs ---------------------------------------------------------------------------------

SUMMARY_COLUMNS: tuple[str, ...] = ("attempted_at", "environment", "account", "direction", "to_user",
                                    "destination", "on_net", "billing_units", "unit_price", "amount",
                                    "currency", "service_policy", "charge_id")
"""The columns of the xDR tables (all of them do not fit a terminal)."""

_NUMERIC = frozenset({"billing_units", "unit_price", "amount"})


def xdr_table(rows: Sequence[Mapping[str, Any]], environment: str) -> Table:
    table = Table(*SUMMARY_COLUMNS, title=f"xDRs ({environment}, {len(rows)} rows)")
    for row in rows:
        table.add_row(*(text(row[column], XDR_CELL) for column in SUMMARY_COLUMNS))
    return table


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(rows[0]) if rows else list(XDR_COLUMNS)


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = _columns(rows)
    writer.writerow(columns)
    writer.writerows([text(row[c], EXPORT) for c in columns] for row in rows)
    return out.getvalue()


def _json_value(value: Any) -> Any:
    return text(value, EXPORT) if isinstance(value, (Decimal, datetime)) else value


def _json(rows: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps([{k: _json_value(v) for k, v in row.items()} for row in rows], indent=2,
                      ensure_ascii=False)


def _plain_table(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = [c for c in SUMMARY_COLUMNS if not rows or c in rows[0]]
    cells = [[text(row[c], EXPORT) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]

    def line(values: Iterable[str]) -> str:
        return "  ".join(v.rjust(w) if c in _NUMERIC else v.ljust(w)
                         for c, v, w in zip(columns, values, widths)).rstrip()

    return "\n".join([line(columns), line("-" * w for w in widths), *map(line, cells)]) + "\n"


_FORMATS = {"csv": _csv, "json": _json, "table": _plain_table}


def format_xdrs(rows: Sequence[Mapping[str, Any]], fmt: Literal["table", "csv", "json"] = "table") -> str:
    """xDR rows as a plain text table, CSV with a header, or a JSON array (decimals as exact
    strings, timestamps in ISO 8601 UTC)."""
    if fmt not in _FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(_FORMATS)}")
    return _FORMATS[fmt](rows)


# --- policy explain -----------------------------------------------------------------------

def explanation(result: Explanation, rated: Rated | Refusal, *, account: str, to: str, environment: str) -> list[Table | str]:
    """``imbill policy explain``: the policies and their roles, the effective attributes and
    their sources, and how a message sent now would be rated (``rated``)."""
    policies = Table("service policy", "role", "match priority", "pattern",
                     title=f"Service policies for {account} -> {to} ({environment})")
    for row in result.policies:
        policies.add_row(row.name, row.role, str(row.match_priority), row.pattern or "")
    attributes = Table("attribute", "value", "source", "static", "dynamic", "default", title="Effective attributes")
    for row in result.attributes:
        attributes.add_row(row.attribute, text(row.value, EXPLAIN), row.source,
                           *(text(v, EXPLAIN) for v in (row.static_value, row.dynamic_value, row.default)))
    return [policies, attributes, _outcome(rated)]


def _outcome(rated: Rated | Refusal) -> str:
    if isinstance(rated, Refusal):
        return f"A message sent now would be rejected: {rated.reason_code} ({rated.message})"
    where = "on-net" if rated.on_net else "off-net"
    vendor = f", via {rated.vendor} / {rated.connection} (cost {rated.vendor_cost} {rated.vendor_currency})" \
        if rated.vendor else ""
    return (f"A message sent now is {where} to {rated.destination}: rate code {rated.rate_code} in tariff "
            f"{rated.tariff}, {rated.unit_price} {rated.currency} per billing unit{vendor}")
