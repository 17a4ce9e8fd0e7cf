"""The SIP edge's guard against password guessing: failed digest responses are counted per
source address and per account, and a source past its threshold is answered 403 for a
cool-down, before any digest work is done for it.

    a source fails ``source_failures`` times within ``window`` s -> blocked ``cooldown`` s
    an account fails ``account_failures`` times within ``window``
    s, from any sources (guessing spread over addresses)          -> the account is watched for
                                                                     ``cooldown`` s: a source that
                                                                     fails on it once is blocked
    a client that authenticates                                   -> never counted, never blocked

A failure is a digest response that was checked and is wrong (or names an unknown user or
an account without a password): a request without credentials, a stale nonce or a nonce the
edge did not issue is no guess and is not counted. Per-account counting never blocks the
account itself (that would let anyone lock a customer out by guessing wrong): it only makes
the sources that fail on a watched account blocked at their first failure, so a client that
knows the password goes on being served from any address that has not failed.

Memory is bounded whatever the datagrams: each table holds at most ``max_entries`` entries
(the least recently failed dropped first), keyed by an address (at most 45 characters) or an
account id of the config. A flood from spoofed addresses can push an older suspect or block
out of the tables (it then gets its threshold again, never more), and cannot grow them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["GuardLimits", "GuessingGuard", "MAX_ENTRIES"]

MAX_ENTRIES = 65_536
"""Entries per table (suspect sources, blocked sources, accounts): about 200 bytes each."""
WARNING_INTERVAL = 10.0
"""At most one warning per this many seconds (a flood must not fill the log); the next one
says how many were left out."""
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GuardLimits:
    """The guard's thresholds (``imbill/settings.py`` reads them); ``source_failures`` 0 turns it off."""

    source_failures: int = 10
    """Failed responses from one address within ``window`` that block it."""
    account_failures: int = 30
    """Failed responses on one account within ``window``, from any addresses, that make it watched."""
    window: float = 60.0
    """Seconds over which failures are counted."""
    cooldown: float = 300.0
    """Seconds a blocked address is answered 403 (and an account stays watched)."""

    def __post_init__(self) -> None:
        if not 0 <= self.source_failures <= 1_000_000:
            raise ValueError(f"edge guard failures: must be 0 (off) to 1000000, not {self.source_failures}")
        if not 1 <= self.account_failures <= 1_000_000:
            raise ValueError(f"edge guard account failures: must be 1 to 1000000, not {self.account_failures}")
        if not 1 <= self.window <= 86_400:
            raise ValueError(f"edge guard window: must be 1 to 86400 seconds, not {self.window:g}")
        if not 1 <= self.cooldown <= 86_400:
            raise ValueError(f"edge guard cooldown: must be 1 to 86400 seconds, not {self.cooldown:g}")

    @property
    def on(self) -> bool:
        return self.source_failures > 0


class _Counts:
    """key -> [window start, failures], at most ``max_entries``, least recently failed out first."""

    def __init__(self, window: float, max_entries: int) -> None:
        self._window, self._max = window, max_entries
        self._entries: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: str, now: float) -> int:
        """Count a failure of ``key``; its failures in the current window."""
        entry = self._entries.get(key)
        if entry is None or now - entry[0] >= self._window:
            entry = self._entries[key] = [now, 0]
        entry[1] += 1
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return int(entry[1])

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)


class _Until:
    """key -> until when, at most ``max_entries`` (the oldest set dropped first), expiring."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def set(self, key: str, until: float) -> None:
        self._entries[key] = until
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def remaining(self, key: str, now: float) -> float:
        """Seconds ``key`` has left (0: not set, or over and forgotten)."""
        until = self._entries.get(key)
        if until is None:
            return 0.0
        if until <= now:
            del self._entries[key]
            return 0.0
        return until - now


class GuessingGuard:
    """``blocked(source, now)`` before any digest work; ``failed(source, account, now)`` after
    a wrong response (``account``: None when the user is no account of the config)."""

    def __init__(self, limits: GuardLimits = GuardLimits(), max_entries: int = MAX_ENTRIES) -> None:
        self.limits = limits
        self._suspects = _Counts(limits.window, max_entries)
        self._accounts = _Counts(limits.window, max_entries)
        self._blocked = _Until(max_entries)
        self._watched = _Until(max_entries)
        self._warned_at, self._unsaid = float("-inf"), 0

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        """Entries held: suspect sources, blocked sources, counted accounts, watched accounts."""
        return len(self._suspects), len(self._blocked), len(self._accounts), len(self._watched)

    def blocked(self, source: str, now: float) -> float:
        """Seconds the source is still refused (0: not blocked)."""
        if not self.limits.on:
            return 0.0
        return self._blocked.remaining(source, now)

    def failed(self, source: str, account: str | None, now: float) -> None:
        """Count a wrong response from ``source`` for ``account``; block the source past its
        threshold, or at once when the account is watched."""
        limits = self.limits
        if not limits.on:
            return
        watched = account is not None and self._account_failed(account, now)
        failures = self._suspects.add(source, now)
        if failures >= limits.source_failures or watched:
            self._suspects.forget(source)
            self._blocked.set(source, now + limits.cooldown)
            self._warn(now, f"{source} blocked for {limits.cooldown:g} s after {failures} failed authentications"
                       + (f" (account {account} is being guessed from several addresses)" if watched else ""))

    def _account_failed(self, account: str, now: float) -> bool:
        if self._watched.remaining(account, now):
            return True
        if self._accounts.add(account, now) < self.limits.account_failures:
            return False
        self._accounts.forget(account)
        self._watched.set(account, now + self.limits.cooldown)
        self._warn(now, f"account {account} failed {self.limits.account_failures} authentications within "
                        f"{self.limits.window:g} s: every address that fails on it now is blocked at once")
        return True

    def _warn(self, now: float, what: str) -> None:
        if now - self._warned_at < WARNING_INTERVAL:
            self._unsaid += 1
            log.debug("SIP edge: %s", what)
            return
        unsaid = f" ({self._unsaid} more blocks and watches since the last warning)" if self._unsaid else ""
        log.warning("SIP edge: %s%s", what, unsaid)
        self._warned_at, self._unsaid = now, 0
