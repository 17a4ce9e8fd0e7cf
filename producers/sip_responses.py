"""The responses the SIP edge sends (RFC 3261 8.2.6.2).

A response copies every Via (in order), From, To, Call-ID and CSeq of the
request, adds a To tag when the request had none (all statuses but 100), and
carries `Content-Length: 0` and a Server header. It is built from header fields,
so a request that failed to parse can still get its 400 / 505 when its Via and
CSeq were readable; without them there is nothing a client could match the
response to, and `build_response` returns None (the edge drops and counts it).

The To tag is derived from the request (Call-ID, From, CSeq, top Via), so a
stateless answer to a retransmission carries the same tag as the first one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import NamedTuple

from imbill.producers.sip import HeaderFields

__all__ = ["ALLOW", "REASON_PHRASES", "build_response", "can_answer", "to_tag_for"]

ALLOW = "MESSAGE"
REASON_PHRASES = {
    100: "Trying",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    483: "Too Many Hops",
    500: "Server Internal Error",
    503: "Service Unavailable",
    505: "Version Not Supported",
    513: "Message Too Large",
}
WARNING_CODE = 399  # RFC 3261 20.43: miscellaneous warning, text for humans

_DIALOG_HEADERS = ("From", "To", "Call-ID", "CSeq")  # names as parse_request canonicalises them
_DIALOG_HEADER_SET = frozenset(_DIALOG_HEADERS)
_TAG_PARAM = re.compile(r";[ \t]*tag[ \t]*=", re.IGNORECASE)


class _Copied(NamedTuple):
    """The request headers a response repeats: every Via, and the first of the others."""

    via: tuple[str, ...]
    first: dict[str, str]  # "From", "To", "Call-ID", "CSeq" -> value


def can_answer(headers: HeaderFields) -> bool:
    """A client matches a response to its transaction by the top Via and the CSeq."""
    return _answerable(_copied(headers))


def build_response(
    headers: HeaderFields,
    status: int,
    *,
    server: str,
    allow: str | None = None,
    retry_after: int | None = None,
    warning: str | None = None,
    extra: Sequence[tuple[str, str]] = (),
) -> bytes | None:
    """The response datagram for a request's header fields, or None if it cannot be matched;
    ``extra`` header fields (a challenge, Contact bindings) come before Content-Length."""
    copied = _copied(headers)
    if not _answerable(copied):
        return None
    lines = [f"SIP/2.0 {status} {REASON_PHRASES.get(status, 'Unknown')}"]
    lines += ["Via: " + via for via in copied.via]
    lines += _dialog_lines(copied, to_tag=None if status == 100 else _to_tag(copied))
    lines.append("Server: " + server)
    if allow is not None:
        lines.append("Allow: " + allow)
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after}")
    if warning is not None:
        lines.append(f"Warning: {WARNING_CODE} {_token(server)} {_quoted(warning)}")
    lines += [f"{name}: {value}" for name, value in extra]
    lines.append("Content-Length: 0\r\n\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


def to_tag_for(headers: HeaderFields) -> str:
    return _to_tag(_copied(headers))


def _copied(headers: HeaderFields) -> _Copied:
    via: list[str] = []
    first: dict[str, str] = {}
    for name, value in headers:
        if name == "Via":
            via.append(value)
        elif name in _DIALOG_HEADER_SET and name not in first:
            first[name] = value
    return _Copied(tuple(via), first)


def _answerable(copied: _Copied) -> bool:
    return bool(copied.via) and "CSeq" in copied.first


def _to_tag(copied: _Copied) -> str:
    first = copied.first
    identity = f"{first.get('Call-ID', '')}\n{first.get('From', '')}\n{first.get('CSeq', '')}\n{copied.via[0]}"
    digest = hashlib.blake2b(identity.encode("utf-8", "surrogateescape"), digest_size=8)
    return digest.hexdigest()


def _dialog_lines(copied: _Copied, *, to_tag: str | None) -> list[str]:
    first = copied.first
    lines = []
    if "From" in first:
        lines.append("From: " + first["From"])
    if "To" in first:
        to = first["To"]
        lines.append(f"To: {to};tag={to_tag}" if to_tag is not None and not _has_tag(to) else "To: " + to)
    if "Call-ID" in first:
        lines.append("Call-ID: " + first["Call-ID"])
    if "CSeq" in first:
        lines.append("CSeq: " + first["CSeq"])
    return lines


def _has_tag(address: str) -> bool:
    """Look for `;tag=` among the header parameters (after the `>` of a name-addr)."""
    params = address.rpartition(">")[2] if "<" in address else address
    return _TAG_PARAM.search(params) is not None


def _token(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9\-.!%*_+`'~]", "-", text) or "imbill"


def _quoted(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + re.sub(r"[\x00-\x1f\x7f]", " ", escaped) + '"'
