"""Recognising a copy of an attempt, a payment or a correction, whatever the distance
between the copies.

An attempt id (SHA-256 of Call-ID + CSeq), a payment id (its idempotency key) and a
correction id (``chg-<attempt id>#<revision>``) are remembered per account for
:data:`WINDOW`, measured by the records' own times: an id is kept while its time (the
``received_at`` of the attempt or payment, a correction's ``rated_at``, but never later than the
processor's clock, so a record dated in the future cannot push the window on) is within 24
hours of the newest time remembered for the account. Against that memory a record is

- ``new``: its id is not remembered at an earlier offset (the same offset is the same record
  decided again after a crash, not a copy);
- ``copy``: its id was first decided at an earlier offset. It is the duplicate it claims to
  be, whatever its content: it changes nothing and emits nothing (the first copy's outcome
  stands), and a copy whose content differs is logged by the caller;
- ``stale``: it is new to the memory but dated more than :data:`WINDOW` before the newest
  remembered time, so a first copy of it may have been forgotten already. It is refused
  (``outside_dedup_window``) rather than risk charging it twice.

A sighting is a value: the caller looks the id up in its memory and passes what it found.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["WINDOW", "WINDOW_MS", "NEVER", "Sighting", "UNSEEN", "verdict", "millis", "fingerprint"]

WINDOW = timedelta(hours=24)
WINDOW_MS = 86_400_000
NEVER = -(2**62)
"""The newest time of an account with nothing remembered."""


@dataclass(frozen=True, slots=True)
class Sighting:
    """What the account's memory knows of an id: the offset of its first copy (None: not
    remembered), that copy's content fingerprint, and the newest time remembered (ms)."""

    first_offset: int | None = None
    first_fingerprint: int = 0
    newest_ms: int = NEVER


UNSEEN = Sighting()


def verdict(sighting: Sighting, *, offset: int, at: datetime) -> str:
    """``new``, ``copy`` or ``stale`` (see the module doc) for the record at ``offset`` dated ``at``."""
    first = sighting.first_offset
    if first is not None and first < offset:
        return "copy"
    if first is None and millis(at) < sighting.newest_ms - WINDOW_MS:
        return "stale"
    return "new"


def millis(at: datetime) -> int:
    """``at`` as milliseconds since the epoch (the unit of the Avro timestamps)."""
    return int(at.timestamp() * 1000)


def fingerprint(*parts: object) -> int:
    """A 32-bit fingerprint of a record's content, to tell a copy that differs from its first."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode("utf-8", "surrogatepass"))
