"""Fuzzing the inputs of a live worker and a live projector with hostile records.

Hypothesis writes random and mutated records onto the attempts, payments and config topics
(garbage bytes, unknown schema fingerprints, valid records with bytes flipped, valid Avro
with hostile values: negative, zero and huge amounts, foreign keys, unknown accounts,
implausible bodies and dates, refused policy attributes, accounts of unknown products,
removals of objects still referred to, environment names with the key separator), then
valid traffic. Afterwards:

- every valid attempt has exactly one outcome, and valid payments are applied;
- no money is created: for every account, opening balance + the payments applied - the
  charges = the balance the processor reports last, and every payment applied is a real
  one (positive, within the limit, keyed to its account);
- every hostile config record has exactly one ConfigEventRejected;
- the worker is still running, and the xDR projection holds exactly the charges.

Then the projectors' own input topics (charges, rejections, balance and service-status
events, config rejections) get hostile records (garbage, unknown fingerprints, valid Avro
with hostile values: huge texts, amounts past decimal(24, 6), far dates,
negative charges, duplicate ids, keys of another account, events on the wrong topic) while
a live xDR projector and a live config projector run: each is skipped with a log line, the
projectors keep running, and the valid records after them are projected exactly.

``make test`` runs a few examples (about a minute); ``IMBILL_FUZZ_EXAMPLES=50 make fuzz``
runs a longer campaign.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imbill.bus import EventProducer, create_topics, read_to_end
from imbill.domain.config import Account, to_record
from imbill.domain.money import PAYMENT_LIMIT
from imbill.projections.projector import ConfigProjector, XdrProjector
from imbill.schemas.codec import MAGIC, encode, record_of
from imbill.schemas.topics import Topics
from tests.builders import ALICE, BOB, ENV, T0, attempt_record, checklist, payment
from tests.samples import SAMPLES
from tests.test_processor import Worker, publish, wait_for

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("IMBILL_FUZZ_EXAMPLES", "4"))
OPENING = {ALICE: Decimal("1.00"), BOB: Decimal("1.00")}  # checklist(): postpaid, credit 5.00
serial = iter(range(10**9))


def _valid_attempt(n: int) -> dict:
    return attempt_record(attempt_id=f"fz-{n}", call_id=f"fz-{n}@fuzz", from_user=ALICE if n % 2 else BOB,
                          to_user=BOB if n % 2 else ALICE, body_chars=10)


def _valid_payment(n: int, amount: str = "0.50") -> dict:
    return record_of(payment(amount, payment_id=f"fzp-{n}", account=ALICE if n % 2 else BOB))


garbage = st.binary(min_size=0, max_size=200)
unknown_schema = st.binary(min_size=8, max_size=8).map(lambda fp: MAGIC + fp + b"\x02\x04ab")


@st.composite
def flipped(draw, valid: bytes) -> bytes:
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    return bytes(data)


@st.composite
def hostile_attempt(draw) -> tuple[bytes, bytes]:
    n = draw(st.integers(0, 10**6))
    key = f"{ENV}/{ALICE}".encode()
    kind = draw(st.sampled_from(["garbage", "unknown", "flipped", "chars", "date", "key", "huge", "hugekey"]))
    if kind == "garbage":
        return key, draw(garbage)
    if kind == "hugekey":  # names no account; its rejection and changelog entry must still fit the broker
        return b"k" * draw(st.sampled_from([9_000, 600_000])), draw(garbage)
    if kind == "unknown":
        return key, draw(unknown_schema)
    record = attempt_record(attempt_id=f"hx-{n}", call_id=f"hx-{n}@fuzz")
    if kind == "flipped":
        return key, draw(flipped(encode("MessageAttempt", record)))
    if kind == "chars":
        record["body_chars"] = draw(st.sampled_from([-500, -1, 2**31 - 1, 100_001]))
    elif kind == "date":
        record["received_at"] = T0.replace(year=2100)
    elif kind == "huge":  # more than a SIP datagram: its rejection must stay small
        record["to_user"] = "9" * draw(st.sampled_from([70_000, 400_000]))
    else:
        key = f"{ENV}/{BOB}".encode()  # keyed to another account than it names
    return key, encode("MessageAttempt", record)


@st.composite
def hostile_payment(draw) -> tuple[bytes, bytes]:
    n = draw(st.integers(0, 10**6))
    key = f"{ENV}/{ALICE}".encode()
    kind = draw(st.sampled_from(["garbage", "unknown", "flipped", "amount", "key", "account", "huge"]))
    if kind == "garbage":
        return key, draw(garbage)
    if kind == "unknown":
        return key, draw(unknown_schema)
    record = record_of(payment("0.50", payment_id=f"hp-{n}"))
    if kind == "flipped":
        return key, draw(flipped(encode("Payment", record)))
    if kind == "amount":
        record["amount"] = Decimal(draw(st.sampled_from(["-100.00", "0", "1000000.01", "999999999999", "1e30"])))
    elif kind == "huge":  # too large to repeat in a rejection and its key
        record["account"] = "1" * 300_000
        key = f"{ENV}/{record['account']}".encode()
    elif kind == "key":
        key = f"{ENV}/{BOB}".encode()
    else:
        record["account"], key = "nobody", f"{ENV}/nobody".encode()
    return key, encode("Payment", record)


@st.composite
def hostile_config(draw) -> tuple[bytes, bytes]:
    kind = draw(st.sampled_from(["garbage", "unknown", "policy", "reference", "removal", "environment"]))
    if kind == "garbage":
        return ENV.encode(), draw(garbage)
    if kind == "unknown":
        return ENV.encode(), draw(unknown_schema)
    envelope = {"event_id": f"hc-{draw(st.integers(0, 10**6))}", "environment": ENV, "occurred_at": T0}
    if kind == "reference":  # an account of a product that does not exist: every attempt of it would fail
        account = Account(draw(st.sampled_from([ALICE, BOB, "hz-acc"])), "Acme", draw(st.sampled_from(["Gold", ""])),
                          balance_model="prepaid", opening_balance=Decimal("1000000"))
        return ENV.encode(), encode("AccountDefined", envelope | to_record(account))
    if kind == "removal":  # still referred to
        removed = draw(st.sampled_from([("product", "IM product"), ("customer", "Acme"), ("tariff", "B")]))
        return ENV.encode(), encode("ConfigObjectRemoved", envelope | {"kind": removed[0], "key": removed[1]})
    if kind == "environment":  # would share keys with another tenant
        return b"a/b", encode("CustomerDefined", envelope | {"environment": f"{ENV}/x", "name": "X",
                                                             "currency": "USD", "description": ""})
    policy = {"event_id": f"hc-{draw(st.integers(0, 10**6))}", "environment": ENV, "occurred_at": T0, "name": "IM",
              "service_type": "messaging", "description": "", "pattern": "%", "match_priority": 99,
              "attributes": {"msg.billing_unit_size": draw(st.sampled_from(["sixty", "0", "-3", "yes"]))}}
    return ENV.encode(), encode("ServicePolicyDefined", policy)


def send_raw(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = EventProducer(bootstrap)
    try:
        for key, value in records:
            producer._producer.send(topic, key=key, value=value)  # raw bytes: what a hostile client writes
        producer.flush()
    finally:
        producer.close()


@pytest.fixture(scope="module")
def live(broker, tmp_path_factory):
    topics = Topics(prefix=f"fuzz{os.getpid()}.")
    create_topics(broker.bootstrap_servers, topics.specs())
    publish(broker.bootstrap_servers, topics.config, [(ENV, name, record) for name, record in checklist().events])
    worker = Worker(broker.bootstrap_servers, topics, tmp_path_factory.mktemp("fuzz"), "fuzz", session_timeout=3)
    worker.wait_ready()
    state = {"valid_attempts": set(), "valid_payments": set(), "hostile_config": 0}
    yield broker.bootstrap_servers, topics, worker, state
    worker.stop()


@settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(attempts=st.lists(hostile_attempt(), min_size=5, max_size=40),
       payments=st.lists(hostile_payment(), min_size=5, max_size=40),
       config=st.lists(hostile_config(), min_size=1, max_size=5))
def test_hostile_records_neither_stop_billing_nor_create_money(live, attempts, payments, config):
    bootstrap, topics, worker, state = live
    send_raw(bootstrap, topics.config, config)
    state["hostile_config"] += len(config)  # every one is refused: one ConfigEventRejected each
    send_raw(bootstrap, topics.attempts, attempts)
    send_raw(bootstrap, topics.payments, payments)
    numbers = [next(serial) for _ in range(6)]
    publish(bootstrap, topics.attempts, [(f"{ENV}/{r['from_user']}", "MessageAttempt", r)
                                         for r in map(_valid_attempt, numbers)])
    publish(bootstrap, topics.payments, [(f"{ENV}/{r['account']}", "Payment", r) for r in map(_valid_payment, numbers)])
    state["valid_attempts"] |= {f"fz-{n}" for n in numbers}
    state["valid_payments"] |= {f"fzp-{n}" for n in numbers}

    outcomes = wait_for(lambda: _outcomes_cover(bootstrap, topics, state), worker, 60, "the valid records' outcomes")
    assert all(len(found) == 1 for found in outcomes.values()), "an attempt has more than one outcome"
    _assert_no_money_created(bootstrap, topics, state)
    rejected = wait_for(lambda: (lambda ids: ids if len(ids) >= state["hostile_config"] else None)(
        [e.record["rejection_id"] for e in read_to_end(bootstrap, topics.config_rejections)]),
        worker, 30, "a ConfigEventRejected per hostile config record")
    assert len(rejected) == len(set(rejected)) == state["hostile_config"]
    assert worker.process.poll() is None, worker.log()[-2000:]


def _outcomes_cover(bootstrap: str, topics, state: dict) -> dict | None:
    found: dict[str, list] = defaultdict(list)
    for topic in (topics.charges, topics.rejections):
        for envelope in read_to_end(bootstrap, topic):
            if envelope.record and "attempt_id" in envelope.record:
                found[envelope.record["attempt_id"]].append(envelope.name)
    applied = {e.record["cause_id"] for e in read_to_end(bootstrap, topics.balances) if e.record["cause"] == "payment"}
    if state["valid_attempts"] <= found.keys() and state["valid_payments"] <= applied:
        return {a: found[a] for a in state["valid_attempts"]}
    return None


def _assert_no_money_created(bootstrap: str, topics, state: dict) -> None:
    payments: dict[str, list] = defaultdict(list)  # (hostile ids repeat: hypothesis draws them)
    for envelope in read_to_end(bootstrap, topics.payments):
        if envelope.record is not None:
            payments[envelope.record["payment_id"]].append((envelope.key, envelope.record))
    charged: dict[str, Decimal] = defaultdict(Decimal)
    for envelope in read_to_end(bootstrap, topics.charges):
        charged[envelope.record["account"]] += envelope.record["amount"]
    paid: dict[str, Decimal] = defaultdict(Decimal)
    last: dict[str, Decimal] = {}
    for envelope in read_to_end(bootstrap, topics.balances):
        record = envelope.record
        if record["cause"] == "payment":
            assert any(Decimal(0) < real["amount"] == record["delta"] <= PAYMENT_LIMIT
                       and key == f"{ENV}/{real['account']}".encode() for key, real in payments[record["cause_id"]]), (
                f"money created: {record} has no real payment behind it")
            paid[record["account"]] += record["delta"]
        last[record["account"]] = record["balance"]
    for account, balance in last.items():
        assert balance == OPENING[account] + paid[account] - charged[account], account


def test_the_projection_holds_exactly_the_charges(live, tmp_path):
    bootstrap, topics, _, _ = live
    database_url = f"sqlite:///{tmp_path / 'fuzz.db'}"
    with XdrProjector(database_url, bootstrap, topics) as projector:
        projector.run_until_idle()
    charges = [e.record for e in read_to_end(bootstrap, topics.charges)]
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select charge_id from xdr")).all()
    engine.dispose()
    assert sorted(r[0] for r in rows) == sorted({c["charge_id"] for c in charges})



# --- the projectors' own inputs ---------------------------------------------------------------

PROJECTED = {  # event -> (topic attribute, id field, table)
    "Charge": ("charges", "charge_id", "xdr"),
    "Rejection": ("rejections", "rejection_id", "rejected_attempt"),
    "PaymentRejected": ("rejections", "payment_id", "rejected_payment"),
    "BalanceChanged": ("balances", "event_id", "balance_event"),
    "ServiceStatusChanged": ("service_status", "event_id", "service_status_event"),
    "ConfigEventRejected": ("config_rejections", "rejection_id", "rejected_config_event"),
}
PROJECTED_ENV, PROJECTED_ACCOUNT = "fzp", "2001"


def _projected_record(name: str, record_id: str) -> tuple[bytes, dict]:
    """A valid record of ``name`` whose id is ``record_id``, keyed as the processor keys it."""
    record = {**SAMPLES[name], PROJECTED[name][1]: record_id}
    if name == "Charge":  # an xDR per attempt: each charge of its own attempt
        record["attempt_id"] = record_id
    if "account" in record:
        record.update(environment=PROJECTED_ENV, account=PROJECTED_ACCOUNT)
        return f"{PROJECTED_ENV}/{PROJECTED_ACCOUNT}".encode(), record
    return PROJECTED_ENV.encode(), record


@st.composite
def hostile_projected(draw) -> tuple[str, bytes, bytes, str]:
    """(topic attribute, key, value, the id it would have): a record no projection may hold."""
    name = draw(st.sampled_from(sorted(PROJECTED)))
    topic, id_field, _ = PROJECTED[name]
    record_id = f"hz-{draw(st.integers(0, 10**9))}"
    key, record = _projected_record(name, record_id)
    kind = draw(st.sampled_from(["garbage", "unknown", "huge", "decimal", "negative", "key", "topic"]))
    if kind == "garbage":
        return topic, key, draw(garbage), record_id
    if kind == "unknown":
        return topic, key, draw(unknown_schema), record_id
    text_field = {"Charge": "to_user", "BalanceChanged": "cause_id", "ServiceStatusChanged": "reason"}.get(name, "message")
    if kind == "huge":
        record[text_field] = "x" * draw(st.sampled_from([100_001, 400_000]))
    elif kind == "decimal" and name in ("Charge", "PaymentRejected", "BalanceChanged"):
        field = {"Charge": "amount", "PaymentRejected": "amount", "BalanceChanged": "balance"}[name]
        record[field] = Decimal(draw(st.sampled_from(["1e18", "-1e30", "99999999999999999999999"])))
    elif kind == "negative" and name == "Charge":
        record["amount"] = Decimal("-0.150000")
    elif kind == "key" and "account" in record:
        key = f"{PROJECTED_ENV}/{PROJECTED_ACCOUNT}9".encode()
    else:  # on another topic than the catalogue puts it
        topic = "charges" if topic != "charges" else "balances"
    return topic, key, encode(name, record), record_id


@pytest.fixture(scope="module")
def projecting(live, tmp_path_factory):
    bootstrap, topics, _, _ = live
    database_url = f"sqlite:///{tmp_path_factory.mktemp('fuzzproj') / 'projections.db'}"
    stop = threading.Event()
    projectors = [XdrProjector(database_url, bootstrap, topics), ConfigProjector(database_url, bootstrap, topics)]
    threads = [threading.Thread(target=p.run, args=(stop, 0.2), daemon=True) for p in projectors]
    for thread in threads:
        thread.start()
    yield bootstrap, topics, database_url, projectors, threads
    stop.set()
    for thread in threads:
        thread.join(10)
    for projector in projectors:
        projector.close()


@settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hostile=st.lists(hostile_projected(), min_size=5, max_size=30))
def test_live_projectors_skip_hostile_records_and_project_the_valid_ones_after_them(projecting, hostile, caplog):
    bootstrap, topics, database_url, projectors, threads = projecting
    skipped_before = sum(p.skipped for p in projectors)
    by_topic: dict[str, list] = defaultdict(list)
    for topic, key, value, _ in hostile:
        by_topic[topic].append((key, value))
    n = next(serial)
    valid = {name: f"vz-{n}-{name}" for name in PROJECTED}
    duplicate_key, duplicate = _projected_record("Charge", valid["Charge"])
    duplicate["amount"], duplicate["unit_price"] = Decimal("9.000000"), Decimal("3.000000")
    for name, record_id in valid.items():
        key, record = _projected_record(name, record_id)
        by_topic[PROJECTED[name][0]].append((key, encode(name, record)))
    by_topic["charges"].append((duplicate_key, encode("Charge", duplicate)))  # same id again: the first stays
    with caplog.at_level(logging.WARNING, logger="imbill.projections.projector"):
        for topic, records in by_topic.items():
            send_raw(bootstrap, getattr(topics, topic), records)
        rows = wait_for(lambda: _rows_with(database_url, valid), None, 30, "the valid records' rows")
    assert all(thread.is_alive() for thread in threads), "a projector stopped"
    for name, (_, _, table) in PROJECTED.items():
        assert len(rows[table]) == 1, (table, rows[table])
    assert Decimal(rows["xdr"][0]["amount"]) == Decimal("0.150000")  # the duplicate did not replace it
    assert _rows_with(database_url, {"any": "hz-"}, prefix=True) == {t: [] for _, _, t in PROJECTED.values()}
    assert sum(p.skipped for p in projectors) - skipped_before >= len(hostile)
    assert any("skipped" in r.getMessage() for r in caplog.records)


def _rows_with(database_url: str, ids: dict, prefix: bool = False) -> dict | None:
    engine = sa.create_engine(database_url)
    found = {}
    try:
        with engine.connect() as conn:
            for name, (_, id_field, table) in PROJECTED.items():
                wanted = list(ids.values()) if prefix else [ids[name]]
                clauses = " or ".join(f"{id_field} like :p{i}" if prefix else f"{id_field} = :p{i}"
                                      for i in range(len(wanted)))
                params = {f"p{i}": (w + "%" if prefix else w) for i, w in enumerate(wanted)}
                found[table] = [dict(r) for r in conn.execute(sa.text(f"select * from {table} where {clauses}"),
                                                              params).mappings()]
    finally:
        engine.dispose()
    if prefix or all(found.values()):
        return found
    return None
