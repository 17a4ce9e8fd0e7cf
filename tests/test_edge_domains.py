"""Environments by SIP domain: one edge serves several virtual environments, each request in
the environment whose ``sip_domains`` list its domain (or the default environment), a domain
served by no environment answered 404, and never one served by two. Two environments with an
account of the same name never mix: each authenticates with its own realm and password, and
is rated with its own tariff and balance (the last test, on the real broker with the processor)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from imbill.bus import Envelope, read_to_end
from imbill.domain.config import ConfigState, fold
from imbill.domain.errors import ConfigError
from imbill.domain.events import ServiceStatusChanged
from imbill.domain.sip_domains import check_domains, domain_of, taken
from imbill.producers.config_file import parse_config
from imbill.producers.config_publisher import apply_config, config_refusals, plan_changes
from imbill.producers.sip_registrar import Registrar
from imbill.producers.edge import SipEdge
from imbill.producers.sip import SipRequest, parse_request
from imbill.producers.sip_auth import DigestAuthenticator
from imbill.producers.sip_client import Credentials, response_headers, send_message
from imbill.producers.sip_domains import EnvironmentsByDomain, request_domain
from imbill.schemas.codec import encode_event
from imbill.streams.status_reader import ServiceStatusReader
from tests.edge_thread import edge_in_thread
from tests.test_end_to_end import EXAMPLE, free_port_udp, spawn, stop, wait_for_edge

NOW = datetime(2026, 12, 4, 18, 0, tzinfo=UTC)


def environment(name: str, domains: str, password: str, extra: str = "") -> str:
    return f"""
environment: {name}
sip_domains: {domains}
customers:
  - name: C
    currency: USD
    accounts:
      - {{id: "1001", service_password: {password}, product: P}}
      - {{id: "1002", service_password: other-{password}, product: P}}
products: [{{name: P}}]
{extra}"""


ALPHA = environment("alpha", "[alpha.example, 192.0.2.1]", "alpha-secret")
BETA = environment("beta", "[beta.example]", "beta-secret")
PLAIN = environment("default", "[]", "plain-secret")


def state_of(*texts: str) -> ConfigState:
    events: list = []
    for text in texts:
        events += plan_changes(parse_config(text), None, now=NOW)
    return fold(events, on_skip=lambda name, record, exc: pytest.fail(f"{name} refused: {exc}"))


# --- the config: domains are hosts, and one environment serves a domain ---------------------


@pytest.mark.parametrize(("domains", "problem"), [
    (["im.example.com", "192.0.2.1", "[2001:db8::1]", "localhost"], None),
    (["IM.example.com"], "in lower case"),
    (["im.example.com:5060"], "without port"),
    (["*.example.com"], "no host name"),
    (["256.1.1.1"], "no host name"),
    (["a.example", "a.example"], "listed twice"),
    (["[not-ipv6]"], "no host name"),
    ([""], "no host name"),
])
def test_a_domain_is_a_host_without_port(domains, problem) -> None:
    if problem is None:
        check_domains(domains)
        return
    with pytest.raises(ValueError, match=problem.replace("[", r"\[")):
        check_domains(domains)


@pytest.mark.parametrize(("host", "domain"), [("Alpha.Example", "alpha.example"), ("alpha.example.", "alpha.example"),
                                             ("192.0.2.1", "192.0.2.1")])
def test_a_request_host_is_compared_in_lower_case(host, domain) -> None:
    assert domain_of(host) == domain


def test_the_config_file_reads_sip_domains_in_lower_case_into_the_sip_settings() -> None:
    desired = parse_config("environment: e\nsip_domains: [IM.Example.com, 192.0.2.1]\n").config
    assert desired.sip.domains == ("im.example.com", "192.0.2.1")
    assert desired.sip.authentication  # the other sip settings keep their defaults
    with pytest.raises(ConfigError, match=r"x.yaml: sip_domains: item 1: 'a.example:5060' is no host name"):
        parse_config("environment: e\nsip_domains: [\"a.example:5060\"]\n", "x.yaml")


def test_the_fold_refuses_a_domain_another_environment_serves() -> None:
    refused: list = []
    state = fold(plan_changes(parse_config(ALPHA), None, now=NOW)
                 + plan_changes(parse_config(environment("beta", "[beta.example, alpha.example]", "b")), None, now=NOW),
                 on_skip=lambda name, record, exc: refused.append((name, str(exc))))
    assert refused == [("SipSettingsSet", "sip_domains: the SIP domain 'alpha.example' is served by environment "
                                          "'alpha' already")]
    assert state.environment("beta").sip.domains == ()  # the refused settings changed nothing
    assert state.environment("alpha").sip.domains == ("alpha.example", "192.0.2.1")


def test_a_domain_given_up_by_one_environment_can_be_taken_by_another() -> None:
    state = state_of(ALPHA)
    state = state.applied(plan_changes(parse_config(environment("alpha", "[192.0.2.1]", "alpha-secret")),
                                       state.environment("alpha"), now=NOW))
    state = state.applied(plan_changes(parse_config(environment("beta", "[alpha.example]", "b")), None, now=NOW),
                          on_skip=lambda name, record, exc: pytest.fail(str(exc)))
    assert state.environment("beta").sip.domains == ("alpha.example",)


def test_config_apply_refuses_a_taken_domain_in_one_line_before_appending() -> None:
    state = state_of(ALPHA)
    with pytest.raises(ConfigError) as refused:
        plan_changes(parse_config(environment("beta", "[Alpha.Example]", "b"), "beta.yaml"), None, now=NOW,
                     others=state.environments)
    assert str(refused.value) == ("beta.yaml: sip_settings: sip_domains: the SIP domain 'alpha.example' is served "
                                  "by environment 'alpha' already (domain_taken)")
    assert taken("alpha", ["alpha.example"], {"alpha": ["alpha.example"]}) == ""  # its own domains are its own


def test_a_taken_domain_written_to_the_topic_by_hand_is_rejected_with_its_reason() -> None:
    events = plan_changes(parse_config(ALPHA), None, now=NOW) + plan_changes(
        parse_config(environment("beta", "[alpha.example]", "b")), None, now=NOW)
    envelopes = [Envelope("t", 0, offset, 0, None, name, record) for offset, (name, record) in enumerate(events)]
    refused = config_refusals(envelopes)
    assert [reason for reason, _ in refused.values()] == ["domain_taken"]


# --- the edge's map: a request's environment ------------------------------------------------


def request(method: str = "MESSAGE", from_host: str = "alpha.example", uri_host: str = "beta.example") -> SipRequest:
    parsed = parse_request(
        f"{method} sip:1002@{uri_host}:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bK1\r\n"
        f"From: <sip:1001@{from_host}>;tag=1\r\nTo: <sip:1002@{uri_host}>\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\n"
        f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n".encode())
    assert isinstance(parsed, SipRequest), parsed
    return parsed


@pytest.mark.parametrize(("method", "incoming", "domain"), [
    ("MESSAGE", False, "alpha.example"),   # a client's MESSAGE: the sender's domain (who pays)
    ("MESSAGE", True, "beta.example"),     # from a vendor peer: the recipient's domain
    ("REGISTER", False, "beta.example"),   # the registrar's domain: the Request-URI (RFC 3261 10.3)
])
def test_the_domain_of_a_request(method, incoming, domain) -> None:
    assert request_domain(request(method), incoming) == domain


@pytest.mark.parametrize(("config", "own", "default", "domain", "expected"), [
    ((ALPHA, BETA), "alpha", "", "alpha.example", "alpha"),
    ((ALPHA, BETA), "alpha", "", "BETA.example", "beta"),
    ((ALPHA, BETA), "alpha", "", "192.0.2.1", "alpha"),
    ((ALPHA, BETA), "alpha", "", "gamma.example", None),      # the edge's environment lists domains: no fallback
    ((ALPHA, BETA), "alpha", "beta", "gamma.example", "beta"),  # unless a default environment is set
    ((PLAIN, BETA), "default", "", "127.0.0.1", "default"),   # one listing none serves every other domain
    ((PLAIN, BETA), "default", "", "beta.example", "beta"),
    ((PLAIN,), "default", "", "anything.example", "default"),  # one environment, no domains: as before
    ((), "default", "", "127.0.0.1", "default"),               # no config yet: authentication answers
    ((ALPHA, PLAIN), "alpha", "", "127.0.0.1", None),          # another environment without domains is no default
])
def test_the_environment_of_a_domain(config, own, default, domain, expected) -> None:
    state = state_of(*config)
    assert EnvironmentsByDomain(lambda: state, own, default=default).of_domain(domain) == expected


def test_the_map_follows_the_config_in_force() -> None:
    holder = {"state": state_of(ALPHA)}
    environments = EnvironmentsByDomain(lambda: holder["state"], "alpha")
    assert environments.of_domain("beta.example") is None
    holder["state"] = state_of(ALPHA, BETA)
    assert environments.of_domain("beta.example") == "beta"


# --- the edge: two environments, one account name ----------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.attempts: list[Any] = []

    async def __call__(self, attempt: Any) -> None:
        self.attempts.append(attempt)


@contextmanager
def edge_by_domain(state: ConfigState, own: str = "alpha", **options: Any) -> Iterator[dict[str, Any]]:
    """An edge serving the environments of ``state`` by domain, in a thread of its own."""
    auth = DigestAuthenticator(lambda: state, own)
    recorder = Recorder()
    edge = SipEdge(recorder, environment=own, edge_id="edge-domains", port=0, authentication=auth,
                   environments=EnvironmentsByDomain(lambda: state, own), registrar=Registrar(own, lambda: state),
                   **options)

    with edge_in_thread(edge):
        yield {"port": edge.address[1], "recorder": recorder, "edge": edge, "auth": auth}


def send(port: int, domain: str, password: str | None, **kwargs: Any):
    credentials = Credentials("1001", password) if password is not None else None
    return send_message("127.0.0.1", port, from_user="1001", to_user="1002", text="hi", domain=domain,
                        timeout=3.0, credentials=credentials, **kwargs)


def test_one_edge_serves_two_environments_and_never_mixes_their_accounts() -> None:
    with edge_by_domain(state_of(ALPHA, BETA)) as edge:
        port, recorder = edge["port"], edge["recorder"]
        challenged = send(port, "beta.example", None)
        in_alpha = send(port, "alpha.example", "alpha-secret")
        in_beta = send(port, "beta.example", "beta-secret")
        alpha_password_in_beta = send(port, "beta.example", "alpha-secret")
        beta_password_in_alpha = send(port, "alpha.example", "beta-secret")
        unknown = send(port, "gamma.example", "alpha-secret")
        counters = edge["edge"].counters
    assert challenged.status == 401
    assert all('realm="beta"' in c for c in response_headers(challenged.raw, "WWW-Authenticate"))
    assert (in_alpha.status, in_beta.status) == (202, 202)
    assert (alpha_password_in_beta.status, beta_password_in_alpha.status) == (401, 401)
    assert unknown.status == 404 and not unknown.challenged
    assert response_headers(unknown.raw, "Warning") == [
        '399 imbill-sip-edge "no environment serves the domain of this request"']
    assert [(a.environment, a.from_user, a.from_domain) for a in recorder.attempts] == [
        ("alpha", "1001", "alpha.example"), ("beta", "1001", "beta.example")]
    assert counters.unknown_domain == 1 and counters.accepted == 2


def test_a_vendor_peers_message_belongs_to_the_recipients_domain() -> None:
    state = state_of(ALPHA, environment("beta", "[beta.example]", "b", "sip: {authentication: false}"))
    with edge_by_domain(state, vendor_peers=frozenset({"127.0.0.1"})) as edge:
        port = edge["port"]
        message = (b"MESSAGE sip:1002@beta.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKv1\r\n"
                   b"From: <sip:+4420794600@carrier.example>;tag=1\r\nTo: <sip:1002@beta.example>\r\n"
                   b"Call-ID: vendor-1\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 2\r\n\r\nhi")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3)
            sock.sendto(message, ("127.0.0.1", port))
            answer = sock.recv(65535)
    assert answer.startswith(b"SIP/2.0 202")
    attempt, = edge["recorder"].attempts
    assert (attempt.environment, attempt.direction, attempt.to_user) == ("beta", "incoming", "1002")


def test_a_register_for_a_domain_no_environment_serves_gets_404() -> None:
    with edge_by_domain(state_of(ALPHA, BETA)) as edge:
        register = (b"REGISTER sip:gamma.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKr1\r\n"
                    b"From: <sip:1001@gamma.example>;tag=1\r\nTo: <sip:1001@gamma.example>\r\nCall-ID: r1\r\n"
                    b"CSeq: 1 REGISTER\r\nContact: <sip:1001@127.0.0.1:5999>\r\nMax-Forwards: 70\r\n"
                    b"Content-Length: 0\r\n\r\n")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3)
            sock.sendto(register, ("127.0.0.1", edge["port"]))
            assert sock.recv(65535).startswith(b"SIP/2.0 404 Not Found")


# --- on the real broker, with the processor: each environment's own tariff and balance --------


def two_environment_files(tmp_path) -> tuple[os.PathLike, os.PathLike]:
    """The checklist's example served as alpha.example, and the second environment (EUR,
    its own tariff) served as beta.example with an account 1001 of its own."""
    text = EXAMPLE.read_text()
    assert "\nsip:\n" in text
    default = tmp_path / "default.yaml"
    default.write_text(text.replace("\nsip:\n", "\nsip_domains: [alpha.example]\nsip:\n", 1))
    second = (EXAMPLE.parent / "second-environment.yaml").read_text()
    assert 'id: "2001"' in second and "carol-secret" in second and "sip_domains: [europe.example]" in second
    europe = tmp_path / "europe.yaml"
    europe.write_text(second.replace('id: "2001"', 'id: "1001"').replace("carol-secret", "europe-secret")
                      .replace("sip_domains: [europe.example]", "sip_domains: [beta.example]"))
    return default, europe


@pytest.mark.integration
def test_two_environments_by_domain_rate_the_same_account_with_their_own_tariff_and_balance(
        bootstrap, topics, tmp_path) -> None:
    default, europe = two_environment_files(tmp_path)
    apply_config(default, bootstrap_servers=bootstrap, topics=topics)
    apply_config(europe, bootstrap_servers=bootstrap, topics=topics)
    intruder = tmp_path / "intruder.yaml"
    intruder.write_text("environment: intruder\nsip_domains: [beta.example]\n")
    with pytest.raises(ConfigError, match="intruder.yaml: sip_settings: sip_domains: the SIP domain 'beta.example' "
                                          "is served by environment 'europe' already"):
        apply_config(intruder, bootstrap_servers=bootstrap, topics=topics)  # nothing appended
    port = free_port_udp()
    env = dict(os.environ, IMBILL_BOOTSTRAP_SERVERS=bootstrap, IMBILL_TOPIC_PREFIX=topics.prefix,
               IMBILL_DATA_DIR=str(tmp_path / "data"), IMBILL_EDGE_PORT=str(port))
    edge = spawn("edge", env=env)
    processor = spawn("process", "--worker-id", "domains", env=env)
    try:
        wait_for_edge(port)
        answers = {
            "default": send_message("127.0.0.1", port, from_user="1001", to_user="1002", text="hi", timeout=5,
                                    domain="alpha.example", credentials=Credentials("1001", "alice-secret")),
            "europe": send_message("127.0.0.1", port, from_user="1001", to_user="1001", text="hi", timeout=5,
                                   domain="beta.example", credentials=Credentials("1001", "europe-secret")),
            "crossed": send_message("127.0.0.1", port, from_user="1001", to_user="1001", text="hi", timeout=5,
                                    domain="beta.example", credentials=Credentials("1001", "alice-secret")),
            "unserved": send_message("127.0.0.1", port, from_user="1001", to_user="1002", text="hi", timeout=5,
                                     domain="127.0.0.1", credentials=Credentials("1001", "alice-secret")),
        }
        charges = _wait_for(lambda: [e.record for e in read_to_end(bootstrap, topics.charges)], 2, 60)
        balances = _wait_for(lambda: [e.record for e in read_to_end(bootstrap, topics.balances)], 2, 30)
    finally:
        stop(processor)
        stop(edge)
    assert {k: a.status for k, a in answers.items()} == {"default": 202, "europe": 202, "crossed": 401,
                                                         "unserved": 404}
    by_environment = {c["environment"]: c for c in charges}
    assert len(charges) == 2 and set(by_environment) == {"default", "europe"}
    assert (by_environment["default"]["account"], by_environment["default"]["amount"],
            by_environment["default"]["currency"]) == ("1001", Decimal("0.05"), "USD")
    assert (by_environment["europe"]["account"], by_environment["europe"]["amount"],
            by_environment["europe"]["currency"]) == ("1001", Decimal("0.04"), "EUR")
    after = {b["environment"]: (b["account"], b["balance"], b["currency"]) for b in balances}
    assert after == {"default": ("1001", Decimal("9.95"), "USD"), "europe": ("1001", Decimal("4.96"), "EUR")}
    attempts = [e.record for e in read_to_end(bootstrap, topics.attempts)]
    assert sorted((a["environment"], a["from_domain"]) for a in attempts) == [
        ("default", "alpha.example"), ("europe", "beta.example")]


def _wait_for(read, count: int, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = read()
        if len(found) >= count:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s: {read()}")


class Record:
    """A record as the reader's consumer hands it over."""

    def __init__(self, value: bytes) -> None:
        self.value, self.topic, self.partition, self.offset = value, "status", 0, 0


def test_the_edge_follows_every_environments_suspensions_apart() -> None:
    state = state_of(environment("alpha", "[alpha.example]", "a").replace("product: P}", "product: P, "
                                                                           "balance_model: prepaid}"),
                     environment("beta", "[beta.example]", "b").replace("product: P}", "product: P, "
                                                                        "balance_model: prepaid}"))
    reader = ServiceStatusReader("127.0.0.1:1", "status", "alpha", lambda: state)
    for env_name, account in (("beta", "1001"), ("gamma", "1001"), ("alpha", "1002")):
        reader._apply(Record(encode_event(ServiceStatusChanged(
            event_id=f"s-{env_name}", environment=env_name, account=account, service="messaging",
            status="suspended", reason="wallet empty", cause_id="c", occurred_at=NOW, push_events=False))), state)
    assert reader.suspended("1001", "beta") == "wallet empty"
    assert reader.suspended("1001", "alpha") is None and reader.suspended("1001") is None  # alpha's 1001 is not
    assert reader.suspended("1002") == "wallet empty" and reader.suspended("1002", "beta") is None
    assert reader.suspended("1001", "gamma") is None and reader.suspended_count == 2  # no such environment: not kept
