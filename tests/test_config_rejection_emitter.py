"""The ConfigEventRejected emitter, without a broker: only the owner sends, each rejection
once and in config order, from the last one already on the topic; the others forget what
was said."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from types import SimpleNamespace

from imbill.domain.decide import config_event_rejected
from imbill.schemas.codec import decode
from imbill.streams import config_rejections
from imbill.streams.config_rejections import ConfigRejections

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def refused(*offsets: int) -> list:
    return [config_event_rejected("cfg", 0, o, None, {}, "undecodable_config", "junk", NOW) for o in offsets]


def emitter(on_topic: int, *offsets: int) -> tuple[ConfigRejections, list, SimpleNamespace]:
    reader = SimpleNamespace(topic="cfg", refused=refused(*offsets))
    sent: list = []

    async def send(topic: str, key: bytes, value: bytes) -> None:
        sent.append((topic, decode(value)[1]["config_offset"]))

    rejections = ConfigRejections(reader, "unused:9092", "cfg-rejections", send)
    rejections._last_emitted = lambda: on_topic  # what the topic holds already
    return rejections, sent, reader


def test_the_owner_sends_what_is_not_on_the_topic_once_in_order() -> None:
    rejections, sent, reader = emitter(4, 2, 4, 7, 9)
    assert asyncio.run(rejections.emit(owner=True)) == 2
    assert sent == [("cfg-rejections", 7), ("cfg-rejections", 9)]
    reader.refused += refused(12)
    asyncio.run(rejections.emit(owner=True))
    assert [o for _, o in sent] == [7, 9, 12] and reader.refused == []


def test_a_worker_that_is_not_the_owner_sends_nothing_and_forgets_what_was_said(monkeypatch) -> None:
    rejections, sent, reader = emitter(7, 2, 7, 9)
    monkeypatch.setattr(config_rejections, "PRUNE_SECONDS", -1.0)
    assert asyncio.run(rejections.emit(owner=False)) == 0
    assert sent == [] and [r.config_offset for r in reader.refused] == [9]


def test_ownership_regained_reads_the_topic_again() -> None:
    rejections, sent, reader = emitter(-1, 1, 2)
    asyncio.run(rejections.emit(owner=True))
    asyncio.run(rejections.emit(owner=False))
    reader.refused += refused(1, 2, 3)  # a restarted reader folds them again
    rejections._last_emitted = lambda: 2
    asyncio.run(rejections.emit(owner=True))
    assert [o for _, o in sent] == [1, 2, 3]
