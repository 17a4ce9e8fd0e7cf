"""Config fixtures built the way production builds them: by folding config events.

:func:`checklist` follows the operator checklist of domain/instant-messaging-setup.txt
step by step (Messaging enabled, MSGN destination, the "Instant messaging" policy, the
internal vendor's tariff A and SIP-UA connection, customer tariff B with its MSGN rate,
the product with Messaging and a PortaSIP/B usage charge) and adds a customer with two
accounts. Every event record is encoded with the published Avro schema as it is applied,
so a fixture cannot drift from the contracts.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from imbill.domain.events import MessageAttempt, Payment
from imbill.schemas.codec import encode
from imbill.domain.config import (KIND_BY_CLASS, Account, ConfigState, Customer, Destination,
                                   DialingRules, EnvironmentConfig, Product, Rate, ServicePolicy,
                                   ServiceTypes, Tariff, UsageCharge, Vendor, VendorConnection, to_record)

__all__ = ["DROP", "T0", "ENV", "DOMAIN", "ALICE", "BOB", "POLICY", "IM_ATTRIBUTES", "ConfigBuilder", "checklist",
           "attempt", "attempt_record", "payment"]

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
DROP = object()
"""A field value for :func:`attempt` that leaves the field out."""
ENV = "acme"
DOMAIN = "sip.acme.example"
ALICE, BOB = "441632960001", "441632960002"
POLICY = "Instant messaging"
IM_ATTRIBUTES = {
    "msg.transport_protocol": "SIP", "msg.outgoing_aaa": True, "msg.local_lookup": True,
    "msg.userpart_e164_translation": True, "msg.billing_unit_size": 60,
}


class ConfigBuilder:
    """Applies config objects as events to a ConfigState, one environment by default."""

    def __init__(self, environment: str = ENV) -> None:
        self.environment = environment
        self.state = ConfigState()
        self.events: list[tuple[str, dict[str, Any]]] = []

    @property
    def env(self) -> EnvironmentConfig:
        return self.state.environments[self.environment]

    def define(self, *objects: Any, at: datetime = T0, environment: str | None = None) -> ConfigBuilder:
        for obj in objects:
            self._apply(KIND_BY_CLASS[type(obj)].event, to_record(obj), at, environment)
        return self

    def remove(self, kind: str, key: str, *, at: datetime = T0, environment: str | None = None) -> ConfigBuilder:
        return self._apply("ConfigObjectRemoved", {"kind": kind, "key": key}, at, environment)

    def _apply(self, name: str, body: dict[str, Any], at: datetime, environment: str | None) -> ConfigBuilder:
        record = {"event_id": f"cfg-{len(self.events) + 1}", "environment": environment or self.environment,
                  "occurred_at": at, **body}
        encode(name, record)
        self.state = self.state.apply(name, record)
        self.events.append((name, record))
        return self


def checklist(environment: str = ENV, *, currency: str = "USD", msgn_price: str = "0.05",
              attributes: dict[str, Any] | None = None, balance_model: str = "postpaid") -> ConfigBuilder:
    """The operator checklist, then a customer "Acme" with accounts ALICE (alias alice) and
    BOB (alias bob) on product "IM product"."""
    policy_attributes = IM_ATTRIBUTES if attributes is None else attributes
    return ConfigBuilder(environment).define(
        ServiceTypes(messaging_enabled=True),
        DialingRules(country_code="44", international_prefix="00", national_prefix="0"),
        Destination("MSGN", "custom", "On-net instant messages"),
        ServicePolicy(POLICY, "messaging", 5, "%", "IM over SIP", dict(policy_attributes)),
        Vendor("Internal vendor", internal=True),
        Tariff("A", currency, applied_to="vendor"),
        Rate("A", "|", Decimal(0), T0),
        VendorConnection("Internal vendor", "Internal messaging via SIP", "A", internal=True, use_for="SIP-UA"),
        Tariff("B", currency, applied_to="customer"),
        Rate("B", "MSGN", Decimal(msgn_price), T0),
        Product("IM product", ("voice", "messaging"), (UsageCharge("messaging", "PortaSIP", "B"),)),
        Customer("Acme", currency),
        Account(ALICE, "Acme", "IM product", aliases=("alice",), balance_model=balance_model,
                opening_balance=Decimal("1.00"), credit_limit=Decimal("5.00")),
        Account(BOB, "Acme", "IM product", aliases=("bob",), balance_model=balance_model,
                opening_balance=Decimal("1.00"), credit_limit=Decimal("5.00")),
    )


def attempt(**fields: Any) -> MessageAttempt:
    """A MessageAttempt from ALICE to BOB, one hour after T0; ``fields`` override."""
    return MessageAttempt(**attempt_record(**fields))


def attempt_record(**fields: Any) -> dict[str, Any]:
    """The Avro record of :func:`attempt` (a field given as DROP is left out)."""
    record = {
        "attempt_id": "att-1", "received_at": T0 + timedelta(hours=1), "environment": ENV,
        "direction": "outgoing", "call_id": "c1@192.0.2.10", "cseq": 1, "from_user": ALICE,
        "from_domain": DOMAIN, "to_user": BOB, "to_domain": DOMAIN, "request_uri": f"sip:{BOB}@{DOMAIN}",
        "user_agent": "Linphone/5.2.0", "content_type": "text/plain", "body_chars": 10, "body_bytes": 10,
        "source_ip": "192.0.2.10", "source_port": 5060, "transport": "UDP", "edge_id": "edge-1",
    }
    record.update(fields)
    return {name: value for name, value in record.items() if value is not DROP}


def payment(amount: str, *, payment_id: str = "pay-1", account: str = ALICE, currency: str = "USD") -> Payment:
    """A Payment (top-up) for ``account``."""
    return Payment(payment_id=payment_id, environment=ENV, account=account, amount=Decimal(amount),
                   currency=currency, received_at=T0 + timedelta(hours=2), reference="test")
