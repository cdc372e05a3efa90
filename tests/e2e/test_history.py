"""History and the conversation list over REST (PROTOCOL.md, REST): newest first, paging with
`before` / `next_before`, `limit` 1..100, 403 for a non-participant, 401 without a token; the
conversation list with `last_message` and `unread`, newest first.

History is read from the store, which follows the log: reads that must see a just-acknowledged
message wait for it with a deadline (`eventually`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from client import Api, Clients, Connection, Frame, Session, assert_message

from launcher.mesh import Mesh
from svckit.testing import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
async def chat(mesh: Mesh) -> AsyncIterator[Clients]:
    async with Clients(mesh.edge_url, mesh.ports.gateway_http) as clients:
        yield clients


def assert_error(answer: tuple[int, Any], status: int, code: str | None = None) -> None:
    got_status, body = answer
    assert got_status == status, answer
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body


async def converse(
    a_conn: Connection, b_conn: Connection, a: Session, b: Session, count: int
) -> list[Frame]:
    """`count` messages alternating a -> b and b -> a; their acks, oldest first."""
    acks = []
    for n in range(count):
        conn, to = (a_conn, b.user_id) if n % 2 == 0 else (b_conn, a.user_id)
        acks.append(await conn.send_and_ack(to, f"message {n}", f"h-{n}"))
    return acks


async def history_holds(api: Api, token: str, conversation: str, msg_id: str) -> None:
    """Wait until the newest message in the conversation's history is `msg_id`."""

    async def newest_is_there() -> bool:
        status, body = await api.history(token, conversation, limit=1)
        return status == 200 and [m["msg_id"] for m in body["messages"]] == [msg_id]

    await eventually(newest_is_there, timeout_s=15.0, what=f"{msg_id} in history")


# --- history --------------------------------------------------------------------------------------


async def test_history_is_newest_first_with_every_field(chat: Clients) -> None:
    (a,), (b,) = await chat.user(), await chat.user()
    ws_a, ws_b = await chat.connect(a), await chat.connect(b)
    acks = await converse(ws_a, ws_b, a, b, 7)
    conversation = acks[0]["conversation_id"]
    api = chat.api()
    await history_holds(api, a.token, conversation, acks[-1]["msg_id"])

    for user in (a, b):  # the same conversation for both participants
        status, body = await api.history(user.token, conversation)
        assert status == 200, body
        assert set(body) >= {"messages", "next_before"}
        assert body["next_before"] is None
        assert [m["msg_id"] for m in body["messages"]] == [x["msg_id"] for x in reversed(acks)]
        for message, n in zip(body["messages"], reversed(range(7)), strict=True):
            sender, to = (a, b) if n % 2 == 0 else (b, a)
            assert "action" not in message
            assert_message(
                message,
                conversation_id=conversation,
                sender=sender.user_id,
                to=to.user_id,
                content=f"message {n}",
                client_msg_id=f"h-{n}",
            )


async def test_history_pages_with_before_and_next_before(chat: Clients) -> None:
    (a,), (b,) = await chat.user(), await chat.user()
    ws_a, ws_b = await chat.connect(a, chat.gw(0)), await chat.connect(b, chat.gw(1))
    acks = await converse(ws_a, ws_b, a, b, 7)
    conversation = acks[0]["conversation_id"]
    newest_first = [x["msg_id"] for x in reversed(acks)]
    api = chat.api()
    await history_holds(api, b.token, conversation, newest_first[0])

    pages: list[list[str]] = []
    before: str | None = None
    while True:
        status, body = await api.history(b.token, conversation, before=before, limit=3)
        assert status == 200, body
        pages.append([m["msg_id"] for m in body["messages"]])
        assert len(pages[-1]) <= 3
        if body["next_before"] is None:
            break
        assert isinstance(body["next_before"], str)
        before = body["next_before"]
        assert len(pages) < 10
    assert [i for page in pages for i in page] == newest_first
    assert pages[:3] == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]

    # `before` is exclusive: what is strictly older than that msg_id.
    status, body = await api.history(b.token, conversation, before=newest_first[2])
    assert status == 200, body
    assert [m["msg_id"] for m in body["messages"]] == newest_first[3:]
    assert body["next_before"] is None
    # Older than the oldest: nothing.
    status, body = await api.history(b.token, conversation, before=newest_first[-1])
    assert (status, body["messages"], body["next_before"]) == (200, [], None)


async def test_history_limit_defaults_to_50(chat: Clients) -> None:
    (a,), (b,) = await chat.user(), await chat.user()
    ws_a = await chat.connect(a)
    acks = []
    for start in range(0, 55, 25):
        batch = [f"d-{n}" for n in range(start, min(start + 25, 55))]
        for cmid in batch:
            await ws_a.send_message(b.user_id, cmid, cmid)
        acks.extend([await ws_a.wait_ack(cmid) for cmid in batch])
    conversation = acks[0]["conversation_id"]
    newest_first = [x["msg_id"] for x in reversed(acks)]
    api = chat.api()
    await history_holds(api, a.token, conversation, newest_first[0])

    status, body = await api.history(a.token, conversation)
    assert status == 200
    assert [m["msg_id"] for m in body["messages"]] == newest_first[:50]
    assert body["next_before"] is not None
    status, body = await api.history(a.token, conversation, before=body["next_before"])
    assert [m["msg_id"] for m in body["messages"]] == newest_first[50:]
    status, body = await api.history(a.token, conversation, limit=100)
    assert [m["msg_id"] for m in body["messages"]] == newest_first
    assert body["next_before"] is None
    status, body = await api.history(a.token, conversation, limit=1)
    assert [m["msg_id"] for m in body["messages"]] == newest_first[:1]
    assert body["next_before"] is not None


@pytest.mark.parametrize("limit", ["0", "101", "-1", "1000", "abc", "1.5"])
async def test_history_limit_out_of_range_is_400(chat: Clients, limit: str) -> None:
    (a,), (b,) = await chat.user(), await chat.user()
    ws_a = await chat.connect(a)
    ack = await ws_a.send_and_ack(b.user_id, "hi")
    answer = await chat.api().history(a.token, ack["conversation_id"], limit=limit)
    assert_error(answer, 400, "bad_request")


async def test_history_with_a_bad_before_is_400(chat: Clients) -> None:
    (a,), (b,) = await chat.user(), await chat.user()
    ws_a = await chat.connect(a)
    ack = await ws_a.send_and_ack(b.user_id, "hi")
    for before in ("abc", "-5", "18446744073709551616"):  # the last is 2**64
        answer = await chat.api().history(a.token, ack["conversation_id"], before=before)
        assert_error(answer, 400, "bad_request")


async def test_history_is_forbidden_to_a_non_participant(chat: Clients) -> None:
    (a,), (b,), (c,) = await chat.user(), await chat.user(), await chat.user()
    ws_a = await chat.connect(a)
    ack = await ws_a.send_and_ack(b.user_id, "private")
    conversation = ack["conversation_id"]
    api = chat.api()
    await history_holds(api, b.token, conversation, ack["msg_id"])
    assert_error(await api.history(c.token, conversation), 403, "forbidden")
    assert_error(await api.history(c.token, conversation, limit=1), 403, "forbidden")


async def test_history_needs_a_token(chat: Clients) -> None:
    (a,), (b,) = await chat.user(), await chat.user()
    ws_a = await chat.connect(a)
    ack = await ws_a.send_and_ack(b.user_id, "hi")
    api = chat.api()
    assert_error(await api.history(None, ack["conversation_id"]), 401)
    assert_error(await api.history("not-a-token", ack["conversation_id"]), 401)
    assert_error(await api.call("GET", "/api/v1/conversations"), 401)
    assert_error(await api.call("GET", "/api/v1/conversations", token="not-a-token"), 401)


# --- conversations --------------------------------------------------------------------------------


def entry(conversations: list[Frame], conversation_id: str) -> Frame:
    found = [c for c in conversations if c["conversation_id"] == conversation_id]
    assert len(found) == 1, conversations
    return found[0]


async def test_a_new_user_has_no_conversations(chat: Clients) -> None:
    (a,) = await chat.user()
    assert await chat.api().conversations(a.token) == []


async def test_conversations_newest_first_with_last_message_and_unread(chat: Clients) -> None:
    (b,), (a,), (c,) = await chat.user(), await chat.user(), await chat.user()
    ws_a, ws_b, ws_c = await chat.connect(a), await chat.connect(b), await chat.connect(c)
    from_a = [await ws_a.send_and_ack(b.user_id, f"a{n}") for n in range(2)]
    from_c = [await ws_c.send_and_ack(b.user_id, f"c{n}") for n in range(3)]
    last_a = await ws_a.send_and_ack(b.user_id, "a last")
    conv_a, conv_c = from_a[0]["conversation_id"], from_c[0]["conversation_id"]
    api = chat.api()

    async def as_expected() -> bool:
        convs = await api.conversations(b.token)
        return [x["conversation_id"] for x in convs] == [conv_a, conv_c] and (
            entry(convs, conv_a)["last_message"] or {}
        ).get("msg_id") == last_a["msg_id"]

    await eventually(as_expected, timeout_s=15.0, what="b's conversation list")
    convs = await api.conversations(b.token)
    with_a, with_c = entry(convs, conv_a), entry(convs, conv_c)
    assert set(with_a) >= {"conversation_id", "peer_id", "last_message", "unread"}
    assert (with_a["peer_id"], with_c["peer_id"]) == (a.user_id, c.user_id)
    assert_message(
        with_a["last_message"],
        msg_id=last_a["msg_id"],
        conversation_id=conv_a,
        sender=a.user_id,
        to=b.user_id,
        content="a last",
        client_msg_id=last_a["client_msg_id"],
    )
    assert_message(with_c["last_message"], msg_id=from_c[-1]["msg_id"], content="c2")
    assert (with_a["unread"], with_c["unread"]) == (3, 3)

    # The senders see the conversation from their side, with nothing unread.
    for sender, conversation, peer in ((a, conv_a, b), (c, conv_c, b)):
        mine = await api.conversations(sender.token)
        assert [x["conversation_id"] for x in mine] == [conversation]
        assert (mine[0]["peer_id"], mine[0]["unread"]) == (peer.user_id, 0)

    # A reply makes c's conversation the newest for b.
    reply = await ws_b.send_and_ack(c.user_id, "b answers c")

    async def c_first() -> bool:
        order = [x["conversation_id"] for x in await api.conversations(b.token)]
        return order == [conv_c, conv_a]

    await eventually(c_first, timeout_s=15.0, what="c's conversation first after b's reply")
    convs = await api.conversations(b.token)
    assert entry(convs, conv_c)["last_message"]["msg_id"] == reply["msg_id"]


async def test_ack_lowers_unread(chat: Clients) -> None:
    (a,), (b,) = await chat.user(), await chat.user()
    ws_a, ws_b = await chat.connect(a), await chat.connect(b)
    acks = [await ws_a.send_and_ack(b.user_id, f"m{n}") for n in range(4)]
    conversation = acks[0]["conversation_id"]
    for ack in acks:
        await ws_b.wait_message(ack["msg_id"])
    api = chat.api()

    async def unread_is(count: int) -> None:
        async def check() -> bool:
            convs = await api.conversations(b.token)
            return [x["unread"] for x in convs if x["conversation_id"] == conversation] == [count]

        await eventually(check, timeout_s=15.0, what=f"unread == {count}")

    await unread_is(4)
    await ws_b.ack(acks[1]["msg_id"])
    await unread_is(2)
    await ws_b.ack(acks[3]["msg_id"])
    await unread_is(0)
    # A new message from the peer is unread again.
    await ws_a.send_and_ack(b.user_id, "one more")
    await unread_is(1)
