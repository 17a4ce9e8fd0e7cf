"""The CLI as a user runs it (click's CliRunner), against the session's real broker."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from imbill.broker import start_broker
from imbill.cli import cli
from imbill.domain.errors import BrokerError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "instant-messaging.yaml"
SUBCOMMANDS = ["accounts", "balance", "broker", "config", "edge", "payment", "policy", "process", "project", "rate",
               "rejections", "run", "schemas", "send", "topics", "traffic", "xdr"]


def invoke(*args: str, **env: str):
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "200", "NO_COLOR": "1", **env},
                              catch_exceptions=False)


def test_help_lists_every_subcommand_with_a_sentence():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in SUBCOMMANDS:
        line = next(line for line in result.output.splitlines() if line.strip().startswith(name + " "))
        assert len(line.split(None, 1)[1]) > 10, line


def test_policy_attributes_lists_the_catalogue():
    result = invoke("policy", "attributes", "--service", "messaging")
    assert result.exit_code == 0
    for key in ("msg.billing_unit_size", "msg.outgoing_aaa", "msg.registered_delivery", "audiocodes.cmms.push_events"):
        assert key in result.output
    assert "sip.fake_180_ringing" not in result.output


def test_schemas_lists_every_event_type():
    result = invoke("schemas")
    assert result.exit_code == 0
    for name in ("MessageAttempt", "Charge", "Rejection", "RateDefined", "ServiceStatusChanged"):
        assert name in result.output


def test_broker_on_a_taken_port_fails_loudly():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(BrokerError, match="already in use"):
            start_broker(port=busy.getsockname()[1])


@pytest.mark.integration
def test_topics_and_config_round_trip(bootstrap, topics):
    env = {"IMBILL_BOOTSTRAP_SERVERS": bootstrap, "IMBILL_TOPIC_PREFIX": topics.prefix}
    assert "all existed" in invoke("topics", "create", **env).output
    assert topics.prefix + "imbill.charges" in invoke("topics", "list", **env).output

    first = invoke("config", "apply", str(EXAMPLE), **env)
    assert first.exit_code == 0 and "event(s) appended" in first.output
    assert int(first.output.split(": ")[1].split()[0]) > 10
    again = invoke("config", "apply", str(EXAMPLE), **env)
    assert "0 event(s) appended" in again.output

    shown = invoke("config", "show", **env).output
    assert "On-net messaging" in shown and "MSGN" in shown and "alice-secret" not in shown
    history = invoke("config", "history", **env).output
    assert "TariffDefined" in history and "AccountDefined" in history
    before = invoke("config", "show", "--as-of", "2000-01-01T00:00:00Z", **env).output
    assert "has no config as of 2000-01-01" in before


@pytest.mark.integration
def test_invalid_config_exits_2_and_names_the_problem(bootstrap, topics, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace('unit_price: "0.05"', 'unit_price: "-0.05"'))
    env = {"IMBILL_BOOTSTRAP_SERVERS": bootstrap, "IMBILL_TOPIC_PREFIX": topics.prefix}
    result = invoke("config", "apply", str(bad), **env)
    assert result.exit_code == 2
    assert "bad.yaml" in result.output and "unit_price" in result.output
    assert "has no config" in invoke("config", "show", **env).output


@pytest.mark.integration
def test_payment_for_an_unknown_account_is_refused(bootstrap, topics):
    env = {"IMBILL_BOOTSTRAP_SERVERS": bootstrap, "IMBILL_TOPIC_PREFIX": topics.prefix}
    invoke("config", "apply", str(EXAMPLE), **env)
    result = invoke("payment", "--account", "9999", "--amount", "5", **env)
    assert result.exit_code == 2 and "unknown account '9999'" in result.output
    ok = invoke("payment", "--account", "1001", "--amount", "5.00", **env)
    assert ok.exit_code == 0 and "payment pay-" in ok.output


@pytest.mark.integration
@pytest.mark.parametrize(("amount", "words"), [("1.1234567", "at most 6 decimals"), ("-5", "must be positive"),
                                               ("0", "must be positive"), ("2000000", "at most 1,000,000"),
                                               ("NaN", "must be positive")])
def test_a_payment_that_cannot_be_real_is_refused_in_one_line(bootstrap, topics, amount, words):
    env = {"IMBILL_BOOTSTRAP_SERVERS": bootstrap, "IMBILL_TOPIC_PREFIX": topics.prefix}
    invoke("config", "apply", str(EXAMPLE), **env)
    result = invoke("payment", "--account", "1001", "--amount", amount, **env)
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_xdr_without_a_projection_says_what_to_do(tmp_path):
    result = invoke("--database-url", f"sqlite:///{tmp_path / 'none.db'}", "xdr")
    assert result.exit_code == 2 and "no database at" in result.output and "imbill project" in result.output
    assert not (tmp_path / "none.db").exists()  # looking did not create it
    empty = tmp_path / "empty.db"
    sa.create_engine(f"sqlite:///{empty}").connect().close()
    result = invoke("--database-url", f"sqlite:///{empty}", "xdr")
    assert result.exit_code == 2 and "run `imbill project` first" in result.output
