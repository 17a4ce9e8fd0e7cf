"""Which virtual environment a SIP request belongs to: one edge serves several, by domain.

Each environment lists the SIP domains it serves (config ``sip_domains``, README
"Environments by domain"); the domain of a request is the host of

    an outgoing MESSAGE (from a client)            the From: URI      (the sender's domain: who pays)
    an incoming MESSAGE (from a vendor peer)       the Request-URI    (the recipient's domain)
    a REGISTER                                     the Request-URI    (the registrar's domain, RFC 3261 10.3)

and its environment is the one that lists that domain. A domain no environment lists goes
to the **default environment**, when there is one:

- ``IMBILL_EDGE_DEFAULT_ENVIRONMENT`` names it (it then also serves every unlisted domain);
- unset, the edge's own environment (``IMBILL_ENVIRONMENT``) is the default only while its
  config lists no ``sip_domains``: a single environment without domains serves every
  domain, as before environments had domains.

Otherwise the request has no environment: the edge answers 404 and publishes nothing, so
no request is ever billed to a tenant it does not belong to. Accounts are looked up, and
authenticated (with the environment's realm), only within the request's environment: two
environments with an account of the same name never mix.
"""

from __future__ import annotations

from collections.abc import Callable

from imbill.domain.config import ConfigState
from imbill.domain.sip_domains import domain_of, owners
from imbill.producers.sip import SipRequest
from imbill.producers.sip_grammar import Malformed, memo_of_short, parse_address

__all__ = ["EnvironmentsByDomain", "fallback", "request_domain"]


class EnvironmentsByDomain:
    """``of(request, incoming)``: the environment of a request, or None (answer 404).

    ``config()`` is read at every request (a config apply takes effect without a restart);
    the map of domains is rebuilt only when the config state changes."""

    def __init__(self, config: Callable[[], ConfigState], environment: str, *, default: str = "") -> None:
        """``environment``: the edge's own (the default while it lists no domains);
        ``default``: the environment of every unlisted domain ("" : see the module doc)."""
        self._config, self._environment, self._default = config, environment, default
        self._state: ConfigState | None = None
        self._owners: dict[str, str] = {}
        self._fallback: str | None = None

    def of(self, request: SipRequest, incoming: bool = False) -> str | None:
        return self.of_domain(request_domain(request, incoming))

    def of_domain(self, domain: str) -> str | None:
        state = self._config()
        if state is not self._state:
            self._refresh(state)
        return self._owners.get(domain_of(domain), self._fallback)

    def _refresh(self, state: ConfigState) -> None:
        self._state = state
        self._owners = owners({name: env.sip.domains for name, env in state.environments.items()})
        self._fallback = fallback(state, self._environment, self._default)


def fallback(state: ConfigState, environment: str, default: str) -> str | None:
    """The environment of a domain no environment lists (see the module doc)."""
    if default:
        return default
    own = state.environment(environment)
    return environment if own is None or not own.sip.domains else None


def request_domain(request: SipRequest, incoming: bool = False) -> str:
    """The domain that decides a request's environment (see the module doc)."""
    if request.method == "MESSAGE" and not incoming:
        return request.from_domain
    return _uri_host(request.request_uri) or request.to_domain


@memo_of_short(1024)
def _uri_host(uri: str) -> str:
    """The host of a Request-URI ("" when it has none: another scheme than sip/sips)."""
    try:
        return parse_address(uri, "Request-URI").host
    except Malformed:
        return ""
