"""SIP over TCP beside UDP, on the same port (RFC 3261 section 18): the stream cut into
messages, each handled by the edge exactly as a datagram, its answers written back on the
connection it came on.

    CRLF CRLF (keep-alive ping)            -> CRLF (pong, RFC 5626 3.5.1); counts as activity
    CRLF before a start line               -> ignored (RFC 3261 7.5)
    header section, then Content-Length
    octets of body                         -> one message, handed to the edge (several per
                                              connection, split across reads or not)
    no Content-Length                      -> 400, connection closed (RFC 3261 18.3: mandatory on
                                              a stream; without it the next message cannot be found)
    header section over MAX_HEADER_BYTES,
    or a body over MAX_BODY_BYTES          -> 513 Message Too Large, connection closed
    no complete message for ``idle_timeout`` s -> connection closed
    over ``max_connections`` connections, or
    ``max_per_source`` from one address    -> closed at once

The limits: a header section as large as a whole UDP datagram (65,535 octets), and a body of
at most ``domain.rating.MAX_BODY_CHARS`` octets (100,000): a body of n octets has at most n
characters in any charset, so every MESSAGE accepted over TCP is one the processor rates (a
longer body would be refused ``implausible_attempt`` after its 202). That is what TCP is for
here: a MESSAGE over the UDP size limit. The attempt's text fields stay within
``MAX_TEXT_CHARS``, as over UDP, because they come from the header section.

Memory is bounded: each connection buffers at most one message (MAX_HEADER_BYTES +
MAX_BODY_BYTES), the connections are bounded, and a client that does not read its answers has
its reading paused (the transport's write buffer is the limit) instead of growing it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass

from imbill.domain.rating import MAX_BODY_CHARS
from imbill.producers.sip import parse_request
from imbill.producers.sip_responses import build_response

__all__ = ["MAX_BODY_BYTES", "MAX_HEADER_BYTES", "PING", "FramingError", "StreamFramer", "TcpCounters",
           "TcpLimits", "TcpPeer", "TcpServer"]

MAX_HEADER_BYTES = 65_535
"""The longest header section read over TCP: what one UDP datagram could hold."""
MAX_BODY_BYTES = MAX_BODY_CHARS
"""The longest body read over TCP: the longest the processor rates (see the module doc)."""
PING = b"\r\n\r\n"
PONG = b"\r\n"
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$",
                             re.IGNORECASE | re.MULTILINE)
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FramingError:
    """Why the stream cannot be cut into messages any more: answered, then the connection closed."""

    status: int
    reason: str
    head: bytes
    """The header section read (complete or not), for the fields of the answer."""


class _Ping:
    """A keep-alive (CRLF CRLF): answered with CRLF."""


PING_FRAME = _Ping()


class StreamFramer:
    """The bytes of one connection in (``feed``), complete messages out, in order (pure: no I/O)."""

    def __init__(self, max_header: int = MAX_HEADER_BYTES, max_body: int = MAX_BODY_BYTES) -> None:
        self._buffer = bytearray()
        self._max_header, self._max_body = max_header, max_body
        self._scanned = 0  # the header end was not found before this offset
        self._need: int | None = None  # the whole message's length once its header section is read
        self.broken = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | _Ping | FramingError]:
        """The messages (and pings) completed by ``data``; a FramingError ends the stream."""
        if self.broken:
            return []
        self._buffer += data
        out: list[bytes | _Ping | FramingError] = []
        while True:
            item = self._next()
            if item is None:
                return out
            out.append(item)
            if isinstance(item, FramingError):
                self.broken = True
                self._buffer.clear()
                return out

    def _next(self) -> bytes | _Ping | FramingError | None:
        buffer = self._buffer
        if self._need is None:
            if buffer.startswith(PING):
                del buffer[:4]
                return PING_FRAME
            while buffer.startswith(b"\r\n") and len(buffer) > 2 and buffer[2:3] != b"\r":
                del buffer[:2]  # a CRLF before a start line
            if buffer[:2] in (b"\r\n", b"\r"):
                return None  # a ping, or a CRLF, not complete yet
            end = buffer.find(b"\r\n\r\n", max(0, self._scanned - 3))
            if end < 0:
                self._scanned = len(buffer)
                if len(buffer) > self._max_header:
                    return FramingError(513, f"header section over {self._max_header:,} octets",
                                        bytes(buffer[:self._max_header]))
                return None
            if end + 4 > self._max_header:
                return FramingError(513, f"header section over {self._max_header:,} octets",
                                    bytes(buffer[:self._max_header]))
            head = bytes(buffer[:end + 4])
            length = _content_length(head)
            if isinstance(length, str):
                return FramingError(400, length, head)
            if length > self._max_body:
                return FramingError(513, f"a body of {length:,} octets, over {self._max_body:,}", head)
            self._need, self._scanned = end + 4 + length, 0
        if len(buffer) < self._need:
            return None
        message = bytes(buffer[:self._need])
        del buffer[:self._need]
        self._need = None
        return message


def _content_length(head: bytes) -> int | str:
    """The Content-Length of a header section, or why there is no usable one."""
    values = {value for value in _CONTENT_LENGTH.findall(head.split(b"\r\n", 1)[-1])}
    if not values:
        return "no Content-Length: it is mandatory over TCP (RFC 3261 18.3)"
    if len(values) > 1:
        return "more than one Content-Length"
    value = values.pop()
    if not value.isdigit() or len(value) > 9:
        return "malformed Content-Length"
    return int(value)


@dataclass(frozen=True, slots=True)
class TcpLimits:
    """The edge's TCP limits (``imbill/settings.py`` reads them); ``max_connections`` 0: no TCP."""

    max_connections: int = 1024
    """Connections open at once, from all addresses."""
    max_per_source: int = 64
    """Connections open at once from one address (clients behind one NAT share it)."""
    idle_timeout: float = 300.0
    """Seconds a connection may go without a complete message or keep-alive before it is closed."""

    def __post_init__(self) -> None:
        if not 0 <= self.max_connections <= 1_000_000:
            raise ValueError(f"edge TCP connections: must be 0 (no TCP) to 1000000, not {self.max_connections}")
        if not 1 <= self.max_per_source <= 1_000_000:
            raise ValueError(f"edge TCP connections per source: must be 1 to 1000000, not {self.max_per_source}")
        if not 1 <= self.idle_timeout <= 86_400:
            raise ValueError(f"edge TCP idle timeout: must be 1 to 86400 seconds, not {self.idle_timeout:g}")

    @property
    def on(self) -> bool:
        return self.max_connections > 0


@dataclass(slots=True)
class TcpCounters:
    accepted: int = 0  # connections accepted
    refused: int = 0  # closed at once: over a connection limit
    idle_closed: int = 0  # closed after the idle timeout
    framing_errors: int = 0  # answered 400/513 and closed
    pings: int = 0  # CRLF CRLF keep-alives answered
    messages: int = 0  # handed to the edge

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class TcpPeer(tuple):
    """(host, port, connection): the far end of a TCP connection as the edge sees a source
    address, carrying the connection its answers are written back on."""

    __slots__ = ()
    transport = "TCP"

    def __new__(cls, host: str, port: int, connection: _Connection) -> TcpPeer:
        return tuple.__new__(cls, (host, port, connection))

    def send(self, data: bytes) -> None:
        self[2].send(data)


Handler = Callable[[bytes, TcpPeer], None]


class TcpServer:
    """The edge's TCP listener: ``start(host, port)``, then every message to ``handle``."""

    def __init__(self, handle: Handler, limits: TcpLimits, *, server: str) -> None:
        self._handle, self.limits, self._server = handle, limits, server
        self.counters = TcpCounters()
        self._connections: set[_Connection] = set()
        self._per_source: Counter[str] = Counter()
        self._listener: asyncio.Server | None = None

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(lambda: _Connection(self), host, port)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for connection in list(self._connections):
            connection.close()
        if self._listener is not None:
            await self._listener.wait_closed()

    def _opened(self, connection: _Connection) -> bool:
        """Admit a new connection within the limits; False: close it."""
        source = connection.peer[0]
        if len(self._connections) >= self.limits.max_connections or \
                self._per_source[source] >= self.limits.max_per_source:
            self.counters.refused += 1
            log.debug("TCP connection from %s refused: over a connection limit", source)
            return False
        self.counters.accepted += 1
        self._connections.add(connection)
        self._per_source[source] += 1
        return True

    def _closed(self, connection: _Connection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            source = connection.peer[0]
            self._per_source[source] -= 1
            if self._per_source[source] <= 0:
                del self._per_source[source]

    def _framing_error(self, error: FramingError, connection: _Connection) -> None:
        """Answer a stream that cannot be cut into messages (when its fields allow), then close."""
        self.counters.framing_errors += 1
        log.debug("TCP stream from %s:%s closed: %s", *connection.peer[:2], error.reason)
        parsed = parse_request(error.head if error.head.endswith(b"\r\n\r\n") else error.head + b"\r\n\r\n")
        response = build_response(parsed.headers, error.status, server=self._server, warning=error.reason)
        if response is not None:
            connection.send(response)
        connection.close()


class _Connection(asyncio.Protocol):
    """One TCP connection: framed, limited, closed when idle."""

    def __init__(self, server: TcpServer) -> None:
        self._server = server
        self._framer = StreamFramer()
        self._transport: asyncio.Transport | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._active = 0.0
        self.peer: TcpPeer = TcpPeer("", 0, self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        host, port = (transport.get_extra_info("peername") or ("", 0))[:2]  # None: the socket failed already
        self.peer = TcpPeer(host, port, self)
        if not self._server._opened(self):
            transport.close()
            return
        loop = asyncio.get_running_loop()
        self._active = loop.time()
        self._idle = loop.call_later(self._server.limits.idle_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        server = self._server
        for item in self._framer.feed(data):
            if isinstance(item, FramingError):
                server._framing_error(item, self)
                return
            self._active = asyncio.get_running_loop().time()
            if item is PING_FRAME:
                server.counters.pings += 1
                self.send(PONG)
            else:
                server.counters.messages += 1
                server._handle(item, self.peer)  # type: ignore[arg-type]

    def send(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()  # what is written still goes out first

    def pause_writing(self) -> None:
        """The client does not read its answers: stop reading its requests until it does."""
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._server._closed(self)
        self._transport = None

    def _check_idle(self) -> None:
        loop = asyncio.get_running_loop()
        left = self._active + self._server.limits.idle_timeout - loop.time()
        if left > 0:
            self._idle = loop.call_later(left, self._check_idle)
            return
        self._server.counters.idle_closed += 1
        log.debug("TCP connection from %s:%s closed: idle for %g s", *self.peer[:2], self._server.limits.idle_timeout)
        self.close()
