"""A minimal SIP UAC for MESSAGE (RFC 3428) over UDP or TCP: `imbill send` and the tests.

It builds a request, sends it, and waits for the final response, retransmitting on UDP
with RFC 3261 Timer E doubling (T1 = 500 ms) until Timer F (32 s) or ``timeout``; over TCP
it sends once on one connection and reads responses framed by Content-Length. Given
credentials, it answers a 401/407 digest challenge once (RFC 3261 22.2): the same request
again, CSeq + 1, with an Authorization (Proxy-Authorization) computed from the password or
the account's HA1 (:mod:`imbill.producers.sip_digest`).
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from imbill.producers.sip_digest import Credentials, authorization
from imbill.producers.sip_tcp import FramingError, StreamFramer

__all__ = ["build_message", "send_message", "response_headers", "SipAnswer", "Credentials"]

CHALLENGES = {401: ("WWW-Authenticate", "Authorization"), 407: ("Proxy-Authenticate", "Proxy-Authorization")}


@dataclass(frozen=True)
class SipAnswer:
    status: int
    reason: str
    raw: bytes
    retransmissions: int
    challenged: bool = False  # a 401/407 came first and was answered with credentials


def build_message(*, from_user: str, to_user: str, domain: str, text: str, local_ip: str,
                  local_port: int, call_id: str | None = None, cseq: int = 1,
                  user_agent: str = "imbill-send/0.1", content_type: str = "text/plain;charset=UTF-8",
                  authorization: tuple[str, str] | None = None, transport: str = "UDP") -> bytes:
    """A MESSAGE datagram; ``authorization`` is a (header name, value) to add."""
    body = text.encode("utf-8")
    call_id = call_id or f"{uuid.uuid4().hex}@{local_ip}"
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    lines = [
        f"MESSAGE sip:{to_user}@{domain} SIP/2.0",
        f"Via: SIP/2.0/{transport} {local_ip}:{local_port};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:{from_user}@{domain}>;tag={uuid.uuid4().hex[:8]}",
        f"To: <sip:{to_user}@{domain}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} MESSAGE",
        f"User-Agent: {user_agent}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
    ]
    if authorization is not None:
        lines.insert(-2, f"{authorization[0]}: {authorization[1]}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def response_headers(data: bytes, name: str) -> list[str]:
    """The values of header ``name`` in a response datagram (case-insensitive name)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")[1:]
    wanted = name.lower()
    return [value.strip() for field, _, value in (line.partition(":") for line in head)
            if field.strip().lower() == wanted]


def _cseq_number(data: bytes) -> int | None:
    values = response_headers(data, "CSeq")
    number = values[0].split()[0] if values and values[0].split() else ""
    return int(number) if number.isdigit() else None


def _status(data: bytes) -> tuple[int, str]:
    first = data.split(b"\r\n", 1)[0].decode("utf-8", "replace").split(" ", 2)
    return int(first[1]), first[2] if len(first) > 2 else ""


def send_message(host: str, port: int, *, from_user: str, to_user: str, text: str,
                 domain: str | None = None, timeout: float = 8.0, call_id: str | None = None,
                 credentials: Credentials | Callable[[], Credentials | None] | None = None,
                 transport: str = "UDP") -> SipAnswer:
    """Send one MESSAGE and return the final response (raises TimeoutError without one, and
    ConnectionRefusedError when nothing listens on the port). ``credentials`` (or a function
    giving them, called only when challenged) answer a 401/407; without them the challenge
    is the answer. ``transport``: UDP or TCP (one connection for both requests)."""
    stream = transport.upper() == "TCP"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM if stream else socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1" if host.startswith("127.") else "0.0.0.0", 0))
        sock.settimeout(timeout)
        sock.connect((host, port))  # connected: a port nobody listens on is refused at once (ICMP, RST)
        local_ip, local_port = sock.getsockname()
        framer = StreamFramer() if stream else None
        domain = domain or host
        call_id = call_id or f"{uuid.uuid4().hex}@{local_ip}"

        def request(cseq: int, auth: tuple[str, str] | None = None) -> bytes:
            return build_message(from_user=from_user, to_user=to_user, domain=domain, text=text,
                                 local_ip=local_ip if local_ip != "0.0.0.0" else host, local_port=local_port,
                                 call_id=call_id, cseq=cseq, authorization=auth,
                                 transport="TCP" if stream else "UDP")

        def exchange(data: bytes, cseq: int) -> SipAnswer:
            if framer is not None:
                return _stream_transaction(sock, framer, (host, port), data, cseq, deadline)
            return _transaction(sock, (host, port), data, cseq, deadline)

        deadline = time.monotonic() + timeout
        answer = exchange(request(1), 1)
        if answer.status not in CHALLENGES or credentials is None:
            return answer
        found = credentials() if callable(credentials) else credentials
        challenge_header, credentials_header = CHALLENGES[answer.status]
        value = found and authorization(response_headers(answer.raw, challenge_header), found, method="MESSAGE",
                                        uri=f"sip:{to_user}@{domain}")
        if not value:
            return answer
        second = exchange(request(2, (credentials_header, value)), 2)
        return SipAnswer(second.status, second.reason, second.raw, answer.retransmissions + second.retransmissions,
                         challenged=True)


def _transaction(sock: socket.socket, address: tuple[str, int], request: bytes, cseq: int,
                 deadline: float) -> SipAnswer:
    """Send ``request`` until its final response (Timer E doubling up to 4 s) or ``deadline``;
    a late answer to an earlier request (another CSeq) is not taken for it."""
    interval, sent = 0.5, 0
    while time.monotonic() < deadline:
        sock.send(request)
        sent += 1
        wait_until = min(deadline, time.monotonic() + interval)
        while time.monotonic() < wait_until:
            sock.settimeout(max(0.01, wait_until - time.monotonic()))
            try:
                data = sock.recv(65535)
            except socket.timeout:
                break
            status, reason = _status(data)
            if status >= 200 and _cseq_number(data) in (cseq, None):
                return SipAnswer(status, reason, data, sent - 1)
        interval = min(interval * 2, 4.0)
    raise TimeoutError(f"no final response from {address[0]}:{address[1]} before the timeout")


def _stream_transaction(sock: socket.socket, framer: StreamFramer, address: tuple[str, int], request: bytes,
                        cseq: int, deadline: float) -> SipAnswer:
    """Send ``request`` once on the connection and read responses until its final one."""
    sock.sendall(request)
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except socket.timeout:
            break
        if not data:
            raise ConnectionResetError(f"{address[0]}:{address[1]} closed the connection without a final response")
        for item in framer.feed(data):
            if isinstance(item, FramingError):
                raise ConnectionResetError(f"unreadable response from {address[0]}:{address[1]}: {item.reason}")
            if isinstance(item, bytes):
                status, reason = _status(item)
                if status >= 200 and _cseq_number(item) in (cseq, None):
                    return SipAnswer(status, reason, item, 0)
    raise TimeoutError(f"no final response from {address[0]}:{address[1]} before the timeout")
