"""The processor's changelog records: what a batch commits, and what recovery reads back.

An :class:`Entry` is the processor's commit record for one key of its three inputs (the
attempts, payments and corrections topics): the account's balance state (None when the key
is no account), the offsets of the last attempt, payment and correction decided for the
key, and the outbox: the Avro-encoded events those decisions caused, as the topic kind, key
and value to send. A :class:`Flushed` marker per partition holds the attempt, payment and
correction offsets up to which every record is decided and its events are on their topics
(:mod:`.commit` writes them in that order).

The next record a worker decides on a partition is the one after its marker; an outbox
whose source offset is above the marker may be missing downstream and is sent again (same
bytes, same ids): :func:`pending_outboxes`. A :class:`Seen` chunk holds the attempt,
payment or correction ids a batch remembered for a key (the dedup memory, :mod:`.dedup`); an entry also
carries its batch's ids (``remembered``). Records are JSON with decimals as strings; the
byte format is what workers already wrote, so it only grows: new fields are optional (the
correction offsets are written only once a correction is decided, and read as -1 from
records written before corrections).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Iterable, Mapping

from imbill.domain.balance import AccountState

__all__ = ["Output", "OUTPUT_KINDS", "Remembered", "Entry", "Flushed", "Seen", "flushed_key", "seen_key",
           "encode_record", "decode_record", "pending_outboxes"]

Output = tuple[str, bytes, bytes]
"""An event to send: (topic kind: charges, rejections, balances or service_status; key; value)."""

OUTPUT_KINDS = ("charges", "rejections", "balances", "service_status")
"""The topic kinds an outbox names (attributes of :class:`imbill.schemas.topics.Topics`)."""

Remembered = tuple[str, int, int, int]
"""An id in the dedup memory: (attempt, payment or correction id, offset of its first copy,
its time in ms since the epoch, its content fingerprint)."""


@dataclass(slots=True)
class Entry:
    """The changelog record of one input key (see the module doc)."""

    state: AccountState | None
    partition: int
    attempts_decided: int = -1
    payments_decided: int = -1
    outbox: list[Output] = field(default_factory=list)
    source: str = ""
    """Which input the outbox came from: "a" (attempts), "p" (payments) or "c" (corrections)."""
    source_offset: int = -1
    remembered: list[Remembered] = field(default_factory=list)
    """The ids this batch added to the key's dedup memory (also written as a Seen chunk)."""
    corrections_decided: int = -1
    """The offset of the last correction decided for the key (last: added after the others)."""


@dataclass(slots=True)
class Seen:
    """A chunk of a key's dedup memory: the ids one batch remembered for it."""

    source: str
    key: bytes
    partition: int
    remembered: list[Remembered]


@dataclass(slots=True)
class Flushed:
    """Per partition: the input offsets up to which every record is decided and every
    event it caused is acknowledged on its topic."""

    partition: int
    attempts: int = -1
    payments: int = -1
    corrections: int = -1

    def decided(self, source: str) -> int:
        """The offset of ``source`` ("a", "p" or "c") up to which every record is flushed."""
        return self.attempts if source == "a" else self.payments if source == "p" else self.corrections

    def advanced(self, source: str, offset: int) -> Flushed:
        """This marker moved on to ``offset`` for ``source`` (a marker never goes back)."""
        marker = Flushed(self.partition, self.attempts, self.payments, self.corrections)
        if source == "a":
            marker.attempts = max(marker.attempts, offset)
        elif source == "p":
            marker.payments = max(marker.payments, offset)
        else:
            marker.corrections = max(marker.corrections, offset)
        return marker

    def covers(self, entry: Entry) -> bool:
        return entry.source_offset <= self.decided(entry.source)


def flushed_key(partition: int) -> bytes:
    """The changelog key of a partition's Flushed marker (no attempt key starts with NUL)."""
    return b"\x00flushed/%d" % partition


def seen_key(source: str, key: bytes, first_offset: int) -> bytes:
    """The changelog key of the Seen chunk of ``key``'s ids from the batch that decided
    ``first_offset`` first (the same key when that batch is decided again)."""
    return b"\x00seen/%s/%d/" % (source.encode(), first_offset) + key


def encode_record(record: Entry | Flushed | Seen) -> bytes:
    if isinstance(record, Flushed):
        offsets = [record.partition, record.attempts, record.payments]
        if record.corrections != -1:
            offsets.append(record.corrections)
        return json.dumps({"flushed": offsets}).encode()
    if isinstance(record, Seen):
        return json.dumps({"seen": [record.source, _b64(record.key), record.partition, record.remembered]},
                          separators=(",", ":")).encode()
    state = record.state
    raw = {
        "state": None if state is None else [str(state.balance), state.currency, state.suspended,
                                             state.last_attempt_offset, state.last_payment_offset, [], []],
        "partition": record.partition, "attempts": record.attempts_decided,
        "payments": record.payments_decided, "source": [record.source, record.source_offset],
        "outbox": [[kind, _b64(key), _b64(value)] for kind, key, value in record.outbox],
    }
    if record.remembered:
        raw["ids"] = record.remembered
    if record.corrections_decided != -1:
        raw["corrections"] = record.corrections_decided
    return json.dumps(raw, separators=(",", ":")).encode()


def decode_record(data: bytes) -> Entry | Flushed | Seen:
    raw = json.loads(data)
    if "flushed" in raw:
        return Flushed(*raw["flushed"])
    if "seen" in raw:
        source, key, partition, remembered = raw["seen"]
        return Seen(source, base64.b64decode(key), partition, [tuple(line) for line in remembered])
    state = raw["state"]
    if state is not None:  # the last 8 ids kept in the state before the dedup memory are not read
        balance, currency, suspended, last_attempt, last_payment, *_ = state
        state = AccountState(Decimal(balance), currency, suspended, last_attempt, last_payment)
    outbox = [(kind, base64.b64decode(key), base64.b64decode(value)) for kind, key, value in raw["outbox"]]
    source, source_offset = raw["source"]
    return Entry(state, raw["partition"], raw["attempts"], raw["payments"], outbox, source, source_offset,
                 [tuple(line) for line in raw.get("ids", ())], raw.get("corrections", -1))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def pending_outboxes(records: Mapping[bytes, Entry | Flushed], partitions: Iterable[int]) -> list[Entry]:
    """The entries of ``partitions`` whose outbox is not covered by their partition's marker."""
    owned = set(partitions)
    markers = {p: records.get(flushed_key(p)) or Flushed(p) for p in owned}
    return [entry for entry in records.values()
            if type(entry) is Entry and entry.outbox and entry.partition in owned
            and not markers[entry.partition].covers(entry)]
