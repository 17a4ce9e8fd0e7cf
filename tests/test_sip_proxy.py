"""The proxy's request and response rewriting (RFC 3261 section 16) and its client
transaction's timers, without the edge: a Forwarder on an event loop and a fake socket."""

from __future__ import annotations

import asyncio

import pytest

from imbill.producers.sip import SipRequest, parse_request
from imbill.producers.sip_proxy import (DeliverySettings, Forwarder, forwarded_request, relayed_response,
                                        response_branch, response_status)

OUR_VIA = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-imbill-1;rport"


def message(*extra: str, body: bytes = b"hello", max_forwards: str | None = "70") -> SipRequest:
    hops = [f"Max-Forwards: {max_forwards}"] if max_forwards is not None else []
    lines = ["MESSAGE sip:1002@127.0.0.1 SIP/2.0", "Via: SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bKa;rport",
             *hops, "From: <sip:1001@127.0.0.1>;tag=f", "To: <sip:1002@127.0.0.1>", "Call-ID: m1",
             "CSeq: 2 MESSAGE", 'Authorization: Digest username="1001", realm="default"', "Content-Type: text/plain",
             *extra, f"Content-Length: {len(body)}"]
    request = parse_request(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    assert isinstance(request, SipRequest), request
    return request


def test_the_forwarded_request() -> None:
    datagram = forwarded_request(message(), "sip:1002@192.0.2.20:5062;transport=udp", OUR_VIA)
    forwarded = parse_request(datagram)
    assert isinstance(forwarded, SipRequest), forwarded
    assert forwarded.request_uri == "sip:1002@192.0.2.20:5062;transport=udp"
    assert forwarded.via == (OUR_VIA, "SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bKa;rport")
    assert forwarded.branch == "z9hG4bK-imbill-1"
    assert forwarded.header("Max-Forwards") == "69" and forwarded.header("Authorization") is None
    assert (forwarded.call_id, forwarded.cseq, forwarded.body) == ("m1", 2, b"hello")


@pytest.mark.parametrize(("hops", "forwarded"), [("70", "69"), ("1", "0"), (None, "70")])
def test_max_forwards_is_decremented_and_70_when_absent(hops, forwarded) -> None:
    request = parse_request(forwarded_request(message(max_forwards=hops), "sip:x@192.0.2.20", OUR_VIA))
    assert request.header("Max-Forwards") == forwarded


def test_a_request_with_max_forwards_0_is_not_forwarded() -> None:
    assert forwarded_request(message(max_forwards="0"), "sip:x@192.0.2.20", OUR_VIA) is None


def response(status: str, *vias: str) -> bytes:
    lines = [f"SIP/2.0 {status}", *(f"Via: {v}" for v in vias), "From: <sip:1001@127.0.0.1>;tag=f",
             "To: <sip:1002@127.0.0.1>;tag=t", "Call-ID: m1", "CSeq: 2 MESSAGE", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


SENDER_VIA = "SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bKa;rport=5070;received=198.51.100.7"


def test_the_relayed_response_loses_our_via_only() -> None:
    answer = response("200 OK", OUR_VIA, SENDER_VIA)
    assert (response_status(answer), response_branch(answer)) == (200, "z9hG4bK-imbill-1")
    relayed = relayed_response(answer)
    assert b"z9hG4bK-imbill-1" not in relayed and f"Via: {SENDER_VIA}".encode() in relayed
    assert relayed.startswith(b"SIP/2.0 200 OK\r\n") and relayed.endswith(b"Content-Length: 0\r\n\r\n")


def test_a_response_with_the_vias_on_one_line() -> None:
    answer = response("486 Busy Here", f"{OUR_VIA}, {SENDER_VIA}")
    assert response_branch(answer) == "z9hG4bK-imbill-1"
    assert f"Via: {SENDER_VIA}\r\n".encode() in relayed_response(answer)


@pytest.mark.parametrize("mode", ["sometimes", ""])
def test_delivery_settings_are_checked(mode) -> None:
    with pytest.raises(ValueError):
        DeliverySettings(mode)
    with pytest.raises(ValueError):
        DeliverySettings("on", timeout=0)


def run_forwarder(timeout: float, answer_after: float | None, provisional: bool = False):
    """Forward one MESSAGE on a loop; the fake recipient answers 200 after ``answer_after`` s."""
    sent: list[tuple[float, bytes]] = []
    finals: list[tuple[int, bytes | None]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        forwarder = Forwarder(lambda data, addr: sent.append((loop.time() - start, data)), "192.0.2.1", 5060,
                              DeliverySettings("on", timeout))
        assert forwarder.forward(message(), "sip:1002@192.0.2.20", ("192.0.2.20", 5062),
                                 lambda status, raw: finals.append((status, raw)))
        branch = parse_request(sent[0][1]).branch
        if provisional:
            await asyncio.sleep(0.1)
            forwarder.on_response(response("100 Trying", f"SIP/2.0/UDP 192.0.2.1:5060;branch={branch}"))
        if answer_after is not None:
            await asyncio.sleep(answer_after)
            assert forwarder.on_response(response("200 OK", f"SIP/2.0/UDP 192.0.2.1:5060;branch={branch}",
                                                  SENDER_VIA))
            assert not forwarder.on_response(response("200 OK", "SIP/2.0/UDP 192.0.2.1:5060;branch=other"))
        await asyncio.sleep(timeout + 0.1)
        assert len(forwarder) == 0

    asyncio.run(main())
    return sent, finals


def test_the_request_is_retransmitted_timer_e_until_its_final_answer() -> None:
    sent, finals = run_forwarder(timeout=4.0, answer_after=1.7)
    assert [round(at, 1) for at, _ in sent] == [0.0, 0.5, 1.5]  # T1, then doubling
    assert len({data for _, data in sent}) == 1
    [(status, relayed)] = finals
    assert status == 200 and relayed.startswith(b"SIP/2.0 200 OK") and b"z9hG4bK-imbill" not in relayed


def test_no_final_answer_is_408_at_the_timeout() -> None:
    sent, finals = run_forwarder(timeout=1.0, answer_after=None)
    assert finals == [(408, None)] and len(sent) == 2


def test_a_provisional_answer_slows_retransmissions_to_t2() -> None:
    sent, finals = run_forwarder(timeout=2.0, answer_after=None, provisional=True)
    assert [round(at, 1) for at, _ in sent] == [0.0, 0.5] and finals == [(408, None)]


def test_a_huge_final_answer_is_not_kept_for_relaying() -> None:
    finals: list[tuple[int, bytes | None]] = []

    async def main() -> None:
        sent: list[bytes] = []
        forwarder = Forwarder(lambda data, addr: sent.append(data), "192.0.2.1", 5060, DeliverySettings("on", 1.0))
        forwarder.forward(message(), "sip:1002@192.0.2.20", ("192.0.2.20", 5062),
                          lambda status, raw: finals.append((status, raw)))
        branch = parse_request(sent[0]).branch
        huge = response("200 OK", f"SIP/2.0/UDP 192.0.2.1:5060;branch={branch}", SENDER_VIA)
        assert forwarder.on_response(huge.replace(b"Content-Length: 0\r\n\r\n",
                                                  b"Content-Length: 9000\r\n\r\n" + b"x" * 9000))

    asyncio.run(main())
    assert finals == [(200, None)]
