"""The private faust and aiokafka API that :mod:`imbill.streams.faust_adapter` relies on.

Each check names what breaks when an upgrade removes or reshapes the attribute, so a
dependency bump fails here, loudly, rather than as a worker that recovers a table one batch
short or cannot commit a batch.
"""

from __future__ import annotations

import asyncio
import inspect

import faust
import mode
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from faust.serializers.codecs import Codec
from faust.stores.memory import Store
from faust.tables.base import Collection
from faust.transport.drivers import aiokafka as faust_aiokafka

from imbill.streams import faust_adapter
from imbill.streams.changelog import Flushed, encode_record

COROUTINE, CALLABLE = "coroutine function", "callable"

PRIVATE = [
    (faust_aiokafka.AIOKafkaConsumerThread, "_highwaters", COROUTINE,
     "table recovery to the changelog's true end (Tansu's ListOffsets quirk): tables lose their last batch"),
    (faust_aiokafka.AIOKafkaConsumerThread, "_ensure_consumer", CALLABLE,
     "the reported end offsets inside _highwaters"),
    (faust_aiokafka.Consumer, "_new_consumer_thread", CALLABLE,
     "installing the true-end consumer thread"),
    (faust_aiokafka, "server_list", CALLABLE, "the bootstrap servers of the true-end probe"),
    (faust_aiokafka.Transport, "Consumer", "attribute", "installing the true-end consumer class"),
    (Codec, "_dumps", CALLABLE, "encoding the changelog records of the account-state table"),
    (Codec, "_loads", CALLABLE, "decoding the changelog records when a table is recovered"),
    (Collection, "_new_changelog_topic", CALLABLE, "giving the table's changelog topic the changelog codec"),
    (faust_aiokafka.Producer, "_ensure_producer", CALLABLE, "per-partition batches: no batch can be committed"),
    (AIOKafkaProducer, "create_batch", CALLABLE, "per-partition batches: no batch can be committed"),
    (AIOKafkaProducer, "send_batch", COROUTINE, "per-partition batches: no batch can be committed"),
    (AIOKafkaClient, "force_metadata_update", CALLABLE, "the config reader waiting for a new config topic"),
]


@pytest.mark.parametrize("owner, name, shape, breaks", PRIVATE, ids=[f"{o.__name__}.{n}" for o, n, *_ in PRIVATE])
def test_a_private_attribute_the_adapter_relies_on_is_still_there(owner, name, shape, breaks):
    found = getattr(owner, name, None)
    assert found is not None, f"{owner.__name__}.{name} is gone after an upgrade: {breaks}"
    if shape == COROUTINE:
        assert inspect.iscoroutinefunction(found), f"{owner.__name__}.{name} is no longer async: {breaks}"
    elif shape == CALLABLE:
        assert callable(found), f"{owner.__name__}.{name} is no longer callable: {breaks}"


def test_the_true_end_consumer_thread_is_the_one_faust_runs():
    app = faust.App("adapter-check", broker="kafka://127.0.0.1:1", store="memory://")
    faust_adapter.install_true_end_offsets(app)
    assert type(app.consumer._thread) is faust_adapter._TrueEndConsumerThread, (
        "faust no longer builds its consumer thread with Consumer._new_consumer_thread: tables would be "
        "recovered to ListOffsets latest, one batch short on the local broker")
    assert app.consumer.in_transaction is False, "the consumer's in_transaction flag, read by _highwaters, is gone"


def test_the_table_memory_and_changelog_codec_are_where_the_adapter_writes():
    app = faust.App("adapter-check", broker="kafka://127.0.0.1:1", store="memory://")
    table = app.Table("account-state", default=None, key_type=bytes)
    faust_adapter.use_changelog_codec(table)
    assert table.changelog_topic.value_serializer is faust_adapter.CHANGELOG_CODEC, (
        "the changelog topic made again by _new_changelog_topic does not use the table's codec")
    assert type(table.data) is Store and isinstance(table.data.data, dict), (
        "the memory store no longer keeps its values in .data: FaustLog.records reads nothing")
    assert isinstance(table.data._key_partition, dict), (
        "the memory store lost _key_partition: revoked partitions would keep their keys")
    marker = Flushed(3, 10, 2)
    assert faust_adapter.CHANGELOG_CODEC.dumps(marker) == encode_record(marker)
    assert faust_adapter.CHANGELOG_CODEC.loads(encode_record(marker)) == marker


def test_an_aiokafka_consumer_still_has_its_client():
    async def client_of() -> object:
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
        try:
            return getattr(consumer, "_client", None)
        finally:
            await consumer.stop()

    client = asyncio.run(client_of())
    assert isinstance(client, AIOKafkaClient), (
        "AIOKafkaConsumer._client is gone: the config reader cannot force a metadata update")


# -- eager_first: faust's per-message wait_first without its four tasks ---------------------------

class _Service(mode.Service):
    """A bare mode service: its wait_first is the one the consumer inherits."""


def _run(coro):
    return asyncio.run(coro)


def test_a_delivery_that_does_not_wait_makes_no_task_and_never_starts_the_other():
    calls = []

    async def spied_wait_first(*coros):
        calls.append(coros)

    async def deliver():
        return "delivered"

    async def main():
        other = asyncio.Event().wait()
        result = await faust_adapter.eager_first(spied_wait_first, deliver(), other)
        return result, other

    result, other = _run(main())
    assert list(result.results) == ["delivered"] and not result.stopped
    assert calls == [] and other.cr_frame is None  # closed before it ever ran: no "never awaited" warning


def test_a_delivery_that_waits_is_raced_and_finishes_with_its_value():
    async def main():
        service, room = _Service(), asyncio.get_running_loop().create_future()

        async def deliver():
            await asyncio.sleep(0)  # a bare yield to the loop, then a real wait
            return await room

        asyncio.get_running_loop().call_later(0.01, room.set_result, "delivered late")
        return await faust_adapter.eager_first(service.wait_first, deliver(), asyncio.Event().wait())

    result = _run(main())
    assert list(result.results) == ["delivered late"] and not result.stopped


def test_a_waiting_delivery_is_cancelled_when_the_other_finishes_first():
    seen = []

    async def main():
        service, suspended = _Service(), asyncio.Event()

        async def deliver():
            try:
                await asyncio.get_running_loop().create_future()  # a full queue: never room
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        asyncio.get_running_loop().call_later(0.01, suspended.set)
        await faust_adapter.eager_first(service.wait_first, deliver(), suspended.wait())
        await asyncio.sleep(0.01)

    _run(main())
    assert seen == ["cancelled"]


@pytest.mark.parametrize("wait_first_", [False, True], ids=["at once", "after waiting"])
def test_a_delivery_that_fails_raises_its_error(wait_first_):
    async def main():
        service = _Service()

        async def deliver():
            if wait_first_:
                await asyncio.sleep(0.001)
            raise ValueError("no such topic")

        await faust_adapter.eager_first(service.wait_first, deliver(), asyncio.Event().wait())

    with pytest.raises(ValueError, match="no such topic"):
        _run(main())


def test_the_consumer_delivers_eagerly():
    app = faust.App("adapter-eager-check", broker="kafka://127.0.0.1:1", store="memory://")
    faust_adapter.install_true_end_offsets(app)
    consumer = app.consumer
    assert type(consumer).wait_first is not mode.Service.wait_first
    for name in ("_stopped", "_crashed", "suspend_flow"):
        assert hasattr(consumer, name), f"Consumer.{name} is gone: the eager delivery cannot tell a stopping consumer"
    assert "wait_first" in inspect.getsource(faust_aiokafka.Consumer._drain_messages), (
        "faust's drain loop no longer delivers through wait_first: the eager delivery does nothing")
