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

from imbill.bus import EventProducer, create_topics, read_to_end
from imbill.domain.config import Account, ConfigState, EnvironmentConfig
from imbill.domain.errors import ConfigError, ImbillError
from imbill.domain.events import Payment
from imbill.domain.keys import account_key
from imbill.domain.money import PAYMENT_LIMIT
from imbill.domain.policy import Explanation, explain
from imbill.domain.rating import Rated, Refusal, rate_attempt
from imbill.domain.reconcile import AttemptSeen, Reconciliation, Topics as TopicEvents, reconcile as compare
from imbill.producers.attempt import attempt_key, synthetic_attempt
from imbill.producers.sip_client import SipAnswer, send_message
from imbill.producers.config_publisher import (ApplyResult, HistoryEntry, apply_config, config_history,
                                               current_state)
from imbill.projections.models import connect
from imbill.projections.queries import latest_balances, query_xdrs
from imbill.schemas.codec import event_of
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


def top_up(settings: Settings, account_id: str, amount: Decimal, currency: str | None, reference: str) -> str:
    """Append a Payment for the account; returns its payment id."""
    env, account = _account(settings, account_id)
    customer_currency = env.customers[account.customer].currency
    if currency and currency != customer_currency:
        raise ConfigError(f"account {account_id}: payment currency {currency} differs from the "
                          f"customer's currency {customer_currency}")
    if not amount.is_finite() or amount <= 0:
        raise ConfigError(f"account {account_id}: a payment must be positive, got {amount}")
    if amount > PAYMENT_LIMIT:
        raise ConfigError(f"account {account_id}: a payment may be at most {PAYMENT_LIMIT:,}, got {amount}")
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


# --- reconcile ------------------------------------------------------------------------------

__all__ += ["ReconcileReport", "reconcile"]


@dataclass(frozen=True)
class ReconcileReport:
    """``imbill reconcile``: the comparison, and what the projection check was made against."""

    result: Reconciliation
    environment: str
    projection: str
    """``balance_event in <database>``, or why the projection was not checked."""


def reconcile(settings: Settings, account: str | None = None) -> ReconcileReport:
    """Read the attempts, charges, rejections, payments and balance events topics to their
    true end (``bus.read_to_end``: the fetch high-watermark, not ListOffsets) and compare them
    with the config's opening balances and the projection's balances (when reachable)."""
    environment, topics = settings.environment, settings.topics
    env = config_at(settings).environment(environment)
    opening = {key: found.opening_balance for key, found in env.accounts.items()} if env is not None else {}
    read = _environment_events(settings)
    rejections = read(topics.rejections)
    events = TopicEvents(attempts=_attempts(settings), charges=read(topics.charges),
                         rejections=[r for r in rejections if type(r).__name__ == "Rejection"],
                         payments=read(topics.payments),
                         payment_rejections=[r for r in rejections if type(r).__name__ == "PaymentRejected"],
                         balances=read(topics.balances))
    projected, projection = _projected_balances(settings)
    return ReconcileReport(compare(opening, events, projected, account=account), environment, projection)


def _environment_events(settings: Settings):
    """A reader of one topic's events of the settings' environment (records that are no
    event are left out: the processor refused them where they came in)."""

    def read(topic: str) -> list[Any]:
        found = []
        for envelope in read_to_end(settings.bootstrap_servers, topic):
            if envelope.name is None:
                continue
            try:
                event = event_of(envelope.name, envelope.record)
            except ImbillError:
                continue
            if getattr(event, "environment", None) == settings.environment or _undecodable(event):
                found.append(event)
        return found

    return read


def _undecodable(event: Any) -> bool:
    """A malformed_attempt rejection of a record that was no attempt (no environment)."""
    return type(event).__name__ == "Rejection" and event.attempt_id.startswith("undecodable-")


def _attempts(settings: Settings) -> list[AttemptSeen]:
    """Every attempt of the environment by id (a record under one of its keys that is no
    MessageAttempt is ``undecodable-<partition>-<offset>``, as the processor names it)."""
    prefix = f"{settings.environment}/".encode()
    found = []
    for envelope in read_to_end(settings.bootstrap_servers, settings.topics.attempts):
        record = envelope.record if envelope.name == "MessageAttempt" else None
        if record is not None and record.get("environment") == settings.environment:
            sender = record.get("from_user", "") if record.get("direction") == "outgoing" else ""
            found.append(AttemptSeen(record.get("attempt_id", ""), sender))
        elif record is None and (envelope.key or b"").startswith(prefix):
            found.append(AttemptSeen(f"undecodable-{envelope.partition}-{envelope.offset}", ""))
    return found


def _projected_balances(settings: Settings) -> tuple[dict[str, Decimal] | None, str]:
    """The projection's latest balance per account, and where from (or why not checked)."""
    url = settings.database_url
    engine = connect(url)
    try:
        if engine.dialect.name == "sqlite" and engine.url.database and not Path(engine.url.database).exists():
            return None, f"not checked: no database at {url}"
        if not sa.inspect(engine).has_table("balance_event"):
            return None, f"not checked: no balance_event table in {url} (run `imbill project`)"
        return latest_balances(engine, settings.environment), f"balance_event in {engine.url.render_as_string()}"
    except sa.exc.SQLAlchemyError as exc:
        return None, f"not checked: {url} is not reachable ({type(exc).__name__})"
    finally:
        engine.dispose()
