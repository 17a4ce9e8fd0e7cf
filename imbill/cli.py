"""The `imbill` command: thin click commands over the processes (imbill.wiring), the use
cases (imbill.usecases) and what is shown of them (imbill.presentation)."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path

import click
from rich.console import Console

from imbill import presentation, usecases, wiring
from imbill.domain.errors import ImbillError
from imbill.settings import DEFAULT_EXAMPLE, Settings, load_settings

console = Console(highlight=False)


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ImbillError as exc:
            console.print(f"[red]error:[/red] {exc}")
            sys.exit(2)


@click.group(cls=_Group)
@click.option("--bootstrap-servers", help="Kafka bootstrap servers.")
@click.option("--database-url", help="SQLAlchemy URL of the projections.")
@click.option("--environment", help="Virtual environment (tenant).")
@click.option("--topic-prefix", help="Prefix of every topic name.")
@click.pass_context
def cli(ctx: click.Context, bootstrap_servers, database_url, environment, topic_prefix) -> None:
    """imbill: event-sourced billing for SIP instant messaging on Kafka."""
    ctx.obj = load_settings(bootstrap_servers=bootstrap_servers, database_url=database_url,
                            environment=environment, topic_prefix=topic_prefix)


@cli.command()
@click.option("--port", type=int, default=None, help="TCP port (default 9092, IMBILL_BROKER_PORT).")
@click.option("--memory", is_flag=True, help="Keep nothing: no journal, every record gone when it stops.")
@click.pass_context
def broker(ctx: click.Context, port: int | None, memory: bool) -> None:
    """Run the local Kafka-protocol broker (Tansu) until Ctrl-C; its history is kept in the
    data directory's journal and restored at the next start (unless --memory)."""
    wiring.broker(_settings(ctx), port, console.print, memory=memory)


@cli.group()
def topics() -> None:
    """Create and list the topics of the catalogue."""


@topics.command("create")
@click.pass_context
def topics_create(ctx: click.Context) -> None:
    """Create every topic of the catalogue that does not exist yet (idempotent)."""
    created = usecases.create_all_topics(_settings(ctx))
    console.print(f"created {len(created)} topic(s): {', '.join(created) or 'none, all existed'}")


@topics.command("list")
@click.pass_context
def topics_list(ctx: click.Context) -> None:
    """Print the topic catalogue: name, partitions, key, cleanup policy, events."""
    console.print(presentation.topics_table(_settings(ctx).topic_prefix))


@cli.command()
@click.pass_context
def schemas(ctx: click.Context) -> None:
    """List the Avro schemas (one .avsc per event type) and their fingerprints."""
    console.print(presentation.schemas_table())


@cli.group()
def config() -> None:
    """Apply, show and list the append-only config."""


@config.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def config_apply(ctx: click.Context, file: Path) -> None:
    """Append the events that bring the environment to FILE's config (nothing if equal)."""
    result = usecases.apply_config_file(_settings(ctx), file)
    console.print(f"environment {result.environment}: {len(result.events)} event(s) appended")
    for name, key in result.events:
        console.print(f"  {name} {key}")


@config.command("show")
@click.option("--at", "at", help="Show the config in force at this ISO time.")
@click.pass_context
def config_show(ctx: click.Context, at: str | None) -> None:
    """Print the current config state of the environment (or as it was --at a time)."""
    settings, when = _settings(ctx), _when(at)
    for table in presentation.config_tables(usecases.config_at(settings, when), settings.environment, when):
        console.print(table)


@config.command("history")
@click.pass_context
def config_history(ctx: click.Context) -> None:
    """List the config events of the environment, oldest first."""
    settings = _settings(ctx)
    console.print(presentation.config_history_table(usecases.config_events(settings), settings.environment))


@cli.command()
@click.option("--host", default=None, help="UDP address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="UDP port (default 5060).")
@click.pass_context
def edge(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the SIP edge: MESSAGE -> message-attempt event -> 202 Accepted."""
    wiring.edge(_settings(ctx).with_overrides(edge_host=host, edge_port=port), console.print)


@cli.command()
@click.option("--worker-id", default=None, help="Name of this worker (logs, data dir).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for the worker's local files (default .imbill, IMBILL_DATA_DIR).")
@click.option("--batch-size", type=int, default=4000, show_default=True, help="Most records decided per batch.")
@click.option("--session-timeout", type=float, default=6.0, show_default=True,
              help="Seconds before the group gives up on a worker that died.")
@click.option("--log-level", default="info", show_default=True)
@click.option("--payment-maximum", default=None,
              help="Largest single payment applied (default 1000000, IMBILL_PAYMENT_MAXIMUM).")
@click.option("--attempt-clock-skew", type=float, default=None,
              help="Seconds an attempt may be dated ahead of the clock (default 300, IMBILL_ATTEMPT_CLOCK_SKEW).")
@click.pass_context
def process(ctx: click.Context, worker_id: str | None, data_dir: Path | None, batch_size: int,
            session_timeout: float, log_level: str, payment_maximum: str | None,
            attempt_clock_skew: float | None) -> None:
    """Run a processor worker: policy, destination, units, rating, balance -> charges."""
    try:
        maximum = Decimal(payment_maximum) if payment_maximum is not None else None
    except InvalidOperation:
        raise click.BadParameter(f"not a decimal amount: {payment_maximum!r}", param_hint="--payment-maximum") from None
    settings = _settings(ctx).with_overrides(data_dir=data_dir, payment_maximum=maximum,
                                             attempt_clock_skew=attempt_clock_skew)
    settings.limits  # noqa: B018 - refuse a setting out of range in one line, before starting
    wiring.processor_worker(settings, worker_id, batch_size=batch_size, session_timeout=session_timeout,
                            loglevel=log_level)


@cli.command()
@click.option("--once", is_flag=True, help="Apply what is on the topics now, then exit.")
@click.option("--max-poll-records", type=int, default=500, show_default=True,
              help="Most records applied in one SQL transaction.")
@click.option("--rebuild", is_flag=True,
              help="Build every projection again from offset zero into fresh tables, swap them in at once, exit.")
@click.pass_context
def project(ctx: click.Context, once: bool, max_poll_records: int, rebuild: bool) -> None:
    """Fold charges, rejections, balance, status and config events into SQL tables."""
    if rebuild:
        wiring.rebuild_projections(_settings(ctx), console.print)
        return
    wiring.projectors(_settings(ctx), once, console.print, max_poll_records=max_poll_records)


@cli.command()
@click.option("--account", help="Only this account.")
@click.option("--since", help="From this ISO time.")
@click.option("--until", help="Before this ISO time.")
@click.option("--limit", type=int, default=None)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@click.pass_context
def xdr(ctx: click.Context, account, since, until, limit, fmt) -> None:
    """Print xDRs from the projection (table, CSV or JSON)."""
    settings = _settings(ctx)
    rows = usecases.xdrs(settings, account=account, since=_when(since), until=_when(until), limit=limit)
    if fmt == "table":
        console.print(presentation.xdr_table(rows, settings.environment))
    else:
        click.echo(presentation.format_xdrs(rows, fmt), nl=False)


@cli.group()
def policy() -> None:
    """Service policy catalogue and matching."""


@policy.command("attributes")
@click.option("--service", type=click.Choice(["messaging", "voice", "all"]), default="all")
def policy_attributes(service: str) -> None:
    """List every service policy attribute: section, type, allowed values, default, applies to."""
    console.print(presentation.attributes_table(service))


@policy.command("explain")
@click.option("--account", required=True, help="Sending account id.")
@click.option("--to", "to", required=True, help="Destination, e.g. sip:1002@im.example.com")
@click.option("--user-agent", default=None)
@click.pass_context
def policy_explain(ctx: click.Context, account: str, to: str, user_agent: str | None) -> None:
    """Show which service policies match, which wins, and each effective attribute's source."""
    settings = _settings(ctx)
    explained = usecases.explain_policy(settings, account, to, user_agent)
    for renderable in presentation.explanation(explained.explanation, explained.rated, account=account, to=to,
                                               environment=settings.environment):
        console.print(renderable)


@cli.command()
@click.option("--account", required=True)
@click.option("--amount", required=True, help="Decimal amount, e.g. 10.00")
@click.option("--currency", default=None, help="Defaults to the account's customer currency.")
@click.option("--reference", default="", help="Free text kept on the event.")
@click.pass_context
def payment(ctx: click.Context, account: str, amount: str, currency: str | None, reference: str) -> None:
    """Top up an account's balance (appends a Payment event)."""
    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise click.BadParameter(f"not a decimal amount: {amount}", param_hint="--amount") from None
    payment_id = usecases.top_up(_settings(ctx), account, value, currency, reference)
    console.print(f"payment {payment_id} appended for {account}: {value}")


@cli.command()
@click.option("--from", "from_user", required=True, help="Sending account (SIP username).")
@click.option("--to", "to_user", required=True, help="Destination user part (number or name).")
@click.option("--domain", default=None, help="SIP domain (default: the edge address).")
@click.option("--host", default=None, help="Edge address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Edge port (default 5060).")
@click.argument("text")
@click.pass_context
def send(ctx: click.Context, from_user, to_user, domain, host, port, text) -> None:
    """Send one SIP MESSAGE to the edge and print its answer."""
    settings = _settings(ctx).with_overrides(edge_host=host, edge_port=port)
    answer = usecases.send(settings, from_user=from_user, to_user=to_user, text=text, domain=domain)
    console.print(f"{answer.status} {answer.reason}")
    sys.exit(0 if 200 <= answer.status < 300 else 1)


@cli.command()
@click.option("--count", type=int, default=1000, help="Attempts to generate.")
@click.option("--accounts", default="1001,1002", help="Comma separated sending accounts.")
@click.option("--to", "to_users", default="1002,1001,441234567890", help="Comma separated destinations.")
@click.option("--seed", type=int, default=7)
@click.pass_context
def traffic(ctx: click.Context, count: int, accounts: str, to_users: str, seed: int) -> None:
    """Append generated message attempts (Avro) straight onto the attempts topic."""
    sent = usecases.generate_traffic(_settings(ctx), count, accounts.split(","), to_users.split(","), seed)
    console.print(f"appended {sent} message attempts")


@cli.command()
@click.option("--example", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Config applied when the environment has none (default examples/instant-messaging.yaml).")
@click.pass_context
def run(ctx: click.Context, example: Path | None) -> None:
    """Start broker, topics, edge, processor and projectors together; Ctrl-C stops all."""
    sys.exit(wiring.run(_settings(ctx), example or DEFAULT_EXAMPLE, console.print))


def main() -> None:
    cli(prog_name="imbill")


if __name__ == "__main__":
    main()
