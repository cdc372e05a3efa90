"""A small chat client for the end-to-end tests, written from PROTOCOL.md alone.

- `Api`: the REST side (register, login, profiles, conversations, history) against one base URL.
- `Connection`: one WebSocket of one device. A reader task collects every frame in arrival order
  (`frames`); `wait_for` waits, with a deadline, for the first frame of an action that matches a
  predicate; `sync_all` runs `sync` while `has_more`; `send_message`, `ack`, `ping`.
- `Device`: a device that stays connected: when its socket closes it reconnects (rotating over
  the base URLs it was given) with `?resume=<last cursor>`, as PROTOCOL.md tells a client to, and
  keeps every connection's frames for the checks (`seen`, `order_violations`).
- `Sender`: sends numbered messages continuously from a `Device`, retries what got no
  `message_ack` with the same `client_msg_id`, and records every ack.

Every wait is a condition with a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

WAIT_S = 10.0  # deadline for anything the mesh should do "at once"
PASSWORD = "correct horse"

# Error codes that mean "this frame is wrong": retrying the same frame cannot help.
BAD_INPUT_CODES = frozenset(
    {
        "bad_json",
        "unknown_action",
        "missing_field",
        "bad_field",
        "content_too_long",
        "unknown_recipient",
    }
)

Frame = dict[str, Any]
Predicate = Callable[[Frame], bool]


def unique(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:16]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://", 1) + "/api/v1/ws"


def now_s() -> int:
    return int(time.time())


# --- REST -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """One logged-in device of one user."""

    user_id: str
    username: str
    device_id: str
    token: str


class Api:
    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json_body: Any = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One request; (status, decoded JSON body or None for 204). Asserts JSON, never HTML."""
        headers = bearer(token) if token is not None else {}
        async with self.http.request(
            method,
            self.base + path,
            headers=headers,
            json=json_body,
            params=params,
            timeout=aiohttp.ClientTimeout(total=3 * WAIT_S),
        ) as resp:
            ctype = resp.headers.get("Content-Type", "")
            assert "html" not in ctype, (resp.status, ctype)
            if resp.status == 204:
                return resp.status, None
            assert ctype.startswith("application/json"), (resp.status, ctype, await resp.text())
            return resp.status, await resp.json()

    async def register(self, username: str | None = None) -> dict[str, Any]:
        name = username or unique()
        status, body = await self.call(
            "POST", "/api/v1/users", json_body={"username": name, "password": PASSWORD}
        )
        assert status == 201, (status, body)
        return dict(body)

    async def login(self, username: str, device_id: str | None = None) -> Session:
        payload = {"username": username, "password": PASSWORD}
        if device_id is not None:
            payload["device_id"] = device_id
        status, body = await self.call("POST", "/api/v1/sessions", json_body=payload)
        assert status == 201, (status, body)
        return Session(body["user_id"], username, body["device_id"], body["token"])

    async def user(self, devices: int = 1) -> list[Session]:
        """A new user logged in on `devices` devices with distinct device ids."""
        profile = await self.register()
        return [
            await self.login(profile["username"], device_id=unique("dev-")) for _ in range(devices)
        ]

    async def conversations(self, token: str) -> list[Frame]:
        status, body = await self.call("GET", "/api/v1/conversations", token=token)
        assert status == 200, (status, body)
        assert isinstance(body["conversations"], list), body
        return list(body["conversations"])

    async def history(
        self,
        token: str | None,
        conversation_id: str,
        *,
        before: str | None = None,
        limit: int | str | None = None,
    ) -> tuple[int, Any]:
        params: dict[str, str] = {}
        if before is not None:
            params["before"] = before
        if limit is not None:
            params["limit"] = str(limit)
        return await self.call(
            "GET",
            f"/api/v1/conversations/{conversation_id}/messages",
            token=token,
            params=params,
        )

    async def full_history(
        self, token: str, conversation_id: str, limit: int | None = None
    ) -> list[Frame]:
        """Every message of a conversation, newest first, walking `next_before` to its end."""
        out: list[Frame] = []
        before: str | None = None
        for _ in range(10_000):
            status, body = await self.history(token, conversation_id, before=before, limit=limit)
            assert status == 200, (status, body)
            out.extend(body["messages"])
            if body["next_before"] is None:
                return out
            before = body["next_before"]
        raise AssertionError("history paging did not end")


# --- one WebSocket --------------------------------------------------------------------------------


class ConnectionClosed(AssertionError):
    """The socket closed while a frame was awaited."""


class Connection:
    """One WebSocket of one device; every received frame is kept in `frames`, in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, base: str, label: str = "") -> None:
        self.ws = ws
        self.base = base
        self.label = label
        self.frames: list[Frame] = []
        self.arrived: list[float] = []  # time.monotonic() of each frame, for diagnostics
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._changed = asyncio.Condition()
        self._hooks: list[Callable[[Frame], None]] = []
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(
        cls,
        http: aiohttp.ClientSession,
        base: str,
        token: str,
        *,
        resume: str | None = None,
        auth: str = "header",
        label: str = "",
        hooks: Iterable[Callable[[Frame], None]] = (),
    ) -> Connection:
        """Open `GET /api/v1/ws` on `base`; `resume` adds `?resume=` (may be empty)."""
        params: dict[str, str] = {}
        headers: dict[str, str] = {}
        if auth == "header":
            headers = bearer(token)
        else:
            params["token"] = token
        if resume is not None:
            params["resume"] = resume
        ws = await http.ws_connect(
            ws_url(base),
            headers=headers,
            params=params,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=WAIT_S),
        )
        conn = cls(ws, base, label)
        conn._hooks.extend(hooks)
        return conn

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    frame = json.loads(msg.data)
                else:
                    frame = {"action": f"<{msg.type.name}>"}
                for hook in self._hooks:
                    hook(frame)
                async with self._changed:
                    self.frames.append(frame)
                    self.arrived.append(time.monotonic())
                    self._changed.notify_all()
        except (aiohttp.ClientError, ConnectionError, TimeoutError):
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            async with self._changed:
                self._changed.notify_all()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        self.closed.set()

    # -- sending

    async def send(self, frame: Frame) -> None:
        await self.ws.send_str(json.dumps(frame))

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def send_message(
        self,
        to: str,
        content: str,
        client_msg_id: str | None = None,
        timestamp: int | None = None,
    ) -> str:
        """Send one `send_message`; returns its client_msg_id (without waiting for the ack)."""
        cmid = client_msg_id or unique("c-")
        await self.send(
            {
                "action": "send_message",
                "to": to,
                "content": content,
                "timestamp": now_s() if timestamp is None else timestamp,
                "client_msg_id": cmid,
            }
        )
        return cmid

    async def ack(self, msg_id: str) -> None:
        await self.send({"action": "ack", "msg_id": msg_id})

    # -- receiving

    async def find(
        self,
        action: str,
        predicate: Predicate | None = None,
        *,
        start: int = 0,
        within: float = WAIT_S,
    ) -> int:
        """Index of the first frame at or after `start` with `action` matching `predicate`."""

        def matches(frame: Frame) -> bool:
            return frame.get("action") == action and (predicate is None or predicate(frame))

        return await self.find_any(matches, start=start, within=within, what=action)

    async def find_any(
        self, predicate: Predicate, *, start: int = 0, within: float = WAIT_S, what: str = "frame"
    ) -> int:
        """Index of the first frame at or after `start` matching `predicate`, waiting for it."""
        deadline = time.monotonic() + within
        index = start
        async with self._changed:
            while True:
                while index < len(self.frames):
                    if predicate(self.frames[index]):
                        return index
                    index += 1
                if self.closed.is_set():
                    raise ConnectionClosed(
                        f"{self.label}: socket closed ({self.close_code}) while waiting for "
                        f"{what}; last frames {self.frames[-5:]}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{self.label}: no {what} within {within} s; last frames {self.frames[-5:]}"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_for(
        self,
        action: str,
        predicate: Predicate | None = None,
        *,
        start: int = 0,
        within: float = WAIT_S,
    ) -> Frame:
        return self.frames[await self.find(action, predicate, start=start, within=within)]

    async def wait_reply(self, client_msg_id: str, *, within: float = WAIT_S) -> Frame:
        """The `message_ack` or `error` frame answering the send with `client_msg_id`."""

        def answers(frame: Frame) -> bool:
            return frame.get("action") in ("message_ack", "error") and (
                frame.get("client_msg_id") == client_msg_id
            )

        index = await self.find_any(answers, within=within, what=f"reply to {client_msg_id}")
        return self.frames[index]

    async def wait_ack(self, client_msg_id: str, *, within: float = WAIT_S) -> Frame:
        """The `message_ack` for `client_msg_id`; fails on an `error` frame for it instead."""
        frame = await self.wait_reply(client_msg_id, within=within)
        assert frame["action"] == "message_ack", frame
        return frame

    async def send_and_ack(
        self, to: str, content: str, client_msg_id: str | None = None, within: float = WAIT_S
    ) -> Frame:
        cmid = await self.send_message(to, content, client_msg_id)
        return await self.wait_ack(cmid, within=within)

    async def ping(self, within: float = WAIT_S) -> None:
        start = len(self.frames)
        await self.send({"action": "ping"})
        await self.find("pong", start=start, within=within)

    async def wait_message(self, msg_id: str, *, within: float = WAIT_S) -> Frame:
        return await self.wait_for("new_message", lambda f: f["msg_id"] == msg_id, within=within)

    async def wait_closed(self, within: float = WAIT_S) -> int | None:
        await asyncio.wait_for(self.closed.wait(), within)
        return self.close_code

    async def resumed(self, within: float = WAIT_S) -> int:
        """After connecting with `?resume=`: index of the `sync_done` with `has_more: false`
        that ends the backlog."""
        return await self.find("sync_done", lambda f: f["has_more"] is False, within=within)

    async def sync_all(self, cursor: str | None = None, within: float = WAIT_S) -> SyncResult:
        """`sync` from `cursor`, again with each page's cursor while `has_more`.

        The messages of a page are the `new_message` frames between sending its `sync` and its
        `sync_done` (the server holds live frames back while a sync runs)."""
        result = SyncResult()
        for _ in range(100_000):
            start = len(self.frames)
            await self.send({"action": "sync", "cursor": cursor})
            done_at = await self.find("sync_done", start=start, within=within)
            done = self.frames[done_at]
            page = [f for f in self.frames[start:done_at] if f["action"] == "new_message"]
            result.pages.append((page, done))
            result.messages.extend(page)
            cursor = done["cursor"]
            result.cursor = cursor
            assert isinstance(done["has_more"], bool), done
            if not done["has_more"]:
                return result
        raise AssertionError("sync never ended")

    def messages(self, start: int = 0) -> list[Frame]:
        return [f for f in self.frames[start:] if f.get("action") == "new_message"]

    def of(self, action: str) -> list[Frame]:
        return [f for f in self.frames if f.get("action") == action]


@dataclass
class SyncResult:
    messages: list[Frame] = field(default_factory=list)
    cursor: str | None = None
    pages: list[tuple[list[Frame], Frame]] = field(default_factory=list)


# --- checks ---------------------------------------------------------------------------------------


def order_violations(
    sequences: Iterable[list[Frame]], times: list[list[float]] | None = None
) -> list[str]:
    """Per conversation, after dropping msg_ids already received earlier on the same device,
    the `new_message` frames of each connection must come in increasing msg_id order.

    `sequences` are the device's connections, oldest first (each a list of frames)."""
    seen: set[str] = set()
    problems: list[str] = []
    for n, frames in enumerate(list(sequences)):
        last: dict[str, tuple[int, Frame]] = {}
        for index, frame in enumerate(frames):
            if frame.get("action") != "new_message" or frame["msg_id"] in seen:
                continue
            seen.add(frame["msg_id"])
            conv = frame["conversation_id"]
            before_at, before = last.get(conv, (-1, None))
            if before is not None and int(frame["msg_id"]) <= int(before["msg_id"]):
                gap = ""
                if times is not None:
                    gap = f", {times[n][index] - times[n][before_at]:.3f} s later"
                pages = sum(1 for f in frames[before_at:index] if f.get("action") == "sync_done")
                if pages:
                    gap += f", {pages} sync_done frame(s) in between"
                problems.append(
                    f"connection {n} frame {index}: {frame['msg_id']} "
                    f"({frame['client_msg_id']}) after frame {before_at}: {before['msg_id']} "
                    f"({before['client_msg_id']}) in {conv}{gap}"
                )
            if before is None or int(frame["msg_id"]) > int(before["msg_id"]):
                last[conv] = (index, frame)
    return problems


def assert_message(frame: Frame, **expected: Any) -> None:
    """A `new_message` (or a history message, without `action`) with the documented fields."""
    required = {"msg_id", "conversation_id", "from", "to", "content", "timestamp", "client_msg_id"}
    assert required <= set(frame), frame
    for key in ("msg_id", "conversation_id", "from", "to", "content", "client_msg_id"):
        assert isinstance(frame[key], str), (key, frame)
    assert frame["msg_id"].isdigit() and 0 <= int(frame["msg_id"]) < 2**64, frame
    assert isinstance(frame["timestamp"], int) and not isinstance(frame["timestamp"], bool), frame
    assert abs(frame["timestamp"] - time.time()) < 600, frame
    for key, value in expected.items():
        assert frame[key if key != "sender" else "from"] == value, (key, value, frame)


# --- a device that stays connected ----------------------------------------------------------------


class Device:
    """One device that reconnects with `?resume=<last cursor>` whenever its socket closes.

    `bases` are the URLs it may connect to, tried in rotation (its own gateway first). Every
    connection is kept in `connections` for the checks; `seen` maps msg_id -> first frame."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        session: Session,
        bases: list[str],
        name: str,
        *,
        on_frame: Callable[[Frame], None] | None = None,
        on_connect: Callable[[Connection], Awaitable[None]] | None = None,
        reconnect_deadline_s: float = 60.0,
    ) -> None:
        self.http = http
        self.session = session
        self.bases = bases
        self.name = name
        self.cursor: str | None = None
        self.connections: list[Connection] = []
        self.seen: dict[str, Frame] = {}
        self.close_codes: list[int | None] = []
        self.reconnect_deadline_s = reconnect_deadline_s
        self._on_frame = on_frame
        self._on_connect = on_connect
        self._stopping = False
        self._supervisor: asyncio.Future[None] | None = None
        self._connected = asyncio.Event()

    @property
    def conn(self) -> Connection:
        return self.connections[-1]

    def _hook(self, frame: Frame) -> None:
        action = frame.get("action")
        if action == "sync_done":
            self.cursor = frame["cursor"]
        elif action == "new_message":
            self.seen.setdefault(frame["msg_id"], frame)
        if self._on_frame is not None:
            self._on_frame(frame)

    async def _connect(self, first_base: int) -> Connection:
        deadline = time.monotonic() + self.reconnect_deadline_s
        attempt = 0
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            base = self.bases[(first_base + attempt) % len(self.bases)]
            attempt += 1
            try:
                conn = await Connection.open(
                    self.http,
                    base,
                    self.session.token,
                    resume=self.cursor or "",
                    label=f"{self.name}#{len(self.connections)}",
                    hooks=[self._hook],
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last_error = exc
                await asyncio.sleep(min(0.05 * attempt, 0.5))  # back off before the next try
                continue
            self.connections.append(conn)
            return conn
        raise AssertionError(f"{self.name}: could not reconnect: {last_error!r}")

    async def start(self) -> Device:
        conn = await self._connect(0)
        await conn.resumed(within=30.0)
        if self._on_connect is not None:
            await self._on_connect(conn)
        self._connected.set()
        self._supervisor = asyncio.ensure_future(self._supervise())
        return self

    async def _supervise(self) -> None:
        while not self._stopping:
            await self.conn.closed.wait()
            if self._stopping:
                return
            self.close_codes.append(self.conn.close_code)
            self._connected.clear()
            conn = await self._connect(len(self.connections))
            if self._on_connect is not None:
                await self._on_connect(conn)
            self._connected.set()

    async def connected(self, within: float = 60.0) -> Connection:
        if self._supervisor is not None and self._supervisor.done():
            self._supervisor.result()  # re-raise a reconnect failure
        await asyncio.wait_for(self._connected.wait(), within)
        return self.conn

    async def sync_until(
        self, msg_ids: Iterable[str], what: str, within: float = 30.0
    ) -> list[str]:
        """Sync from the last cursor until every msg_id in `msg_ids` was received; returns the
        ids still missing at the deadline (empty when all arrived)."""
        wanted = set(msg_ids)
        deadline = time.monotonic() + within
        while True:
            missing = wanted - set(self.seen)
            if not missing or time.monotonic() > deadline:
                return sorted(missing, key=int)
            try:
                conn = await self.connected(within=max(deadline - time.monotonic(), 0.1))
                await conn.sync_all(self.cursor, within=WAIT_S)
            except (ConnectionClosed, aiohttp.ClientError, ConnectionError):
                continue
            if wanted - set(self.seen):
                await asyncio.sleep(0.2)  # a poll interval between syncs, under a deadline

    def order_violations(self) -> list[str]:
        return order_violations(
            [c.frames for c in self.connections], [c.arrived for c in self.connections]
        )

    async def drop(self) -> None:
        """Close the current socket from the client side; the device reconnects and resumes."""
        await self.conn.close()

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        for conn in self.connections:
            await conn.close()


# --- a sender that retries ------------------------------------------------------------------------


class Sender:
    """Sends numbered messages round-robin to `recipients` from `device`, paced under the rate
    limit, with at most `window` unacknowledged; resends unacknowledged ones with the same
    `client_msg_id` after a reconnect, after a non-bad-input `error` frame, or after
    `retry_after_s` without an answer."""

    def __init__(
        self,
        recipients: list[str],
        *,
        prefix: str,
        interval_s: float = 0.03,
        window: int = 16,
        retry_after_s: float = 5.0,
    ) -> None:
        self.recipients = recipients
        self.prefix = prefix
        self.interval_s = interval_s
        self.window = window
        self.retry_after_s = retry_after_s
        self.device: Device | None = None
        self.acked: dict[str, Frame] = {}  # client_msg_id -> first message_ack
        self.sent: dict[str, tuple[str, str]] = {}  # client_msg_id -> (to, content)
        self.pending: dict[str, float] = {}  # client_msg_id -> monotonic time of last send
        self.ack_mismatches: list[str] = []
        self.errors: list[Frame] = []
        self.bad_input: list[Frame] = []
        self.resends = 0
        self.timeout_resends = 0
        self._count = 0
        self._retry_soon: set[str] = set()
        self._changed = asyncio.Event()

    # hooks for Device
    def on_frame(self, frame: Frame) -> None:
        action = frame.get("action")
        cmid = frame.get("client_msg_id")
        if action == "message_ack" and cmid in self.sent:
            first = self.acked.setdefault(cmid, frame)
            if first["msg_id"] != frame["msg_id"]:
                self.ack_mismatches.append(f"{cmid}: {first['msg_id']} then {frame['msg_id']}")
            self.pending.pop(cmid, None)
            self._changed.set()
        elif action == "error" and cmid in self.sent:
            self.errors.append(frame)
            if frame.get("code") in BAD_INPUT_CODES:
                self.bad_input.append(frame)
                self.pending.pop(cmid, None)
            elif cmid in self.pending:
                self._retry_soon.add(cmid)
            self._changed.set()

    async def on_connect(self, conn: Connection) -> None:
        """A new socket: send again everything that got no ack, same client_msg_id."""
        for cmid in list(self.pending):
            await self._send(conn, cmid, resend=True)

    async def _send(self, conn: Connection, cmid: str, resend: bool = False) -> None:
        to, content = self.sent[cmid]
        self.pending[cmid] = time.monotonic()
        if resend:
            self.resends += 1
        with contextlib.suppress(Exception):  # a dead socket: on_connect resends it
            await conn.send_message(to, content, cmid)

    async def run(self, device: Device, stop: asyncio.Event) -> None:
        """Send until `stop` is set."""
        self.device = device
        while not stop.is_set():
            conn = await device.connected()
            await self._retry(conn)
            if len(self.pending) >= self.window:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.5)
                continue
            await self._send(conn, self._next())
            await asyncio.sleep(self.interval_s)  # pacing under the rate limit, not a wait

    def _next(self) -> str:
        cmid = f"{self.prefix}-{self._count}"
        to = self.recipients[self._count % len(self.recipients)]
        self.sent[cmid] = (to, f"{self.prefix} message {self._count}")
        self._count += 1
        return cmid

    async def burst(self, count: int) -> None:
        """`count` new messages at once (under the 200-frame burst), without waiting for acks:
        a fault right after it finds messages in flight."""
        assert self.device is not None
        conn = await self.device.connected()
        for _ in range(count):
            await self._send(conn, self._next())

    async def _retry(self, conn: Connection) -> None:
        now = time.monotonic()
        for cmid in list(self._retry_soon):
            self._retry_soon.discard(cmid)
            if cmid in self.pending and now - self.pending[cmid] > 0.2:
                await self._send(conn, cmid, resend=True)
            elif cmid in self.pending:
                self._retry_soon.add(cmid)
        for cmid, at in list(self.pending.items()):
            if now - at > self.retry_after_s:
                self.timeout_resends += 1
                await self._send(conn, cmid, resend=True)

    async def drain(self, within: float = 45.0) -> None:
        """Until every sent message has its ack (resending as needed), within `within` s."""
        assert self.device is not None
        deadline = time.monotonic() + within
        while self.pending:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(self.pending)} sends never acknowledged: {sorted(self.pending)[:10]}; "
                    f"errors {self.errors[-5:]}"
                )
            conn = await self.device.connected()
            await self._retry(conn)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.2)

    async def acks_at_least(self, count: int, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while len(self.acked) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {len(self.acked)} of {count} acks within {within} s; "
                    f"errors {self.errors[-5:]}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.2)


# --- per-test harness -----------------------------------------------------------------------------


class Clients:
    """What a test uses: REST against the edge or one gateway, and sockets it opened, all
    closed at the end (`async with Clients(edge, gateways) as chat`)."""

    def __init__(self, edge: str, gateway_ports: Iterable[int]) -> None:
        self.edge = edge
        self.gateways = [f"http://127.0.0.1:{port}" for port in gateway_ports]
        self.http: aiohttp.ClientSession | None = None
        self.sockets: list[Connection] = []
        self.devices: list[Device] = []

    async def __aenter__(self) -> Clients:
        # No total timeout: sockets live for a whole test; REST calls set their own.
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=WAIT_S)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for device in self.devices:
            await device.stop()
        for conn in self.sockets:
            await conn.close()
        assert self.http is not None
        try:
            # A test that killed or restarted instances may leave the edge briefly without a
            # healthy gateway; the next test starts once it serves again.
            await self.edge_ready()
        finally:
            await self.http.close()

    async def edge_ready(self, within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        while (await self.api().call("GET", "/healthz"))[0] != 200:
            assert time.monotonic() < deadline, f"the edge did not serve within {within} s"
            await asyncio.sleep(0.05)  # poll interval under the deadline

    def gw(self, index: int) -> str:
        """One gateway instance's own HTTP base URL (index 0 is gateway-1)."""
        return self.gateways[index]

    def api(self, base: str | None = None) -> Api:
        assert self.http is not None
        return Api(self.http, base or self.edge)

    async def user(self, devices: int = 1) -> list[Session]:
        return await self.api().user(devices)

    async def connect(
        self,
        session: Session,
        base: str | None = None,
        *,
        resume: str | None = None,
        auth: str = "header",
        label: str = "",
    ) -> Connection:
        assert self.http is not None
        conn = await Connection.open(
            self.http,
            base or self.edge,
            session.token,
            resume=resume,
            auth=auth,
            label=label or f"{session.username}/{session.device_id}",
        )
        self.sockets.append(conn)
        return conn

    def device(
        self,
        session: Session,
        bases: list[str],
        name: str,
        *,
        on_frame: Callable[[Frame], None] | None = None,
        on_connect: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> Device:
        assert self.http is not None
        device = Device(self.http, session, bases, name, on_frame=on_frame, on_connect=on_connect)
        self.devices.append(device)
        return device
