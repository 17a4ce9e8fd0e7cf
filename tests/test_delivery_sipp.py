"""REGISTER and delivery end to end with SIPp: examples/instant-messaging.yaml applied, the
real `imbill edge` and a processor on the session's broker. A SIPp registers 1002 with digest
(tests/sipp/register_auth.xml), a SIPp recipient on the same port answers the MESSAGEs the
edge forwards there (uas_message.xml), and a SIPp sender 1001 with digest gets that 200
(message_auth_delivered.xml). The message is charged once, with its delivery; the edge,
restarted, still delivers to the binding (rebuilt from the registrations topic); the
projection lists the binding (`imbill registrations`) and the xDR its delivery."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imbill.bus import read_to_end
from imbill.producers.sip_client import Credentials, send_message
from tests.test_end_to_end import engine_env, free_port_udp, outcomes, spawn, stop, wait_for_edge  # noqa: F401

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp is not installed (scripts/sip-tools-up)")]
SCENARIOS = Path(__file__).resolve().parent / "sipp"


def sipp(*args: str, workdir: Path, account: str, timeout: float = 60) -> subprocess.CompletedProcess:
    calls = workdir / f"{account}.csv"
    calls.write_text(f"SEQUENTIAL\n{account};1002\n")
    return subprocess.run(["sipp", *args, "-inf", str(calls), "-t", "u1", "-nostdin", "-timeout", "20s",
                           "-timeout_error"], cwd=workdir, capture_output=True, text=True, timeout=timeout)


def register(port: int, uas_port: int, workdir: Path, password: str) -> subprocess.CompletedProcess:
    return sipp(f"127.0.0.1:{port}", "-sf", str(SCENARIOS / "register_auth.xml"), "-m", "1", "-p", str(uas_port),
                "-au", "1002", "-ap", password, workdir=workdir, account="1002")


def imbill(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "imbill.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_registered_sipp_recipient_gets_the_message_of_a_sipp_sender_charged_once(bootstrap, topics, engine_env,
                                                                                   tmp_path):
    port, uas_port = int(engine_env["IMBILL_EDGE_PORT"]), free_port_udp()
    env = dict(engine_env, IMBILL_DATABASE_URL=f"sqlite:///{tmp_path / 'imbill.db'}")
    edge = spawn("edge", env=env)
    processor = spawn("process", "--worker-id", "delivery-sipp", env=env)
    recipient = None
    try:
        wait_for_edge(port)
        wrong = register(port, uas_port, tmp_path, "not-bobs")
        registered = register(port, uas_port, tmp_path, "bob-secret")
        assert registered.returncode == 0, registered.stdout[-2000:] + registered.stderr[-2000:]
        recipient = subprocess.Popen(["sipp", "-sf", str(SCENARIOS / "uas_message.xml"), "-p", str(uas_port),
                                      "-t", "u1", "-m", "2", "-nostdin", "-timeout", "60s", "-timeout_error"],
                                     cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # SIPp binds its port
        sent = sipp(f"127.0.0.1:{port}", "-sf", str(SCENARIOS / "message_auth_delivered.xml"), "-m", "1",
                    "-au", "1001", "-ap", "alice-secret", workdir=tmp_path, account="1001")
        assert sent.returncode == 0, sent.stdout[-2000:] + sent.stderr[-2000:]
        stop(edge)
        edge = spawn("edge", env=env)  # a new edge: its bindings come from the registrations topic
        wait_for_edge(port)
        again = send_message("127.0.0.1", port, from_user="1001", to_user="1002", text="after a restart",
                             credentials=Credentials("1001", "alice-secret"))
        assert recipient.wait(timeout=30) == 0, recipient.stderr.read()[-2000:]
        charges, rejections = outcomes(bootstrap, topics, expected=2)
    finally:
        for process in (processor, edge):
            stop(process)
        if recipient is not None and recipient.poll() is None:
            recipient.kill()
            recipient.wait()

    assert wrong.returncode != 0 and "received 'SIP/2.0 401 Unauthorized" in wrong.stderr
    assert again.status == 200 and again.challenged
    assert rejections == [] and len(charges) == 2 and len({c["attempt_id"] for c in charges}) == 2
    assert {(c["account"], c["to_user"], c["delivery"], c["delivery_code"]) for c in charges} == {
        ("1001", "1002", "delivered", 200)}
    attempts = [e.record for e in read_to_end(bootstrap, topics.attempts)]
    assert sorted(a["user_agent"] for a in attempts) == ["SIPp/delivered", "imbill-send/0.1"]
    [bound] = [e.record for e in read_to_end(bootstrap, topics.registrations)]
    assert (bound["account"], bound["state"], bound["user_agent"]) == ("1002", "bound", "SIPp/registered")
    assert bound["contact"] == f"sip:1002@127.0.0.1:{uas_port}" and bound["source"] == f"127.0.0.1:{uas_port}"

    imbill("project", "--once", env=env)
    [listed] = json.loads(imbill("registrations", "--format", "json", env=env))
    assert (listed["account"], listed["contact"], listed["user_agent"]) == ("1002", bound["contact"],
                                                                            "SIPp/registered")
    xdrs = json.loads(imbill("xdr", "--format", "json", env=env))
    assert sorted((x["delivery"], x["delivery_code"]) for x in xdrs) == [("delivered", 200)] * 2
