"""Shared fixtures: one local broker per test session, fresh topics per test, databases."""

from __future__ import annotations

import itertools
import os
import re
import socket

import pytest
import sqlalchemy as sa
from hypothesis import settings as hypothesis_settings

from imbill.broker import LocalBroker, start_broker
from imbill.bus import create_topics
from imbill.schemas.topics import Topics

hypothesis_settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True)
hypothesis_settings.register_profile("dev", max_examples=100, deadline=None)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "dev")

POSTGRES_URL = os.environ.get("IMBILL_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/imbill_test")
_counter = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def broker():
    """The real Kafka-protocol broker shared by the whole session: the local Tansu (memory
    storage) by default; Apache Kafka in a container with IMBILL_TEST_KAFKA=testcontainers
    where a Docker engine runs (`pip install testcontainers[kafka]`)."""
    if os.environ.get("IMBILL_TEST_KAFKA") == "testcontainers":
        yield from _testcontainers_kafka()
        return
    with start_broker(port=free_port()) as running:
        yield running


def _testcontainers_kafka():
    try:
        from testcontainers.kafka import KafkaContainer
    except ImportError:
        pytest.fail("IMBILL_TEST_KAFKA=testcontainers needs `pip install testcontainers[kafka]`")
    with KafkaContainer().with_kraft() as kafka:
        yield _Bootstrap(kafka.get_bootstrap_server())


class _Bootstrap:
    def __init__(self, servers: str) -> None:
        self.bootstrap_servers = servers


@pytest.fixture
def bootstrap(broker: LocalBroker) -> str:
    return broker.bootstrap_servers


@pytest.fixture
def topics(bootstrap: str) -> Topics:
    """A fresh set of the catalogue's topics, under a prefix no other test uses."""
    named = Topics(prefix=f"t{os.getpid()}-{next(_counter)}.")
    create_topics(bootstrap, named.specs())
    return named


def _postgres_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """Each projection test runs once on SQLite and once on PostgreSQL (a fresh database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'imbill.db'}"
    if not _postgres_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it)")
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    return _fresh_postgres_database(request.node.name)


_created_databases: list[str] = []


def _fresh_postgres_database(test_name: str) -> str:
    name = "imbill_" + re.sub(r"[^a-z0-9]+", "_", test_name.lower())[-40:] + f"_{os.getpid()}"
    _postgres_admin(f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"')
    _created_databases.append(name)
    return POSTGRES_URL.rsplit("/", 1)[0] + "/" + name


def _postgres_admin(*statements: str) -> None:
    admin = sa.create_engine(POSTGRES_URL.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        admin.dispose()


@pytest.fixture(scope="session", autouse=True)
def _drop_test_databases():
    """Every PostgreSQL database a test made is dropped when the session ends."""
    yield
    for name in _created_databases:
        try:
            _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except sa.exc.SQLAlchemyError as exc:  # the session's result stands; say what is left behind
            print(f"test database {name} not dropped: {exc}")
