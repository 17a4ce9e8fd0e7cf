"""The grammar of the header values the edge reads: name-addr / addr-spec, URIs, Via, CSeq, lists.

Every value has a fast path and a full path. The full path is `sipmessage` (URI, Via,
CSeq) plus the pieces it does not cover (name-addr, absolute URIs, lists). The fast path
is one precise regular expression for the common, simple form (`<sip:user@host:port>;tag=x`,
`SIP/2.0/UDP host:port;branch=z9hG4bK...`, `1 MESSAGE`): no whitespace but a single SP
where one is required, no %-escapes, no quotes, no commas, ASCII only. Its language is a
subset of what the full path accepts and it yields the same values, so a value is parsed
by the full path whenever the fast one does not match and the behaviour is the same; the
fast path only skips work (whitespace folding, sipmessage's objects, unescaping).

Any failure raises `Malformed`, which `parse_request` turns into a SipParseError.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

from sipmessage import URI, CSeq, Via
from sipmessage.grammar import HOSTNAME, IPV4ADDRESS

__all__ = [
    "memo_of_short",
    "Address",
    "Malformed",
    "check_date",
    "check_request_uri",
    "parse_address",
    "parse_cseq",
    "parse_vias",
    "split_commas",
]

CSEQ_MAX = 2**32 - 1  # RFC 3261 8.1.1.5: expressible as a 32-bit unsigned integer


class Malformed(Exception):
    """A value breaks the grammar; `reason` and `status` become the SipParseError."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


class Address(NamedTuple):
    user: str  # unescaped; "" when the URI has none (or is not sip:, sips:, tel:)
    host: str  # lower case; "" for tel: and other schemes
    tag: str | None


# --- full-path pieces ----------------------------------------------------------------------------------

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

# --- fast-path pieces: subsets of the above (and of sipmessage's grammar) ---------------------------------

_PLAIN_TOKEN = r"[A-Za-z0-9\-.!*_+`'~]+"  # a token without '%': nothing to unescape
_PLAIN_PARAMS = rf"(?:;{_PLAIN_TOKEN}(?:={_PLAIN_TOKEN})?)*"
_PLAIN_IPV4 = IPV4ADDRESS.replace("\\d", "[0-9]")  # ASCII digits only
_PLAIN_HOST = rf"(?:{HOSTNAME}|{_PLAIN_IPV4})"
_PLAIN_USER = r"[A-Za-z0-9\-_.!~*'()+]+"  # unreserved, no escapes, no ';' '?' '/' '&' '=' '$' ','
_PLAIN_URI_PARAM = r"[A-Za-z0-9\-_.!~*'()]+"
_PLAIN_SIP_URI = re.compile(
    rf"sips?:{_PLAIN_USER}@(?P<host>{_PLAIN_HOST})(?::[0-9]+)?(?:;{_PLAIN_URI_PARAM}(?:={_PLAIN_URI_PARAM})?)*"
)
_PLAIN_NAME_ADDR = re.compile(rf"<(?P<uri>[^<>\s\"]+)>(?P<params>{_PLAIN_PARAMS})")
_PLAIN_PARAM_PAIR = re.compile(rf";({_PLAIN_TOKEN})(?:=({_PLAIN_TOKEN}))?")
_PLAIN_VIA = re.compile(rf"SIP/2\.0/{_PLAIN_TOKEN} {_PLAIN_HOST}(?::[0-9]+)?(?P<params>{_PLAIN_PARAMS})")
_PLAIN_CSEQ = re.compile(rf"(?P<sequence>[0-9]{{1,10}}) (?P<method>{_PLAIN_TOKEN})")


def _collapse(value: str) -> str:
    return _LWS.sub(" ", value).strip()


def split_commas(value: str) -> list[str]:
    """Split a header list on the commas outside quotes and <>; an empty item is an error."""
    items = value.split(",") if '"' not in value and "<" not in value else _split_outside(value)
    items = [item.strip(" \t") for item in items]
    if not all(items):
        raise Malformed("empty element in a header list")
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


# --- CSeq and Via -------------------------------------------------------------------------------------


def parse_cseq(value: str, method: str) -> tuple[int, str]:
    """(sequence number, method) of a CSeq whose method is the Request-Line's."""
    plain = _PLAIN_CSEQ.fullmatch(value)
    if plain is not None:
        sequence, cseq_method = int(plain["sequence"]), plain["method"]
    else:
        try:
            cseq = CSeq.parse(value)
        except ValueError:
            raise Malformed("malformed CSeq") from None
        sequence, cseq_method = cseq.sequence, cseq.method
    if sequence > CSEQ_MAX:
        raise Malformed("CSeq number out of range")
    if cseq_method != method:
        raise Malformed("CSeq method does not match the Request-Line")
    return sequence, cseq_method


def parse_vias(values: Sequence[str]) -> tuple[tuple[str, ...], str | None]:
    """Every via-parm of the Via fields (topmost first) and the branch of the topmost."""
    if not values:
        raise Malformed("missing Via")
    if len(values) == 1 and (plain := _PLAIN_VIA.fullmatch(values[0])) is not None:
        return (values[0],), _branch(plain["params"])
    elements: list[str] = []
    matches: list[re.Match[str] | None] = []
    for value in values:  # all lists are split before any element is parsed
        match = _PLAIN_VIA.fullmatch(value)
        items = [value] if match is not None else split_commas(value)
        elements += items
        matches += [match] if match is not None else [None] * len(items)
    full = [_full_via_branch(element) if match is None else None for element, match in zip(elements, matches)]
    top = matches[0]
    return tuple(elements), full[0] if top is None else _branch(top["params"])


def _branch(plain_params: str) -> str | None:
    """As sipmessage's Parameters: a repeated name keeps its first place and its last value."""
    parameters = dict(_PLAIN_PARAM_PAIR.findall(plain_params))  # "" where a parameter has no value
    for name, value in parameters.items():
        if name.lower() == "branch":
            return value or None
    return None


def _full_via_branch(element: str) -> str | None:
    try:
        via = Via.parse(element)
    except ValueError:
        raise Malformed("malformed Via") from None
    return next((v for k, v in via.parameters.items() if k.lower() == "branch"), None)


# --- addresses and URIs --------------------------------------------------------------------------------


CACHED_TEXT = 256
"""Header values and URIs longer than this are parsed every time, never remembered: the
memos are bounded in bytes (at most entries x this), whatever datagrams arrive."""


def memo_of_short(maxsize: int):
    """``lru_cache(maxsize)`` for calls whose first argument is short text; longer ones
    bypass it, so a flood of unique long headers cannot grow the edge's memory."""
    def decorate(function):
        cached = lru_cache(maxsize=maxsize)(function)

        def call(text: str | None, *args, **kwargs):
            if text is not None and len(text) > CACHED_TEXT:
                return function(text, *args, **kwargs)
            return cached(text, *args, **kwargs)

        call.cache_info, call.cache_clear = cached.cache_info, cached.cache_clear
        call.__doc__, call.__name__ = function.__doc__, function.__name__
        return call
    return decorate


@memo_of_short(4096)  # To (and Contact) values repeat; From values carry a fresh tag
def parse_address(value: str, header: str) -> Address:
    """A name-addr or addr-spec (From, To, Contact): the URI's user and host, and the tag."""
    plain = _PLAIN_NAME_ADDR.fullmatch(value)
    if plain is not None:
        uri, params = plain.group("uri", "params")
        user, host = _uri_user_host(uri, headers_allowed=True, where=f"URI in {header}")
        return Address(user, host, _tag(_PLAIN_PARAM_PAIR.findall(params)) if params else None)
    text = _collapse(value)
    match = _NAME_ADDR.fullmatch(text)
    in_brackets = match is not None
    match = match or _ADDR_SPEC.fullmatch(text)
    if match is None:
        raise Malformed(f"malformed {header}")
    uri, pairs = match["uri"], _PARAM_PAIR.findall(match["params"])
    user, host = _uri_user_host(uri, headers_allowed=in_brackets, where=f"URI in {header}")
    return Address(user, host, _tag(pairs))


def _tag(pairs: list[tuple[str, str]]) -> str | None:
    """The value of the last `tag` parameter (names are case-insensitive); None if empty."""
    params = {name.lower(): val for name, val in pairs}
    return params.get("tag") or None


def check_request_uri(uri: str) -> None:
    _uri_user_host(uri, headers_allowed=False, where="Request-URI")


def check_date(value: str) -> None:
    if not _RFC1123_DATE.fullmatch(_collapse(value)):
        raise Malformed("malformed Date")


@memo_of_short(8192)  # URIs repeat (the same accounts send again and again)
def _uri_user_host(uri: str, *, headers_allowed: bool, where: str) -> tuple[str, str]:
    plain = _PLAIN_SIP_URI.fullmatch(uri)
    if plain is not None:  # sip:user@host[:port][;params]: no escapes, no password, no headers
        return uri[uri.index(":") + 1 : uri.index("@")], plain["host"].lower()
    scheme, colon, rest = uri.partition(":")
    scheme = scheme.lower()
    if scheme not in ("sip", "sips", "tel"):
        if not _ABSOLUTE_URI.fullmatch(uri):
            raise Malformed(f"malformed {where}")
        return "", ""
    if scheme == "tel" and not _TEL_SUBSCRIBER.match(rest):
        raise Malformed(f"malformed {where}")  # also keeps sipmessage's O(n^2) tel: pattern short
    if headers_allowed and scheme != "tel":
        rest = _without_uri_headers(rest, where)
    try:
        parsed = URI.parse(f"{scheme}{colon}{rest}")
    except ValueError:
        raise Malformed(f"malformed {where}") from None
    return parsed.user or "", parsed.host.lower()


def _without_uri_headers(rest: str, where: str) -> str:
    """Strip `?h=v&...` (allowed in name-addr only); '?' may also occur in the user part."""
    start = rest.find("?", rest.rfind("@") + 1)
    if start < 0:
        return rest
    if not _URI_HEADERS.fullmatch(rest[start + 1 :]):
        raise Malformed(f"malformed headers of the {where}")
    return rest[:start]
