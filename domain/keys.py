"""The Kafka key of everything that belongs to one account: ``environment/account``.

Attempts (keyed by the sender), payments, charges, rejections, balance and status events
share it, so one account's events stay in order on one partition and the processor's
balance state is co-partitioned with them. This is the one place that spells it.
"""

from __future__ import annotations

__all__ = ["account_key", "KEY_SEPARATOR"]

KEY_SEPARATOR = "/"
"""Environment names may not contain it (config refuses them), so a key names one pair."""


def account_key(environment: str, account: str) -> bytes:
    """The key of ``account`` in the virtual environment ``environment``."""
    return f"{environment}{KEY_SEPARATOR}{account}".encode()
