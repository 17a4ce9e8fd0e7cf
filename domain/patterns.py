"""SQL LIKE matching of service policy patterns.

A dynamically matched service policy carries a pattern: a recipient domain pattern for
messaging policies, a SIP end-point (User-Agent) pattern for voice policies. Both use SQL
LIKE wildcards, as PortaBilling does:

- ``%`` matches any run of characters, including none;
- ``_`` matches exactly one character;
- every other character stands for itself (``.``, ``*``, ``+``, ``(`` ... are literal);
- a comma separated list (``"Cisco%, Sipura%, Grandstream%"``) matches when any item
  matches; whitespace around an item is ignored, empty items are dropped.

Matching is case-insensitive: domain names are case-insensitive (RFC 4343), and
PortaBilling's LIKE matching of User-Agent strings is case-insensitive too, so
``"linksys%"`` matches ``"Linksys/SPA941-5.1.8"``. The whole text must match (LIKE is
anchored at both ends). A pattern that is None or has no items is not dynamic and matches
nothing.

Patterns are compiled once into one regular expression and cached.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

__all__ = ["pattern_items", "compile_pattern", "like", "MATCH_ALL", "MATCH_NONE"]

Matcher = Callable[[str], bool]


def MATCH_ALL(text: str) -> bool:
    """The matcher of ``%``: every text matches."""
    return True


def MATCH_NONE(text: str) -> bool:
    """The matcher of an empty pattern: nothing matches."""
    return False


def pattern_items(pattern: str | None) -> tuple[str, ...]:
    """The items of a comma separated pattern list, stripped, without empty ones."""
    if not pattern:
        return ()
    return tuple(item for item in (part.strip() for part in pattern.split(",")) if item)


def _item_regex(item: str) -> str:
    parts = []
    for char in item:
        if char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return "".join(parts)


@lru_cache(maxsize=65536)
def compile_pattern(pattern: str | None) -> Matcher:
    """A predicate ``text -> bool`` for a LIKE pattern (list); compiled once per pattern."""
    items = pattern_items(pattern)
    if not items:
        return MATCH_NONE
    if any(set(item) == {"%"} for item in items):
        return MATCH_ALL
    regex = re.compile("|".join(f"(?:{_item_regex(item)})" for item in items), re.IGNORECASE | re.DOTALL)
    fullmatch = regex.fullmatch

    def matches(text: str) -> bool:
        return fullmatch(text) is not None

    return matches


def like(pattern: str | None, text: str | None) -> bool:
    """Whether ``text`` matches the LIKE ``pattern`` (list); None text matches nothing."""
    if text is None:
        return False
    return compile_pattern(pattern)(text)
