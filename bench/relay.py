"""The bare relay: the ceiling of any Python WebSocket chat edge on this machine.

One aiohttp process, everything in memory: it speaks just enough of PROTOCOL.md for the load tool
(and any client written from the protocol) to drive it exactly as it drives chatmesh:

- `POST /api/v1/users`, `POST /api/v1/sessions`, `GET /api/v1/users/{id}`, `GET /healthz`
  (accounts in a dict, passwords compared as given: no hashing, no persistence);
- `GET /api/v1/ws` with `Authorization: Bearer` or `?token=`; `?resume=` is answered at once with
  an empty backlog (`sync_done`, `has_more: false`);
- `send_message`: a `msg_id` from a counter, `new_message` to every socket of the recipient and
  the sender's other sockets, then `message_ack`; `ack` is accepted and forgotten; `sync` gets
  an empty page; `ping` gets `pong`; bad JSON or unknown actions get `error` frames.

No durability, no ordering across sockets beyond the one process, no authentication worth the
name: what is left is parsing a frame, looking up the recipient's sockets and writing two frames,
the least any relay does. chatmesh's figures divided by these say what the mesh costs.

`python -m bench.relay --port 8099` serves it; tests use `Relay().app()` on 127.0.0.1, with
`pause()`/`resume()` to stall it and `drop_every` to make it lose messages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import secrets
import signal
import time
import uuid
from typing import Any

import orjson
from aiohttp import WSMsgType, web

HOST = "127.0.0.1"


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json(status, {"error": {"code": code, "message": message}})


class Relay:
    """`drop_every=n` (fault injection, to see a load tool catch loss): every n-th message is
    acknowledged but never delivered."""

    def __init__(self, drop_every: int = 0) -> None:
        self.drop_every = drop_every
        self.users: dict[str, dict[str, str]] = {}  # username -> {user_id, password, name}
        self.profiles: dict[str, dict[str, str]] = {}  # user_id -> profile
        self.tokens: dict[str, tuple[str, str]] = {}  # token -> (user_id, device_id)
        self.sockets: dict[str, set[web.WebSocketResponse]] = {}  # user_id -> open sockets
        self._ids = itertools.count(1)
        self._running = asyncio.Event()
        self._running.set()

    # -- test hook: a stalled server

    def pause(self) -> None:
        """Stop handling frames (they queue in the sockets) until `resume()`; for tests."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    # -- REST

    async def healthz(self, request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def register(self, request: web.Request) -> web.Response:
        body = await _body(request)
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str) or not username:
            return _error(400, "bad_request", "username and password are required")
        if username in self.users:
            return _error(409, "username_taken", "that username is taken")
        user_id = str(uuid.uuid4())
        display = body.get("display_name") or username
        self.users[username] = {"user_id": user_id, "password": password}
        profile = {"user_id": user_id, "username": username, "display_name": str(display)}
        self.profiles[user_id] = profile
        return _json(201, profile)

    async def login(self, request: web.Request) -> web.Response:
        body = await _body(request)
        user = self.users.get(str(body.get("username")))
        if user is None or user["password"] != body.get("password"):
            return _error(401, "invalid_credentials", "wrong username or password")
        device_id = str(body.get("device_id") or uuid.uuid4())
        token = secrets.token_urlsafe(24)
        self.tokens[token] = (user["user_id"], device_id)
        return _json(
            201,
            {
                "token": token,
                "user_id": user["user_id"],
                "device_id": device_id,
                "expires_at": int(time.time()) + 86400,
            },
        )

    async def profile(self, request: web.Request) -> web.Response:
        if self._caller(request) is None:
            return _error(401, "unauthenticated", "a bearer token is required")
        found = self.profiles.get(request.match_info["user_id"])
        if found is None:
            return _error(404, "not_found", "no such user")
        return _json(200, found)

    def _caller(self, request: web.Request) -> tuple[str, str] | None:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else request.query.get("token", "")
        return self.tokens.get(token)

    # -- WebSocket

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        if caller is None:
            return _error(401, "unauthenticated", "a valid bearer token is required")
        user_id, _device = caller
        ws = web.WebSocketResponse(max_msg_size=65537)
        await ws.prepare(request)
        mine = self.sockets.setdefault(user_id, set())
        mine.add(ws)
        try:
            if "resume" in request.query:
                await ws.send_str('{"action":"sync_done","cursor":"","has_more":false}')
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    if not self._running.is_set():
                        await self._running.wait()
                    await self._frame(ws, user_id, msg.data)
        finally:
            mine.discard(ws)
            if not mine:
                self.sockets.pop(user_id, None)
        return ws

    async def _frame(self, ws: web.WebSocketResponse, user_id: str, data: str) -> None:
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError:
            frame = None
        if not isinstance(frame, dict):
            await ws.send_str(_frame_error("bad_json"))
            return
        action = frame.get("action")
        if action == "send_message":
            await self._send_message(ws, user_id, frame)
        elif action == "ack":
            return
        elif action == "sync":
            await ws.send_str('{"action":"sync_done","cursor":"","has_more":false}')
        elif action == "ping":
            await ws.send_str('{"action":"pong"}')
        else:
            await ws.send_str(_frame_error("unknown_action"))

    async def _send_message(self, ws: web.WebSocketResponse, user_id: str, frame: Any) -> None:
        to = frame.get("to")
        cmid = frame.get("client_msg_id")
        if not isinstance(to, str) or to not in self.profiles:
            await ws.send_str(_frame_error("unknown_recipient", cmid))
            return
        number = next(self._ids)
        msg_id = str(number)
        conversation = f"{min(user_id, to)}:{max(user_id, to)}"
        timestamp = frame.get("timestamp")
        delivery = orjson.dumps(
            {
                "action": "new_message",
                "msg_id": msg_id,
                "conversation_id": conversation,
                "from": user_id,
                "to": to,
                "content": frame.get("content"),
                "timestamp": timestamp,
                "client_msg_id": cmid,
            }
        ).decode()
        targets = list(self.sockets.get(to, ()))
        if to != user_id:
            targets += [s for s in self.sockets.get(user_id, ()) if s is not ws]
        if self.drop_every and number % self.drop_every == 0:
            targets = []
        for target in targets:
            with contextlib.suppress(ConnectionError):
                await target.send_str(delivery)
        ack = {
            "action": "message_ack",
            "client_msg_id": cmid,
            "msg_id": msg_id,
            "conversation_id": conversation,
            "timestamp": timestamp,
        }
        await ws.send_str(orjson.dumps(ack).decode())

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.post("/api/v1/users", self.register),
                web.post("/api/v1/sessions", self.login),
                web.get("/api/v1/users/{user_id}", self.profile),
                web.get("/api/v1/ws", self.websocket),
            ]
        )
        return app


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _frame_error(code: str, client_msg_id: object = None) -> str:
    frame: dict[str, Any] = {"action": "error", "code": code, "message": code.replace("_", " ")}
    if isinstance(client_msg_id, str):
        frame["client_msg_id"] = client_msg_id
    return orjson.dumps(frame).decode()


async def serve(port: int, host: str = HOST, drop_every: int = 0) -> None:
    """Serve until SIGTERM or SIGINT."""
    runner = web.AppRunner(Relay(drop_every).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"bare relay on http://{host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.relay", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--host", default=HOST)
    parser.add_argument(
        "--drop-every",
        type=int,
        default=0,
        metavar="N",
        help="fault injection: acknowledge every N-th message but never deliver it",
    )
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(serve(args.port, args.host, args.drop_every))
    else:
        uvloop.run(serve(args.port, args.host, args.drop_every))


if __name__ == "__main__":
    main()
