"""Digest authentication end to end with SIPp (bench/sipp/message_auth.xml, `[authentication]`,
MD5 as SIPp 3.6.1 speaks it) and with the suite's client (SHA-256): examples/instant-messaging.yaml
applied, the real `imbill edge` and a processor on the session's broker. Authenticated
MESSAGEs are charged; a wrong password, or a valid one for another account than the From,
is answered 401/403 and nothing reaches the attempts topic. No password is in clear on the
config topic."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kafka import KafkaConsumer, TopicPartition

from imbill.bus import read_to_end
from imbill.producers.sip_client import Credentials, send_message
from tests.test_end_to_end import engine_env, outcomes, spawn, stop, wait_for_edge  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration
SCENARIO = Path(__file__).resolve().parents[1] / "bench" / "sipp" / "message_auth.xml"


def sipp(port: int, workdir: Path, sender: str, username: str, password: str,
         count: int) -> subprocess.CompletedProcess:
    """One SIPp per account (3.6.1 cannot take credentials from the injection file)."""
    calls = workdir / f"{sender}-{username}-{password}.csv"
    calls.write_text(f"SEQUENTIAL\n{sender};1002\n")
    return subprocess.run(["sipp", f"127.0.0.1:{port}", "-sf", str(SCENARIO), "-inf", str(calls), "-m", str(count),
                           "-t", "u1", "-nostdin", "-au", username, "-ap", password, "-timeout", "20s",
                           "-timeout_error"], cwd=workdir, capture_output=True, text=True, timeout=60)


def sipp_attempts(bootstrap: str, topics) -> list[dict]:
    return [e.record for e in read_to_end(bootstrap, topics.attempts) if e.record["user_agent"] == "SIPp/auth"]


@pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp is not installed (scripts/sip-tools-up)")
def test_sipp_with_digest_is_charged_and_a_wrong_password_or_from_is_not(bootstrap, topics, engine_env, tmp_path):
    port = int(engine_env["IMBILL_EDGE_PORT"])
    edge = spawn("edge", env=engine_env)
    processor = spawn("process", "--worker-id", "sipp-auth", env=engine_env)
    try:
        wait_for_edge(port)
        good = sipp(port, tmp_path, "1001", "1001", "alice-secret", count=3)
        assert good.returncode == 0, good.stdout[-2000:] + good.stderr[-2000:]
        charged = sipp_attempts(bootstrap, topics)
        wrong_password = sipp(port, tmp_path, "1001", "1001", "not-alices", count=2)
        other_from = sipp(port, tmp_path, "1001", "1002", "bob-secret", count=2)
        sha256 = send_message("127.0.0.1", port, from_user="1002", to_user="1001", text="SHA-256",
                              credentials=Credentials("1002", "bob-secret", algorithm="SHA-256"))
        charges, rejections = outcomes(bootstrap, topics, expected=4)
        attempts = sipp_attempts(bootstrap, topics)
    finally:
        stop(processor)
        stop(edge)

    assert wrong_password.returncode != 0 and other_from.returncode != 0
    assert "received 'SIP/2.0 401 Unauthorized" in wrong_password.stderr, wrong_password.stderr[-2000:]
    assert "received 'SIP/2.0 403 Forbidden" in other_from.stderr, other_from.stderr[-2000:]
    assert attempts == charged and len(charged) == 3  # the refused runs published nothing
    assert {(a["from_user"], a["cseq"]) for a in charged} == {("1001", 2)}
    assert sha256.status == 202 and sha256.challenged
    by_account = sorted((c["account"], c["attempt_id"] in {a["attempt_id"] for a in charged}) for c in charges)
    assert by_account == [("1001", True)] * 3 + [("1002", False)] and rejections == []


def raw_values(bootstrap: str, topic: str) -> list[bytes]:
    """Every record value of partition 0 of ``topic``, as the broker holds it."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             consumer_timeout_ms=2000)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        return [message.value for message in consumer]
    finally:
        consumer.close()


def test_no_password_is_in_clear_on_the_config_topic(bootstrap, topics, engine_env):
    """engine_env applied examples/instant-messaging.yaml (alice-secret, bob-secret)."""
    raw = raw_values(bootstrap, topics.config)
    accounts = [e.record for e in read_to_end(bootstrap, topics.config) if e.name == "AccountDefined"]
    assert len(raw) > 10 and len(accounts) == 2
    assert all(a["service_password"] == "" and a["ha1_md5"] and a["ha1_sha256"] for a in accounts)
    assert not any(b"alice-secret" in value or b"bob-secret" in value for value in raw)
