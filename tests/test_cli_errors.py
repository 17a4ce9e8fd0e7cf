"""Every user error is one line naming what was wrong and what to do, a non-zero exit status
and no traceback (a traceback only with --debug); listings are never cut when piped; every
option has a help text. No broker is needed: the broker errors are about there being none."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import time

import click
import pytest
from click.testing import CliRunner

from imbill import usecases
from imbill.cli import cli
from imbill.projections.models import migrate


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


NO_BROKER = f"127.0.0.1:{free_port()}"
NO_EDGE = free_port(socket.SOCK_DGRAM)
NO_POSTGRES = f"postgresql+psycopg://imbill:secret@127.0.0.1:{free_port()}/imbill"


def invoke(*args: str, **env: str):
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "80", "NO_COLOR": "1",
                                                    "IMBILL_BOOTSTRAP_SERVERS": NO_BROKER, **env})


def assert_one_line_error(result, words: str, status: int = 2) -> None:
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and words in lines[0], lines[0]


@pytest.fixture
def projections(tmp_path) -> str:
    """An empty projection database (every table, no rows)."""
    url = f"sqlite:///{tmp_path / 'imbill.db'}"
    migrate(url)
    return url


@pytest.mark.parametrize(("args", "words"), [
    (["xdr", "--since", "garbage"], "'garbage' is not a time: give ISO 8601"),
    (["xdr", "--until", "2026-13-01"], "'2026-13-01' is not a time"),
    (["rejections", "--since", "yesterday"], "'yesterday' is not a time"),
    (["config", "show", "--at", "noon"], "'noon' is not a time"),
    (["xdr", "--limit", "0"], "--limit"),
    (["xdr", "--by", "week"], "'week' is not one of 'hour', 'day', 'customer', 'destination', 'vendor'"),
    (["xdr", "--columns", "account,nope"], "no xDR column nope; the columns are charge_id,"),
    (["xdr", "--format", "parquet"], "parquet is binary: give --output FILE"),
    (["xdr", "--format", "csv", "--output", "/no/such/dir/x.csv"], "no directory /no/such/dir"),
    (["xdr", "--by", "day", "--wide"], "--by shows totals"),
    (["payment", "--account", "1001", "--amount", "ten"], "'ten' is not a decimal amount: give e.g. 10.00"),
    (["payment", "--account", "1001"], "Missing option '--amount'"),
    (["config", "apply", "/no/such/file.yaml"], "'/no/such/file.yaml' does not exist"),
    (["xdr", "--format", "xml"], "'xml' is not one of 'table', 'csv', 'json', 'parquet'"),
    (["nonsense"], "No such command 'nonsense'"),
])
def test_a_bad_option_value_is_one_line_with_what_to_do(args, words):
    result = invoke(*args)
    assert_one_line_error(result, words)
    assert "--help" in result.output  # what to do: the command's help


def test_a_bad_config_file_is_named_before_the_broker_is_looked_for(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("environment: [unclosed\n")
    assert_one_line_error(invoke("config", "apply", str(bad)), "bad.yaml: line 2, column 1: malformed YAML")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x00\x01\xff")
    assert_one_line_error(invoke("config", "apply", str(binary)), "binary.yaml: cannot read")


@pytest.mark.parametrize("args", [
    ["config", "show"], ["config", "history"], ["accounts"], ["topics", "create"],
    ["payment", "--account", "1001", "--amount", "1.00"], ["traffic", "--count", "1"],
    ["policy", "explain", "--account", "1001", "--to", "sip:1002@example.com"],
])
def test_no_broker_is_said_within_5_seconds_with_its_address(args):
    started = time.monotonic()
    result = invoke(*args)
    assert time.monotonic() - started < 5
    assert_one_line_error(result, f"no Kafka broker answers at {NO_BROKER}: start one (`imbill run`")


@pytest.mark.parametrize(("amount", "words"), [
    ("1.1234567", "a payment has at most 6 decimals, got 1.1234567"), ("-5", "a payment must be positive"),
    ("NaN", "a payment must be positive"), ("2000000", "a payment may be at most 1,000,000")])
def test_a_payment_amount_that_cannot_be_is_said_before_the_broker_is_asked(amount, words):
    result = invoke("payment", "--account", "1001", "--amount", amount)
    assert_one_line_error(result, words)
    assert "Scale provided" not in result.output


def test_no_edge_answering_is_one_line_naming_the_address():
    started = time.monotonic()
    result = invoke("send", "--from", "9999", "--to", "1002", "--port", str(NO_EDGE), "--wait", "0", "hello")
    assert time.monotonic() - started < 5
    assert_one_line_error(result, f"no SIP edge answers at udp://127.0.0.1:{NO_EDGE}")
    assert "`imbill run` or `imbill edge`" in result.output


@pytest.mark.parametrize(("url", "words"), [
    ("foo://nowhere", "cannot use the database URL 'foo://nowhere'"),
    (NO_POSTGRES, "cannot read the projections in postgresql+psycopg://imbill:***@127.0.0.1"),
])
def test_an_unusable_database_is_one_line(url, words):
    result = invoke("--database-url", url, "xdr")
    assert_one_line_error(result, words)
    assert "secret" not in result.output


def test_an_unknown_account_has_no_balance(projections):
    result = invoke("--database-url", projections, "balance", "--account", "9999")
    assert_one_line_error(result, "unknown account '9999' in the projections (`imbill accounts` lists")


def test_debug_shows_the_traceback():
    result = invoke("--debug", "--database-url", "foo://nowhere", "xdr")
    assert result.exit_code == 2
    assert "Traceback" in result.output and "error: cannot use the database URL" in result.output


def test_an_unexpected_error_is_one_line_and_exit_70(monkeypatch, projections):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(usecases, "xdrs", broken)
    result = invoke("--database-url", projections, "xdr")
    assert_one_line_error(result, "unexpected RuntimeError: a bug (run again with --debug", status=70)


def test_the_real_process_prints_one_line_on_stderr_and_nothing_on_stdout():
    done = subprocess.run([sys.executable, "-m", "imbill", "xdr", "--since", "garbage"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: Invalid value for '--since': 'garbage' is not a time")


def test_policy_attributes_piped_into_grep_finds_the_whole_row():
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run(f"{sys.executable} -m imbill policy attributes | grep billing_unit_size", shell=True,
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "msg.billing_unit_size" in done.stdout
    assert "Characters charged as one message; undefined: one unit per message." in done.stdout
    assert "…" not in done.stdout


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_every_listing_command_has_csv_and_json(fmt):
    for args in (["policy", "attributes"], ["schemas"], ["topics", "list"]):
        result = invoke(*args, "--format", fmt)
        assert result.exit_code == 0, result.output
        rows = json.loads(result.output) if fmt == "json" else list(csv.DictReader(io.StringIO(result.output)))
        assert len(rows) > 5 and all(isinstance(row, dict) for row in rows)


def _commands(group: click.Group, path: str = "imbill"):
    for name, command in group.commands.items():
        yield f"{path} {name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{path} {name}")


def test_every_option_has_a_help_text():
    missing = [f"{path} {param.opts[0]}" for path, command in [("imbill", cli), *_commands(cli)]
               for param in command.params if isinstance(param, click.Option) and not param.help]
    assert missing == []


def test_listing_commands_offer_the_three_formats():
    listing = ["imbill xdr", "imbill balance", "imbill rejections", "imbill accounts", "imbill policy attributes",
               "imbill schemas", "imbill topics list", "imbill config show", "imbill config history"]
    commands = dict(_commands(cli))
    for path in listing:
        option = next(p for p in commands[path].params if p.name == "fmt")
        assert {"table", "csv", "json"} <= set(option.type.choices), path
