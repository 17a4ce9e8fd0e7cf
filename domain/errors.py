"""The imbill exception tree.

    ImbillError
    ├── ConfigError          invalid config file or reference (nothing is appended)
    │   ├── ConfigFileError        producers/config_file.py: names the file, object and field
    │   ├── InvalidPolicyAttribute domain/catalogue.py: an attribute or value the catalogue refuses
    │   ├── InvalidDialingRules    domain/e164.py: a dialing rules field (also a ValueError)
    │   └── ConfigRefused          a config record the fold refuses, with its reason code
    ├── SchemaError          an event that cannot be encoded or decoded
    │   └── UnknownSchema    a record whose writer fingerprint no .avsc file has
    ├── BrokerError          the local broker cannot start, a topic cannot be created
    │   └── LogReset         a log is not the one a consumer stored offsets for (reset broker)
    └── PublishError         an event was not acknowledged by the broker

Each class lives in the module that raises it and is imported from there; this one holds
the root and the kinds every layer shares. Rejected messages are not exceptions: they are Rejection events with a reason code.
"""

__all__ = ["ImbillError", "ConfigError", "ConfigRefused", "SchemaError", "UnknownSchema", "BrokerError", "LogReset", "PublishError"]


class ImbillError(Exception):
    """Root of every error imbill raises on purpose."""


class ConfigError(ImbillError):
    """A config file, object or field is invalid; the message names all three."""


class ConfigRefused(ConfigError):
    """A config record that would break the config in force (a reference to an object that is
    not there, the removal of one still referred to): ``reason_code`` is one of
    ``refusal.CONFIG_REASON_CODES``."""

    def __init__(self, reason_code: str, message: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class SchemaError(ImbillError):
    """An event cannot be encoded or decoded with the published Avro schemas."""


class UnknownSchema(SchemaError):
    """A single-object encoded record names a writer schema we do not have."""


class BrokerError(ImbillError):
    """The Kafka-protocol broker cannot be started or reached."""


class LogReset(BrokerError):
    """A topic's log is not the one whose offsets a consumer keeps with its state: the broker
    was reset, the topic deleted and re-created, or it is another cluster."""


class PublishError(ImbillError):
    """An event was not acknowledged by the broker."""
