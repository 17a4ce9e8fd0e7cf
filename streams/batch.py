"""Deciding a batch of attempts, payments or corrections: values in, the batch's decisions
out, no I/O.

:func:`bill_attempts`, :func:`top_up_payments` and :func:`correct_charges` take the committed changelog records (not
modified), the config snapshot, the batch's input records and the time, and return a
:class:`Batch`: the new :class:`.changelog.Entry` of every key the batch touched (state,
decided offsets, outbox of encoded events) and how far each partition got.

Records are decided strictly in offset order per partition, from the marker on: faust
drops records in flight when a rebalance suspends its flow, and may commit past them, so a
record that arrives after a gap is left and the partition is read again from the gap
(:meth:`Batch.admit`). A record at or below its key's decided offset was decided by a batch
whose entries were written but whose marker was not (a crash), and is skipped: an attempt
is decided once, even if a payment for the account arrives in between on replay. The three
inputs share each key's entry (its balance) and keep their own decided offsets in it.

Each account key's dedup memory (:mod:`.dedup`) says whether a record's id was decided
before, at any distance within the window; the ids a batch decides join its entries.

An exception from the rules (other than a record that cannot be decoded) propagates out of
:func:`bill_attempts`: deciding has no side effects, so nothing of the batch is committed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Callable, Iterable, Mapping

from imbill.domain.config import ConfigState
from imbill.domain.decide import (DEFAULT_LIMITS, Limits, decide_attempt, decide_correction, decide_payment,
                                  undecodable_attempt, undecodable_payment)
from imbill.domain.dedup import Sighting, fingerprint, millis
from imbill.domain.errors import SchemaError
from imbill.domain.events import Charge, MessageAttempt, Payment
from imbill.domain.keys import account_key
from imbill.schemas.codec import decode_event_as, encode_event
from imbill.streams.changelog import Entry, Output
from imbill.streams.dedup import BatchMemory, DedupMemory, KeyMemory

__all__ = ["Record", "Batch", "entry_key", "bill_attempts", "top_up_payments", "correct_charges", "TOPIC_KINDS"]

log = logging.getLogger(__name__)

TOPIC_KINDS = {"Charge": "charges", "Rejection": "rejections", "PaymentRejected": "rejections",
               "BalanceChanged": "balances", "ServiceStatusChanged": "service_status"}
"""Event name -> the topic kind its outbox line names."""

Record = tuple[int, int, "bytes | None", "bytes | None"]
"""An input record: (partition, offset, key, value)."""


@dataclass
class Batch:
    """The decisions of one batch: the new entry of every key it touched, how far each
    partition got, and the partitions whose records came with a gap."""

    source: str
    expected: Mapping[int, int]
    """Partition -> the next offset to decide (every offset below it is decided)."""
    entries: dict[bytes, Entry] = field(default_factory=dict)
    next_offsets: dict[int, int] = field(default_factory=dict)
    gaps: dict[int, int] = field(default_factory=dict)
    """Partition -> the offset to read it again from: a record after it came first."""
    memory: BatchMemory | None = None

    def admit(self, partition: int, offset: int) -> bool:
        """Whether to decide the record at ``offset``: only the next one of its partition.

        Offsets below it are decided already (delivered again after a restart or a
        rebalance). An offset above it means records were not delivered (faust drops the
        records in flight when a rebalance suspends its flow): the rest of the partition
        is left for after a rewind, never decided out of order.
        """
        want = self.next_offsets.get(partition, self.expected.get(partition))
        if want is None or partition in self.gaps:
            return False  # not a partition this worker owns now, or one already left
        if offset != want:
            if offset > want:
                self.gaps[partition] = want
            return False
        self.next_offsets[partition] = offset + 1
        return True

    def touch(self, committed: Mapping[bytes, Any], key: bytes, partition: int, offset: int) -> Entry:
        """The batch's entry for ``key``: a copy of the committed one the first time."""
        entry = self.entries.get(key)
        if entry is None:
            old = committed.get(key)
            entry = Entry(None, partition) if type(old) is not Entry else Entry(
                old.state, partition, old.attempts_decided, old.payments_decided,
                corrections_decided=old.corrections_decided)
            self.entries[key] = entry
        entry.source, entry.source_offset = self.source, offset
        return entry

    @property
    def decided(self) -> dict[int, int]:
        """Partition -> the last offset this batch decided (or skipped as decided)."""
        return {partition: offset - 1 for partition, offset in self.next_offsets.items()}


KEY_LIMIT = 8_192
"""The longest input key kept as it is. A longer one names no account (account keys are an
environment and an account id of at most 4,096 characters each): it is replaced by its digest
in the changelog and in the outputs it keys, so no hostile key can make a record the broker
refuses (which would stop the partition's billing)."""


def entry_key(key: bytes | None, partition: int) -> bytes:
    """The changelog key of an input key (NUL-prefixed keys are the processor's own)."""
    if key is None:
        return b"\x00nokey/%d" % partition
    if len(key) > KEY_LIMIT:
        return _digest(key)
    return b"\x00raw/" + key if key[:1] == b"\x00" else key


def _digest(key: bytes) -> bytes:
    return b"\x00long/" + hashlib.sha256(key).hexdigest().encode()


def _decided(committed: Mapping[bytes, Any], batch: Batch, key: bytes, offset: int, attr: str) -> bool:
    """Decided by a batch whose entries were written but whose marker was not (a crash)."""
    entry = batch.entries.get(key) or committed.get(key)
    return type(entry) is Entry and offset <= getattr(entry, attr)


def bill_attempts(committed: Mapping[bytes, Any], config: ConfigState, records: Iterable[Record], *,
                  now: datetime, expected: Mapping[int, int], memory: DedupMemory | None = None,
                  limits: Limits = DEFAULT_LIMITS) -> Batch:
    """Rate and bill MessageAttempt records against ``committed`` entries and dedup
    ``memory`` (neither modified)."""
    batch = Batch("a", expected, memory=BatchMemory(memory, "a"))
    return _decide(batch, "attempts_decided", _attempt_outcome, committed, config, records, now, limits)


def top_up_payments(committed: Mapping[bytes, Any], config: ConfigState, records: Iterable[Record], *,
                    now: datetime, expected: Mapping[int, int], memory: DedupMemory | None = None,
                    limits: Limits = DEFAULT_LIMITS) -> Batch:
    """Apply Payment records to the balances of ``committed`` entries (not modified)."""
    batch = Batch("p", expected, memory=BatchMemory(memory, "p"))
    return _decide(batch, "payments_decided", _payment_outcome, committed, config, records, now, limits)


def correct_charges(committed: Mapping[bytes, Any], config: ConfigState, records: Iterable[Record], *,
                    now: datetime, expected: Mapping[int, int], memory: DedupMemory | None = None,
                    limits: Limits = DEFAULT_LIMITS, topic: str = "corrections") -> Batch:
    """Apply re-rating corrections (Charge records of kind correction, from ``topic``) to the
    balances of ``committed`` entries (not modified); a correction not applied is logged."""
    batch = Batch("c", expected, memory=BatchMemory(memory, "c"))
    return _decide(batch, "corrections_decided", partial(_correction_outcome, topic), committed, config, records,
                   now, limits)


def _decide(batch: Batch, decided: str, outcome: Callable[..., Iterable[Output]], committed: Mapping[bytes, Any],
            config: ConfigState, records: Iterable[Record], now: datetime, limits: Limits) -> Batch:
    """Each admitted record not yet decided for its key: its outcome joins the key's outbox."""
    for partition, offset, raw_key, value in records:
        if not batch.admit(partition, offset):
            continue
        key = entry_key(raw_key, partition)
        if _decided(committed, batch, key, offset, decided):
            continue
        entry = batch.touch(committed, key, partition, offset)
        setattr(entry, decided, offset)
        seen = batch.memory.of(key, entry) if batch.memory is not None else KeyMemory(None, entry)
        entry.outbox.extend(outcome(entry, raw_key, partition, offset, value, config, now, seen, limits))
    return batch


def _attempt_outcome(entry: Entry, key: bytes | None, partition: int, offset: int, value: bytes | None,
                     config: ConfigState, now: datetime, seen: KeyMemory, limits: Limits) -> list[Output]:
    """A record that is no MessageAttempt (undecodable, or lacking a field) is a final
    ``malformed_attempt`` rejection. Any other exception from the rules is a bug, not a fact
    about the attempt: it propagates, the batch is not committed, and the worker stops and is
    recovered, instead of writing a final rejection nobody can undo."""
    try:
        attempt = decode_event_as(MessageAttempt, value or b"")
    except SchemaError as exc:
        return [_output(undecodable_attempt(f"undecodable-{partition}-{offset}", str(exc), now), key)]
    sighting = seen.sighting(attempt.attempt_id)
    decision = decide_attempt(entry.state, attempt, config, key=key, offset=offset, now=now, sighting=sighting,
                              limits=limits)
    outputs = [_output(event, key) for event in decision.events]
    entry.state = decision.state  # only once every event of the decision is encoded
    content = fingerprint(attempt.direction, attempt.to_user, attempt.to_domain, attempt.body_chars)
    _remember(seen, decision.remember, attempt.attempt_id, offset, min(attempt.received_at, now), content, sighting)
    return outputs


def _remember(seen: KeyMemory, remember: bool, record_id: str, offset: int, at: datetime, content: int,
              sighting: Sighting) -> None:
    """Add a decided id to its key's memory; log a copy whose content is not its first's."""
    if remember:
        seen.remember(record_id, offset, millis(at), content)
    elif sighting.first_offset is not None and sighting.first_offset < offset \
            and sighting.first_fingerprint != content:
        log.warning("record at offset %d claims id %r of the one at offset %d but its content differs: "
                    "treated as the duplicate it claims to be: nothing charged or credited again", offset, record_id,
                    sighting.first_offset)


def _payment_outcome(entry: Entry, key: bytes | None, partition: int, offset: int, value: bytes | None,
                     config: ConfigState, now: datetime, seen: KeyMemory, limits: Limits) -> list[Output]:
    try:
        payment = decode_event_as(Payment, value or b"")
    except SchemaError as exc:
        log.warning("payment %d@%d not applied: %s", partition, offset, exc)
        return [_output(undecodable_payment(f"undecodable-{partition}-{offset}", str(exc), now), key)]
    sighting = seen.sighting(payment.payment_id)
    decision = decide_payment(entry.state, payment, config, key=key, offset=offset, now=now, sighting=sighting,
                              limits=limits)
    outputs = [_output(event, key) for event in decision.events]
    entry.state = decision.state
    content = fingerprint(payment.amount, payment.currency, payment.account)
    _remember(seen, decision.remember, payment.payment_id, offset, min(payment.received_at, now), content, sighting)
    return outputs


_WHY_LIMIT = 1_000
"""The longest reason logged for a correction not applied (a hostile one may hold long texts)."""


def _correction_outcome(topic: str, entry: Entry, key: bytes | None, partition: int, offset: int,
                        value: bytes | None, config: ConfigState, now: datetime, seen: KeyMemory,
                        limits: Limits) -> list[Output]:
    """A correction is no attempt: one that is not applied (undecodable, or refused by
    :func:`decide_correction`) emits nothing and is logged with where it is and why."""
    try:
        correction = decode_event_as(Charge, value or b"")
    except SchemaError as exc:
        log.warning("correction %s[%d]@%d not applied: undecodable: %s", topic, partition, offset,
                    str(exc)[:_WHY_LIMIT])
        return []
    sighting = seen.sighting(correction.charge_id)
    decision = decide_correction(entry.state, correction, config, key=key, offset=offset, now=now,
                                 sighting=sighting)
    if decision.refused is not None:
        code, why = decision.refused
        log.warning("correction %s[%d]@%d not applied: %s: %s", topic, partition, offset, code, why[:_WHY_LIMIT])
    outputs = [_output(event, key) for event in decision.events]
    entry.state = decision.state
    content = fingerprint(correction.corrects, correction.amount, correction.difference, correction.currency,
                          correction.account)
    _remember(seen, decision.remember, correction.charge_id, offset, min(correction.rated_at, now), content,
              sighting)
    return outputs


def _output(event: Any, key: bytes | None) -> Output:
    """An event of a decision, to send: its topic kind, its account's key and its bytes. A
    rejection not recorded against an account keeps the input record's key."""
    kind = TOPIC_KINDS[type(event).__name__]
    if event.account:
        return kind, account_key(event.environment, event.account), encode_event(event)
    return kind, (_digest(key) if key and len(key) > KEY_LIMIT else key) or b"", encode_event(event)
