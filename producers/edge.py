"""The SIP edge: a UDP server that turns SIP MESSAGE requests into MessageAttempt events.

    MESSAGE            -> publish(attempt), then 202 Accepted (500 + Retry-After if publish raised)
    other methods      -> 405 Method Not Allowed, Allow: MESSAGE (ACK: never answered)
    malformed request  -> 400 (505 for another SIP version); dropped when no Via/CSeq is readable
    responses          -> dropped, never answered

A MESSAGE opens a non-INVITE server transaction (RFC 3261 17.2.2) keyed by top Via
branch + Call-ID + CSeq and kept 32 s (Timer J, 64*T1) in a bounded cache: a
retransmission gets the cached final response and is not published again; one that
arrives while the publish is still pending is absorbed (the client retransmits).
Each MESSAGE is published by its own task, so publishes run concurrently.

Responses go to the source address and port of the datagram (symmetric response
routing, as RFC 3581 rport does), not to the Via sent-by of RFC 3261 18.2.2: that
is what reaches clients behind NAT and test harnesses on ephemeral ports.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from imbill.producers.attempt import attempt_from_request
from imbill.producers.sip import HeaderFields, SipParseError, SipRequest, is_response, parse_request
from imbill.producers.sip_responses import ALLOW, build_response

__all__ = ["EdgeCounters", "Publish", "SipEdge", "serve_edge"]

Publish = Callable[[dict[str, Any]], Awaitable[None]]
TransactionKey = tuple[str, str, int, str]
log = logging.getLogger(__name__)


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


class SipEdge(asyncio.DatagramProtocol):
    """The UDP server; `start()` binds it, `stop()` drains pending publishes and closes it."""

    def __init__(
        self,
        publish: Publish,
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
    ) -> None:
        self._publish, self._environment, self._edge_id = publish, environment, edge_id
        self._host, self._port, self._server, self._clock = host, port, server, clock
        self._retry_after, self._max_pending, self._receive_buffer = retry_after, max_pending, receive_buffer
        self._transactions = _Transactions(transaction_ttl, max_transactions)
        self._counters = EdgeCounters()
        self._pending: set[asyncio.Task[None]] = set()
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = self._publish_failing = False

    @property
    def counters(self) -> EdgeCounters:
        return replace(self._counters)

    @property
    def address(self) -> tuple[str, int]:
        if self._transport is None:
            raise RuntimeError("the SIP edge is not started")
        return self._transport.get_extra_info("sockname")[:2]

    async def start(self) -> tuple[str, int]:
        self._loop = asyncio.get_running_loop()
        await self._loop.create_datagram_endpoint(lambda: self, local_addr=(self._host, self._port))
        assert self._transport is not None
        sock = self._transport.get_extra_info("socket")  # bursts: a bigger kernel queue (capped by rmem_max)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer)
        log.info("SIP edge %s listening on %s:%s/udp", self._edge_id, *self.address)
        return self.address

    async def stop(self, grace: float = 5.0) -> None:
        """Answer new MESSAGEs 503, let pending publishes finish and answer (`grace` s), close."""
        self._stopping = True
        if self._pending:
            _, late = await asyncio.wait(set(self._pending), timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
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
            self._counters.dropped_responses += 1
            return
        request = parse_request(data)
        if isinstance(request, SipParseError):
            self._reject_malformed(request, addr)
        elif request.method == "MESSAGE":
            self._on_message(request, addr)
        elif request.method == "ACK":
            self._counters.ignored += 1
        else:
            self._counters.rejected_method += 1
            self._answer(request.headers, 405, addr, allow=ALLOW)

    def _reject_malformed(self, error: SipParseError, addr: tuple[str, int]) -> None:
        self._counters.rejected_malformed += 1
        log.debug("malformed request from %s:%s: %s", addr[0], addr[1], error.reason)
        if self._answer(error.headers, error.status, addr, warning=error.reason) is None:
            self._counters.dropped_malformed += 1

    def _on_message(self, request: SipRequest, addr: tuple[str, int]) -> None:
        assert self._loop is not None
        key = (request.branch or "", request.call_id, request.cseq, request.cseq_method)
        known, response = self._transactions.lookup(key, self._loop.time())
        if known:
            self._counters.retransmissions += 1
            self._send(response, addr)  # None while pending: absorbed
            return
        if self._stopping or len(self._pending) >= self._max_pending:
            self._counters.unavailable += 1
            self._answer(request.headers, 503, addr, retry_after=self._retry_after)
            return
        attempt = attempt_from_request(
            request,
            environment=self._environment,
            received_at=self._clock(),
            source_ip=addr[0],
            source_port=addr[1],
            edge_id=self._edge_id,
        )
        self._transactions.record(key, None, self._loop.time())
        task = self._loop.create_task(self._publish_and_answer(attempt, request.headers, addr, key))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish_and_answer(
        self, attempt: dict[str, Any], headers: HeaderFields, addr: tuple[str, int], key: TransactionKey
    ) -> None:
        try:
            await self._publish(attempt)
        except Exception as exc:  # noqa: BLE001 - any publish failure is a 500 to the client
            self._counters.publish_failures += 1
            self._log_publish_failure(attempt["attempt_id"], exc)
            response = self._answer(headers, 500, addr, retry_after=self._retry_after)
        else:
            self._counters.accepted += 1
            self._publish_failing = False
            response = self._answer(headers, 202, addr)
        assert self._loop is not None
        self._transactions.record(key, response, self._loop.time())

    def _log_publish_failure(self, attempt_id: str, exc: Exception) -> None:
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
        if response is not None and self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(response, addr)


async def serve_edge(
    publish: Publish,
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
