"""The client side of PROTOCOL.md that the load tool needs, written from the protocol alone.

- `ensure_account`: register (a taken name is fine) and log in, with bounded retries of the
  answers that mean "try again" (429, 503, a refused connection).
- `Client`: one device of one user on one WebSocket, opened with `?resume=` so its backlog comes
  first; it reads every frame, hands it to its owner (`Handler`, the worker), writes frames from a
  queue (so a socket the server stops reading holds only its own sends back), and when its socket
  closes it reconnects with `?resume=` and sends again, with the same `client_msg_id`, every send
  that got no answer, as a real client does. Reconnects are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import aiohttp
import orjson

from bench.ledger import StageLedger

REST_TIMEOUT_S = 30.0
REST_ATTEMPTS = 6
PASSWORD = "chatmesh-load-pw"

Frame = dict[str, Any]


class SetupError(Exception):
    """The tool could not register, log in or connect; the message says which and why."""


@dataclass(frozen=True)
class Account:
    username: str
    password: str
    user_id: str
    device_id: str
    token: str

    def as_dict(self) -> dict[str, str]:
        return {
            "username": self.username,
            "password": self.password,
            "user_id": self.user_id,
            "device_id": self.device_id,
            "token": self.token,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Account:
        return cls(**{k: str(data[k]) for k in cls.__dataclass_fields__})


async def _post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """One POST with retries of 429/503 and connection failures; (status, JSON body)."""
    delay = 0.2
    last = ""
    for _ in range(REST_ATTEMPTS):
        try:
            async with http.post(
                url, json=body, timeout=aiohttp.ClientTimeout(total=REST_TIMEOUT_S)
            ) as resp:
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = {}
                if resp.status not in (429, 502, 503, 504):
                    return resp.status, data if isinstance(data, dict) else {}
                last = f"HTTP {resp.status} {data}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(delay)
        delay = min(delay * 2, 3.0)
    raise SetupError(f"POST {url} failed {REST_ATTEMPTS} times; last: {last}")


async def login(http: aiohttp.ClientSession, base: str, username: str, password: str) -> Account:
    status, body = await _post(
        http, f"{base}/api/v1/sessions", {"username": username, "password": password}
    )
    if status != 201:
        raise SetupError(f"login of {username} answered {status} {body}")
    return Account(username, password, body["user_id"], body["device_id"], body["token"])


async def ensure_account(
    http: aiohttp.ClientSession, base: str, username: str, password: str = PASSWORD
) -> Account:
    """Register `username` (already taken: fine, the password decides) and log in."""
    status, body = await _post(
        http, f"{base}/api/v1/users", {"username": username, "password": password}
    )
    if status not in (201, 409):
        raise SetupError(f"registering {username} answered {status} {body}")
    return await login(http, base, username, password)


def ws_url(base: str) -> str:
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + "/api/v1/ws"
    return base.replace("http://", "ws://", 1) + "/api/v1/ws"


class Outgoing(NamedTuple):
    text: str
    client_msg_id: str | None = None  # None: not a send (an ack)
    intended_ns: int = 0
    ledger: StageLedger | None = None


class Handler(Protocol):
    """What a client reports to its owner."""

    def on_frame(self, client: Client, frame: Frame, now_ns: int) -> None: ...

    def on_closed(self, client: Client, code: int | None) -> None: ...


class Client:
    """One device on one socket that stays connected (bounded reconnects)."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base: str,
        account: Account,
        handler: Handler,
        *,
        max_reconnects: int = 5,
        connect_timeout_s: float = 30.0,
    ) -> None:
        self.http = http
        self.base = base
        self.account = account
        self.handler = handler
        self.max_reconnects = max_reconnects
        self.connect_timeout_s = connect_timeout_s
        self.peer: Client | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        # Sends without an answer yet, resent after a reconnect (client_msg_id -> frame).
        self.unanswered: dict[str, Outgoing] = {}
        self.to_ack: dict[str, int] = {}  # conversation -> newest msg_id received, to ack
        self.connected = asyncio.Event()
        self.synced = asyncio.Event()  # the resume backlog of the current socket is written
        self.reconnects = 0
        self.gave_up = False
        self.closing = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def user_id(self) -> str:
        return self.account.user_id

    # -- lifecycle

    async def open(self) -> None:
        """Connect and wait until the resume backlog is written; SetupError when refused."""
        ws = await self._connect()
        self._start(ws)
        try:
            await asyncio.wait_for(self.synced.wait(), self.connect_timeout_s)
        except TimeoutError:
            raise SetupError(
                f"{self.account.username}: no sync_done within {self.connect_timeout_s} s of "
                "connecting with ?resume="
            ) from None

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        try:
            return await asyncio.wait_for(
                self.http.ws_connect(
                    ws_url(self.base),
                    headers={"Authorization": f"Bearer {self.account.token}"},
                    params={"resume": ""},
                    max_msg_size=4 * 1024 * 1024,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                ),
                self.connect_timeout_s,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise SetupError(f"{self.account.username}: WebSocket refused: {exc.status}") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise SetupError(f"{self.account.username}: cannot connect: {exc!r}") from exc

    def _start(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._attach(ws)
        self._tasks = [
            asyncio.create_task(self._supervise(ws), name=f"read-{self.account.username}"),
            asyncio.create_task(self._write_loop(), name=f"write-{self.account.username}"),
        ]

    def _attach(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.synced.clear()
        self.connected.set()

    async def _supervise(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Read the socket; when it closes under us, reconnect (bounded) and resend."""
        while True:
            await self._read(ws)
            self.connected.clear()
            self.ws = None
            if self.closing:
                return
            self.handler.on_closed(self, ws.close_code)
            reconnected = await self._reconnect()
            if reconnected is None:
                self.gave_up = True
                return
            ws = reconnected
            self._attach(ws)
            for item in sorted(self.unanswered.values(), key=lambda o: o.intended_ns):
                self.outbox.put_nowait(item)

    async def _reconnect(self) -> aiohttp.ClientWebSocketResponse | None:
        delay = 0.1
        while self.reconnects < self.max_reconnects and not self.closing:
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                return await self._connect()
            except SetupError:
                continue
        return None

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                now = time.monotonic_ns()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = orjson.loads(msg.data)
                except orjson.JSONDecodeError:
                    frame = None
                if not isinstance(frame, dict):
                    frame = {"action": "error", "code": "tool_got_bad_json"}
                elif frame.get("action") == "sync_done" and frame.get("has_more") is False:
                    self.synced.set()
                self.handler.on_frame(self, frame, now)
        except (aiohttp.ClientError, ConnectionError, TimeoutError):
            pass

    async def _write_loop(self) -> None:
        while True:
            item = await self.outbox.get()
            await self.connected.wait()
            ws = self.ws
            if ws is None:
                continue
            now = time.monotonic_ns()
            try:
                await ws.send_str(item.text)
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                continue  # a send stays in `unanswered` and goes again after the reconnect
            if item.client_msg_id is not None and item.ledger is not None:
                item.ledger.transmitted(item.client_msg_id, item.intended_ns, now)

    async def close(self) -> None:
        self.closing = True
        ws = self.ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 3.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- frames

    def send(self, item: Outgoing) -> None:
        if item.client_msg_id is not None:
            self.unanswered[item.client_msg_id] = item
        self.outbox.put_nowait(item)

    def answered(self, client_msg_id: str) -> None:
        self.unanswered.pop(client_msg_id, None)

    def resend_later(self, client_msg_id: str, delay_s: float) -> None:
        """Send an unanswered frame again after `delay_s` (a retry after a transient error)."""

        def again() -> None:
            item = self.unanswered.get(client_msg_id)
            if item is not None and not self.closing:
                self.outbox.put_nowait(item)

        asyncio.get_running_loop().call_later(delay_s, again)

    def note_received(self, conversation_id: str, msg_id: str) -> None:
        if msg_id.isdigit():
            newest = self.to_ack.get(conversation_id, 0)
            self.to_ack[conversation_id] = max(newest, int(msg_id))

    def flush_acks(self) -> int:
        """Ack the newest received msg_id of each conversation (it covers the older ones)."""
        count = 0
        for msg_id in self.to_ack.values():
            self.outbox.put_nowait(Outgoing(_ACK.format(msg_id)))
            count += 1
        self.to_ack.clear()
        return count


_ACK = '{{"action":"ack","msg_id":"{}"}}'
