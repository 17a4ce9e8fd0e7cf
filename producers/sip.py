"""One UDP datagram in, one SIP request (or a parse error) out.

Framing is done here, because `sipmessage.Message.parse` has no Content-Length,
no line folding, no `Name :` headers and raises on non-UTF-8; the values are then
parsed by `sip_grammar` (URI, Via, CSeq, name-addr: a fast path for the common
simple forms, sipmessage and our own grammar for the rest) plus the strict checks
RFC 3261 asks for and RFC 4475 tortures: Request-Line shape, version, mandatory and
duplicate headers, CSeq range and method, Call-ID, From/To/Contact syntax,
Max-Forwards, Date, Content-Length (absent: the rest of the datagram; octets after
it are ignored).

`parse_request` never raises: any failure is a `SipParseError` whose `headers`
holds the header fields that were still readable, for building a 400 / 505.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Sequence

from sipmessage import MediaType
from sipmessage.message import COMPACT_FORMS

from imbill.producers.sip_grammar import (
    Malformed,
    memo_of_short,
    check_date,
    check_request_uri,
    parse_address,
    parse_cseq,
    parse_vias,
    split_commas,
)

__all__ = ["HeaderFields", "SipParseError", "SipRequest", "header_values", "is_response", "parse_request"]

HeaderFields = tuple[tuple[str, str], ...]
Index = dict[str, Sequence[str]]  # lower-case canonical name -> its values, in order

SIP_VERSION = "SIP/2.0"
SINGLE_VALUED = ("Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length", "Content-Type", "Date")
_SINGLE_VALUED = tuple(name.lower() for name in SINGLE_VALUED)
_KNOWN = (*COMPACT_FORMS.values(), "CSeq", "Max-Forwards", "User-Agent", "Date", "Route", "Record-Route")
_CANONICAL = {name.lower(): name for name in _KNOWN} | COMPACT_FORMS

_HEADER_NAME = r"[A-Za-z0-9\-.!%*_+`'~]+"
_HEADER_LINE = re.compile(rf"({_HEADER_NAME})[ \t]*:(.*)", re.DOTALL)  # greedy: no backtracking
_PLAIN_FIELD = re.compile(rf"^({_HEADER_NAME})[ \t]*:[ \t]*([^\r\n]*)", re.MULTILINE)  # a whole `Name: value` line
_METHOD = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_OTHER_VERSION = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
_CALL_ID_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALL_ID = re.compile(rf"{_CALL_ID_WORD}(?:@{_CALL_ID_WORD})?")
_DIGITS = re.compile(r"[0-9]+")
_LAYOUTS: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...], bool]] = {}  # see _layout


@dataclass(frozen=True, slots=True)
class SipRequest:
    """A well-formed SIP request. `headers` keeps every field (compact names expanded)."""

    method: str
    request_uri: str
    headers: HeaderFields
    call_id: str
    cseq: int
    cseq_method: str
    from_user: str
    from_domain: str
    from_tag: str | None
    to_user: str
    to_domain: str
    to_tag: str | None
    via: tuple[str, ...]  # one via-parm per entry, topmost first
    branch: str | None  # of the topmost Via
    user_agent: str | None
    content_type: str | None
    body: bytes

    def header(self, name: str) -> str | None:
        values = header_values(self.headers, name)
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class SipParseError:
    """Why a datagram is not a usable request; `headers` are the fields still readable."""

    reason: str
    status: int = 400
    headers: HeaderFields = ()
    method: str | None = None  # of a well-formed Request-Line, for the CSeq of a 400 to a request without one


@dataclass(slots=True)
class _Frame:
    start_line: str
    fields: HeaderFields
    index: Index
    malformed_line: bool
    terminated: bool
    utf8: bool
    rest: bytes


def is_response(datagram: bytes) -> bool:
    """A status line starts with the version; no method token may contain '/'."""
    return datagram.lstrip(b"\r\n").startswith(b"SIP/")


def header_values(fields: HeaderFields, name: str) -> tuple[str, ...]:
    wanted = name.lower()
    return tuple(value for field, value in fields if field.lower() == wanted)


def parse_request(datagram: bytes) -> SipRequest | SipParseError:
    frame = None
    try:
        frame = _frame(datagram)
        return _request(frame)
    except Malformed as problem:
        return SipParseError(problem.reason, problem.status, frame.fields if frame else (), _method_of(frame))
    except Exception:  # noqa: BLE001 - no datagram may ever take the edge down
        return SipParseError("unparseable request", 400, frame.fields if frame else ())


def _method_of(frame: _Frame | None) -> str | None:
    parts = frame.start_line.split(" ") if frame is not None else ()
    if len(parts) == 3 and parts[2] == SIP_VERSION and _METHOD.fullmatch(parts[0]):
        return parts[0]
    return None


# --- framing ------------------------------------------------------------------------------------------


def _frame(datagram: bytes) -> _Frame:
    head, separator, rest = datagram.lstrip(b"\r\n").partition(b"\r\n\r\n")
    if not separator and head.endswith(b"\r\n"):
        head = head[:-2]
    try:
        text, utf8 = head.decode("utf-8"), True
    except UnicodeDecodeError:
        text, utf8 = head.decode("utf-8", "surrogateescape"), False
    start_line, _, block = text.partition("\r\n")
    plain = _plain_fields(block) if block else None
    if plain is not None:
        return _Frame(start_line, *plain, False, bool(separator), utf8, rest)
    fields, malformed = _header_fields(block)
    return _Frame(start_line, fields, _index(fields), malformed, bool(separator), utf8, rest)


def _plain_fields(block: str) -> tuple[HeaderFields, Index] | None:
    """The fields and index of a block of `Name: value` lines, as _header_fields reads them;
    None when a line is folded, malformed or holds a bare CR or LF (then _header_fields decides)."""
    pairs = _PLAIN_FIELD.findall(block)  # at most one per line, from its start to its end
    breaks = block.count("\r\n")
    if len(pairs) != breaks + 1 or block.count("\r") != breaks or block.count("\n") != breaks:
        return None
    names, values = zip(*pairs)
    if " \r\n" in block or "\t\r\n" in block or block[-1] in " \t":  # rare: trailing blanks
        values = tuple(value.rstrip(" \t") for value in values)
    canonical, lower, unique = _LAYOUTS.get(names) or _layout(names)
    fields = tuple(zip(canonical, values))
    if unique:
        return fields, dict(zip(lower, zip(values)))  # name -> (value,)
    index: dict[str, list[str]] = {}
    for name, value in zip(lower, values):
        index.setdefault(name, []).append(value)
    return fields, index


def _layout(names: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """The canonical and lower-case names of a header block's names (clients repeat their layout)."""
    canonical = tuple(_CANONICAL.get(name.lower(), name) for name in names)
    lower = tuple(name.lower() for name in canonical)
    layout = (canonical, lower, len(set(lower)) == len(lower))
    if len(_LAYOUTS) >= 512:  # a flood of odd layouts must not grow this
        _LAYOUTS.clear()
    _LAYOUTS[names] = layout
    return layout


def _header_fields(block: str) -> tuple[HeaderFields, bool]:
    lines: list[str] = []
    malformed = False
    for line in block.split("\r\n") if block else ():
        if line[:1] in (" ", "\t"):
            malformed |= not lines
            if lines:
                lines[-1] += " " + line.strip(" \t")
        else:
            lines.append(line)
    fields = []
    for line in lines:
        match = _HEADER_LINE.fullmatch(line)
        if match is None or "\r" in line or "\n" in line:
            malformed = True
            continue
        name = match[1]
        fields.append((_CANONICAL.get(name.lower(), name), match[2].strip(" \t")))
    return tuple(fields), malformed


def _index(fields: HeaderFields) -> Index:
    index: dict[str, list[str]] = {}
    for name, value in fields:
        index.setdefault(name.lower(), []).append(value)
    return index


# --- the request --------------------------------------------------------------------------------------


def _request(frame: _Frame) -> SipRequest:
    method, request_uri = _request_line(frame.start_line)
    _check_frame(frame)
    index = frame.index
    cseq, cseq_method = parse_cseq(_required(index, "cseq", "CSeq"), method)
    sender = parse_address(_required(index, "from", "From"), "From")
    recipient = parse_address(_required(index, "to", "To"), "To")
    vias, branch = parse_vias(index.get("via", ()))
    _check_optional_headers(index)
    return SipRequest(
        method,
        request_uri,
        frame.fields,
        _call_id(_required(index, "call-id", "Call-ID")),
        cseq,
        cseq_method,
        sender.user,
        sender.host,
        sender.tag,
        recipient.user,
        recipient.host,
        recipient.tag,
        vias,
        branch,
        _optional(index, "user-agent"),
        _content_type(_optional(index, "content-type")),
        _body(_optional(index, "content-length"), frame.rest),
    )


def _request_line(line: str) -> tuple[str, str]:
    parts = line.split(" ")
    if len(parts) != 3:
        raise Malformed("malformed Request-Line")
    method, uri, version = parts
    if version != SIP_VERSION:
        if _OTHER_VERSION.fullmatch(version):
            raise Malformed("SIP version not supported", 505)
        raise Malformed("malformed Request-Line")
    if not _METHOD.fullmatch(method):
        raise Malformed("malformed method")
    check_request_uri(uri)
    return method, uri


def _check_frame(frame: _Frame) -> None:
    if not frame.terminated:
        raise Malformed("no empty line after the headers")
    if not frame.utf8:
        raise Malformed("headers are not UTF-8")
    if frame.malformed_line:
        raise Malformed("malformed header line")
    if len(frame.index) == len(frame.fields):
        return  # no name occurs twice
    for name, lower in zip(SINGLE_VALUED, _SINGLE_VALUED):
        if len(frame.index.get(lower, ())) > 1:
            raise Malformed(f"more than one {name}")


def _required(index: Index, lower: str, name: str) -> str:
    values = index.get(lower)
    if not values:
        raise Malformed(f"missing {name}")
    return values[0]


def _optional(index: Index, lower: str) -> str | None:
    values = index.get(lower)
    return values[0] if values else None


def _call_id(value: str) -> str:
    if not _CALL_ID.fullmatch(value):
        raise Malformed("malformed Call-ID")
    return value


def _check_optional_headers(index: Index) -> None:
    for value in index.get("contact", ()):
        if value != "*":
            for element in split_commas(value):
                parse_address(element, "Contact")
    for value in index.get("max-forwards", ()):
        digits = value.lstrip("0")
        if not _DIGITS.fullmatch(value) or len(digits) > 3 or int(digits or "0") > 255:
            raise Malformed("Max-Forwards out of range")
    for value in index.get("date", ()):
        check_date(value)


@memo_of_short(256)
def _content_type(value: str | None) -> str | None:
    if value is not None:
        try:
            MediaType.parse(value)
        except ValueError:
            raise Malformed("malformed Content-Type") from None
    return value


def _body(content_length: str | None, rest: bytes) -> bytes:
    if content_length is None:
        return rest  # RFC 3261 18.3: optional over UDP, the body is the rest of the datagram
    if not _DIGITS.fullmatch(content_length):
        raise Malformed("malformed Content-Length")
    significant = content_length.lstrip("0") or "0"
    if len(significant) > 9 or int(significant) > len(rest):
        raise Malformed("Content-Length larger than the body")
    return rest[: int(significant)]
