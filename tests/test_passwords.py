"""No service password in clear anywhere imbill writes or prints: not on the config topic
(config apply hashes it), not in SQL (the projector redacts a record written before, and
migration 0005 rewrites rows projected before), not in `imbill config show/history`, nor in
the logs. An account whose old record carried its password in clear still authenticates
(the fold turns it into HA1s), and `imbill send` answers the edge's challenge with the HA1s
of the config in force, or with --password."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from kafka import KafkaProducer

from imbill.producers.config_publisher import apply_config
from imbill.projections.models import ConfigEvent, ConfigObject, connect, migrate
from imbill.projections.projector import ConfigProjector
from imbill.schemas.codec import register_writer
from tests.test_end_to_end import free_port_udp, spawn, stop, wait_for_edge

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "instant-messaging.yaml"
OLD_ACCOUNT = ROOT / "schemas" / "avro" / "history" / "AccountDefined.1.avsc"
SECRETS = ("alice-secret", "bob-secret", "hunter2")


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def legacy_account(account_id: str, password: str) -> bytes:
    """An AccountDefined as imbill wrote it before passwords were hashed."""
    record = {"event_id": f"legacy-{account_id}", "environment": "default",
              "occurred_at": datetime(2026, 3, 1, tzinfo=timezone.utc), "account_id": account_id,
              "customer": "Example Corp", "product": "Messaging", "service_password": password, "aliases": [],
              "service_policy": None, "balance_model": "postpaid", "opening_balance": Decimal("0.000000"),
              "credit_limit": Decimal("5.000000")}
    return register_writer(OLD_ACCOUNT.read_text()).encode(record)


def append_raw(bootstrap: str, topic: str, value: bytes) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    producer.send(topic, key=b"default", value=value).get(timeout=10)
    producer.close()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imbill", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_no_password_in_sql_nor_in_the_cli_and_an_old_account_still_authenticates(
        bootstrap, topics, database_url, tmp_path):
    apply_config(EXAMPLE, bootstrap_servers=bootstrap, topics=topics)
    append_raw(bootstrap, topics.config, legacy_account("1003", "hunter2"))
    with ConfigProjector(database_url, bootstrap, topics) as projector:
        projector.run_until_idle()
    engine = connect(database_url)
    with engine.connect() as conn:
        events = [dict(r) for r in conn.execute(sa.select(ConfigEvent.__table__)).mappings()]
        objects = {r["key"]: dict(r) for r in conn.execute(
            sa.select(ConfigObject.__table__).where(ConfigObject.kind == "account")).mappings()}
    engine.dispose()
    stored = json.dumps(events, default=str) + json.dumps(objects, default=str)
    assert not any(secret in stored for secret in SECRETS)
    assert json.loads(objects["1003"]["body"])["ha1_md5"] == md5("1003:default:hunter2")

    port = free_port_udp()
    env = dict(os.environ, IMBILL_BOOTSTRAP_SERVERS=bootstrap, IMBILL_TOPIC_PREFIX=topics.prefix,
               IMBILL_EDGE_PORT=str(port), IMBILL_DATA_DIR=str(tmp_path / "data"), COLUMNS="200")
    edge = spawn("edge", env=env)
    try:
        wait_for_edge(port)
        stored_ha1 = cli(env, "send", "--from", "1003", "--to", "1001", "hello from an old account")
        alias = cli(env, "send", "--from", "alice", "--to", "1002", "alice by her alias")
        password = cli(env, "send", "--from", "1002", "--to", "1001", "--password", "bob-secret", "hi")
        wrong = cli(env, "send", "--from", "1002", "--to", "1001", "--password", "hunter2", "hi")
        printed = [cli(env, "config", "show"), cli(env, "config", "history"),
                   cli(env, "config", "apply", str(EXAMPLE))]
    finally:
        stop(edge)
        edge_log = edge.stderr.read().decode() if edge.stderr else ""
    assert stored_ha1.stdout.startswith("202") and alias.stdout.startswith("202"), stored_ha1.stdout + alias.stderr
    assert password.stdout.startswith("202") and password.returncode == 0
    assert wrong.stdout.startswith("401") and wrong.returncode == 1
    ha1s = [json.loads(o["body"])[name] for o in objects.values() for name in ("ha1_md5", "ha1_sha256")]
    for output in [*(p.stdout + p.stderr for p in printed), edge_log]:
        assert not any(secret in output for secret in SECRETS)
        assert not any(ha1 in output for ha1 in ha1s)
    assert "***" in printed[0].stdout and "1003" in printed[0].stdout


def test_migration_0005_rewrites_rows_projected_with_a_clear_password(database_url):
    migrate(database_url, "0004")  # the revision before 0005
    engine = connect(database_url)
    at = datetime(2026, 3, 1, tzinfo=timezone.utc)
    old_record = {"account_id": "1003", "aliases": [], "customer": "C", "service_password": "hunter2"}
    with engine.begin() as conn:
        conn.execute(ConfigEvent.__table__.insert(), [
            {"source_topic": "imbill.config", "source_partition": 0, "source_offset": 7, "event_id": "e7",
             "environment": "default", "name": "AccountDefined", "kind": "account", "key": "1003", "occurred_at": at,
             "record": json.dumps(old_record, sort_keys=True)},
            {"source_topic": "imbill.config", "source_partition": 0, "source_offset": 8, "event_id": "e8",
             "environment": "default", "name": "CustomerDefined", "kind": "customer", "key": "C", "occurred_at": at,
             "record": json.dumps({"name": "C", "currency": "USD"}, sort_keys=True)}])
        conn.execute(ConfigObject.__table__.insert(), [
            {"environment": "default", "kind": "account", "key": "1003", "body": json.dumps(old_record),
             "updated_at": at, "event_id": "e7"},
            {"environment": "default", "kind": "account", "key": "1004", "updated_at": at, "event_id": "e9",
             "body": json.dumps({"account_id": "1004", "service_password": ""})}])
    engine.dispose()
    migrate(database_url)
    engine = connect(database_url)
    with engine.connect() as conn:
        records = {r.event_id: json.loads(r.record) for r in conn.execute(sa.select(ConfigEvent.__table__))}
        bodies = {r.key: json.loads(r.body) for r in conn.execute(sa.select(ConfigObject.__table__))}
    engine.dispose()
    assert records == {"e7": {"account_id": "1003", "aliases": [], "customer": "C"},
                       "e8": {"name": "C", "currency": "USD"}}
    assert bodies["1003"] == {"account_id": "1003", "aliases": [], "customer": "C", "digest_realm": "default",
                              "ha1_md5": md5("1003:default:hunter2"),
                              "ha1_sha256": hashlib.sha256(b"1003:default:hunter2").hexdigest()}
    assert bodies["1004"] == {"account_id": "1004", "digest_realm": "", "ha1_md5": "", "ha1_sha256": ""}
