"""The config publisher: a declarative file -> the minimal list of config change events.

``imbill config apply FILE`` reads the config topic to its end, folds it into the config
in force (:func:`imbill.domain.config.fold`), compares the file's environment with it and
appends only the events that change it, so applying the same file twice appends nothing:

- one ``<Kind>Defined``/``Set`` event per object that is new or differs from the one in
  force (the event carries the object's whole new value);
- one ``ConfigObjectRemoved`` per object of the environment that the file no longer has,
  **except rates**: rates are history (the rate in force at the moment of an attempt
  applies, and re-rating needs the old ones), so a rate missing from the file stays; a
  price changes by a new rate with a later ``effective_from``. Rates of a removed tariff
  stay too, which is why a tariff name keeps its first currency forever (below).

A rate of the file with the ``effective_from`` of a known rate and another price is a
**correction** of the past (:mod:`imbill.domain.bitemporal`): its RateDefined is appended
like any change, and replaces the old price for what is known from then on, while the
old price still answers "as of" any earlier record time. A rate whose ``effective_from``
is before the moment it is applied is **retroactive**: attempts rated in between kept the
rate in force when they were processed. Both are said in :attr:`ApplyResult.notes`, never
refused. ``imbill rate set`` (:func:`set_rate`) appends one rate through the same checks.

Events are ordered so that an object comes after every object it refers to (:data:`PLAN_ORDER`:
service types, dialing rules, SIP settings, destinations, tariffs, rates, service policies, vendors,
vendor connections, products, customers, accounts); removals come after all definitions,
in the reverse order, so nothing in force ever refers to an object that is gone.

What the file alone cannot tell is checked against the history: a tariff's currency "may
be chosen only once, and cannot be changed later", even across a removal and a new
definition of the same name. Everything is validated and every event encoded before the
first one is appended; nothing is appended when anything is invalid. Each event is
acknowledged by the broker before the next is sent (key = environment, on the single
config partition). If the broker fails half way, applying the file again appends the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from os import PathLike
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

from imbill.bus import Envelope, EventProducer, read_to_end
from imbill.producers.config_file import ConfigFileError, DesiredConfig, load_config_file
from imbill.schemas.codec import encode
from imbill.domain.bitemporal import correction_of, known_as_of
from imbill.domain.config import (KIND_BY_EVENT, KIND_BY_NAME, SKIPPABLE, ConfigState, EnvironmentConfig, Kind, Rate,
                                  fold, from_record, object_key, refusal_of, to_record,
                                  with_product_from)
from imbill.domain.errors import ConfigError
from imbill.schemas.topics import Topics

__all__ = ["PLAN_ORDER", "NEVER_REMOVED", "ApplyResult", "HistoryEntry", "plan_changes", "notes_of",
           "apply_config", "set_rate", "set_account_product", "with_known_histories", "history_notes",
           "current_state", "recorded_at", "config_history", "config_refusals",
           "tariff_currencies", "event_label"]

PLAN_ORDER: tuple[Kind, ...] = tuple(KIND_BY_NAME[name] for name in (
    "service_types", "dialing_rules", "sip_settings", "destination", "tariff", "rate", "service_policy", "vendor",
    "vendor_connection", "product", "customer", "account"))
"""Kinds in the order their events are appended: what is referred to comes first."""

MAX_EVENT_BYTES = 900_000
"""The largest config event appended: below the broker's default 1 MiB request size with room
for the batch and request headers, so a plan is refused whole rather than cut half-way."""

NEVER_REMOVED = frozenset({"rate"})
"""Kinds that a file never removes: rates are history."""

Event = tuple[str, dict[str, Any]]

log = logging.getLogger(__name__)


def _new_event_id() -> str:
    return uuid.uuid4().hex


def event_label(kind_name: str, key: str) -> str:
    """``"tariff:On-net messaging"``, ``"service_types"`` (singletons have no key)."""
    return f"{kind_name}:{key}" if key else kind_name


def _label_of(name: str, record: Mapping[str, Any]) -> str:
    """The ``event_label`` of the object an event defines or removes ("" for other events)."""
    if name == "ConfigObjectRemoved":
        return event_label(record["kind"], record["key"])
    if name not in KIND_BY_EVENT:
        return ""
    kind = KIND_BY_EVENT[name]
    return event_label(kind.name, kind.key(from_record(kind, record)))


# --- planning (pure) ----------------------------------------------------------------------

def plan_changes(desired: DesiredConfig, current: EnvironmentConfig | None, *, now: datetime,
                 currencies: Mapping[str, str] | None = None,
                 new_event_id: Callable[[], str] = _new_event_id,
                 others: Mapping[str, EnvironmentConfig] | None = None) -> list[Event]:
    """The events that turn ``current`` (the environment in force, None if it has no events
    yet) into ``desired``, in :data:`PLAN_ORDER`; [] when nothing changes.

    ``currencies`` is the first currency each tariff name of the environment ever had
    (:func:`tariff_currencies` of the history); by default the tariffs in force. ``others``:
    every environment in force, against which the plan is folded too (no two environments
    serve one SIP domain). Raises ConfigError when the desired config contradicts them.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    current = current or EnvironmentConfig(desired.environment)
    _check_currencies(desired, current, currencies)
    desired = with_known_histories(desired, current)

    def event(name: str, body: Mapping[str, Any]) -> Event:
        return name, {"event_id": new_event_id(), "environment": desired.environment, "occurred_at": now, **body}

    events = [event(kind.event, to_record(obj))
              for kind in PLAN_ORDER
              for key, obj in desired.config.collection(kind).items()
              if current.collection(kind).get(key) != obj]
    events += [event("ConfigObjectRemoved", {"kind": kind.name, "key": key})
               for kind in reversed(PLAN_ORDER) if kind.name not in NEVER_REMOVED
               for key in sorted(current.collection(kind)) if key not in desired.config.collection(kind)]
    _check_folds(desired, current, events, others or {})
    return events


def with_known_histories(desired: DesiredConfig, current: EnvironmentConfig) -> DesiredConfig:
    """``desired`` whose accounts that list no ``product_history`` keep the one in force (what
    ``imbill account product`` appended is not erased by a file that says nothing of it).
    A file that changes such an account's product without a history is refused: since when
    the new product applies is what the history says, and only the operator knows it."""
    accounts, problems = dict(desired.config.accounts), []
    for account_id in sorted(desired.unstated_histories & accounts.keys()):
        known, wanted = current.accounts.get(account_id), accounts[account_id]
        if known is None or not known.product_history:
            continue
        if known.product != wanted.product:
            problems.append(f'account "{account_id}": product: changes from "{known.product}" to "{wanted.product}" '
                            "but the account has a product history: list its product_history in the file, or "
                            "say since when with imbill account product")
            continue
        accounts[account_id] = dataclasses.replace(wanted, product_history=known.product_history)
    if problems:
        raise ConfigFileError(desired.source, problems)
    if accounts == desired.config.accounts:
        return desired
    return dataclasses.replace(desired, config=dataclasses.replace(desired.config, accounts=accounts,
                                                                   derived_by_name={}))


def history_notes(desired: DesiredConfig, events: Iterable[Event]) -> dict[str, str]:
    """The AccountDefined events of ``events`` that carry a product history the file did not list."""
    return {_label_of(name, record): "product_history kept: the file lists none"
            for name, record in events
            if name == "AccountDefined" and record["product_history"]
            and record["account_id"] in desired.unstated_histories}


def _check_folds(desired: DesiredConfig, current: EnvironmentConfig, events: list[Event],
                 others: Mapping[str, EnvironmentConfig]) -> None:
    """Fold the plan over the config in force, in order, with the readers' own fold: a plan
    one of its events would be refused from (a reference the fold does not find, the removal
    of an object still referred to, a SIP domain another environment serves) is refused
    whole, with the same reason."""
    state = ConfigState({**others, current.name: current})
    for name, record in events:
        try:
            state = state.apply(name, record)
        except SKIPPABLE as exc:
            reason, words = refusal_of(exc)
            raise ConfigFileError(desired.source, [f"{_label_of(name, record)}: {words} ({reason})"]) from None


def _check_currencies(desired: DesiredConfig, current: EnvironmentConfig,
                      currencies: Mapping[str, str] | None) -> None:
    known = {t.name: t.currency for t in current.tariffs.values()} if currencies is None else currencies
    problems = [f'tariff "{name}": currency: cannot change from {known[name]} to '
                f"{tariff.currency} (a tariff's currency is set once)"
                for name, tariff in desired.config.tariffs.items()
                if name in known and known[name] != tariff.currency]
    if problems:
        raise ConfigFileError(desired.source, problems)


def tariff_currencies(events: Iterable[tuple[str, Mapping[str, Any]]], environment: str) -> dict[str, str]:
    """The first currency each tariff of ``environment`` was defined with, over its whole history."""
    first: dict[str, str] = {}
    for name, record in events:
        if name == "TariffDefined" and record["environment"] == environment:
            first.setdefault(record["name"], record["currency"])
    return first


# --- reading the config topic -------------------------------------------------------------

def _config_events(bootstrap_servers: str, topics: Topics) -> list[Envelope]:
    return list(read_to_end(bootstrap_servers, topics.config))


def _decoded(envelopes: Iterable[Envelope]) -> list[tuple[str, dict[str, Any]]]:
    """The events of the config topic. A record that cannot be decoded is skipped, as every
    reader of the topic skips it (the processor's too): it changes nothing in force, and
    ``imbill config history`` shows it with the reason."""
    events = []
    for envelope in envelopes:
        if envelope.record is None:
            log.warning("config record %s[%d]@%d skipped: %s", envelope.topic, envelope.partition, envelope.offset,
                        envelope.error)
            continue
        events.append((envelope.name, envelope.record))
    return events


def _skipped(name: str, record: Mapping[str, Any], exc: Exception) -> None:
    log.warning("config event %s %s skipped: %s", name, record.get("event_id", ""), exc)


def recorded_at(envelope: Envelope) -> datetime:
    """The record time of a config record: its Kafka timestamp (see domain.bitemporal)."""
    return datetime.fromtimestamp(envelope.timestamp_ms / 1000, timezone.utc)


def current_state(bootstrap_servers: str, topics: Topics, as_of: datetime | None = None) -> ConfigState:
    """The config of every environment as known now (or ``as_of`` a record time: the topic's
    prefix appended by then), folded with the same rules as every other reader
    (:meth:`ConfigState.applied`)."""
    envelopes = _config_events(bootstrap_servers, topics)
    return fold(_decoded(known_as_of(((recorded_at(e), e) for e in envelopes), as_of)), on_skip=_skipped)


class HistoryEntry(NamedTuple):
    """One event of the config topic, for ``imbill config history``."""

    offset: int
    recorded_at: datetime
    """The record time: when the broker took it (``--as-of`` of ``imbill config show``)."""
    occurred_at: datetime | None
    event: str
    environment: str
    key: str
    """``event_label`` of the object defined or removed (or why the record is unreadable)."""


def config_refusals(envelopes: Iterable[Envelope]) -> dict[int, tuple[str, str]]:
    """Offset -> (reason code, words) of every config record every reader skips: what
    ConfigEventRejected says of it (``refusal.CONFIG_REASON_CODES``)."""
    refused: dict[int, tuple[str, str]] = {}

    def records() -> Iterator[tuple[int, str, Mapping[str, Any]]]:
        for envelope in envelopes:
            if envelope.record is None:
                refused[envelope.offset] = ("undecodable_config", envelope.error or "")
            else:
                yield envelope.offset, envelope.name or "", envelope.record

    ConfigState().folded(records(), lambda offset, reason, words: refused.__setitem__(offset, (reason, words)))
    return refused


def _history_entry(envelope: Envelope, refusal: tuple[str, str] | None) -> HistoryEntry:
    record = envelope.record
    if record is None:
        return HistoryEntry(envelope.offset, recorded_at(envelope), None, "(undecodable)", "",
                            f"undecodable_config: {envelope.error or ''}")
    occurred_at = record.get("occurred_at")
    environment = record.get("environment") if type(record.get("environment")) is str else ""
    if refusal is not None:  # decodable, but skipped by every reader
        return HistoryEntry(envelope.offset, recorded_at(envelope),
                            occurred_at if isinstance(occurred_at, datetime) else None,
                            f"(refused {envelope.name})", environment, f"{refusal[0]}: {refusal[1]}")
    name = envelope.name or ""
    return HistoryEntry(envelope.offset, recorded_at(envelope), occurred_at, name, environment,
                        _label_of(name, record))


def config_history(bootstrap_servers: str, topics: Topics, environment: str | None = None) -> list[HistoryEntry]:
    """Every config event in topic order (of one environment, if given); a record every
    reader skips is shown as ``(undecodable)`` or ``(refused <event>)`` with its reason code."""
    envelopes = _config_events(bootstrap_servers, topics)
    refused = config_refusals(envelopes)
    entries = [_history_entry(e, refused.get(e.offset)) for e in envelopes]
    return [e for e in entries if environment is None or e.environment in (environment, "")]


# --- applying -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ApplyResult:
    """What ``imbill config apply`` appended: (event name, ``event_label``) in order, and
    what an operator should know of some of them (``event_label`` -> words): a correction
    of a known rate, a retroactive rate."""

    environment: str
    events: tuple[tuple[str, str], ...]
    notes: Mapping[str, str] = field(default_factory=dict)


def notes_of(current: EnvironmentConfig | None, events: Iterable[Event], now: datetime) -> dict[str, str]:
    """What each RateDefined of ``events`` means for the past: the correction of a known rate
    (the price it replaces), or a rate of a known tariff in force from before ``now``
    (retroactive: attempts may have been rated by that tariff since; a new tariff's rates
    from the past change no attempt, and are not said)."""
    notes = {}
    for name, record in events:
        if name != "RateDefined":
            continue
        rate = from_record(KIND_BY_NAME["rate"], record)
        corrected = correction_of(current, rate)
        if corrected is not None:
            was = ", ".join(f"{field_name} was {_shown(getattr(corrected, field_name))}"
                            for field_name in ("unit_price", "rating_mode", "description")
                            if getattr(corrected, field_name) != getattr(rate, field_name))
            notes[_label_of(name, record)] = f"correction: {was} for what was recorded before"
        elif rate.effective_from < now and current is not None and rate.tariff in current.tariffs:
            notes[_label_of(name, record)] = "retroactive: in force from before it was recorded"
    return notes


def _shown(value: Any) -> str:
    """A rate field in a note: a price as written (0.05), a text quoted."""
    return f"{value.normalize():f}" if isinstance(value, Decimal) else repr(value)


def _utc_now() -> datetime:
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)  # the topic keeps milliseconds


def apply_config(path: str | PathLike[str], *, bootstrap_servers: str, topics: Topics,
                 now: datetime | None = None) -> ApplyResult:
    """Validate ``path``, plan it against the config topic, then append the plan.

    Raises ConfigError (nothing appended) when the file is invalid or contradicts history.
    """
    desired = load_config_file(path)
    events = _decoded(_config_events(bootstrap_servers, topics))
    state = fold(events, on_skip=_skipped)
    current = state.environment(desired.environment)
    plan = plan_changes(desired, current, now=now or _utc_now(),
                        currencies=tariff_currencies(events, desired.environment), others=state.environments)
    for name, record in plan:  # refuse the whole plan before appending any of it
        if len(encode(name, record)) > MAX_EVENT_BYTES:
            raise ConfigFileError(desired.source, [f"{_label_of(name, record)}: the {name} event would be "
                                                   f"{len(encode(name, record)):,} bytes, over the broker's "
                                                   f"{MAX_EVENT_BYTES:,} (shorten its descriptions)"])
    if plan:
        _append(bootstrap_servers, topics.config, desired.environment, plan)
    return ApplyResult(desired.environment, tuple((name, _label_of(name, record)) for name, record in plan),
                       notes_of(current, plan, plan[0][1]["occurred_at"] if plan else _utc_now())
                       | history_notes(desired, plan))


def set_rate(environment: str, rate: Rate, *, bootstrap_servers: str, topics: Topics, description: str | None = None,
             now: datetime | None = None, new_event_id: Callable[[], str] = _new_event_id) -> ApplyResult:
    """Append one RateDefined for ``rate`` in ``environment`` (a new rate, or the correction
    of the known rate with its tariff, code and ``effective_from``), checked as ``config
    apply`` checks a file's rate: the environment has config, the tariff is known (the fold's
    reference check), the event fits the broker. ``description`` None keeps the known rate's
    description. Nothing is appended when the rate is known with this price already."""
    source = "rate set"
    current = fold(_decoded(_config_events(bootstrap_servers, topics)), on_skip=_skipped).environment(environment)
    if current is None:
        raise ConfigError(f"{source}: environment {environment} has no config (imbill config apply FILE)")
    known = current.rates.get(object_key(rate)[1])
    rate = dataclasses.replace(rate, description=description if description is not None
                               else known.description if known is not None else "")
    if known == rate:
        return ApplyResult(environment, ())
    now = now or _utc_now()
    event = ("RateDefined", {"event_id": new_event_id(), "environment": environment, "occurred_at": now,
                             **to_record(rate)})
    try:
        ConfigState({environment: current}).apply(*event)
    except SKIPPABLE as exc:
        reason, words = refusal_of(exc)
        raise ConfigError(f"{source}: {words} ({reason})") from None
    if len(encode(*event)) > MAX_EVENT_BYTES:
        raise ConfigError(f"{source}: the RateDefined event would be over {MAX_EVENT_BYTES:,} bytes "
                          f"(shorten its description)")
    _append(bootstrap_servers, topics.config, environment, [event])
    return ApplyResult(environment, (("RateDefined", _label_of(*event)),), notes_of(current, [event], now))


def set_account_product(environment: str, account_id: str, product: str, effective_from: datetime, *,
                        bootstrap_servers: str, topics: Topics, now: datetime | None = None,
                        new_event_id: Callable[[], str] = _new_event_id) -> ApplyResult:
    """Append one AccountDefined: the account known now, whose product is ``product`` from
    ``effective_from`` on (:func:`~imbill.domain.config.with_product_from`), checked by the
    fold's own rules (the product is known, in the customer's currency). Re-rating then rates
    the attempts received since ``effective_from`` with that product. Nothing is appended when
    the account has that product from then on already."""
    source = "account product"
    current = fold(_decoded(_config_events(bootstrap_servers, topics)), on_skip=_skipped).environment(environment)
    known = current.accounts.get(account_id) if current is not None else None
    if current is None or known is None:
        raise ConfigError(f"{source}: environment {environment}: unknown account {account_id!r}")
    if product not in current.products:
        raise ConfigError(f"{source}: environment {environment}: unknown product {product!r}")
    account = with_product_from(known, product, effective_from)
    if account == known:
        return ApplyResult(environment, ())
    event = ("AccountDefined", {"event_id": new_event_id(), "environment": environment,
                                "occurred_at": now or _utc_now(), **to_record(account)})
    try:
        ConfigState({environment: current}).apply(*event)
    except SKIPPABLE as exc:
        reason, words = refusal_of(exc)
        raise ConfigError(f"{source}: {words} ({reason})") from None
    if len(encode(*event)) > MAX_EVENT_BYTES:
        raise ConfigError(f"{source}: the AccountDefined event would be over {MAX_EVENT_BYTES:,} bytes")
    _append(bootstrap_servers, topics.config, environment, [event])
    return ApplyResult(environment, (("AccountDefined", _label_of(*event)),),
                       {_label_of(*event): f"product {product} from {effective_from.isoformat()}"})


def _append(bootstrap_servers: str, topic: str, key: str, plan: list[Event]) -> None:
    producer = EventProducer(bootstrap_servers)
    try:
        for name, record in plan:
            producer.publish(topic, key, name, record)
    finally:
        producer.close()


