"""gRPC adapter: chatmesh.presence.v1.PresenceService over PresenceStore and the presence policy."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from chatmesh.presence.v1 import presence_pb2, presence_pb2_grpc

from presence_svc.logic import Policy
from presence_svc.store import PresenceStore
from svckit.errors import Context, InvalidArgument

Clock = Callable[[], int]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _check(conn: presence_pb2.Connection) -> None:
    for name in ("connection_id", "user_id", "gateway_id", "gateway_addr"):
        if not getattr(conn, name):
            raise InvalidArgument(f"connection.{name} is required")


class PresenceServicer(presence_pb2_grpc.PresenceServiceServicer):
    def __init__(self, store: PresenceStore, policy: Policy, clock: Clock = wall_ms) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock

    async def RegisterConnection(
        self, request: presence_pb2.RegisterConnectionRequest, context: Context
    ) -> presence_pb2.RegisterConnectionResponse:
        _check(request.connection)
        now = self.clock()
        expires = self.policy.expiry(now, request.ttl_seconds)
        await self.store.put([request.connection], expires, now)
        return presence_pb2.RegisterConnectionResponse(expires_at_ms=expires)

    async def UnregisterConnection(
        self, request: presence_pb2.UnregisterConnectionRequest, context: Context
    ) -> presence_pb2.UnregisterConnectionResponse:
        if not request.user_id or not request.connection_id:
            raise InvalidArgument("user_id and connection_id are required")
        removed = await self.store.remove(request.user_id, request.connection_id, self.clock())
        return presence_pb2.UnregisterConnectionResponse(removed=removed)

    async def RefreshConnections(
        self, request: presence_pb2.RefreshConnectionsRequest, context: Context
    ) -> presence_pb2.RefreshConnectionsResponse:
        for conn in request.connections:
            _check(conn)
        now = self.clock()
        expires = self.policy.expiry(now, request.ttl_seconds)
        count = await self.store.put(request.connections, expires, now)
        return presence_pb2.RefreshConnectionsResponse(refreshed=count)

    async def GetConnections(
        self, request: presence_pb2.GetConnectionsRequest, context: Context
    ) -> presence_pb2.GetConnectionsResponse:
        conns = await self.store.live(list(request.user_ids), self.clock())
        return presence_pb2.GetConnectionsResponse(connections=conns)

    async def GetLastSeen(
        self, request: presence_pb2.GetLastSeenRequest, context: Context
    ) -> presence_pb2.GetLastSeenResponse:
        if not request.user_id:
            raise InvalidArgument("user_id is required")
        online = bool(await self.store.live([request.user_id], self.clock()))
        seen = await self.store.last_seen(request.user_id)
        return presence_pb2.GetLastSeenResponse(online=online, last_seen_ms=seen)


def register(server: grpc.aio.Server, servicer: PresenceServicer) -> list[str]:
    presence_pb2_grpc.add_PresenceServiceServicer_to_server(servicer, server)
    return [presence_pb2.DESCRIPTOR.services_by_name["PresenceService"].full_name]
