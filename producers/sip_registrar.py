"""The SIP edge's registrar (RFC 3261 section 10): an authenticated REGISTER becomes
RegistrationChanged events on the registrations topic, and the edge's bindings are their
fold (:class:`~imbill.domain.registrations.Bindings`), which MESSAGE delivery reads.

    REGISTER, authenticated as its To account -> the rules of domain/registrations.py; once
                                                 the broker acknowledged the events, they
                                                 are applied and 200 lists every live
                                                 binding of the account with its expires
    the rules refuse it                       -> 400 / 423 (+ Min-Expires) / 403, nothing kept
    the events are not acknowledged           -> 500, nothing kept (the client retries)
    a binding lapses                          -> an ``expired`` event (swept every SWEEP s)

The bindings are kept by account id: a REGISTER for an alias binds its account. At start
the edge rebuilds them from the topic (:func:`rebuilt_bindings`): a restarted edge still
delivers to clients registered before it stopped; lapsed ones are swept as expired.
Several edges each know the bindings made through them and those on the topic when they
started (they do not follow one another's).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from imbill.bus import read_to_end
from imbill.domain.config import ConfigState
from imbill.domain.errors import BrokerError, PublishError
from imbill.domain.events import RegistrationChanged
from imbill.domain.keys import account_key
from imbill.domain.rating_index import index_of
from imbill.domain.registrations import (Binding, Bindings, Contact, Register, RegisterLimits, RegisterRefused,
                                         expired, register)
from imbill.producers.sip import SipRequest, header_values
from imbill.producers.sip_grammar import split_commas
from imbill.producers.sip_responses import build_response
from imbill.schemas.codec import encode_event, event_of

__all__ = ["SWEEP", "Registrar", "RegistrationPublisher", "contacts_of", "rebuilt_bindings"]

SWEEP = 5.0
"""Seconds between two sweeps for lapsed bindings."""
EXPIRES_CAP = 2**32 - 1
_EXPIRES_PARAM = re.compile(r";[ \t]*expires[ \t]*=[ \t]*([0-9]+)", re.IGNORECASE)
_DIGITS = re.compile(r"[0-9]+")
log = logging.getLogger(__name__)

Answer = Callable[[bytes | None], None]
Settled = Callable[[BaseException | None], None]


class Publish(Protocol):
    """Publishes events and calls ``done`` once all are acknowledged (None) or not."""

    def submit(self, events: tuple[RegistrationChanged, ...], done: Settled) -> None: ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


def contacts_of(request: SipRequest) -> tuple[tuple[Contact, ...], bool] | str:
    """The Contacts of a REGISTER and whether one is ``*``; the reason when one is unreadable."""
    contacts, wildcard = [], False
    for value in header_values(request.headers, "Contact"):
        for element in split_commas(value):
            if element.strip() == "*":
                wildcard = True
                continue
            uri, params = _uri_and_params(element.strip())
            if not uri:
                return f"unreadable Contact {element[:80]!r}"
            found = _EXPIRES_PARAM.search(params)
            contacts.append(Contact(uri, min(int(found[1]), EXPIRES_CAP) if found else None))
    return tuple(contacts), wildcard


def _uri_and_params(element: str) -> tuple[str, str]:
    """The URI of a name-addr or addr-spec and its header parameters (``;expires``, ``;q``)."""
    if "<" in element:
        start, end = element.find("<"), element.find(">")
        return (element[start + 1:end], element[end + 1:]) if end > start else ("", "")
    uri, _, params = element.partition(";")
    return uri, ";" + params if params else ""


def _expires_header(request: SipRequest) -> int | None | str:
    value = request.header("Expires")
    if value is None:
        return None
    if not _DIGITS.fullmatch(value.strip()):
        return f"malformed Expires {value[:40]!r}"
    return min(int(value.strip()[:11]), EXPIRES_CAP)


class Registrar:
    """The bindings of the edge's environments, changed by REGISTER and read by delivery (the
    environment of a request is the edge's: by its domain; ``environment`` when not given)."""

    def __init__(self, environment: str, config: Callable[[], ConfigState], *, bindings: Bindings | None = None,
                 publish: Publish | None = None, limits: RegisterLimits = RegisterLimits(),
                 clock: Callable[[], datetime] = _utc_now, server: str = "imbill-sip-edge") -> None:
        """``publish``: None keeps bindings in this process only (tests of the edge)."""
        self._environment, self._config, self._publish = environment, config, publish
        self.bindings = bindings if bindings is not None else Bindings()
        self.limits, self._clock, self._server = limits, clock, server
        self._sweeping: asyncio.TimerHandle | None = None

    def account_of(self, user: str, environment: str | None = None) -> str | None:
        """The account whose id or alias ``user`` is (as dialed, or E.164-translated)."""
        env = self._config().environment(environment or self._environment)
        if env is None:
            return None
        account = index_of(env).recipient(user)
        return account.account_id if account is not None else None

    def live(self, user: str, environment: str | None = None) -> tuple[str | None, tuple[Binding, ...]]:
        """The account of ``user`` and its live bindings (the newest first)."""
        environment = environment or self._environment
        account = self.account_of(user, environment)
        if account is None:
            return None, ()
        return account, self.bindings.of(environment, account, self._clock())

    def register(self, request: SipRequest, source: tuple[str, int], transport: str, answer: Answer,
                 environment: str | None = None) -> None:
        """Handle one authenticated REGISTER; ``answer`` gets the response (once)."""
        environment = environment or self._environment
        account = self.account_of(request.to_user, environment)
        read = contacts_of(request)
        expires = _expires_header(request)
        if account is None or isinstance(read, str) or isinstance(expires, str):
            why = read if isinstance(read, str) else expires if isinstance(expires, str) else "no such account"
            answer(build_response(request.headers, 400 if account else 404, server=self._server, warning=why))
            return
        now = self._clock()
        asked = Register(environment, account, read[0], read[1], expires, request.call_id, request.cseq,
                         request.user_agent, f"{source[0]}:{source[1]}", transport)
        outcome = register(self.bindings.of(environment, account, now), asked, now, self.limits)
        if isinstance(outcome, RegisterRefused):
            answer(self._refused(request, outcome))
        elif not outcome or self._publish is None:
            self._applied(outcome, request, environment, account, answer, None)
        else:
            self._publish.submit(outcome, lambda error: self._applied(outcome, request, environment, account, answer,
                                                                      error))

    def _applied(self, events: tuple[RegistrationChanged, ...], request: SipRequest, environment: str, account: str,
                 answer: Answer, error: BaseException | None) -> None:
        if error is not None:
            log.warning("registration of %s not acknowledged: %s", account, error)
            answer(build_response(request.headers, 500, server=self._server, retry_after=5))
            return
        for event in events:
            self.bindings.apply(event)
        self._schedule_sweep()
        now = self._clock()
        listed = tuple(("Contact", f"<{b.contact}>;expires={b.remaining(now)}")
                       for b in self.bindings.of(environment, account, now))
        answer(build_response(request.headers, 200, server=self._server, extra=listed))

    def _refused(self, request: SipRequest, refused: RegisterRefused) -> bytes | None:
        extra = (("Min-Expires", str(refused.min_expires)),) if refused.min_expires is not None else ()
        return build_response(request.headers, refused.status, server=self._server, warning=refused.reason,
                              extra=extra)

    def sweep(self) -> tuple[RegistrationChanged, ...]:
        """Drop the bindings that lapsed, published as ``expired`` (an event lost here is
        harmless: a lapsed binding is never delivered to, and readers check expires_at)."""
        now = self._clock()
        events = tuple(expired(env, account, binding, now) for env, account, binding in self.bindings.lapsed(now))
        for event in events:
            self.bindings.apply(event)
        if events and self._publish is not None:
            self._publish.submit(events, lambda error: error and log.warning("expired bindings: %s", error))
        return events

    def start(self) -> None:
        """Sweep from now on (bindings rebuilt from the topic may have lapsed while no edge ran)."""
        self._schedule_sweep()

    def _schedule_sweep(self) -> None:
        if self._sweeping is None and len(self.bindings):
            self._sweeping = asyncio.get_running_loop().call_later(SWEEP, self._swept)

    def _swept(self) -> None:
        self._sweeping = None
        self.sweep()
        self._schedule_sweep()

    def stop(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            self._sweeping = None


class RegistrationPublisher:
    """RegistrationChanged events onto the registrations topic, keyed by account, acks=all
    (REGISTERs are rare next to MESSAGEs: one send per event)."""

    def __init__(self, bootstrap_servers: str, topic: str, *, timeout: float = 5.0) -> None:
        self._bootstrap, self._topic, self._timeout = bootstrap_servers, topic, timeout
        self._producer: AIOKafkaProducer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RegistrationPublisher:
        producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all", enable_idempotence=False,
                                    request_timeout_ms=int(self._timeout * 1000))
        try:
            await producer.start()
        except (KafkaError, OSError) as exc:
            await producer.stop()
            raise BrokerError(f"cannot publish to {self._topic} on {self._bootstrap}: {exc!r}") from exc
        self._producer = producer
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    def submit(self, events: tuple[RegistrationChanged, ...], done: Settled) -> None:
        task = asyncio.get_running_loop().create_task(self._publish(events, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, events: tuple[RegistrationChanged, ...], done: Settled) -> None:
        try:
            if self._producer is None:
                raise PublishError("the registration publisher is not started")
            sent = [await self._producer.send(self._topic, encode_event(event),
                                              key=account_key(event.environment, event.account))
                    for event in events]
            await asyncio.wait_for(asyncio.gather(*sent), self._timeout)
        except Exception as exc:  # noqa: BLE001 - the REGISTER is answered 500, the client retries
            done(exc)
        else:
            done(None)


def rebuilt_bindings(bootstrap_servers: str, topic: str) -> Bindings:
    """Every environment's bindings as the registrations topic says (read to its end)."""
    bindings = Bindings()
    for event in _events(read_to_end(bootstrap_servers, topic)):
        bindings.apply(event)
    return bindings


def _events(envelopes: Iterable) -> Iterable[RegistrationChanged]:  # type: ignore[type-arg]
    for envelope in envelopes:
        try:
            event = event_of(envelope.name, envelope.record) if envelope.record is not None else None
        except Exception as exc:  # noqa: BLE001 - a hostile record decides nothing here
            event, envelope_error = None, str(exc)
        else:
            envelope_error = envelope.error or f"a {envelope.name}, not a RegistrationChanged"
        if type(event) is RegistrationChanged:
            yield event
        else:
            log.warning("registrations record %s[%d]@%d skipped: %s", envelope.topic, envelope.partition,
                        envelope.offset, envelope_error[:1000])
