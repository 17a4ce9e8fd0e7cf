"""The AttemptPublisher on the real local broker: batches, acknowledgements, partitions, failures."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import uvloop
from aiokafka.partitioner import DefaultPartitioner as AioKafkaDefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner.default import DefaultPartitioner

from imbill.domain.events import MessageAttempt
from imbill.schemas.codec import event_of
from imbill.broker import start_broker
from imbill.bus import create_topics, read_to_end
from imbill.domain.errors import BrokerError, PublishError
from imbill.producers.attempt import attempt_key, synthetic_attempt
from imbill.producers.attempt_publisher import AttemptPublisher, partition_for
from imbill.producers.edge import SipEdge
from imbill.schemas.topics import ATTEMPTS, Topics
from tests.conftest import free_port
from tests.test_edge_conformance import UdpClient, exchange, header_of, message, status_of

pytestmark = pytest.mark.integration
BASE = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)  # whole milliseconds: timestamp-millis round-trips


def attempts(count: int, accounts: int = 37) -> list[MessageAttempt]:
    return [
        synthetic_attempt("env1", f"acct{index % accounts}", f"dest{index}", body_chars=1 + index % 300,
                          call_id=f"pub-{index}@test", received_at=BASE + timedelta(milliseconds=index))
        for index in range(count)
    ]


class _Cluster:
    """Just enough of kafka-python's ClusterMetadata for its DefaultPartitioner."""

    def __init__(self, topic: str, partitions: set[int]) -> None:
        self._topic, self._partitions = topic, partitions

    def topics(self) -> set[str]:
        return {self._topic}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions


def kafka_python_partition(topic: str, key: bytes, partitions: set[int]) -> int:
    return DefaultPartitioner().partition(topic, None, key, None, None, _Cluster(topic, partitions))


async def submit_all(publisher: AttemptPublisher, batch: list[MessageAttempt]) -> list[PublishError | None]:
    """Submit every attempt at once (as a burst of MESSAGEs would) and wait until each is settled."""
    loop = asyncio.get_running_loop()
    settled = [loop.create_future() for _ in batch]
    for attempt, future in zip(batch, settled):
        publisher.submit(attempt, future.set_result)
    return await asyncio.wait_for(asyncio.gather(*settled), 30)


# --- publishing ---------------------------------------------------------------------------------------


def test_every_acknowledged_attempt_is_on_its_key_partition_in_order(bootstrap: str, topics: Topics) -> None:
    sent = attempts(1500)

    async def scenario() -> list[PublishError | None]:
        async with AttemptPublisher(bootstrap, topics.attempts) as publisher:
            results = await submit_all(publisher, sent[:1000])
            for attempt in sent[1000:1010]:  # one at a time: a batch of one
                await publisher(attempt)
            return results + await submit_all(publisher, sent[1010:])

    assert asyncio.run(scenario()) == [None] * 1490
    records = list(read_to_end(bootstrap, topics.attempts))
    assert [r.error for r in records if r.error] == []
    assert sorted(r.record["attempt_id"] for r in records) == sorted(a.attempt_id for a in sent)
    by_id = {a.attempt_id: a for a in sent}
    assert all(r.name == "MessageAttempt" and event_of(r.name, r.record) == by_id[r.record["attempt_id"]]
               for r in records)

    partitions = set(range(ATTEMPTS.partitions))
    for record in records:
        assert record.key == attempt_key(event_of(record.name, record.record))
        assert record.partition == kafka_python_partition(topics.attempts, record.key, partitions)
        assert record.partition == partition_for(record.key, len(partitions))

    offsets = defaultdict(list)  # one account's attempts stay in the order they were submitted
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        offsets[record.key].append(record.record["call_id"])
    for key, call_ids in offsets.items():
        assert call_ids == [a.call_id for a in sent if attempt_key(a) == key]


@given(st.binary(max_size=80), st.integers(1, 64))
def test_partition_for_is_the_default_partitioner_of_kafka_python_and_aiokafka(key: bytes, partitions: int) -> None:
    expected = kafka_python_partition("t", key, set(range(partitions)))
    aiokafka = AioKafkaDefaultPartitioner()(key, list(range(partitions)), list(range(partitions)))
    assert partition_for(key, partitions) == expected == aiokafka


def test_done_is_called_only_once_the_attempt_is_on_the_topic(bootstrap: str, topics: Topics) -> None:
    seen: list[tuple[PublishError | None, bool]] = []

    def reader(attempt: dict[str, Any], settled: asyncio.Future[None]) -> Callable[[PublishError | None], None]:
        def done(error: PublishError | None) -> None:  # blocks the event loop: nothing is sent meanwhile
            on_topic = {r.record["attempt_id"] for r in read_to_end(bootstrap, topics.attempts, timeout=5)}
            seen.append((error, attempt.attempt_id in on_topic))
            settled.set_result(None)

        return done

    async def scenario() -> None:
        async with AttemptPublisher(bootstrap, topics.attempts) as publisher:
            for attempt in attempts(3):
                settled = asyncio.get_running_loop().create_future()
                publisher.submit(attempt, reader(attempt, settled))
                await asyncio.wait_for(settled, 10)

    asyncio.run(scenario())
    assert seen == [(None, True)] * 3


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])  # uvloop: as `imbill edge`
def test_the_edge_answers_a_burst_202_and_publishes_each_attempt_once(
    bootstrap: str, topics: Topics, run: Callable[..., Any]
) -> None:
    burst = [message(f"burst-{index}@test") for index in range(300)]

    async def scenario() -> list[bytes | None]:
        async with AttemptPublisher(bootstrap, topics.attempts) as publisher:
            edge = SipEdge(publisher, environment="env1", edge_id="edge-t", host="127.0.0.1", port=0,
                           authentication=None)
            await edge.start()
            _, client = await asyncio.get_running_loop().create_datagram_endpoint(
                UdpClient, remote_addr=edge.address)
            for datagram in burst:
                client.transport.sendto(datagram)
            answers = [await client.answer(10) for _ in burst]
            for datagram in burst[:10]:  # retransmissions: the same answers, nothing published again
                client.transport.sendto(datagram)
            answers += [await client.answer(10) for _ in burst[:10]]
            await edge.stop()
            client.transport.close()
            return answers

    answers = run(scenario())
    assert all(answer is not None and status_of(answer) == 202 for answer in answers)
    assert {header_of(answer, "Call-ID") for answer in answers} == {f"burst-{index}@test" for index in range(300)}
    call_ids = [r.record["call_id"] for r in read_to_end(bootstrap, topics.attempts)]
    assert sorted(call_ids) == sorted(f"burst-{index}@test" for index in range(300))


# --- failures -----------------------------------------------------------------------------------------


def test_an_unreachable_bootstrap_fails_at_start() -> None:
    async def scenario() -> None:
        await AttemptPublisher(f"127.0.0.1:{free_port()}", "imbill.message-attempts", timeout=1.0).start()

    with pytest.raises(BrokerError):
        asyncio.run(scenario())


def test_a_publisher_that_is_not_started_refuses_and_the_edge_answers_500() -> None:
    async def scenario() -> tuple[bytes | None, Any]:
        edge = SipEdge(AttemptPublisher("127.0.0.1:1", "t"), environment="env1", edge_id="e", port=0,
                       authentication=None)
        await edge.start()
        _, client = await asyncio.get_running_loop().create_datagram_endpoint(UdpClient, remote_addr=edge.address)
        answer = await exchange(client, message("not-started@test"))
        await edge.stop()
        return answer, edge.counters

    answer, counters = asyncio.run(scenario())
    assert answer is not None and status_of(answer) == 500 and header_of(answer, "Retry-After") == "5"
    assert (counters.publish_failures, counters.accepted) == (1, 0)


def test_a_dead_broker_is_a_publish_error_and_the_edge_answers_500() -> None:
    broker = start_broker(port=free_port())
    topics = Topics("stopped.")
    try:
        create_topics(broker.bootstrap_servers, topics.specs())

        async def scenario() -> tuple[Any, ...]:
            publisher = await AttemptPublisher(broker.bootstrap_servers, topics.attempts, timeout=1.0).start()
            edge = SipEdge(publisher, environment="env1", edge_id="e", port=0, authentication=None)
            await edge.start()
            _, client = await asyncio.get_running_loop().create_datagram_endpoint(
                UdpClient, remote_addr=edge.address)
            before = await exchange(client, message("before-stop@test"), timeout=5)
            broker.process.kill()  # the broker dies (SIGTERM waits for its clients to go)
            broker.process.wait()
            began = asyncio.get_running_loop().time()
            with pytest.raises(PublishError):
                await publisher(attempts(1)[0])
            failed = await exchange(client, message("after-stop@test"), timeout=5)
            repeated = await exchange(client, message("after-stop@test"), timeout=5)
            waited = asyncio.get_running_loop().time() - began
            await edge.stop()
            await publisher.stop()
            return before, failed, repeated, waited, edge.counters

        before, failed, repeated, waited, counters = asyncio.run(scenario())
    finally:
        broker.stop()
    assert before is not None and status_of(before) == 202
    assert failed is not None and failed.startswith(b"SIP/2.0 500 Server Internal Error\r\n")
    assert header_of(failed, "Call-ID") == "after-stop@test" and repeated == failed
    assert waited < 5.0, f"publish failures took {waited:.1f} s to surface"
    assert (counters.accepted, counters.publish_failures, counters.retransmissions) == (1, 1, 1)
