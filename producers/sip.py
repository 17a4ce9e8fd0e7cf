"""One UDP datagram in, one SIP request (or a parse error) out.

Framing is done here, because `sipmessage.Message.parse` has no Content-Length,
no line folding, no `Name :` headers and raises on non-UTF-8; the pieces are
then parsed with `sipmessage` (URI, Via, CSeq, MediaType) plus the strict
checks RFC 3261 asks for and RFC 4475 tortures: Request-Line shape, version,
mandatory and duplicate headers, CSeq range and method, Call-ID, From/To/Contact
syntax, Max-Forwards, Date, Content-Length (absent: the rest of the datagram;
octets after it are ignored).

`parse_request` never raises: any failure is a `SipParseError` whose `headers`
holds the header fields that were still readable, for building a 400 / 505.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from sipmessage import URI, CSeq, MediaType, Via
from sipmessage.message import COMPACT_FORMS


__all__ = ["HeaderFields", "SipParseError", "SipRequest", "header_values", "is_response", "parse_request"]

HeaderFields = tuple[tuple[str, str], ...]

SIP_VERSION = "SIP/2.0"
CSEQ_MAX = 2**32 - 1  # RFC 3261 8.1.1.5: expressible as a 32-bit unsigned integer
SINGLE_VALUED = ("Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length", "Content-Type", "Date")
_KNOWN = (*COMPACT_FORMS.values(), "CSeq", "Max-Forwards", "User-Agent", "Date", "Route", "Record-Route")
_CANONICAL = {name.lower(): name for name in _KNOWN} | COMPACT_FORMS

_HEADER_LINE = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*:(.*)", re.DOTALL)  # greedy: no backtracking
_METHOD = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_OTHER_VERSION = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
_CALL_ID_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALL_ID = re.compile(rf"{_CALL_ID_WORD}(?:@{_CALL_ID_WORD})?")
_DIGITS = re.compile(r"[0-9]+")


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


@dataclass(frozen=True, slots=True)
class _Frame:
    start_line: str
    fields: HeaderFields
    index: dict[str, list[str]]  # lower-case name -> values, in order
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
    except _Malformed as problem:
        return SipParseError(problem.reason, problem.status, frame.fields if frame else ())
    except Exception:  # noqa: BLE001 - no datagram may ever take the edge down
        return SipParseError("unparseable request", 400, frame.fields if frame else ())


def _frame(datagram: bytes) -> _Frame:
    head, separator, rest = datagram.lstrip(b"\r\n").partition(b"\r\n\r\n")
    if not separator and head.endswith(b"\r\n"):
        head = head[:-2]
    try:
        text, utf8 = head.decode("utf-8"), True
    except UnicodeDecodeError:
        text, utf8 = head.decode("utf-8", "surrogateescape"), False
    start_line, _, block = text.partition("\r\n")
    fields, malformed = _header_fields(block)
    return _Frame(start_line, fields, _index(fields), malformed, bool(separator), utf8, rest)


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


def _index(fields: HeaderFields) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for name, value in fields:
        index.setdefault(name.lower(), []).append(value)
    return index


def _request(frame: _Frame) -> SipRequest:
    method, request_uri = _request_line(frame.start_line)
    _check_frame(frame)
    index = frame.index
    cseq, cseq_method = _cseq(_required(index, "CSeq"), method)
    sender = _parse_address(_required(index, "From"), "From")
    recipient = _parse_address(_required(index, "To"), "To")
    vias, branch = _vias(index.get("via", []))
    _check_optional_headers(index)
    return SipRequest(
        method=method,
        request_uri=request_uri,
        headers=frame.fields,
        call_id=_call_id(_required(index, "Call-ID")),
        cseq=cseq,
        cseq_method=cseq_method,
        **_party("from", sender),
        from_tag=sender.tag,
        **_party("to", recipient),
        to_tag=recipient.tag,
        via=vias,
        branch=branch,
        user_agent=_optional(index, "User-Agent"),
        content_type=_content_type(_optional(index, "Content-Type")),
        body=_body(_optional(index, "Content-Length"), frame.rest),
    )


def _request_line(line: str) -> tuple[str, str]:
    parts = line.split(" ")
    if len(parts) != 3:
        raise _Malformed("malformed Request-Line")
    method, uri, version = parts
    if version != SIP_VERSION:
        if _OTHER_VERSION.fullmatch(version):
            raise _Malformed("SIP version not supported", 505)
        raise _Malformed("malformed Request-Line")
    if not _METHOD.fullmatch(method):
        raise _Malformed("malformed method")
    _check_request_uri(uri)
    return method, uri


def _check_frame(frame: _Frame) -> None:
    if not frame.terminated:
        raise _Malformed("no empty line after the headers")
    if not frame.utf8:
        raise _Malformed("headers are not UTF-8")
    if frame.malformed_line:
        raise _Malformed("malformed header line")
    for name in SINGLE_VALUED:
        if len(frame.index.get(name.lower(), ())) > 1:
            raise _Malformed(f"more than one {name}")


def _required(index: dict[str, list[str]], name: str) -> str:
    values = index.get(name.lower())
    if not values:
        raise _Malformed(f"missing {name}")
    return values[0]


def _optional(index: dict[str, list[str]], name: str) -> str | None:
    values = index.get(name.lower())
    return values[0] if values else None


def _cseq(value: str, method: str) -> tuple[int, str]:
    try:
        cseq = CSeq.parse(value)
    except ValueError:
        raise _Malformed("malformed CSeq") from None
    if cseq.sequence > CSEQ_MAX:
        raise _Malformed("CSeq number out of range")
    if cseq.method != method:
        raise _Malformed("CSeq method does not match the Request-Line")
    return cseq.sequence, cseq.method


def _call_id(value: str) -> str:
    if not _CALL_ID.fullmatch(value):
        raise _Malformed("malformed Call-ID")
    return value


def _party(role: str, address: _Address) -> dict[str, str]:
    return {f"{role}_user": address.user, f"{role}_domain": address.host}


def _vias(values: list[str]) -> tuple[tuple[str, ...], str | None]:
    if not values:
        raise _Malformed("missing Via")
    elements = tuple(element for value in values for element in _split_commas(value))
    try:
        top = Via.parse(elements[0])
        for element in elements[1:]:
            Via.parse(element)
    except ValueError:
        raise _Malformed("malformed Via") from None
    branch = next((v for k, v in top.parameters.items() if k.lower() == "branch"), None)
    return elements, branch


def _check_optional_headers(index: dict[str, list[str]]) -> None:
    for value in index.get("contact", ()):
        if value != "*":
            for element in _split_commas(value):
                _parse_address(element, "Contact")
    for value in index.get("max-forwards", ()):
        digits = value.lstrip("0")
        if not _DIGITS.fullmatch(value) or len(digits) > 3 or int(digits or "0") > 255:
            raise _Malformed("Max-Forwards out of range")
    for value in index.get("date", ()):
        if not _RFC1123_DATE.fullmatch(_collapse(value)):
            raise _Malformed("malformed Date")


@lru_cache(maxsize=256)
def _content_type(value: str | None) -> str | None:
    if value is not None:
        try:
            MediaType.parse(value)
        except ValueError:
            raise _Malformed("malformed Content-Type") from None
    return value


def _body(content_length: str | None, rest: bytes) -> bytes:
    if content_length is None:
        return rest  # RFC 3261 18.3: optional over UDP, the body is the rest of the datagram
    if not _DIGITS.fullmatch(content_length):
        raise _Malformed("malformed Content-Length")
    significant = content_length.lstrip("0") or "0"
    if len(significant) > 9 or int(significant) > len(rest):
        raise _Malformed("Content-Length larger than the body")
    return rest[: int(significant)]


# --- grammar pieces sipmessage does not cover (name-addr, absolute URIs, lists) ---


class _Malformed(Exception):
    """Internal: raised by the checks, turned into a SipParseError at the boundary."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


@dataclass(frozen=True, slots=True)
class _Address:
    user: str  # unescaped; "" when the URI has none (or is not sip:, sips:, tel:)
    host: str  # lower case; "" for tel: and other schemes
    tag: str | None


_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_QUOTED = r'"(?:[\t !#-\[\]-~\x80-\U0010ffff]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"'
_PARAM = rf" ?; ?({_TOKEN})(?: ?= ?({_TOKEN}|\[[0-9A-Fa-f:.]+\]|{_QUOTED}))?"
_NAME_ADDR = re.compile(rf"(?:(?:{_QUOTED}|{_TOKEN}(?: {_TOKEN})*) ?)?<(?P<uri>[^<>\s\"]+)>(?P<params>(?:{_PARAM})*) ?")
_ADDR_SPEC = re.compile(rf"(?P<uri>[^<>\s\";,?]+)(?P<params>(?:{_PARAM})*) ?")
_PARAM_PAIR = re.compile(_PARAM)
_URIC = r"(?:[A-Za-z0-9\-_.!~*'();/?:@&=+$,]|%[0-9A-Fa-f]{2})"
_ABSOLUTE_URI = re.compile(rf"[A-Za-z][A-Za-z0-9+\-.]*:{_URIC}+")
_HNAME_VALUE = r"[A-Za-z0-9\-_.!~*'()\[\]/?:+$%]"
_URI_HEADERS = re.compile(rf"{_HNAME_VALUE}+={_HNAME_VALUE}*(?:&{_HNAME_VALUE}+={_HNAME_VALUE}*)*")
_RFC1123_DATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)
_LWS = re.compile(r"[ \t]+")
_TEL_SUBSCRIBER = re.compile(r"[0-9A-Fa-f*#+\-.()]{1,64}(?:;|$)")


def _collapse(value: str) -> str:
    return _LWS.sub(" ", value).strip()


def _split_commas(value: str) -> list[str]:
    """Split a header list on the commas outside quotes and <>; an empty item is an error."""
    items = value.split(",") if '"' not in value and "<" not in value else _split_outside(value)
    items = [item.strip(" \t") for item in items]
    if not all(items):
        raise _Malformed("empty element in a header list")
    return items


def _split_outside(value: str) -> list[str]:
    items, start, quoted, angled, escaped = [], 0, False, False, False
    for index, char in enumerate(value):
        if quoted:
            escaped, quoted = (not escaped and char == "\\"), (escaped or char != '"')
        elif char == '"':
            quoted = True
        elif char in "<>":
            angled = char == "<"
        elif char == "," and not angled:
            items.append(value[start:index])
            start = index + 1
    items.append(value[start:])
    return items


def _parse_address(value: str, header: str) -> _Address:
    text = _collapse(value)
    match = _NAME_ADDR.fullmatch(text)
    in_brackets = match is not None
    match = match or _ADDR_SPEC.fullmatch(text)
    if match is None:
        raise _Malformed(f"malformed {header}")
    user, host = _uri_user_host(match["uri"], headers_allowed=in_brackets, where=f"URI in {header}")
    params = {name.lower(): val for name, val in _PARAM_PAIR.findall(match["params"])}
    return _Address(user, host, params.get("tag") or None)


def _check_request_uri(uri: str) -> None:
    _uri_user_host(uri, headers_allowed=False, where="Request-URI")


@lru_cache(maxsize=8192)  # URIs repeat (the same accounts send again and again); a miss costs ~10 us
def _uri_user_host(uri: str, *, headers_allowed: bool, where: str) -> tuple[str, str]:
    scheme, colon, rest = uri.partition(":")
    scheme = scheme.lower()
    if scheme not in ("sip", "sips", "tel"):
        if not _ABSOLUTE_URI.fullmatch(uri):
            raise _Malformed(f"malformed {where}")
        return "", ""
    if scheme == "tel" and not _TEL_SUBSCRIBER.match(rest):
        raise _Malformed(f"malformed {where}")  # also keeps sipmessage's O(n^2) tel: pattern short
    if headers_allowed and scheme != "tel":
        rest = _without_uri_headers(rest, where)
    try:
        parsed = URI.parse(f"{scheme}{colon}{rest}")
    except ValueError:
        raise _Malformed(f"malformed {where}") from None
    return parsed.user or "", parsed.host.lower()


def _without_uri_headers(rest: str, where: str) -> str:
    """Strip `?h=v&...` (allowed in name-addr only); '?' may also occur in the user part."""
    start = rest.find("?", rest.rfind("@") + 1)
    if start < 0:
        return rest
    if not _URI_HEADERS.fullmatch(rest[start + 1 :]):
        raise _Malformed(f"malformed headers of the {where}")
    return rest[:start]
