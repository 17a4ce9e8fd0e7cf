"""REGISTER and delivery at a real edge on UDP: a fake recipient (a UAS on a socket of the
test) REGISTERs with digest authentication, the edge forwards MESSAGEs for it there and
relays its answer; the attempt carries the outcome. The publisher is a recorder."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest

from imbill.producers.edge import SipEdge
from imbill.producers.sip import SipRequest, parse_request
from imbill.producers.sip_auth import DigestAuthenticator
from imbill.producers.sip_client import Credentials, build_message, response_headers, send_message
from imbill.producers.sip_digest import authorization
from imbill.producers.sip_proxy import DeliverySettings
from imbill.producers.sip_registrar import Registrar
from imbill.producers.sip_responses import build_response
from tests.edge_thread import edge_in_thread
from tests.test_edge_auth import ALICE, Recorder, state_of

BOB = Credentials("1002", "bob-secret")


@contextmanager
def edge_running(mode: str = "on", timeout: float = 3.0) -> Iterator[dict[str, Any]]:
    state = state_of()
    auth = DigestAuthenticator(lambda: state, "test")
    registrar = Registrar("test", lambda: state)
    recorder = Recorder()
    edge = SipEdge(recorder, environment="test", edge_id="edge-delivery", port=0, authentication=auth,
                   registrar=registrar, delivery=DeliverySettings(mode, timeout))

    with edge_in_thread(edge):
        yield {"port": edge.address[1], "recorder": recorder, "edge": edge, "registrar": registrar}


class Recipient:
    """A UAS on a UDP socket: REGISTERs as 1002 and answers the MESSAGEs it gets."""

    def __init__(self, answer: int | None = 200) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.contact = f"sip:1002@127.0.0.1:{self.port}"
        self.answer, self.received = answer, []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, edge_port: int, *, expires: str = "600", contact: str | None = None,
                 user_agent: str = "FakePhone/1.0", credentials: Credentials = BOB) -> bytes:
        call_id = uuid.uuid4().hex
        first = self._exchange(edge_port, self._register(1, call_id, expires, contact, user_agent, None,
                                                         credentials.username))
        value = authorization(response_headers(first, "WWW-Authenticate"), credentials, method="REGISTER",
                              uri="sip:127.0.0.1")
        return self._exchange(edge_port, self._register(2, call_id, expires, contact, user_agent, value,
                                                        credentials.username))

    def _register(self, cseq: int, call_id: str, expires: str, contact: str | None, user_agent: str,
                  value: str | None, user: str) -> bytes:
        lines = ["REGISTER sip:127.0.0.1 SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{uuid.uuid4().hex};rport",
                 "Max-Forwards: 70", f"From: <sip:{user}@127.0.0.1>;tag=r1", f"To: <sip:{user}@127.0.0.1>",
                 f"Call-ID: {call_id}", f"CSeq: {cseq} REGISTER", f"Contact: <{contact or self.contact}>",
                 f"Expires: {expires}", f"User-Agent: {user_agent}"]
        if value:
            lines.append(f"Authorization: {value}")
        return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()

    def _exchange(self, edge_port: int, datagram: bytes) -> bytes:
        self.sock.settimeout(3)
        self.sock.sendto(datagram, ("127.0.0.1", edge_port))
        return self.sock.recv(65535)

    def serve(self) -> Recipient:
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            request = parse_request(data)
            if not isinstance(request, SipRequest):
                continue
            self.received.append(request)
            if self.answer is not None:
                self.sock.sendto(build_response(request.headers, self.answer, server="fake-phone"), addr)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self.sock.close()


@pytest.fixture
def recipient() -> Iterator[Recipient]:
    found = Recipient()
    yield found
    found.close()


def status(datagram: bytes) -> int:
    return int(datagram.split(b" ", 2)[1])


def send(port: int, to_user: str = "1002", timeout: float = 6.0):
    return send_message("127.0.0.1", port, from_user="1001", to_user=to_user, text="hi Bob", timeout=timeout,
                        credentials=ALICE)


def test_a_message_to_a_registered_recipient_is_delivered_and_its_200_relayed(recipient) -> None:
    with edge_running() as edge:
        registered = recipient.register(edge["port"])
        assert status(registered) == 200
        assert response_headers(registered, "Contact") == [f"<{recipient.contact}>;expires=600"]
        recipient.serve()
        answer = send(edge["port"])
        attempts = edge["recorder"].attempts
        counters = edge["edge"].counters
    assert answer.status == 200 and answer.challenged
    [forwarded] = recipient.received
    assert (forwarded.method, forwarded.request_uri, forwarded.body) == ("MESSAGE", recipient.contact, b"hi Bob")
    assert forwarded.header("Max-Forwards") == "69" and forwarded.header("Authorization") is None
    assert forwarded.branch.startswith("z9hG4bK-imbill-") and len(forwarded.via) == 2
    assert b"z9hG4bK-imbill-" not in answer.raw  # our Via is not relayed to the sender
    [attempt] = attempts
    assert (attempt.from_user, attempt.to_user, attempt.delivery, attempt.delivery_code) == ("1001", "1002",
                                                                                              "delivered", 200)
    assert (counters.delivered, counters.accepted) == (1, 1)


def test_the_recipients_refusal_is_relayed_and_the_attempt_failed() -> None:
    busy = Recipient(answer=486)
    try:
        with edge_running() as edge:
            busy.register(edge["port"])
            busy.serve()
            answer = send(edge["port"])
            [attempt] = edge["recorder"].attempts
    finally:
        busy.close()
    assert answer.status == 486 and (attempt.delivery, attempt.delivery_code) == ("failed", 486)


def test_no_final_answer_within_the_timeout_is_408_and_the_request_was_retransmitted() -> None:
    silent = Recipient(answer=None)
    try:
        with edge_running(timeout=1.2) as edge:
            silent.register(edge["port"])
            silent.serve()
            answer = send(edge["port"])
            [attempt] = edge["recorder"].attempts
    finally:
        silent.close()
    assert answer.status == 408 and (attempt.delivery, attempt.delivery_code) == ("failed", 408)
    assert len(silent.received) == 2 and len({r.branch for r in silent.received}) == 1  # at 0 and 0.5 s


def test_without_a_binding_the_message_is_accepted_as_before() -> None:
    with edge_running() as edge:
        answer = send(edge["port"])
        [attempt] = edge["recorder"].attempts
    assert answer.status == 202 and (attempt.delivery, attempt.delivery_code) == (None, None)


def test_without_a_binding_when_delivery_is_required_it_is_480_and_the_attempt_failed() -> None:
    with edge_running(mode="required") as edge:
        answer = send(edge["port"])
        offnet = send(edge["port"], to_user="01133123456789")
        attempts = edge["recorder"].attempts
    assert (answer.status, offnet.status) == (480, 202)
    assert [(a.to_user, a.delivery, a.delivery_code) for a in attempts] == [
        ("1002", "failed", 480), ("01133123456789", None, None)]


def test_with_delivery_off_a_registered_recipient_gets_nothing(recipient) -> None:
    with edge_running(mode="off") as edge:
        recipient.register(edge["port"])
        recipient.serve()
        answer = send(edge["port"])
        [attempt] = edge["recorder"].attempts
    assert answer.status == 202 and attempt.delivery is None and recipient.received == []


def test_a_message_to_an_alias_is_delivered_to_its_account() -> None:
    """1001's aliases are alice and 12125550101: a MESSAGE from 1002 to alice reaches 1001."""
    alice = Recipient()
    try:
        with edge_running() as edge:
            assert status(alice.register(edge["port"], credentials=ALICE, contact="sip:1001@127.0.0.1:"
                                         f"{alice.port}")) == 200
            alice.serve()
            answer = send_message("127.0.0.1", edge["port"], from_user="1002", to_user="alice", text="hi",
                                  timeout=6.0, credentials=BOB)
            [attempt] = edge["recorder"].attempts
    finally:
        alice.close()
    assert answer.status == 200 and attempt.delivery == "delivered" and len(alice.received) == 1


def test_register_under_the_minimum_is_423_and_removal_ends_delivery(recipient) -> None:
    with edge_running() as edge:
        brief = recipient.register(edge["port"], expires="30")
        assert status(brief) == 423 and response_headers(brief, "Min-Expires") == ["60"]
        assert status(recipient.register(edge["port"])) == 200
        assert len(edge["registrar"].live("1002")[1]) == 1
        removed = recipient.register(edge["port"], expires="0")
        assert status(removed) == 200 and response_headers(removed, "Contact") == []
        answer = send(edge["port"])
    assert answer.status == 202 and edge["registrar"].live("1002") == ("1002", ())


def test_register_for_another_account_is_403(recipient) -> None:
    with edge_running() as edge:
        lines = recipient._register(1, "x", "600", None, "ua", None, "1001")
        challenge = recipient._exchange(edge["port"], lines)
        value = authorization(response_headers(challenge, "WWW-Authenticate"), BOB, method="REGISTER",
                              uri="sip:127.0.0.1")
        refused = recipient._exchange(edge["port"], recipient._register(2, "x", "600", None, "ua", value, "1001"))
    assert status(refused) == 403 and edge["registrar"].live("1001") == ("1001", ())


def test_a_message_without_user_agent_takes_its_senders_registered_one() -> None:
    phone = Recipient()
    try:
        with edge_running() as edge:
            phone.register(edge["port"], credentials=ALICE, contact=f"sip:1001@127.0.0.1:{phone.port}",
                           user_agent="Linphone/5.2.0")
            challenge = send_message("127.0.0.1", edge["port"], from_user="1001", to_user="1002", text="hi",
                                     timeout=3.0).raw
            value = authorization(response_headers(challenge, "WWW-Authenticate"), ALICE, method="MESSAGE",
                                  uri="sip:1002@127.0.0.1")
            datagram = b"\r\n".join(line for line in build_message(
                from_user="1001", to_user="1002", domain="127.0.0.1", text="hi", local_ip="127.0.0.1",
                local_port=5999, cseq=2, authorization=("Authorization", value)).split(b"\r\n")
                if not line.startswith(b"User-Agent:"))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(3)
                sock.sendto(datagram, ("127.0.0.1", edge["port"]))
                answer = sock.recv(65535)
            [attempt] = edge["recorder"].attempts
    finally:
        phone.close()
    assert status(answer) == 202 and attempt.user_agent == "Linphone/5.2.0"


def test_retransmissions_of_a_message_in_delivery_are_absorbed_and_it_is_delivered_once() -> None:
    """The sender's client retransmits (Timer E) while the recipient takes 0.8 s: one delivery."""
    slow = Recipient(answer=None)
    try:
        with edge_running() as edge:
            slow.register(edge["port"])
            slow.serve()

            def answer_late() -> None:
                while not slow.received:
                    threading.Event().wait(0.02)
                threading.Event().wait(0.8)
                first = slow.received[0]
                slow.sock.sendto(build_response(first.headers, 200, server="slow"), ("127.0.0.1", edge["port"]))

            with ThreadPoolExecutor(1) as pool:
                late = pool.submit(answer_late)
                answer = send(edge["port"])
                late.result(5)
            attempts = edge["recorder"].attempts
    finally:
        slow.close()
    assert answer.status == 200 and answer.retransmissions >= 1
    assert len(attempts) == 1 and attempts[0].delivery == "delivered"
