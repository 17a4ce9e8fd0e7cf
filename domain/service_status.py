"""Which accounts of one environment have their messaging suspended: a fold over the
processor's ServiceStatusChanged events, for the SIP edge to refuse their MESSAGEs early.

The processor stays the authority (:mod:`.balance`): an attempt that races a suspension is
refused there ``service_suspended``. The edge's copy only spares such accounts a 202 for a
message that would be refused, and mirrors the processor's rule: a suspended account is
refused while its account in the config in force is prepaid.

Bounded by the number of accounts: only suspensions of accounts of the environment's
config are kept (the processor emits no other), one entry each, dropped when resumed.
"""

from __future__ import annotations

from imbill.domain.config import EnvironmentConfig
from imbill.domain.events import ServiceStatusChanged

__all__ = ["SuspendedAccounts"]

MESSAGING = "messaging"


class SuspendedAccounts:
    """``apply`` each ServiceStatusChanged in topic order; ``reason(account, env)`` is why the
    account's messaging is suspended, or None."""

    def __init__(self, environment: str) -> None:
        self.environment = environment
        self._reasons: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._reasons)

    def apply(self, event: ServiceStatusChanged, env: EnvironmentConfig | None) -> None:
        """Fold one event; ``env``: the environment's config in force (None: it has none)."""
        if event.environment != self.environment or event.service != MESSAGING:
            return
        if event.status != "suspended":
            self._reasons.pop(event.account, None)
        elif env is not None and event.account in env.accounts:
            self._reasons[event.account] = event.reason

    def reason(self, account_id: str, env: EnvironmentConfig | None) -> str | None:
        reason = self._reasons.get(account_id)
        if reason is None or env is None:
            return None
        account = env.accounts.get(account_id)
        return reason if account is not None and account.balance_model == "prepaid" else None
