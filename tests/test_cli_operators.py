"""Operators see what happened, as a user runs the CLI: `imbill send` prints the charge or
the rejection of its message, `imbill payment` the new balance, and `imbill balance`,
`imbill rejections` and `imbill accounts` list them. The real edge and processor run as
processes on the session's broker; the projectors are the real ones."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from click.testing import CliRunner

from imbill.bus import EventProducer
from imbill.cli import cli
from imbill.producers.config_publisher import apply_config
from imbill.projections.models import connect
from imbill.projections.projector import ConfigProjector, XdrProjector
from imbill.projections.queries import query_balances, query_rejections
from tests.test_end_to_end import EXAMPLE, engine_env, spawn, stop, wait_for_edge  # noqa: F401 - a fixture

pytestmark = [pytest.mark.integration]

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def imbill(env: dict[str, str], *args: str):
    return CliRunner().invoke(cli, list(args), env={**env, "COLUMNS": "200", "NO_COLOR": "1"})


def project(database_url: str, bootstrap: str, topics) -> None:
    for projector in (XdrProjector(database_url, bootstrap, topics), ConfigProjector(database_url, bootstrap, topics)):
        with projector:
            projector.run_until_idle()


def test_send_and_payment_print_what_the_processor_made_of_them(engine_env, bootstrap, topics, tmp_path):
    env = {**engine_env, "IMBILL_DATABASE_URL": f"sqlite:///{tmp_path / 'imbill.db'}"}
    edge = spawn("edge", env=env)
    processor = spawn("process", "--worker-id", "cli", env=env)
    try:
        wait_for_edge(int(env["IMBILL_EDGE_PORT"]))
        charged = imbill(env, "send", "--from", "1001", "--to", "1002", "--wait", "60", "Hello Bob")
        assert charged.exit_code == 0, charged.output
        assert charged.output.splitlines() == [
            "202 Accepted",
            "charged 0.05 USD to 1001: 1 billing unit, on-net to 1002 (rate code MSGN, tariff On-net messaging, "
            "0.05 USD per unit)"]

        rejected = imbill(env, "send", "--from", "1001", "--to", "01133123456789", "--wait", "30", "Bonjour")
        assert rejected.exit_code == 1
        assert rejected.output.splitlines()[0] == "202 Accepted"
        assert rejected.output.splitlines()[1].startswith("rejected: no_rate: "), rejected.output

        stranger = imbill(env, "send", "--from", "9999", "--to", "1002", "--wait", "30", "who am I?")
        assert (stranger.exit_code, stranger.output.splitlines()) == (1, ["401 Unauthorized"])  # no account, no password

        paid = imbill(env, "payment", "--account", "1001", "--amount", "5", "--wait", "30")
        assert paid.exit_code == 0, paid.output
        assert paid.output.splitlines()[1] == "balance of 1001: 14.95 USD (+5.00 USD)"  # 10.00 - 0.05 + 5
    finally:
        stop(processor)

    try:
        unanswered = imbill(env, "payment", "--account", "1002", "--amount", "1.5", "--wait", "1")
        assert unanswered.exit_code == 0
        assert "1.50 USD" in unanswered.output
        assert "no new balance within 1 s: is the processor running" in unanswered.output
        unknown = imbill(env, "send", "--from", "1002", "--to", "1001", "--wait", "1", "anyone?")
        assert unknown.exit_code == 0 and "no charge or rejection within 1 s" in unknown.output
    finally:
        stop(edge)

    project(env["IMBILL_DATABASE_URL"], bootstrap, topics)
    balances = json.loads(imbill(env, "balance", "--format", "json").output)
    assert [(b["account"], b["balance_model"], b["balance"], b["credit_limit"], b["status"]) for b in balances] == [
        ("1001", "prepaid", "14.95", "0.00", "active"), ("1002", "postpaid", "0.00", "50.00", "active")]
    assert balances[0]["last_cause"].startswith("payment pay-") and balances[1]["last_cause"] == "opening balance"
    one = imbill(env, "balance", "--account", "1001")
    assert one.exit_code == 0 and "14.95" in one.output and "1002" not in one.output

    reasons = json.loads(imbill(env, "rejections", "--reason", "no_rate", "--format", "json").output)
    assert [(r["account"], r["reason_code"], r["to_user"]) for r in reasons] == [("1001", "no_rate", "01133123456789")]
    assert "no_rate" in imbill(env, "rejections", "--account", "1001").output
    stranger_rejections = imbill(env, "rejections", "--account", "9999", "--format", "json").output
    assert json.loads(stranger_rejections) == []  # refused at the edge: nothing published, nothing rejected later

    accounts = list(csv.DictReader(io.StringIO(imbill(env, "accounts", "--format", "csv").output)))
    assert [(a["account"], a["customer"], a["product"], a["balance_model"], a["opening_balance"]) for a in accounts] \
        == [("1001", "Example Corp", "Messaging", "prepaid", "10.00"), ("1002", "Example Corp", "Messaging",
                                                                          "postpaid", "0.00")]
    assert "s3cret" not in imbill(env, "accounts").output


def balance_changed(n: int, account: str, balance: str) -> dict:
    return {"event_id": f"bal-{n}", "environment": "default", "account": account, "cause": "charge",
            "cause_id": f"chg-{n}", "delta": Decimal("-0.05"), "balance": Decimal(balance), "currency": "USD",
            "occurred_at": T0 + timedelta(seconds=n)}


def rejection(n: int, account: str, reason: str) -> dict:
    return {"rejection_id": f"rej-{n}", "attempt_id": f"at-{n}", "environment": "default", "account": account,
            "attempted_at": T0 + timedelta(seconds=n), "rejected_at": T0 + timedelta(seconds=n, milliseconds=3),
            "reason_code": reason, "message": f"{reason} message", "to_user": "1002", "to_domain": "example.com"}


def test_balances_and_rejections_queries(database_url, bootstrap, topics):
    """On SQLite and PostgreSQL: the last BalanceChanged per account (else the opening
    balance of the projected config), the last status, and rejections newest first."""
    apply_config(EXAMPLE, bootstrap_servers=bootstrap, topics=topics)
    producer = EventProducer(bootstrap)
    try:
        for n, balance in ((1, "9.95"), (2, "9.90"), (3, "0.00")):
            producer.send(topics.balances, "default/1001", "BalanceChanged", balance_changed(n, "1001", balance))
        producer.send(topics.service_status, "default/1001", "ServiceStatusChanged", {
            "event_id": "st-3", "environment": "default", "account": "1001", "service": "messaging",
            "status": "suspended", "reason": "wallet empty", "cause_id": "chg-3", "occurred_at": T0 + timedelta(3),
            "push_events": False})
        for n, account, reason in ((4, "1001", "service_suspended"), (5, "9999", "unknown_account"),
                                   (6, "1001", "service_suspended")):
            producer.send(topics.rejections, f"default/{account}", "Rejection", rejection(n, account, reason))
        producer.flush()
    finally:
        producer.close()
    project(database_url, bootstrap, topics)

    engine = connect(database_url)
    try:
        balances = query_balances(engine, "default")
        assert [(b["account"], b["balance"], b["status"], b["last_movement"]) for b in balances] == [
            ("1001", Decimal("0.00"), "suspended", T0 + timedelta(seconds=3)), ("1002", Decimal("0"), "active", None)]
        assert query_balances(engine, "default", "9999") == []
        assert [r["rejection_id"] for r in query_rejections(engine, environment="default")] == ["rej-6", "rej-5",
                                                                                              "rej-4"]
        assert [r["rejection_id"] for r in query_rejections(engine, reason="service_suspended", limit=1)] == ["rej-6"]
        assert [r["rejection_id"] for r in query_rejections(engine, account="9999")] == ["rej-5"]
        window = query_rejections(engine, since=T0 + timedelta(seconds=5), until=T0 + timedelta(seconds=6))
        assert [r["rejection_id"] for r in window] == ["rej-5"]
    finally:
        engine.dispose()
