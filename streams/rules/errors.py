"""Errors of the rule layer (re-exported from the package tree in imbill.errors)."""

from imbill.errors import ConfigError, ImbillError

__all__ = ["ConfigError", "ImbillError"]
