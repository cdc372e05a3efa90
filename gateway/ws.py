"""Live WebSockets held by this gateway instance.

A socket is opened by an authenticated session (`app.py` checks the token), gets a
`connection_id`, enters the local `Registry` (by connection and by session) and is recorded in
presence_svc with this instance's `gateway_id` and `gateway_addr`, so any service can reach it by
direct addressing through Envoy (`chatmesh.gateway.v1`, see `service.py`). One heartbeat task per
instance refreshes every local entry well within the presence TTL; a socket's entry is removed
when it closes, and lapses on its own if this process dies.

Logout closes every socket of the session on every instance with 4001 (`close_session_everywhere`).
The race with a socket being opened at the same moment is closed on the socket's side: it
registers in presence first, then checks its token once more, so either the logout's presence
lookup sees the socket, or the socket's second check sees the revoked session.

Frames: each takes a token from the socket's bucket first (`ratelimit`: `rate_limited` error
frames, then close 1008); `frames.parse` validates shapes; `ping` is answered here; the messaging
actions go to `gateway.messaging`. A socket opened with `?resume=` is held (live frames wait)
from before it is recorded in presence until its backlog has been written. Every refusal becomes
an `error` frame and the socket stays open, unless `edge_errors` says it must close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import WSMessage, WSMsgType, web
from chatmesh.presence.v1 import presence_pb2
from chatmesh.user.v1 import user_pb2
from opentelemetry.trace import SpanKind

from gateway import edge_errors, frames
from gateway import metrics as m
from gateway.clients import Clients
from gateway.config import GatewayConfig
from gateway.edge_errors import CloseCode, EdgeError
from gateway.messaging import LiveState, Messaging
from gateway.ratelimit import TokenBucket, Verdict
from svckit import telemetry

log = logging.getLogger(__name__)

_REFRESH_BATCH = 500
# Presence calls in flight from one instance, registers and unregisters apart: in a reconnect
# storm thousands of sockets end and open at once, and unbounded they overflowed Envoy's request
# limit and starved presence_svc's health checks (registers then failed until the next
# heartbeat). Unregisters get fewer slots: a missed one only lapses with its TTL.
_REGISTERS_IN_FLIGHT = 64
_UNREGISTERS_IN_FLIGHT = 16
_MAX_CLOSE_REASON = 120  # bytes; RFC 6455 allows 123


class Connection:
    """One local socket and who opened it."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        session: user_pb2.AuthenticateSessionResponse,
        connection_id: str | None = None,
        bucket: TokenBucket | None = None,
    ) -> None:
        self.ws = ws
        self.live = LiveState()
        self.bucket = bucket
        self.connection_id = connection_id or uuid.uuid4().hex
        self.user_id = session.user_id
        self.device_id = session.device_id
        self.session_id = session.session_id
        self._send_lock = asyncio.Lock()
        # Set by `request_close` from any task; the socket's own task performs the close.
        self.close_request: asyncio.Future[tuple[int, str]] = (
            asyncio.get_running_loop().create_future()
        )
        self.finished = asyncio.Event()  # the socket's task is done with it
        self.rate_limited = False  # a frame of this socket was refused by the rate limit
        # The upgrade request's span: each frame's own trace links to it (svckit.telemetry).
        self.trace_link = telemetry.current_link()

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def send(self, frame: dict[str, Any]) -> bool:
        """Write one text frame; False when the socket is already gone."""
        if self.ws.closed:
            return False
        try:
            async with self._send_lock:  # frames from several tasks never interleave
                await self.ws.send_str(frames.encode(frame))
        except ConnectionError:
            return False
        action = frame["action"]
        m.sent(action).inc()
        if action == "error":
            m.rejected(frame["code"]).inc()
        return True

    def request_close(self, code: int, reason: str = "") -> bool:
        """Ask the socket's task to close with `code` (from any task); False if already asked.

        The socket's own task closes it, with the full closing handshake: the close frame, then
        the peer's reply (bounded by the close timeout), then the TCP connection. Closing from
        another task while the socket's task waits in `receive()` would drop the connection
        right after the close frame, and a client replying to it could then see 1006.
        """
        if self.ws.closed or self.close_request.done():
            return False
        self.close_request.set_result((code, reason))
        return True

    async def close(self, code: int, reason: str = "") -> bool:
        """Close with `code` now; only the socket's own task calls this."""
        if self.ws.closed:
            return False
        # At most 123 bytes on the wire, cut on a character boundary.
        message = reason.encode()[:_MAX_CLOSE_REASON].decode(errors="ignore").encode()
        m.SERVER_CLOSES.labels(str(code)).inc()
        try:
            return await self.ws.close(code=code, message=message)
        except ConnectionError:
            return False

    async def receive(self) -> WSMessage | None:
        """The next message, or None once a close was requested (then performed)."""
        if not self.close_request.done():
            receiving = asyncio.ensure_future(self.ws.receive())
            try:
                await asyncio.wait(
                    (receiving, self.close_request), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                if not receiving.done():
                    receiving.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await receiving
            if not receiving.cancelled():
                return receiving.result()
        code, reason = self.close_request.result()
        await self.close(code, reason)
        return None

    def presence_entry(self, gateway_id: str, gateway_addr: str) -> presence_pb2.Connection:
        return presence_pb2.Connection(
            connection_id=self.connection_id,
            user_id=self.user_id,
            device_id=self.device_id,
            session_id=self.session_id,
            gateway_id=gateway_id,
            gateway_addr=gateway_addr,
        )


class Registry:
    """The sockets this instance holds, by connection_id and by session_id."""

    def __init__(self) -> None:
        self._by_id: dict[str, Connection] = {}
        self._by_session: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, conn: Connection) -> None:
        if conn.connection_id not in self._by_id:
            m.SOCKETS.inc()
        self._by_id[conn.connection_id] = conn
        self._by_session.setdefault(conn.session_id, set()).add(conn.connection_id)

    def remove(self, conn: Connection) -> None:
        if self._by_id.get(conn.connection_id) is conn:
            del self._by_id[conn.connection_id]
            m.SOCKETS.dec()
        ids = self._by_session.get(conn.session_id)
        if ids is not None:
            ids.discard(conn.connection_id)
            if not ids:
                del self._by_session[conn.session_id]

    def get(self, connection_id: str) -> Connection | None:
        return self._by_id.get(connection_id)

    def by_session(self, session_id: str) -> list[Connection]:
        return [self._by_id[cid] for cid in self._by_session.get(session_id, ())]

    def all(self) -> list[Connection]:
        return list(self._by_id.values())


@dataclass
class Edge:
    """What the REST handlers, the socket handlers and the gRPC servicer share."""

    cfg: GatewayConfig
    clients: Clients
    gateway_id: str
    gateway_addr: str = ""  # set once the gRPC server is bound
    registry: Registry = field(default_factory=Registry)
    messaging: Messaging = field(init=False)
    draining: bool = False
    opened: int = 0  # sockets accepted since start (for the connect-storm log line)
    registers: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(_REGISTERS_IN_FLIGHT)
    )
    unregisters: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(_UNREGISTERS_IN_FLIGHT)
    )

    def __post_init__(self) -> None:
        self.messaging = Messaging(self.cfg, self.clients)

    def bucket(self) -> TokenBucket:
        cfg = self.cfg
        return TokenBucket(cfg.ws_rate_burst, cfg.ws_rate_per_s, cfg.ws_abuse_limit)


def close_all(conns: Iterable[Connection], code: int, reason: str) -> int:
    """Ask sockets to close; how many were not closing already."""
    return sum(conn.request_close(code, reason) for conn in conns)


async def close_session_everywhere(edge: Edge, user_id: str, session_id: str) -> None:
    """Close every socket of a (just revoked) session on every instance with 4001.

    Local sockets close directly; for every other instance presence lists as holding one, its
    CloseSessionConnections is called through Envoy. Failures are logged, not raised: the
    session is already revoked, and a socket opened meanwhile closes itself (module docstring).
    """
    code, reason = CloseCode.UNAUTHORIZED, "logged out"
    close_all(edge.registry.by_session(session_id), code, reason)
    try:
        remote = await edge.clients.presence.get_connections([user_id])
    except grpc.aio.AioRpcError as exc:
        log.warning(
            "logout: presence lookup failed; only local sockets closed",
            extra={"session_id": session_id, "error": str(edge_errors.from_rpc(exc))},
        )
        return
    addrs = sorted(
        {
            c.gateway_addr
            for c in remote
            if c.session_id == session_id and c.gateway_addr and c.gateway_addr != edge.gateway_addr
        }
    )
    calls = [
        edge.clients.gateways.close_session_connections(addr, session_id, code, reason)
        for addr in addrs
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    for addr, result in zip(addrs, results, strict=True):
        if isinstance(result, grpc.aio.AioRpcError):
            log.warning(
                "logout: closing sockets on an instance failed",
                extra={"gateway_addr": addr, "error": str(edge_errors.from_rpc(result))},
            )
        elif isinstance(result, BaseException):
            log.error("logout: closing sockets failed", exc_info=result)


async def serve_socket(
    request: web.Request,
    edge: Edge,
    token: str,
    session: user_pb2.AuthenticateSessionResponse,
    resume: str | None = None,
) -> web.WebSocketResponse:
    """Run one authenticated socket until it closes; `resume` (a cursor, maybe empty) first
    writes the device's backlog, holding live frames until it is written.

    Raises EdgeError only before the upgrade; after it, every failure ends in a close frame.
    """
    cfg = edge.cfg
    ws = web.WebSocketResponse(
        heartbeat=cfg.ws_heartbeat_s,
        # aiohttp refuses a frame of exactly max_msg_size; PROTOCOL.md closes only *over* 64 KiB.
        max_msg_size=cfg.max_frame_bytes + 1,
        timeout=cfg.ws_close_timeout_s,
    )
    if not ws.can_prepare(request).ok:
        raise edge_errors.bad_request("expected a WebSocket upgrade")
    await ws.prepare(request)
    conn = Connection(ws, session, bucket=edge.bucket())
    if resume is not None:
        edge.messaging.hold(conn)
    edge.registry.add(conn)
    edge.opened += 1
    m.SOCKETS_OPENED.inc()
    log.debug("socket open", extra={"connection_id": conn.connection_id, "user_id": conn.user_id})
    try:
        await _announce(edge, conn, token)
        if resume is not None:
            await _guarded(conn, edge.messaging.sync(conn, resume or None, all_pages=True))
        while (msg := await conn.receive()) is not None:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await _dispatch(edge, conn, msg.data)
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
            elif msg.type is WSMsgType.ERROR:  # a frame over the limit was already closed 1009
                log.debug("socket error", extra={"connection_id": conn.connection_id})
                break
    except Exception:
        log.exception("socket handler failed", extra={"connection_id": conn.connection_id})
        await conn.close(CloseCode.INTERNAL_ERROR, "internal error")
    finally:
        edge.registry.remove(conn)
        edge.messaging.forget(conn)
        conn.finished.set()
        await _withdraw(edge, conn)
    return ws


async def _announce(edge: Edge, conn: Connection, token: str) -> None:
    """Record the socket in presence, then check the session is still alive (module docstring)."""
    entry = conn.presence_entry(edge.gateway_id, edge.gateway_addr)
    try:
        async with edge.registers:
            await edge.clients.presence.register(entry, edge.cfg.presence_ttl_s)
    except grpc.aio.AioRpcError as exc:
        # The next heartbeat's RefreshConnections restores the entry.
        log.warning(
            "presence register failed",
            extra={"connection_id": conn.connection_id, "error": str(edge_errors.from_rpc(exc))},
        )
    try:
        await edge.clients.user.authenticate(token)
    except grpc.aio.AioRpcError as exc:
        refusal = edge_errors.from_rpc(exc, bearer=True)
        if refusal.close_code == CloseCode.UNAUTHORIZED:
            conn.request_close(CloseCode.UNAUTHORIZED, "session revoked")


async def _withdraw(edge: Edge, conn: Connection) -> None:
    try:
        async with edge.unregisters:
            await edge.clients.presence.unregister(conn.user_id, conn.connection_id)
    except grpc.aio.AioRpcError as exc:
        log.warning(
            "presence unregister failed; the entry will lapse",
            extra={"connection_id": conn.connection_id, "error": str(edge_errors.from_rpc(exc))},
        )


_ACTIONS: dict[type, str] = {
    frames.SendMessage: "send_message",
    frames.Ack: "ack",
    frames.Sync: "sync",
    frames.Ping: "ping",
}


async def _dispatch(edge: Edge, conn: Connection, data: str | bytes) -> None:
    if conn.bucket is not None:
        verdict = conn.bucket.take()
        if verdict is not Verdict.ALLOW:
            m.received("throttled").inc()
            if not conn.rate_limited:
                conn.rate_limited = True
                m.RATE_LIMITED_SOCKETS.inc()
            await _refuse(conn, edge_errors.rate_limited(close=verdict is Verdict.CLOSE), None)
            return
    try:
        frame = frames.parse(data)
    except frames.FrameError as exc:
        m.received("invalid").inc()
        await conn.send(frames.error(exc.code, exc.message, exc.client_msg_id))
        return
    action = _ACTIONS[type(frame)]
    m.received(action).inc()
    # Each frame is the root of its own trace (one message = one trace), linked to the socket's.
    links = [conn.trace_link] if conn.trace_link is not None else []
    with telemetry.span(
        f"ws {action}",
        kind=SpanKind.SERVER,
        root=True,
        links=links,
        attributes={"chatmesh.connection_id": conn.connection_id},
    ):
        await _handle(edge, conn, frame)


async def _handle(edge: Edge, conn: Connection, frame: frames.ClientFrame) -> None:
    messaging = edge.messaging
    if isinstance(frame, frames.Ping):
        await conn.send(frames.pong())
    elif isinstance(frame, frames.SendMessage):
        await _guarded(conn, messaging.send_message(conn, frame), frame.client_msg_id)
    elif isinstance(frame, frames.Ack):
        await _guarded(conn, messaging.ack(conn, frame))
    else:
        await _guarded(conn, messaging.sync(conn, frame.cursor))


async def _guarded(
    conn: Connection, work: Coroutine[Any, Any, None], client_msg_id: str | None = None
) -> None:
    """Run one frame's work; any refusal becomes an `error` frame (or a close)."""
    try:
        await work
    except grpc.aio.AioRpcError as exc:
        await _refuse(conn, edge_errors.from_rpc(exc), client_msg_id)
    except EdgeError as exc:
        await _refuse(conn, exc, client_msg_id)
    except Exception:
        log.exception("frame handler failed", extra={"connection_id": conn.connection_id})
        await _refuse(conn, edge_errors.internal(), client_msg_id)


async def _refuse(conn: Connection, refusal: EdgeError, client_msg_id: str | None) -> None:
    if refusal.sends_frame:
        await conn.send(refusal.frame(client_msg_id))
    if refusal.close_code is not None:
        conn.request_close(refusal.close_code, refusal.message)


CONNECT_STORM_PER_S = 200.0  # sockets accepted per second that make a "connect storm" line


def report_connect_storm(edge: Edge, opened_before: int, interval_s: float) -> int:
    """One warning line when sockets arrived faster than CONNECT_STORM_PER_S over the last
    interval (a reconnect wave after a gateway died, or abuse); returns the count to compare
    against next time."""
    rate = (edge.opened - opened_before) / interval_s
    if rate >= CONNECT_STORM_PER_S:
        log.warning(
            "connect storm",
            extra={
                "event": "connect_storm",
                "opened_per_s": round(rate, 1),
                "sockets": len(edge.registry),
            },
        )
    return edge.opened


async def presence_heartbeat(edge: Edge) -> None:
    """Refresh every local socket's presence entry, forever (cancelled at shutdown); log a
    connect storm when one happened since the last beat."""
    opened = edge.opened
    while True:
        await asyncio.sleep(edge.cfg.presence_heartbeat_s)
        opened = report_connect_storm(edge, opened, edge.cfg.presence_heartbeat_s)
        try:
            await refresh_presence(edge)
        except Exception:  # a bug must not stop the heartbeat for every socket
            log.exception("presence heartbeat failed")


async def refresh_presence(edge: Edge) -> None:
    conns = [c for c in edge.registry.all() if not c.closed]
    for start in range(0, len(conns), _REFRESH_BATCH):
        batch = [
            c.presence_entry(edge.gateway_id, edge.gateway_addr)
            for c in conns[start : start + _REFRESH_BATCH]
        ]
        try:
            await edge.clients.presence.refresh(edge.gateway_id, batch, edge.cfg.presence_ttl_s)
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "presence refresh failed",
                extra={"sockets": len(batch), "error": str(edge_errors.from_rpc(exc))},
            )


@contextlib.asynccontextmanager
async def heartbeat_owner(edge: Edge) -> AsyncIterator[None]:
    """Owns the presence heartbeat task while open (the app enters it as a cleanup context)."""
    task = asyncio.create_task(presence_heartbeat(edge), name="presence-heartbeat")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def drain(edge: Edge) -> None:
    """On SIGTERM: refuse new sockets and close every open one with 1001."""
    edge.draining = True
    conns = edge.registry.all()
    close_all(conns, CloseCode.GOING_AWAY, "server draining")
    if conns:
        # Each close is bounded by the close timeout; allow for the presence unregister too.
        waiters = [asyncio.ensure_future(c.finished.wait()) for c in conns]
        _, pending = await asyncio.wait(waiters, timeout=edge.cfg.ws_close_timeout_s + 0.5)
        for waiter in pending:
            waiter.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    log.info(
        "sockets closed for draining",
        extra={"closed": sum(c.finished.is_set() for c in conns), "sockets": len(conns)},
    )
