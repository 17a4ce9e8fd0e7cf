"""A real SIP client from Debian's packages through the edge: two headless baresip 1.0.0
(`apt-get install baresip`, scripts/sip-tools-up) register 1001 and 1002 with username,
password and domain over UDP (digest MD5: baresip 1.0.0's libre answers a 401 that offers any
other algorithm, even after an MD5 challenge, with "Function not implemented", so the example
config is applied with ``algorithms: [MD5]``),
1001 sends 1002 a MESSAGE (`/message` to its current contact), the edge delivers it to
1002's binding and 1002's baresip prints it; the message is charged once, delivered.

baresip runs without audio modules (none is needed for MESSAGE) and reads commands from
stdin through its stdio module, which needs a pipe rather than /dev/null (epoll refuses
a regular file)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from imbill.bus import read_to_end
from imbill.producers.config_publisher import apply_config
from tests.test_end_to_end import EXAMPLE, engine_env, outcomes, spawn, stop, wait_for_edge  # noqa: F401 - a fixture

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip is not installed "
                                                                         "(scripts/sip-tools-up)")]
TEXT = "Hello Bob, from baresip through the imbill edge"


def configured(folder: Path, account: str, password: str, edge_port: int) -> Path:
    """A baresip config folder: listens on a free port of 127.0.0.1, one account whose domain
    is the edge, and 1002 as the current contact."""
    folder.mkdir()
    (folder / "config").write_text("sip_listen\t127.0.0.1:0\nmodule_path\t/usr/lib/baresip/modules\n"
                                   "module\tstdio.so\nmodule_app\taccount.so\nmodule_app\tcontact.so\n"
                                   "module_app\tmenu.so\n")
    (folder / "accounts").write_text(f"<sip:{account}@127.0.0.1:{edge_port};transport=udp>;auth_pass={password};"
                                     "regint=600\n")
    (folder / "contacts").write_text(f'"Bob" <sip:1002@127.0.0.1:{edge_port}>\n')
    (folder / "current_contact").write_text(f"sip:1002@127.0.0.1:{edge_port}")
    return folder


def baresip(folder: Path, *commands: str) -> subprocess.Popen:
    args = ["baresip", "-f", str(folder), "-t", "60"] + [a for c in commands for a in ("-e", c)]
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=(folder / "log").open("w"),
                            stderr=subprocess.STDOUT, cwd=folder)


def wait_until(found, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.3)
    return found()


def bound(bootstrap: str, topics, account: str) -> list[dict]:
    return [e.record for e in read_to_end(bootstrap, topics.registrations)
            if e.record["account"] == account and e.record["state"] == "bound"]


def test_two_baresip_clients_register_and_one_messages_the_other_charged_once(bootstrap, topics, engine_env,
                                                                            tmp_path):
    port = int(engine_env["IMBILL_EDGE_PORT"])
    md5_only = tmp_path / "md5-only.yaml"
    md5_only.write_text(EXAMPLE.read_text().replace("algorithms: [MD5, SHA-256]", "algorithms: [MD5]"))
    assert "algorithms: [MD5] " in md5_only.read_text()
    apply_config(md5_only, bootstrap_servers=bootstrap, topics=topics)
    edge = spawn("edge", env=engine_env)
    processor = spawn("process", "--worker-id", "baresip", env=engine_env)
    clients: list[subprocess.Popen] = []
    try:
        wait_for_edge(port)
        bob = configured(tmp_path / "bob", "1002", "bob-secret", port)
        clients.append(baresip(bob))
        bob_bound = wait_until(lambda: bound(bootstrap, topics, "1002"))
        alice = configured(tmp_path / "alice", "1001", "alice-secret", port)
        clients.append(baresip(alice, f"/message {TEXT}"))
        received = wait_until(lambda: f'"{TEXT}"' in (bob / "log").read_text())
        charges, rejections = outcomes(bootstrap, topics, expected=1)
    finally:
        for client in clients:
            client.send_signal(signal.SIGTERM)  # baresip unregisters on its way out
            try:
                client.wait(timeout=10)
            except subprocess.TimeoutExpired:
                client.kill()
                client.wait()
        stop(processor)
        stop(edge)

    assert bob_bound and bob_bound[0]["user_agent"].startswith("baresip")
    assert received, (bob / "log").read_text()[-2000:] + (alice / "log").read_text()[-2000:]
    assert "sip:1001@127.0.0.1" in (bob / "log").read_text()
    assert rejections == [] and len(charges) == 1
    [charge] = charges
    assert (charge["account"], charge["to_user"], charge["delivery"], charge["delivery_code"]) == (
        "1001", "1002", "delivered", 200)
    assert charge["user_agent"].startswith("baresip") and charge["rate_code"] == "MSGN"
