"""The one wiring place: settings, broker, database, edge, processors and projectors are
assembled here; the CLI calls these functions and nothing else reads the environment."""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable

from rich.table import Table

from imbill.broker import start_broker
from imbill.bus import EventProducer, create_topics
from imbill.domain.errors import ConfigError, ImbillError
from imbill.schemas.codec import schemas
from imbill.settings import Settings
from imbill.schemas.topics import CATALOGUE

Say = Callable[[str], None]


def serve_broker(settings: Settings, port: int | None, say: Say) -> None:
    broker = start_broker(port=port or settings.broker_port)
    say(f"local broker on {broker.bootstrap_servers} (Tansu, memory storage); Ctrl-C stops it")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while broker.alive() and not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()


def create_all_topics(settings: Settings) -> list[str]:
    return create_topics(settings.bootstrap_servers, settings.topics.specs(), settings.replication_factor)


def topics_table(settings: Settings) -> Table:
    table = Table("topic", "partitions", "key", "cleanup", "retention", "events", title="Topic catalogue")
    for spec in CATALOGUE:
        retention = "forever" if spec.retention_ms < 0 else f"{spec.retention_ms} ms"
        table.add_row(settings.topic_prefix + spec.name, str(spec.partitions), spec.key,
                      spec.cleanup_policy, retention, ", ".join(spec.events) or "(faust changelog)")
    return table


def schemas_table() -> Table:
    table = Table("schema", "namespace", "fingerprint (CRC-64-AVRO, LE)", "fields", title="Avro schemas")
    for name, schema in schemas().items():
        namespace, _, _ = schema.parsed["name"].rpartition(".")
        table.add_row(name, namespace, schema.header[2:].hex(), str(len(schema.parsed["fields"])))
    return table


def _account(settings: Settings, account_id: str):
    from imbill.producers.config_publisher import current_state

    env = current_state(settings.bootstrap_servers, settings.topics).environment(settings.environment)
    account = env.accounts.get(account_id) if env else None
    if account is None:
        raise ConfigError(f"environment {settings.environment}: unknown account {account_id!r}")
    return env, account


def top_up(settings: Settings, account_id: str, amount: Decimal, currency: str | None, reference: str) -> str:
    env, account = _account(settings, account_id)
    customer_currency = env.customers[account.customer].currency
    if currency and currency != customer_currency:
        raise ConfigError(f"account {account_id}: payment currency {currency} differs from the "
                          f"customer's currency {customer_currency}")
    if amount <= 0:
        raise ConfigError(f"account {account_id}: a payment must be positive, got {amount}")
    payment_id = "pay-" + uuid.uuid4().hex
    record = {"payment_id": payment_id, "environment": settings.environment, "account": account_id,
              "amount": amount, "currency": customer_currency, "received_at": datetime.now(timezone.utc),
              "reference": reference}
    producer = EventProducer(settings.bootstrap_servers)
    try:
        producer.publish(settings.topics.payments, f"{settings.environment}/{account_id}", "Payment", record)
    finally:
        producer.close()
    return payment_id


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
            producer.send(settings.topics.attempts, f"{settings.environment}/{sender}", "MessageAttempt", attempt)
        producer.flush()
    finally:
        producer.close()
    return count


def synthetic_attempt(environment: str, sender: str, to_user: str, *, body_chars: int, call_id: str,
                      received_at: datetime | None = None, domain: str = "127.0.0.1") -> dict:
    from imbill.producers.attempt import attempt_id_for

    return {"attempt_id": attempt_id_for(call_id, 1, "MESSAGE"),
            "received_at": received_at or datetime.now(timezone.utc), "environment": environment,
            "direction": "outgoing", "call_id": call_id, "cseq": 1, "from_user": sender,
            "from_domain": domain, "to_user": to_user, "to_domain": domain,
            "request_uri": f"sip:{to_user}@{domain}", "user_agent": "imbill-traffic",
            "content_type": "text/plain", "body_chars": body_chars, "body_bytes": body_chars,
            "source_ip": "127.0.0.1", "source_port": 5070, "transport": "UDP", "edge_id": "traffic"}


def serve_edge(settings: Settings, say: Say) -> None:
    """Run the SIP edge until Ctrl-C/SIGTERM, publishing attempts to the attempts topic.

    The edge runs on uvloop, and once started the objects of start-up are frozen out of the
    garbage collector's way (gc.freeze), so full collections do not walk them again."""
    import gc

    import uvloop

    from imbill.producers.attempt_publisher import AttemptPublisher
    from imbill.producers.edge import serve_edge as run_edge

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    edge_id = f"edge-{settings.edge_host}:{settings.edge_port}"

    def started(edge) -> None:
        gc.freeze()
        say(f"SIP edge {edge_id} listening on udp://{settings.edge_host}:{settings.edge_port}, "
            f"environment {settings.environment}")

    async def edge() -> None:
        async with AttemptPublisher(settings.bootstrap_servers, settings.topics.attempts) as publisher:
            await run_edge(publisher, environment=settings.environment, edge_id=edge_id,
                           host=settings.edge_host, port=settings.edge_port, on_started=started,
                           vendor_peers=frozenset(settings.edge_vendor_peers))

    _run_until_signal(edge())


def _run_until_signal(coroutine) -> None:
    """Run a coroutine until it ends or SIGINT/SIGTERM cancels it."""

    async def main() -> None:
        task = asyncio.ensure_future(coroutine)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(main())


def apply_config_file(settings: Settings, path: Path):
    from imbill.producers.config_publisher import apply_config

    return apply_config(path, bootstrap_servers=settings.bootstrap_servers, topics=settings.topics)


def config_tables(settings: Settings, at: datetime | None) -> list:
    from imbill.producers.config_publisher import current_state, describe

    state = current_state(settings.bootstrap_servers, settings.topics, until=at)
    if state.environment(settings.environment) is None:
        return [f"environment {settings.environment} has no config"
                + (f" at {at.isoformat()}" if at else "") + " (imbill config apply FILE)"]
    when = f" at {at.isoformat()}" if at else ""
    tables = []
    for kind in describe(state, settings.environment):
        table = Table(*kind.columns, title=f"{kind.kind} ({settings.environment}{when})")
        for row in kind.rows:
            table.add_row(*row)
        tables.append(table)
    return tables


def config_history_table(settings: Settings) -> Table:
    from imbill.producers.config_publisher import config_history

    table = Table("offset", "occurred at", "event", "object", title=f"Config history ({settings.environment})")
    for entry in config_history(settings.bootstrap_servers, settings.topics, settings.environment):
        table.add_row(str(entry.offset), entry.occurred_at.isoformat(), entry.event, entry.key)
    return table


def attributes_table(service: str) -> Table:
    from imbill.domain.catalogue import CATALOGUE_COLUMNS, catalogue_rows

    table = Table(*CATALOGUE_COLUMNS, title="Service policy attributes")
    for row in catalogue_rows(None if service == "all" else service):
        table.add_row(*row)
    return table


def serve_projectors(settings: Settings, once: bool, say: Say) -> None:
    """The xDR and config projectors, one thread each, until Ctrl-C/SIGTERM (or idle, with once)."""
    from imbill.projections.projector import ConfigProjector, Projector

    projectors = [Projector(settings.database_url, settings.bootstrap_servers, settings.topics),
                  ConfigProjector(settings.database_url, settings.bootstrap_servers, settings.topics)]
    try:
        if once:
            for projector in projectors:
                say(f"projector {projector.name}: {projector.run_until_idle(timeout=300)} records applied")
            return
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        threads = [threading.Thread(target=p.run, args=(stop,), name=f"projector-{p.name}", daemon=True)
                   for p in projectors]
        for thread in threads:
            thread.start()
        say(f"projectors {', '.join(p.name for p in projectors)} writing to {settings.database_url}")
        while not stop.wait(0.5):
            if not all(t.is_alive() for t in threads):
                raise SystemExit("a projector thread died; see the log")
        for thread in threads:
            thread.join(timeout=10)
    finally:
        for projector in projectors:
            projector.close()


def xdr_report(settings: Settings, *, account: str | None, since: datetime | None, until: datetime | None,
               limit: int | None, fmt: str):
    import sqlalchemy as sa

    from imbill.projections.models import connect
    from imbill.projections.queries import SUMMARY_COLUMNS, format_xdrs, query_xdrs

    engine = connect(settings.database_url)
    try:
        if not sa.inspect(engine).has_table("xdr"):
            raise ImbillError(f"no xdr table in {settings.database_url}: run `imbill project` first")
        rows = query_xdrs(engine, account=account, environment=settings.environment, since=since,
                          until=until, limit=limit)
    finally:
        engine.dispose()
    if fmt != "table":
        return format_xdrs(rows, fmt)
    table = Table(*SUMMARY_COLUMNS, title=f"xDRs ({settings.environment}, {len(rows)} rows)")
    for row in rows:
        table.add_row(*(_cell(row[column]) for column in SUMMARY_COLUMNS))
    return table


def _cell(value) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, Decimal):
        return format(value, "f")
    return "" if value is None else str(value)


def explain_policy(settings: Settings, account: str, to: str, user_agent: str | None) -> list:
    """Tables for `imbill policy explain`: the policies and their roles, the effective
    attributes and their sources, and how a message sent now would be rated."""
    from imbill.producers.config_publisher import current_state
    from imbill.domain.policy import explain
    from imbill.domain.rating import Refused, rate_attempt

    state = current_state(settings.bootstrap_servers, settings.topics)
    env = state.environment(settings.environment)
    if env is None:
        raise ConfigError(f"environment {settings.environment} has no config (imbill config apply FILE)")
    to_user, _, to_domain = to.removeprefix("sip:").removeprefix("sips:").partition("@")
    result = explain(env, account=account, to_domain=to_domain or settings.edge_host, user_agent=user_agent)
    policies = Table("service policy", "role", "match priority", "pattern",
                     title=f"Service policies for {account} -> {to} ({settings.environment})")
    for row in result.policies:
        policies.add_row(row.name, row.role, str(row.match_priority), row.pattern or "")
    attributes = Table("attribute", "value", "source", "static", "dynamic", "default", title="Effective attributes")
    for row in result.attributes:
        attributes.add_row(row.attribute, *(_shown(v) for v in (row.value,)), row.source,
                           *(_shown(v) for v in (row.static_value, row.dynamic_value, row.default)))
    now = datetime.now(timezone.utc)
    attempt = synthetic_attempt(settings.environment, account, to_user, body_chars=1, call_id="explain",
                                received_at=now, domain=to_domain or settings.edge_host)
    rated = rate_attempt(attempt, state, rated_at=now)
    if isinstance(rated, Refused):
        outcome = f"A message sent now would be rejected: {rated.reason_code} ({rated.message})"
    else:
        where = "on-net" if rated.on_net else "off-net"
        vendor = f", via {rated.vendor} / {rated.connection} (cost {rated.vendor_cost} {rated.vendor_currency})" \
            if rated.vendor else ""
        outcome = (f"A message sent now is {where} to {rated.destination}: rate code {rated.rate_code} in tariff "
                   f"{rated.tariff}, {rated.unit_price} {rated.currency} per billing unit{vendor}")
    return [policies, attributes, outcome]


def _shown(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def serve_processor(settings: Settings, worker_id: str | None, *, batch_size: int = 4000,
                    session_timeout: float = 6.0, loglevel: str = "info") -> None:
    """One processor worker (faust) until Ctrl-C/SIGTERM; several share the partitions."""
    from imbill.streams.worker import run_worker

    run_worker(settings.bootstrap_servers, settings.topics, app_id=settings.topic_prefix + settings.processor_id,
               data_dir=settings.data_dir, worker_id=worker_id, loglevel=loglevel, batch_size=batch_size,
               session_timeout=session_timeout)
