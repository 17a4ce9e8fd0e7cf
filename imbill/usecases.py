"""What an operator asks of the engine, once the settings are known: each use case takes
the :class:`~imbill.settings.Settings` and plain arguments, and returns values (the CLI's
presentation turns them into text)."""

from __future__ import annotations

import random
import uuid
from contextlib import contextmanager
from functools import partial
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from imbill.bus import EventProducer, Tail, check_reachable, create_topics, read_to_end
from imbill.domain.config import Account, ConfigState, EnvironmentConfig
from imbill.domain.errors import BrokerError, ConfigError, ImbillError
from imbill.domain.events import Payment
from imbill.domain.keys import account_key
from imbill.domain.policy import Explanation, explain
from imbill.domain.rating import Rated, Refusal, rate_attempt
from imbill.domain.reconcile import AttemptSeen, Reconciliation, Topics as TopicEvents, reconcile as compare
from imbill.producers.attempt import attempt_id_for, attempt_key, synthetic_attempt
from imbill.producers.sip_client import Credentials, SipAnswer, send_message
from imbill.domain.bitemporal import state_in_force_at
from imbill.producers.config_file import load_config_file, product_change_of, rate_of
from imbill.producers.config_publisher import (ApplyResult, HistoryEntry, apply_config, config_history,
                                               current_state, set_account_product, set_rate as apply_rate)
from imbill.projections.models import connect
from imbill.projections.queries import (XdrFilter, aggregate_xdrs, latest_balances, query_balances,
                                        query_registrations, query_rejections, query_revisions, query_xdrs)
from imbill.projections.report_data import ReportData, report_data
from imbill.schemas.codec import event_of
from imbill.settings import Settings

__all__ = ["EdgeUnreachable", "DatabaseUnavailable", "PolicyExplanation", "Outcome", "Sent", "TopUp",
           "create_all_topics", "apply_config_file", "config_at", "set_rate", "config_events", "top_up", "send",
           "generate_traffic", "explain_policy", "xdrs", "xdr_revisions", "xdr_totals", "rejections", "balances", "accounts", "report",
           "ReconcileReport", "reconcile"]

OUTCOME_WAIT = 5.0
"""Seconds `send` and `payment` wait for what the processor made of their event."""


class EdgeUnreachable(ImbillError):
    """No SIP edge answered a MESSAGE."""


class DatabaseUnavailable(ImbillError):
    """The projection database cannot be opened or read."""


@dataclass(frozen=True)
class Outcome:
    """What the processor made of an event: the name and record of its answer (Charge or
    Rejection for a message; BalanceChanged or PaymentRejected for a payment)."""

    event: str
    record: dict[str, Any]

MICRO = Decimal("0.000001")
"""Payments are kept to the micro unit (the events' decimal(24, 6))."""


def create_all_topics(settings: Settings) -> list[str]:
    check_reachable(settings.bootstrap_servers)
    return create_topics(settings.bootstrap_servers, settings.topics.specs(), settings.replication_factor)


def apply_config_file(settings: Settings, path: Path) -> ApplyResult:
    load_config_file(path)  # a bad file is said first, broker or not
    check_reachable(settings.bootstrap_servers)
    return apply_config(path, bootstrap_servers=settings.bootstrap_servers, topics=settings.topics)


def config_at(settings: Settings, at: datetime | None = None, as_of: datetime | None = None) -> ConfigState:
    """The config of every environment as known now (or ``as_of`` a record time); with
    ``at``, only the rates in force at that valid time (one per tariff and rate code)."""
    check_reachable(settings.bootstrap_servers)
    return state_in_force_at(current_state(settings.bootstrap_servers, settings.topics, as_of=as_of), at)


def set_rate(settings: Settings, *, tariff: str, code: str, price: str, effective_from: str,
             description: str | None = None) -> ApplyResult:
    """Append one RateDefined in the settings' environment (``imbill rate set``): a new rate
    or the correction of a known one, checked as a config file's rate is."""
    rate = rate_of(tariff, code, price, effective_from, description or "", source="rate set")
    check_reachable(settings.bootstrap_servers)
    return apply_rate(settings.environment, rate, bootstrap_servers=settings.bootstrap_servers,
                      topics=settings.topics, description=description)


def set_product(settings: Settings, *, account: str, product: str, effective_from: str) -> ApplyResult:
    """Append one AccountDefined in the settings' environment (``imbill account product``):
    the account's product is ``product`` from ``effective_from`` on (valid time)."""
    change = product_change_of(product, effective_from)
    check_reachable(settings.bootstrap_servers)
    return set_account_product(settings.environment, account, change.product, change.effective_from,
                               bootstrap_servers=settings.bootstrap_servers, topics=settings.topics)


def config_events(settings: Settings) -> list[HistoryEntry]:
    """The config events of the settings' environment, oldest first."""
    check_reachable(settings.bootstrap_servers)
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


@dataclass(frozen=True)
class TopUp:
    """A payment appended, and what the processor made of it (None: nothing within the wait)."""

    payment_id: str
    account: str
    amount: Decimal
    currency: str
    outcome: Outcome | None


def top_up(settings: Settings, account_id: str, amount: Decimal, currency: str | None, reference: str,
           wait: float = 0.0) -> TopUp:
    """Append a Payment for the account; with ``wait``, wait that long for its BalanceChanged
    (or PaymentRejected) from the processor."""
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
    env, account = _account(settings, account_id)
    customer_currency = env.customers[account.customer].currency
    if currency and currency != customer_currency:
        raise ConfigError(f"account {account_id}: payment currency {currency} differs from the "
                          f"customer's currency {customer_currency}")
    payment = Payment(payment_id="pay-" + uuid.uuid4().hex, environment=settings.environment, account=account_id,
                      amount=amount, currency=customer_currency, received_at=datetime.now(timezone.utc),
                      reference=reference)
    tail = _open_tail(settings, [settings.topics.balances, settings.topics.rejections], wait)
    producer = EventProducer(settings.bootstrap_servers)
    try:
        producer.publish_event(settings.topics.payments, account_key(payment.environment, payment.account), payment)
        found = tail.find(lambda e: payment.payment_id in (e.record.get("cause_id"), e.record.get("payment_id")),
                          wait) if tail else None
    finally:
        producer.close()
        if tail:
            tail.close()
    return TopUp(payment.payment_id, account_id, amount, customer_currency,
                 Outcome(found.name, found.record) if found else None)


def _open_tail(settings: Settings, topics: list[str], wait: float) -> Tail | None:
    """A tail of ``topics`` opened now, or None when not waiting."""
    return Tail(settings.bootstrap_servers, topics) if wait > 0 else None


@dataclass(frozen=True)
class Sent:
    """A MESSAGE sent: the edge's answer, the attempt id the edge derives from it, and its
    outcome (None: none within the wait, or ``unknown`` says why it could not be watched)."""

    answer: SipAnswer
    attempt_id: str
    outcome: Outcome | None
    unknown: str | None = None


def send(settings: Settings, *, from_user: str, to_user: str, text: str, domain: str | None,
         wait: float = 0.0, password: str | None = None, transport: str = "UDP") -> Sent:
    """One SIP MESSAGE to the settings' edge; with ``wait``, wait that long for its Charge or
    Rejection (by attempt id: the edge's SHA-256 of Call-ID, CSeq and method). A digest
    challenge is answered with ``password``, or else with the HA1s the config in force keeps
    for the sending account (read only when the edge challenges)."""
    call_id = f"{uuid.uuid4().hex}@imbill-send"
    credentials = Credentials(from_user, password) if password is not None else (
        lambda: stored_credentials(settings, from_user))
    message = partial(_send, settings, call_id, from_user, to_user, text, domain, credentials, transport)
    try:
        if wait > 0:
            check_reachable(settings.bootstrap_servers, timeout=2.0)
        tail = _open_tail(settings, [settings.topics.charges, settings.topics.rejections], wait)
    except BrokerError as exc:  # the message is still sent; only its outcome cannot be watched
        answer = message()
        return Sent(answer, _attempt_id(call_id, answer), None, str(exc))
    try:
        answer = message()
        attempt_id = _attempt_id(call_id, answer)
        found = tail.find(lambda e: e.record.get("attempt_id") == attempt_id, wait) \
            if tail and 200 <= answer.status < 300 else None
    finally:
        if tail:
            tail.close()
    return Sent(answer, attempt_id, Outcome(found.name, found.record) if found else None)


def _attempt_id(call_id: str, answer: SipAnswer) -> str:
    """The attempt id the edge derived: a challenged MESSAGE was accepted at CSeq 2."""
    return attempt_id_for(call_id, 2 if answer.challenged else 1, "MESSAGE")


def _send(settings: Settings, call_id: str, from_user: str, to_user: str, text: str, domain: str | None,
          credentials: Credentials | Callable[[], Credentials | None], transport: str = "UDP") -> SipAnswer:
    where = f"{transport.lower()}://{settings.edge_host}:{settings.edge_port}"
    try:
        return send_message(settings.edge_host, settings.edge_port, from_user=from_user, to_user=to_user,
                            text=text, domain=domain, call_id=call_id, credentials=credentials,
                            transport=transport)
    except (OSError, TimeoutError) as exc:
        raise EdgeUnreachable(f"no SIP edge answers at {where} ({exc.strerror or exc}): start one (`imbill run` "
                              f"or `imbill edge`) or give --host/--port") from exc


def stored_credentials(settings: Settings, sender: str) -> Credentials | None:
    """What the config keeps of the service password of the account ``sender`` (its id or
    an alias): its HA1s, enough to answer a challenge; None without a password."""
    env = current_state(settings.bootstrap_servers, settings.topics).environment(settings.environment)
    accounts = env.accounts.values() if env is not None else ()
    account = next((a for a in accounts if a.account_id == sender), None) or next(
        (a for a in accounts if sender in a.aliases), None)
    if account is None or not account.digest_realm:
        return None
    realm = account.digest_realm
    return Credentials(account.account_id, ha1s={("MD5", realm): account.ha1_md5,
                                                 ("SHA-256", realm): account.ha1_sha256})


def generate_traffic(settings: Settings, count: int, accounts: list[str], destinations: list[str],
                     seed: int) -> int:
    """Synthetic MessageAttempt events, as the edge would publish them (the traffic generator)."""
    rng = random.Random(seed)
    check_reachable(settings.bootstrap_servers)
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


@contextmanager
def _database(settings: Settings, table: str) -> Iterator[Engine]:
    """The projection database, with ``table`` in it; every way it can fail is one line."""
    try:
        engine = connect(settings.database_url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise DatabaseUnavailable(f"cannot use the database URL {settings.database_url!r} ({exc}): give "
                                  f"--database-url or IMBILL_DATABASE_URL, e.g. sqlite:///imbill.db") from exc
    shown = engine.url.render_as_string(hide_password=True)
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:") \
            and not Path(engine.url.database).exists():
        engine.dispose()
        raise ImbillError(f"no database at {engine.url.database}: run `imbill project` first (or `imbill run`), "
                          f"or give --database-url / IMBILL_DATABASE_URL")
    try:
        if not sa.inspect(engine).has_table(table):
            raise ImbillError(f"no {table} table in {shown}: run `imbill project` first")
        yield engine
    except sa.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DatabaseUnavailable(f"cannot read the projections in {shown}: {reason}") from exc
    finally:
        engine.dispose()


ALL_XDRS = XdrFilter()


def xdrs(settings: Settings, where: XdrFilter = ALL_XDRS, *, limit: int | None = None,
         newest_first: bool = True) -> list[dict[str, Any]]:
    """xDR rows of the settings' environment from the projection database, newest first."""
    with _database(settings, "xdr") as engine:
        return query_xdrs(engine, where=_in_environment(settings, where), limit=limit, newest_first=newest_first)


def xdr_revisions(settings: Settings, where: XdrFilter = ALL_XDRS, *, limit: int | None = None,
                  newest_first: bool = True) -> list[dict[str, Any]]:
    """Every revision (a charge and its corrections) of the xDRs of the settings' environment."""
    with _database(settings, "xdr_revision") as engine:
        return query_revisions(engine, _in_environment(settings, where), limit=limit, newest_first=newest_first)


def xdr_totals(settings: Settings, by: str, where: XdrFilter = ALL_XDRS, *, limit: int | None = None,
               newest_first: bool = True) -> list[dict[str, Any]]:
    """xDRs of the settings' environment aggregated ``by`` hour, day, customer, destination or vendor."""
    with _database(settings, "xdr") as engine:
        return aggregate_xdrs(engine, by, _in_environment(settings, where), limit=limit, newest_first=newest_first)


def _in_environment(settings: Settings, where: XdrFilter) -> XdrFilter:
    return replace(where, environment=settings.environment)


def rejections(settings: Settings, *, account: str | None, reason: str | None, since: datetime | None,
               until: datetime | None, limit: int | None, superseded: bool = False) -> list[dict[str, Any]]:
    """Rejected attempts of the settings' environment, newest first (``superseded``: also
    those a correction has charged since)."""
    with _database(settings, "rejected_attempt") as engine:
        return query_rejections(engine, environment=settings.environment, account=account, reason=reason,
                                since=since, until=until, limit=limit, superseded=superseded)


def registrations(settings: Settings, *, account: str | None, now: datetime) -> list[dict[str, Any]]:
    """The live REGISTER bindings of the settings' environment (projection ``registration``)."""
    with _database(settings, "registration") as engine:
        return query_registrations(engine, environment=settings.environment, account=account, now=now)


def balances(settings: Settings, account: str | None = None) -> list[dict[str, Any]]:
    """Balance, model, credit limit, status and last movement of the accounts (or one) of the
    settings' environment, from the projections."""
    with _database(settings, "balance_event") as engine:
        found = query_balances(engine, settings.environment, account)
    if account is not None and not found:
        raise ImbillError(f"environment {settings.environment}: unknown account {account!r} in the projections "
                          f"(`imbill accounts` lists the accounts; `imbill project` brings the projections up to date)")
    return found


def accounts(settings: Settings) -> EnvironmentConfig:
    """The config in force of the settings' environment (its accounts, customers, products)."""
    env = config_at(settings).environment(settings.environment)
    if env is None:
        raise ConfigError(f"environment {settings.environment} has no config (imbill config apply FILE)")
    return env


def report(settings: Settings, *, since: datetime, until: datetime, customer: str | None) -> ReportData:
    """What the analysts' report shows of the settings' environment over ``[since, until)``."""
    with _database(settings, "xdr") as engine:
        return report_data(engine, environment=settings.environment, since=since, until=until, customer=customer)

# --- reconcile ------------------------------------------------------------------------------


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
