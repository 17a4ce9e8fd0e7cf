"""A minimal SIP UAC for MESSAGE (RFC 3428) over UDP: `imbill send` and the traffic generator.

It builds a request, sends it, and waits for the final response, retransmitting on UDP
with RFC 3261 Timer E doubling (T1 = 500 ms) until Timer F (32 s) or ``timeout``.
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass

__all__ = ["build_message", "send_message", "SipAnswer"]


@dataclass(frozen=True)
class SipAnswer:
    status: int
    reason: str
    raw: bytes
    retransmissions: int


def build_message(*, from_user: str, to_user: str, domain: str, text: str, local_ip: str,
                  local_port: int, call_id: str | None = None, cseq: int = 1,
                  user_agent: str = "imbill-send/0.1", content_type: str = "text/plain;charset=UTF-8") -> bytes:
    body = text.encode("utf-8")
    call_id = call_id or f"{uuid.uuid4().hex}@{local_ip}"
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    lines = [
        f"MESSAGE sip:{to_user}@{domain} SIP/2.0",
        f"Via: SIP/2.0/UDP {local_ip}:{local_port};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:{from_user}@{domain}>;tag={uuid.uuid4().hex[:8]}",
        f"To: <sip:{to_user}@{domain}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} MESSAGE",
        f"User-Agent: {user_agent}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def _status(data: bytes) -> tuple[int, str]:
    first = data.split(b"\r\n", 1)[0].decode("utf-8", "replace").split(" ", 2)
    return int(first[1]), first[2] if len(first) > 2 else ""


def send_message(host: str, port: int, *, from_user: str, to_user: str, text: str,
                 domain: str | None = None, timeout: float = 8.0, call_id: str | None = None) -> SipAnswer:
    """Send one MESSAGE and return the final response (raises TimeoutError without one, and
    ConnectionRefusedError when nothing listens on the port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1" if host.startswith("127.") else "0.0.0.0", 0))
        sock.connect((host, port))  # connected: a port nobody listens on is refused at once (ICMP)
        local_ip, local_port = sock.getsockname()
        request = build_message(from_user=from_user, to_user=to_user, domain=domain or host, text=text,
                                local_ip=local_ip if local_ip != "0.0.0.0" else host,
                                local_port=local_port, call_id=call_id)
        deadline = time.monotonic() + timeout
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
                if status >= 200:
                    return SipAnswer(status, reason, data, sent - 1)
            interval = min(interval * 2, 4.0)
        raise TimeoutError(f"no final response from {host}:{port} within {timeout}s")
