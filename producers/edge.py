"""The SIP edge: a UDP (and TCP) server that turns SIP MESSAGE requests into MessageAttempt events.

    MESSAGE            -> publish(attempt), then 202 Accepted (500 + Retry-After if publish raised)
                          404 and nothing published when no environment serves its domain
                          (producers/sip_domains.py: the From host; the Request-URI's when incoming)
                          401/407/403/400 and nothing published when digest authentication
                          (producers/sip_auth.py) refuses it; 416 for a Request-URI not sip:/sips:;
                          403 + Warning when the sender's messaging is suspended (service status)
                          delivered to an on-net recipient's registered Contact when it has one
                          (producers/sip_proxy.py): the recipient's final answer relayed (408 when
                          none comes; 480 without a binding when delivery is required), the
                          attempt published with the outcome before the answer goes out
    REGISTER           -> with authentication on: challenged as a MESSAGE, then the registrar's
                          answer (producers/sip_registrar.py); off: 405 as other methods
    other methods      -> 405 Method Not Allowed, Allow: MESSAGE (ACK: never answered)
    malformed request  -> 400 (505 for another SIP version); without CSeq the 400 carries
                          "CSeq: 0 <method>"; dropped when no Via (or no method) is readable
    responses          -> to a delivery's client transaction: taken; any other: dropped

A MESSAGE opens a non-INVITE server transaction (RFC 3261 17.2.2) keyed by top Via
branch + Call-ID + CSeq and kept 32 s (Timer J, 64*T1) in a bounded cache: a
retransmission gets the cached final response and is not published again; one that
arrives while the publish is still pending is absorbed (the client retransmits).

Publishing never blocks the socket: a publisher with `submit(attempt, done)` (the
AttemptPublisher, which batches) is handed each attempt with a callback that answers
202 or 500 when the broker settled it; a plain `async publish(attempt)` is run as one
task per attempt. Either way publishes run concurrently, at most `max_pending` at once.
A batch settles hundreds of attempts at once: their answers go out ANSWER_BURST per turn
of the event loop, with requests read in between, not as one burst that a client's
receive buffer would drop (and the client retransmit 500 ms later).

Responses go to the source address and port of the datagram (symmetric response
routing, as RFC 3581 rport does), not to the Via sent-by of RFC 3261 18.2.2: that
is what reaches clients behind NAT and test harnesses on ephemeral ports.

With ``tcp`` limits, the edge also listens on TCP on the same port (producers/sip_tcp.py):
each message cut from a stream is handled as a datagram, with the same parsing, and its
answers are written back on its connection (a TcpPeer stands for the source address); its
attempt's transport is TCP. An answer whose connection has closed is dropped (the client
opens a new one and sends again; the transaction cache answers it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from imbill.producers.attempt import attempt_from_request
from imbill.producers.sip import HeaderFields, SipParseError, SipRequest, header_values, is_response, parse_request
from imbill.producers.sip_auth import Refusal
from imbill.producers.sip_proxy import DeliverySettings, Forwarder
from imbill.producers.sip_registrar import Registrar
from imbill.producers.sip_responses import ALLOW, build_response
from imbill.producers.sip_tcp import TcpLimits, TcpPeer, TcpServer

__all__ = ["Authentication", "Done", "EdgeCounters", "Environments", "Publish", "ServiceStatus", "SipEdge", "Submit",
           "serve_edge"]

Publish = Callable[[dict[str, Any]], Awaitable[None]]
Done = Callable[[BaseException | None], None]  # None: the broker acknowledged the attempt
TransactionKey = tuple[str, str, int, str]
ANSWER_BURST = 32  # a client's socket buffer (SIPp's: 64 KiB) must not meet a batch's answers at once
SIP_SCHEMES = ("sip:", "sips:")
log = logging.getLogger(__name__)


class Authentication(Protocol):
    """Digest authentication (producers.sip_auth.DigestAuthenticator); ``environment``: the
    request's (None: the edge's own)."""

    def required(self, environment: str | None = None) -> bool: ...

    def check(self, request: SipRequest, claimed: str, source: str = "",
              environment: str | None = None) -> Refusal | None: ...


class ServiceStatus(Protocol):
    """The service status of the accounts (streams.status_reader.ServiceStatusReader)."""

    def suspended(self, account: str, environment: str | None = None) -> str | None:
        """Why ``account``'s messaging is suspended in ``environment`` (e.g. "wallet empty"), or None."""
        ...


class Environments(Protocol):
    """The environment of a request, from its domain (producers.sip_domains.EnvironmentsByDomain)."""

    def of(self, request: SipRequest, incoming: bool = False) -> str | None:
        """None: no environment serves the request's domain (answered 404)."""
        ...


class Submit(Protocol):
    """A publisher that calls `done` once per attempt, from the event loop, when it is settled."""

    def submit(self, attempt: dict[str, Any], done: Done) -> None: ...


@dataclass(slots=True)
class EdgeCounters:
    received: int = 0  # every datagram
    accepted: int = 0  # MESSAGE published and answered 202
    rejected_method: int = 0  # answered 405
    rejected_malformed: int = 0  # parse errors, answered 400/505 or dropped
    dropped_malformed: int = 0  # of those, no Via/CSeq to answer with
    publish_failures: int = 0  # answered 500
    retransmissions: int = 0  # matched a MESSAGE transaction: re-answered or absorbed
    dropped_responses: int = 0  # SIP responses, never answered
    ignored: int = 0  # ACKs and CRLF keep-alives
    unavailable: int = 0  # answered 503: too many publishes pending, or stopping
    internal_errors: int = 0
    unsupported_scheme: int = 0  # answered 416: a Request-URI neither sip: nor sips:
    unauthenticated: int = 0  # refused by authentication: 401/407 (challenged), 400 or 403
    registered: int = 0  # REGISTER authenticated, handed to the registrar
    suspended: int = 0  # MESSAGE from an account whose messaging is suspended, answered 403
    delivered: int = 0  # MESSAGE delivered to a recipient's binding: a 2xx relayed
    undelivered: int = 0  # MESSAGE to an on-net recipient not delivered: 480, 408 or its refusal
    unknown_domain: int = 0  # MESSAGE or REGISTER for a domain no environment serves, answered 404

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Transactions:
    """Bounded, time-ordered map: key -> final response, None while the publish is pending."""

    def __init__(self, ttl: float, max_size: int) -> None:
        self._ttl, self._max_size = ttl, max_size
        self._entries: OrderedDict[TransactionKey, tuple[float, bytes | None]] = OrderedDict()

    def lookup(self, key: TransactionKey, now: float) -> tuple[bool, bytes | None]:
        self._expire(now)
        entry = self._entries.get(key)
        return (False, None) if entry is None else (True, entry[1])

    def record(self, key: TransactionKey, response: bytes | None, now: float) -> None:
        self._entries[key] = (now + self._ttl, response)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_size:
            self._entries.popitem(last=False)

    def _expire(self, now: float) -> None:
        while self._entries and next(iter(self._entries.values()))[0] <= now:
            self._entries.popitem(last=False)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _TaskPerAttempt:
    """Adapts a plain `async publish(attempt)` to `submit`: one task per attempt."""

    def __init__(self, publish: Publish) -> None:
        self._publish = publish
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, attempt: dict[str, Any], done: Done) -> None:
        task = asyncio.get_running_loop().create_task(self._run(attempt, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _run(self, attempt: dict[str, Any], done: Done) -> None:
        try:
            await self._publish(attempt)
        except Exception as exc:  # noqa: BLE001 - any publish failure is a 500 to the client
            done(exc)
        else:
            done(None)


class SipEdge(asyncio.DatagramProtocol):
    """The UDP server; `start()` binds it, `stop()` drains pending publishes and closes it."""

    def __init__(
        self,
        publish: Publish | Submit,
        *,
        environment: str,
        edge_id: str,
        host: str = "127.0.0.1",
        port: int = 5060,
        server: str = "imbill-sip-edge",
        clock: Callable[[], datetime] = _utc_now,
        retry_after: int = 5,
        transaction_ttl: float = 32.0,
        max_transactions: int = 100_000,
        max_pending: int = 10_000,
        receive_buffer: int = 4 * 1024 * 1024,
        vendor_peers: frozenset[str] = frozenset(),
        authentication: Authentication | None,
        service_status: ServiceStatus | None = None,
        registrar: Registrar | None = None,
        delivery: DeliverySettings = DeliverySettings(),
        environments: Environments | None = None,
        tcp: TcpLimits | None = None,
    ) -> None:
        """``authentication``: None only where every peer is trusted (tests of other parts);
        ``imbill edge`` always passes the environment's (on unless its config turns it off).
        ``service_status``: MESSAGEs from suspended accounts are answered 403 (``imbill edge``
        passes the service-status topic's reader). ``registrar``: REGISTER keeps bindings there
        and MESSAGEs to registered recipients are delivered per ``delivery`` (None: REGISTER
        gets 405 and nothing is delivered). ``environments``: the environment of each
        request from its domain (None: every request is ``environment``'s). ``tcp``: also
        listen on TCP, on the same port, within these limits (None or 0 connections: UDP only)."""
        self._publisher = publish if hasattr(publish, "submit") else _TaskPerAttempt(publish)
        self._environment, self._edge_id = environment, edge_id
        self._host, self._port, self._server, self._clock = host, port, server, clock
        self._retry_after, self._max_pending, self._receive_buffer = retry_after, max_pending, receive_buffer
        self._transactions = _Transactions(transaction_ttl, max_transactions)
        self._counters = EdgeCounters()
        self._pending = 0  # attempts submitted and not settled yet
        self._outbox: deque[tuple[bytes, tuple[str, int]]] = deque()  # answers to settled attempts
        self._sending = False
        self._drained: asyncio.Future[None] | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = self._publish_failing = False
        self._vendor_peers = frozenset(vendor_peers)
        """Source addresses of vendor connections: their MESSAGEs are incoming (free by default)."""
        self._auth = authentication
        self._service_status = service_status
        self._registrar, self._delivery = registrar, delivery
        self._forwarder: Forwarder | None = None
        self._environments = environments
        self._tcp = TcpServer(self.datagram_received, tcp, server=server) if tcp is not None and tcp.on else None

    @property
    def counters(self) -> EdgeCounters:
        return replace(self._counters)

    @property
    def address(self) -> tuple[str, int]:
        if self._transport is None:
            raise RuntimeError("the SIP edge is not started")
        return self._transport.get_extra_info("sockname")[:2]

    @property
    def tcp(self) -> TcpServer | None:
        return self._tcp

    async def start(self) -> tuple[str, int]:
        self._loop = asyncio.get_running_loop()
        for attempt in range(1, 6):
            await self._loop.create_datagram_endpoint(lambda: self, local_addr=(self._host, self._port))
            assert self._transport is not None
            if self._tcp is None:
                break
            port = self.address[1]  # the port UDP got, also when asked for 0
            try:
                await self._tcp.start(self._host, port)
                break
            except OSError as exc:
                self._transport.close()
                if self._port or attempt == 5:  # a port asked for is the operator's: say it is taken
                    why = os.strerror(exc.errno) if exc.errno else str(exc)
                    raise OSError(exc.errno, f"cannot listen on tcp {self._host}:{port} ({why}): free the port, "
                                             "or --tcp-max-connections 0 for UDP only") from exc
                # port 0: the number UDP got is taken on TCP (a connection's port); another one
        _enlarge_receive_buffer(self._transport.get_extra_info("socket"), self._receive_buffer)
        self._forwarder = Forwarder(self._send, *self.address, self._delivery)
        if self._registrar is not None:
            self._registrar.start()
        log.info("SIP edge %s listening on %s:%s/udp%s", self._edge_id, *self.address,
                 " and tcp" if self._tcp is not None else "")
        return self.address

    async def stop(self, grace: float = 5.0) -> None:
        """Answer new MESSAGEs 503, let pending publishes finish and answer (`grace` s), close."""
        self._stopping = True
        if self._forwarder is not None:
            self._forwarder.cancel()  # each undelivered MESSAGE: 408, published as failed
        if self._registrar is not None:
            self._registrar.stop()
        if self._pending and self._loop is not None:
            self._drained = self._loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._drained), grace)
            except TimeoutError:
                log.warning("SIP edge stopped with %d publishes unanswered", self._pending)
        if isinstance(self._publisher, _TaskPerAttempt):
            self._publisher.cancel()
        while self._outbox:
            self._send(*self._outbox.popleft())
        if self._tcp is not None:
            await self._tcp.stop()
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP edge socket error: %s", exc)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._counters.received += 1
        try:
            self._handle(data, addr)
        except Exception:  # one datagram must never stop the edge
            self._counters.internal_errors += 1
            log.exception("SIP edge failed on a datagram from %s:%s", *addr[:2])

    def _handle(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.strip(b"\r\n"):
            self._counters.ignored += 1  # CRLF keep-alive (RFC 5626 4.4.1)
            return
        if is_response(data):
            if self._forwarder is None or not self._forwarder.on_response(data):
                self._counters.dropped_responses += 1
            return
        request = parse_request(data)
        if isinstance(request, SipParseError):
            self._reject_malformed(request, addr)
        elif request.method == "MESSAGE":
            self._on_message(request, addr)
        elif request.method == "ACK":
            self._counters.ignored += 1
        elif request.method == "REGISTER" and self._registers():
            self._on_register(request, addr)
        else:
            self._counters.rejected_method += 1
            registers = self._registers()
            self._answer(request.headers, 405, addr, allow=f"{ALLOW}, REGISTER" if registers else ALLOW)

    def _reject_malformed(self, error: SipParseError, addr: tuple[str, int]) -> None:
        self._counters.rejected_malformed += 1
        log.debug("malformed request from %s:%s: %s", addr[0], addr[1], error.reason)
        headers = error.headers
        if error.method is not None and not header_values(headers, "CSeq"):
            headers += (("CSeq", f"0 {error.method}"),)  # RFC 3261 8.1.1.5: 0 is a valid number
        if self._answer(headers, error.status, addr, warning=error.reason) is None:
            self._counters.dropped_malformed += 1

    def _environment_of(self, request: SipRequest, addr: tuple[str, int]) -> str | None:
        """The request's environment; None (after answering 404) when no environment serves
        its domain: nothing is published for it, nor authenticated in a tenant it is not of."""
        if self._environments is None:
            return self._environment
        environment = self._environments.of(request, incoming=addr[0] in self._vendor_peers)
        if environment is None:
            self._counters.unknown_domain += 1
            self._answer(request.headers, 404, addr, warning="no environment serves the domain of this request")
        return environment

    def _unsupported_scheme(self, request: SipRequest, addr: tuple[str, int]) -> bool:
        """A Request-URI neither sip: nor sips: (e.g. mailto:) is answered 416, before anything else."""
        uri = request.request_uri
        if uri.startswith(SIP_SCHEMES) or uri[:5].lower().startswith(SIP_SCHEMES):
            return False
        self._counters.unsupported_scheme += 1
        self._answer(request.headers, 416, addr)
        return True

    def _refused(self, request: SipRequest, addr: tuple[str, int], environment: str) -> bool:
        """Answer authentication's refusal in the request's environment, if any. Answered
        statelessly (a retransmission is challenged again, with a fresh nonce): refusals are
        not remembered, so requests that are never authenticated cannot fill the edge's
        memory with copies of their headers."""
        if self._auth is None:
            return False
        refusal = self._auth.check(request, _claimed(request), addr[0], environment)
        if refusal is None:
            return False
        self._counters.unauthenticated += 1
        self._answer(request.headers, refusal.status, addr, warning=refusal.warning, extra=refusal.headers)
        return True

    def _suspended(self, request: SipRequest, addr: tuple[str, int], environment: str) -> bool:
        """A MESSAGE from an account whose messaging is suspended: 403 naming why, nothing
        published (stateless, like the other refusals). Incoming messages (vendor peers) are
        left to the processor, which refuses a suspended recipient."""
        if self._service_status is None or addr[0] in self._vendor_peers:
            return False
        reason = self._service_status.suspended(request.from_user, environment)
        if reason is None:
            return False
        self._counters.suspended += 1
        self._answer(request.headers, 403, addr,
                     warning=f"the messaging service of account {request.from_user} is suspended ({reason}): "
                             "top up the account")
        return True

    def _registers(self) -> bool:
        """REGISTER is served only where it is authenticated (a binding steers an account's
        messages): with a registrar and authentication; an environment whose authentication is
        off answers it 405 (:meth:`_on_register`)."""
        return self._registrar is not None and self._auth is not None

    def _on_register(self, request: SipRequest, addr: tuple[str, int]) -> None:
        """Authenticated like a MESSAGE; then the registrar's answer (200 once its events are stored)."""
        assert self._loop is not None and self._registrar is not None
        key = (request.branch or "", request.call_id, request.cseq, request.cseq_method)
        now = self._loop.time()
        known, response = self._transactions.lookup(key, now)
        if known:
            self._counters.retransmissions += 1
            self._send(response, addr)  # None while its events are published: absorbed
            return
        if self._unsupported_scheme(request, addr):
            return
        environment = self._environment_of(request, addr)
        if environment is None:
            return
        if not self._auth.required(environment):  # type: ignore[union-attr]
            self._counters.rejected_method += 1
            self._answer(request.headers, 405, addr, allow=ALLOW)
        elif not self._refused(request, addr, environment):
            self._counters.registered += 1
            self._transactions.record(key, None, now)
            self._registrar.register(request, addr, "TCP" if type(addr) is TcpPeer else "UDP",
                                     partial(self._registered, key, addr), environment)

    def _registered(self, key: TransactionKey, addr: tuple[str, int], response: bytes | None) -> None:
        assert self._loop is not None
        self._transactions.record(key, response, self._loop.time())
        self._send(response, addr)

    def _on_message(self, request: SipRequest, addr: tuple[str, int]) -> None:
        assert self._loop is not None
        key = (request.branch or "", request.call_id, request.cseq, request.cseq_method)
        now = self._loop.time()
        known, response = self._transactions.lookup(key, now)
        if known:
            self._counters.retransmissions += 1
            self._send(response, addr)  # None while pending: absorbed
            return
        if self._unsupported_scheme(request, addr):
            return
        environment = self._environment_of(request, addr)
        if environment is None or self._refused(request, addr, environment):
            return
        if self._suspended(request, addr, environment):
            return
        if self._stopping or self._pending >= self._max_pending:
            self._counters.unavailable += 1
            self._answer(request.headers, 503, addr, retry_after=self._retry_after)
            return
        attempt = attempt_from_request(
            request,
            environment=environment,
            received_at=self._clock(),
            source_ip=addr[0],
            source_port=addr[1],
            transport="TCP" if type(addr) is TcpPeer else "UDP",
            edge_id=self._edge_id,
            direction="incoming" if addr[0] in self._vendor_peers else "outgoing",
        )
        target = self._target(request, environment) if self._registrar is not None else None
        if target is not None and type(target) is not int:
            if not self._forwarder.forward(request, target.contact, _address(target.source),
                                           partial(self._delivered, attempt, request.headers, addr, key)):
                self._answer(request.headers, 483, addr)
                return
            self._transactions.record(key, None, now)
            self._pending += 1
            return
        self._transactions.record(key, None, now)
        self._pending += 1
        if target is not None:  # required, and no binding
            self._delivered(attempt, request.headers, addr, key, target, None)
        else:
            self._submit(attempt, request.headers, addr, key, None)

    def _target(self, request: SipRequest, environment: str) -> Any:
        """Where a MESSAGE is delivered: the recipient's newest live binding; 480 when an account
        without one must be delivered to; None when the edge does not deliver it (delivery off,
        off-net, or no binding unless required)."""
        mode = self._delivery.mode
        if mode == "off" or (mode == "on" and not self._registrar.bindings):
            return None
        account, bindings = self._registrar.live(request.to_user, environment)
        if bindings:
            return bindings[0]
        return 480 if account is not None and mode == "required" else None

    def _with_binding_user_agent(self, attempt: Any) -> Any:
        """A MESSAGE without User-Agent: the sender's registered client's (what policies match)."""
        if attempt.user_agent is not None or self._registrar is None or not self._registrar.bindings:
            return attempt
        _, bindings = self._registrar.live(attempt.from_user, attempt.environment)
        return replace(attempt, user_agent=bindings[0].user_agent) if bindings else attempt

    def _delivered(self, attempt: Any, headers: HeaderFields, addr: tuple[str, int], key: TransactionKey,
                   status: int, relayed: bytes | None) -> None:
        """The delivery's outcome: published with the attempt, then its answer relayed."""
        delivered = 200 <= status < 300
        if delivered:
            self._counters.delivered += 1
        else:
            self._counters.undelivered += 1
        outcome = replace(attempt, delivery="delivered" if delivered else "failed", delivery_code=status)
        self._submit(outcome, headers, addr, key, relayed or build_response(headers, status, server=self._server))

    def _submit(self, attempt: Any, headers: HeaderFields, addr: tuple[str, int], key: TransactionKey,
                answer: bytes | None) -> None:
        done = partial(self._published, attempt.attempt_id, headers, addr, key, answer)
        try:
            self._publisher.submit(self._with_binding_user_agent(attempt), done)
        except Exception as exc:  # noqa: BLE001 - a 500 now, not a transaction pending forever
            done(exc)

    def _published(
        self, attempt_id: str, headers: HeaderFields, addr: tuple[str, int], key: TransactionKey,
        answer: bytes | None, error: BaseException | None,
    ) -> None:
        """The publisher settled an attempt: its answer (202, or the delivery's) if the broker
        acknowledged it, else 500."""
        if error is None:
            self._counters.accepted += 1
            self._publish_failing = False
            response = answer or build_response(headers, 202, server=self._server)
        else:
            self._counters.publish_failures += 1
            self._log_publish_failure(attempt_id, error)
            response = build_response(headers, 500, server=self._server, retry_after=self._retry_after)
        assert self._loop is not None
        self._transactions.record(key, response, self._loop.time())
        if response is not None:
            self._outbox.append((response, addr))
            if not self._sending:
                self._sending = True
                self._loop.call_soon(self._send_outbox)
        self._pending -= 1
        if not self._pending and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _send_outbox(self) -> None:
        """Answer settled MESSAGEs, ANSWER_BURST per turn of the event loop, requests read in between."""
        outbox = self._outbox
        for _ in range(min(ANSWER_BURST, len(outbox))):
            self._send(*outbox.popleft())
        self._sending = bool(outbox)
        if self._sending:
            assert self._loop is not None
            self._loop.call_soon(self._send_outbox)

    def _log_publish_failure(self, attempt_id: str, exc: BaseException) -> None:
        """One warning when failures start (not one per MESSAGE while the broker is down)."""
        log.log(
            logging.DEBUG if self._publish_failing else logging.WARNING,
            "publish of attempt %s failed: %r",
            attempt_id,
            exc,
        )
        self._publish_failing = True

    def _answer(self, headers: HeaderFields, status: int, addr: tuple[str, int], **extra: Any) -> bytes | None:
        response = build_response(headers, status, server=self._server, **extra)
        self._send(response, addr)
        return response

    def _send(self, response: bytes | None, addr: tuple[str, int]) -> None:
        if response is None:
            return
        if type(addr) is TcpPeer:
            addr.send(response)
        elif self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(response, addr)


def _claimed(request: SipRequest) -> str:
    """The account a request acts for: the sender of a MESSAGE, the AOR of a REGISTER."""
    return request.to_user if request.method == "REGISTER" else request.from_user


def _address(source: str) -> tuple[str, int]:
    """The (host, port) of a binding's source, "host:port" (IPv6: "[::1]:5060" or "::1:5060")."""
    host, _, port = source.rpartition(":")
    return host.strip("[]"), int(port)


def _enlarge_receive_buffer(sock: socket.socket, size: int) -> None:
    """Bursts: a bigger kernel queue. SO_RCVBUFFORCE passes net.core.rmem_max where allowed."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUFFORCE, size)
    except (OSError, AttributeError):  # not privileged (CAP_NET_ADMIN) or not Linux
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if granted // 2 < size:  # Linux reports twice what was set (the rest is its bookkeeping)
        log.warning("SIP edge receive buffer is %d bytes, not %d (raise net.core.rmem_max)", granted // 2, size)


async def serve_edge(
    publish: Publish | Submit,
    *,
    environment: str,
    edge_id: str,
    on_started: Callable[[SipEdge], None] | None = None,
    **options: Any,
) -> None:
    """Run a SipEdge until cancelled (options: host, port, server, retry_after, ...)."""
    edge = SipEdge(publish, environment=environment, edge_id=edge_id, **options)
    await edge.start()
    if on_started is not None:
        on_started(edge)
    try:
        await asyncio.Event().wait()
    finally:
        await edge.stop()
