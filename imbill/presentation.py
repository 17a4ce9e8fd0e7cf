"""What the CLI shows: every listing is a :class:`Listing` (columns, rows of values, each
column's kind) rendered as a rich table, CSV, JSON or Parquet, and :func:`text` and
:func:`money` turn one value into text.

Money is written everywhere with its currency's ISO 4217 minor units (``0.05`` USD, ``5``
JPY, ``0.050`` BHD; more digits only when they are not zero); config tables say yes/no and
show unit prices as configured; exports (CSV, JSON) say true/false with ISO 8601 UTC
timestamps; tables show UTC timestamps to the second.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from rich.table import Table
from rich.text import Text as RichText

from imbill.domain.catalogue import CATALOGUE_COLUMNS, catalogue_rows
from imbill.domain.config import Account, ConfigState, EnvironmentConfig, UsageCharge
from imbill.domain.money import money_text
from imbill.domain.policy import Explanation
from imbill.domain.rating import Rated, Refusal
from imbill.producers.config_publisher import PLAN_ORDER, HistoryEntry
from imbill.producers.sip_client import response_headers
from imbill.projections.models import Registration, RejectedAttempt, Xdr, XdrRevision
from imbill.projections.queries import (AGGREGATE_KINDS, BALANCE_KINDS, REGISTRATION_COLUMNS, REJECTION_COLUMNS,
                                        XDR_COLUMNS, column_kinds)
from imbill.schemas.codec import schemas
from imbill.schemas.topics import CATALOGUE

__all__ = ["TextStyle", "CONFIG", "EXPLAIN", "EXPORT", "text", "money", "FORMATS", "Listing", "render",
           "sip_answer_text", "listing_table", "listing_csv", "listing_json", "arrow_table", "write_parquet",
           "topics_listing", "schemas_listing", "attributes_listing", "config_tables", "config_rows",
           "config_listing", "config_when", "config_history_listing", "SUMMARY_COLUMNS", "XDR_KINDS", "xdr_listing",
           "REVISION_SUMMARY_COLUMNS", "REVISION_KINDS", "revision_listing", "xdr_aggregate_listing", "format_xdrs",
           "balance_listing", "rejection_listing", "account_listing", "explanation", "outcome_text",
           "RECONCILE_COLUMNS", "reconcile_listing", "reconcile_summary", "RERATE_CHANGE_COLUMNS",
           "rerate_changes_listing", "rerate_listings", "RERATE_RUN_COLUMNS", "rerate_runs_listing",
           "rerate_run_listing"]


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

def topics_listing(topic_prefix: str) -> Listing:
    rows = [(topic_prefix + spec.name, str(spec.partitions), spec.key, spec.cleanup_policy,
             "forever" if spec.retention_ms < 0 else f"{spec.retention_ms} ms",
             ", ".join(spec.events) or "(faust changelog)") for spec in CATALOGUE]
    return text_listing("Topic catalogue", ("topic", "partitions", "key", "cleanup", "retention", "events"), rows)


def schemas_listing() -> Listing:
    rows = [(name, schema.parsed["name"].rpartition(".")[0], schema.header[2:].hex(),
             str(len(schema.parsed["fields"]))) for name, schema in schemas().items()]
    return text_listing("Avro schemas", ("schema", "namespace", "fingerprint (CRC-64-AVRO, LE)", "fields"), rows)


def attributes_listing(service: str) -> Listing:
    return text_listing("Service policy attributes", CATALOGUE_COLUMNS,
                        catalogue_rows(None if service == "all" else service))


# --- config -------------------------------------------------------------------------------

@dataclass(frozen=True)
class KindRows:
    """The objects of one kind in force, as text, for ``imbill config show``."""

    kind: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def config_rows(state: ConfigState, environment: str | None = None, *, table: bool = False) -> list[KindRows]:
    """The config in force per kind (PLAN_ORDER), one row per object, first column the
    environment; only kinds with objects. ``environment`` limits it to one. What is kept of
    an account's service password (its realm and HA1s) is one column, ``service_password``:
    ``***`` when there is one. ``table``: times in UTC to the second, as tables show them."""
    names = sorted(state.environments) if environment is None else [environment]
    envs = [state.environments[n] for n in names if n in state.environments]
    found = []
    for kind in PLAN_ORDER:
        columns = ("environment", *_config_columns(kind.cls))
        rows = tuple((env.name, *(_config_cell(obj, c, _currency(env, obj), table) for c in columns[1:]))
                     for env in envs for obj in env.collection(kind).values())
        if rows:
            found.append(KindRows(kind.name, columns, rows))
    return found


def config_tables(state: ConfigState, environment: str, at: datetime | None,
                  as_of: datetime | None = None) -> list[Table | str]:
    """One table per kind in force (a service password shown as ``***``), or why there is none."""
    when = config_when(at, as_of)
    if state.environment(environment) is None:
        return [f"environment {environment} has no config{when} (imbill config apply FILE)"]
    tables: list[Table | str] = []
    for kind in config_rows(state, environment, table=True):  # the environment is in the title
        table = Table(title=f"{kind.kind} ({environment}{when})")
        for column in kind.columns[1:]:
            table.add_column(_CONFIG_HEADERS.get(column, column), no_wrap=column in _UNWRAPPED,
                             overflow="fold",  # a word longer than its column is folded, never cut
                             justify="right" if column == "unit_price" else "left")
        for row in kind.rows:
            table.add_row(*row[1:])
        tables.append(table)
    return tables


_CONFIG_HEADERS = {"rate_code": "code", "unit_price": "price", "effective_from": "valid from", "rating_mode": "mode"}
"""Shorter headers of the config tables (CSV and JSON keep the field names)."""
_UNWRAPPED = frozenset({"rate_code", "unit_price", "effective_from"})
"""Config table columns never wrapped (a price or a time cut in two is misread)."""


def config_when(at: datetime | None, as_of: datetime | None) -> str:
    """`` at T as of R UTC``: the valid time and the record time a config is shown for
    (to the millisecond when it has one: record times are that close)."""
    when = (f" at {_utc(at)}" if at else "") + (f" as of {_utc(as_of)}" if as_of else "")
    return f"{when} UTC" if when else ""


def _utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(
        sep=" ", timespec="milliseconds" if moment.microsecond else "seconds")


def _currency(env: EnvironmentConfig, obj: Any) -> str | None:
    """The currency of an account's (its customer's) or a rate's (its tariff's) money."""
    owner = env.customers.get(getattr(obj, "customer", "")) or env.tariffs.get(getattr(obj, "tariff", ""))
    return getattr(owner, "currency", None)


def _config_columns(cls: type) -> list[str]:
    names = [f.name for f in fields(cls)]
    if cls is Account:  # the realm and HA1s stand for a password: never printed
        names = [n for n in names if n not in _DIGEST_FIELDS]
        names.insert(names.index("product") + 1, "service_password")
    return names


def _config_cell(obj: Any, column: str, currency: str | None = None, table: bool = False) -> str:
    """A config field as text: balances in their currency's minor units, unit prices as
    configured but never with fewer decimals than the currency has (0.05, 0.0125, 0.50); a
    service password only as whether there is one."""
    if column == "service_password":
        return "***" if obj.digest_realm else ""
    if column == "product_history":  # "Basic from 1970-01-01T00:00:00+00:00; Gold from 2026-11-01T00:00:00+00:00"
        return "; ".join(f"{change.product} from {_config_cell(change, 'effective_from', None, table)}"
                         for change in obj.product_history)
    value = getattr(obj, column)
    if isinstance(value, Decimal) and currency:
        return money(value, currency)
    if isinstance(value, datetime) and table:
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return text(value, CONFIG)


_DIGEST_FIELDS = ("digest_realm", "ha1_md5", "ha1_sha256")


def config_listing(state: ConfigState, environment: str, at: datetime | None = None,
                   as_of: datetime | None = None) -> Listing:
    """The config in force as one row per object field (kind, object, field, value): the
    CSV and JSON form of ``imbill config show``."""
    rows = [{"kind": kind.kind, "object": row[1] if len(row) > 1 else "", "field": column, "value": value}
            for kind in config_rows(state, environment) for row in kind.rows
            for column, value in zip(kind.columns[1:], row[1:])]
    return Listing(f"Config ({environment}{config_when(at, as_of)})", ("kind", "object", "field", "value"), rows)


def config_history_listing(entries: Iterable[HistoryEntry], environment: str, occurred: bool = True) -> Listing:
    """The config events, each with its record time (``recorded_at``, what ``config show
    --as-of`` compares) and, with ``occurred``, the time its publisher gave it."""
    rows = [{"offset": e.offset, "recorded_at": e.recorded_at, "occurred_at": e.occurred_at, "event": e.event,
             "object": e.key} for e in entries]
    columns = ("offset", "recorded_at", *(("occurred_at",) if occurred else ()), "event", "object")
    return Listing(f"Config history ({environment}, times in UTC)", columns, rows,
                   {"offset": "integer", "recorded_at": "timestamp", "occurred_at": "timestamp"})


# --- listings: one value, four formats ----------------------------------------------------

FORMATS: tuple[str, ...] = ("table", "csv", "json")
"""The formats of every listing command; ``imbill xdr`` also writes ``parquet``."""


@dataclass(frozen=True)
class Listing:
    """Rows to show, whatever the format: the column order, each column's kind (``money``,
    ``price``, ``timestamp``, ``integer``, ``boolean``, ``text``, or ``code``: text never
    wrapped) and, for money, the column that holds its currency."""

    title: str
    columns: tuple[str, ...]
    rows: Sequence[Mapping[str, Any]]
    kinds: Mapping[str, str] = field(default_factory=dict)
    currency_of: Mapping[str, str] = field(default_factory=dict)


def money(value: Decimal | None, currency: str | None) -> str:
    """``value`` with the minor units of ``currency`` (:func:`imbill.domain.money.money_text`);
    None is the empty text."""
    return "" if value is None else money_text(value, currency)


def _cell(listing: Listing, row: Mapping[str, Any], column: str, export: bool) -> str:
    value = row.get(column)
    kind = listing.kinds.get(column, "text")
    if value is None:
        return ""
    if kind in ("money", "price"):
        return money(value, row.get(listing.currency_of.get(column, "currency")))
    if kind == "timestamp" and not export:
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return text(value, EXPORT if export else CONFIG)


def _json_cell(listing: Listing, row: Mapping[str, Any], column: str) -> Any:
    value = row.get(column)
    if value is None or isinstance(value, (bool, int, str)) and listing.kinds.get(column) != "money":
        return value
    return _cell(listing, row, column, export=True)


_RIGHT = frozenset({"money", "price", "integer"})
_HEADERS = {"billing_units": "units", "revision": "rev"}
"""Shorter table headers (CSV, JSON and --columns keep the column names)."""


def listing_table(listing: Listing) -> Table:
    """A rich table of ``listing`` (numbers right-aligned, times in UTC to the second)."""
    table = Table(title=listing.title)
    for column in listing.columns:
        kind = listing.kinds.get(column)
        table.add_column(_HEADERS.get(column, column), justify="right" if kind in _RIGHT else "left",
                         no_wrap=kind in ("timestamp", "money", "price", "integer", "code"))
    for row in listing.rows:
        table.add_row(*(_cell(listing, row, c, export=False) for c in listing.columns))
    return table


def listing_csv(listing: Listing) -> str:
    """CSV with a header row; money with its currency's minor units, times ISO 8601 UTC."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(listing.columns)
    writer.writerows([_cell(listing, row, c, export=True) for c in listing.columns] for row in listing.rows)
    return out.getvalue()


def listing_json(listing: Listing) -> str:
    """A JSON array of objects: numbers and booleans as JSON, money as exact decimal text."""
    rows = [{c: _json_cell(listing, row, c) for c in listing.columns} for row in listing.rows]
    return json.dumps(rows, indent=2, ensure_ascii=False) + "\n"


_ARROW_TYPES = {"money": pa.decimal128(38, 6), "price": pa.decimal128(38, 6), "integer": pa.int64(),
                "boolean": pa.bool_(), "timestamp": pa.timestamp("us", tz="UTC"), "text": pa.string(),
                "code": pa.string()}


def arrow_table(listing: Listing) -> pa.Table:
    """``listing`` as an Arrow table: money as decimal128(38, 6), timestamps in UTC, numbers
    and booleans typed (never strings)."""
    schema = pa.schema([(c, _ARROW_TYPES[listing.kinds.get(c, "text")]) for c in listing.columns])
    columns = {c: [row.get(c) for row in listing.rows] for c in listing.columns}
    return pa.Table.from_pydict(columns, schema=schema)


def write_parquet(listing: Listing, path: Path) -> None:
    """``listing`` as a Parquet file (readable by pyarrow, DuckDB, pandas)."""
    pq.write_table(arrow_table(listing), path)


def render(listing: Listing, fmt: str) -> Table | str:
    """``listing`` as a rich table, CSV or JSON text."""
    if fmt == "table":
        return listing_table(listing)
    if fmt == "csv":
        return listing_csv(listing)
    if fmt == "json":
        return listing_json(listing)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


# --- xDRs ---------------------------------------------------------------------------------

SUMMARY_COLUMNS: tuple[str, ...] = ("attempted_at", "account", "destination", "billing_units", "amount",
                                    "currency")
"""The columns of the default xDR table: what fits an 80-column terminal."""

XDR_KINDS: Mapping[str, str] = {**column_kinds(Xdr.__table__), "unit_price": "price"}
_XDR_CURRENCY = {"vendor_cost": "vendor_currency"}


def xdr_listing(rows: Sequence[Mapping[str, Any]], environment: str,
                columns: Sequence[str] = SUMMARY_COLUMNS) -> Listing:
    return Listing(f"xDRs ({environment}, {len(rows)} rows, times in UTC)", tuple(columns), rows, XDR_KINDS,
                   _XDR_CURRENCY)


REVISION_SUMMARY_COLUMNS: tuple[str, ...] = ("attempted_at", "account", "revision", "amount", "difference",
                                             "currency")
"""The columns of the default revisions table (fits an 80-column terminal): each revision of
an attempt, what it charges and what it changed."""

REVISION_KINDS: Mapping[str, str] = {**column_kinds(XdrRevision.__table__), "unit_price": "price"}


def revision_listing(rows: Sequence[Mapping[str, Any]], environment: str,
                     columns: Sequence[str] = REVISION_SUMMARY_COLUMNS) -> Listing:
    """``imbill xdr --revisions``: every revision of the xDRs (a charge and its corrections)."""
    return Listing(f"xDR revisions ({environment}, {len(rows)} rows, times in UTC)", tuple(columns), rows,
                   REVISION_KINDS, _XDR_CURRENCY)


def xdr_aggregate_listing(rows: Sequence[Mapping[str, Any]], environment: str, by: str) -> Listing:
    return Listing(f"xDRs by {by} ({environment}, times in UTC)",
                   (by, "currency", "xdrs", "billing_units", "amount"), rows, AGGREGATE_KINDS)


def format_xdrs(rows: Sequence[Mapping[str, Any]], fmt: Literal["table", "csv", "json"] = "table") -> str:
    """Every column of xDR rows as CSV with a header or a JSON array (money with the
    currency's minor units, timestamps ISO 8601 UTC), or a plain text table of the summary
    columns."""
    if fmt == "table":
        return _plain_table(xdr_listing(rows, ""))
    return str(render(xdr_listing(rows, "", _columns(rows)), fmt))


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(rows[0]) if rows else list(XDR_COLUMNS)


def _plain_table(listing: Listing) -> str:
    columns = listing.columns
    cells = [[_cell(listing, row, c, export=False) for c in columns] for row in listing.rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]

    def line(values: Iterable[str]) -> str:
        return "  ".join(v.rjust(w) if listing.kinds.get(c) in _RIGHT else v.ljust(w)
                         for c, v, w in zip(columns, values, widths)).rstrip()

    return "\n".join([line(columns), line("-" * w for w in widths), *map(line, cells)]) + "\n"


# --- operators: balances, rejections, accounts --------------------------------------------

def balance_listing(rows: Sequence[Mapping[str, Any]], environment: str) -> Listing:
    return Listing(f"Balances ({environment}, times in UTC)", tuple(BALANCE_KINDS), rows, BALANCE_KINDS)


REJECTION_SUMMARY = ("attempted_at", "account", "to_user", "reason_code", "message")


def rejection_listing(rows: Sequence[Mapping[str, Any]], environment: str, wide: bool = False) -> Listing:
    columns = REJECTION_COLUMNS if wide else REJECTION_SUMMARY
    return Listing(f"Rejected attempts ({environment}, {len(rows)} rows, times in UTC)", columns, rows,
                   {**column_kinds(RejectedAttempt.__table__), "reason_code": "code"})


def registration_listing(rows: Sequence[Mapping[str, Any]], environment: str) -> Listing:
    count = f"{len(rows)} live binding{'' if len(rows) == 1 else 's'}"
    return Listing(f"Registrations ({environment}, {count}, times in UTC)", REGISTRATION_COLUMNS,
                   rows, {**column_kinds(Registration.__table__), "contact": "code"})


ACCOUNT_COLUMNS = ("account", "customer", "currency", "product", "balance_model", "opening_balance",
                   "credit_limit", "service_policy", "aliases")


def account_listing(env: EnvironmentConfig | None, environment: str) -> Listing:
    """The accounts of the config in force (service passwords never shown)."""
    accounts = sorted(env.accounts.values(), key=lambda a: a.account_id) if env else []
    rows = [{"account": a.account_id, "customer": a.customer, "product": a.product,
             "currency": env.customers[a.customer].currency if env and a.customer in env.customers else "",
             "balance_model": a.balance_model, "opening_balance": a.opening_balance,
             "credit_limit": a.credit_limit, "service_policy": a.service_policy, "aliases": ", ".join(a.aliases)}
            for a in accounts]
    return Listing(f"Accounts ({environment})", ACCOUNT_COLUMNS, rows,
                   {"opening_balance": "money", "credit_limit": "money"})


def text_listing(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Listing:
    """A listing of rows that are already text (catalogues)."""
    return Listing(title, tuple(columns), [dict(zip(columns, row)) for row in rows])


# --- policy explain -----------------------------------------------------------------------

def explanation(result: Explanation, rated: Rated | Refusal, *, account: str, to: str, environment: str,
                fmt: str = "table") -> list[Table | str]:
    """``imbill policy explain``: the policies and their roles, the effective attributes and
    their sources, and how a message sent now would be rated (``rated``). As ``csv``: the
    effective attributes; as ``json``: one object with all three."""
    policies = text_listing(f"Service policies for {account} -> {to} ({environment})",
                            ("service policy", "role", "match priority", "pattern"),
                            [(r.name, r.role, str(r.match_priority), r.pattern or "") for r in result.policies])
    attributes = text_listing("Effective attributes", ("attribute", "value", "source", "static", "dynamic", "default"),
                              [(r.attribute, text(r.value, EXPLAIN), r.source,
                                *(text(v, EXPLAIN) for v in (r.static_value, r.dynamic_value, r.default)))
                               for r in result.attributes])
    if fmt == "csv":
        return [listing_csv(attributes)]
    if fmt == "json":
        return [json.dumps({"policies": policies.rows, "attributes": attributes.rows, "outcome": _outcome(rated)},
                           indent=2, ensure_ascii=False) + "\n"]
    return [listing_table(policies), listing_table(attributes), _outcome(rated)]


def _outcome(rated: Rated | Refusal) -> str:
    if isinstance(rated, Refusal):
        return f"A message sent now would be rejected: {rated.reason_code} ({rated.message})"
    where = "on-net" if rated.on_net else "off-net"
    cost = f"{money(rated.vendor_cost, rated.vendor_currency)} {rated.vendor_currency}"
    vendor = f", via {rated.vendor} / {rated.connection} (cost {cost})" if rated.vendor else ""
    return (f"A message sent now is {where} to {rated.destination}: rate code {rated.rate_code} in tariff "
            f"{rated.tariff}, {money(rated.unit_price, rated.currency)} {rated.currency} per billing unit{vendor}")


# --- what an event caused -----------------------------------------------------------------

def sip_answer_text(status: int, reason: str, raw: bytes) -> str:
    """A SIP answer as `imbill send` prints it: the status, and the text of its Warning (why
    the edge refused: a suspended account, a blocked address, ...)."""
    warnings = [value for value in response_headers(raw, "Warning") if value.count('"') >= 2]
    why = warnings[0].split('"', 1)[1].rsplit('"', 1)[0].replace('\\"', '"') if warnings else ""
    return f"{status} {reason}: {why}" if why else f"{status} {reason}"


def outcome_text(event: str, record: Mapping[str, Any]) -> str:
    """One line for what the processor made of a message or a payment."""
    currency = record.get("currency", "")
    if event == "Charge":
        amount = f"{money(record['amount'], currency)} {currency}"
        if record.get("direction") == "incoming":
            return f"incoming to {record['account']}: recorded, charged {amount}"
        units = record["billing_units"]
        where = "on-net" if record.get("on_net") else "off-net"
        return (f"charged {amount} to {record['account']}: {units} billing unit{'s' if units != 1 else ''}, "
                f"{where} to {record['destination']} (rate code {record['rate_code']}, tariff {record['tariff']}, "
                f"{money(record['unit_price'], currency)} {currency} per unit)")
    if event == "BalanceChanged":
        return (f"balance of {record['account']}: {money(record['balance'], currency)} {currency} "
                f"(+{money(record['delta'], currency)} {currency})")
    if event == "PaymentRejected":
        return f"payment rejected: {record['reason_code']}: {record['message']}"
    return f"rejected: {record.get('reason_code')}: {record.get('message')}"


# --- reconcile ----------------------------------------------------------------------------

RECONCILE_COLUMNS = ("account", "check", "expected", "found", "detail")


def reconcile_listing(differences: Iterable[Any], environment: str) -> Listing:
    """One row per difference (an account and a check): ``imbill reconcile``'s listing."""
    rows = [{column: getattr(difference, column) for column in RECONCILE_COLUMNS} for difference in differences]
    return Listing(f"Differences ({environment}, {len(rows)})", RECONCILE_COLUMNS, rows,
                   {"account": "code", "check": "code"})


def reconcile_summary(result: Any, environment: str, projection: str) -> str:
    """The one line that ends ``imbill reconcile``: clean, or how many differences."""
    checked = f"{_count(result.accounts, 'account')}, {_count(result.attempts, 'attempt')} checked in " \
              f"{environment} from the topics; projection: {projection}"
    if result.clean:
        return f"clean: {checked}"
    accounts = len({difference.account for difference in result.differences})
    return f"{_count(len(result.differences), 'difference')} in {_count(accounts, 'account')}: {checked}"


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


# --- rerate -------------------------------------------------------------------------------

RERATE_CHANGE_COLUMNS = ("attempt_id", "account", "customer", "currency", "old_units", "new_units", "old_price",
                         "new_price", "old_amount", "new_amount", "difference", "old_rate_code", "new_rate_code",
                         "revision", "reason")
_RERATE_KINDS = {"attempt_id": "code", "old_units": "integer", "new_units": "integer", "old_price": "price",
                 "new_price": "price", "old_amount": "money", "new_amount": "money", "difference": "money",
                 "revision": "integer", "old_total": "money", "new_total": "money", "scanned": "integer",
                 "rerated": "integer", "changed": "integer", "appended": "integer", "started_at": "timestamp",
                 "at": "timestamp", "config_as_of": "timestamp", "run_id": "code"}


def _change_row(change: Any) -> dict[str, Any]:
    old, new = change.old, change.new
    return {"attempt_id": new.attempt_id, "account": new.account, "customer": new.customer, "currency": new.currency,
            "old_units": change.old_units, "new_units": new.billing_units,
            "old_price": getattr(old, "unit_price", None), "new_price": new.unit_price,
            "old_amount": change.old_amount, "new_amount": new.amount, "difference": new.difference,
            "old_rate_code": getattr(old, "rate_code", None), "new_rate_code": new.rate_code,
            "revision": new.revision, "reason": change.reason}


def rerate_changes_listing(changes: Iterable[Any], title: str) -> Listing:
    """Every changed attempt of a re-rating: old and new units, price, amount and rate code."""
    return Listing(title, RERATE_CHANGE_COLUMNS, [_change_row(c) for c in changes], _RERATE_KINDS)


def rerate_listings(report: Any) -> list[Listing]:
    """``imbill rerate``'s summary: the counts, the totals per customer and currency, and the
    10 largest changes."""
    run = report.run
    what = "dry run, nothing appended" if report.dry_run else run.state
    counts = Listing(f"Re-rating {run.run_id} ({what})", ("scanned", "rerated", "changed", "appended"),
                     [{"scanned": run.scanned, "rerated": run.rerated, "changed": run.changed,
                       "appended": report.appended}], _RERATE_KINDS)
    totals = Listing("Totals of the re-rated attempts", ("customer", "currency", "old_total", "new_total", "difference"),
                     [{"customer": customer, "currency": currency, "old_total": line.old, "new_total": line.new,
                       "difference": line.difference}
                      for (customer, currency), line in sorted(report.totals.items())], _RERATE_KINDS)
    largest = rerate_changes_listing(report.largest(10), "The largest changes")
    columns = ("attempt_id", "account", "old_amount", "new_amount", "difference", "reason")
    return [counts, totals, Listing(largest.title, columns, largest.rows, _RERATE_KINDS)]


RERATE_RUN_COLUMNS = ("run_id", "state", "requested_by", "started_at", "changed", "appended", "differences")


def _run_row(run: Any) -> dict[str, Any]:
    row = {name: getattr(run, name) for name in ("run_id", "state", "requested_by", "at", "started_at", "filter",
                                                 "config_as_of", "scanned", "rerated", "changed", "appended")}
    row["differences"] = ", ".join(f"{currency} {money(Decimal(total), currency)}"
                                   for currency, total in sorted(run.differences.items()))
    return row


def rerate_runs_listing(runs: Iterable[Any]) -> Listing:
    """``imbill rerate list``: every run as its latest state."""
    rows = [_run_row(run) for run in runs]
    return Listing(f"Re-rating runs ({len(rows)})", RERATE_RUN_COLUMNS, rows, _RERATE_KINDS)


def rerate_run_listing(run: Any) -> Listing:
    """``imbill rerate show RUN``: one run, every field."""
    row = _run_row(run)
    return Listing(f"Re-rating run {run.run_id}", ("field", "value"),
                   [{"field": name, "value": _cell(Listing("", (), [], _RERATE_KINDS), row, name, export=False)}
                    for name in row], {"field": "code"})
