"""``imbill rerate``: find the attempts of a period on the attempts topic, re-rate each with the
live rules against the config known now (:mod:`imbill.domain.rerate`), and append one
correction per changed attempt for the processor to apply.

A run is idempotent and resumable without any state of its own beyond the topics:

- the latest outcome of an attempt is read from the charges and rejections topics *and* the
  corrections topic, so a correction appended by an earlier try (applied by the processor or
  not yet) is what a resumed run compares with: it is not made again;
- a correction's id is (attempt id, revision), and the processor applies an id once;
- a resumed run (``--resume RUN``) uses the run's recorded start, filter and config record
  time, so the corrections it makes are the same records.

The run is recorded as RerateRun events (started, then finished once every correction it made
is on the charges topic, i.e. applied by the account's single writer).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import partial
from typing import Callable, Container, Iterable, Iterator, Protocol

from imbill.bus import EventProducer, append_all, check_reachable, offsets_at, read_raw, record_count
from imbill.domain.config import ConfigState
from imbill.domain.errors import ImbillError
from imbill.domain.events import Charge, MessageAttempt, Rejection, RerateRun
from imbill.domain.keys import account_key
from imbill.domain.money import ZERO
from imbill.domain.rerate import Correction, Outcome, RerateFilter, latest_outcomes, rerate, run_id_of
from imbill.producers.config_publisher import current_state
from imbill.schemas.codec import decode, decode_event, encode_event, leading_strings, writer_name
from imbill.settings import Settings

__all__ = ["SINCE_MARGIN", "Progress", "QUIET", "Totals", "RerateReport", "rerate_period", "runs", "find_run"]

SINCE_MARGIN = timedelta(hours=1)
"""How far before the period's start the topics are read: an attempt is appended when the
edge takes it, its outcome later; a record's timestamp is its append time."""
READ_TIMEOUT = 3_600.0
"""Seconds one topic may take to be read to its end."""


class Progress(Protocol):
    """Where a run says how far it got: one stage at a time, with its size when known."""

    def stage(self, name: str, total: int | None) -> Callable[[int], None]: ...


class _Quiet:
    def stage(self, name: str, total: int | None) -> Callable[[int], None]:
        return lambda done: None


QUIET: Progress = _Quiet()


@dataclass
class Totals:
    """Per customer and currency: the re-rated attempts' amounts before and after."""

    old: Decimal = ZERO
    new: Decimal = ZERO

    @property
    def difference(self) -> Decimal:
        return self.new - self.old


@dataclass
class RerateReport:
    """What a run found and did."""

    run: RerateRun
    dry_run: bool
    corrections: list[Correction] = field(default_factory=list)
    """Every changed attempt's correction made by this run (also by an earlier try of it)."""
    totals: dict[tuple[str, str], Totals] = field(default_factory=dict)
    earlier: set[str] = field(default_factory=set)
    """The ids of the corrections an earlier try of the run appended already."""
    appended: int = 0
    """Corrections appended by this call (the others were by an earlier try)."""
    already_finished: bool = False

    def largest(self, count: int = 10) -> list[Correction]:
        return sorted(self.corrections, key=lambda c: (-abs(c.new.difference or ZERO), c.new.attempt_id))[:count]


def rerate_period(settings: Settings, re_filter: RerateFilter | None, *, dry_run: bool, requested_by: str,
                  resume: str | None = None, progress: Progress = QUIET, wait: float = 120.0,
                  now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> RerateReport:
    """Re-rate the attempts ``re_filter`` selects (or resume run ``resume``); a dry run
    appends nothing. A real run waits up to ``wait`` seconds for the processor to apply its
    corrections before it records itself finished."""
    check_reachable(settings.bootstrap_servers)
    if resume is not None:
        started = find_run(settings, resume)
        if started.state == "finished":
            return RerateReport(started, dry_run, already_finished=True)
        re_filter, started_at, as_of = RerateFilter.from_json(started.filter), started.started_at, started.config_as_of
    else:
        assert re_filter is not None, "a new run has a filter"
        started_at = as_of = _to_millis(now())
        started = RerateRun(run_id=run_id_of(started_at, re_filter, as_of), state="started",
                            requested_by=requested_by, at=started_at, started_at=started_at,
                            filter=re_filter.as_json(), config_as_of=as_of)
    if not dry_run and resume is None:
        _publish(settings, started)  # first: a run killed from here on is found by `rerate list`
    config = current_state(settings.bootstrap_servers, settings.topics, as_of=as_of)
    report = _compare(settings, re_filter, config, started, progress, dry_run)
    if dry_run:
        return report
    fresh = [c.new for c in report.corrections if c.new.charge_id not in report.earlier]
    report.appended = append_all(settings.bootstrap_servers, settings.topics.corrections,
                                 ((account_key(c.environment, c.account), encode_event(c)) for c in fresh),
                                 done=progress.stage("appending corrections", len(fresh)))
    _await_applied(settings, re_filter, {c.new.charge_id for c in report.corrections}, wait, progress)
    finished = _finished(started, report, now())
    _publish(settings, finished)
    report.run = finished
    return report


def _publish(settings: Settings, run: RerateRun) -> None:
    producer = EventProducer(settings.bootstrap_servers)
    try:
        producer.publish_event(settings.topics.rerate_runs, run.run_id.encode(), run)
    finally:
        producer.close()


def _compare(settings: Settings, re_filter: RerateFilter, config: ConfigState, started: RerateRun,
             progress: Progress, dry_run: bool) -> RerateReport:
    """Scan the period's attempts and their latest outcomes; re-rate each (the report's
    corrections are this run's, earlier tries' included)."""
    since = _millis(re_filter.start - SINCE_MARGIN)
    attempts = _attempts(settings, re_filter, since, progress)
    outcomes = latest_outcomes(_outcomes(settings, since, progress, attempts), wanted=attempts)
    report = RerateReport(started, dry_run)
    advance, rerated = progress.stage("re-rating", len(outcomes)), 0
    for number, (attempt_id, old) in enumerate(outcomes.items(), 1):
        attempt = attempts[attempt_id]
        earlier = _earlier_correction(old, started.run_id)
        change = earlier or rerate(attempt, old, config, run_id=started.run_id, rated_at=started.started_at)
        new = change.new if change is not None else None
        if re_filter.selects(old if earlier is None else earlier.old, new):
            rerated += 1
            _add_totals(report.totals, old if earlier is None else earlier.old, new)
            if change is not None:
                report.corrections.append(change)
                if earlier is not None:
                    report.earlier.add(change.new.charge_id)
        if number % 1_000 == 0:
            advance(1_000)
    advance(len(outcomes) % 1_000)
    report.run = _counted(started, len(attempts), rerated, report)
    return report


def _earlier_correction(latest: Outcome, run_id: str) -> Correction | None:
    """The correction an earlier try of this run appended (the attempt's latest outcome), as
    this run's change of the attempt: the outcome it superseded is not at hand, so the
    correction stands for it with its difference."""
    if type(latest) is not Charge or latest.rerate_run != run_id:
        return None
    before = Decimal(latest.amount) - (latest.difference or ZERO)
    return Correction(_superseded(latest, before), latest, "appended by an earlier try of this run")


def _superseded(correction: Charge, amount: Decimal) -> Charge:
    """What a correction superseded, as far as totals need it: its amount."""
    return replace(correction, amount=amount, charge_id=correction.corrects or "", kind="charge")


def _add_totals(totals: dict[tuple[str, str], Totals], old: Outcome, new: Charge | None) -> None:
    source = new if new is not None else old
    if type(source) is not Charge:
        return  # refused before and now: no money either way
    line = totals.setdefault((source.customer, source.currency), Totals())
    old_amount = old.amount if type(old) is Charge else ZERO
    line.old += old_amount
    line.new += new.amount if new is not None else old_amount


def _counted(run: RerateRun, scanned: int, rerated: int, report: RerateReport) -> RerateRun:
    differences: dict[str, Decimal] = defaultdict(Decimal)
    for change in report.corrections:
        differences[change.new.currency] += change.new.difference or ZERO
    return replace(run, scanned=scanned, rerated=rerated, changed=len(report.corrections),
                   differences={currency: str(total) for currency, total in sorted(differences.items())})


def _finished(run: RerateRun, report: RerateReport, at: datetime) -> RerateRun:
    return replace(report.run, state="finished", at=_to_millis(at), appended=report.appended)


def _attempts(settings: Settings, re_filter: RerateFilter, since: int, progress: Progress) -> dict[str, MessageAttempt]:
    """The period's attempts by id (the first copy of each)."""
    found: dict[str, MessageAttempt] = {}
    for attempt in _events(settings, settings.topics.attempts, since, progress, "reading attempts"):
        if type(attempt) is MessageAttempt and re_filter.takes(attempt) and attempt.attempt_id not in found:
            found[attempt.attempt_id] = attempt
    return found


def _outcomes(settings: Settings, since: int, progress: Progress, wanted: Container[str]) -> Iterator[Outcome]:
    """Every charge, correction and rejection appended since ``since`` (ms) of an attempt in
    ``wanted``. A record of another attempt, or of another type, is left without decoding it
    (its header and its leading ids say so): a period's attempts are often few of a topic's."""
    topics = settings.topics
    for topic, stage in ((topics.charges, "reading charges"), (topics.corrections, "reading corrections"),
                         (topics.rejections, "reading rejections")):
        for event in _events(settings, topic, since, progress, stage, partial(_of_wanted, wanted)):
            if type(event) in (Charge, Rejection):
                yield event


_OUTCOME_NAMES = frozenset({"Charge", "Rejection"})


def _of_wanted(wanted: Container[str], value: bytes) -> bool:
    """Whether a record may be an outcome of a wanted attempt: a Charge or a Rejection whose
    attempt id (its second string) is wanted; one whose ids cannot be read is decoded, to be
    left out as before (a record of no schema known here would not decode either)."""
    if writer_name(value) not in _OUTCOME_NAMES:
        return False
    ids = leading_strings(value, 2)
    return ids is None or ids[1] in wanted


def _events(settings: Settings, topic: str, since: int, progress: Progress, stage: str,
            worth: Callable[[bytes], bool] = lambda value: True) -> Iterator[object]:
    """The events of ``topic`` appended since ``since`` (ms) whose record is ``worth``
    decoding. A record that is no event is left out: the processor and the projectors said
    what it is where it came in."""
    starts = offsets_at(settings.bootstrap_servers, topic, since)
    advance = progress.stage(stage, record_count(settings.bootstrap_servers, topic, starts))
    for records in read_raw(settings.bootstrap_servers, topic, starts, timeout=READ_TIMEOUT):
        for _, _, _, value in records:
            if not value or not worth(value):
                continue
            try:
                yield decode_event(value)
            except ImbillError:
                continue
        advance(len(records))


def _await_applied(settings: Settings, re_filter: RerateFilter, ids: set[str], wait: float,
                   progress: Progress) -> None:
    """Wait until every correction id in ``ids`` is on the charges topic: applied by the
    processor, the account's single writer."""
    if not ids:
        return
    topic, missing = settings.topics.charges, set(ids)
    advance = progress.stage("applied by the processor", len(ids))
    starts = offsets_at(settings.bootstrap_servers, topic, _millis(re_filter.start - SINCE_MARGIN))
    deadline = time.monotonic() + wait
    while True:
        for records in read_raw(settings.bootstrap_servers, topic, starts, timeout=READ_TIMEOUT):
            applied = _applied(records, missing)
            missing -= applied
            advance(len(applied))
            for partition, offset, _, _ in records:
                starts[partition] = max(starts.get(partition, 0), offset + 1)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise ImbillError(f"{len(missing):,} of {len(ids):,} corrections are not applied yet after {wait:g} s "
                              f"(is `imbill process` running?); they are on {settings.topics.corrections}: "
                              f"run `imbill rerate --resume` with the run id later to finish the run")
        time.sleep(0.5)


def _applied(records: Iterable[tuple[int, int, bytes | None, bytes | None]], missing: set[str]) -> set[str]:
    """The ids of ``missing`` that ``records`` (of the charges topic) hold as Charges. Only
    a record whose leading charge id is missing is decoded (to be sure it is a whole
    Charge): the others, the bulk of the topic, cost a header look-up and a string."""
    found = set()
    for _, _, _, value in records:
        if not value or writer_name(value) != "Charge":
            continue
        ids = leading_strings(value, 1)
        if ids is None or ids[0] not in missing:
            continue
        try:
            name, record = decode(value)
        except ImbillError:
            continue
        if name == "Charge" and record.get("charge_id") in missing:
            found.add(record["charge_id"])
    return found


def runs(settings: Settings) -> list[RerateRun]:
    """Every re-rating run, as its latest state, oldest first."""
    check_reachable(settings.bootstrap_servers)
    latest: dict[str, RerateRun] = {}
    for records in read_raw(settings.bootstrap_servers, settings.topics.rerate_runs, {}):
        for _, _, _, value in records:
            try:
                run = decode_event(value or b"")
            except ImbillError:
                continue
            if type(run) is RerateRun:
                latest[run.run_id] = run
    return sorted(latest.values(), key=lambda r: (r.started_at, r.run_id))


def find_run(settings: Settings, run_id: str) -> RerateRun:
    for run in runs(settings):
        if run.run_id == run_id:
            return run
    raise ImbillError(f"no re-rating run {run_id!r} (see `imbill rerate list`)")


def _to_millis(moment: datetime) -> datetime:
    """``moment`` as the events hold it (timestamp-millis): a resumed run's start, read back
    from its RerateRun, is then the same instant, and so are its corrections."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
