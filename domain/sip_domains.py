"""The SIP domains of the virtual environments: which environment a request's domain belongs to.

Each environment lists the domains its SIP edge serves (config ``sip_domains``, carried by
SipSettingsSet). A domain is served by at most one environment: two environments serving
one domain would let the same account name charge either tenant, so the config fold refuses
a SipSettingsSet that lists a domain another environment serves (``domain_taken``), and
``config apply`` refuses such a file before appending anything.

A domain is a host as it appears in a SIP URI, without port: a host name (``im.example.com``)
or an IPv4 address, in lower case (host names compare case-insensitively, RFC 3261 19.1.4;
the config file lower-cases what it reads), or an IPv6 reference (``[2001:db8::1]``).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Mapping

__all__ = ["MAX_DOMAINS", "check_domains", "domain_of", "owners", "taken"]

MAX_DOMAINS = 1_000
"""Domains one environment may list (each is kept in every edge's map)."""
_HOSTNAME = re.compile(r"(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")


def domain_of(host: str) -> str:
    """The domain a request's host names: lower case, without a trailing dot."""
    host = host.lower()
    return host[:-1] if host.endswith(".") and not host.endswith("..") else host


def check_domains(domains: Iterable[str]) -> None:
    """Raise ValueError unless every domain is a lower-case host (name, IPv4 or [IPv6]),
    listed once, at most :data:`MAX_DOMAINS` of them."""
    listed = list(domains)
    if len(listed) > MAX_DOMAINS:
        raise ValueError(f"sip_domains lists {len(listed):,} domains, over {MAX_DOMAINS:,}")
    seen: set[str] = set()
    for domain in listed:
        if type(domain) is not str or not _is_host(domain):
            raise ValueError(f"sip_domains: {domain!r} is no host name, IPv4 address or [IPv6] reference "
                             "in lower case, without port")
        if domain in seen:
            raise ValueError(f"sip_domains: {domain!r} is listed twice")
        seen.add(domain)


def owners(domains_by_environment: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """Domain -> the environment that serves it (environments in the order given; the fold
    keeps each domain to one environment, so the order only matters for a hand-made map)."""
    found: dict[str, str] = {}
    for environment, domains in domains_by_environment.items():
        for domain in domains:
            found.setdefault(domain, environment)
    return found


def taken(environment: str, domains: Iterable[str], domains_by_environment: Mapping[str, Iterable[str]]) -> str:
    """Why ``environment`` may not serve ``domains`` ("" when it may): the first of them that
    another environment serves."""
    wanted = set(domains)
    for other, served in domains_by_environment.items():
        if other == environment:
            continue
        for domain in served:
            if domain in wanted:
                return f"the SIP domain {domain!r} is served by environment {other!r} already"
    return ""


def _is_host(domain: str) -> bool:
    if domain.startswith("[") and domain.endswith("]"):
        try:
            return ipaddress.ip_address(domain[1:-1]).version == 6
        except ValueError:
            return False
    if domain != domain.lower() or domain.endswith("."):
        return False
    if re.fullmatch(r"[0-9.]+", domain):
        try:
            ipaddress.IPv4Address(domain)
        except ValueError:
            return False
        return True
    return _HOSTNAME.fullmatch(domain) is not None
