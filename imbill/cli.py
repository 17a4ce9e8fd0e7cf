"""The `imbill` command: thin click commands over the processes (imbill.wiring), the use
cases (imbill.usecases) and what is shown of them (imbill.presentation).

Every user error (a bad option value, a file, an account, no broker, no edge, no database)
ends in one line on stderr naming what was wrong and what to do, and a non-zero exit
status; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import errno
import getpass
import sys
import traceback
from datetime import date, datetime, time, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text as RichText

from imbill import presentation, rerating, usecases, wiring
from imbill.report import render_report
from imbill.domain.errors import ImbillError
from imbill.domain.rerate import RerateFilter
from imbill.projections.queries import AGGREGATIONS, REVISION_COLUMNS, XDR_COLUMNS, XdrFilter
from imbill.settings import DEFAULT_EXAMPLE, Settings, load_settings

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 70


def _console() -> Console:
    """stdout as it is now: the terminal's width on a terminal; when piped or redirected,
    wide enough that no table cell is ever cut (``imbill ... | grep`` finds it)."""
    piped = not sys.stdout.isatty()
    return Console(highlight=False, markup=False, width=100_000 if piped else None, soft_wrap=piped)


def say(message: Any) -> None:
    """Print a line or a table to stdout."""
    _console().print(message)


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj


def _error(message: str) -> None:
    click.echo(f"error: {message}", err=True)


class IsoTime(click.ParamType):
    """An ISO 8601 date or time; without a zone it is UTC."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            try:
                parsed = datetime.combine(date.fromisoformat(str(value).strip()), time())
            except ValueError:
                self.fail(f"{value!r} is not a time: give ISO 8601, e.g. 2026-12-04 or 2026-12-04T09:30:00Z "
                          f"(UTC unless a zone is given)", param, ctx)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class Amount(click.ParamType):
    """A decimal amount of money, e.g. 10.00."""

    name = "AMOUNT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Decimal:
        try:
            return Decimal(str(value).strip())
        except InvalidOperation:
            self.fail(f"{value!r} is not a decimal amount: give e.g. 10.00", param, ctx)


TIME = IsoTime()


def _iso_time(value: str, option: str) -> datetime:
    """An ISO time (UTC unless it names its offset), or one line saying it is not one."""
    try:
        return TIME.convert(value, None, None)
    except click.BadParameter:
        raise ImbillError(f"{option}: not an ISO time: {value!r}") from None


def _write_atomically(path: Path, text: str) -> None:
    """A reader (a browser refreshing) sees the old file or the new one, never half of one."""
    if path.is_dir():
        raise ImbillError(f"cannot write {path}: it is a directory")
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        raise ImbillError(f"cannot write {path}: {exc.strerror or exc}") from None


class _Group(click.Group):
    """Errors as one line: usage errors (bad option values, a missing file) here, the
    engine's own errors and unexpected ones in :meth:`invoke` (tracebacks with --debug)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            returned = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # `imbill` or `imbill config` alone: the help
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if isinstance(exc, click.UsageError) and exc.ctx else ""
            _error(exc.format_message() + hint)
            sys.exit(exc.exit_code)
        except click.Abort:
            _error("aborted")
            sys.exit(1)
        if standalone_mode:
            sys.exit(returned if isinstance(returned, int) else 0)
        return returned

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.Abort, click.exceptions.Exit):
            raise
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise  # the reader went away (`| head`): click ends quietly
            self._fail(ctx, exc, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), EXIT_USER_ERROR)
        except ImbillError as exc:
            self._fail(ctx, exc, str(exc), EXIT_USER_ERROR)
        except Exception as exc:  # noqa: BLE001 - a bug: one line unless --debug
            self._fail(ctx, exc, f"unexpected {type(exc).__name__}: {exc} (run again with --debug for the "
                                 f"traceback, and report it)", EXIT_INTERNAL_ERROR)

    @staticmethod
    def _fail(ctx: click.Context, exc: BaseException, message: str, status: int) -> None:
        if ctx.params.get("debug"):
            traceback.print_exception(exc)
        _error(message)
        sys.exit(status)


FORMAT_HELP = "table (fits the terminal; never cut when piped), csv or json."


def _format_option(*choices: str) -> Any:
    return click.option("--format", "fmt", type=click.Choice(choices or presentation.FORMATS), default="table",
                        show_default=True, help=FORMAT_HELP)


def _show(listing: presentation.Listing, fmt: str) -> None:
    if fmt == "table":
        say(presentation.listing_table(listing))
    else:
        click.echo(presentation.render(listing, fmt), nl=False)


@click.group(cls=_Group)
@click.option("--bootstrap-servers", help="Kafka bootstrap servers (default 127.0.0.1:9092, IMBILL_BOOTSTRAP_SERVERS).")
@click.option("--database-url", help="SQLAlchemy URL of the projections (default sqlite:///imbill.db, "
                                     "IMBILL_DATABASE_URL).")
@click.option("--environment", help="Virtual environment (tenant; default `default`, IMBILL_ENVIRONMENT).")
@click.option("--topic-prefix", help="Prefix of every topic name (default none, IMBILL_TOPIC_PREFIX).")
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
@click.pass_context
def cli(ctx: click.Context, bootstrap_servers, database_url, environment, topic_prefix, debug) -> None:
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
    wiring.broker(_settings(ctx), port, say, memory=memory)


@cli.group()
def topics() -> None:
    """Create and list the topics of the catalogue."""


@topics.command("create")
@click.pass_context
def topics_create(ctx: click.Context) -> None:
    """Create every topic of the catalogue that does not exist yet (idempotent)."""
    created = usecases.create_all_topics(_settings(ctx))
    say(f"created {len(created)} topic(s): {', '.join(created) or 'none, all existed'}")


@topics.command("list")
@_format_option()
@click.pass_context
def topics_list(ctx: click.Context, fmt: str) -> None:
    """Print the topic catalogue: name, partitions, key, cleanup policy, events."""
    _show(presentation.topics_listing(_settings(ctx).topic_prefix), fmt)


@cli.command()
@_format_option()
def schemas(fmt: str) -> None:
    """List the Avro schemas (one .avsc per event type) and their fingerprints."""
    _show(presentation.schemas_listing(), fmt)


@cli.group()
def config() -> None:
    """Apply, show and list the append-only config."""


@config.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def config_apply(ctx: click.Context, file: Path) -> None:
    """Append the events that bring the environment to FILE's config (nothing if equal)."""
    _say_appended(usecases.apply_config_file(_settings(ctx), file))


def _say_appended(result: usecases.ApplyResult) -> None:
    say(f"environment {result.environment}: {len(result.events)} event(s) appended")
    for name, key in result.events:
        note = result.notes.get(key)
        say(f"  {name} {key}" + (f" ({note})" if note else ""))


@config.command("show")
@click.option("--at", "when", type=TIME,
              help="Valid time: only the rates in force at this ISO 8601 time (UTC unless zoned).")
@click.option("--as-of", "as_of", type=TIME,
              help="Record time: the config as it was known at this time (default: now, everything recorded).")
@_format_option()
@click.pass_context
def config_show(ctx: click.Context, when: datetime | None, as_of: datetime | None, fmt: str) -> None:
    """Print the config of the environment as known now (or --as-of a record time), every
    rate or only those in force --at a valid time; csv and json give one row per object
    field (kind, object, field, value)."""
    settings = _settings(ctx)
    state = usecases.config_at(settings, when, as_of)
    if fmt != "table":
        _show(presentation.config_listing(state, settings.environment, when, as_of), fmt)
        return
    for table in presentation.config_tables(state, settings.environment, when, as_of):
        say(table)


@config.command("history")
@_format_option()
@click.pass_context
def config_history(ctx: click.Context, fmt: str) -> None:
    """List the config events of the environment, oldest first, with their record time."""
    settings = _settings(ctx)
    entries = usecases.config_events(settings)
    _show(presentation.config_history_listing(entries, settings.environment, occurred=fmt != "table"), fmt)


@cli.group()
def rate() -> None:
    """Set one rate of a tariff (a new price, or the correction of a past one)."""


@rate.command("set")
@click.option("--tariff", required=True, help="Tariff name, e.g. \"On-net messaging\".")
@click.option("--code", required=True, help="Rate code: MSGN, | (any number) or a destination prefix.")
@click.option("--price", required=True, help="Unit price, e.g. 0.04 (at most 6 decimals).")
@click.option("--effective-from", "effective_from", required=True,
              help="Valid from this ISO 8601 time (UTC unless zoned); the effective_from of a known rate "
                   "corrects that rate.")
@click.option("--description", default=None, help="Description (default: the corrected rate's, or none).")
@click.option("--environment", default=None, help="Virtual environment (default: the global --environment).")
@click.pass_context
def rate_set(ctx: click.Context, tariff: str, code: str, price: str, effective_from: str,
             description: str | None, environment: str | None) -> None:
    """Append one RateDefined, checked as `config apply` checks a file's rate."""
    settings = _settings(ctx)
    if environment is not None:
        settings = settings.with_overrides(environment=environment)
    result = usecases.set_rate(settings, tariff=tariff, code=code, price=price, effective_from=effective_from,
                               description=description)
    _say_appended(result)
    if result.events:
        say("  (a config file with another price for this rate corrects it again when applied: update it)")


@cli.group()
def account() -> None:
    """Change an account after the fact: its product from an instant on (valid time)."""


@account.command("product")
@click.option("--account", "account_id", required=True, help="Account id (SIP username), e.g. 1001.")
@click.option("--product", required=True, help="Product name, e.g. \"IM Gold\".")
@click.option("--effective-from", "effective_from", required=True,
              help="The product applies from this ISO 8601 time on (UTC unless zoned); in the past, "
                   "imbill rerate then corrects the attempts rated since.")
@click.option("--environment", default=None, help="Virtual environment (default: the global --environment).")
@click.pass_context
def account_product(ctx: click.Context, account_id: str, product: str, effective_from: str,
                    environment: str | None) -> None:
    """Append one AccountDefined whose product history says PRODUCT from --effective-from on."""
    settings = _settings(ctx)
    if environment is not None:
        settings = settings.with_overrides(environment=environment)
    result = usecases.set_product(settings, account=account_id, product=product, effective_from=effective_from)
    _say_appended(result)
    if result.events:
        say("  (a config file that lists this account's product_history replaces it when applied: update it)")


@cli.command()
@click.option("--host", default=None, help="Address to listen on, UDP and TCP (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="UDP and TCP port (default 5060).")
@click.option("--guard-failures", type=int, default=None,
              help="Failed authentications from one address that block it (default 10; 0: no guard).")
@click.option("--guard-account-failures", type=int, default=None,
              help="Failures on one account after which each failing address is blocked at once (default 30).")
@click.option("--guard-window", type=float, default=None, help="Seconds failures are counted over (default 60).")
@click.option("--guard-cooldown", type=float, default=None,
              help="Seconds a blocked address is answered 403 (default 300).")
@click.option("--delivery", type=click.Choice(("off", "on", "required")), default=None,
              help="Deliver MESSAGEs to registered recipients: on (default; 202 without a binding), "
                   "required (480 without one) or off.")
@click.option("--delivery-timeout", type=float, default=None,
              help="Seconds to wait for the recipient's final answer before 408 (default 8).")
@click.option("--default-environment", default=None,
              help="Environment of a SIP domain no environment lists (default: the environment, "
                   "while it lists no sip_domains).")
@click.option("--tcp-max-connections", type=int, default=None,
              help="TCP connections open at once (default 1024; 0: UDP only).")
@click.option("--tcp-max-per-source", type=int, default=None,
              help="TCP connections open at once from one address (default 64).")
@click.option("--tcp-idle-timeout", type=float, default=None,
              help="Seconds a TCP connection may stay without a message (default 300).")
@click.pass_context
def edge(ctx: click.Context, host: str | None, port: int | None, guard_failures: int | None,
         guard_account_failures: int | None, guard_window: float | None, guard_cooldown: float | None,
         delivery: str | None, delivery_timeout: float | None, default_environment: str | None,
         tcp_max_connections: int | None, tcp_max_per_source: int | None, tcp_idle_timeout: float | None) -> None:
    """Run the SIP edge (UDP and TCP): MESSAGE -> message-attempt event -> 202 Accepted (or
    the answer of the registered recipient it delivered it to); REGISTER -> bindings."""
    settings = _settings(ctx).with_overrides(
        edge_host=host, edge_port=port, edge_guard_failures=guard_failures,
        edge_guard_account_failures=guard_account_failures, edge_guard_window=guard_window,
        edge_guard_cooldown=guard_cooldown, edge_delivery=delivery, edge_delivery_timeout=delivery_timeout,
        edge_default_environment=default_environment, edge_tcp_max_connections=tcp_max_connections,
        edge_tcp_max_per_source=tcp_max_per_source, edge_tcp_idle_timeout=tcp_idle_timeout)
    settings.guard  # noqa: B018 - refuse a setting out of range in one line, before starting
    settings.delivery  # noqa: B018
    settings.register_limits  # noqa: B018
    settings.tcp  # noqa: B018
    wiring.edge(settings, say)


@cli.command()
@click.option("--worker-id", default=None, help="Name of this worker (logs, data dir).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for the worker's local files (default .imbill, IMBILL_DATA_DIR).")
@click.option("--batch-size", type=int, default=4000, show_default=True, help="Most records decided per batch.")
@click.option("--session-timeout", type=float, default=6.0, show_default=True,
              help="Seconds before the group gives up on a worker that died.")
@click.option("--log-level", default="info", show_default=True, help="debug, info, warning or error.")
@click.option("--payment-maximum", default=None,
              help="Largest single payment applied (default 1000000, IMBILL_PAYMENT_MAXIMUM).")
@click.option("--attempt-clock-skew", type=float, default=None,
              help="Seconds an attempt may be dated ahead of the clock (default 300, IMBILL_ATTEMPT_CLOCK_SKEW).")
@click.pass_context
def process(ctx: click.Context, worker_id: str | None, data_dir: Path | None, batch_size: int,
            session_timeout: float, log_level: str, payment_maximum: str | None,
            attempt_clock_skew: float | None) -> None:
    """Run a processor worker: attempts (policy, destination, units, rating, balance), top-ups and
    re-rating corrections -> charges, rejections, balance and status events."""
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
        wiring.rebuild_projections(_settings(ctx), say)
        return
    wiring.projectors(_settings(ctx), once, say, max_poll_records=max_poll_records)


def _columns(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(c.strip() for c in value.split(",") if c.strip())


def _chosen_columns(ctx: click.Context, columns: tuple[str, ...], revisions: bool) -> tuple[str, ...]:
    """``columns`` when each is a column of the table listed (xdr, or xdr_revision)."""
    known, what = (REVISION_COLUMNS, "xDR revision") if revisions else (XDR_COLUMNS, "xDR")
    unknown = [c for c in columns if c not in known]
    if unknown or not columns:
        raise click.BadParameter(f"no {what} column {', '.join(unknown) or '(none given)'}; the columns are "
                                 f"{', '.join(known)}", ctx, param_hint="'--columns'")
    return columns


@cli.command()
@click.option("--account", help="Only this account.")
@click.option("--customer", help="Only the accounts of this customer.")
@click.option("--destination", help="Only this destination (E.164 number, or the user part).")
@click.option("--direction", type=click.Choice(["outgoing", "incoming"]), help="Only this direction.")
@click.option("--since", type=TIME, help="Attempted at or after this ISO 8601 time (UTC unless zoned).")
@click.option("--until", type=TIME, help="Attempted before this ISO 8601 time (UTC unless zoned).")
@click.option("--attempt", help="Only this attempt id.")
@click.option("--rerate-run", help="Only what this re-rating run made (the xDRs whose latest revision it made; "
                                   "with --revisions, its corrections).")
@click.option("--revisions", is_flag=True, help="Every revision (a charge and each of its corrections, from "
                                                "xdr_revision) instead of the latest of each attempt.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many rows (the newest).")
@click.option("--oldest-first", is_flag=True, help="Oldest first (default: newest first).")
@click.option("--by", type=click.Choice(AGGREGATIONS),
              help="Totals per hour or day (UTC), customer, destination or vendor, and currency: "
                   "xDR count, billing units, amount.")
@click.option("--wide", is_flag=True, help="Every column in the table (default: time, account, destination, "
                                           "billing units, amount, currency).")
@click.option("--columns", callback=_columns, help="These columns, comma separated (any column of the xdr table, or "
                                                   "of xdr_revision with --revisions).")
@click.option("--format", "fmt", type=click.Choice([*presentation.FORMATS, "parquet"]), default="table",
              show_default=True, help="table (fits the terminal; never cut when piped), csv or json (every "
                                      "column unless --columns), parquet (typed; needs --output).")
@click.option("--output", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write csv, json or parquet to this file instead of stdout.")
@click.pass_context
def xdr(ctx: click.Context, account, customer, destination, direction, since, until, attempt, rerate_run, revisions,
        limit, oldest_first, by, wide, columns, fmt, output) -> None:
    """Print xDRs (or their totals --by, or every revision --revisions) from the projection:
    table, CSV, JSON or Parquet. An xDR is an attempt as its latest revision says."""
    if fmt == "parquet" and output is None:
        raise click.UsageError("parquet is binary: give --output FILE", ctx)
    if output is not None and fmt == "table":
        raise click.UsageError("--output writes csv, json or parquet: give --format too", ctx)
    if output is not None and not output.parent.is_dir():
        raise click.BadParameter(f"no directory {output.parent} to write {output.name} in", ctx, param_hint="--output")
    if by and (wide or columns):
        raise click.UsageError("--by shows totals: --wide and --columns choose xDR columns", ctx)
    if by and revisions:
        raise click.UsageError("--by totals the xDRs (the latest revision of each attempt): without --revisions",
                               ctx)
    if columns is not None:
        columns = _chosen_columns(ctx, columns, revisions)
    settings = _settings(ctx)
    where = XdrFilter(account=account, customer=customer, destination=destination, direction=direction,
                      since=since, until=until, attempt_id=attempt, rerate_run=rerate_run)
    if by:
        listing = presentation.xdr_aggregate_listing(
            usecases.xdr_totals(settings, by, where, limit=limit, newest_first=not oldest_first),
            settings.environment, by)
    elif revisions:
        rows = usecases.xdr_revisions(settings, where, limit=limit, newest_first=not oldest_first)
        chosen = columns or (REVISION_COLUMNS if wide or fmt != "table" else presentation.REVISION_SUMMARY_COLUMNS)
        listing = presentation.revision_listing(rows, settings.environment, chosen)
    else:
        rows = usecases.xdrs(settings, where, limit=limit, newest_first=not oldest_first)
        chosen = columns or (XDR_COLUMNS if wide or fmt != "table" else presentation.SUMMARY_COLUMNS)
        listing = presentation.xdr_listing(rows, settings.environment, chosen)
    if output is None:
        _show(listing, fmt)
    elif fmt == "parquet":
        presentation.write_parquet(listing, output)
    else:
        output.write_text(str(presentation.render(listing, fmt)), encoding="utf-8")
    if output is not None:
        click.echo(f"{len(listing.rows)} rows written to {output}", err=True)


@cli.command()
@click.option("--account", help="Only this account.")
@_format_option()
@click.pass_context
def balance(ctx: click.Context, account: str | None, fmt: str) -> None:
    """Balance, balance model, credit limit, messaging status and last movement per account
    (from the projections)."""
    settings = _settings(ctx)
    _show(presentation.balance_listing(usecases.balances(settings, account), settings.environment), fmt)


@cli.command()
@click.option("--account", help="Only this account.")
@click.option("--reason", help="Only this reason code, e.g. unknown_account, insufficient_funds.")
@click.option("--since", type=TIME, help="Attempted at or after this ISO 8601 time (UTC unless zoned).")
@click.option("--until", type=TIME, help="Attempted before this ISO 8601 time (UTC unless zoned).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many rows (the newest).")
@click.option("--wide", is_flag=True, help="Every column (ids, rejection time, domain, superseded_by).")
@click.option("--superseded", is_flag=True, help="Also the rejections a correction has charged since "
                                                 "(superseded_by names that charge).")
@_format_option()
@click.pass_context
def rejections(ctx: click.Context, account, reason, since, until, limit, wide, superseded, fmt) -> None:
    """Rejected attempts, newest first, with their reason code and message (from the projection)."""
    settings = _settings(ctx)
    rows = usecases.rejections(settings, account=account, reason=reason, since=since, until=until, limit=limit,
                               superseded=superseded)
    _show(presentation.rejection_listing(rows, settings.environment, wide or fmt != "table"), fmt)


@cli.command()
@click.option("--account", help="Only this account.")
@_format_option()
@click.pass_context
def registrations(ctx: click.Context, account: str | None, fmt: str) -> None:
    """The live REGISTER bindings: contact, expiry, User-Agent, source (from the projection)."""
    settings = _settings(ctx)
    rows = usecases.registrations(settings, account=account, now=datetime.now(timezone.utc))
    _show(presentation.registration_listing(rows, settings.environment), fmt)


@cli.command()
@_format_option()
@click.pass_context
def accounts(ctx: click.Context, fmt: str) -> None:
    """The accounts of the config in force: customer, currency, product, balance model."""
    settings = _settings(ctx)
    _show(presentation.account_listing(usecases.accounts(settings), settings.environment), fmt)


@cli.command("report")
@click.option("--from", "since", required=True, help="Start of the period, ISO time (UTC unless it says).")
@click.option("--to", "until", required=True, help="End of the period (excluded), ISO time.")
@click.option("--customer", default=None, help="Only this customer.")
@click.option("--output", type=click.Path(path_type=Path), default=Path("imbill-report.html"),
              show_default=True, help="The HTML file to write.")
@click.pass_context
def report_command(ctx: click.Context, since: str, until: str, customer: str | None, output: Path) -> None:
    """Write an HTML report with charts: traffic, revenue, on/off-net, destinations, rejections, margins."""
    start, end = _iso_time(since, "--from"), _iso_time(until, "--to")
    if start >= end:
        raise ImbillError("--from must be before --to")
    data = usecases.report(_settings(ctx), since=start, until=end, customer=customer)
    _write_atomically(output, render_report(data))
    what = "no traffic" if data.empty else f"{data.messages} messages charged, {data.rejected} attempts rejected"
    say(f"wrote {output}: {what}")


@cli.group()
def policy() -> None:
    """Service policy catalogue and matching."""


@policy.command("attributes")
@click.option("--service", type=click.Choice(["messaging", "voice", "all"]), default="all", show_default=True,
              help="Only the attributes of this service type.")
@_format_option()
def policy_attributes(service: str, fmt: str) -> None:
    """List every service policy attribute: section, type, allowed values, default, applies to."""
    _show(presentation.attributes_listing(service), fmt)


@policy.command("explain")
@click.option("--account", required=True, help="Sending account id.")
@click.option("--to", "to", required=True, help="Destination, e.g. sip:1002@im.example.com")
@click.option("--user-agent", default=None, help="User-Agent of the sender (voice policies match on it).")
@click.option("--format", "fmt", type=click.Choice(presentation.FORMATS), default="table", show_default=True,
              help="table; csv (the effective attributes) or json (policies, attributes and outcome).")
@click.pass_context
def policy_explain(ctx: click.Context, account: str, to: str, user_agent: str | None, fmt: str) -> None:
    """Show which service policies match, which wins, and each effective attribute's source."""
    settings = _settings(ctx)
    explained = usecases.explain_policy(settings, account, to, user_agent)
    for shown in presentation.explanation(explained.explanation, explained.rated, account=account, to=to,
                                          environment=settings.environment, fmt=fmt):
        if fmt == "table":
            say(shown)
        else:
            click.echo(shown, nl=False)


WAIT_HELP = "Seconds to wait for what the processor made of it (0: do not wait)."


@cli.command()
@click.option("--account", required=True, help="Account to top up.")
@click.option("--amount", required=True, type=Amount(), help="Decimal amount, e.g. 10.00 (at most 6 decimals).")
@click.option("--currency", default=None, help="Defaults to the account's customer currency.")
@click.option("--reference", default="", help="Free text kept on the event.")
@click.option("--wait", type=click.FloatRange(min=0), default=usecases.OUTCOME_WAIT, show_default=True,
              help=WAIT_HELP)
@click.pass_context
def payment(ctx: click.Context, account: str, amount: Decimal, currency: str | None, reference: str,
            wait: float) -> None:
    """Top up an account's balance (appends a Payment event) and print the new balance."""
    done = usecases.top_up(_settings(ctx), account, amount, currency, reference, wait)
    say(f"payment {done.payment_id} appended for {account}: "
        f"{presentation.money(done.amount, done.currency)} {done.currency}")
    if done.outcome is not None:
        say(presentation.outcome_text(done.outcome.event, done.outcome.record))
        sys.exit(1 if done.outcome.event == "PaymentRejected" else 0)
    if wait > 0:
        say(f"no new balance within {wait:g} s: is the processor running (`imbill run` or `imbill process`)? "
            f"`imbill balance --account {account}` shows it once applied")


@cli.command()
@click.option("--from", "from_user", required=True, help="Sending account (SIP username).")
@click.option("--to", "to_user", required=True, help="Destination user part (number or name).")
@click.option("--domain", default=None, help="SIP domain (default: the edge address).")
@click.option("--host", default=None, help="Edge address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Edge port (default 5060).")
@click.option("--password", default=None,
              help="Service password for the digest challenge (default: the account's HA1 from the config).")
@click.option("--wait", type=click.FloatRange(min=0), default=usecases.OUTCOME_WAIT, show_default=True,
              help=WAIT_HELP)
@click.option("--transport", type=click.Choice(["udp", "tcp"], case_sensitive=False), default="udp",
              show_default=True, help="SIP transport to the edge.")
@click.argument("text")
@click.pass_context
def send(ctx: click.Context, from_user, to_user, domain, host, port, password, wait, transport, text) -> None:
    """Send one SIP MESSAGE to the edge; print its answer and its charge or rejection.

    Exit status: 0 charged (or accepted and not watched), 1 rejected or refused by the edge."""
    settings = _settings(ctx).with_overrides(edge_host=host, edge_port=port)
    sent = usecases.send(settings, from_user=from_user, to_user=to_user, text=text, domain=domain, wait=wait,
                         password=password, transport=transport.upper())
    say(presentation.sip_answer_text(sent.answer.status, sent.answer.reason, sent.answer.raw))
    accepted = 200 <= sent.answer.status < 300
    if sent.outcome is not None:
        say(presentation.outcome_text(sent.outcome.event, sent.outcome.record))
        sys.exit(0 if sent.outcome.event == "Charge" else 1)
    if accepted and sent.unknown:
        say(f"outcome unknown: {sent.unknown}")
    elif accepted and wait > 0:
        say(f"no charge or rejection within {wait:g} s: is the processor running? attempt {sent.attempt_id}; "
            f"see `imbill xdr` and `imbill rejections` later")
    sys.exit(0 if accepted else 1)


@cli.command()
@click.option("--count", type=int, default=1000, help="Attempts to generate.")
@click.option("--accounts", default="1001,1002", help="Comma separated sending accounts.")
@click.option("--to", "to_users", default="1002,1001,441234567890", help="Comma separated destinations.")
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed: the same seed, the same traffic.")
@click.pass_context
def traffic(ctx: click.Context, count: int, accounts: str, to_users: str, seed: int) -> None:
    """Append generated message attempts (Avro) straight onto the attempts topic."""
    sent = usecases.generate_traffic(_settings(ctx), count, accounts.split(","), to_users.split(","), seed)
    say(f"appended {sent} message attempts")


@cli.command()
@click.option("--example", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Config applied when the environment has none (default examples/instant-messaging.yaml).")
@click.pass_context
def run(ctx: click.Context, example: Path | None) -> None:
    """Start broker, topics, edge, processor and projectors together; Ctrl-C stops all."""
    settings = _settings(ctx)
    settings.guard  # noqa: B018 - the edge's settings refused in one line, before anything starts
    sys.exit(wiring.run(settings, example or DEFAULT_EXAMPLE, say))


@cli.command()
@click.option("--environment", "environment", default=None, help="Virtual environment (default: the global one).")
@click.option("--account", default=None, help="Only this account.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              help="table (default), csv or json: one row per difference.")
@click.pass_context
def reconcile(ctx: click.Context, environment: str | None, account: str | None, fmt: str) -> None:
    """Check from the topics that every balance adds up (opening + payments - charges = the
    processor's and the projection's balance) and every attempt has exactly one outcome;
    print the differences, exit 1 if there are any."""
    settings = _settings(ctx).with_overrides(environment=environment)
    report = usecases.reconcile(settings, account)
    listing = presentation.reconcile_listing(report.result.differences, settings.environment)
    summary = presentation.reconcile_summary(report.result, settings.environment, report.projection)
    if listing.rows or fmt != "table":
        _show(listing, fmt)
    click.echo(summary, err=fmt != "table")
    sys.exit(1 if listing.rows else 0)


class _BarProgress:
    """A re-rating's progress as rich bars on stderr (attempts per second, time remaining);
    nothing when stderr is no terminal."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def stage(self, name: str, total: int | None) -> Any:
        task, counted = self.progress.add_task(name, total=total), [0]

        def advance(done: int) -> None:  # a total the broker said short (the local broker's) grows with the count
            counted[0] += done
            self.progress.update(task, advance=done, total=max(total or 0, counted[0]))

        return advance


class _PerSecond(ProgressColumn):
    def render(self, task: Any) -> RichText:
        return RichText(f"{task.speed:,.0f}/s" if task.speed else "", style="progress.data.speed")


def _progress_bars() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _PerSecond(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=False)


@cli.group(invoke_without_command=True)
@click.option("--from", "start", type=TIME, default=None, help="Re-rate attempts received at or after this time "
                                                             "(ISO 8601, UTC unless zoned).")
@click.option("--to", "end", type=TIME, default=None, help="... and before this time (default: now).")
@click.option("--environment", default=None, help="Virtual environment (default: the global --environment).")
@click.option("--account", default=None, help="Only attempts of this account.")
@click.option("--customer", default=None, help="Only attempts of this customer's accounts.")
@click.option("--tariff", default=None, help="Only attempts rated (before or now) with this tariff.")
@click.option("--rate-code", "rate_code", default=None, help="Only attempts rated (before or now) with this rate code.")
@click.option("--dry-run", "dry_run", is_flag=True, help="Only say what would change: append nothing.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every changed attempt to this CSV file (- for stdout).")
@click.option("--resume", default=None, metavar="RUN", help="Finish run RUN (its filter and config, not the options).")
@click.option("--by", "requested_by", default=None, help="Who runs it (default: the login name).")
@click.option("--wait", default=120.0, show_default=True, type=click.FloatRange(0),
              help="Seconds to wait for the processor to apply the corrections.")
@click.pass_context
def rerate(ctx: click.Context, start, end, environment, account, customer, tariff, rate_code, dry_run, csv_path,
           resume, requested_by, wait) -> None:
    """Re-rate the attempts of a period with the config known now and append a correction
    for each changed one (see `rerate list` and `rerate show`)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings(ctx)
    if resume is None and start is None:
        raise click.UsageError("give --from (and --to), or --resume RUN")
    if resume is not None and start is not None:
        raise click.UsageError("--resume RUN re-rates the run's own period: leave out --from/--to")
    end = end or datetime.now(timezone.utc)
    if start is not None and start >= end:
        raise click.UsageError(f"--from {start.isoformat()} is not before --to {end.isoformat()}")
    re_filter = None if resume else RerateFilter(start=start, end=end, environment=environment or settings.environment,
                                                 account=account, customer=customer, tariff=tariff,
                                                 rate_code=rate_code)
    with _progress_bars() as bars:
        report = rerating.rerate_period(settings, re_filter, dry_run=dry_run, resume=resume, wait=wait,
                                        requested_by=requested_by or getpass.getuser(), progress=_BarProgress(bars))
    if report.already_finished:
        say(f"run {report.run.run_id} is finished already: nothing to do")
        return
    for listing in presentation.rerate_listings(report):
        say(presentation.listing_table(listing))
    if csv_path is not None:
        changes = presentation.rerate_changes_listing(report.corrections, "Changed attempts")
        if str(csv_path) == "-":
            click.echo(presentation.listing_csv(changes), nl=False)
        else:
            _write_atomically(csv_path, presentation.listing_csv(changes))
            click.echo(f"{len(report.corrections):,} changed attempts written to {csv_path}", err=True)


@rerate.command("list")
@_format_option()
@click.pass_context
def rerate_list(ctx: click.Context, fmt: str) -> None:
    """Every re-rating run: its latest state, who ran it, what it changed."""
    _show(presentation.rerate_runs_listing(rerating.runs(_settings(ctx))), fmt)


@rerate.command("show")
@click.argument("run_id", metavar="RUN")
@_format_option()
@click.pass_context
def rerate_show(ctx: click.Context, run_id: str, fmt: str) -> None:
    """One re-rating run: its filter, config record time and counts."""
    _show(presentation.rerate_run_listing(rerating.find_run(_settings(ctx), run_id)), fmt)


def main() -> None:
    cli(prog_name="imbill")


if __name__ == "__main__":
    main()
