"""The SIP layer of the edge without sockets: parsing, responses, the MessageAttempt payload."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone, UTC

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from imbill.producers import sip, sip_grammar
from imbill.producers.attempt import attempt_from_request, attempt_key, body_chars
from imbill.schemas.codec import record_of
from imbill.producers.sip import SipParseError, SipRequest, is_response, parse_request
from imbill.producers.sip_responses import build_response

VIA = "Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK776asdhds"
BASE_HEADERS = (
    VIA,
    "Max-Forwards: 70",
    "From: Alice <sip:alice@example.com>;tag=1928301774",
    "To: <sip:bob@example.org>",
    "Call-ID: a84b4c76e66710@pc33.example.com",
    "CSeq: 314159 MESSAGE",
    "User-Agent: phone/1.0",
    "Content-Type: text/plain",
)


def datagram(
    *headers: str,
    body: bytes = b"Hi",
    start: str = "MESSAGE sip:bob@example.org SIP/2.0",
    content_length: int | None | str = "auto",
) -> bytes:
    lines = [start, *headers]
    if content_length == "auto":
        lines.append(f"Content-Length: {len(body)}")
    elif content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def replaced(old_prefix: str, *new: str) -> tuple[str, ...]:
    """BASE_HEADERS with the header starting with `old_prefix` replaced by `new` (none: removed)."""
    result: list[str] = []
    for header in BASE_HEADERS:
        result.extend(new if header.startswith(old_prefix) else (header,))
    return tuple(result)


UTF8_TEXT = "Grüße, 日本 👋🏽!"  # 13 code points, 25 octets
TEXT_150 = ("Meet at 6? " * 14 + "Bring cake.")[:150]

VALID = [
    ("plain", datagram(*BASE_HEADERS), {"from_user": "alice", "to_user": "bob", "cseq": 314159, "body": b"Hi"}),
    (
        "compact names",
        datagram(
            "v: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKc1",
            "f: <sip:alice@example.com>;tag=9",
            "t: sip:bob@example.org",
            "i: compact-1@example.com",
            "CSeq: 7 MESSAGE",
            "c: text/plain",
            body=b"",
            content_length=None,
        ),
        {"from_tag": "9", "to_domain": "example.org", "call_id": "compact-1@example.com", "content_type": "text/plain"},
    ),
    (
        "folded and spaced",
        datagram(
            "Via  :  SIP / 2.0 / UDP\r\n   192.0.2.10 ;\r\n branch = z9hG4bKf1",
            'from :\r\n "A \\"q\\" B"\r\n\t<sip:alice@Example.COM>\r\n ; tag = x1',
            "TO: sip:bob@example.org",
            "call-id: folded-1",
            "cseq: 0009\r\n  MESSAGE",
            "l : 2",
            body=b"Hi",
            content_length=None,
        ),
        {"from_user": "alice", "from_domain": "example.com", "from_tag": "x1", "cseq": 9, "branch": "z9hG4bKf1"},
    ),
    (
        "utf-8 body",
        datagram(*replaced("Content-Type", "Content-Type: text/plain;charset=UTF-8"), body=UTF8_TEXT.encode()),
        {"body": UTF8_TEXT.encode(), "user_agent": "phone/1.0"},
    ),
    ("150 characters", datagram(*BASE_HEADERS, body=TEXT_150.encode()), {"body": TEXT_150.encode()}),
    ("no Content-Length", datagram(*BASE_HEADERS, body=b"rest of it", content_length=None), {"body": b"rest of it"}),
    ("octets after the body", datagram(*BASE_HEADERS, body=b"Hi", content_length=2) + b"GARBAGE", {"body": b"Hi"}),
    ("leading CRLF", b"\r\n\r\n" + datagram(*BASE_HEADERS), {"method": "MESSAGE"}),
    (
        "tel From, in-dialog To",
        datagram(*replaced("From", "From: <tel:+16505550100>;tag=t")).replace(
            b"To: <sip:bob@example.org>", b"To: <sip:bob@example.org>;tag=abc"
        ),
        {"from_user": "+16505550100", "from_domain": "", "to_tag": "abc"},
    ),
    (
        "sips and IPv6",
        datagram(*replaced("To", "To: <sips:bob@[2001:db8::1]:5061;transport=tls>")),
        {"to_user": "bob", "to_domain": "[2001:db8::1]"},
    ),
    (
        "several Vias",
        datagram(
            "Via: SIP/2.0/UDP p1.example.net;branch=z9hG4bKp1, SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKc",
            *BASE_HEADERS[1:],
        ),
        {
            "via": ("SIP/2.0/UDP p1.example.net;branch=z9hG4bKp1", "SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKc"),
            "branch": "z9hG4bKp1",
        },
    ),
    ("escaped user", datagram(*replaced("From", "From: <sip:al%69ce@example.com>;tag=1")), {"from_user": "alice"}),
]


@pytest.mark.parametrize(("data", "expected"), [case[1:] for case in VALID], ids=[case[0] for case in VALID])
def test_valid_requests_parse(data: bytes, expected: dict) -> None:
    request = parse_request(data)
    assert isinstance(request, SipRequest), request
    assert {name: getattr(request, name) for name in expected} == expected


MALFORMED = [
    ("CSeq method mismatch", datagram(*replaced("CSeq", "CSeq: 1 INVITE")), 400, "CSeq method"),
    ("CSeq above 2**32-1", datagram(*replaced("CSeq", "CSeq: 4294967296 MESSAGE")), 400, "out of range"),
    ("CSeq without number", datagram(*replaced("CSeq", "CSeq: MESSAGE")), 400, "CSeq"),
    ("missing Call-ID", datagram(*replaced("Call-ID")), 400, "missing Call-ID"),
    ("missing From", datagram(*replaced("From")), 400, "missing From"),
    ("missing To", datagram(*replaced("To")), 400, "missing To"),
    ("missing CSeq", datagram(*replaced("CSeq")), 400, "missing CSeq"),
    ("missing Via", datagram(*replaced("Via")), 400, "missing Via"),
    ("two To", datagram(*BASE_HEADERS, "To: <sip:carol@example.org>"), 400, "more than one To"),
    ("two Call-ID", datagram(*BASE_HEADERS, "i: other@example.com"), 400, "more than one Call-ID"),
    ("conflicting Content-Length", datagram(*BASE_HEADERS, "l: 1"), 400, "Content-Length"),
    ("Content-Length beyond the datagram", datagram(*BASE_HEADERS, content_length=3), 400, "larger"),
    ("negative Content-Length", datagram(*BASE_HEADERS, content_length="-2"), 400, "Content-Length"),
    (
        "double space in Request-Line",
        datagram(*BASE_HEADERS, start="MESSAGE  sip:bob@example.org SIP/2.0"),
        400,
        "Request-Line",
    ),
    (
        "trailing space in Request-Line",
        datagram(*BASE_HEADERS, start="MESSAGE sip:bob@example.org SIP/2.0 "),
        400,
        "Request-Line",
    ),
    (
        "<> around the Request-URI",
        datagram(*BASE_HEADERS, start="MESSAGE <sip:bob@example.org> SIP/2.0"),
        400,
        "Request-URI",
    ),
    (
        "LWS in the Request-URI",
        datagram(*BASE_HEADERS, start="MESSAGE sip:bob@example.org; lr SIP/2.0"),
        400,
        "Request-Line",
    ),
    (
        "headers in the Request-URI",
        datagram(*BASE_HEADERS, start="MESSAGE sip:bob@example.org?X=1 SIP/2.0"),
        400,
        "Request-URI",
    ),
    ("no version", datagram(*BASE_HEADERS, start="MESSAGE sip:bob@example.org"), 400, "Request-Line"),
    ("SIP/3.0", datagram(*BASE_HEADERS, start="MESSAGE sip:bob@example.org SIP/3.0"), 505, "version"),
    ("unterminated quote", datagram(*replaced("From", 'From: "Alice <sip:alice@example.com>;tag=1')), 400, "From"),
    (
        "unquoted display name with comma",
        datagram(*replaced("From", "From: Liddell, Alice <sip:a@example.com>;tag=1")),
        400,
        "From",
    ),
    ("space inside <>", datagram(*replaced("To", "To: < sip:bob@example.org >")), 400, "To"),
    ("empty Via element", datagram(*replaced("Via", VIA + ",")), 400, "header list"),
    ("bad Via", datagram(*replaced("Via", "Via: SIP/2.0/UDP")), 400, "Via"),
    ("Max-Forwards 256", datagram(*replaced("Max-Forwards", "Max-Forwards: 256")), 400, "Max-Forwards"),
    ("Date not in GMT", datagram(*BASE_HEADERS, "Date: Fri, 01 Jan 2010 16:00:00 EST"), 400, "Date"),
    ("Contact addr-spec with headers", datagram(*BASE_HEADERS, "Contact: sip:a@example.com?Route=x"), 400, "Contact"),
    ("bad Call-ID", datagram(*replaced("Call-ID", "Call-ID: two words")), 400, "Call-ID"),
    ("line without colon", datagram(*BASE_HEADERS, "NoColonHere"), 400, "header line"),
    ("fold before the first header", datagram(" folded", *BASE_HEADERS), 400, "header line"),
    ("bare LF in a header", datagram(*replaced("User-Agent", "User-Agent: a\nInjected: 1")), 400, "header line"),
    ("invalid UTF-8 in a header", datagram(*BASE_HEADERS).replace(b"phone/1.0", b"phone\xff"), 400, "UTF-8"),
    ("NUL in a header name", datagram(*BASE_HEADERS, "X-\x00: 1"), 400, "header line"),
    ("no empty line", datagram(*BASE_HEADERS, body=b"")[:-2], 400, "empty line"),
]


@pytest.mark.parametrize(("data", "status", "reason"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_requests_are_parse_errors(data: bytes, status: int, reason: str) -> None:
    error = parse_request(data)
    assert isinstance(error, SipParseError), error
    assert (error.status, reason in error.reason) == (status, True), error.reason


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 40,
        b"\xff\xfe\xfd",
        b"\r\n\r\n",
        b"MESSAGE",
        b"SIP/2.0 200 OK\r\n\r\n",
        bytes(range(256)),
        b"MESSAGE sip:a@b SIP/2.0\r\n" + b"Via: " + b"\xc3" * 30,
    ],
)
def test_garbage_is_a_parse_error_without_headers(data: bytes) -> None:
    error = parse_request(data)
    assert isinstance(error, SipParseError) and error.reason
    assert build_response(error.headers, error.status, server="t") is None


@given(st.binary(max_size=600))
def test_no_bytes_make_the_parser_raise(data: bytes) -> None:
    assert isinstance(parse_request(data), SipRequest | SipParseError)


@given(st.integers(0, 400), st.binary(min_size=1, max_size=8), st.integers(0, 400))
def test_mutated_requests_never_raise(at: int, junk: bytes, cut: int) -> None:
    data = datagram(*BASE_HEADERS, 'Contact: "A" <sip:a@example.com?x=1>;q=0.5', body=b"Hello")
    mutated = data[:at] + junk + data[at + len(junk) :]
    assert isinstance(parse_request(mutated), SipRequest | SipParseError)
    assert isinstance(parse_request(data[: len(data) - cut]), SipRequest | SipParseError)


LARGE = 60_000  # close to the largest UDP payload (65,507 octets)
ADVERSARIAL = [  # each took seconds to minutes before a fix (backtracking regular expressions)
    ("whitespace run in CSeq", datagram(*replaced("CSeq", "CSeq: 1" + " " * LARGE + "MESSAGE x"))),
    ("failing tel: Request-URI", datagram(*BASE_HEADERS, start=f"MESSAGE tel:{'1-' * (LARGE // 2)}x SIP/2.0")),
    ("failing tel: From", datagram(*replaced("From", "From: <tel:" + "1-" * (LARGE // 2) + "x>;tag=1"))),
    ("unterminated quote", datagram(*replaced("From", 'From: "' + "a\\\\" * (LARGE // 3) + " <sip:a@b>"))),
    ("many parameters", datagram(*replaced("Via", "Via: SIP/2.0/UDP 192.0.2.10" + ";a=b" * (LARGE // 4) + ";"))),
    ("many list elements", datagram(*BASE_HEADERS, "Contact: " + '"a,<" <sip:a@b>,' * (LARGE // 16) + '"')),
]


@pytest.mark.parametrize("data", [c[1] for c in ADVERSARIAL], ids=[c[0] for c in ADVERSARIAL])
def test_adversarial_datagrams_are_refused_quickly(data: bytes) -> None:
    began = time.perf_counter()
    assert isinstance(parse_request(data), SipParseError)
    assert time.perf_counter() - began < 0.25


def test_content_length_may_have_leading_zeros() -> None:
    request = parse_request(datagram(*BASE_HEADERS, body=b"Hi", content_length="0" * 5000 + "2"))
    assert isinstance(request, SipRequest) and request.body == b"Hi"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"SIP/2.0 200 OK\r\n\r\n", True),
        (b"\r\nSIP/2.0 100 \r\n", True),
        (b"SIP/2.0 4294967301 big\r\n", True),
        (datagram(*BASE_HEADERS), False),
        (b"", False),
        (b"\x00SIP/2.0", False),
    ],
)
def test_is_response(data: bytes, expected: bool) -> None:
    assert is_response(data) is expected


# --- fast paths: the plain forms are parsed without sipmessage, with the same outcome ------------------

FAST_PATHS = (  # each matches only plain forms that the full path also accepts
    (sip, "_PLAIN_FIELD"),
    (sip_grammar, "_PLAIN_CSEQ"),
    (sip_grammar, "_PLAIN_VIA"),
    (sip_grammar, "_PLAIN_NAME_ADDR"),
    (sip_grammar, "_PLAIN_SIP_URI"),
)
NEVER = re.compile(r"(?!)")


def _clear_caches() -> None:
    sip_grammar.parse_address.cache_clear()
    sip_grammar._uri_user_host.cache_clear()


@contextmanager
def full_paths_only() -> Iterator[None]:
    saved = [(module, name, getattr(module, name)) for module, name in FAST_PATHS]
    for module, name, _ in saved:
        setattr(module, name, NEVER)
    _clear_caches()
    try:
        yield
    finally:
        for module, name, pattern in saved:
            setattr(module, name, pattern)
        _clear_caches()


def outcome(data: bytes) -> tuple:
    parsed = parse_request(data)
    if isinstance(parsed, SipParseError):
        return ("error", parsed.reason, parsed.status, parsed.headers)
    return ("request", *(getattr(parsed, name) for name in SipRequest.__slots__))


# Values in their plain form (what the fast paths take) seven times in eight, otherwise with odd pieces.
_odd = st.sampled_from(
    ["", " ", "\t", "%41", "%", ";", ",", "?", "@", ":", "=", '"', "<", ">", "[", "]", "/", "é", "\x0c"])
_plain_users = st.sampled_from(["a", "bob", "1001", "+1650", "~!*'()", "a.b-c_d"])
_plain_hosts = st.sampled_from(["example.com", "127.0.0.1", "Example.COM.", "a-b.example", "h"])
_plain_ports = st.sampled_from(["", ":5060", ":0", ":99999"])
_plain_params = st.lists(st.tuples(st.sampled_from(["tag", "Tag", "branch", "Branch", "lr"]),
                                   st.sampled_from(["=1", "=2", "=z9hG4bK1", ""])), max_size=4)
_odd_users = st.builds(lambda a, odd, b: a + odd + b, _plain_users, _odd, _plain_users) | st.sampled_from(
    ["al%69ce", "%41", "a%2Fb", "a%2"])
_odd_hosts = st.sampled_from(["[2001:db8::1]", "256.1.1.1", "1.2.3", "1abc.d", "a..b", "-a.com", "1.2.3.4a", "a.c0"])
_odd_ports = st.sampled_from([":", ":5a", ": 1"])
_odd_params = st.lists(st.tuples(st.sampled_from(["tag", "Tag", "branch", "br%61nch", "t%61g"]),
                                 st.sampled_from(["=1", "=%41", '="q"', "=", "=[::1]", "=a b", " = 1"])), max_size=4)
_escaped_params = st.lists(st.tuples(st.sampled_from(["br%61nch", "t%61g", "branch", "tag"]),
                                     st.sampled_from(["=%41", "=1"])), min_size=1, max_size=2)


def _mostly(plain: st.SearchStrategy, odd: st.SearchStrategy) -> st.SearchStrategy:
    return st.integers(0, 7).flatmap(lambda roll: odd if roll == 0 else plain)


def _joined(pairs: list[tuple[str, str]]) -> str:
    return "".join(f";{name}{value}" for name, value in pairs)


_users = _mostly(_plain_users, _odd_users)
_hosts = _mostly(_plain_hosts, _odd_hosts)
_ports = _mostly(_plain_ports, _odd_ports)
_params = _mostly(_plain_params, st.builds(list.__add__, _plain_params, _odd_params | _escaped_params)).map(_joined)
_uri_params = _mostly(st.sampled_from(["", ";transport=udp", ";lr", ";user=phone;ttl=1"]),
                      st.sampled_from([";x=%41", ";a=b?", ";=", ";x=[::1]", ";x=\"y\""]))
_uris = st.builds(lambda scheme, user, host, port, params: f"{scheme}{user}@{host}{port}{params}",
                  _mostly(st.sampled_from(["sip:", "sips:"]), st.sampled_from(["SIP:", "tel:", "mailto:", "sip:u:pw"])),
                  _users, _hosts, _ports, _uri_params)
_addresses = _mostly(
    st.builds(lambda uri, params: f"<{uri}>{params}", _uris, _params),
    st.builds(lambda name, uri, params, space: f"{name}<{uri}>{space}{params}",
              st.sampled_from(["", "Alice ", '"A B" ', "A,B "]), _uris, _params, st.sampled_from(["", " "])) | _uris)
_vias = st.builds(lambda protocol, host, port, params: f"{protocol} {host}{port}{params}",
                  _mostly(st.sampled_from(["SIP/2.0/UDP", "SIP/2.0/tcp"]),
                          st.sampled_from(["SIP / 2.0 / TCP", "SIP/2.1/UDP", "SIP/2.0/U%44P"])),
                  _hosts, _ports, _params)
_cseqs = st.builds(lambda number, space, method: f"{number}{space}{method}",
                   st.sampled_from(["1", "007", "4294967295", "4294967296", "99999999999", "", "1.5"]),
                   _mostly(st.just(" "), st.sampled_from(["  ", "\t", ""])),
                   st.sampled_from(["MESSAGE", "message", "MESS%41GE"]))


def grammar_outcome(parse: Callable[..., object], *args: object) -> tuple:
    _clear_caches()
    try:
        return ("value", parse(*args))
    except sip_grammar.Malformed as problem:
        return ("malformed", problem.reason, problem.status)


def assert_fast_is_full(parse: Callable[..., object], *args: object) -> None:
    fast = grammar_outcome(parse, *args)
    with full_paths_only():
        assert grammar_outcome(parse, *args) == fast


@given(_addresses, st.sampled_from(["From", "To", "Contact"]))
@example("<sip:Al%69ce@Example.COM.:5060>;tag=1;TAG=2", "From")
@example("<sip:bob@example.org>;t%61g=x;tag=", "To")
def test_address_fast_path_is_the_full_path(value: str, header: str) -> None:
    assert_fast_is_full(sip_grammar.parse_address, value, header)


@given(_uris)
@example("sip:%41@h")
@example("sip:a@1.2.3.4a")
def test_request_uri_fast_path_is_the_full_path(uri: str) -> None:
    assert_fast_is_full(sip_grammar.check_request_uri, uri)


@given(st.lists(_vias | st.builds(", ".join, st.lists(_vias, min_size=2, max_size=3)), min_size=1, max_size=3))
@example(["SIP/2.0/UDP h;br%61nch=1"])
@example(["SIP/2.0/UDP h;branch=1;Branch=2;branch=3"])
@example(["SIP/2.0/UDP h;branch=%41"])
@example(["SIP/2.0/UDP h;lr", "SIP/2.0/UDP h;branch=1,"])
def test_via_fast_path_is_the_full_path(values: list[str]) -> None:
    assert_fast_is_full(sip_grammar.parse_vias, values)


@given(_cseqs, st.sampled_from(["MESSAGE", "message"]))
def test_cseq_fast_path_is_the_full_path(value: str, method: str) -> None:
    assert_fast_is_full(sip_grammar.parse_cseq, value, method)


_header_lines = st.lists(
    st.builds(lambda name, before, after, value, trail: f"{name}{before}:{after}{value}{trail}",
              st.sampled_from(["Via", "v", "From", "f", "TO", "Call-ID", "i", "CSeq", "Max-Forwards", "l", "X-Odd",
                               "Bad Name", ""]),
              st.sampled_from(["", "", " ", "\t "]), st.sampled_from(["", " ", "  ", "\t"]),
              st.sampled_from(["x", "SIP/2.0/UDP h;branch=z9hG4bK1", "<sip:a@b>;tag=1", "1 MESSAGE", "70", "a b",
                               "", "a\rb", "a\nb", "c\r\n d", "é"]),
              st.sampled_from(["", "", " ", "\t", " \t "])),
    min_size=1, max_size=9)


@given(_header_lines)
def test_header_block_fast_path_is_the_full_path(lines: list[str]) -> None:
    data = datagram(*lines, start="MESSAGE sip:bob@example.org SIP/2.0", content_length=None)
    fast = outcome(data)
    with full_paths_only():
        assert outcome(data) == fast
    frame = framing(data)
    with full_paths_only():
        assert framing(data) == frame


def framing(data: bytes) -> tuple:
    frame = sip._frame(data)
    return frame.fields, {name: list(values) for name, values in frame.index.items()}, frame.malformed_line


def test_the_plain_forms_take_the_fast_paths() -> None:
    assert sip._plain_fields("Via: x\r\nFrom : y") == ((("Via", "x"), ("From", "y")), {"via": ("x",), "from": ("y",)})
    assert sip_grammar._PLAIN_VIA.fullmatch("SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-0")
    assert sip_grammar._PLAIN_NAME_ADDR.fullmatch("<sip:1001@127.0.0.1>;tag=1234SIPpTag001")
    assert sip_grammar._PLAIN_SIP_URI.fullmatch("sip:2001@example.com:5060;transport=udp")
    assert sip_grammar._PLAIN_CSEQ.fullmatch("1 MESSAGE")


# --- responses ---------------------------------------------------------------------------------------


def _lines(response: bytes) -> list[str]:
    assert response.endswith(b"\r\n\r\n")
    return response.decode().split("\r\n")[:-2]


def test_response_copies_the_transaction_headers_and_adds_a_to_tag() -> None:
    request = parse_request(datagram("Via: SIP/2.0/UDP p1.example.net;branch=z9hG4bKp1", *BASE_HEADERS))
    lines = _lines(build_response(request.headers, 202, server="imbill-test"))
    to_tag = lines[4].rpartition("tag=")[2]
    assert lines == [
        "SIP/2.0 202 Accepted",
        "Via: SIP/2.0/UDP p1.example.net;branch=z9hG4bKp1",
        VIA,
        "From: Alice <sip:alice@example.com>;tag=1928301774",
        f"To: <sip:bob@example.org>;tag={to_tag}",
        "Call-ID: a84b4c76e66710@pc33.example.com",
        "CSeq: 314159 MESSAGE",
        "Server: imbill-test",
        "Content-Length: 0",
    ]
    assert (
        len(to_tag) == 16
        and build_response(request.headers, 202, server="imbill-test") == "\r\n".join(lines).encode() + b"\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("status", "extra", "expected_line"),
    [
        (405, {"allow": "MESSAGE"}, "Allow: MESSAGE"),
        (500, {"retry_after": 5}, "Retry-After: 5"),
        (400, {"warning": 'bad "To"'}, 'Warning: 399 t "bad \\"To\\""'),
    ],
)
def test_response_extras(status: int, extra: dict, expected_line: str) -> None:
    lines = _lines(build_response(parse_request(datagram(*BASE_HEADERS)).headers, status, server="t", **extra))
    assert lines[0].startswith(f"SIP/2.0 {status} ") and expected_line in lines


def test_response_keeps_an_existing_to_tag_and_100_gets_none() -> None:
    tagged = parse_request(datagram(*replaced("To", "To: <sip:bob@example.org>;tag=abc")))
    assert "To: <sip:bob@example.org>;tag=abc" in _lines(build_response(tagged.headers, 202, server="t"))
    plain = parse_request(datagram(*BASE_HEADERS))
    assert "To: <sip:bob@example.org>" in _lines(build_response(plain.headers, 100, server="t"))


def test_malformed_request_is_answered_from_the_readable_headers() -> None:
    headers = tuple(header for header in BASE_HEADERS if not header.startswith(("From", "Call-ID")))
    error = parse_request(datagram(*headers))
    assert isinstance(error, SipParseError)
    lines = _lines(build_response(error.headers, error.status, server="t"))
    assert lines[0] == "SIP/2.0 400 Bad Request" and VIA in lines and "CSeq: 314159 MESSAGE" in lines
    assert not any(line.startswith(("From:", "Call-ID:")) for line in lines)


# --- the MessageAttempt payload -----------------------------------------------------------------------

RECEIVED = datetime(2025, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))


def _attempt(data: bytes, **overrides) -> dict:
    request = parse_request(data)
    assert isinstance(request, SipRequest), request
    options = {
        "environment": "env1",
        "received_at": RECEIVED,
        "source_ip": "192.0.2.10",
        "source_port": 5070,
        "edge_id": "edge-a",
    } | overrides
    return attempt_from_request(request, **options)


def test_attempt_payload_has_exactly_the_contract_keys() -> None:
    attempt = _attempt(datagram(*BASE_HEADERS, body=UTF8_TEXT.encode()))
    identity = b"a84b4c76e66710@pc33.example.com\n314159\nMESSAGE"
    assert record_of(attempt) == {
        "attempt_id": hashlib.sha256(identity).hexdigest()[:32],
        "received_at": datetime(2025, 3, 1, 10, 30, tzinfo=UTC),
        "environment": "env1",
        "direction": "outgoing",
        "call_id": "a84b4c76e66710@pc33.example.com",
        "cseq": 314159,
        "from_user": "alice",
        "from_domain": "example.com",
        "to_user": "bob",
        "to_domain": "example.org",
        "request_uri": "sip:bob@example.org",
        "user_agent": "phone/1.0",
        "content_type": "text/plain",
        "body_chars": 13,
        "body_bytes": 25,
        "source_ip": "192.0.2.10",
        "source_port": 5070,
        "transport": "UDP",
        "edge_id": "edge-a",
        "delivery": None,
        "delivery_code": None,
    }
    assert attempt_key(attempt) == b"env1/alice"


def test_retransmission_is_the_same_attempt_and_a_new_cseq_is_not() -> None:
    first = _attempt(datagram(*BASE_HEADERS))
    again = _attempt(datagram(*replaced("Via", "Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKother")))
    later = _attempt(datagram(*replaced("CSeq", "CSeq: 314160 MESSAGE")))
    assert first.attempt_id == again.attempt_id != later.attempt_id


@pytest.mark.parametrize(
    ("body", "content_type", "chars"),
    [
        (UTF8_TEXT.encode(), None, 13),
        (TEXT_150.encode(), "text/plain", 150),
        (("é" * 150).encode(), "text/plain; charset=utf-8", 150),
        ("café".encode("latin-1"), "text/plain;charset=ISO-8859-1", 4),
        ("café".encode("latin-1"), 'text/plain;charset="iso-8859-1"', 4),
        ("hi".encode("utf-16"), "text/plain;charset=UTF-16", 2),
        (b"ok\xff\xfe!", "text/plain", 5),  # each invalid octet is one U+FFFD
        (b"abc", "text/plain;charset=no-such-charset", 3),
        (b"abc", "text/plain;charset=base64", 3),
        (b"", None, 0),
    ],
)
def test_body_chars_counts_code_points(body: bytes, content_type: str | None, chars: int) -> None:
    assert body_chars(body, content_type) == chars


@pytest.mark.parametrize("overrides", [{"received_at": datetime(2025, 3, 1, 12, 30)}, {"direction": "sideways"}])
def test_attempt_refuses_naive_times_and_unknown_directions(overrides: dict) -> None:
    with pytest.raises(ValueError):
        _attempt(datagram(*BASE_HEADERS), **overrides)
