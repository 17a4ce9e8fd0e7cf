"""Delivery of a MESSAGE to an on-net recipient's registered Contact: the SIP edge as a
transaction-stateful proxy (RFC 3261 section 16) with UDP client transactions (17.1.2).

    forwarded request  -> Request-URI = the binding's Contact, our Via on top (a fresh
                          branch), Max-Forwards - 1 (70 when absent; 483 when it was 0),
                          the sender's credentials removed (they were for the edge), sent to
                          the address the binding REGISTERed from (as the edge answers
                          clients: symmetric, NAT-friendly)
    retransmissions    -> Timer E: T1 = 0.5 s doubling to T2 = 4 s, every T2 once a
                          provisional answer came (17.1.2.2)
    final answer       -> relayed to the sender without our Via (16.7); a 2xx is
                          ``delivered``, any other final status ``failed``; over MAX_RELAYED
                          octets, the edge's own response of its status instead
    no final answer    -> 408 after ``timeout`` (at most Timer F, 32 s)

There is no forking: a recipient with several bindings is delivered to the most recently
registered one. No Record-Route: a MESSAGE makes no dialog (RFC 3428).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from imbill.producers.sip import SipRequest
from imbill.producers.sip_grammar import split_commas

__all__ = ["DELIVERY_MODES", "DeliverySettings", "Final", "Forwarder", "forwarded_request", "relayed_response",
           "response_branch", "response_status", "T1", "T2", "TIMER_F"]

DELIVERY_MODES = ("off", "on", "required")
T1, T2, TIMER_F = 0.5, 4.0, 32.0
MAX_FORWARDS = 70
MAX_RELAYED = 8192
"""The largest answer relayed as it is: the edge keeps it 32 s for retransmissions, so a
larger one (a recipient's body) is answered with the edge's own response of its status."""
_DROPPED = frozenset(("authorization", "proxy-authorization", "content-length", "max-forwards", "route"))
_BRANCH = re.compile(r";[ \t]*branch[ \t]*=[ \t]*([^;, \t]+)", re.IGNORECASE)
log = logging.getLogger(__name__)

Final = Callable[[int, bytes | None], None]
"""Told once per delivery: the final status and the response to relay (None: the edge answers
with its own response of that status: 408, or an answer over MAX_RELAYED)."""


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """``mode``: off (never deliver), on (deliver to a recipient with a live binding, 202 when it
    has none: as before delivery existed) or required (480 without a binding); ``timeout``:
    seconds to wait for the recipient's final answer (408 after)."""

    mode: str = "on"
    timeout: float = 8.0

    def __post_init__(self) -> None:
        if self.mode not in DELIVERY_MODES:
            raise ValueError(f"edge delivery: one of {', '.join(DELIVERY_MODES)}, not {self.mode!r}")
        if not 0 < self.timeout <= TIMER_F:
            raise ValueError(f"edge delivery timeout: over 0 and at most {TIMER_F:g} s, not {self.timeout:g}")


def forwarded_request(request: SipRequest, contact: str, via: str) -> bytes | None:
    """The request sent to ``contact`` with ``via`` on top; None when Max-Forwards is 0."""
    hops = request.header("Max-Forwards")
    if hops is not None and int(hops) == 0:
        return None
    lines = [f"{request.method} {contact} SIP/2.0", f"Via: {via}",
             f"Max-Forwards: {int(hops) - 1 if hops is not None else MAX_FORWARDS}"]
    lines += [f"{name}: {value}" for name, value in request.headers if name.lower() not in _DROPPED]
    lines.append(f"Content-Length: {len(request.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + request.body


def response_status(datagram: bytes) -> int | None:
    """The status code of a response datagram (None when its status line is not one)."""
    parts = datagram.lstrip(b"\r\n").split(b"\r\n", 1)[0].split(b" ", 2)
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() and len(parts[1]) == 3 else None


def response_branch(datagram: bytes) -> str | None:
    """The branch of a response's topmost Via: which client transaction it answers."""
    for line in _head_lines(datagram):
        name, _, value = line.partition(":")
        if name.strip().lower() in ("via", "v"):
            found = _BRANCH.search(split_commas(value.strip())[0] if value.strip() else "")
            return found[1] if found else None
    return None


def relayed_response(datagram: bytes) -> bytes:
    """The response without its topmost Via (ours), for the sender (RFC 3261 16.7 step 9)."""
    head, separator, body = datagram.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    for index, line in enumerate(lines[1:], start=1):
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"via", b"v"):
            rest = split_commas(value.strip().decode("utf-8", "surrogateescape"))[1:]
            if rest:
                lines[index] = ("Via: " + ", ".join(rest)).encode("utf-8", "surrogateescape")
            else:
                del lines[index]
            break
    return b"\r\n".join(lines) + separator + body


def _head_lines(datagram: bytes) -> list[str]:
    return datagram.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")[1:]


class _Client:
    """One client transaction: its request, where it goes, its timers and who is told."""

    __slots__ = ("datagram", "address", "final", "interval", "timer", "deadline")

    def __init__(self, datagram: bytes, address: tuple[str, int], final: Final) -> None:
        self.datagram, self.address, self.final = datagram, address, final
        self.interval = T1
        self.timer: asyncio.TimerHandle | None = None
        self.deadline: asyncio.TimerHandle | None = None


class Forwarder:
    """The edge's client transactions: ``forward`` a request, ``on_response`` for every
    response datagram the edge receives (True when it belonged to one)."""

    def __init__(self, send: Callable[[bytes, tuple[str, int]], None], via_host: str, via_port: int,
                 settings: DeliverySettings = DeliverySettings()) -> None:
        self._send, self._via_host, self._via_port, self.settings = send, via_host, via_port, settings
        self._pending: dict[str, _Client] = {}
        self.relayed = self.timed_out = 0

    def __len__(self) -> int:
        return len(self._pending)

    def forward(self, request: SipRequest, contact: str, address: tuple[str, int], final: Final) -> bool:
        """Start delivering ``request`` to ``contact`` at ``address``; False (nothing sent) when
        its Max-Forwards is 0 (the caller answers 483)."""
        branch = "z9hG4bK-imbill-" + secrets.token_hex(8)
        datagram = forwarded_request(request, contact,
                                     f"SIP/2.0/UDP {self._via_host}:{self._via_port};branch={branch};rport")
        if datagram is None:
            return False
        loop = asyncio.get_running_loop()
        client = self._pending[branch] = _Client(datagram, address, final)
        client.deadline = loop.call_later(self.settings.timeout, self._expire, branch)
        self._transmit(branch)
        return True

    def on_response(self, datagram: bytes) -> bool:
        branch = response_branch(datagram)
        client = self._pending.get(branch or "")
        status = response_status(datagram)
        if client is None or status is None:
            return False
        if status < 200:
            client.interval = T2  # proceeding: retransmit every T2 (17.1.2.2)
            return True
        self._finish(branch, client)
        self.relayed += 1
        client.final(status, relayed_response(datagram) if len(datagram) <= MAX_RELAYED else None)
        return True

    def cancel(self) -> None:
        """Stop every transaction (the edge is stopping): each is told 408."""
        for branch, client in list(self._pending.items()):
            self._finish(branch, client)
            client.final(408, None)

    def _transmit(self, branch: str) -> None:
        client = self._pending.get(branch)
        if client is None:
            return
        self._send(client.datagram, client.address)
        client.timer = asyncio.get_running_loop().call_later(client.interval, self._transmit, branch)
        client.interval = min(client.interval * 2, T2)

    def _expire(self, branch: str) -> None:
        client = self._pending.get(branch)
        if client is not None:
            self._finish(branch, client)
            self.timed_out += 1
            log.debug("no final answer from %s:%s within %s s", *client.address, self.settings.timeout)
            client.final(408, None)

    def _finish(self, branch: str, client: _Client) -> None:
        del self._pending[branch]
        for timer in (client.timer, client.deadline):
            if timer is not None:
                timer.cancel()
