"""What an operator asks of the engine, once the settings are known: each use case takes
the :class:`~imbill.settings.Settings` and plain arguments, and returns values (the CLI's
presentation turns them into text)."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from imbill.bus import EventProducer, create_topics
from imbill.domain.config import Account, ConfigState, EnvironmentConfig
from imbill.domain.errors import ConfigError, ImbillError
from imbill.domain.events import Payment
from imbill.domain.keys import account_key
from imbill.domain.policy import Explanation, explain
from imbill.domain.rating import Rated, Refusal, rate_attempt
from imbill.producers.attempt import attempt_key, synthetic_attempt
from imbill.producers.sip_client import SipAnswer, send_message
from imbill.producers.config_publisher import (ApplyResult, HistoryEntry, apply_config, config_history,
                                               current_state)
from imbill.projections.models import connect
from imbill.projections.queries import query_xdrs
from imbill.settings import Settings

__all__ = ["PolicyExplanation", "create_all_topics", "apply_config_file", "config_at", "config_events",
           "top_up", "send", "generate_traffic", "explain_policy", "xdrs"]

MICRO = Decimal("0.000001")
"""Payments are kept to the micro unit (the events' decimal(24, 6))."""


def create_all_topics(settings: Settings) -> list[str]:
    return create_topics(settings.bootstrap_servers, settings.topics.specs(), settings.replication_factor)


def apply_config_file(settings: Settings, path: Path) -> ApplyResult:
    return apply_config(path, bootstrap_servers=settings.bootstrap_servers, topics=settings.topics)


def config_at(settings: Settings, at: datetime | None = None) -> ConfigState:
    """The config of every environment in force now (or at ``at``)."""
    return current_state(settings.bootstrap_servers, settings.topics, until=at)


def config_events(settings: Settings) -> list[HistoryEntry]:
    """The config events of the settings' environment, oldest first."""
    return config_history(settings.bootstrap_servers, settings.topics, settings.environment)


def _account(settings: Settings, account_id: str) -> tuple[EnvironmentConfig, Account]:
    env = config_at(settings).environment(settings.environment)
    account = env.accounts.get(account_id) if env else None
    if env is None or account is None:
        raise ConfigError(f"environment {settings.environment}: unknown account {account_id!r}")
    return env, account


REFERENCE_LIMIT = 4_096
"""The longest payment reference ``imbill payment`` appends (the processor refuses a payment
whose texts together pass ``decide.PAYMENT_TEXT_LIMIT``)."""


def top_up(settings: Settings, account_id: str, amount: Decimal, currency: str | None, reference: str) -> str:
    """Append a Payment for the account; returns its payment id."""
    env, account = _account(settings, account_id)
    customer_currency = env.customers[account.customer].currency
    if currency and currency != customer_currency:
        raise ConfigError(f"account {account_id}: payment currency {currency} differs from the "
                          f"customer's currency {customer_currency}")
    if not amount.is_finite() or amount <= 0:
        raise ConfigError(f"account {account_id}: a payment must be positive, got {amount}")
    maximum = settings.limits.payment_maximum
    if amount > maximum:
        raise ConfigError(f"account {account_id}: a payment may be at most {maximum:,}, got {amount}")
    if len(reference) > REFERENCE_LIMIT:
        raise ConfigError(f"account {account_id}: a payment reference has at most {REFERENCE_LIMIT:,} characters, "
                          f"got {len(reference):,}")
    if amount != amount.quantize(MICRO):
        raise ConfigError(f"account {account_id}: a payment has at most 6 decimals, got {amount}")
    payment_id = "pay-" + uuid.uuid4().hex
    payment = Payment(payment_id=payment_id, environment=settings.environment, account=account_id, amount=amount,
                      currency=customer_currency, received_at=datetime.now(timezone.utc), reference=reference)
    producer = EventProducer(settings.bootstrap_servers)
    try:
        producer.publish_event(settings.topics.payments, account_key(payment.environment, payment.account), payment)
    finally:
        producer.close()
    return payment_id


def send(settings: Settings, *, from_user: str, to_user: str, text: str, domain: str | None) -> SipAnswer:
    """One SIP MESSAGE to the settings' edge; returns its answer."""
    return send_message(settings.edge_host, settings.edge_port, from_user=from_user, to_user=to_user,
                        text=text, domain=domain)


def generate_traffic(settings: Settings, count: int, accounts: list[str], destinations: list[str],
                     seed: int) -> int:
    """Synthetic MessageAttempt events, as the edge would publish them (the traffic generator)."""
    rng = random.Random(seed)
    producer = EventProducer(settings.bootstrap_servers, linger_ms=20)
    try:
        for i in range(count):
            sender = rng.choice(accounts)
            attempt = synthetic_attempt(settings.environment, sender, rng.choice(destinations),
                                        body_chars=rng.randint(1, 400), call_id=f"gen-{seed}-{i}@imbill")
            producer.send_event(settings.topics.attempts, attempt_key(attempt), attempt)
        producer.flush()
    finally:
        producer.close()
    return count


@dataclass(frozen=True)
class PolicyExplanation:
    """Which policies match a message, the effective attributes, and how it would be rated now."""

    explanation: Explanation
    rated: Rated | Refusal


def explain_policy(settings: Settings, account: str, to: str, user_agent: str | None) -> PolicyExplanation:
    state = config_at(settings)
    env = state.environment(settings.environment)
    if env is None:
        raise ConfigError(f"environment {settings.environment} has no config (imbill config apply FILE)")
    to_user, _, to_domain = to.removeprefix("sip:").removeprefix("sips:").partition("@")
    result = explain(env, account=account, to_domain=to_domain or settings.edge_host, user_agent=user_agent)
    now = datetime.now(timezone.utc)
    attempt = synthetic_attempt(settings.environment, account, to_user, body_chars=1, call_id="explain",
                                received_at=now, domain=to_domain or settings.edge_host)
    return PolicyExplanation(result, rate_attempt(attempt, state, rated_at=now))


def xdrs(settings: Settings, *, account: str | None, since: datetime | None, until: datetime | None,
         limit: int | None) -> list[dict[str, Any]]:
    """xDR rows of the settings' environment from the projection database."""
    engine = connect(settings.database_url)
    try:
        if not sa.inspect(engine).has_table("xdr"):
            raise ImbillError(f"no xdr table in {settings.database_url}: run `imbill project` first")
        return query_xdrs(engine, account=account, environment=settings.environment, since=since,
                          until=until, limit=limit)
    finally:
        engine.dispose()
