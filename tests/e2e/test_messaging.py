"""Messaging through the real mesh, as a client sees it (PROTOCOL.md): acks and delivery, live
delivery across gateway instances, multi-device fan-out, idempotent retries, order.

Every test makes its own users. Waits are frames awaited with deadlines, never sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from client import Clients, Connection, Frame, assert_message, order_violations, unique

from launcher.mesh import Mesh

pytestmark = pytest.mark.e2e


@pytest.fixture
async def chat(mesh: Mesh) -> AsyncIterator[Clients]:
    async with Clients(mesh.edge_url, mesh.ports.gateway_http) as clients:
        yield clients


async def barrier(*conns: Connection) -> None:
    """Each socket answered a ping: what the server sent it before is already received."""
    await asyncio.gather(*(conn.ping() for conn in conns))


# --- send, ack, deliver ---------------------------------------------------------------------------


async def test_send_is_acknowledged_then_delivered(chat: Clients) -> None:
    (a,), (b,) = await chat.user(), await chat.user()
    ws_a, ws_b = await chat.connect(a), await chat.connect(b)
    content = 'héllo wörld 😀 — "quoted" \\ back\nslash, שלום, e\u0301'
    cmid = await ws_a.send_message(b.user_id, content, "c-1")

    ack = await ws_a.wait_ack(cmid)
    assert {"client_msg_id", "msg_id", "conversation_id", "timestamp"} <= set(ack)
    assert ack["client_msg_id"] == "c-1"
    assert isinstance(ack["msg_id"], str) and ack["msg_id"].isdigit()
    assert isinstance(ack["conversation_id"], str) and ack["conversation_id"]
    assert isinstance(ack["timestamp"], int)

    got = await ws_b.wait_message(ack["msg_id"])
    assert_message(
        got,
        msg_id=ack["msg_id"],
        conversation_id=ack["conversation_id"],
        sender=a.user_id,
        to=b.user_id,
        content=content,
        client_msg_id="c-1",
    )


async def test_token_in_query_sends_and_receives(chat: Clients) -> None:
    (a,), (b,) = await chat.user(), await chat.user()
    ws_a = await chat.connect(a, auth="query")
    ws_b = await chat.connect(b, auth="query")
    ack = await ws_a.send_and_ack(b.user_id, "via query token")
    assert (await ws_b.wait_message(ack["msg_id"]))["content"] == "via query token"


async def test_conversation_id_is_the_same_for_both_participants(chat: Clients) -> None:
    (a,), (b,), (c,) = await chat.user(), await chat.user(), await chat.user()
    ws_a, ws_b = await chat.connect(a), await chat.connect(b)
    a_to_b = await ws_a.send_and_ack(b.user_id, "a to b")
    b_to_a = await ws_b.send_and_ack(a.user_id, "b to a")
    a_to_c = await ws_a.send_and_ack(c.user_id, "a to c")
    assert a_to_b["conversation_id"] == b_to_a["conversation_id"]
    assert a_to_c["conversation_id"] != a_to_b["conversation_id"]
    assert int(b_to_a["msg_id"]) > int(a_to_b["msg_id"])
    got = await ws_a.wait_message(b_to_a["msg_id"])
    assert got["conversation_id"] == a_to_b["conversation_id"]


@pytest.mark.parametrize(("sender_gw", "recipient_gw"), [(0, 1), (1, 0), (0, 0)])
async def test_live_delivery_across_gateway_instances(
    chat: Clients, sender_gw: int, recipient_gw: int
) -> None:
    """Guarantee 5: the recipient is on another instance and receives live, without syncing."""
    (a,), (b,) = await chat.user(), await chat.user()
    ws_a = await chat.connect(a, chat.gw(sender_gw))
    ws_b = await chat.connect(b, chat.gw(recipient_gw))
    await barrier(ws_a, ws_b)  # both sockets are served, hence registered
    for n in range(3):
        ack = await ws_a.send_and_ack(b.user_id, f"ping {n}")
        got = await ws_b.wait_message(ack["msg_id"])
        assert_message(got, sender=a.user_id, to=b.user_id, content=f"ping {n}")
        reply = await ws_b.send_and_ack(a.user_id, f"pong {n}")
        got = await ws_a.wait_message(reply["msg_id"])
        assert_message(got, sender=b.user_id, to=a.user_id, content=f"pong {n}")
    assert not ws_a.of("sync_done") and not ws_b.of("sync_done")  # nobody synced


async def test_fan_out_to_every_device_of_both_users(chat: Clients) -> None:
    """Guarantee 3: the recipient's devices and the sender's other devices, on both gateways."""
    a_devices, b_devices = await chat.user(3), await chat.user(2)
    a1 = await chat.connect(a_devices[0], chat.gw(0), label="a1")
    a2 = await chat.connect(a_devices[1], chat.gw(1), label="a2")
    a3 = await chat.connect(a_devices[2], chat.gw(0), label="a3")
    b1 = await chat.connect(b_devices[0], chat.gw(0), label="b1")
    b2 = await chat.connect(b_devices[1], chat.gw(1), label="b2")
    a, b = a_devices[0], b_devices[0]
    await barrier(a1, a2, a3, b1, b2)

    ack = await a1.send_and_ack(b.user_id, "to all of you")
    for conn in (a2, a3, b1, b2):
        got = await conn.wait_message(ack["msg_id"])
        assert_message(
            got,
            sender=a.user_id,
            to=b.user_id,
            content="to all of you",
            client_msg_id=ack["client_msg_id"],
            conversation_id=ack["conversation_id"],
        )

    reply = await b2.send_and_ack(a.user_id, "back to you all")
    for conn in (a1, a2, a3, b1):
        got = await conn.wait_message(reply["msg_id"])
        assert_message(got, sender=b.user_id, to=a.user_id, content="back to you all")

    # "sent by the peer, or by this user from another device": not echoed to the sending device.
    await barrier(a1, b2)
    assert ack["msg_id"] not in {f["msg_id"] for f in a1.messages()}
    assert reply["msg_id"] not in {f["msg_id"] for f in b2.messages()}


async def test_a_device_that_logs_in_later_gets_the_history(chat: Clients) -> None:
    """A new device (of the recipient and of the sender) starts at the beginning of its
    history: `sync` with a null cursor brings every earlier message of both directions."""
    (a,), (b,) = await chat.user(), await chat.user()
    ws_a, ws_b = await chat.connect(a), await chat.connect(b)
    acks = [await ws_a.send_and_ack(b.user_id, "one"), await ws_b.send_and_ack(a.user_id, "two")]
    acks.append(await ws_a.send_and_ack(b.user_id, "three"))
    expected = [ack["msg_id"] for ack in acks]

    for user in (a, b):
        later = await chat.api().login(user.username, device_id=unique("new-"))
        conn = await chat.connect(later)
        synced = await conn.sync_all(None)
        mine = [f for f in synced.messages if f["conversation_id"] == acks[0]["conversation_id"]]
        assert [f["msg_id"] for f in mine] == expected
        assert [f["content"] for f in mine] == ["one", "two", "three"]
        assert isinstance(synced.cursor, str)


# --- idempotency ----------------------------------------------------------------------------------


async def copies(chat: Clients, username: str, cmid: str, sender: str) -> list[Frame]:
    """The messages with `client_msg_id` from `sender` that a brand-new device of `username`
    syncs, duplicates on the wire dropped by msg_id."""
    device = await chat.api().login(username, device_id=unique("check-"))
    conn = await chat.connect(device)
    synced = await conn.sync_all(None)
    await conn.close()
    by_id = {f["msg_id"]: f for f in synced.messages}  # drop wire duplicates by msg_id
    return [f for f in by_id.values() if f["client_msg_id"] == cmid and f["from"] == sender]


async def test_retry_on_the_same_connection_yields_the_same_msg_id(chat: Clients) -> None:
    (a,), (b,) = await chat.user(), await chat.user()
    ws_a, ws_b = await chat.connect(a, chat.gw(0)), await chat.connect(b, chat.gw(1))
    first = await ws_a.send_and_ack(b.user_id, "only once", "retry-1")
    await ws_b.wait_message(first["msg_id"])

    start = len(ws_a.frames)
    await ws_a.send_message(b.user_id, "only once", "retry-1")
    again = await ws_a.wait_for(
        "message_ack", lambda f: f["client_msg_id"] == "retry-1", start=start
    )
    assert again["msg_id"] == first["msg_id"]
    assert again["conversation_id"] == first["conversation_id"]

    # "At any time": after other messages in between, still the same message.
    for n in range(5):
        await ws_a.send_and_ack(b.user_id, f"between {n}")
    start = len(ws_a.frames)
    await ws_a.send_message(b.user_id, "only once", "retry-1")
    later = await ws_a.wait_for(
        "message_ack", lambda f: f["client_msg_id"] == "retry-1", start=start
    )
    assert later["msg_id"] == first["msg_id"]

    await barrier(ws_b)
    assert {f["msg_id"] for f in ws_b.messages() if f["client_msg_id"] == "retry-1"} == {
        first["msg_id"]
    }
    assert len(await copies(chat, b.username, "retry-1", a.user_id)) == 1
    assert len(await copies(chat, a.username, "retry-1", a.user_id)) == 1


async def test_retry_without_waiting_for_the_ack(chat: Clients) -> None:
    (a,), (b,) = await chat.user(), await chat.user()
    ws_a = await chat.connect(a)
    for _ in range(3):
        await ws_a.send_message(b.user_id, "eager", "eager-1")
    answers = await wait_answers(ws_a, "eager-1", 3)
    assert [f["action"] for f in answers] == ["message_ack"] * 3, answers
    assert len({f["msg_id"] for f in answers}) == 1
    assert len(await copies(chat, b.username, "eager-1", a.user_id)) == 1


async def wait_answers(conn: Connection, cmid: str, count: int) -> list[Frame]:
    """The first `count` answers (message_ack or error) to sends with `cmid` on `conn`."""
    found: list[Frame] = []
    index = -1
    for _ in range(count):
        index = await conn.find_any(
            lambda f: f["action"] in ("message_ack", "error") and f.get("client_msg_id") == cmid,
            start=index + 1,
        )
        found.append(conn.frames[index])
    return found


async def test_retry_on_another_connection_device_and_gateway(chat: Clients) -> None:
    """Same sender, same client_msg_id: another socket of the device on the other gateway, and
    another device of the same user, get the same msg_id; nobody gets a second copy."""
    (a1, a2), (b,) = await chat.user(2), await chat.user()
    ws_b = await chat.connect(b, chat.gw(1))
    first_conn = await chat.connect(a1, chat.gw(0))
    first = await first_conn.send_and_ack(b.user_id, "hello", "multi-1")
    await first_conn.close()

    other_socket = await chat.connect(a1, chat.gw(1))
    again = await other_socket.send_and_ack(b.user_id, "hello", "multi-1")
    other_device = await chat.connect(a2, chat.edge)
    third = await other_device.send_and_ack(b.user_id, "hello", "multi-1")
    assert again["msg_id"] == third["msg_id"] == first["msg_id"]

    await barrier(ws_b)
    assert {f["msg_id"] for f in ws_b.messages() if f["client_msg_id"] == "multi-1"} == {
        first["msg_id"]
    }
    assert len(await copies(chat, b.username, "multi-1", a1.user_id)) == 1


async def test_concurrent_retries_on_two_gateways(chat: Clients) -> None:
    (a,), (b,) = await chat.user(), await chat.user()
    ws_1, ws_2 = await chat.connect(a, chat.gw(0)), await chat.connect(a, chat.gw(1))
    await barrier(ws_1, ws_2)
    for n in range(5):
        cmid = f"race-{n}"
        await asyncio.gather(
            ws_1.send_message(b.user_id, f"race {n}", cmid),
            ws_2.send_message(b.user_id, f"race {n}", cmid),
        )
        one, two = await asyncio.gather(ws_1.wait_ack(cmid), ws_2.wait_ack(cmid))
        assert one["msg_id"] == two["msg_id"], (one, two)
    device = await chat.api().login(b.username, device_id=unique("check-"))
    conn = await chat.connect(device)
    synced = await conn.sync_all(None)
    by_id = {f["msg_id"]: f for f in synced.messages}
    assert sorted(f["client_msg_id"] for f in by_id.values()) == [f"race-{n}" for n in range(5)]


async def test_same_client_msg_id_from_two_senders_is_two_messages(chat: Clients) -> None:
    (a,), (c,), (b,) = await chat.user(), await chat.user(), await chat.user()
    ws_a, ws_c, ws_b = await chat.connect(a), await chat.connect(c), await chat.connect(b)
    from_a = await ws_a.send_and_ack(b.user_id, "from a", "shared-id")
    from_c = await ws_c.send_and_ack(b.user_id, "from c", "shared-id")
    assert from_a["msg_id"] != from_c["msg_id"]
    assert (await ws_b.wait_message(from_a["msg_id"]))["content"] == "from a"
    assert (await ws_b.wait_message(from_c["msg_id"]))["content"] == "from c"


# --- order ----------------------------------------------------------------------------------------


async def test_order_of_a_burst_live_and_in_sync(chat: Clients) -> None:
    """Guarantee 4: messages sent on one connection keep their sending order (msg_ids increase),
    and every device receives them in that order, live and in sync."""
    (a1, a2), (b1, b2) = await chat.user(2), await chat.user(2)
    sender = await chat.connect(a1, chat.gw(0))
    watchers = [
        await chat.connect(a2, chat.gw(1)),
        await chat.connect(b1, chat.gw(1)),
        await chat.connect(b2, chat.gw(0)),
    ]
    await barrier(sender, *watchers)
    count = 60
    for n in range(count):  # a burst, well under the 200-frame burst limit
        await sender.send_message(b1.user_id, f"burst {n}", f"burst-{n}")
    acks = [await sender.wait_ack(f"burst-{n}") for n in range(count)]
    ids = [int(ack["msg_id"]) for ack in acks]
    assert ids == sorted(ids) and len(set(ids)) == count

    expected = [ack["msg_id"] for ack in acks]
    for conn in watchers:
        await conn.wait_message(expected[-1], within=20.0)
        received = list(dict.fromkeys(f["msg_id"] for f in conn.messages()))
        assert received == expected, conn.label

    later = await chat.api().login(b1.username, device_id=unique("new-"))
    synced = await (await chat.connect(later)).sync_all(None)
    assert list(dict.fromkeys(f["msg_id"] for f in synced.messages)) == expected


async def test_order_with_both_participants_sending_at_once(chat: Clients) -> None:
    (a1, a2), (b1, b2) = await chat.user(2), await chat.user(2)
    ws_a1, ws_b1 = await chat.connect(a1, chat.gw(0)), await chat.connect(b1, chat.gw(1))
    ws_a2, ws_b2 = await chat.connect(a2, chat.gw(1)), await chat.connect(b2, chat.gw(0))
    await barrier(ws_a1, ws_a2, ws_b1, ws_b2)
    count = 40

    async def burst(conn: Connection, to: str, tag: str) -> list[str]:
        for n in range(count):
            await conn.send_message(to, f"{tag} {n}", f"{tag}-{n}")
        return [(await conn.wait_ack(f"{tag}-{n}"))["msg_id"] for n in range(count)]

    from_a, from_b = await asyncio.gather(
        burst(ws_a1, b1.user_id, "a"), burst(ws_b1, a1.user_id, "b")
    )
    for ids in (from_a, from_b):
        assert [int(i) for i in ids] == sorted(int(i) for i in ids)
    everything = sorted(from_a + from_b, key=int)

    # Each device receives the conversation in msg_id order (the sending device gets only the
    # peer's messages live; its other device gets both sides).
    expect = {
        "a1": [i for i in everything if i in set(from_b)],
        "b1": [i for i in everything if i in set(from_a)],
        "a2": everything,
        "b2": everything,
    }
    for name, conn in (("a1", ws_a1), ("b1", ws_b1), ("a2", ws_a2), ("b2", ws_b2)):
        await conn.wait_message(expect[name][-1], within=20.0)
        for msg_id in expect[name]:
            await conn.wait_message(msg_id)
        received = list(dict.fromkeys(f["msg_id"] for f in conn.messages()))
        assert [i for i in received if i in set(expect[name])] == expect[name], name
        assert not order_violations([conn.frames]), name

    later = await chat.api().login(a1.username, device_id=unique("new-"))
    synced = await (await chat.connect(later, chat.gw(1))).sync_all(None)
    assert list(dict.fromkeys(f["msg_id"] for f in synced.messages)) == everything


# --- the edge while sockets come and go -----------------------------------------------------------


async def test_closing_sockets_keeps_the_edge_available(chat: Clients) -> None:
    """Clients closing their WebSockets normally is everyday traffic: the edge keeps serving
    REST and new sockets right after (PROTOCOL.md: 503 only when a dependency is down)."""
    (a,) = await chat.user()
    conns = [await chat.connect(a) for _ in range(8)]
    await barrier(*conns)
    for conn in conns:
        await conn.close()
    api = chat.api()
    answers = [(await api.call("GET", "/healthz"))[0] for _ in range(10)]
    status, body = await api.call(
        "POST", "/api/v1/users", json_body={"username": unique(), "password": "correct horse"}
    )
    answers.append(status)
    assert answers == [200] * 10 + [201], f"statuses {answers}, last body {body}"
    again = await chat.connect(a)
    await again.ping()
