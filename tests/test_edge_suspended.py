"""Suspended accounts refused at the SIP edge: the edge folds the processor's
ServiceStatusChanged events (read to the end at start, then followed) and answers a MESSAGE
from a suspended prepaid account 403 with a Warning, publishing nothing; a top-up through the
live processor resumes it. The processor stays the authority."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from imbill.bus import read_to_end
from imbill.domain.config import ConfigState
from imbill.domain.events import ServiceStatusChanged
from imbill.domain.service_status import SuspendedAccounts
from imbill.producers.config_file import parse_config
from imbill.producers.config_publisher import apply_config
from imbill.producers.edge import SipEdge
from imbill.producers.sip_client import SipAnswer, response_headers, send_message
from imbill.presentation import sip_answer_text
from imbill.settings import load_settings
from imbill.usecases import top_up
from tests.test_end_to_end import EXAMPLE, as_, free_port_udp, spawn, stop, wait_for_edge

CONFIG = """
environment: test
customers:
  - name: C
    currency: USD
    accounts:
      - {id: "1001", product: P, balance_model: prepaid, opening_balance: "1.00"}
      - {id: "1002", product: P, balance_model: postpaid}
products: [{name: P}]
"""


def status_event(account: str, status: str, environment: str = "test", service: str = "messaging",
                 reason: str = "wallet empty") -> ServiceStatusChanged:
    return ServiceStatusChanged(event_id=f"st-{account}-{status}", environment=environment, account=account,
                                service=service, status=status, reason=reason, cause_id="c",
                                occurred_at=datetime(2026, 12, 4, tzinfo=UTC), push_events=False)


def env_of(config: str = CONFIG):
    return ConfigState({"test": parse_config(config).config}).environment("test")


@pytest.mark.parametrize(("events", "account", "expected"), [
    ([status_event("1001", "suspended")], "1001", "wallet empty"),
    ([status_event("1001", "suspended"), status_event("1001", "active")], "1001", None),
    ([status_event("1001", "suspended", reason="insufficient funds")], "1001", "insufficient funds"),
    ([status_event("1001", "suspended", environment="other")], "1001", None),   # another environment's
    ([status_event("1001", "suspended", service="voice")], "1001", None),       # another service's
    ([status_event("1002", "suspended")], "1002", None),    # postpaid now: the processor would charge it
    ([status_event("9999", "suspended")], "9999", None),    # no account of the config: not kept
])
def test_the_fold_mirrors_the_processors_rule(events, account, expected) -> None:
    suspended, env = SuspendedAccounts("test"), env_of()
    for event in events:
        suspended.apply(event, env)
    assert suspended.reason(account, env) == expected


def test_the_fold_is_bounded_by_the_accounts_of_the_config() -> None:
    suspended, env = SuspendedAccounts("test"), env_of()
    for n in range(10_000):
        suspended.apply(status_event(f"made-up-{n}", "suspended"), env)
    suspended.apply(status_event("1001", "suspended"), env)
    suspended.apply(status_event("1001", "suspended"), env)
    assert len(suspended) == 1


def low_balance_example(tmp_path) -> os.PathLike:
    """The checklist's example with 1001's prepaid wallet holding one message (0.05 USD)."""
    text = EXAMPLE.read_text()
    assert 'opening_balance: "10.00"' in text
    path = tmp_path / "low-balance.yaml"
    path.write_text(text.replace('opening_balance: "10.00"', 'opening_balance: "0.05"', 1))
    return path


def statuses(bootstrap: str, topics) -> list[tuple[str, str, str]]:
    return [(e.record["account"], e.record["status"], e.record["reason"])
            for e in read_to_end(bootstrap, topics.service_status)]


def wait_until(condition, timeout: float, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")


@pytest.mark.integration
def test_a_suspended_account_is_refused_at_the_edge_until_a_top_up(bootstrap, topics, tmp_path) -> None:
    apply_config(low_balance_example(tmp_path), bootstrap_servers=bootstrap, topics=topics)
    port, late_port = free_port_udp(), free_port_udp()
    env = dict(os.environ, IMBILL_BOOTSTRAP_SERVERS=bootstrap, IMBILL_TOPIC_PREFIX=topics.prefix,
               IMBILL_DATA_DIR=str(tmp_path / "data"), IMBILL_EDGE_PORT=str(port))
    answers: dict[str, list[SipAnswer]] = {"1001": [], "1002": []}

    def send(account: str, edge_port: int = port) -> SipAnswer:
        to = "1002" if account == "1001" else "1001"
        answer = send_message("127.0.0.1", edge_port, from_user=account, to_user=to, text="hi", timeout=5,
                              credentials=as_(account))
        answers[account].append(answer)
        return answer

    edge = spawn("edge", env=env)
    processor = spawn("process", "--worker-id", "suspend", env=env)
    late_edge = None
    try:
        wait_for_edge(port)
        assert send("1001").status == 202                      # 0.05 USD: the wallet is empty
        wait_until(lambda: ("1001", "suspended", "wallet empty") in statuses(bootstrap, topics), 60,
                   "the suspension")
        refused = wait_until(lambda: (a := send("1001")).status == 403 and a, 10, "a 403 at the edge")
        assert send("1002").status == 202                      # postpaid, never suspended
        late_edge = spawn("edge", env={**env, "IMBILL_EDGE_PORT": str(late_port)})
        wait_for_edge(late_port)
        learned_at_start = send("1001", late_port)             # read the topic to its end before opening

        payment = top_up(load_settings(env), "1001", Decimal("1.00"), None, "test top-up", wait=30)
        assert payment.outcome is not None and payment.outcome.event == "BalanceChanged"
        wait_until(lambda: ("1001", "active", "top-up") in statuses(bootstrap, topics), 30, "the resumption")
        resumed = wait_until(lambda: (a := send("1001")).status == 202 and a, 10, "a 202 after the top-up")
        resumed_late = wait_until(lambda: (a := send("1001", late_port)).status == 202 and a, 10,
                                  "a 202 from the edge started later")  # it follows the topic too
        wait_until(lambda: len(list(read_to_end(bootstrap, topics.charges))) >= 4, 60,
                   lambda: f"the charges (answers {[(k, [a.status for a in v]) for k, v in answers.items()]}, "
                           f"charges {[e.record['account'] for e in read_to_end(bootstrap, topics.charges)]}, "
                           f"attempts {[e.record['from_user'] for e in read_to_end(bootstrap, topics.attempts)]})")
    finally:
        for process in (late_edge, processor, edge):
            if process is not None:
                stop(process)

    warning, = response_headers(refused.raw, "Warning")
    assert warning.startswith("399 ") and "account 1001 is suspended (wallet empty)" in warning
    assert learned_at_start.status == 403 and resumed.status == 202 and resumed_late.status == 202
    assert all(a.status == 202 for a in answers["1002"])
    published = [e.record for e in read_to_end(bootstrap, topics.attempts) if e.record["from_user"] == "1001"]
    accepted = [a for a in answers["1001"] if a.status == 202]
    assert len(published) == len(accepted), "a MESSAGE answered 403 was published"
    assert {a.status for a in answers["1001"]} == {202, 403}
    charged = [e.record for e in read_to_end(bootstrap, topics.charges) if e.record["account"] == "1001"]
    assert len(charged) == 3  # the one that emptied the wallet, and the two after the top-up
    rejected = [e.record["reason_code"] for e in read_to_end(bootstrap, topics.rejections)]
    assert set(rejected) <= {"service_suspended"}  # only a MESSAGE that raced the suspension to the edge


@pytest.mark.parametrize(("raw", "expected"), [
    (b'SIP/2.0 403 Forbidden\r\nWarning: 399 imbill-sip-edge "the messaging service of account 1001 is suspended '
     b'(wallet empty): top up the account"\r\nContent-Length: 0\r\n\r\n',
     "403 Forbidden: the messaging service of account 1001 is suspended (wallet empty): top up the account"),
    (b'SIP/2.0 403 Forbidden\r\nWarning: 399 edge "a \\"quoted\\" word"\r\n\r\n', '403 Forbidden: a "quoted" word'),
    (b"SIP/2.0 403 Forbidden\r\nWarning: 399 edge\r\n\r\n", "403 Forbidden"),
    (b"SIP/2.0 202 Accepted\r\nContent-Length: 0\r\n\r\n", "202 Accepted"),
])
def test_imbill_send_prints_why_the_edge_refused(raw: bytes, expected: str) -> None:
    status, reason = raw.split(b"\r\n", 1)[0].decode().split(" ", 2)[1:]
    assert sip_answer_text(int(status), reason, raw) == expected


class Suspended:
    """A service status where 1001 is suspended (the reader's interface)."""

    def suspended(self, account: str, environment: str | None = None) -> str | None:
        return "wallet empty" if account == "1001" and environment in (None, "test") else None


@pytest.mark.parametrize(("vendor_peers", "sender", "expected"), [
    (frozenset(), "1001", 403),
    (frozenset(), "1002", 202),
    (frozenset({"127.0.0.1"}), "1001", 202),  # incoming from a vendor peer: the processor decides
])
def test_the_edge_refuses_a_suspended_sender_without_publishing(vendor_peers, sender, expected) -> None:
    recorder, answers = [], []

    async def publish(attempt) -> None:
        recorder.append(attempt)

    async def scenario() -> None:
        edge = SipEdge(publish, environment="test", edge_id="edge-status", port=0, authentication=None,
                       vendor_peers=vendor_peers, service_status=Suspended())
        await edge.start()
        try:
            answers.append(await asyncio.to_thread(send_message, "127.0.0.1", edge.address[1], from_user=sender,
                                                   to_user="1002", text="hi", timeout=3))
        finally:
            await edge.stop()
        answers.append(edge.counters)

    asyncio.run(scenario())
    answer, counters = answers
    assert answer.status == expected and len(recorder) == (expected == 202)
    assert counters.suspended == (expected == 403)
    if expected == 403:
        assert response_headers(answer.raw, "Warning") == [
            '399 imbill-sip-edge "the messaging service of account 1001 is suspended (wallet empty): top up the '
            'account"']
