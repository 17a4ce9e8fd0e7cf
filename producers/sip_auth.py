"""The SIP edge's digest authentication of MESSAGE and REGISTER (RFC 3261 section 22,
RFC 7616, RFC 8760), with the accounts and settings of the config in force.

    no credentials for the realm       -> 401 (407 as a proxy), SHA-256 and MD5 offered
    nonce not ours (bad HMAC)          -> 401, a fresh nonce
    nonce older than its lifetime      -> 401 stale=true (the client retries, no password prompt)
    unknown user or wrong response     -> 401 (the same answer: accounts are not disclosed)
    nonce count already used           -> 401 stale=true (a replay gets nothing; a client a fresh nonce)
    digest-uri names no Request-URI    -> 400 (itself, or sip:host[:port] as SIPp sends); malformed -> 400
    authenticated, but the request's
    account (From; To of a REGISTER)
    is not the user nor its alias      -> 403
    a source address the guessing
    guard blocked (producers/sip_guard.py) -> 403 before any digest work, for its cool-down

Nonces are stateless: hex of (issue time, 8 random octets, HMAC-SHA-256 of both and the
realm under a secret of the process), so any nonce the edge issued is recognised without
remembering it, and one made up is not. What is remembered is the nonce counts used, only
for nonces whose response verified (an unauthenticated sender cannot make the edge
remember anything): at most ``max_nonces`` entries of fixed size (a 64-count window each),
dropped when the nonce expires. A nonce forgotten to make room (not expired) is answered
stale: the edge never accepts a count it can no longer check.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from imbill.domain.config import DEFAULT_SIP, ConfigState, EnvironmentConfig, SipSettings
from imbill.domain.keys import KEY_SEPARATOR
from imbill.producers.sip import SipRequest, header_values
from imbill.producers.sip_digest import algorithm_of, challenge, parse_digest, response
from imbill.producers.sip_guard import GuessingGuard

__all__ = ["NONCE_LIFETIME", "MAX_NONCES", "DigestAuthenticator", "NonceCounts", "Nonces", "Refusal"]

NONCE_LIFETIME = 300.0
"""Seconds a nonce is good for; clients reuse one (nc 2, 3, ...) until it is stale."""
MAX_NONCES = 32_768
"""Nonces whose counts are remembered: ~300 bytes each, so at most ~10 MB."""
WINDOW = 64
"""Counts below the highest one seen that may still arrive (UDP reorders)."""
_NC = frozenset("0123456789abcdefABCDEF")
_REQUIRED = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Refusal:
    """What the edge answers instead of publishing: a status and its extra header fields."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    warning: str | None = None


class Nonces:
    """Stateless nonces: issue time + random + HMAC, checked without being remembered."""

    def __init__(self, secret: bytes | None = None, lifetime: float = NONCE_LIFETIME) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self.lifetime = lifetime

    def issue(self, realm: str, now: float) -> str:
        body = f"{int(now):08x}{secrets.token_hex(8)}"
        return body + self._mac(realm, body)

    def issued_at(self, nonce: str, realm: str) -> int | None:
        """When the edge issued ``nonce`` for ``realm``; None if it never did."""
        if len(nonce) != 56 or not hmac.compare_digest(self._mac(realm, nonce[:24]), nonce[24:]):
            return None
        return int(nonce[:8], 16)

    def _mac(self, realm: str, body: str) -> str:
        return hmac.digest(self._secret, f"{realm}\n{body}".encode("utf-8", "surrogateescape"),
                           "sha256").hex()[:32]


class NonceCounts:
    """The nonce counts used per nonce: bounded (``max_nonces`` entries), expiring."""

    def __init__(self, lifetime: float, max_nonces: int = MAX_NONCES) -> None:
        self._lifetime, self._max = lifetime, max_nonces
        self._entries: OrderedDict[str, list[int]] = OrderedDict()  # nonce -> [issued, highest nc, window]
        self._horizon = -1  # nonces issued up to then may have been forgotten

    def __len__(self) -> int:
        return len(self._entries)

    def use(self, nonce: str, issued: int, nc: int, now: float) -> bool:
        """Record ``nc`` for ``nonce``; False if it was used before (or cannot be told)."""
        self._expire(now)
        entry = self._entries.get(nonce)
        if entry is None:
            if issued <= self._horizon:
                return False
            self._entries[nonce] = [issued, nc, 1]
            self._evict()
            return True
        highest, window = entry[1], entry[2]
        if nc > highest:
            shift = nc - highest
            entry[1], entry[2] = nc, ((window << shift) | 1) & ((1 << WINDOW) - 1) if shift < WINDOW else 1
            return True
        offset = highest - nc
        if offset >= WINDOW or (window >> offset) & 1:
            return False
        entry[2] = window | (1 << offset)
        return True

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries and next(iter(entries.values()))[0] + self._lifetime <= now:
            entries.popitem(last=False)

    def _evict(self) -> None:
        while len(self._entries) > self._max:
            _, (issued, _, _) = self._entries.popitem(last=False)
            self._horizon = max(self._horizon, issued)


class DigestAuthenticator:
    """Checks a request's digest credentials against the config in force (``config()``,
    read at every request: a config apply takes effect without a restart) of the request's
    environment: its realm, algorithms and accounts. One authenticator serves every
    environment of an edge; nonces are bound to their realm (a nonce of one environment is
    no nonce in another), and the guessing guard counts accounts per environment."""

    def __init__(self, config: Callable[[], ConfigState], environment: str, *, secret: bytes | None = None,
                 lifetime: float = NONCE_LIFETIME, max_nonces: int = MAX_NONCES,
                 clock: Callable[[], float] = time.time, guard: GuessingGuard | None = None) -> None:
        """``guard``: the guessing guard (a default one when None)."""
        self._config, self._environment, self._clock = config, environment, clock
        self.guard = guard or GuessingGuard()
        self.digests = 0
        """Digest responses computed (the work a guessing client costs the edge)."""
        self._nonces = Nonces(secret, lifetime)
        self._counts = NonceCounts(lifetime, max_nonces)
        self._realms: dict[str, _Realm] = {}
        """Environment -> what its config in force says, refreshed when the config changes;
        bounded by the environments the edge serves (requests for others are answered 404
        before they get here, see producers/sip_domains.py)."""

    @property
    def remembered(self) -> int:
        return len(self._counts)

    def required(self, environment: str | None = None) -> bool:
        """Whether the environment's config asks for authentication (it does by default);
        ``environment``: the request's (None: the one the authenticator was made for)."""
        return self._realm_of(environment).sip.authentication

    def check(self, request: SipRequest, claimed: str, source: str = "",
              environment: str | None = None) -> Refusal | None:
        """None when the request is authenticated as the account ``claimed`` (From's user of
        a MESSAGE, To's of a REGISTER) or one whose alias it is, in ``environment`` (None:
        the authenticator's own), with that environment's realm; else what to answer.
        ``source``: the sender's address, which the guessing guard counts failures of."""
        realm = self._realm_of(environment)
        if not realm.sip.authentication:
            return None
        blocked = self.guard.blocked(source, self._clock())
        if blocked:
            return Refusal(403, warning=f"too many failed authentications from {source}: refused for "
                                        f"{math.ceil(blocked)} s more")
        offered = [params for value in header_values(request.headers, realm.credentials_header)
                   if (params := parse_digest(value)) is not None and params.get("realm") == realm.realm]
        if not offered:
            return self._challenge(realm, stale=False)
        return self._verify(request, offered[0], claimed, source, realm)

    def _realm_of(self, environment: str | None) -> _Realm:
        name = self._environment if environment is None else environment
        state = self._config()
        found = self._realms.get(name)
        if found is None or found.state is not state:
            found = self._realms[name] = _Realm.of(state, name)
        return found

    def _verify(self, request: SipRequest, params: dict[str, str], claimed: str, source: str,
                realm: _Realm) -> Refusal | None:
        missing = [name for name in _REQUIRED if name not in params]
        if missing or params["qop"].lower() != "auth" or not _valid_nc(params["nc"]):
            return Refusal(400, warning=f"malformed credentials ({', '.join(missing) or 'qop or nc'})")
        if not _same_target(params["uri"], request.request_uri):
            return Refusal(400, warning="the digest uri is not the Request-URI")
        algorithm = algorithm_of(params)
        issued = self._nonces.issued_at(params["nonce"], realm.realm)
        if algorithm not in realm.sip.algorithms or issued is None:
            return self._challenge(realm, stale=False)
        now = self._clock()
        if issued + self._nonces.lifetime <= now:
            return self._challenge(realm, stale=True)
        account = realm.env.accounts.get(params["username"]) if realm.env is not None else None
        ha1 = account.ha1(algorithm, realm.realm) if account is not None else None
        self.digests += 1
        expected = response(algorithm, ha1 or "", nonce=params["nonce"], nc=params["nc"], cnonce=params["cnonce"],
                            qop=params["qop"], method=request.method, uri=params["uri"])
        if account is None or ha1 is None or not hmac.compare_digest(expected, params["response"].lower()):
            log.debug("digest credentials refused for user %r (%s)", params["username"], request.method)
            self.guard.failed(source, realm.account_key(account.account_id) if account is not None else None, now)
            return self._challenge(realm, stale=False)
        if not self._counts.use(params["nonce"], issued, int(params["nc"], 16), now):
            return self._challenge(realm, stale=True)
        if claimed != account.account_id and claimed not in account.aliases:
            return Refusal(403, warning=f"authenticated as {account.account_id}, not as {claimed}")
        return None

    def _challenge(self, realm: _Realm, *, stale: bool) -> Refusal:
        name = "Proxy-Authenticate" if realm.sip.proxy else "WWW-Authenticate"
        nonce = self._nonces.issue(realm.realm, self._clock())
        return Refusal(407 if realm.sip.proxy else 401,
                       tuple((name, challenge(realm.realm, nonce, algorithm, stale=stale))
                             for algorithm in realm.sip.algorithms))


@dataclass(frozen=True, slots=True)
class _Realm:
    """What one environment's config in force says to authentication: its SIP settings,
    its digest realm and its accounts (``env``; None when it has no config)."""

    state: ConfigState
    name: str
    env: EnvironmentConfig | None
    sip: SipSettings
    realm: str

    @classmethod
    def of(cls, state: ConfigState, name: str) -> _Realm:
        env = state.environment(name)
        sip = env.sip if env is not None else DEFAULT_SIP
        return cls(state, name, env, sip, sip.realm_of(name))

    @property
    def credentials_header(self) -> str:
        return "Proxy-Authorization" if self.sip.proxy else "Authorization"

    def account_key(self, account_id: str) -> str:
        """The guard's name for an account: accounts of two environments never share a count."""
        return f"{self.name}{KEY_SEPARATOR}{account_id}"


def _same_target(uri: str, request_uri: str) -> bool:
    """The digest uri names the Request-URI: itself, or without its user part (SIPp's
    `[authentication]` sends sip:host:port)."""
    if uri == request_uri:
        return True
    scheme, _, rest = request_uri.partition(":")
    return "@" in rest and uri == f"{scheme}:{rest.split('@', 1)[1]}"


def _valid_nc(nc: str) -> bool:
    return len(nc) == 8 and _NC.issuperset(nc) and int(nc, 16) > 0
