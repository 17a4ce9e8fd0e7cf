"""The processor worker: deciding batches without I/O, then a real worker on the local broker.

The integration tests run ``python -m imbill process`` as a subprocess against the
session's Tansu broker, as an operator runs it, and read its output topics back.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2
from click.testing import CliRunner
from kafka.partitioner.default import DefaultPartitioner

from imbill.bus import EventProducer, create_topics, read_to_end
from imbill.schemas.codec import decode, encode, encode_event, record_of
from imbill.cli import cli
from imbill.streams.batch import bill_attempts, entry_key, top_up_payments
from imbill.streams.changelog import (Entry, Flushed, Seen, decode_record, encode_record, flushed_key,
                                      pending_outboxes)
from imbill.streams.faust_adapter import true_end_offsets
from imbill.domain.balance import AccountState
from imbill.schemas.topics import ACCOUNT_PARTITIONS, ACCOUNT_STATE_CHANGELOG, Topics
from tests.builders import ALICE, BOB, ENV, T0, attempt, attempt_record, checklist, payment

NOW = datetime(2026, 1, 15, 9, 30, tzinfo=timezone.utc)
LONG = 150  # characters: 3 billing units at msg.billing_unit_size 60, 0.15 at the MSGN rate 0.05


def key_of(account: str) -> bytes:
    return f"{ENV}/{account}".encode()


def partition_of(key: bytes) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % ACCOUNT_PARTITIONS


def records(*items: tuple[int, dict | bytes], account: str = ALICE) -> list[tuple[int, int, bytes, bytes]]:
    """(offset, attempt record or raw bytes) -> input records on the account's partition."""
    key = key_of(account)
    return [(partition_of(key), offset, key, value if isinstance(value, bytes) else encode_event(value))
            for offset, value in items]


FROM_START = {p: 0 for p in range(ACCOUNT_PARTITIONS)}


def outputs(batch) -> list[tuple[str, str, dict]]:
    return [(kind, key.decode(), decode(value)[1]) for entry in batch.entries.values()
            for kind, key, value in entry.outbox]


# -- deciding batches, no broker -----------------------------------------------------------------

def test_the_processor_partitions_keys_as_kafka_python_and_the_java_client_do():
    partitioner = DefaultPartitioner()

    class Cluster:
        def topics(self):
            return {"t"}

        def partitions_for_topic(self, topic):
            return set(range(ACCOUNT_PARTITIONS))

        def available_partitions_for_topic(self, topic):
            return set(range(ACCOUNT_PARTITIONS))

    keys = [key_of(f"{n:06d}") for n in range(2000)] + [b"", "ümlaut/é".encode(), b"\x00\xff"]
    for key in keys:
        assert partition_of(key) == partitioner.partition("t", None, key, None, None, Cluster())
    # Java's Utils.murmur2 vectors (kafka-python's test suite): signed 32-bit results
    assert murmur2(b"21") - 2**32 == -973932308
    assert murmur2(b"foobar") - 2**32 == -790332482


def test_a_charged_attempt_gives_a_charge_and_a_balance_change_keyed_by_the_account():
    config = checklist(balance_model="prepaid").state
    batch = bill_attempts({}, config, records((0, attempt(attempt_id="a1", body_chars=LONG))), now=NOW,
                          expected=FROM_START)

    (charge_kind, charge_key, charge), (balance_kind, balance_key, balance) = outputs(batch)
    assert (charge_kind, charge_key, charge["charge_id"], charge["billing_units"]) == (
        "charges", f"{ENV}/{ALICE}", "chg-a1", 3)
    assert (charge["unit_price"], charge["amount"]) == (Decimal("0.05"), Decimal("0.15"))
    assert (balance_kind, balance_key, balance["balance"]) == ("balances", f"{ENV}/{ALICE}", Decimal("0.85"))
    entry = batch.entries[key_of(ALICE)]
    assert (entry.state.balance, entry.attempts_decided, entry.source, entry.source_offset) == (
        Decimal("0.85"), 0, "a", 0)


def test_refusals_and_undecodable_records_are_rejections_never_errors():
    config = checklist().state
    garbage = (partition_of(b"acme/x"), 7, b"acme/x", b"not avro at all")
    unknown = records((1, attempt(attempt_id="u1", from_user="nobody")), account="nobody")
    expected = {partition_of(key_of("nobody")): 1, garbage[0]: 7}
    batch = bill_attempts({}, config, [*unknown, garbage], now=NOW, expected=expected)
    (_, key1, unknown), (_, key2, malformed) = outputs(batch)
    assert (key1, unknown["reason_code"], unknown["rejection_id"]) == (f"{ENV}/nobody", "unknown_account", "rej-u1")
    assert (key2, malformed["reason_code"]) == ("acme/x", "malformed_attempt")
    assert malformed["attempt_id"] == f"undecodable-{garbage[0]}-7"


def test_an_attempt_keyed_to_another_account_is_not_billed_on_this_partition():
    config = checklist().state
    wrong = [(0, 3, key_of(BOB), encode_event(attempt(attempt_id="w1")))]  # sent by ALICE
    (kind, _, rejection), = outputs(bill_attempts({}, config, wrong, now=NOW, expected={0: 3}))
    assert (kind, rejection["reason_code"]) == ("rejections", "malformed_attempt")


def test_decisions_are_final_even_when_a_payment_lands_before_the_replay():
    """The crash case that orders the commit: entries first, then outputs. A replay of
    attempts already in an entry is skipped, so a top-up that arrives in between cannot turn
    a rejection into a charge (or the reverse)."""
    config = checklist(balance_model="prepaid").state
    seven = records(*[(n, attempt(attempt_id=f"a{n}", body_chars=LONG)) for n in range(7)])
    first = bill_attempts({}, config, seven, now=NOW, expected=FROM_START)
    assert [r["reason_code"] for k, _, r in outputs(first) if k == "rejections"] == ["insufficient_funds"]
    committed = dict(first.entries)
    top_up = [(partition_of(key_of(ALICE)), 0, key_of(ALICE), encode_event(payment("5.00")))]
    committed.update(top_up_payments(committed, config, top_up, now=NOW, expected=FROM_START).entries)
    replay = bill_attempts(committed, config, seven, now=NOW, expected=FROM_START)  # entries, no marker
    assert replay.entries == {} and replay.next_offsets == {partition_of(key_of(ALICE)): 7}
    eighth = bill_attempts(committed, config, records((7, attempt(attempt_id="a7", body_chars=LONG))), now=NOW,
                           expected=replay.next_offsets)
    assert [r.get("charge_id") for k, _, r in outputs(eighth) if k == "charges"] == ["chg-a7"]


def test_a_payment_for_an_unknown_account_or_foreign_key_changes_nothing():
    """Each is refused where everyone sees it (a PaymentRejected), none changes a balance."""
    config = checklist().state
    unknown = payment("1.00", account="nobody")
    batch = top_up_payments({}, config, [(0, 0, key_of("nobody"), encode_event(unknown)),
                                         (0, 1, key_of(BOB), encode_event(payment("1.00"))),
                                         (0, 2, key_of(BOB), b"junk")], now=NOW, expected=FROM_START)
    assert batch.next_offsets == {0: 3}
    refused = [(kind, key, r["reason_code"], r["payment_id"]) for kind, key, r in outputs(batch)]
    assert refused == [("rejections", key_of("nobody").decode(), "unknown_account", unknown.payment_id),
                       ("rejections", key_of(ALICE).decode(), "key_mismatch", "pay-1"),
                       ("rejections", key_of(BOB).decode(), "malformed_payment", "undecodable-0-2")]
    assert all(entry.state is None for entry in batch.entries.values())
    assert {entry.payments_decided for entry in batch.entries.values()} == {0, 2}


def test_records_are_decided_in_offset_order_only():
    """faust drops records in flight when a rebalance suspends its flow: a record that
    comes before the ones below it is left, and its partition read again from the gap."""
    config = checklist().state
    p = partition_of(key_of(ALICE))
    batch = bill_attempts({}, config, records(*[(n, attempt(attempt_id=f"g{n}")) for n in (3, 4, 5, 8, 9)]),
                          now=NOW, expected={p: 4})
    assert [r["attempt_id"] for _, _, r in outputs(batch) if "attempt_id" in r] == ["g4", "g5"]
    assert (batch.next_offsets, batch.gaps) == ({p: 6}, {p: 6})
    other = bill_attempts({}, config, records((0, attempt())), now=NOW, expected={p + 1: 0})
    assert other.entries == {} and other.gaps == {}  # a partition this worker does not own


@pytest.mark.parametrize("record", [
    Entry(AccountState(Decimal("-1.50"), "USD", True, 41, 7), 3, 41, 7,
          [("charges", b"acme/1", b"\xc3\x01bytes"), ("rejections", b"", b"\x00")], "p", 7,
          [("pay-\u00e9\ud800", 7, 1_700_000_000_000, 123)]),
    Entry(None, 0, 12, -1, [], "a", 12),
    Flushed(2, 99, -1),
    Seen("a", b"acme/\x00\xff", 1, [("a1", 3, 0, 0), ("a2", 9, -5, 4_294_967_295)]),
])
def test_changelog_records_round_trip(record):
    assert decode_record(encode_record(record)) == record


def test_pending_outboxes_are_those_no_marker_covers_on_owned_partitions():
    sent = Entry(None, 1, 5, -1, [("charges", b"k", b"v")], "a", 5)
    unsent = Entry(None, 1, 9, -1, [("charges", b"k", b"v")], "a", 9)
    payment_unsent = Entry(None, 1, -1, 3, [("balances", b"k", b"v")], "p", 3)
    elsewhere = Entry(None, 2, 9, -1, [("charges", b"k", b"v")], "a", 9)
    table = {b"s": sent, b"u": unsent, b"p": payment_unsent, b"e": elsewhere, flushed_key(1): Flushed(1, 5, 2)}
    assert pending_outboxes(table, [1]) == [unsent, payment_unsent]
    assert entry_key(None, 3) != entry_key(b"\x00nokey/3", 3) != flushed_key(3)


def test_the_cli_documents_its_flags():
    runner = CliRunner()
    top = runner.invoke(cli, ["--help"], terminal_width=200)
    process = runner.invoke(cli, ["process", "--help"], terminal_width=200)
    assert top.exit_code == process.exit_code == 0
    for flag in ("--bootstrap-servers", "--topic-prefix"):
        assert flag in top.output
    for flag in ("--worker-id", "--data-dir", "--batch-size", "--session-timeout", "--log-level"):
        assert flag in process.output


# -- a real worker on the local broker -----------------------------------------------------------

class Worker:
    """``python -m imbill process`` as a subprocess, its log in a file."""

    def __init__(self, bootstrap: str, topics: Topics, tmp_path: Path, name: str, session_timeout: float = 6.0,
                 flags: tuple[str, ...] = ()):
        self.log_path = tmp_path / f"{name}.log"
        command = [sys.executable, "-m", "imbill", "--bootstrap-servers", bootstrap, "--topic-prefix", topics.prefix,
                   "process", "--worker-id", name, "--data-dir", str(tmp_path / "data"),
                   "--session-timeout", str(session_timeout), *flags]
        self.process = subprocess.Popen(command, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 40.0, after: int = 0) -> None:
        wait_for(lambda: self.log().count("Worker ready") > after, self, timeout, "the worker to be ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def wait_for(condition: Callable[[], Any], worker: Worker | None, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if worker is not None and worker.process.poll() is not None:
            pytest.fail(f"the worker exited ({worker.process.returncode}) waiting for {what}:\n{worker.log()[-3000:]}")
        time.sleep(0.2)
    tail = worker.log()[-3000:] if worker is not None else ""
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n{tail}")


def publish(bootstrap: str, topic: str, events: list[tuple[str, str, dict]]) -> None:
    producer = EventProducer(bootstrap)
    try:
        for key, name, record in events:
            producer.send(topic, key, name, record)
        producer.flush()
    finally:
        producer.close()


def publish_config(bootstrap: str, topics: Topics, builder) -> None:
    publish(bootstrap, topics.config, [(ENV, name, record) for name, record in builder.events])


def records_of(bootstrap: str, topic: str) -> list[dict]:
    return [e.record for e in read_to_end(bootstrap, topic)]


def message(attempt_id: str, sender: str = ALICE, **fields) -> tuple[str, str, dict]:
    record = attempt_record(attempt_id=attempt_id, call_id=f"{attempt_id}@test", from_user=sender, body_chars=LONG,
                     **fields)
    return f"{ENV}/{sender}", "MessageAttempt", record


@pytest.mark.integration
def test_a_worker_charges_rejects_suspends_and_resumes(bootstrap, topics, tmp_path):
    publish_config(bootstrap, topics, checklist(balance_model="prepaid"))
    publish(bootstrap, topics.attempts, [
        *[message(f"a{n}") for n in range(8)],            # 1.00 pays for 6 messages of 0.15
        message("n1", sender="nobody"),
        message("in1", sender="15550001", direction="incoming", to_user=BOB),
    ])
    EventProducer(bootstrap)._producer.send(topics.attempts, key=b"acme/garbage", value=b"garbage").get(10)
    worker = Worker(bootstrap, topics, tmp_path, "w1")
    try:
        wait_for(lambda: len(records_of(bootstrap, topics.charges)) + len(records_of(bootstrap, topics.rejections))
                 >= 11, worker, 40, "every attempt to be decided")
        publish(bootstrap, topics.payments, [(f"{ENV}/{ALICE}", "Payment", record_of(payment("1.00", payment_id="pay-1")))])
        wait_for(lambda: any(r["cause_id"] == "pay-1" for r in records_of(bootstrap, topics.balances)), worker, 20,
                 "the top-up")
        publish(bootstrap, topics.attempts, [message("a8")])
        wait_for(lambda: any(r["charge_id"] == "chg-a8" for r in records_of(bootstrap, topics.charges)), worker,
                 20, "the message after the top-up")
    finally:
        worker.stop()

    charges = records_of(bootstrap, topics.charges)
    assert sorted(c["charge_id"] for c in charges) == sorted([*[f"chg-a{n}" for n in range(6)], "chg-in1", "chg-a8"])
    alice = [c for c in charges if c["account"] == ALICE]
    assert [c["charge_id"] for c in alice] == [*[f"chg-a{n}" for n in range(6)], "chg-a8"]
    assert {(c["billing_units"], c["unit_price"], c["amount"], c["rate_code"]) for c in alice} == {
        (3, Decimal("0.05"), Decimal("0.15"), "MSGN")}
    incoming, = [c for c in charges if c["charge_id"] == "chg-in1"]
    assert (incoming["account"], incoming["direction"], incoming["amount"]) == (BOB, "incoming", Decimal("0"))

    reasons = {r["attempt_id"]: r["reason_code"] for r in records_of(bootstrap, topics.rejections)}
    assert reasons == {"a6": "insufficient_funds", "a7": "service_suspended", "n1": "unknown_account",
                       f"undecodable-{partition_of(b'acme/garbage')}-0": "malformed_attempt"}

    balances = [(b["cause_id"], b["balance"]) for b in records_of(bootstrap, topics.balances)]
    expected = [(f"chg-a{n}", Decimal("1.00") - Decimal("0.15") * (n + 1)) for n in range(6)]
    assert balances == [*expected, ("pay-1", Decimal("1.10")), ("chg-a8", Decimal("0.95"))]
    statuses = [(s["status"], s["cause_id"]) for s in records_of(bootstrap, topics.service_status)]
    assert statuses == [("suspended", "rej-a6"), ("active", "pay-1")]


def _changelog_batch(producer: AIOKafkaProducer, entries: list[tuple[bytes, Any]]):
    batch = producer.create_batch()
    for key, record in entries:
        assert batch.append(key=key, value=encode_record(record), timestamp=None) is not None
    return batch


async def _write_changelog(bootstrap: str, topic: str, partition: int, batches: list) -> tuple[int, int]:
    """Write ``batches`` (one record batch each); return (ListOffsets latest, true end)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for entries in batches:
            await (await producer.send_batch(_changelog_batch(producer, entries), topic, partition=partition))
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        reported = (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()
    return reported, (await true_end_offsets(bootstrap, {tp: reported}))[tp]


def _pending_charge(charge_id: str) -> tuple[str, bytes, bytes]:
    record = {"charge_id": charge_id, "attempt_id": charge_id[4:], "kind": "charge", "corrects": None,
              "environment": ENV, "account": "filler", "customer": "Acme", "direction": "outgoing",
              "attempted_at": T0, "rated_at": T0, "from_user": "filler", "to_user": BOB, "to_domain": "d",
              "destination": BOB, "on_net": True, "body_chars": 1, "billing_units": 1,
              "unit_price": Decimal("0.05"), "amount": Decimal("0.05"), "currency": "USD", "tariff": "B",
              "rate_code": "MSGN", "rate_effective_from": T0, "service_policy": None, "policies": [],
              "transport_protocol": "SIP", "vendor": None, "connection": None, "vendor_tariff": None,
              "vendor_cost": Decimal("0"), "vendor_currency": None}
    return "charges", key_of("filler"), encode("Charge", record)


@pytest.mark.integration
def test_a_restarted_worker_recovers_the_changelog_to_its_true_end(bootstrap, topics, tmp_path):
    """The changelog ends with a multi-record batch, which the local broker's ListOffsets
    latest misreports: recovered to the fetch high-watermark, the state is the last one
    written; an outbox no Flushed marker covers is sent again, a covered one is not."""
    changelog = ACCOUNT_STATE_CHANGELOG.named(topics.prefix)
    create_topics(bootstrap, [changelog])
    publish_config(bootstrap, topics, checklist(balance_model="prepaid"))
    alice, p = key_of(ALICE), partition_of(key_of(ALICE))
    fillers = [key for key in (key_of(f"filler{n}") for n in range(200)) if partition_of(key) == p][:6]
    state = AccountState(Decimal("5.00"), "USD", False)
    covered = Entry(None, p, -1, 0, [_pending_charge("chg-covered")], "p", 0)  # payment 0: marked flushed
    pending = Entry(None, p, 9, -1, [_pending_charge("chg-pending")], "a", 9)  # attempt 9: not marked
    filler = Entry(None, p, -1, -1, [], "a", -1)
    reported, true_end = asyncio.run(_write_changelog(bootstrap, changelog.name, p, [
        [(fillers[0], filler), (alice, Entry(state, p)), (fillers[1], covered), (flushed_key(p), Flushed(p, -1, 0))],
        [(fillers[2], filler), (fillers[3], pending), (alice, Entry(replace(state, balance=Decimal("7.77")), p))],
    ]))
    assert (reported, true_end) == (5, 7), "the broker no longer misreports ListOffsets latest"
    # the payment the marker says is decided is on the log (a log without it is a reset one)
    publish(bootstrap, topics.payments, [(f"{ENV}/{ALICE}", "Payment", record_of(payment("1.00", payment_id="pay-0")))])

    worker = Worker(bootstrap, topics, tmp_path, "w-recover")
    try:
        worker.wait_ready()
        publish(bootstrap, topics.attempts, [message("r1")])
        changed = wait_for(lambda: [b for b in records_of(bootstrap, topics.balances) if b["cause_id"] == "chg-r1"],
                           worker, 30, "the charge after recovery")
    finally:
        worker.stop()
    assert changed[0]["balance"] == Decimal("7.62")  # 7.77 - 0.15: the last batch was recovered
    charge_ids = [c["charge_id"] for c in records_of(bootstrap, topics.charges)]
    assert sorted(charge_ids) == ["chg-pending", "chg-r1"]
