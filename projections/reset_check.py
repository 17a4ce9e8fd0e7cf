"""Is the log still the one these projections were built from?

A projector stores, with the rows and in the same transaction, the next offset of every
partition and a fingerprint of the record just before it (its key, value and timestamp).
If the broker was reset (the embedded one started without its journal), a topic deleted
and re-created, or the settings point at another cluster, the log no longer holds that
record at that offset: going on would skip records silently (stored offsets past the new
log's records) or apply another log's records on top of these rows. :func:`check_log`
finds out by reading the record at ``next_offset - 1`` of every partition, and raises
:class:`~imbill.domain.errors.LogReset` with what to do.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Mapping

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, OffsetOutOfRangeError

from imbill.domain.errors import BrokerError, LogReset

__all__ = ["fingerprint", "check_log", "reset_message"]

CHECK_TIMEOUT = 10.0


def fingerprint(message: Any) -> str:
    """A record's identity: SHA-256 over its key, value and timestamp (32 hex digits)."""
    digest = hashlib.sha256()
    for part in (message.key or b"", message.value or b"", str(message.timestamp).encode()):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return digest.hexdigest()[:32]


def reset_message(projector: str, why: str) -> str:
    return (f"projector {projector}: {why}: the broker was reset, the topic re-created, or this is another "
            "cluster. Nothing more is written. Rebuild the projections from the log as it is "
            "(`imbill project --rebuild`), or restore the broker's journal")


def check_log(bootstrap_servers: str, projector: str, offsets: Mapping[TopicPartition, int],
              fingerprints: Mapping[TopicPartition, str | None]) -> None:
    """Raise LogReset unless every partition with a stored offset still holds the same
    record just before it (a partition without a fingerprint is checked for length only)."""
    stored = {tp: offset for tp, offset in offsets.items() if offset > 0}
    if not stored:
        return
    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
                                 auto_offset_reset="none", fetch_max_wait_ms=100, max_poll_records=1,
                                 client_id=f"imbill-projector-{projector}-check")
    except KafkaError as exc:
        raise BrokerError(f"projector {projector} cannot reach {bootstrap_servers}: {exc}") from exc
    try:
        found = _records_before(consumer, projector, stored)
    finally:
        consumer.close()
    for tp, offset in stored.items():
        if tp not in found:
            raise LogReset(reset_message(projector, f"{tp.topic}[{tp.partition}] has no record at offset "
                                                    f"{offset - 1}, the last one these projections applied"))
        expected = fingerprints.get(tp)
        if expected is not None and found[tp] != expected:
            raise LogReset(reset_message(projector, f"{tp.topic}[{tp.partition}] holds another record at offset "
                                                    f"{offset - 1} than the one these projections applied"))


def _records_before(consumer: KafkaConsumer, projector: str, stored: Mapping[TopicPartition, int]) -> dict:
    """Partition -> fingerprint of its record at stored offset - 1 (absent: no such record)."""
    consumer.assign(list(stored))
    for tp, offset in stored.items():
        consumer.seek(tp, offset - 1)
    found: dict[TopicPartition, str] = {}
    deadline = time.monotonic() + CHECK_TIMEOUT
    while len(found) < len(stored) and time.monotonic() < deadline:
        try:
            batches = consumer.poll(timeout_ms=200, max_records=100)
        except OffsetOutOfRangeError:
            return found  # the log ends before a stored offset
        for tp, messages in batches.items():
            for message in messages:
                if message.offset == stored[tp] - 1:
                    found[tp] = fingerprint(message)
                    consumer.pause(tp)
        if len(found) < len(stored) and _shorter(consumer, stored, found):
            return found
    if len(found) < len(stored) and not _shorter(consumer, stored, found):
        raise BrokerError(f"projector {projector}: the log could not be read back in {CHECK_TIMEOUT:.0f} s")
    return found


def _shorter(consumer: KafkaConsumer, stored: Mapping[TopicPartition, int], found: Mapping) -> bool:
    """Whether a partition not found yet is known (from a fetch) to end before its offset."""
    for tp, offset in stored.items():
        highwater = consumer.highwater(tp)
        if tp not in found and highwater is not None and highwater < offset:
            return True
    return False
