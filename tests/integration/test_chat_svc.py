"""chat_svc's send path against a real broker and a real Redis-protocol server.

Live routing is its own component (chat_svc.delivery, covered end to end); here a recording
router stands in for it so the test can see what would be routed, in which order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from chatmesh.chat.v1 import chat_pb2
from chatmesh.message.v1 import message_pb2
from confluent_kafka import Consumer, TopicPartition

from chat_svc.events import LogProducer
from chat_svc.ids import IdGenerator
from chat_svc.lease import WorkerLease
from chat_svc.ledger import SendLedger
from chat_svc.logic import Chat, KnownUsers
from launcher import servers
from svckit.errors import InvalidArgument, NotFound
from svckit.kafka import producer_config

USERS = {"alice", "bob", "carol"}


class Recorder:
    def __init__(self) -> None:
        self.routed: list[message_pb2.Message] = []

    async def route(self, message: message_pb2.Message) -> None:
        self.routed.append(message)


async def known(user_id: str) -> bool:
    return user_id in USERS


@pytest.fixture
def topic(kafka_bootstrap: str) -> str:
    name = f"test.chat.{uuid.uuid4().hex[:8]}"
    servers.create_topics(kafka_bootstrap, {name: 4})
    return name


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


class Instance:
    """One chat_svc instance's send path: its own lease, id generator and producer."""

    def __init__(self, chat: Chat, lease: WorkerLease, producer: LogProducer, router: Recorder):
        self.chat, self.lease, self.producer, self.router = chat, lease, producer, router


@pytest.fixture
async def instances(
    client: redis.Redis, kafka_bootstrap: str, topic: str
) -> AsyncIterator[list[Instance]]:
    made = []
    for n in range(2):
        lease = WorkerLease(client, f"test-{n}-{uuid.uuid4().hex[:6]}", ttl_s=30)
        await lease.acquire()
        producer = LogProducer(producer_config(kafka_bootstrap, 1, 10))
        router = Recorder()
        chat = Chat(
            ledger=SendLedger(client, 3600),
            ids=IdGenerator(lease.current()),
            worker=lease.current,
            publisher=producer,
            topic=topic,
            users=KnownUsers(known),
            router=router,
        )
        made.append(Instance(chat, lease, producer, router))
    yield made
    for inst in made:
        await inst.producer.close()
        await inst.lease.release()


def request(sender: str, to: str, cmid: str, content: str = "hello") -> chat_pb2.SendMessageRequest:
    return chat_pb2.SendMessageRequest(
        sender_id=sender,
        sender_device_id="phone",
        recipient_id=to,
        content=content,
        client_msg_id=cmid,
        timestamp=1_700_000_000,
    )


def read_log(bootstrap: str, topic: str) -> list[tuple[int, int, message_pb2.Message]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"r-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        out = []
        for p in meta.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            seen = 0
            while seen < high - low:
                msg = consumer.poll(5)
                assert msg is not None, "log shorter than its watermark"
                if msg.error():
                    continue
                out.append((p, msg.offset(), message_pb2.Message.FromString(msg.value())))
                seen += 1
        return out
    finally:
        consumer.close()


async def test_a_retry_on_either_instance_yields_the_first_msg_id_and_one_record(
    instances: list[Instance], kafka_bootstrap: str, topic: str
) -> None:
    a, b = instances
    first = await a.chat.send(request("alice", "bob", "m-1"))
    again = await a.chat.send(request("alice", "bob", "m-1"))
    elsewhere = await b.chat.send(request("alice", "bob", "m-1"))
    assert not first.duplicate and again.duplicate and elsewhere.duplicate
    assert first.message.msg_id == again.message.msg_id == elsewhere.message.msg_id
    assert first.message.conversation_id == elsewhere.message.conversation_id
    # Same key from another sender is another message.
    other = await b.chat.send(request("bob", "alice", "m-1"))
    assert other.message.msg_id != first.message.msg_id
    log = await asyncio.to_thread(read_log, kafka_bootstrap, topic)
    assert sorted(m.msg_id for _, _, m in log) == sorted(
        {first.message.msg_id, other.message.msg_id}
    )
    assert [m.msg_id for m in a.router.routed] == [first.message.msg_id]


async def test_racing_attempts_on_two_instances_agree_on_one_msg_id(
    instances: list[Instance], kafka_bootstrap: str, topic: str
) -> None:
    a, b = instances
    for n in range(5):
        req = request("alice", "bob", f"race-{n}")
        one, two = await asyncio.gather(a.chat.send(req), b.chat.send(req))
        assert one.message.msg_id == two.message.msg_id
        assert [one.duplicate, two.duplicate].count(False) == 1  # exactly one claim won
    log = await asyncio.to_thread(read_log, kafka_bootstrap, topic)
    # A loser that finds the claim still pending finishes it (publishes again under the same
    # msg_id; the store and clients dedupe): never a second msg_id.
    assert len({m.client_msg_id: m.msg_id for _, _, m in log}) == 5
    assert len({m.msg_id for _, _, m in log}) == 5


async def test_ids_increase_in_log_order_within_a_conversation_across_instances(
    instances: list[Instance], kafka_bootstrap: str, topic: str
) -> None:
    a, b = instances
    # b's clock runs 1.5 s ahead: after a fail-over a's ids must still continue above b's.
    b.chat.ids.clock = lambda: a.chat.ids.clock() + 1500
    sent = []
    for i in range(12):
        inst = b if i in (3, 4, 9) else a
        sender, to = ("alice", "carol") if i % 2 else ("carol", "alice")
        sent.append(await inst.chat.send(request(sender, to, f"o-{i}")))
    ids = [s.message.msg_id for s in sent]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    log = await asyncio.to_thread(read_log, kafka_bootstrap, topic)
    partitions = {p for p, _, _ in log}
    assert len(partitions) == 1  # one conversation, one partition
    assert [m.msg_id for _, _, m in sorted(log, key=lambda r: r[1])] == ids


async def test_pipelined_sends_in_one_conversation_keep_their_order(
    instances: list[Instance],
) -> None:
    a, _ = instances
    results = await asyncio.gather(
        *(a.chat.send(request("bob", "carol", f"p-{i}", f"n{i}")) for i in range(30))
    )
    ids = [r.message.msg_id for r in results]
    assert ids == sorted(ids)
    assert [m.content for m in a.router.routed] == [f"n{i}" for i in range(30)]
    assert len(a.chat.locks) == 0  # per-conversation locks are dropped when idle


async def test_a_claim_left_pending_by_a_crash_is_finished_by_the_retry(
    instances: list[Instance], client: redis.Redis, kafka_bootstrap: str, topic: str
) -> None:
    a, b = instances
    # Simulate instance a dying after claiming but before publishing.
    req = request("alice", "bob", "crash-1")
    message = a.chat._number(req, "dm:alice:bob", 0)
    assert await a.chat.ledger.claim(message) is None
    retried = await b.chat.send(req)
    assert retried.duplicate and retried.message.msg_id == message.msg_id
    log = await asyncio.to_thread(read_log, kafka_bootstrap, topic)
    assert [m.msg_id for _, _, m in log] == [message.msg_id]
    assert [m.msg_id for m in b.router.routed] == [message.msg_id]
    entry = await a.chat.ledger.get("alice", "crash-1")
    assert entry is not None and entry.durable


async def test_refusals_carry_the_protocol_codes(instances: list[Instance]) -> None:
    a, _ = instances
    with pytest.raises(NotFound) as nf:
        await a.chat.send(request("alice", "mallory", "x-1"))
    assert nf.value.reason == "unknown_recipient"
    cases = {
        "content_too_long": request("alice", "bob", "x-2", "é" * 4097),
        "bad_field": request("alice", "bob", "x-3", ""),
        "missing_field": request("alice", "bob", ""),
    }
    for reason, req in cases.items():
        with pytest.raises(InvalidArgument) as caught:
            await a.chat.send(req)
        assert caught.value.reason == reason
    # 4096 characters (code points, not bytes) is allowed.
    ok = await a.chat.send(request("alice", "bob", "x-4", "é" * 4096))
    assert not ok.duplicate


async def test_worker_leases_are_distinct_and_given_back(client: redis.Redis) -> None:
    leases = [WorkerLease(client, f"owner-{i}", ttl_s=30) for i in range(20)]
    workers = [await lease.acquire() for lease in leases]
    assert len(set(workers)) == 20
    assert await leases[0].refresh()
    await leases[0].release()
    assert not await client.exists(f"chat:worker:{workers[0]}")
    for lease in leases[1:]:
        await lease.release()
