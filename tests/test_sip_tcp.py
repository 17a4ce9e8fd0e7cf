"""SIP over TCP (RFC 3261 section 18) beside UDP on the edge's port: the framing of a stream
by Content-Length (pure), then a real edge over real TCP connections: 202, a digest challenge
answered on the same connection, several messages per connection, messages split across
reads, a MESSAGE over the UDP size limit, and the limits (header size, connections, idle)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from imbill.domain.config import ConfigState
from imbill.producers.config_file import parse_config
from imbill.producers.edge import SipEdge
from imbill.producers.sip_auth import DigestAuthenticator
from imbill.producers.sip_client import Credentials, build_message, send_message
from imbill.producers.sip_tcp import (MAX_BODY_BYTES, MAX_HEADER_BYTES, PING_FRAME, FramingError, StreamFramer,
                                      TcpLimits)
from tests.edge_thread import edge_in_thread

HEAD = (b"MESSAGE sip:1002@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK%d\r\n"
        b"From: <sip:1001@127.0.0.1>;tag=1\r\nTo: <sip:1002@127.0.0.1>\r\nCall-ID: %s\r\nCSeq: 1 MESSAGE\r\n"
        b"Max-Forwards: 70\r\nContent-Type: text/plain\r\n")


def message(n: int = 1, body: bytes = b"hi", length: int | None = None, call_id: bytes | None = None,
            content_length_name: bytes = b"Content-Length") -> bytes:
    head = HEAD % (n, call_id or b"call-%d" % n)
    return head + content_length_name + b": %d\r\n\r\n" % (len(body) if length is None else length) + body


# --- framing: bytes in, messages out ------------------------------------------------------------


def frames(*chunks: bytes) -> list:
    framer = StreamFramer()
    return [item for chunk in chunks for item in framer.feed(chunk)]


def test_one_message_is_cut_at_its_content_length() -> None:
    assert frames(message(1)) == [message(1)]


def test_several_messages_in_one_read_come_out_in_order() -> None:
    assert frames(message(1) + message(2, b"") + message(3, b"x" * 500)) == [message(1), message(2, b""),
                                                                              message(3, b"x" * 500)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1000])
def test_a_message_split_across_reads_at_any_point_comes_out_whole(size: int) -> None:
    stream = message(1, "héllo wörld".encode()) + message(2)
    chunks = [stream[i:i + size] for i in range(0, len(stream), size)]
    assert frames(*chunks) == [message(1, "héllo wörld".encode()), message(2)]


@pytest.mark.parametrize(("stream", "expected"), [
    (b"\r\n\r\n", [PING_FRAME]),                                  # RFC 5626 keep-alive ping
    (b"\r\n\r\n" + message(1), [PING_FRAME, message(1)]),
    (b"\r\n" + message(1), [message(1)]),                         # a CRLF before a start line is ignored
    (message(1) + b"\r\n\r\n", [message(1), PING_FRAME]),
    (b"\r\n", []),                                                # half a ping: wait for the rest
    (message(1, content_length_name=b"l"), [message(1, content_length_name=b"l")]),  # the compact form
    (message(1, content_length_name=b"content-LENGTH"), [message(1, content_length_name=b"content-LENGTH")]),
])
def test_keep_alives_and_compact_forms(stream: bytes, expected: list) -> None:
    assert frames(stream) == expected


def test_a_message_without_content_length_is_a_400_and_ends_the_stream() -> None:
    no_length = HEAD % (1, b"c") + b"\r\nhi"
    framer = StreamFramer()
    error, = framer.feed(no_length + message(2))
    assert isinstance(error, FramingError) and error.status == 400 and "RFC 3261 18.3" in error.reason
    assert error.head == HEAD % (1, b"c") + b"\r\n"
    assert framer.broken and framer.feed(message(3)) == [] and framer.buffered == 0


@pytest.mark.parametrize(("stream", "status", "reason"), [
    (message(1, length=MAX_BODY_BYTES + 1), 513, "a body of 100,001 octets, over 100,000"),
    (HEAD % (1, b"c") + b"X-Long: " + b"a" * MAX_HEADER_BYTES, 513, "header section over 65,535 octets"),
    (HEAD % (1, b"c") + b"X-Long: " + b"a" * MAX_HEADER_BYTES + b"\r\nContent-Length: 0\r\n\r\n", 513,
     "header section over 65,535 octets"),
    (HEAD % (1, b"c") + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nhi", 400, "more than one Content-Length"),
    (HEAD % (1, b"c") + b"Content-Length: two\r\n\r\nhi", 400, "malformed Content-Length"),
    (HEAD % (1, b"c") + b"Content-Length: -1\r\n\r\n", 400, "malformed Content-Length"),
])
def test_what_cannot_be_framed_is_refused(stream: bytes, status: int, reason: str) -> None:
    error, = frames(stream)
    assert isinstance(error, FramingError) and (error.status, error.reason) == (status, reason)
    assert len(error.head) <= MAX_HEADER_BYTES


def test_the_largest_message_is_framed_and_no_more_is_buffered_than_one_message() -> None:
    framer = StreamFramer()
    big = message(1, b"x" * MAX_BODY_BYTES)
    assert framer.feed(big[:-1]) == [] and framer.buffered == len(big) - 1
    assert framer.feed(big[-1:]) == [big] and framer.buffered == 0


def test_an_unterminated_header_is_scanned_once_not_again_per_read() -> None:
    framer, started = StreamFramer(), time.perf_counter()
    for _ in range(MAX_HEADER_BYTES // 16):
        assert framer.feed(b"X-Slow: 12345\r\n" + b"-") == []
    assert time.perf_counter() - started < 2.0  # quadratic rescans of 64 KiB would take far longer


# --- the edge over TCP -----------------------------------------------------------------------------

CONFIG = """
environment: test
customers:
  - name: C
    currency: USD
    accounts:
      - {id: "1001", service_password: alice-secret, product: P}
      - {id: "1002", service_password: bob-secret, product: P}
products: [{name: P}]
"""


class Recorder:
    def __init__(self) -> None:
        self.attempts: list[Any] = []

    async def __call__(self, attempt: Any) -> None:
        self.attempts.append(attempt)


@contextmanager
def tcp_edge(sip: str = "sip: {authentication: false}", limits: TcpLimits = TcpLimits()) -> Iterator[dict]:
    state = ConfigState({"test": parse_config(CONFIG + sip).config})
    auth = DigestAuthenticator(lambda: state, "test")
    recorder = Recorder()
    edge = SipEdge(recorder, environment="test", edge_id="edge-tcp", port=0, authentication=auth, tcp=limits)

    with edge_in_thread(edge):
        yield {"port": edge.address[1], "recorder": recorder, "edge": edge}


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    return sock


def read_responses(sock: socket.socket, count: int, timeout: float = 3.0) -> list[bytes]:
    framer, found, deadline = StreamFramer(), [], time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except socket.timeout:
            break
        if not data:
            break
        found += [item for item in framer.feed(data) if isinstance(item, bytes)]
    return found


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while data := sock.recv(65536):
            del data
        return True
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def test_a_message_over_tcp_is_accepted_and_its_attempt_says_tcp() -> None:
    with tcp_edge() as edge:
        answer = send_message("127.0.0.1", edge["port"], from_user="1001", to_user="1002", text="over TCP",
                              timeout=3, transport="TCP")
        udp_answer = send_message("127.0.0.1", edge["port"], from_user="1001", to_user="1002", text="over UDP",
                                  timeout=3)
    assert answer.status == 202 and udp_answer.status == 202  # both transports on the same port
    tcp_attempt, udp_attempt = edge["recorder"].attempts
    assert (tcp_attempt.transport, udp_attempt.transport) == ("TCP", "UDP")
    assert tcp_attempt.body_bytes == len("over TCP")


def test_a_digest_challenge_is_answered_on_the_same_connection() -> None:
    with tcp_edge(sip="") as edge:
        answer = send_message("127.0.0.1", edge["port"], from_user="1001", to_user="1002", text="hi", timeout=3,
                              transport="TCP", credentials=Credentials("1001", "alice-secret"))
        wrong = send_message("127.0.0.1", edge["port"], from_user="1001", to_user="1002", text="hi", timeout=3,
                             transport="TCP", credentials=Credentials("1001", "guess"))
        tcp = edge["edge"].tcp.counters
    assert answer.status == 202 and answer.challenged
    assert wrong.status == 401
    assert tcp.accepted == 2 and tcp.messages == 4  # two connections, two requests on each
    attempt, = edge["recorder"].attempts
    assert attempt.transport == "TCP" and attempt.cseq == 2


def test_several_messages_on_one_connection_split_across_writes_are_each_answered() -> None:
    stream = b"".join(message(n, b"message %d" % n, call_id=b"%s-%d" % (uuid.uuid4().hex.encode(), n))
                      for n in range(1, 6))
    with tcp_edge() as edge, connect(edge["port"]) as sock:
        for start in range(0, len(stream), 37):  # writes that cut headers, lines and bodies
            sock.sendall(stream[start:start + 37])
            time.sleep(0.001)
        responses = read_responses(sock, 5)
    assert sorted(r.split(b"\r\n", 1)[0] for r in responses) == [b"SIP/2.0 202 Accepted"] * 5
    assert sorted(a.body_bytes for a in edge["recorder"].attempts) == [9] * 5
    assert edge["edge"].tcp.counters.accepted == 1


def test_a_message_over_the_udp_size_limit_is_accepted_over_tcp() -> None:
    text = "x" * 80_000  # more than a UDP datagram can carry (65,507 octets)
    with tcp_edge() as edge:
        answer = send_message("127.0.0.1", edge["port"], from_user="1001", to_user="1002", text=text, timeout=5,
                              transport="TCP")
    assert answer.status == 202
    attempt, = edge["recorder"].attempts
    assert attempt.body_bytes == attempt.body_chars == 80_000


def test_an_oversized_header_section_is_answered_513_and_the_connection_closed() -> None:
    oversized = HEAD % (1, b"big") + b"X-Padding: " + b"a" * (MAX_HEADER_BYTES + 10)
    with tcp_edge() as edge, connect(edge["port"]) as sock:
        sock.sendall(oversized)
        answer, = read_responses(sock, 1)
        closed = closed_by_peer(sock, 3)
    assert answer.startswith(b"SIP/2.0 513 Message Too Large") and b"Call-ID: big" in answer
    assert closed and edge["recorder"].attempts == []


def test_a_message_without_content_length_is_answered_400_and_the_connection_closed() -> None:
    with tcp_edge() as edge, connect(edge["port"]) as sock:
        sock.sendall(HEAD % (1, b"no-length") + b"\r\nhi")
        answer, = read_responses(sock, 1)
        closed = closed_by_peer(sock, 3)
    assert answer.startswith(b"SIP/2.0 400 Bad Request") and b"RFC 3261 18.3" in answer
    assert closed and edge["recorder"].attempts == []


def test_a_keep_alive_is_answered_and_an_idle_connection_closed() -> None:
    with tcp_edge(limits=TcpLimits(idle_timeout=1)) as edge, connect(edge["port"]) as sock:
        sock.sendall(b"\r\n\r\n")
        sock.settimeout(3)
        pong = sock.recv(16)
        time.sleep(0.6)
        sock.sendall(b"\r\n\r\n")  # activity: the connection lives on past the first second
        assert sock.recv(16) == b"\r\n"
        time.sleep(0.6)
        sock.sendall(message(1))
        answer, = read_responses(sock, 1)
        started = time.monotonic()
        closed = closed_by_peer(sock, 4)
        idle_for = time.monotonic() - started
        counters = edge["edge"].tcp.counters
    assert pong == b"\r\n" and answer.startswith(b"SIP/2.0 202")
    assert closed and 0.5 < idle_for < 2.5 and counters.idle_closed == 1


def test_connections_over_the_limits_are_closed_at_once() -> None:
    with tcp_edge(limits=TcpLimits(max_connections=3, max_per_source=2)) as edge:
        first, second = connect(edge["port"]), connect(edge["port"])
        third = connect(edge["port"])  # a third from 127.0.0.1: over the per-source limit
        try:
            assert closed_by_peer(third, 3)
            first.sendall(message(1))  # the admitted ones are served
            assert read_responses(first, 1)[0].startswith(b"SIP/2.0 202")
            first.close()
            time.sleep(0.3)
            fourth = connect(edge["port"])  # room again once one closed
            fourth.sendall(message(2))
            assert read_responses(fourth, 1)[0].startswith(b"SIP/2.0 202")
            fourth.close()
        finally:
            for sock in (first, second, third):
                sock.close()
        counters = edge["edge"].tcp.counters
    assert counters.refused == 1 and counters.accepted == 3


def test_no_tcp_when_its_connections_are_zero() -> None:
    with tcp_edge(limits=TcpLimits(max_connections=0)) as edge:
        assert edge["edge"].tcp is None
        with pytest.raises(ConnectionRefusedError):
            connect(edge["port"])


@pytest.mark.parametrize(("limits", "problem"), [
    (dict(max_connections=-1), "edge TCP connections"),
    (dict(max_per_source=0), "per source"),
    (dict(idle_timeout=0), "idle timeout"),
])
def test_tcp_limits_out_of_range_are_refused(limits: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        TcpLimits(**limits)


def test_build_message_names_its_transport_in_via() -> None:
    data = build_message(from_user="1", to_user="2", domain="d", text="t", local_ip="127.0.0.1", local_port=1,
                         transport="TCP")
    assert b"Via: SIP/2.0/TCP 127.0.0.1:1;" in data


SCENARIO = Path(__file__).resolve().parents[1] / "bench" / "sipp" / "message_auth.xml"


@pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp is not installed (scripts/sip-tools-up)")
def test_sipp_over_tcp_answers_the_challenge_on_its_connection(tmp_path: Path) -> None:
    """SIPp 3.6.1 over one TCP connection (`-t t1`), `[authentication]` with MD5: each MESSAGE
    challenged then accepted on the same connection; a wrong password gets 401s only."""
    calls = tmp_path / "calls.csv"
    calls.write_text("SEQUENTIAL\n1001;1002\n")

    def sipp(port: int, password: str, count: int) -> subprocess.CompletedProcess:
        return subprocess.run(["sipp", f"127.0.0.1:{port}", "-sf", str(SCENARIO), "-inf", str(calls), "-m", str(count),
                               "-r", "50", "-t", "t1", "-nostdin", "-au", "1001", "-ap", password, "-timeout", "20s",
                               "-timeout_error"], cwd=tmp_path, capture_output=True, text=True, timeout=60)

    with tcp_edge(sip="sip: {algorithms: [MD5, SHA-256]}") as edge:
        good = sipp(edge["port"], "alice-secret", 20)
        wrong = sipp(edge["port"], "not-alices", 3)  # below the guessing guard's 10
        tcp = edge["edge"].tcp.counters
    assert good.returncode == 0, good.stdout[-2000:] + good.stderr[-2000:]
    assert wrong.returncode != 0 and "received 'SIP/2.0 401 Unauthorized" in wrong.stderr
    attempts = edge["recorder"].attempts
    assert len(attempts) == 20 and {(a.transport, a.from_user, a.cseq, a.user_agent) for a in attempts} == {
        ("TCP", "1001", 2, "SIPp/auth")}
    assert tcp.accepted == 2 and tcp.framing_errors == 0  # one connection per SIPp run


def test_a_taken_tcp_port_is_said_in_one_line() -> None:
    async def scenario() -> str:
        with socket.socket() as blocker:
            blocker.bind(("127.0.0.1", 0))
            blocker.listen()
            edge = SipEdge(Recorder(), environment="test", edge_id="e", port=blocker.getsockname()[1],
                           authentication=None, tcp=TcpLimits())
            with pytest.raises(OSError) as refused:
                await edge.start()
            return refused.value.strerror

    assert asyncio.run(scenario()).endswith("(Address already in use): free the port, or --tcp-max-connections 0 "
                                            "for UDP only")
