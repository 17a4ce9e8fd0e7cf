"""The local broker's journal: acknowledged records survive a restart, offsets preserved."""

from __future__ import annotations

import asyncio
import struct
import zlib
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from imbill.broker import DurableBroker, free_port
from imbill.journal import Journal, JournaledBatch, batch_payload, topic_payload

pytestmark = pytest.mark.integration


def test_a_torn_last_entry_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.write([topic_payload("t", 2, {}), batch_payload(JournaledBatch("t", 1, 0, b"x" * 70))])
    journal.close()
    good = (tmp_path / "log").stat().st_size
    with open(tmp_path / "log", "ab") as file:  # a crash in the middle of the next entry
        payload = batch_payload(JournaledBatch("t", 1, 1, b"y" * 70))
        file.write(struct.pack(">II", len(payload), zlib.crc32(payload)) + payload[:20])
    reopened = Journal(tmp_path)
    assert reopened.size == good
    assert [kind for kind, _ in reopened.entries()] == ["topic", "batch"]


def consume_all(bootstrap: str, topic: str) -> list[tuple[int, int, bytes, bytes]]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=2500, enable_auto_commit=False)
    try:
        return sorted((m.partition, m.offset, m.key, m.value) for m in consumer)
    finally:
        consumer.close()


def create_topic(bootstrap: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics({"orders": {"num_partitions": 3, "replication_factor": 1}})
    admin.close()


async def produce(bootstrap: str, topic: str, phase: int, count: int) -> None:
    """Half with kafka-python (idempotent by default), half with aiokafka, as imbill does."""
    def with_kafka_python() -> None:
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        for n in range(count // 2):
            producer.send(topic, key=b"k%d" % (n % 40), value=b"kp-%d-%d" % (phase, n))
        producer.flush()
        producer.close()

    await asyncio.get_running_loop().run_in_executor(None, with_kafka_python)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        sent = [await producer.send(topic, b"aio-%d-%d" % (phase, n), key=b"k%d" % (n % 40))
                for n in range(count // 2)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def test_a_restarted_broker_holds_every_record_at_its_offset(tmp_path: Path) -> None:
    port = free_port()
    runs = []

    async def run(phase: int) -> list[tuple[int, int, bytes, bytes]]:
        broker = DurableBroker("127.0.0.1", port, tmp_path)
        await broker.start()
        try:
            if phase == 1:
                await asyncio.get_running_loop().run_in_executor(None, create_topic, broker.bootstrap_servers)
            await produce(broker.bootstrap_servers, "orders", phase, 2000)
            return await asyncio.get_running_loop().run_in_executor(
                None, consume_all, broker.bootstrap_servers, "orders")
        finally:
            await broker.stop()

    for phase in (1, 2):
        runs.append(asyncio.run(run(phase)))
    first, second = runs
    assert len(first) == 2000 and len(second) == 4000
    assert set(first) <= set(second)  # same records at the same partitions and offsets
    for partition in range(3):
        offsets = [offset for p, offset, _, _ in second if p == partition]
        assert offsets == list(range(len(offsets)))
