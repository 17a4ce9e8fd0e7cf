"""The registration projector, on a real broker, once on SQLite and once on PostgreSQL: the
table holds each account's live bindings (bound or refreshed), a removed or expired one is
deleted, a lapsed row is not listed, and a re-read changes nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from imbill.bus import EventProducer
from imbill.domain.events import RegistrationChanged
from imbill.domain.keys import account_key
from imbill.domain.registrations import (BOUND, REFRESHED, REMOVED, Binding, expired,
                                         registration_event_id)
from imbill.projections.models import connect
from imbill.projections.projector import RegistrationProjector
from imbill.projections.queries import query_registrations

pytestmark = [pytest.mark.integration]

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


def changed(account: str, contact: str, state: str, cseq: int, *, seconds: int = 600, at: int = 0,
            environment: str = "demo") -> RegistrationChanged:
    return RegistrationChanged(
        registration_event_id(environment, account, contact, state, "r1", cseq), environment, account, contact,
        T0 + timedelta(seconds=at + seconds), f"Phone/{cseq}", "192.0.2.20:5062", "UDP", "r1", cseq, state,
        T0 + timedelta(seconds=at))


def test_the_live_bindings_are_projected(bootstrap, topics, database_url) -> None:
    events = [
        changed("1001", "sip:1001@192.0.2.10:5060", BOUND, 1),
        changed("1001", "SIP:1001@192.0.2.10:5060", REFRESHED, 2, seconds=1200, at=10),  # the same contact
        changed("1002", "sip:1002@192.0.2.20", BOUND, 1),
        changed("1002", "sip:1002@192.0.2.21", BOUND, 2, at=5),
        changed("1002", "sip:1002@192.0.2.20", REMOVED, 3, seconds=0, at=20),
        changed("1001", "sip:1001@192.0.2.10:5060", BOUND, 1, environment="other"),
        changed("1003", "sip:1003@192.0.2.30", BOUND, 1, seconds=60),
        replace(changed("1005", "sip:1005@192.0.2.50", BOUND, 1), user_agent="nul\x00phone"),
        changed("1004", "sip:1004@192.0.2.40", BOUND, 1),
        expired("demo", "1004", Binding("sip:1004@192.0.2.40", T0 + timedelta(seconds=600), None, "s", "UDP", "r1",
                                        1, T0), T0 + timedelta(seconds=601)),
    ]
    producer = EventProducer(bootstrap)
    try:
        for event in events:
            producer.publish_event(topics.registrations, account_key(event.environment, event.account), event)
    finally:
        producer.close()
    with RegistrationProjector(database_url, bootstrap, topics) as projector:
        assert projector.run_until_idle(timeout=30) == len(events)
    with RegistrationProjector(database_url, bootstrap, topics) as again:
        assert again.run_until_idle(timeout=5) == 0  # its offsets were stored with the rows
    engine = connect(database_url)
    try:
        now = T0 + timedelta(seconds=30)
        rows = query_registrations(engine, environment="demo", now=now)
        later = query_registrations(engine, environment="demo", now=T0 + timedelta(seconds=90))
        only = query_registrations(engine, environment="demo", now=now, account="1002")
    finally:
        engine.dispose()
    assert [(r["account"], r["contact"], r["state"], r["cseq"]) for r in rows] == [
        ("1001", "SIP:1001@192.0.2.10:5060", REFRESHED, 2), ("1002", "sip:1002@192.0.2.21", BOUND, 2),
        ("1003", "sip:1003@192.0.2.30", BOUND, 1), ("1005", "sip:1005@192.0.2.50", BOUND, 1)]
    assert rows[0]["expires_at"] == T0 + timedelta(seconds=1210) and rows[0]["user_agent"] == "Phone/2"
    assert [r["account"] for r in later] == ["1001", "1002", "1005"]  # 1003's lapsed: not live, row or not
    nul = "\ufffd" if database_url.startswith("postgresql") else "\x00"  # PostgreSQL text holds no NUL
    assert rows[-1]["user_agent"] == f"nul{nul}phone"
    assert [r["contact"] for r in only] == ["sip:1002@192.0.2.21"]
