"""Settings: flags and IMBILL_* environment variables over embedded defaults.

This is the only module that reads the process environment: :func:`load_settings` reads it
once (flags > IMBILL_* variables > defaults), and :func:`child_environment` is how
``imbill run`` hands the same settings to its child processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, Mapping

from imbill.domain.decide import Limits
from imbill.domain.errors import ConfigError
from imbill.domain.money import PAYMENT_LIMIT
from imbill.domain.rating import CLOCK_SKEW
from imbill.domain.registrations import RegisterLimits
from imbill.producers.sip_guard import GuardLimits
from imbill.producers.sip_proxy import DeliverySettings
from imbill.producers.sip_tcp import TcpLimits
from imbill.schemas.topics import Topics

__all__ = ["Settings", "load_settings", "child_environment", "DEFAULT_EXAMPLE"]

_GUARD = GuardLimits()
_TCP = TcpLimits()
DEFAULT_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "instant-messaging.yaml"


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "127.0.0.1:9092"
    database_url: str = "sqlite:///imbill.db"
    environment: str = "default"
    edge_host: str = "127.0.0.1"
    edge_port: int = 5060
    broker_port: int = 9092
    processor_id: str = "imbill-processor"
    data_dir: Path = field(default_factory=lambda: Path(".imbill"))
    topic_prefix: str = ""
    replication_factor: int = 1
    edge_vendor_peers: tuple[str, ...] = ()
    """Source IPs of vendor connections; MESSAGEs from them are incoming (free by default)."""
    payment_maximum: Decimal = PAYMENT_LIMIT
    """The largest single payment applied; larger ones get a PaymentRejected amount_too_large
    (at most ``money.PAYMENT_LIMIT``, the default)."""
    attempt_clock_skew: float = CLOCK_SKEW.total_seconds()
    """Seconds an attempt may be dated after the processor's clock (implausible_attempt beyond)."""
    edge_guard_failures: int = _GUARD.source_failures
    """Failed digest responses from one source address within the window that make the edge
    answer it 403 for the cool-down (0: no guard)."""
    edge_guard_account_failures: int = _GUARD.account_failures
    """Failed responses on one account within the window, from any addresses: then every address
    that fails on it is blocked at its first failure (the account itself is never blocked)."""
    edge_guard_window: float = _GUARD.window
    edge_guard_cooldown: float = _GUARD.cooldown
    charge_undelivered: bool = False
    """Whether the processor charges an on-net message the edge failed to deliver (480, 408,
    the recipient's refusal); by default it is refused ``undelivered`` (README, "Delivery")."""
    edge_delivery: str = "on"
    """off: the edge never delivers (202 for every accepted MESSAGE, as before); on: it
    delivers to a recipient with a live binding (202 when there is none); required: a
    recipient account without a binding gets 480."""
    edge_delivery_timeout: float = 8.0
    """Seconds the edge waits for the recipient's final answer before answering 408."""
    edge_register_min_expires: int = 60
    """The shortest REGISTER expiry accepted (423 Interval Too Brief under it)."""
    edge_register_max_expires: int = 3600
    """The longest REGISTER expiry (longer ones are cut to it), and the default one."""
    edge_default_environment: str = ""
    """The environment of a SIP domain no environment's ``sip_domains`` lists; "": the edge's
    ``environment`` while it lists no domains, else none (404). See producers/sip_domains.py."""
    edge_tcp_max_connections: int = _TCP.max_connections
    """TCP connections the edge keeps open at once (0: UDP only)."""
    edge_tcp_max_per_source: int = _TCP.max_per_source
    """TCP connections open at once from one address."""
    edge_tcp_idle_timeout: float = _TCP.idle_timeout
    """Seconds a TCP connection may go without a complete message or keep-alive."""
    external_broker: bool = False
    """The bootstrap servers were given (flag or IMBILL_BOOTSTRAP_SERVERS): ``imbill run``
    uses that broker instead of starting the embedded one."""

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def limits(self) -> Limits:
        """The bounds the processor puts on its inputs; ConfigError names a setting out of range."""
        try:
            return Limits(Decimal(self.payment_maximum), timedelta(seconds=float(self.attempt_clock_skew)),
                          bool(self.charge_undelivered))
        except ValueError as exc:
            raise ConfigError(f"settings: {exc}") from None

    @property
    def guard(self) -> GuardLimits:
        """The edge's guessing guard; ConfigError names a setting out of range."""
        try:
            return GuardLimits(int(self.edge_guard_failures), int(self.edge_guard_account_failures),
                               float(self.edge_guard_window), float(self.edge_guard_cooldown))
        except ValueError as exc:
            raise ConfigError(f"settings: {exc}") from None

    @property
    def register_limits(self) -> RegisterLimits:
        """The edge registrar's bounds on an expiry; ConfigError names a setting out of range."""
        try:
            return RegisterLimits(int(self.edge_register_min_expires), int(self.edge_register_max_expires))
        except ValueError as exc:
            raise ConfigError(f"settings: {exc}") from None

    @property
    def tcp(self) -> TcpLimits:
        """The edge's TCP limits; ConfigError names a setting out of range."""
        try:
            return TcpLimits(int(self.edge_tcp_max_connections), int(self.edge_tcp_max_per_source),
                             float(self.edge_tcp_idle_timeout))
        except ValueError as exc:
            raise ConfigError(f"settings: {exc}") from None

    @property
    def delivery(self) -> DeliverySettings:
        """The edge's delivery to registered recipients; ConfigError names a setting out of range."""
        try:
            return DeliverySettings(self.edge_delivery, float(self.edge_delivery_timeout))
        except ValueError as exc:
            raise ConfigError(f"settings: {exc}") from None

    def with_overrides(self, **values: object) -> "Settings":
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def as_environment(self) -> dict[str, str]:
        """Every setting as its IMBILL_* variable, as :func:`load_settings` reads it back."""
        return {_variable(f.name): _TO_TEXT.get(f.name, str)(getattr(self, f.name)) for f in fields(self)}


def _flag(text: str) -> bool:
    if text.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        raise ValueError(f"not a yes or no: {text!r}")
    return text.lower() in ("1", "true", "yes", "on")


def _peers(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


_FROM_TEXT: Mapping[str, Callable[[str], Any]] = {
    "edge_port": int, "broker_port": int, "replication_factor": int, "data_dir": Path, "edge_vendor_peers": _peers,
    "payment_maximum": Decimal, "attempt_clock_skew": float,
    "edge_guard_failures": int, "edge_guard_account_failures": int, "edge_guard_window": float,
    "edge_guard_cooldown": float,
    "external_broker": _flag, "charge_undelivered": _flag, "edge_delivery_timeout": float,
    "edge_register_min_expires": int, "edge_register_max_expires": int,
    "edge_tcp_max_connections": int, "edge_tcp_max_per_source": int, "edge_tcp_idle_timeout": float,
}
_TO_TEXT: Mapping[str, Callable[[Any], str]] = {"edge_vendor_peers": ",".join}


def _variable(name: str) -> str:
    return "IMBILL_" + name.upper()


def load_settings(environ: Mapping[str, str] | None = None, **flags: object) -> Settings:
    """Defaults, overridden by IMBILL_* variables, overridden by flags that are not None."""
    environ = os.environ if environ is None else environ
    values = {f.name: _parsed(f.name, environ[_variable(f.name)]) for f in fields(Settings) if _variable(f.name) in environ}
    settings = Settings().with_overrides(**values).with_overrides(**flags)
    if "bootstrap_servers" in values or flags.get("bootstrap_servers") is not None:
        settings = settings.with_overrides(external_broker=True)
    return settings


def _parsed(name: str, text: str) -> Any:
    try:
        return _FROM_TEXT.get(name, str)(text)
    except (ValueError, InvalidOperation):
        raise ConfigError(f"{_variable(name)}: cannot read {text!r}") from None


def child_environment(settings: Settings) -> dict[str, str]:
    """The environment of a child process: this process's (PATH and the like) with every
    setting replaced by ``settings``' own."""
    return {**os.environ, **settings.as_environment()}
