"""Settings: flags and IMBILL_* environment variables over embedded defaults.

This is the only module that reads the process environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = ["Settings", "load_settings", "DEFAULT_EXAMPLE"]

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

    @property
    def topics(self) -> "Topics":
        from imbill.schemas.topics import Topics

        return Topics(self.topic_prefix)

    def with_overrides(self, **values: object) -> "Settings":
        return replace(self, **{k: v for k, v in values.items() if v is not None})


_ENV = {
    "bootstrap_servers": ("IMBILL_BOOTSTRAP_SERVERS", str),
    "database_url": ("IMBILL_DATABASE_URL", str),
    "environment": ("IMBILL_ENVIRONMENT", str),
    "edge_host": ("IMBILL_EDGE_HOST", str),
    "edge_port": ("IMBILL_EDGE_PORT", int),
    "broker_port": ("IMBILL_BROKER_PORT", int),
    "processor_id": ("IMBILL_PROCESSOR_ID", str),
    "data_dir": ("IMBILL_DATA_DIR", Path),
    "topic_prefix": ("IMBILL_TOPIC_PREFIX", str),
    "replication_factor": ("IMBILL_REPLICATION_FACTOR", int),
    "edge_vendor_peers": ("IMBILL_EDGE_VENDOR_PEERS", lambda v: tuple(p.strip() for p in v.split(",") if p.strip())),
}


def load_settings(environ: dict[str, str] | None = None, **flags: object) -> Settings:
    """Defaults, overridden by IMBILL_* variables, overridden by flags that are not None."""
    environ = dict(os.environ if environ is None else environ)
    values = {name: conv(environ[var]) for name, (var, conv) in _ENV.items() if var in environ}
    return Settings().with_overrides(**values).with_overrides(**flags)
