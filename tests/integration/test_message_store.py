"""The message store contract, run against every store implementation that can run here.

PostgreSQL always runs (a real server from the `pg` fixture). ScyllaDB runs when a cluster is
configured (CHATMESH_SCYLLA_CONTACT_POINTS) and is skipped with that reason otherwise.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from chatmesh.message.v1 import message_pb2

from persister.store import Ack, LogRecord, MessageStore
from persister.stores import postgres
from svckit.conversations import conversation_id
from svckit.pg import open_pool

TOPIC = "chatmesh.messages"
_ids = itertools.count(1_000_000)


@pytest.fixture(params=["postgres", "scylla"])
async def store(request: pytest.FixtureRequest, pg: object) -> AsyncIterator[MessageStore]:
    if request.param == "scylla":
        if not os.environ.get("CHATMESH_SCYLLA_CONTACT_POINTS"):
            pytest.skip("no ScyllaDB cluster configured (set CHATMESH_SCYLLA_CONTACT_POINTS)")
        pytest.skip("the ScyllaDB store arrives with its own issue")
    dsn = pg.dsn(f"store_{uuid.uuid4().hex[:12]}")  # type: ignore[attr-defined]
    pool = await open_pool(dsn, min_size=1, max_size=4)
    try:
        await postgres.migrate(pool)
        yield postgres.PostgresMessageStore(pool)
    finally:
        await pool.close()


def msg(
    sender: str, recipient: str, content: str = "hi", device: str = "d1"
) -> message_pb2.Message:
    mid = next(_ids)
    return message_pb2.Message(
        msg_id=mid,
        conversation_id=conversation_id(sender, recipient),
        sender_id=sender,
        sender_device_id=device,
        recipient_id=recipient,
        content=content,
        client_msg_id=f"c{mid}",
        timestamp=1_700_000_000,
        server_ts_ms=1_700_000_000_000,
    )


def records(
    messages: list[message_pb2.Message], start: int = 0, partition: int = 0
) -> list[LogRecord]:
    return [LogRecord(TOPIC, partition, start + i, m) for i, m in enumerate(messages)]


async def test_replayed_batch_stores_nothing_twice(store: MessageStore) -> None:
    batch = [msg("alice", "bob", f"m{i}") for i in range(5)]
    await store.apply(records(batch), {})
    await store.apply(records(batch), {})  # a replay after a crash before the commit
    await store.apply(records(batch[2:], start=2), {})
    got = await store.history(batch[0].conversation_id, 0, 100)
    assert [m.msg_id for m in got] == [m.msg_id for m in reversed(batch)]
    assert got[0] == batch[-1]
    assert (await store.applied_offsets(TOPIC)) == {0: 5}


async def test_applied_offsets_never_move_back(store: MessageStore) -> None:
    await store.apply(records([msg("a1", "b1")], start=40, partition=3), {})
    await store.apply(records([msg("a1", "b1")], start=10, partition=3), {})
    await store.apply(records([msg("a1", "b1")], start=7, partition=5), {})
    # A batch of records the writer skipped still moves its partition on.
    await store.apply([], {(TOPIC, 6): 12})
    assert (await store.applied_offsets(TOPIC)) == {3: 41, 5: 8, 6: 12}


async def test_history_pages_newest_first(store: MessageStore) -> None:
    batch = [msg("carol", "dave", f"m{i}") for i in range(7)]
    await store.apply(records(batch), {})
    conv = batch[0].conversation_id
    first = await store.history(conv, 0, 3)
    assert [m.content for m in first] == ["m6", "m5", "m4"]
    second = await store.history(conv, first[-1].msg_id, 3)
    assert [m.content for m in second] == ["m3", "m2", "m1"]
    third = await store.history(conv, second[-1].msg_id, 3)
    assert [m.content for m in third] == ["m0"]
    assert await store.history(conversation_id("carol", "nobody"), 0, 3) == []


async def test_sync_pages_oldest_first_and_skips_the_devices_own_messages(
    store: MessageStore,
) -> None:
    a_to_b = [msg("erin", "frank", f"e{i}") for i in range(3)]
    b_to_a = [msg("frank", "erin", f"f{i}", device="phone") for i in range(2)]
    other = [msg("gina", "frank", f"g{i}") for i in range(2)]
    await store.apply(records(a_to_b + b_to_a + other), {})

    # frank's phone sent b_to_a itself: sync gives it the rest, oldest first per conversation.
    seen: list[str] = []
    positions: dict[str, int] = {}
    pages = 0
    while True:
        page = await store.sync_page("frank", "phone", positions, limit=2)
        pages += 1
        assert len(page.messages) <= 2
        seen += [m.content for m in page.messages]
        positions.update(page.positions)
        if not page.has_more:
            break
    assert pages >= 3
    assert sorted(seen) == ["e0", "e1", "e2", "g0", "g1"]
    assert [s for s in seen if s.startswith("e")] == ["e0", "e1", "e2"]
    # frank's laptop, a new device, gets his own messages from the phone too.
    laptop = await store.sync_page("frank", "laptop", {}, limit=100)
    assert sorted(m.content for m in laptop.messages) == ["e0", "e1", "e2", "f0", "f1", "g0", "g1"]
    assert not laptop.has_more


async def test_ack_moves_positions_forward_only_and_sync_resumes_after_it(
    store: MessageStore,
) -> None:
    batch = [msg("hank", "iris", f"h{i}") for i in range(4)]
    await store.apply(records(batch), {})
    conv = batch[0].conversation_id
    assert await store.conversations_of([batch[1].msg_id, 1, batch[2].msg_id]) == {
        batch[1].msg_id: conv,
        batch[2].msg_id: conv,
    }
    assert await store.conversations_of([]) == {}
    tab = ("iris", "tab", conv)
    assert await store.ack([Ack(*tab, batch[1].msg_id)]) == {tab: batch[1].msg_id}
    assert await store.ack([Ack(*tab, batch[0].msg_id)]) == {tab: batch[1].msg_id}
    page = await store.sync_page("iris", "tab", {}, limit=10)
    assert [m.content for m in page.messages] == ["h2", "h3"]
    # another device of iris is unaffected
    page = await store.sync_page("iris", "phone", {}, limit=10)
    assert [m.content for m in page.messages] == ["h0", "h1", "h2", "h3"]


async def test_one_ack_call_moves_many_positions_each_to_its_highest(store: MessageStore) -> None:
    ab = [msg("ann", "bo", f"a{i}") for i in range(3)]
    cd = [msg("cy", "bo", f"c{i}") for i in range(2)]
    await store.apply(records(ab + cd), {})
    ab_conv, cd_conv = ab[0].conversation_id, cd[0].conversation_id
    after = await store.ack(
        [
            Ack("bo", "phone", ab_conv, ab[2].msg_id),
            Ack("bo", "phone", ab_conv, ab[0].msg_id),  # same position, lower: no effect
            Ack("bo", "laptop", ab_conv, ab[1].msg_id),
            Ack("bo", "phone", cd_conv, cd[0].msg_id),
        ]
    )
    assert after == {
        ("bo", "phone", ab_conv): ab[2].msg_id,
        ("bo", "laptop", ab_conv): ab[1].msg_id,
        ("bo", "phone", cd_conv): cd[0].msg_id,
    }
    assert [m.content for m in (await store.sync_page("bo", "phone", {}, 10)).messages] == ["c1"]
    assert [m.content for m in (await store.sync_page("bo", "laptop", {}, 10)).messages] == [
        "a2",
        "c0",
        "c1",
    ]
    assert await store.ack([]) == {}
    # The read positions follow the highest of the user's devices: nothing unread from ann.
    unread = {c.peer_id: c.unread for c in await store.conversations("bo", 10)}
    assert unread == {"ann": 0, "cy": 1}


async def test_conversations_newest_first_with_unread(store: MessageStore) -> None:
    older = [msg("jack", "kim", "j0"), msg("kim", "jack", "k0"), msg("jack", "kim", "j1")]
    newer = [msg("lee", "kim", "l0")]
    await store.apply(records(older + newer), {})
    convs = await store.conversations("kim", 10)
    assert [c.peer_id for c in convs] == ["lee", "jack"]
    assert convs[0].last_message.content == "l0"
    assert convs[1].last_message.content == "j1"
    assert [c.unread for c in convs] == [1, 2]
    await store.ack([Ack("kim", "d", older[0].conversation_id, older[0].msg_id)])
    convs = await store.conversations("kim", 10)
    assert [c.unread for c in convs] == [1, 1]
    jack_view = await store.conversations("jack", 10)
    assert [(c.peer_id, c.unread) for c in jack_view] == [("kim", 1)]


async def test_cursors_are_kept_per_device(store: MessageStore) -> None:
    positions = {f"dm:u{i}:v{i}": 10_000 + i for i in range(2000)}  # a heavy user's sync
    await store.save_cursor("h1", "iris", "tab", positions)
    assert await store.load_cursor("h1", "iris", "tab") == positions
    assert await store.load_cursor("h1", "iris", "phone") is None
    assert await store.load_cursor("h1", "mallory", "tab") is None
    assert await store.load_cursor("unknown", "iris", "tab") is None
