"""SIP digest authentication, both sides (RFC 3261 section 22, RFC 7616, RFC 8760).

The header grammar (``Digest`` + comma separated auth-params, values tokens or quoted
strings), the challenge a server sends and the response both compute:

    HA2      = H(method ":" digest-uri)
    response = H(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" HA2)     (qop=auth)

with H = MD5 or SHA-256 and HA1 kept per account by the config (:mod:`imbill.domain.digest`).
Only ``qop=auth`` is spoken: it is what binds a response to a nonce count, which is what
makes a replay detectable.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from imbill.domain.digest import ALGORITHMS, digest, ha1

__all__ = ["MAX_CREDENTIALS", "Credentials", "algorithm_of", "authorization", "challenge", "parse_digest",
           "response"]

MAX_CREDENTIALS = 4096
"""Longer Authorization values are not parsed (a real one is ~300 octets)."""

_PARAM = r'[ \t]*[A-Za-z0-9\-._!%*+`\'~]+[ \t]*=[ \t]*(?:"[^"\\]*(?:\\.[^"\\]*)*"|[^\s,"]+)[ \t]*'
_PARAMS = re.compile(rf"{_PARAM}(?:,{_PARAM})*,?")
"""auth-param *("," auth-param): the whole list, checked at once before it is read."""
_PAIR = re.compile(r'[ \t]*([A-Za-z0-9\-._!%*+`\'~]+)[ \t]*=[ \t]*("[^"\\]*(?:\\.[^"\\]*)*"|[^\s,"]+)[ \t]*,?')
_QUOTED_PAIR = re.compile(r"\\(.)")
_ALGORITHMS = {name.lower(): name for name in ALGORITHMS}


def parse_digest(value: str) -> dict[str, str] | None:
    """The auth-params of a ``Digest`` credentials or challenge value (names lower-cased,
    values unquoted); None for another scheme or a value that breaks the grammar. The list
    is checked whole by one expression, then its pairs read by another (every request the
    edge authenticates passes here: two passes in C, not one per parameter in Python)."""
    if len(value) > MAX_CREDENTIALS:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest" or not _PARAMS.fullmatch(rest):
        return None
    params: dict[str, str] = {}
    for name, raw in _PAIR.findall(rest):
        if raw[0] == '"':
            raw = raw[1:-1]
            if "\\" in raw:
                raw = _QUOTED_PAIR.sub(r"\1", raw)
        params.setdefault(name.lower(), raw)
    return params


def algorithm_of(params: Mapping[str, str]) -> str | None:
    """The algorithm a challenge or response names (absent: MD5, RFC 7616 3.3); None if unknown."""
    return _ALGORITHMS.get(params.get("algorithm", "MD5").lower())


def response(algorithm: str, ha1_hex: str, *, nonce: str, nc: str, cnonce: str, qop: str, method: str,
             uri: str) -> str:
    ha2 = digest(algorithm, f"{method}:{uri}")
    return digest(algorithm, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def challenge(realm: str, nonce: str, algorithm: str, *, stale: bool = False) -> str:
    """A ``WWW-Authenticate`` / ``Proxy-Authenticate`` value offering one algorithm."""
    stale_param = ", stale=true" if stale else ""
    return f'Digest realm="{realm}", nonce="{nonce}", algorithm={algorithm}, qop="auth"{stale_param}'


@dataclass(frozen=True)
class Credentials:
    """What a client answers challenges with: the password, or the HA1s the config keeps
    (``ha1s``: (algorithm, realm) -> HA1 hex), which is enough to compute a response."""

    username: str
    password: str | None = None
    ha1s: Mapping[tuple[str, str], str] | None = None
    algorithm: str | None = None
    """Answer only challenges of this algorithm (None: the server's preferred one)."""

    def ha1(self, algorithm: str, realm: str) -> str | None:
        if self.password is not None:
            return ha1(algorithm, self.username, realm, self.password)
        return (self.ha1s or {}).get((algorithm, realm))

    def __repr__(self) -> str:  # never print a password or an HA1
        return f"Credentials(username={self.username!r})"


def authorization(challenges: Iterable[str], credentials: Credentials, *, method: str, uri: str,
                  nc: int = 1, cnonce: str | None = None) -> str | None:
    """The Authorization value answering the first challenge (in the server's order of
    preference) whose algorithm and realm the credentials can answer; None if none."""
    for value in challenges:
        params = parse_digest(value)
        algorithm = algorithm_of(params or {})
        if params is None or algorithm is None or "nonce" not in params:
            continue
        if credentials.algorithm is not None and algorithm != credentials.algorithm:
            continue
        realm = params.get("realm", "")
        secret = credentials.ha1(algorithm, realm)
        if secret is None:
            continue
        count, cnonce = f"{nc:08x}", cnonce or secrets.token_hex(8)
        answer = response(algorithm, secret, nonce=params["nonce"], nc=count, cnonce=cnonce, qop="auth",
                          method=method, uri=uri)
        return (f'Digest username="{credentials.username}", realm="{realm}", nonce="{params["nonce"]}", '
                f'uri="{uri}", response="{answer}", algorithm={algorithm}, cnonce="{cnonce}", qop=auth, '
                f"nc={count}")
    return None
