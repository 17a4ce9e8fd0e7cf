"""Digest authentication at the SIP edge (RFC 3261 section 22, RFC 7616, RFC 8760): a real
edge on a UDP socket, the suite's client (`imbill send`'s), a config read from YAML. An
unauthenticated or wrongly authenticated MESSAGE is answered and never published."""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from imbill.domain.config import ConfigState
from imbill.domain.errors import ConfigError
from imbill.producers.config_file import parse_config
from imbill.producers.edge import SipEdge
from imbill.producers.sip_auth import DigestAuthenticator, NonceCounts, Nonces
from imbill.producers.sip_client import Credentials, build_message, response_headers, send_message
from imbill.producers.sip_digest import authorization, parse_digest, response
from imbill.producers.sip_guard import GuardLimits, GuessingGuard
from imbill.producers.sip_registrar import Registrar
from tests.edge_thread import edge_in_thread

CONFIG = """
environment: test
customers:
  - name: C
    currency: USD
    accounts:
      - {id: "1001", service_password: alice-secret, product: P, aliases: [alice, "12125550101"]}
      - {id: "1002", service_password: bob-secret, product: P}
      - {id: "1003", product: P}
products: [{name: P}]
"""
ALICE = Credentials("1001", "alice-secret")


def state_of(sip: str = "") -> ConfigState:
    desired = parse_config(CONFIG + sip).config
    return ConfigState({"test": desired})


class Recorder:
    def __init__(self) -> None:
        self.attempts: list[Any] = []

    async def __call__(self, attempt: Any) -> None:
        self.attempts.append(attempt)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def edge_running(state: ConfigState | None = None, **options: Any) -> Iterator[dict[str, Any]]:
    """An edge in a thread of its own; yields its port, recorder, authenticator and clock."""
    holder = {"state": state or state_of()}
    clock = Clock()
    auth = DigestAuthenticator(lambda: holder["state"], "test", clock=clock, **options)
    recorder = Recorder()
    registrar = Registrar("test", lambda: holder["state"])
    edge = SipEdge(recorder, environment="test", edge_id="edge-auth", port=0, authentication=auth,
                   registrar=registrar)

    with edge_in_thread(edge):
        yield {"port": edge.address[1], "recorder": recorder, "auth": auth, "clock": clock, "holder": holder,
               "edge": edge}


def send(port: int, **kwargs: Any):
    return send_message("127.0.0.1", port, **{"from_user": "1001", "to_user": "1002", "text": "hi",
                                              "timeout": 3.0, **kwargs})


def exchange(port: int, datagram: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(datagram, ("127.0.0.1", port))
        return sock.recv(65535)


def authorized_message(port: int, challenge_of: bytes, credentials: Credentials, *, nc: int = 1,
                       from_user: str = "1001", call_id: str | None = None, cnonce: str = "c0ffee") -> bytes:
    value = authorization(response_headers(challenge_of, "WWW-Authenticate"), credentials, method="MESSAGE",
                          uri="sip:1002@127.0.0.1", nc=nc, cnonce=cnonce)
    assert value is not None
    return build_message(from_user=from_user, to_user="1002", domain="127.0.0.1", text="hi", local_ip="127.0.0.1",
                         local_port=5999, call_id=call_id or uuid.uuid4().hex, cseq=2,
                         authorization=("Authorization", value))


def first_challenge(port: int) -> bytes:
    answer = send(port)
    assert answer.status == 401
    return answer.raw


def status(datagram: bytes) -> int:
    return int(datagram.split(b" ", 2)[1])


# --- the digest arithmetic -----------------------------------------------------------------------

@pytest.mark.parametrize(("algorithm", "expected"), [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_the_response_of_rfc_7616_section_3_9_1(algorithm: str, expected: str) -> None:
    secret = Credentials("Mufasa", "Circle of Life").ha1(algorithm, "http-auth@example.org")
    assert response(algorithm, secret, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc="00000001",
                    cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop="auth", method="GET",
                    uri="/dir/index.html") == expected


@pytest.mark.parametrize("value", ["Basic QWxhZGRpbg==", "Digest", "Digest realm", 'Digest realm="x', "Digest a=b c=d",
                                   "Digest " + "a=b, " * 2000])
def test_credentials_that_break_the_grammar_are_none(value: str) -> None:
    assert parse_digest(value) is None


def test_credentials_never_print_their_secret() -> None:
    assert "alice-secret" not in repr(ALICE) and "alice-secret" not in str(ALICE)


# --- challenges and answers ----------------------------------------------------------------------

def test_a_message_without_credentials_is_challenged_sha256_first_and_not_published() -> None:
    with edge_running() as edge:
        answer = send(edge["port"])
        challenges = [parse_digest(v) for v in response_headers(answer.raw, "WWW-Authenticate")]
    assert answer.status == 401 and not answer.challenged
    assert [(c["algorithm"], c["qop"], c["realm"]) for c in challenges] == [("SHA-256", "auth", "test"),
                                                                            ("MD5", "auth", "test")]
    assert challenges[0]["nonce"] == challenges[1]["nonce"] and "stale" not in challenges[0]
    assert edge["recorder"].attempts == []


def test_a_retransmitted_request_is_challenged_again_statelessly() -> None:
    """Refusals are not remembered (bounded memory): the retransmission gets a fresh nonce,
    and the client may answer either challenge."""
    with edge_running() as edge:
        request = build_message(from_user="1001", to_user="1002", domain="127.0.0.1", text="x", local_ip="127.0.0.1",
                                local_port=5999, call_id="retx-auth")
        first, again = exchange(edge["port"], request), exchange(edge["port"], request)
        answers = [exchange(edge["port"], authorized_message(edge["port"], challenge, ALICE, call_id=f"retx-{n}"))
                   for n, challenge in enumerate((first, again))]
    assert status(first) == status(again) == 401 and first != again
    assert [status(a) for a in answers] == [202, 202] and len(edge["recorder"].attempts) == 2


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_the_right_password_is_charged_once(algorithm: str) -> None:
    with edge_running() as edge:
        answer = send(edge["port"], credentials=Credentials("1001", "alice-secret", algorithm=algorithm))
        attempts = edge["recorder"].attempts
    assert (answer.status, answer.challenged) == (202, True)
    assert [(a.from_user, a.cseq) for a in attempts] == [("1001", 2)]


def test_the_stored_ha1_answers_as_the_password_does() -> None:
    account = state_of().environment("test").accounts["1001"]
    assert "alice-secret" not in repr(account)
    ha1s = {("MD5", account.digest_realm): account.ha1_md5, ("SHA-256", account.digest_realm): account.ha1_sha256}
    with edge_running() as edge:
        answer = send(edge["port"], credentials=Credentials("1001", ha1s=ha1s))
    assert answer.status == 202


@pytest.mark.parametrize(("credentials", "from_user"), [
    (Credentials("1001", "wrong"), "1001"),           # wrong password
    (Credentials("9999", "anything"), "9999"),        # unknown account: the same answer
    (Credentials("1003", ""), "1003"),                # an account without a service password
])
def test_wrong_credentials_are_challenged_again_and_nothing_is_published(credentials, from_user) -> None:
    with edge_running() as edge:
        answer = send(edge["port"], from_user=from_user, credentials=credentials)
        attempts = edge["recorder"].attempts
        counters = edge["edge"].counters
    assert (answer.status, answer.challenged) == (401, True) and attempts == []
    assert counters.unauthenticated == 2 and counters.accepted == 0


def test_another_accounts_from_is_forbidden_an_alias_is_not() -> None:
    with edge_running() as edge:
        forbidden = send(edge["port"], from_user="1002", credentials=ALICE)
        alias = send(edge["port"], from_user="alice", credentials=ALICE)
        attempts = edge["recorder"].attempts
    assert forbidden.status == 403 and b"authenticated as 1001, not as 1002" in forbidden.raw
    assert alias.status == 202 and [a.from_user for a in attempts] == ["alice"]


def test_an_expired_nonce_is_stale() -> None:
    with edge_running(lifetime=300) as edge:
        challenge = first_challenge(edge["port"])
        edge["clock"].now += 301
        answer = exchange(edge["port"], authorized_message(edge["port"], challenge, ALICE))
    assert status(answer) == 401 and edge["recorder"].attempts == []
    assert [parse_digest(v).get("stale") for v in response_headers(answer, "WWW-Authenticate")] == ["true", "true"]


def test_a_nonce_count_is_used_once() -> None:
    with edge_running() as edge:
        port = edge["port"]
        challenge = first_challenge(port)
        first = exchange(port, authorized_message(port, challenge, ALICE, nc=1))
        replayed = exchange(port, authorized_message(port, challenge, ALICE, nc=1))  # new Call-ID, same nc
        next_count = exchange(port, authorized_message(port, challenge, ALICE, nc=2))
        late = exchange(port, authorized_message(port, challenge, ALICE, nc=1, cnonce="other"))
        attempts = edge["recorder"].attempts
    assert [status(a) for a in (first, replayed, next_count, late)] == [202, 401, 202, 401]
    assert b"stale=true" in replayed and len(attempts) == 2


def test_counts_may_arrive_out_of_order_within_the_window() -> None:
    counts = NonceCounts(lifetime=300)
    assert [counts.use("n", 0, nc, 1.0) for nc in (5, 3, 4, 3, 5, 70, 6, 7)] == [
        True, True, True, False, False, True, False, True]


def test_a_made_up_or_foreign_nonce_is_not_ours() -> None:
    nonces = Nonces(b"k" * 32)
    nonce = nonces.issue("test", 1000.0)
    assert nonces.issued_at(nonce, "test") == 1000
    assert nonces.issued_at(nonce, "other realm") is None
    assert Nonces(b"j" * 32).issued_at(nonce, "test") is None
    assert nonces.issued_at(nonce[:-1] + ("0" if nonce[-1] != "0" else "1"), "test") is None
    with edge_running() as edge:
        challenge = first_challenge(edge["port"])
        forged = re.sub(rb'nonce="[0-9a-f]+"', b'nonce="' + b"0" * 56 + b'"', challenge)
        answer = exchange(edge["port"], authorized_message(edge["port"], forged, ALICE))
    assert status(answer) == 401 and b"stale" not in answer and edge["recorder"].attempts == []


def test_the_nonce_count_memory_is_bounded_and_never_accepts_what_it_forgot() -> None:
    counts = NonceCounts(lifetime=300, max_nonces=100)
    for n in range(1000):
        assert counts.use(f"nonce-{n}", issued=n, nc=1, now=float(n))
    assert len(counts) == 100
    assert not counts.use("nonce-5", issued=5, nc=2, now=1000.0)  # forgotten: answered stale, never trusted
    assert counts.use("nonce-999", issued=999, nc=2, now=1000.0)
    assert NonceCounts(lifetime=10).use("a", 0, 1, 0.0)
    expiring = NonceCounts(lifetime=10)
    for n in range(50):
        expiring.use(f"n{n}", issued=n, nc=1, now=float(n))
    expiring.use("late", issued=100, nc=1, now=100.0)
    assert len(expiring) == 1


def test_a_wrong_uri_or_a_missing_qop_is_a_bad_request() -> None:
    with edge_running() as edge:
        port = edge["port"]
        challenge = first_challenge(port)
        good = authorized_message(port, challenge, ALICE)
        wrong_uri = good.replace(b'uri="sip:1002@127.0.0.1"', b'uri="sip:1003@127.0.0.1"')
        no_qop = re.sub(rb", qop=auth", b"", good)
        answers = [exchange(port, wrong_uri), exchange(port, no_qop)]
    assert [status(a) for a in answers] == [400, 400] and edge["recorder"].attempts == []


# --- the config's settings -------------------------------------------------------------------------

def test_as_a_proxy_the_edge_answers_407_and_reads_proxy_authorization() -> None:
    with edge_running(state_of("sip: {proxy: true, realm: im.example.com}")) as edge:
        bare = send(edge["port"])
        answered = send(edge["port"], credentials=ALICE)
    assert bare.status == 407 and response_headers(bare.raw, "WWW-Authenticate") == []
    assert parse_digest(response_headers(bare.raw, "Proxy-Authenticate")[0])["realm"] == "im.example.com"
    assert answered.status == 202


def test_authentication_off_accepts_as_before_and_a_config_change_takes_effect_at_once() -> None:
    with edge_running(state_of("sip: {authentication: false}")) as edge:
        open_door = send(edge["port"], from_user="9999")
        edge["holder"]["state"] = state_of()  # the config reader folded a new apply
        closed = send(edge["port"], from_user="9999")
    assert (open_door.status, closed.status) == (202, 401)


def test_a_realm_change_needs_the_password_again() -> None:
    """HA1 is per realm: the file's password is hashed for the realm of the same file."""
    account = state_of("sip: {realm: im.example.com}").environment("test").accounts["1001"]
    assert account.digest_realm == "im.example.com" and account.ha1("MD5", "test") is None
    with edge_running(state_of("sip: {realm: im.example.com}")) as edge:
        assert send(edge["port"], credentials=ALICE).status == 202


# --- REGISTER and the RFC answers ------------------------------------------------------------------

def register(port: int, to_user: str, authorization_value: str | None = None, cseq: int = 1) -> bytes:
    lines = ["REGISTER sip:127.0.0.1 SIP/2.0", "Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK" + uuid.uuid4().hex,
             "Max-Forwards: 70", f"From: <sip:{to_user}@127.0.0.1>;tag=r1", f"To: <sip:{to_user}@127.0.0.1>",
             "Call-ID: reg-" + to_user, f"CSeq: {cseq} REGISTER",
             "Contact: <sip:1001@127.0.0.1:5999>, <sip:1001@192.0.2.1:5060;transport=udp>",
             "Expires: 7200"]
    if authorization_value:
        lines.append(f"Authorization: {authorization_value}")
    return exchange(port, ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())


def test_register_is_challenged_then_answered_200_with_the_bindings_it_keeps() -> None:
    with edge_running() as edge:
        port = edge["port"]
        challenge = register(port, "1001")
        value = authorization(response_headers(challenge, "WWW-Authenticate"), ALICE, method="REGISTER",
                              uri="sip:127.0.0.1")
        ok = register(port, "1001", value, cseq=2)
        value2 = authorization(response_headers(challenge, "WWW-Authenticate"), ALICE, method="REGISTER",
                               uri="sip:127.0.0.1", nc=2)
        other = register(port, "1002", value2, cseq=3)
    assert (status(challenge), status(ok), status(other)) == (401, 200, 403)
    assert response_headers(ok, "Contact") == ["<sip:1001@127.0.0.1:5999>;expires=3600",
                                               "<sip:1001@192.0.2.1:5060;transport=udp>;expires=3600"]
    assert edge["recorder"].attempts == []


def test_register_without_authentication_is_not_allowed_as_before() -> None:
    with edge_running(state_of("sip: {authentication: false}")) as edge:
        assert status(register(edge["port"], "1001")) == 405


@pytest.mark.parametrize("uri", [b"mailto:bob@example.org", b"tel:+12125550102", b"nobodyKnowsThisScheme:x"])
@pytest.mark.parametrize("authenticated", [True, False], ids=["auth", "no-auth"])
def test_a_request_uri_that_is_not_sip_gets_416_and_is_not_charged(uri: bytes, authenticated: bool) -> None:
    datagram = build_message(from_user="1001", to_user="1002", domain="127.0.0.1", text="hi", local_ip="127.0.0.1",
                             local_port=5999).replace(b"MESSAGE sip:1002@127.0.0.1 ", b"MESSAGE " + uri + b" ", 1)
    state = state_of("" if authenticated else "sip: {authentication: false}")
    with edge_running(state) as edge:
        answer = exchange(edge["port"], datagram)
    assert answer.startswith(b"SIP/2.0 416 Unsupported URI Scheme\r\n") and edge["recorder"].attempts == []


def test_a_message_without_cseq_gets_400() -> None:
    datagram = re.sub(rb"CSeq: 1 MESSAGE\r\n", b"", build_message(
        from_user="1001", to_user="1002", domain="127.0.0.1", text="hi", local_ip="127.0.0.1", local_port=5999))
    with edge_running() as edge:
        answer = exchange(edge["port"], datagram)
    assert answer.startswith(b"SIP/2.0 400 Bad Request\r\n") and b"\r\nCSeq: 0 MESSAGE\r\n" in answer
    assert b"missing CSeq" in answer and edge["recorder"].attempts == []


def test_a_digest_uri_without_the_user_part_names_the_request_uri_as_sipp_sends_it() -> None:
    with edge_running() as edge:
        port = edge["port"]
        challenge = first_challenge(port)
        params = parse_digest(response_headers(challenge, "WWW-Authenticate")[0])
        secret = ALICE.ha1("SHA-256", "test")
        answers = []
        for uri in ("sip:127.0.0.1", "sip:127.0.0.2"):
            answer = response("SHA-256", secret, nonce=params["nonce"], nc="00000001", cnonce="c", qop="auth",
                              method="MESSAGE", uri=uri)
            value = (f'Digest username="1001", realm="test", nonce="{params["nonce"]}", uri="{uri}", '
                     f'response="{answer}", algorithm=SHA-256, cnonce="c", qop=auth, nc=00000001')
            answers.append(exchange(port, build_message(
                from_user="1001", to_user="1002", domain="127.0.0.1", text="hi", local_ip="127.0.0.1", local_port=5999,
                cseq=2, authorization=("Authorization", value))))
    assert [status(a) for a in answers] == [202, 400]


def test_only_the_configured_algorithms_are_offered_and_accepted() -> None:
    with edge_running(state_of("sip: {algorithms: [MD5]}")) as edge:
        bare = send(edge["port"])
        sha256 = send(edge["port"], credentials=Credentials("1001", "alice-secret", algorithm="SHA-256"))
        md5 = send(edge["port"], credentials=ALICE)
    offered = [parse_digest(v)["algorithm"] for v in response_headers(bare.raw, "WWW-Authenticate")]
    assert offered == ["MD5"] and (sha256.status, sha256.challenged) == (401, False) and md5.status == 202


@pytest.mark.parametrize(("sip", "problem"), [
    ("sip: {algorithms: [MD5, MD5]}", "each once"),
    ("sip: {algorithms: []}", "each once"),
    ("sip: {algorithms: [SHA-512]}", "algorithms"),
    ('sip: {realm: "a\\"b"}', "realm: must not contain quotes"),
])
def test_invalid_sip_settings_are_refused_by_config_apply(sip: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_config(CONFIG + sip)


def test_a_malformed_service_password_is_refused_without_being_echoed() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(CONFIG.replace("service_password: bob-secret", "service_password: [bob-secret]"))
    assert str(refused.value) == '<config>: customer "C": account "1002": service_password: must be text'



def test_unauthenticated_senders_make_the_edge_remember_no_nonce_count() -> None:
    """Only a response that verified is remembered: forged credentials, made-up nonces and
    wrong passwords leave the nonce-count memory empty (its bound is for real clients). The
    guessing guard is off here: it would block the address after ten wrong passwords."""
    with edge_running(guard=GuessingGuard(GuardLimits(source_failures=0))) as edge:
        port = edge["port"]
        challenge = first_challenge(port)
        for n in range(200):
            exchange(port, authorized_message(port, challenge, Credentials("1001", f"guess-{n}"), nc=n + 1))
            forged = re.sub(rb'nonce="[0-9a-f]+"', b'nonce="%056x"' % n, challenge)
            exchange(port, authorized_message(port, forged, ALICE))
        remembered_before = edge["auth"].remembered
        exchange(port, authorized_message(port, challenge, ALICE, nc=999))
        assert (remembered_before, edge["auth"].remembered) == (0, 1)
    assert len(edge["recorder"].attempts) == 1
