"""The registrar's rules (RFC 3261 section 10.3) over values, and the REGISTER's Contacts as
the edge reads them: no socket, no broker."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from imbill.domain.registrations import (BOUND, EXPIRED, MAX_BINDINGS, REFRESHED, REMOVED, Bindings, Contact, Register,
                                         RegisterLimits, RegisterRefused, contact_key, expired, register)
from imbill.domain.config import ConfigState
from imbill.domain.errors import ConfigError
from imbill.producers.sip import SipRequest, parse_request
from imbill.producers.sip_proxy import DeliverySettings
from imbill.producers.config_file import parse_config
from imbill.producers import sip_registrar
from imbill.producers.sip_registrar import Registrar, contacts_of
from imbill.settings import load_settings

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
LIMITS = RegisterLimits(min_expires=60, max_expires=3600)
UA = "sip:1002@192.0.2.20:5062"
UB = "sip:1002@192.0.2.21:5062;transport=udp"


def asked(*contacts: Contact, expires: int | None = None, wildcard: bool = False, call_id: str = "r1",
          cseq: int = 1) -> Register:
    return Register("default", "1002", contacts, wildcard, expires, call_id, cseq, "Linphone/5.2",
                    "192.0.2.20:5062", "UDP")


def applied(bindings: Bindings, request: Register, now: datetime = T0) -> tuple:
    outcome = register(bindings.of("default", "1002", now), request, now, LIMITS)
    if not isinstance(outcome, RegisterRefused):
        for event in outcome:
            bindings.apply(event)
    return outcome


# (case, contact expires param, Expires header, the binding's seconds)
EXPIRIES = [
    ("the contact's parameter wins", 120, 600, 120),
    ("else the Expires header", None, 600, 600),
    ("else the maximum", None, None, 3600),
    ("capped at the maximum", 7200, None, 3600),
    ("the minimum is accepted", 60, None, 60),
]


@pytest.mark.parametrize(("param", "header", "seconds"), [c[1:] for c in EXPIRIES], ids=[c[0] for c in EXPIRIES])
def test_the_expiry_of_a_binding(param, header, seconds) -> None:
    [event] = register((), asked(Contact(UA, param), expires=header), T0, LIMITS)
    assert (event.state, event.expires_at, event.account) == (BOUND, T0 + timedelta(seconds=seconds), "1002")
    assert (event.user_agent, event.source, event.transport) == ("Linphone/5.2", "192.0.2.20:5062", "UDP")


@pytest.mark.parametrize(("param", "header"), [(30, None), (None, 59), (1, 3600)])
def test_an_expiry_under_the_minimum_is_423_with_the_minimum(param, header) -> None:
    refused = register((), asked(Contact(UA, param), expires=header), T0, LIMITS)
    assert refused == RegisterRefused(423, refused.reason, 60) and "minimum 60" in refused.reason


def test_bound_then_refreshed_then_removed() -> None:
    bindings = Bindings()
    assert [e.state for e in applied(bindings, asked(Contact(UA), cseq=1))] == [BOUND]
    assert [e.state for e in applied(bindings, asked(Contact(UA, 600), cseq=2))] == [REFRESHED]
    [live] = bindings.of("default", "1002", T0)
    assert live.expires_at == T0 + timedelta(seconds=600) and live.cseq == 2
    assert [e.state for e in applied(bindings, asked(Contact(UA, 0), cseq=3))] == [REMOVED]
    assert bindings.of("default", "1002", T0) == () and len(bindings) == 0


def test_a_star_with_expires_0_removes_every_binding() -> None:
    bindings = Bindings()
    applied(bindings, asked(Contact(UA), Contact(UB), cseq=1))
    assert len(bindings.of("default", "1002", T0)) == 2
    events = applied(bindings, asked(wildcard=True, expires=0, call_id="other"))
    assert sorted(e.contact for e in events) == [UA, UB] and {e.state for e in events} == {REMOVED}
    assert bindings.of("default", "1002", T0) == ()


@pytest.mark.parametrize("request_", [asked(wildcard=True, expires=60), asked(wildcard=True),
                                      asked(Contact(UA), wildcard=True, expires=0)])
def test_a_star_otherwise_is_400(request_) -> None:
    assert register((), request_, T0, LIMITS).status == 400


def test_an_older_cseq_of_the_same_call_id_is_refused_and_another_call_id_updates() -> None:
    bindings = Bindings()
    applied(bindings, asked(Contact(UA), cseq=5))
    assert applied(bindings, asked(Contact(UA, 0), cseq=5)).status == 400  # not above: aborted, kept
    assert applied(bindings, asked(Contact(UA, 0), cseq=4)).status == 400
    assert len(bindings.of("default", "1002", T0)) == 1
    assert [e.state for e in applied(bindings, asked(Contact(UA, 0), call_id="r2", cseq=1))] == [REMOVED]


def test_a_query_without_contact_changes_nothing() -> None:
    assert register((), asked(), T0, LIMITS) == ()


def test_no_more_than_max_bindings_per_account() -> None:
    bindings = Bindings()
    many = tuple(Contact(f"sip:1002@192.0.2.{n}:5060") for n in range(MAX_BINDINGS))
    applied(bindings, asked(*many, cseq=1))
    assert applied(bindings, asked(Contact("sip:1002@198.51.100.1"), cseq=2)).status == 403
    assert len(bindings.of("default", "1002", T0)) == MAX_BINDINGS


def test_contacts_compare_with_scheme_and_host_case_folded() -> None:
    assert contact_key("SIP:Alice@Example.COM:5060") == contact_key("sip:Alice@example.com:5060")
    assert contact_key("sip:Alice@example.com") != contact_key("sip:alice@example.com")


def test_a_lapsed_binding_is_not_live_and_is_swept_as_expired() -> None:
    bindings = Bindings()
    applied(bindings, asked(Contact(UA, 60)))
    later = T0 + timedelta(seconds=61)
    assert bindings.of("default", "1002", later) == ()
    [(environment, account, binding)] = bindings.lapsed(later)
    event = expired(environment, account, binding, later)
    assert (event.state, event.expires_at, event.occurred_at) == (EXPIRED, T0 + timedelta(seconds=60), later)
    bindings.apply(event)
    assert len(bindings) == 0


def test_the_same_register_makes_the_same_event_ids() -> None:
    first = register((), asked(Contact(UA)), T0, LIMITS)
    again = register((), asked(Contact(UA)), T0 + timedelta(seconds=1), LIMITS)
    assert [e.event_id for e in first] == [e.event_id for e in again]


def test_the_newest_binding_comes_first() -> None:
    bindings = Bindings()
    applied(bindings, asked(Contact(UA), cseq=1))
    applied(bindings, asked(Contact(UB), cseq=2), T0 + timedelta(seconds=5))
    assert [b.contact for b in bindings.of("default", "1002", T0 + timedelta(seconds=6))] == [UB, UA]


def test_the_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        RegisterLimits(min_expires=600, max_expires=60)


# --- the Contacts of a REGISTER ------------------------------------------------------------------

def parsed(*headers: str) -> SipRequest:
    lines = ["REGISTER sip:127.0.0.1 SIP/2.0", "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKr1",
             "From: <sip:1002@127.0.0.1>;tag=a", "To: <sip:1002@127.0.0.1>", "Call-ID: r1", "CSeq: 1 REGISTER",
             *headers, "Content-Length: 0"]
    request = parse_request(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(request, SipRequest), request
    return request


@pytest.mark.parametrize(("headers", "expected"), [
    (("Contact: <sip:1002@192.0.2.20:5062>;expires=120;q=0.5",), ((Contact("sip:1002@192.0.2.20:5062", 120),), False)),
    (('Contact: "Bob" <sip:1002@192.0.2.20:5062;transport=udp>, sip:1002@192.0.2.21',),
     ((Contact("sip:1002@192.0.2.20:5062;transport=udp"), Contact("sip:1002@192.0.2.21")), False)),
    (("Contact: sip:1002@192.0.2.21;expires=0",), ((Contact("sip:1002@192.0.2.21", 0),), False)),
    (("Contact: *", "Expires: 0"), ((), True)),
    ((), ((), False)),
])
def test_the_contacts_of_a_register(headers, expected) -> None:
    assert contacts_of(parsed(*headers)) == expected


def test_the_registrar_and_delivery_settings() -> None:
    defaults = load_settings({})
    assert (defaults.register_limits, defaults.delivery) == (RegisterLimits(60, 3600), DeliverySettings("on", 8.0))
    given = load_settings({"IMBILL_EDGE_REGISTER_MIN_EXPIRES": "30", "IMBILL_EDGE_DELIVERY": "required",
                           "IMBILL_EDGE_DELIVERY_TIMEOUT": "2.5"})
    assert (given.register_limits.min_expires, given.delivery) == (30, DeliverySettings("required", 2.5))
    for wrong in ({"IMBILL_EDGE_DELIVERY": "sometimes"}, {"IMBILL_EDGE_REGISTER_MAX_EXPIRES": "10"}):
        with pytest.raises(ConfigError, match="settings:"):
            load_settings(wrong).delivery and load_settings(wrong).register_limits


# --- the registrar: its events published before the answer, lapsed bindings swept ------------------

class Publisher:
    """Stands in for RegistrationPublisher: acknowledges (or fails) at once."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error, self.published = error, []

    def submit(self, events, done) -> None:
        if self.error is None:
            self.published += events
        done(self.error)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def registered(publisher: Publisher, clock: Clock, *headers: str) -> tuple[Any, bytes]:
    state = ConfigState({"default": parse_config(ACCOUNTS).config})
    registrar = Registrar("default", lambda: state, publish=publisher, clock=clock)
    answers: list[bytes] = []

    async def run() -> None:
        registrar.register(parsed(*headers), ("192.0.2.20", 5062), "UDP", answers.append)
        registrar.stop()

    asyncio.run(run())
    return registrar, answers[0]


ACCOUNTS = """
environment: default
customers: [{name: C, currency: USD, accounts: [{id: "1002", product: P, aliases: [bob]}]}]
products: [{name: P}]
"""


def test_the_answer_waits_for_the_events_and_a_failed_publish_keeps_nothing() -> None:
    ok, clock = Publisher(), Clock()
    registrar, answer = registered(ok, clock, "Contact: <sip:1002@192.0.2.20:5062>", "Expires: 120")
    assert answer.startswith(b"SIP/2.0 200 OK") and b"Contact: <sip:1002@192.0.2.20:5062>;expires=120" in answer
    assert [e.state for e in ok.published] == [BOUND] and ok.published[0].source == "192.0.2.20:5062"
    failing = Publisher(RuntimeError("broker down"))
    registrar, answer = registered(failing, clock, "Contact: <sip:1002@192.0.2.20:5062>")
    assert answer.startswith(b"SIP/2.0 500") and registrar.live("1002") == ("1002", ())


def test_lapsed_bindings_are_swept_and_published_expired() -> None:
    publisher, clock = Publisher(), Clock()
    registrar, _ = registered(publisher, clock, "Contact: <sip:1002@192.0.2.20:5062>", "Expires: 60")
    assert registrar.live("bob")[1] and registrar.sweep() == ()
    clock.now = T0 + timedelta(seconds=60)
    [lapsed] = registrar.sweep()
    assert (lapsed.state, publisher.published[-1]) == (EXPIRED, lapsed) and registrar.live("1002")[1] == ()


def test_a_register_under_the_minimum_is_423_with_min_expires() -> None:
    publisher = Publisher()
    _, answer = registered(publisher, Clock(), "Contact: <sip:1002@192.0.2.20:5062>;expires=10")
    assert answer.startswith(b"SIP/2.0 423 Interval Too Brief") and b"\r\nMin-Expires: 60\r\n" in answer
    assert publisher.published == []


def test_an_edge_sweeps_the_bindings_it_rebuilt_from_the_start(monkeypatch) -> None:
    """Bindings read from the topic that lapsed while no edge ran are published expired by the
    first sweep, without waiting for a REGISTER."""
    monkeypatch.setattr(sip_registrar, "SWEEP", 0.05)
    publisher, clock = Publisher(), Clock()
    bindings = Bindings()
    for event in register((), asked(Contact(UA, 60)), T0, LIMITS):
        bindings.apply(event)
    clock.now = T0 + timedelta(hours=1)
    registrar = Registrar("default", lambda: ConfigState(), bindings=bindings, publish=publisher, clock=clock)

    async def run() -> None:
        registrar.start()
        await asyncio.sleep(0.2)
        registrar.stop()

    asyncio.run(run())
    assert [(e.state, e.account, e.contact) for e in publisher.published] == [(EXPIRED, "1002", UA)]
    assert len(bindings) == 0
