"""The topic catalogue: every topic imbill reads or writes, and how it is keyed.

Attempts, payments, charges, rejections, balance and service-status events are keyed by
``environment/account`` and have the same partition count, so one account's events stay
in order on one partition and the processor's balance state is co-partitioned with them.
Config is one partition so every reader folds the same total order; its rejections
(ConfigEventRejected) are one partition too, in the config topic's order.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TopicSpec", "Topics", "CATALOGUE", "ATTEMPTS", "CONFIG", "PAYMENTS", "CHARGES", "REJECTIONS",
           "BALANCES", "SERVICE_STATUS", "CONFIG_REJECTIONS", "CORRECTIONS", "RERATE_RUNS", "REGISTRATIONS",
           "ACCOUNT_STATE_CHANGELOG", "topic_names"]

FOREVER = -1


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    key: str
    cleanup_policy: str
    retention_ms: int
    events: tuple[str, ...]
    description: str

    def named(self, prefix: str) -> "TopicSpec":
        return TopicSpec(prefix + self.name, self.partitions, self.key, self.cleanup_policy,
                         self.retention_ms, self.events, self.description)

    def configs(self) -> dict[str, str]:
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}


ACCOUNT_PARTITIONS = 4

ATTEMPTS = TopicSpec("imbill.message-attempts", ACCOUNT_PARTITIONS, "environment/from_user", "delete",
                     FOREVER, ("MessageAttempt",), "SIP MESSAGE attempts from the SIP edge")
CONFIG = TopicSpec("imbill.config", 1, "environment", "delete", FOREVER,
                   ("ServiceTypesSet", "DialingRulesSet", "SipSettingsSet", "DestinationDefined", "ServicePolicyDefined",
                    "TariffDefined", "RateDefined", "VendorDefined", "VendorConnectionDefined",
                    "ProductDefined", "CustomerDefined", "AccountDefined", "ConfigObjectRemoved"),
                   "append-only config events; the config state is their fold")
PAYMENTS = TopicSpec("imbill.payments", ACCOUNT_PARTITIONS, "environment/account", "delete", FOREVER,
                     ("Payment",), "top-ups of account balances")
CHARGES = TopicSpec("imbill.charges", ACCOUNT_PARTITIONS, "environment/account", "delete", FOREVER,
                    ("Charge",), "rated and billed messages and their corrections")
REJECTIONS = TopicSpec("imbill.rejections", ACCOUNT_PARTITIONS, "environment/account", "delete",
                       FOREVER, ("Rejection", "PaymentRejected"),
                       "attempts not charged and payments not applied, with a reason code")
BALANCES = TopicSpec("imbill.balance-events", ACCOUNT_PARTITIONS, "environment/account", "delete",
                     FOREVER, ("BalanceChanged",), "every change of an account balance")
SERVICE_STATUS = TopicSpec("imbill.service-status", ACCOUNT_PARTITIONS, "environment/account",
                           "delete", FOREVER, ("ServiceStatusChanged",),
                           "messaging suspended (wallet empty) and resumed (top-up)")
CONFIG_REJECTIONS = TopicSpec("imbill.config-rejections", 1, "environment", "delete", FOREVER,
                              ("ConfigEventRejected",),
                              "config records every reader skips, with a reason code (one per record)")
CORRECTIONS = TopicSpec("imbill.corrections", ACCOUNT_PARTITIONS, "environment/account", "delete", FOREVER,
                        ("Charge",), "corrections made by re-rating runs (kind correction), for the processor to "
                                     "apply to the balance and append to the charges topic")
RERATE_RUNS = TopicSpec("imbill.rerate-runs", 1, "run id", "delete", FOREVER, ("RerateRun",),
                        "re-rating runs: who, when, the filter, the config used, the counts (started, finished)")
REGISTRATIONS = TopicSpec("imbill.registrations", ACCOUNT_PARTITIONS, "environment/account", "delete", FOREVER,
                          ("RegistrationChanged",), "REGISTER bindings at the SIP edge: bound, refreshed, removed, "
                                                    "expired (the edge rebuilds its bindings from it)")
ACCOUNT_STATE_CHANGELOG = TopicSpec("imbill-processor-account-state-changelog", ACCOUNT_PARTITIONS,
                                    "environment/account", "compact", FOREVER, (),
                                    "the processor's balance table (faust changelog)")

CATALOGUE: tuple[TopicSpec, ...] = (ATTEMPTS, CONFIG, PAYMENTS, CHARGES, REJECTIONS, BALANCES,
                                    SERVICE_STATUS, CONFIG_REJECTIONS, CORRECTIONS, RERATE_RUNS, REGISTRATIONS,
                                    ACCOUNT_STATE_CHANGELOG)


def topic_names() -> list[str]:
    return [spec.name for spec in CATALOGUE]


@dataclass(frozen=True)
class Topics:
    """The topic names in use: the catalogue's, behind an optional prefix (one per test, or
    per deployment sharing a cluster)."""

    prefix: str = ""

    @property
    def attempts(self) -> str:
        return self.prefix + ATTEMPTS.name

    @property
    def config(self) -> str:
        return self.prefix + CONFIG.name

    @property
    def payments(self) -> str:
        return self.prefix + PAYMENTS.name

    @property
    def charges(self) -> str:
        return self.prefix + CHARGES.name

    @property
    def rejections(self) -> str:
        return self.prefix + REJECTIONS.name

    @property
    def balances(self) -> str:
        return self.prefix + BALANCES.name

    @property
    def service_status(self) -> str:
        return self.prefix + SERVICE_STATUS.name

    @property
    def config_rejections(self) -> str:
        return self.prefix + CONFIG_REJECTIONS.name

    @property
    def corrections(self) -> str:
        return self.prefix + CORRECTIONS.name

    @property
    def rerate_runs(self) -> str:
        return self.prefix + RERATE_RUNS.name

    @property
    def registrations(self) -> str:
        return self.prefix + REGISTRATIONS.name

    def specs(self) -> list[TopicSpec]:
        """The catalogue under this prefix (the faust changelog is named by the processor)."""
        return [spec.named(self.prefix) for spec in CATALOGUE if spec is not ACCOUNT_STATE_CHANGELOG]
