"""The log writer and the sync barrier against a real broker and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
from chatmesh.message.v1 import message_pb2, store_pb2, store_pb2_grpc
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from launcher import servers
from persister.__main__ import register
from persister.consumer import LogWriter
from persister.history import Barrier, MessageStoreServicer
from persister.logend import LogEnd
from persister.store import LogRecord
from persister.stores.postgres import PostgresMessageStore, migrate
from svckit.conversations import conversation_id
from svckit.errors import Unavailable, reason_of
from svckit.kafka import consumer_config, producer_config
from svckit.lifecycle import start_server
from svckit.pg import open_pool
from svckit.testing import eventually


@pytest.fixture
async def store(pg: object) -> AsyncIterator[PostgresMessageStore]:
    pool = await open_pool(pg.dsn(f"persister_{uuid.uuid4().hex[:10]}"), min_size=1, max_size=4)  # type: ignore[attr-defined]
    try:
        await migrate(pool)
        yield PostgresMessageStore(pool)
    finally:
        await pool.close()


@pytest.fixture
def topic(kafka_bootstrap: str) -> str:
    name = f"test.messages.{uuid.uuid4().hex[:8]}"
    servers.create_topics(kafka_bootstrap, {name: 3})
    return name


def produce(bootstrap: str, topic: str, count: int, start: int = 1) -> list[message_pb2.Message]:
    producer = Producer(producer_config(bootstrap, max_batch_records=1, timeout_s=10))
    sent = []
    for i in range(start, start + count):
        sender, recipient = f"user{i % 3}", f"user{(i % 3) + 1}"
        m = message_pb2.Message(
            msg_id=10_000 + i,
            conversation_id=conversation_id(sender, recipient),
            sender_id=sender,
            sender_device_id="d",
            recipient_id=recipient,
            content=f"m{i}",
            client_msg_id=f"c{i}",
        )
        producer.produce(topic, key=m.conversation_id.encode(), value=m.SerializeToString())
        sent.append(m)
    assert producer.flush(10) == 0
    return sent


async def stored_ids(store: PostgresMessageStore, sent: list[message_pb2.Message]) -> list[int]:
    ids: list[int] = []
    for conv in {m.conversation_id for m in sent}:
        ids += [m.msg_id for m in await store.history(conv, 0, 100)]
    return sorted(ids)


async def run_writer(
    bootstrap: str, topic: str, store: PostgresMessageStore, group: str
) -> tuple[LogWriter, asyncio.Event, asyncio.Task[None]]:
    writer = LogWriter(consumer_config(bootstrap, group, "test"), topic, store, batch_max=7)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    return writer, stop, task


async def test_barrier_waits_for_the_writer_and_replays_store_nothing_twice(
    kafka_bootstrap: str, topic: str, store: PostgresMessageStore
) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    barrier = Barrier(store, topic, LogEnd(admin, topic, 5), timeout_s=0.3)
    first = produce(kafka_bootstrap, topic, 20)
    # Nothing writes yet: the barrier must refuse rather than let a sync miss messages.
    with pytest.raises(Unavailable):
        await barrier.wait()

    group = f"g-{uuid.uuid4().hex[:6]}"
    _, stop, task = await run_writer(kafka_bootstrap, topic, store, group)
    barrier.timeout_s = 30
    await barrier.wait()
    assert await stored_ids(store, first) == sorted(m.msg_id for m in first)
    stop.set()
    await asyncio.wait_for(task, 15)

    # A new member of the same group resumes after the committed offsets.
    second = produce(kafka_bootstrap, topic, 10, start=100)
    writer, stop, task = await run_writer(kafka_bootstrap, topic, store, group)
    await barrier.wait()
    everything = first + second
    assert await stored_ids(store, everything) == sorted(m.msg_id for m in everything)
    stop.set()
    await asyncio.wait_for(task, 15)

    # A member of a new group replays the whole log: the store still holds each message once.
    _, stop, task = await run_writer(kafka_bootstrap, topic, store, f"{group}-replay")

    async def replayed() -> bool:
        return sum((await store.applied_offsets(topic)).values()) >= len(everything)

    await eventually(replayed, 30, what="the replay reaching the log end")
    stop.set()
    await asyncio.wait_for(task, 15)
    assert await stored_ids(store, everything) == sorted(m.msg_id for m in everything)


async def test_a_record_that_is_not_a_message_is_skipped(
    kafka_bootstrap: str, topic: str, store: PostgresMessageStore
) -> None:
    producer = Producer(producer_config(kafka_bootstrap, max_batch_records=1, timeout_s=10))
    producer.produce(topic, key=b"k", partition=0, value=b"\xff\xff not protobuf")
    assert producer.flush(10) == 0
    good = produce(kafka_bootstrap, topic, 3)
    _, stop, task = await run_writer(kafka_bootstrap, topic, store, f"g-{uuid.uuid4().hex[:6]}")

    async def stored() -> bool:
        return await stored_ids(store, good) == sorted(m.msg_id for m in good)

    await eventually(stored, 30, what="the good records being stored")
    # The bad record's offset was passed too: the writer is not stuck behind it.
    await eventually(
        lambda: _applied_beyond(store, topic, 0), 30, what="partition 0 moving past the bad record"
    )
    stop.set()
    await asyncio.wait_for(task, 15)


async def _applied_beyond(store: PostgresMessageStore, topic: str, partition: int) -> bool:
    applied = await store.applied_offsets(topic)
    return applied.get(partition, 0) >= 1


async def test_batch_ack_answers_each_ack_on_its_own_in_one_call(
    kafka_bootstrap: str, topic: str, store: PostgresMessageStore
) -> None:
    ann_bo = [
        message_pb2.Message(
            msg_id=50_000 + i,
            conversation_id=conversation_id("ann", "bo"),
            sender_id="ann",
            sender_device_id="d",
            recipient_id="bo",
            content=f"a{i}",
            client_msg_id=f"a{i}",
        )
        for i in range(3)
    ]
    await store.apply([LogRecord(topic, 0, i, m) for i, m in enumerate(ann_bo)], {})
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    servicer = MessageStoreServicer(store, Barrier(store, topic, LogEnd(admin, topic, 5), 5))
    srv = await start_server("127.0.0.1", 0, lambda s: register(s, servicer))
    conv = ann_bo[0].conversation_id

    def ack(user: str, msg_id: int, conversation: str = "") -> store_pb2.AckMessagesRequest:
        return store_pb2.AckMessagesRequest(
            user_id=user, device_id="phone", msg_id=msg_id, conversation_id=conversation
        )

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = store_pb2_grpc.MessageStoreServiceStub(channel)
            reply = await stub.BatchAckMessages(
                store_pb2.BatchAckMessagesRequest(
                    requests=[
                        ack("bo", ann_bo[0].msg_id, conv),  # conversation given by the gateway
                        ack("bo", ann_bo[1].msg_id),  # looked up
                        ack("cy", ann_bo[1].msg_id),  # not cy's conversation
                        ack("bo", 7),  # no such message
                        store_pb2.AckMessagesRequest(user_id="bo", msg_id=ann_bo[2].msg_id),
                        ack("ann", ann_bo[2].msg_id),  # the sender's own device
                    ]
                )
            )
            outcome = [
                (r.error_reason, r.response.conversation_id, r.response.acked_msg_id)
                for r in reply.results
            ]
            assert outcome == [
                ("", conv, ann_bo[1].msg_id),  # the position after the call: the batch's highest
                ("", conv, ann_bo[1].msg_id),
                ("bad_field", "", 0),
                ("bad_field", "", 0),
                ("bad_request", "", 0),
                ("", conv, ann_bo[2].msg_id),
            ]
            assert "no message 7" in reply.results[3].error_message
            page = await store.sync_page("bo", "phone", {}, 10)
            assert [m.content for m in page.messages] == ["a2"]
            # The unary call takes the same path and refuses the same way.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.AckMessages(ack("cy", ann_bo[0].msg_id))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason_of(refused.value) == "bad_field"
            single = await stub.AckMessages(ack("bo", ann_bo[2].msg_id))
            assert (single.conversation_id, single.acked_msg_id) == (conv, ann_bo[2].msg_id)
            with pytest.raises(grpc.aio.AioRpcError) as too_many:
                await stub.BatchAckMessages(
                    store_pb2.BatchAckMessagesRequest(requests=[ack("bo", 1)] * 1001)
                )
            assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await srv.stop(1)


class CountingAdmin:
    """The real AdminClient, counting its ListOffsets requests."""

    def __init__(self, admin: AdminClient) -> None:
        self.admin = admin
        self.list_offsets_calls = 0

    def list_topics(self, *args: Any, **kwargs: Any) -> Any:
        return self.admin.list_topics(*args, **kwargs)

    def list_offsets(self, *args: Any, **kwargs: Any) -> Any:
        self.list_offsets_calls += 1
        return self.admin.list_offsets(*args, **kwargs)


async def test_log_end_reads_are_shared_and_never_older_than_the_call(
    kafka_bootstrap: str, topic: str
) -> None:
    admin = CountingAdmin(AdminClient({"bootstrap.servers": kafka_bootstrap}))
    log_end = LogEnd(cast(AdminClient, admin), topic, 5)
    assert sum((await log_end()).values()) == 0
    before = admin.list_offsets_calls
    # A reconnect storm's worth of barriers at once: a couple of broker requests, not 200.
    ends = await asyncio.gather(*(log_end() for _ in range(200)))
    assert all(e == ends[0] for e in ends)
    assert admin.list_offsets_calls - before <= 2
    # A call that starts after records were acknowledged sees them, even while reads are shared.
    sent = produce(kafka_bootstrap, topic, 5)
    later = await asyncio.gather(*(log_end() for _ in range(50)))
    assert all(sum(e.values()) == len(sent) for e in later)
    await log_end.aclose()
