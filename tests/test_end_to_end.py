"""The operator's checklist, end to end: examples/instant-messaging.yaml applied, SIP MESSAGE
datagrams over UDP to the real edge, a real processor worker, the xDR projection on SQLite
and on PostgreSQL. Nothing is mocked: the broker is the session's Tansu."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from imbill.bus import read_to_end
from imbill.producers.config_publisher import apply_config
from imbill.producers.sip_client import Credentials, build_message, response_headers, send_message
from imbill.producers.sip_digest import authorization
from imbill.projections.projector import XdrProjector
from imbill.projections.queries import query_xdrs

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "instant-messaging.yaml"
MSGN_PRICE = Decimal("0.05")
EXAMPLE_PASSWORDS = {"1001": "alice-secret", "1002": "bob-secret"}  # examples/instant-messaging.yaml


def as_(account: str) -> Credentials:
    return Credentials(account, EXAMPLE_PASSWORDS[account])


def spawn(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imbill.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_edge(port: int, timeout: float = 15.0) -> None:
    probe = (b"OPTIONS sip:probe@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKprobe\r\n"
             b"From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:probe@127.0.0.1>\r\nCall-ID: probe\r\n"
             b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        while time.monotonic() < deadline:
            sock.sendto(probe, ("127.0.0.1", port))
            try:
                if sock.recv(65535).startswith(b"SIP/2.0 405"):
                    return
            except socket.timeout:
                continue
    raise AssertionError(f"the edge on udp 127.0.0.1:{port} does not answer")


def outcomes(bootstrap: str, topics, expected: int, timeout: float = 60.0) -> tuple[list, list]:
    """Charges and rejections on their topics, once at least ``expected`` distinct attempts have one."""
    deadline = time.monotonic() + timeout
    while True:
        charges = [e.record for e in read_to_end(bootstrap, topics.charges)]
        rejections = [e.record for e in read_to_end(bootstrap, topics.rejections)]
        seen = {r["attempt_id"] for r in charges} | {r["attempt_id"] for r in rejections}
        if len(seen) >= expected or time.monotonic() > deadline:
            return charges, rejections
        time.sleep(0.3)


@pytest.fixture
def engine_env(bootstrap, topics, tmp_path) -> dict[str, str]:
    apply_config(EXAMPLE, bootstrap_servers=bootstrap, topics=topics)
    return dict(os.environ, IMBILL_BOOTSTRAP_SERVERS=bootstrap, IMBILL_TOPIC_PREFIX=topics.prefix,
                IMBILL_DATA_DIR=str(tmp_path / "data"), IMBILL_EDGE_PORT=str(free_port_udp()))


def free_port_udp() -> int:
    """A port free on UDP and on TCP (the edge listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stream:
            sock.bind(("127.0.0.1", 0))
            try:
                stream.bind(("127.0.0.1", sock.getsockname()[1]))
            except OSError:
                continue
            return sock.getsockname()[1]


def test_checklist_from_sip_message_to_charged_xdr(bootstrap, topics, engine_env, database_url):
    port = int(engine_env["IMBILL_EDGE_PORT"])
    edge = spawn("edge", env=engine_env)
    processor = spawn("process", "--worker-id", "e2e", env=engine_env)
    try:
        wait_for_edge(port)
        long_text = "x" * 150                                   # 150 chars at 60 per unit = 3 units
        sent = [
            send_message("127.0.0.1", port, from_user="1001", to_user="1002", text=long_text, credentials=as_("1001")),
            send_message("127.0.0.1", port, from_user="1002", to_user="alice", text="Hi Alice! ✓",
                         credentials=as_("1002")),
            send_message("127.0.0.1", port, from_user="1001", to_user="12125550102", text="é" * 61,
                         credentials=as_("1001")),
        ]
        assert [(answer.status, answer.challenged) for answer in sent] == [(202, True)] * 3
        # Not an account, wrong password, another account's From: answered, never published.
        refused = [
            send_message("127.0.0.1", port, from_user="9999", to_user="1001", text="who am I?",
                         credentials=Credentials("9999", "guess")),
            send_message("127.0.0.1", port, from_user="1001", to_user="1002", text="x", credentials=as_("1002")),
            send_message("127.0.0.1", port, from_user="1002", to_user="1001", text="x",
                         credentials=Credentials("1002", "alice-secret")),
        ]
        assert [answer.status for answer in refused] == [401, 403, 401]

        # A retransmission (the same datagram) and a re-send with a new branch but the same
        # Call-ID and CSeq: the same attempt, charged once.
        challenge = send_message("127.0.0.1", port, from_user="1002", to_user="1001", text="once", call_id="retx-1")
        value = authorization(response_headers(challenge.raw, "WWW-Authenticate"), as_("1002"), method="MESSAGE",
                              uri="sip:1001@127.0.0.1")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            request = build_message(from_user="1002", to_user="1001", domain="127.0.0.1", text="once",
                                    local_ip="127.0.0.1", local_port=sock.getsockname()[1], call_id="retx-1",
                                    cseq=2, authorization=("Authorization", value))
            for _ in range(2):
                sock.sendto(request, ("127.0.0.1", port))
                sock.settimeout(5)
                assert sock.recv(65535).startswith(b"SIP/2.0 202")
        again = send_message("127.0.0.1", port, from_user="1002", to_user="1001", text="once", call_id="retx-1",
                             credentials=as_("1002"))
        assert again.status == 202

        charges, rejections = outcomes(bootstrap, topics, expected=4)
    finally:
        stop(processor)
        stop(edge)

    by_sender: dict[str, list] = {}
    for charge in {c["charge_id"]: c for c in charges}.values():
        by_sender.setdefault(charge["account"], []).append(charge)
    assert len({c["charge_id"] for c in charges}) == 4 == len(charges)
    assert sorted((c["billing_units"], c["amount"]) for c in by_sender["1001"]) == [
        (2, 2 * MSGN_PRICE), (3, 3 * MSGN_PRICE)]
    assert sorted((c["billing_units"], c["amount"]) for c in by_sender["1002"]) == [
        (1, MSGN_PRICE), (1, MSGN_PRICE)]
    for charge in charges:
        assert charge["on_net"] and charge["rate_code"] == "MSGN" and charge["currency"] == "USD"
        assert charge["service_policy"] == "Instant messaging" and charge["vendor"] == "Internal vendor"
        assert charge["vendor_cost"] == 0 and charge["tariff"] == "On-net messaging"
    assert rejections == []  # 9999 never reached the topic: refused at the edge
    published = [e.record for e in read_to_end(bootstrap, topics.attempts)]
    assert sorted(a["from_user"] for a in published) == ["1001", "1001", "1002", "1002", "1002"]  # retx-1 twice

    with XdrProjector(database_url, bootstrap, topics) as projector:
        projector.run_until_idle()
        projector.run_until_idle()
        engine = projector.engine
        xdrs = query_xdrs(engine)
        assert len(xdrs) == 4
        assert sum(x["amount"] for x in xdrs) == 7 * MSGN_PRICE
        assert {x["charge_id"] for x in xdrs} == {c["charge_id"] for c in charges}


def test_processor_killed_mid_stream_leaves_one_xdr_per_attempt(bootstrap, topics, engine_env, tmp_path):
    """SIGKILL the worker while it rates a stream of attempts, restart it: every attempt ends
    with exactly one charge id (the topic may hold a re-emitted duplicate, never a second
    amount), and the xDR table one row per attempt."""
    from imbill.usecases import generate_traffic
    from imbill.settings import load_settings

    settings = load_settings(dict(engine_env))
    count = 3000
    generate_traffic(settings, count, ["1001", "1002"], ["1002", "1001", "bob", "alice"], seed=11)
    processor = spawn("process", "--worker-id", "kill-1", env=engine_env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = len({e.record["attempt_id"] for e in read_to_end(bootstrap, topics.charges)})
        if done > count // 10:
            break
        time.sleep(0.05)
    stop(processor, signal.SIGKILL)
    assert done < count, "the worker finished before it could be killed: raise the count"
    restarted = spawn("process", "--worker-id", "kill-2", env=engine_env)
    try:
        charges, rejections = outcomes(bootstrap, topics, expected=count, timeout=120)
    finally:
        stop(restarted)
    amounts: dict[str, Decimal] = {}
    for charge in charges:
        assert amounts.setdefault(charge["charge_id"], charge["amount"]) == charge["amount"]
    attempts = {c["attempt_id"] for c in charges} | {r["attempt_id"] for r in rejections}
    assert len(attempts) == count
    database_url = f"sqlite:///{tmp_path / 'kill.db'}"
    with XdrProjector(database_url, bootstrap, topics) as projector:
        projector.run_until_idle()
        assert len(query_xdrs(projector.engine)) == len(amounts)
        assert sum(x["amount"] for x in query_xdrs(projector.engine)) == sum(amounts.values())
