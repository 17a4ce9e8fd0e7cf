"""What SIP digest authentication (RFC 3261 section 22, RFC 7616, RFC 8760) keeps of a
service password: HA1 = H(username ":" realm ":" password), per realm and algorithm, as SIP
registrars store it. The password itself is never kept: HA1 is all a digest response needs.

Both algorithms of RFC 8760 that SIP clients speak are kept: SHA-256 (offered first) and
MD5 (what most deployed clients, SIPp included, still answer with).
"""

from __future__ import annotations

import hashlib

__all__ = ["ALGORITHMS", "HASHES", "default_realm", "ha1", "digest"]

ALGORITHMS = ("SHA-256", "MD5")
"""In the order a challenge offers them (RFC 8760 section 2.4: the preferred one first)."""

HASHES = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}


def digest(algorithm: str, text: str) -> str:
    """H(text) of RFC 7616: the lower-case hex digest of the UTF-8 octets."""
    return HASHES[algorithm](text.encode("utf-8", "surrogateescape")).hexdigest()


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """HA1 of RFC 7616 section 3.4.2 (the non "-sess" algorithms)."""
    return digest(algorithm, f"{username}:{realm}:{password}")


def default_realm(environment: str) -> str:
    """The realm of an environment whose config names none: the environment's name."""
    return environment
