"""The gateway's aiohttp app and gRPC servicer against fake clients: the paths the real mesh
cannot easily provoke (an unexpected exception, presence down, a logout racing a new socket,
the presence heartbeat, the readiness cache)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer
from chatmesh.gateway.v1 import gateway_pb2
from chatmesh.message.v1 import message_pb2
from chatmesh.presence.v1 import presence_pb2
from chatmesh.user.v1 import user_pb2

from gateway import service, ws
from gateway.app import build_app
from gateway.clients import Clients, GatewayPeers
from gateway.config import load_config
from svckit.errors import status_details
from svckit.lifecycle import start_server

WAIT_S = 5.0
MY_ADDR = "127.0.0.1:1111"
OTHER_ADDR = "127.0.0.1:2222"


def rpc_error(code: grpc.StatusCode, reason: str | None = None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if reason is not None:
        trailing.add("grpc-status-details-bin", status_details(code, "refused", reason))
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), trailing, details="refused", debug_error_string=""
    )


@dataclass
class FakeUser:
    sessions: dict[str, user_pb2.AuthenticateSessionResponse] = field(default_factory=dict)
    revoke_after_checks: dict[str, int] = field(default_factory=dict)  # token -> checks allowed

    def add(self, token: str, user_id: str = "u1", session_id: str = "s1") -> None:
        self.sessions[token] = user_pb2.AuthenticateSessionResponse(
            session_id=session_id, user_id=user_id, device_id="d1", expires_at=2_000_000_000
        )

    async def authenticate(self, token: str) -> user_pb2.AuthenticateSessionResponse:
        allowed = self.revoke_after_checks.get(token)
        if allowed is not None:
            if allowed <= 0:
                self.sessions.pop(token, None)
            self.revoke_after_checks[token] = allowed - 1
        if token not in self.sessions:
            raise rpc_error(grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")
        return self.sessions[token]

    async def revoke(self, token: str) -> user_pb2.RevokeSessionResponse:
        session = self.sessions.pop(token)
        return user_pb2.RevokeSessionResponse(
            session_id=session.session_id, user_id=session.user_id, device_id=session.device_id
        )

    async def get_user(self, user_id: str) -> user_pb2.User:
        if user_id == "boom":
            raise RuntimeError("SECRET stack detail")
        raise rpc_error(grpc.StatusCode.NOT_FOUND, "not_found")


@dataclass
class FakePresence:
    live: dict[str, presence_pb2.Connection] = field(default_factory=dict)
    remote: list[presence_pb2.Connection] = field(default_factory=list)
    refreshed: list[list[presence_pb2.Connection]] = field(default_factory=list)
    down: bool = False

    def _check(self) -> None:
        if self.down:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE)

    async def register(self, connection: presence_pb2.Connection, ttl_s: int) -> None:
        self._check()
        self.live[connection.connection_id] = connection

    async def unregister(self, user_id: str, connection_id: str) -> None:
        self._check()
        self.live.pop(connection_id, None)

    async def refresh(
        self, gateway_id: str, connections: Iterable[presence_pb2.Connection], ttl_s: int
    ) -> int:
        self._check()
        self.refreshed.append(list(connections))
        return len(self.refreshed[-1])

    async def get_connections(self, user_ids: Sequence[str]) -> list[presence_pb2.Connection]:
        self._check()
        return [c for c in [*self.live.values(), *self.remote] if c.user_id in user_ids]


@dataclass
class FakePeers:
    closes: list[tuple[str, str, int]] = field(default_factory=list)

    async def close_session_connections(
        self, gateway_addr: str, session_id: str, close_code: int, reason: str
    ) -> int:
        self.closes.append((gateway_addr, session_id, close_code))
        return 1


@dataclass
class FakeHealth:
    serving: bool = True
    probes: int = 0

    async def all_serving(self) -> bool:
        self.probes += 1
        return self.serving


@dataclass
class Fakes:
    user: FakeUser
    presence: FakePresence
    peers: FakePeers
    health: FakeHealth
    edge: ws.Edge
    client: TestClient[Any, Any]


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    user, presence, peers, health = FakeUser(), FakePresence(), FakePeers(), FakeHealth()
    clients = Clients(
        user=cast(Any, user),
        presence=cast(Any, presence),
        chat=cast(Any, None),  # messaging is covered end to end
        store=cast(Any, None),
        gateways=cast(Any, peers),
        health=cast(Any, health),
    )
    cfg = load_config({"CHATMESH_HEALTH_CACHE_S": "60", "CHATMESH_WS_CLOSE_TIMEOUT_S": "1"})
    edge = ws.Edge(cfg=cfg, clients=clients, gateway_id="gw-test", gateway_addr=MY_ADDR)
    async with TestClient(TestServer(build_app(edge))) as client:
        yield Fakes(user, presence, peers, health, edge, client)


async def closed_with(socket: aiohttp.ClientWebSocketResponse) -> int | None:
    msg = await socket.receive(timeout=WAIT_S)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    return socket.close_code


async def ping(socket: aiohttp.ClientWebSocketResponse) -> None:
    await socket.send_json({"action": "ping"})
    assert await socket.receive_json(timeout=WAIT_S) == {"action": "pong"}


async def test_unexpected_exception_is_500_without_detail(
    fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    fakes.user.add("t")
    with caplog.at_level(logging.ERROR, logger="gateway.app"):
        resp = await fakes.client.get("/api/v1/users/boom", headers={"Authorization": "Bearer t"})
        assert resp.status == 500
        assert await resp.json() == {"error": {"code": "internal", "message": "internal error"}}
    assert any("SECRET" in (r.exc_text or "") or r.exc_info for r in caplog.records)


async def test_healthz_probes_at_most_once_per_cache_period(fakes: Fakes) -> None:
    for _ in range(3):
        resp = await fakes.client.get("/healthz")
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    assert fakes.health.probes == 1


async def test_healthz_503_when_a_service_is_not_serving(fakes: Fakes) -> None:
    fakes.health.serving = False
    resp = await fakes.client.get("/healthz")
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "unavailable"


async def test_livez_503_while_draining(fakes: Fakes) -> None:
    assert (await fakes.client.get("/livez")).status == 200
    fakes.edge.draining = True
    resp = await fakes.client.get("/livez")
    assert (resp.status, (await resp.json())["error"]["code"]) == (503, "unavailable")


async def test_socket_is_registered_refreshed_and_unregistered(fakes: Fakes) -> None:
    fakes.user.add("t", user_id="u1", session_id="s1")
    async with fakes.client.ws_connect("/api/v1/ws?token=t") as socket:
        await ping(socket)
        (entry,) = fakes.presence.live.values()
        assert (entry.user_id, entry.session_id, entry.device_id) == ("u1", "s1", "d1")
        assert (entry.gateway_id, entry.gateway_addr) == ("gw-test", MY_ADDR)
        await ws.refresh_presence(fakes.edge)
        assert [c.connection_id for c in fakes.presence.refreshed[-1]] == [entry.connection_id]
    await _until(lambda: not fakes.presence.live and len(fakes.edge.registry) == 0)


async def test_socket_stays_open_when_presence_is_down(fakes: Fakes) -> None:
    fakes.user.add("t")
    fakes.presence.down = True
    async with fakes.client.ws_connect("/api/v1/ws?token=t") as socket:
        await ping(socket)
        await ws.refresh_presence(fakes.edge)  # logged, not raised


async def test_logout_closes_local_and_asks_other_instances(fakes: Fakes) -> None:
    fakes.user.add("t", session_id="s1")
    fakes.user.add("t2", session_id="s2")
    fakes.presence.remote = [
        presence_pb2.Connection(
            connection_id="far", user_id="u1", session_id="s1", gateway_addr=OTHER_ADDR
        ),
        presence_pb2.Connection(
            connection_id="far2", user_id="u1", session_id="s2", gateway_addr="127.0.0.1:3333"
        ),
    ]
    async with (
        fakes.client.ws_connect("/api/v1/ws?token=t") as mine,
        fakes.client.ws_connect("/api/v1/ws?token=t2") as other_session,
    ):
        await ping(mine)
        await ping(other_session)
        resp = await fakes.client.delete(
            "/api/v1/sessions/current", headers={"Authorization": "Bearer t"}
        )
        assert resp.status == 204
        assert await closed_with(mine) == 4001
        assert fakes.peers.closes == [(OTHER_ADDR, "s1", 4001)]  # not itself, not session s2
        await ping(other_session)


async def test_logout_with_presence_down_still_closes_local_sockets(fakes: Fakes) -> None:
    fakes.user.add("t")
    async with fakes.client.ws_connect("/api/v1/ws?token=t") as socket:
        await ping(socket)
        fakes.presence.down = True
        resp = await fakes.client.delete(
            "/api/v1/sessions/current", headers={"Authorization": "Bearer t"}
        )
        assert resp.status == 204
        assert await closed_with(socket) == 4001


async def test_socket_racing_a_logout_closes_itself(fakes: Fakes) -> None:
    """The token passes the upgrade check, then the session is revoked before the socket's
    second check (after it registered in presence): the socket closes with 4001."""
    fakes.user.add("t")
    fakes.user.revoke_after_checks["t"] = 1
    async with fakes.client.ws_connect("/api/v1/ws?token=t") as socket:
        assert await closed_with(socket) == 4001


async def test_grpc_close_session_connections(fakes: Fakes) -> None:
    fakes.user.add("t", session_id="s1")
    srv = await start_server("127.0.0.1", 0, service.register(fakes.edge))
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel,
            fakes.client.ws_connect("/api/v1/ws?token=t") as socket,
        ):
            await ping(socket)
            peers = GatewayPeers(channel, timeout_s=WAIT_S)
            assert await peers.close_session_connections(MY_ADDR, "nope", 4001, "x") == 0
            assert await peers.close_session_connections(MY_ADDR, "s1", 4001, "logged out") == 1
            assert await closed_with(socket) == 4001
            assert await peers.deliver_messages(MY_ADDR, []) == []
    finally:
        await srv.stop(0)


async def test_drain_closes_sockets_with_1001(fakes: Fakes) -> None:
    fakes.user.add("t")
    async with fakes.client.ws_connect("/api/v1/ws?token=t") as socket:
        await ping(socket)
        draining = asyncio.ensure_future(ws.drain(fakes.edge))
        assert await closed_with(socket) == 1001  # the client answers the close meanwhile
        await draining
    resp = await fakes.client.get("/api/v1/ws?token=t")
    assert resp.status == 503


async def _until(condition: Callable[[], bool]) -> None:
    """Wait for `condition()` with a deadline (the server side finishes after the client)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_slow_reader_does_not_hold_up_a_delivery_batch(fakes: Fakes) -> None:
    """One DeliverMessages call carries frames for many sockets. A socket whose reader stopped
    (its buffers full) keeps its frames, in order, but the call answers without waiting for
    it, so the other sockets of the batch are not held up for the slow one's timeout."""
    fakes.edge.cfg = dataclasses.replace(fakes.edge.cfg, deliver_timeout_s=60)
    fakes.user.add("slow", user_id="u-slow", session_id="s-slow")
    fakes.user.add("fast", user_id="u-fast", session_id="s-fast")
    srv = await start_server("127.0.0.1", 0, service.register(fakes.edge))
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel,
            fakes.client.ws_connect("/api/v1/ws?token=slow") as slow,
            fakes.client.ws_connect("/api/v1/ws?token=fast") as fast,
        ):
            await ping(slow)
            await ping(fast)
            by_user = {c.user_id: c for c in fakes.edge.registry.by_session("s-slow")}
            by_user |= {c.user_id: c for c in fakes.edge.registry.by_session("s-fast")}
            # Small kernel buffers on both ends and a client that stops reading: the server's
            # writes to this socket block after a few frames.
            server_sock = by_user["u-slow"].ws._req.transport.get_extra_info("socket")  # type: ignore[union-attr]
            server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            client_transport = slow._response.connection.transport  # type: ignore[union-attr]
            assert client_transport is not None
            client_transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, 4096
            )
            client_transport.pause_reading()

            def big(n: int, to: str) -> gateway_pb2.Delivery:
                message = message_pb2.Message(
                    msg_id=1000 + n,
                    conversation_id=f"dm:u-other:{to}",
                    sender_id="u-other",
                    recipient_id=to,
                    content=f"{n:04d}" + "x" * 4000,
                    client_msg_id=f"c{n}",
                )
                return gateway_pb2.Delivery(
                    connection_id=by_user[to].connection_id, message=message
                )

            peers = GatewayPeers(channel, timeout_s=WAIT_S)
            batch = [big(n, "u-slow") for n in range(300)] + [big(300, "u-fast")]
            # Far less than the slow socket's 60 s timeout: the call did not wait for it.
            unknown = await asyncio.wait_for(peers.deliver_messages(MY_ADDR, batch), WAIT_S)
            assert unknown == []  # the slow socket is open: it took its frames, to be written
            got = await fast.receive_json(timeout=WAIT_S)
            assert got["msg_id"] == "1300"
            # Read again, with ordinary buffers (tiny ones make loopback crawl).
            server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            client_transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20
            )
            client_transport.resume_reading()
            contents = [
                (await slow.receive_json(timeout=WAIT_S))["content"][:4] for _ in range(300)
            ]
            assert contents == [f"{n:04d}" for n in range(300)]  # all of them, in order
    finally:
        await srv.stop(0)
