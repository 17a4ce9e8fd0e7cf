"""Settings: flags and IMBILL_* environment variables over embedded defaults.

This is the only module that reads the process environment: :func:`load_settings` reads it
once (flags > IMBILL_* variables > defaults), and :func:`child_environment` is how
``imbill run`` hands the same settings to its child processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from imbill.schemas.topics import Topics

__all__ = ["Settings", "load_settings", "child_environment", "DEFAULT_EXAMPLE"]

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
    external_broker: bool = False
    """The bootstrap servers were given (flag or IMBILL_BOOTSTRAP_SERVERS): ``imbill run``
    uses that broker instead of starting the embedded one."""

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def with_overrides(self, **values: object) -> "Settings":
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def as_environment(self) -> dict[str, str]:
        """Every setting as its IMBILL_* variable, as :func:`load_settings` reads it back."""
        return {_variable(f.name): _TO_TEXT.get(f.name, str)(getattr(self, f.name)) for f in fields(self)}


def _peers(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


_FROM_TEXT: Mapping[str, Callable[[str], Any]] = {
    "edge_port": int, "broker_port": int, "replication_factor": int, "data_dir": Path, "edge_vendor_peers": _peers,
    "external_broker": lambda text: text.lower() in ("1", "true", "yes"),
}
_TO_TEXT: Mapping[str, Callable[[Any], str]] = {"edge_vendor_peers": ",".join}


def _variable(name: str) -> str:
    return "IMBILL_" + name.upper()


def load_settings(environ: Mapping[str, str] | None = None, **flags: object) -> Settings:
    """Defaults, overridden by IMBILL_* variables, overridden by flags that are not None."""
    environ = os.environ if environ is None else environ
    values = {f.name: _FROM_TEXT.get(f.name, str)(environ[_variable(f.name)])
              for f in fields(Settings) if _variable(f.name) in environ}
    settings = Settings().with_overrides(**values).with_overrides(**flags)
    if "bootstrap_servers" in values or flags.get("bootstrap_servers") is not None:
        settings = settings.with_overrides(external_broker=True)
    return settings


def child_environment(settings: Settings) -> dict[str, str]:
    """The environment of a child process: this process's (PATH and the like) with every
    setting replaced by ``settings``' own."""
    return {**os.environ, **settings.as_environment()}
