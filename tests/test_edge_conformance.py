"""The real SipEdge on a UDP socket: the 49 RFC 4475 torture messages, transactions, failures."""

from __future__ import annotations

import asyncio
import csv
import re
from collections import Counter
from typing import Any

import pytest

from imbill.producers.edge import SipEdge, serve_edge
from tests.shared import SHARED, shared_path

CORPUS = SHARED / "conformance" / "rfc4475"

ANSWER_TIMEOUT = 2.0  # an answer normally takes a millisecond
SILENCE = 0.15  # how long "no datagram" is awaited for a drop


def message(
    call_id: str, *, cseq: int = 1, method: str = "MESSAGE", branch: str | None = None, body: bytes = b"hello"
) -> bytes:
    lines = [
        f"{method} sip:bob@example.org SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5099;branch={branch or 'z9hG4bK' + re.sub('[^A-Za-z0-9]', '', call_id)}",
        "Max-Forwards: 70",
        "From: <sip:alice@example.com>;tag=a1",
        "To: <sip:bob@example.org>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Content-Type: text/plain;charset=UTF-8",
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def header_of(response: bytes, name: str) -> str | None:
    found = re.search(rb"^" + name.encode() + rb": (.*?)\r$", response, re.MULTILINE | re.IGNORECASE)
    return found[1].decode("utf-8", "replace") if found else None


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.answers.put_nowait(data)

    async def answer(self, timeout: float = ANSWER_TIMEOUT) -> bytes | None:
        try:
            return await asyncio.wait_for(self.answers.get(), timeout)
        except TimeoutError:
            return None


class Recorder:
    """An async publisher that records attempts; it can fail or wait on demand."""

    def __init__(self, *, fail_first: int = 0, delay: float = 0.0) -> None:
        self.attempts: list[dict[str, Any]] = []
        self.fail_first, self.delay, self.calls = fail_first, delay, 0
        self.gate: asyncio.Event | None = None

    async def __call__(self, attempt: dict[str, Any]) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        if self.calls <= self.fail_first:
            raise ConnectionError("broker unavailable")
        self.attempts.append(attempt)


async def started(publisher: Recorder, **options: Any) -> tuple[SipEdge, UdpClient]:
    edge = SipEdge(publisher, environment="test", edge_id="edge-t", host="127.0.0.1", port=0,
                   **{"authentication": None, **options})
    await edge.start()
    _, client = await asyncio.get_running_loop().create_datagram_endpoint(UdpClient, remote_addr=edge.address)
    return edge, client


async def exchange(client: UdpClient, data: bytes, timeout: float = ANSWER_TIMEOUT) -> bytes | None:
    client.transport.sendto(data)
    return await client.answer(timeout)


# --- the RFC 4475 corpus ------------------------------------------------------------------------------


def _expectations() -> dict[str, dict[str, str]]:
    with open(CORPUS / "edge_expectations.tsv", newline="") as table:
        return {row["name"]: row for row in csv.DictReader(table, delimiter="\t")}


async def _run_corpus(expectations: dict[str, dict[str, str]]) -> dict[str, Any]:
    recorder = Recorder()
    edge, client = await started(recorder)
    answers: dict[str, list[bytes]] = {}
    for name, row in expectations.items():
        wait = SILENCE if row["edge_expected"] == "drop" else ANSWER_TIMEOUT
        first = await exchange(client, (CORPUS / f"{name}.dat").read_bytes(), wait)
        more = [] if first is None or name != "dblreq" else [await client.answer(SILENCE)]
        answers[name] = [answer for answer in (first, *more) if answer is not None]
    after = await exchange(client, message("after-corpus@test"))
    counters = edge.counters
    await edge.stop()
    client.transport.close()
    return {"answers": answers, "after": after, "counters": counters, "published": recorder.attempts}


@pytest.fixture(scope="module")
def corpus_run() -> dict[str, Any]:
    shared_path("conformance/rfc4475/edge_expectations.tsv")
    expectations = _expectations()
    return {"expectations": expectations, **asyncio.run(_run_corpus(expectations))}


def test_corpus_is_complete(corpus_run: dict[str, Any]) -> None:
    assert len(corpus_run["expectations"]) == 49 == len(list(CORPUS.glob("*.dat")))


@pytest.mark.parametrize("name", sorted(p.stem for p in CORPUS.glob("*.dat")) or ["corpus-missing"])
def test_torture_message_gets_the_expected_answer(corpus_run: dict[str, Any], name: str) -> None:
    row = corpus_run["expectations"][name]
    answers = corpus_run["answers"][name]
    if row["edge_expected"] == "drop":
        assert answers == [], f"{name} is a response and must not be answered"
        return
    assert len(answers) == 1, f"{name}: expected exactly one answer, got {len(answers)}"
    allowed = {row["edge_expected"], *row["also_acceptable"].split()} - {"-"}
    assert str(status_of(answers[0])) in allowed, answers[0].decode("utf-8", "replace")
    sent = (CORPUS / f"{name}.dat").read_bytes()
    request_call_id = re.search(rb"^(?:Call-ID|i)\s*:\s*(.*?)\r$", sent, re.MULTILINE | re.IGNORECASE)
    if request_call_id:  # the answer belongs to this request, not to a neighbour
        assert header_of(answers[0], "Call-ID") == request_call_id[1].decode("utf-8")


def test_edge_keeps_serving_and_counts_the_corpus(corpus_run: dict[str, Any]) -> None:
    after = corpus_run["after"]
    assert after is not None and status_of(after) == 202
    statuses = Counter(status_of(a[0]) for a in corpus_run["answers"].values() if a)
    counters = corpus_run["counters"]
    assert counters.as_dict() == {
        "received": 50,
        "accepted": 2,
        "rejected_method": statuses[405],
        "rejected_malformed": statuses[400] + statuses[505],
        "dropped_malformed": 0,
        "publish_failures": 0,
        "retransmissions": 0,
        "dropped_responses": 5,
        "ignored": 0,
        "unavailable": 0,
        "internal_errors": 0,
        "unsupported_scheme": 0,
        "unauthenticated": 0,
        "registered": 0,
        "suspended": 0,
        "delivered": 0,
        "undelivered": 0,
        "unknown_domain": 0,
    }
    assert statuses[202] == 1 and sum(statuses.values()) == 44


def test_the_only_torture_message_is_published(corpus_run: dict[str, Any]) -> None:
    mpart, after = corpus_run["published"]
    assert (mpart.from_user, mpart.from_domain, mpart.to_user, mpart.body_bytes) == (
        "fluffy",
        "example.com",
        "kumiko",
        553,
    )
    assert mpart.content_type == "multipart/mixed;boundary=7a9cbec02ceef655"
    assert mpart.user_agent == "SIPimp.org/0.2.5 (curses)" and mpart.edge_id == "edge-t"
    assert after.call_id == "after-corpus@test" and after.received_at.tzinfo is not None


# --- transactions, failures, methods ------------------------------------------------------------------


def test_retransmission_is_answered_the_same_and_published_once() -> None:
    async def scenario() -> tuple[list[bytes | None], Recorder, Any]:
        recorder = Recorder()
        edge, client = await started(recorder)
        answers = [await exchange(client, message("retx-1@test")) for _ in range(3)]
        await edge.stop()
        return answers, recorder, edge.counters

    answers, recorder, counters = asyncio.run(scenario())
    assert answers[0] is not None and status_of(answers[0]) == 202 and answers == [answers[0]] * 3
    assert len(recorder.attempts) == 1
    assert (counters.accepted, counters.retransmissions) == (1, 2)


def test_retransmission_during_a_pending_publish_is_absorbed() -> None:
    async def scenario() -> tuple[bytes | None, bytes | None, bytes | None, Recorder, Any]:
        recorder = Recorder()
        recorder.gate = asyncio.Event()
        edge, client = await started(recorder)
        early = await exchange(client, message("pending-1@test"), SILENCE)
        absorbed = await exchange(client, message("pending-1@test"), SILENCE)
        recorder.gate.set()
        final = await client.answer()
        extra = await client.answer(SILENCE)
        await edge.stop()
        return early, absorbed, final, extra, recorder, edge.counters

    early, absorbed, final, extra, recorder, counters = asyncio.run(scenario())
    assert (early, absorbed, extra) == (None, None, None)
    assert final is not None and status_of(final) == 202
    assert recorder.calls == 1 and counters.retransmissions == 1


def test_publish_failure_is_a_500_and_the_edge_keeps_serving() -> None:
    async def scenario() -> tuple[bytes | None, bytes | None, bytes | None, Recorder, Any]:
        recorder = Recorder(fail_first=1)
        edge, client = await started(recorder)
        failed = await exchange(client, message("fail-1@test"))
        repeated = await exchange(client, message("fail-1@test"))
        accepted = await exchange(client, message("fail-2@test"))
        await edge.stop()
        return failed, repeated, accepted, recorder, edge.counters

    failed, repeated, accepted, recorder, counters = asyncio.run(scenario())
    assert failed is not None and failed.startswith(b"SIP/2.0 500 Server Internal Error\r\n")
    assert header_of(failed, "Retry-After") == "5" and repeated == failed
    assert accepted is not None and status_of(accepted) == 202
    assert [a.call_id for a in recorder.attempts] == ["fail-2@test"]
    assert (counters.publish_failures, counters.accepted, counters.retransmissions) == (1, 1, 1)


def test_other_methods_get_405_with_allow_and_ack_gets_nothing() -> None:
    async def scenario() -> tuple[bytes | None, bytes | None, Recorder]:
        recorder = Recorder()
        edge, client = await started(recorder)
        options = await exchange(client, message("options-1@test", method="OPTIONS", body=b""))
        ack = await exchange(client, message("ack-1@test", method="ACK", body=b""), SILENCE)
        await edge.stop()
        return options, ack, recorder

    options, ack, recorder = asyncio.run(scenario())
    assert options is not None and options.startswith(b"SIP/2.0 405 Method Not Allowed\r\n")
    assert header_of(options, "Allow") == "MESSAGE" and ack is None and recorder.calls == 0


def test_garbage_is_dropped_and_counted() -> None:
    async def scenario() -> tuple[list[bytes | None], bytes | None, Any]:
        edge, client = await started(Recorder())
        junk = [b"\x00" * 64, b"\xff\xfe\x00garbage", b"\r\n\r\n", b"MESSAGE sip:x SIP/2.0\r\n\r\n"]
        silent = [await exchange(client, data, SILENCE) for data in junk]
        still = await exchange(client, message("after-junk@test"))
        await edge.stop()
        return silent, still, edge.counters

    silent, still, counters = asyncio.run(scenario())
    assert silent == [None] * 4 and still is not None and status_of(still) == 202
    assert (counters.rejected_malformed, counters.dropped_malformed, counters.ignored) == (3, 3, 1)


def test_too_many_pending_publishes_get_503() -> None:
    async def scenario() -> tuple[bytes | None, bytes | None, Recorder, Any]:
        recorder = Recorder()
        recorder.gate = asyncio.Event()
        edge, client = await started(recorder, max_pending=1)
        client.transport.sendto(message("busy-1@test"))
        refused = await exchange(client, message("busy-2@test"))
        recorder.gate.set()
        accepted = await client.answer()
        await edge.stop()
        return refused, accepted, recorder, edge.counters

    refused, accepted, recorder, counters = asyncio.run(scenario())
    assert refused is not None and refused.startswith(b"SIP/2.0 503 Service Unavailable\r\n")
    assert header_of(refused, "Call-ID") == "busy-2@test" and header_of(refused, "Retry-After") == "5"
    assert accepted is not None and header_of(accepted, "Call-ID") == "busy-1@test" and status_of(accepted) == 202
    assert [a.call_id for a in recorder.attempts] == ["busy-1@test"] and counters.unavailable == 1


def test_stop_answers_pending_publishes_and_refuses_new_ones() -> None:
    async def scenario() -> tuple[bytes | None, bytes | None, Recorder]:
        recorder = Recorder()
        recorder.gate = asyncio.Event()
        edge, client = await started(recorder)
        client.transport.sendto(message("draining-1@test"))
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(edge.stop())
        refused = await exchange(client, message("draining-2@test"))
        recorder.gate.set()
        drained = await client.answer()
        await stopping
        return refused, drained, recorder

    refused, drained, recorder = asyncio.run(scenario())
    assert refused is not None and status_of(refused) == 503
    assert drained is not None and status_of(drained) == 202 and header_of(drained, "Call-ID") == "draining-1@test"
    assert [a.call_id for a in recorder.attempts] == ["draining-1@test"]


def test_publishes_run_concurrently() -> None:
    async def scenario() -> tuple[list[bytes | None], float]:
        edge, client = await started(Recorder(delay=0.3))
        loop = asyncio.get_running_loop()
        began = loop.time()
        for index in range(100):
            client.transport.sendto(message(f"burst-{index}@test"))
        answers = [await client.answer() for _ in range(100)]
        elapsed = loop.time() - began
        await edge.stop()
        return answers, elapsed

    answers, elapsed = asyncio.run(scenario())
    assert all(a is not None and status_of(a) == 202 for a in answers)
    assert elapsed < 2.0, f"100 publishes of 0.3 s each took {elapsed:.2f} s: they are serialized"


def test_serve_edge_runs_until_cancelled() -> None:
    async def scenario() -> bytes | None:
        ready: asyncio.Future[SipEdge] = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(
            serve_edge(Recorder(), environment="test", edge_id="e", port=0, on_started=ready.set_result,
                       authentication=None)
        )
        edge = await ready
        _, client = await asyncio.get_running_loop().create_datagram_endpoint(UdpClient, remote_addr=edge.address)
        answer = await exchange(client, message("serve-1@test"))
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
        return answer

    answer = asyncio.run(scenario())
    assert answer is not None and status_of(answer) == 202


def test_messages_from_a_vendor_peer_are_incoming_others_outgoing() -> None:
    async def scenario(peers: frozenset[str]) -> str:
        recorder = Recorder()
        edge, client = await started(recorder, vendor_peers=peers)
        answer = await exchange(client, message(f"dir-{len(peers)}@test"))
        await edge.stop()
        assert answer is not None and status_of(answer) == 202
        return recorder.attempts[0].direction

    assert asyncio.run(scenario(frozenset({"127.0.0.1"}))) == "incoming"
    assert asyncio.run(scenario(frozenset())) == "outgoing"
