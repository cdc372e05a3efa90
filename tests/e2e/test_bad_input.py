"""Bad input on the WebSocket (PROTOCOL.md guarantee 6): an `error` frame with a stable code, the
socket stays open, and the process keeps serving everyone else; a frame over 64 KiB closes with
1009; flooding gets `rate_limited` error frames, then close 1008.

Build a valid frame, break one field, assert the code; after each, the same socket and a
bystander's socket on the same gateway are still served.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from client import Clients, Connection, Frame, Session, now_s

from launcher.mesh import Mesh

pytestmark = pytest.mark.e2e

KIB = 1024


@pytest.fixture
async def chat(mesh: Mesh) -> AsyncIterator[Clients]:
    async with Clients(mesh.edge_url, mesh.ports.gateway_http) as clients:
        yield clients


@pytest.fixture
async def pair(chat: Clients) -> tuple[Session, Session]:
    (a,), (b,) = await chat.user(), await chat.user()
    return a, b


def valid_send(to: str, /, **changes: Any) -> dict[str, Any]:
    """A valid `send_message`, with `changes` applied (a value of `...` removes the field)."""
    frame: dict[str, Any] = {
        "action": "send_message",
        "to": to,
        "content": "hello",
        "timestamp": now_s(),
        "client_msg_id": "bad-input-1",
    }
    for key, value in changes.items():
        if value is ...:
            frame.pop(key, None)
        else:
            frame[key] = value
    return frame


async def expect_error(conn: Connection, text: str, code: str) -> Frame:
    """Send `text`; the next `error` frame has `code`, a message, and the socket still works."""
    start = len(conn.frames)
    await conn.send_raw(text)
    frame = await conn.wait_for("error", start=start)
    assert frame["code"] == code, (text[:200], frame)
    assert isinstance(frame["message"], str) and frame["message"], frame
    await conn.ping()
    return frame


async def still_served(chat: Clients, conn: Connection, bystander: Connection) -> None:
    await conn.ping()
    await bystander.ping()
    assert not conn.closed.is_set()


def cases(to: str) -> list[tuple[str, str]]:
    """(frame text, expected code): one broken thing each."""
    send = valid_send
    return [
        ("not json", "bad_json"),
        ("{", "bad_json"),
        ("", "bad_json"),
        ("[]", "bad_json"),
        ('["send_message"]', "bad_json"),
        ("null", "bad_json"),
        ("42", "bad_json"),
        ('"send_message"', "bad_json"),
        ('{"action": "delete_everything"}', "unknown_action"),
        ('{"action": "SEND_MESSAGE"}', "unknown_action"),
        (json.dumps(send(to, to=...)), "missing_field"),
        (json.dumps(send(to, content=...)), "missing_field"),
        (json.dumps(send(to, client_msg_id=...)), "missing_field"),
        (json.dumps(send(to, timestamp=...)), "missing_field"),
        (json.dumps(send(to, to=12345)), "bad_field"),
        (json.dumps(send(to, to="")), "bad_field"),
        (json.dumps(send(to, to=[to])), "bad_field"),
        (json.dumps(send(to, content="")), "bad_field"),
        (json.dumps(send(to, content=5)), "bad_field"),
        (json.dumps(send(to, content={"text": "hi"})), "bad_field"),
        (json.dumps(send(to, client_msg_id="")), "bad_field"),
        (json.dumps(send(to, client_msg_id=7)), "bad_field"),
        (json.dumps(send(to, timestamp="now")), "bad_field"),
        (json.dumps(send(to, timestamp=[1])), "bad_field"),
        ('{"action": "ack"}', "missing_field"),
        ('{"action": "ack", "msg_id": 5}', "bad_field"),
        ('{"action": "ack", "msg_id": ""}', "bad_field"),
        ('{"action": "ack", "msg_id": ["1"]}', "bad_field"),
        # Well formed, but no message of this user: refused by the store.
        ('{"action": "ack", "msg_id": "5"}', "bad_field"),
        ('{"action": "sync", "cursor": 5}', "bad_field"),
        ('{"action": "sync", "cursor": {"a": 1}}', "bad_field"),
        (json.dumps(send(to, content="x" * 4097)), "content_too_long"),
        (json.dumps(send(to, to="999999999999999999")), "unknown_recipient"),
        (json.dumps(send(to, to="no-such-user")), "unknown_recipient"),
    ]


async def test_every_bad_frame_gets_its_code(chat: Clients, pair: tuple[Session, Session]) -> None:
    a, b = pair
    conn = await chat.connect(a, chat.gw(0))
    bystander = await chat.connect(b, chat.gw(0))
    problems: list[str] = []
    for text, code in cases(b.user_id):
        start = len(conn.frames)
        await conn.send_raw(text)
        frame = await conn.wait_for("error", start=start)
        if frame.get("code") != code or not isinstance(frame.get("message"), str):
            problems.append(f"{text[:120]!r}: expected {code}, got {frame}")
        await still_served(chat, conn, bystander)
    assert not problems, "\n".join(problems)
    assert not conn.of("message_ack"), conn.of("message_ack")  # nothing bad was accepted


@pytest.mark.parametrize(
    ("field", "value"),
    [("content", "x" * 4097), ("to", "999999999999999999")],
    ids=["content_too_long", "unknown_recipient"],
)
async def test_refused_send_names_its_client_msg_id(
    chat: Clients, pair: tuple[Session, Session], field: str, value: str
) -> None:
    """A well-formed send refused for its content carries its client_msg_id, so the client
    knows which message failed; and it was not delivered."""
    a, b = pair
    conn = await chat.connect(a)
    receiver = await chat.connect(b)
    frame = await expect_error(
        conn,
        json.dumps(valid_send(b.user_id, **{field: value, "client_msg_id": "refused-1"})),
        "content_too_long" if field == "content" else "unknown_recipient",
    )
    assert frame.get("client_msg_id") == "refused-1", frame
    ok = await conn.send_and_ack(b.user_id, "a good one after")
    await receiver.wait_message(ok["msg_id"])
    assert [f["client_msg_id"] for f in receiver.messages()] == [ok["client_msg_id"]]


async def test_content_length_counts_code_points(
    chat: Clients, pair: tuple[Session, Session]
) -> None:
    """4096 characters are fine however many bytes or UTF-16 units they take; 4097 are not."""
    a, b = pair
    conn = await chat.connect(a)
    receiver = await chat.connect(b)
    for content in ("x" * 4096, "é" * 4096, "😀" * 4096, "e\u0301" * 2048):
        ack = await conn.send_and_ack(b.user_id, content)
        got = await receiver.wait_message(ack["msg_id"])
        assert got["content"] == content
    for content in ("x" * 4097, "😀" * 4097, "e\u0301" * 2048 + "x"):
        await expect_error(
            conn, json.dumps(valid_send(b.user_id, content=content)), "content_too_long"
        )
        await expect_error(
            conn,
            json.dumps(valid_send(b.user_id, content=content), ensure_ascii=False),
            "content_too_long",
        )


async def test_a_frame_of_64_kib_is_served(chat: Clients, pair: tuple[Session, Session]) -> None:
    """Only a frame *over* 64 KiB closes the socket: exactly 65536 bytes is still served."""
    a, _ = pair
    conn = await chat.connect(a)
    head, tail = '{"action": "ping"', "}"
    text = head + " " * (64 * KIB - len(head) - len(tail)) + tail  # JSON whitespace is valid
    assert len(text.encode()) == 64 * KIB
    start = len(conn.frames)
    await conn.send_raw(text)
    await conn.wait_for("pong", start=start)
    assert not conn.closed.is_set()


@pytest.mark.parametrize("via_edge", [True, False], ids=["edge", "gateway"])
async def test_a_frame_over_64_kib_closes_1009(
    chat: Clients, pair: tuple[Session, Session], via_edge: bool
) -> None:
    a, b = pair
    base = chat.edge if via_edge else chat.gw(1)
    conn = await chat.connect(a, base)
    bystander = await chat.connect(b, chat.gw(1))
    await conn.ping()
    head, tail = '{"action": "ping"', "}"
    await conn.send_raw(head + " " * (64 * KIB + 1 - len(head) - len(tail)) + tail)
    assert await conn.wait_closed() == 1009
    await bystander.ping()
    # The same user connects again at once and is served.
    again = await chat.connect(a, base)
    await again.ping()


async def wait_count(conn: Connection, action: str, count: int, within: float = 10.0) -> int:
    """Index of the `count`-th frame with `action`, waiting for it."""
    index = -1
    for _ in range(count):
        index = await conn.find(action, start=index + 1, within=within)
    return index


async def test_a_burst_of_200_frames_is_served(
    chat: Clients, pair: tuple[Session, Session]
) -> None:
    """The default limit lets one connection send a burst of 200 frames."""
    a, _ = pair
    conn = await chat.connect(a)
    for _ in range(200):
        await conn.send({"action": "ping"})
    last = await wait_count(conn, "pong", 200)
    assert not conn.of("error"), conn.of("error")[:3]
    assert conn.frames[: last + 1] == [{"action": "pong"}] * 200


async def test_flooding_gets_rate_limited_then_1008(
    chat: Clients, pair: tuple[Session, Session]
) -> None:
    a, b = pair
    conn = await chat.connect(a, chat.gw(0))
    bystander = await chat.connect(b, chat.gw(0))
    other_socket_of_the_flooder = await chat.connect(a, chat.gw(0))
    await conn.ping()
    sent = 0
    try:
        while not conn.closed.is_set() and sent < 50_000:
            await conn.send({"action": "ping"})
            sent += 1
            if sent % 500 == 0:
                await asyncio.sleep(0)  # let the reader run
    except (aiohttp.ClientError, ConnectionError):
        pass  # the server closed the socket under us
    assert await conn.wait_closed(within=20.0) == 1008, (sent, conn.frames[-3:])
    limited = [f for f in conn.of("error") if f.get("code") == "rate_limited"]
    assert limited, f"closed 1008 after {sent} frames without any rate_limited error frame"
    assert all(isinstance(f["message"], str) for f in limited)
    first_limited = conn.frames.index(limited[0])
    assert conn.frames[:first_limited].count({"action": "pong"}) >= 200  # the burst was served
    await bystander.ping()
    await other_socket_of_the_flooder.ping()
