"""Saying once, on the config-rejections topic, which config records every reader skips.

Every worker folds the whole config topic (:class:`.config_reader.ConfigReader`) and so
finds the same refused records, but one ConfigEventRejected per record is wanted. The
single writer is the worker that owns partition 0 of the attempts topic (there is always
exactly one once the group is balanced): when it gets that partition it reads the
config-rejections topic to its end to learn the last config offset already rejected, then
emits, in config order, the rejection of every refused record after it, each acknowledged
before the next. A rejection's id is derived from the record's topic, partition and offset
(``cfgrej-<topic>-<partition>-<offset>``), so one sent again (the owner died between the
acknowledgement and the next check, or two owners overlapped during a rebalance) is
recognisable: the projection keeps one row per id.

The other workers keep what their reader refused (they may own partition 0 next), and every
:data:`PRUNE_SECONDS` read the topic's end to forget what has been said since: memory holds
only what is not yet on the topic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from imbill.bus import read_to_end
from imbill.schemas.codec import encode_event
from imbill.streams.config_reader import ConfigReader

__all__ = ["ConfigRejections", "PRUNE_SECONDS"]

PRUNE_SECONDS = 30.0
"""How often a worker that is not the writer forgets the rejections already on the topic."""

log = logging.getLogger(__name__)

Send = Callable[[str, bytes, bytes], Awaitable[None]]
"""Send (topic, key, value) and return once the broker acknowledged it."""


class ConfigRejections:
    """``await emitter.emit(owner)`` sends what the reader refused and is not yet on the topic."""

    def __init__(self, reader: ConfigReader, bootstrap_servers: str, topic: str, send: Send) -> None:
        self.reader, self.topic = reader, topic
        self._bootstrap, self._send = bootstrap_servers, send
        self._emitted_upto: int | None = None
        """The config offset of the last rejection on the topic (None: not read since owning)."""
        self._pruned_at = time.monotonic()

    async def emit(self, owner: bool) -> int:
        """Emit the pending rejections if this worker is the ``owner``; returns how many."""
        if not owner:
            self._emitted_upto = None
            if self.reader.refused and time.monotonic() - self._pruned_at > PRUNE_SECONDS:
                self._pruned_at = time.monotonic()
                said = await asyncio.get_running_loop().run_in_executor(None, self._last_emitted)
                self.reader.refused = [r for r in self.reader.refused if r.config_offset > said]
            return 0
        if self._emitted_upto is None:
            self._emitted_upto = await asyncio.get_running_loop().run_in_executor(None, self._last_emitted)
        pending = [r for r in self.reader.refused if r.config_offset > self._emitted_upto]
        for rejection in pending:
            await self._send(self.topic, (rejection.environment or "").encode(), encode_event(rejection))
            self._emitted_upto = rejection.config_offset
            log.info("config record %s[%d]@%d rejected: %s", rejection.config_topic, rejection.config_partition,
                     rejection.config_offset, rejection.reason_code)
        self.reader.refused = [r for r in self.reader.refused if r.config_offset > self._emitted_upto]
        return len(pending)

    def _last_emitted(self) -> int:
        last = -1
        for envelope in read_to_end(self._bootstrap, self.topic):
            record = envelope.record
            if envelope.name == "ConfigEventRejected" and record and record["config_topic"] == self.reader.topic:
                last = max(last, record["config_offset"])
        return last
