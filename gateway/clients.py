"""Typed clients for what the gateway calls behind the edge, all through Envoy's mesh listener.

Each client wraps `svckit.channels.mesh_channel` with typed unary calls; every call carries a
deadline (the configured RPC timeout unless the caller passes a shorter one). Failures surface as
`grpc.aio.AioRpcError`, which only `gateway.edge_errors` interprets.

A gateway instance is called directly: authority `gateway` plus the `x-chatmesh-gateway-addr`
header naming the instance, which Envoy's original-destination cluster routes to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

import grpc
from chatmesh.chat.v1 import chat_pb2
from chatmesh.gateway.v1 import gateway_pb2
from chatmesh.message.v1 import store_pb2
from chatmesh.presence.v1 import presence_pb2
from chatmesh.user.v1 import user_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from gateway.config import GatewayConfig
from svckit import channels
from svckit.batching import Batcher
from svckit.metrics import BATCH_SIZE

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

ACK_BATCH_MAX = 1000  # the store's limit per BatchAckMessages (persister/history.py)

# The services GET /healthz requires, by their mesh authority.
READINESS_AUTHORITIES: tuple[str, ...] = (
    channels.USER,
    channels.CHAT,
    channels.PRESENCE,
    channels.NOTIFY,
    channels.PERSISTER,
)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class Unary(Generic[Req, Resp]):
    """One typed unary method on a channel; every call has a deadline."""

    def __init__(
        self, channel: grpc.aio.Channel, method: str, response: type[Resp], timeout_s: float
    ) -> None:
        self._call = channel.unary_unary(
            method, request_serializer=_serialize, response_deserializer=response.FromString
        )
        self._timeout_s = timeout_s

    async def __call__(
        self,
        request: Req,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Resp:
        timeout = self._timeout_s if timeout_s is None else min(timeout_s, self._timeout_s)
        response = await self._call(request, timeout=timeout, metadata=tuple(metadata))
        return cast(Resp, response)


def _method(service: str, name: str) -> str:
    return f"/{service}/{name}"


_USER = user_pb2.DESCRIPTOR.services_by_name["UserService"].full_name
_PRESENCE = presence_pb2.DESCRIPTOR.services_by_name["PresenceService"].full_name
_GATEWAY = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
_CHAT = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
_STORE = store_pb2.DESCRIPTOR.services_by_name["MessageStoreService"].full_name
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_HealthCheck = Unary[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]


class UserClient:
    """chatmesh.user.v1.UserService: accounts, sessions and profiles."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        def unary(name: str, response: type[Resp]) -> Unary[Req, Resp]:
            return Unary(channel, _method(_USER, name), response, timeout_s)

        self._create_user: Unary[user_pb2.CreateUserRequest, user_pb2.CreateUserResponse] = unary(
            "CreateUser", user_pb2.CreateUserResponse
        )
        self._create_session: Unary[
            user_pb2.CreateSessionRequest, user_pb2.CreateSessionResponse
        ] = unary("CreateSession", user_pb2.CreateSessionResponse)
        self._authenticate: Unary[
            user_pb2.AuthenticateSessionRequest, user_pb2.AuthenticateSessionResponse
        ] = unary("AuthenticateSession", user_pb2.AuthenticateSessionResponse)
        self._revoke: Unary[user_pb2.RevokeSessionRequest, user_pb2.RevokeSessionResponse] = unary(
            "RevokeSession", user_pb2.RevokeSessionResponse
        )
        self._get_user: Unary[user_pb2.GetUserRequest, user_pb2.GetUserResponse] = unary(
            "GetUser", user_pb2.GetUserResponse
        )
        self._lookup_user: Unary[user_pb2.LookupUserRequest, user_pb2.LookupUserResponse] = unary(
            "LookupUser", user_pb2.LookupUserResponse
        )

    async def create_user(self, username: str, password: str, display_name: str) -> user_pb2.User:
        request = user_pb2.CreateUserRequest(
            username=username, password=password, display_name=display_name
        )
        return (await self._create_user(request)).user

    async def create_session(
        self, username: str, password: str, device_id: str
    ) -> user_pb2.CreateSessionResponse:
        request = user_pb2.CreateSessionRequest(
            username=username, password=password, device_id=device_id
        )
        return await self._create_session(request)

    async def authenticate(self, token: str) -> user_pb2.AuthenticateSessionResponse:
        return await self._authenticate(user_pb2.AuthenticateSessionRequest(token=token))

    async def revoke(self, token: str) -> user_pb2.RevokeSessionResponse:
        return await self._revoke(user_pb2.RevokeSessionRequest(token=token))

    async def get_user(self, user_id: str) -> user_pb2.User:
        return (await self._get_user(user_pb2.GetUserRequest(user_id=user_id))).user

    async def lookup_user(self, username: str) -> user_pb2.User:
        return (await self._lookup_user(user_pb2.LookupUserRequest(username=username))).user


class PresenceClient:
    """chatmesh.presence.v1.PresenceService: where each socket lives."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        def unary(name: str, response: type[Resp]) -> Unary[Req, Resp]:
            return Unary(channel, _method(_PRESENCE, name), response, timeout_s)

        self._register: Unary[
            presence_pb2.RegisterConnectionRequest, presence_pb2.RegisterConnectionResponse
        ] = unary("RegisterConnection", presence_pb2.RegisterConnectionResponse)
        self._unregister: Unary[
            presence_pb2.UnregisterConnectionRequest, presence_pb2.UnregisterConnectionResponse
        ] = unary("UnregisterConnection", presence_pb2.UnregisterConnectionResponse)
        self._refresh: Unary[
            presence_pb2.RefreshConnectionsRequest, presence_pb2.RefreshConnectionsResponse
        ] = unary("RefreshConnections", presence_pb2.RefreshConnectionsResponse)
        self._get_connections: Unary[
            presence_pb2.GetConnectionsRequest, presence_pb2.GetConnectionsResponse
        ] = unary("GetConnections", presence_pb2.GetConnectionsResponse)

    async def register(self, connection: presence_pb2.Connection, ttl_s: int) -> None:
        request = presence_pb2.RegisterConnectionRequest(connection=connection, ttl_seconds=ttl_s)
        await self._register(request)

    async def unregister(self, user_id: str, connection_id: str) -> None:
        request = presence_pb2.UnregisterConnectionRequest(
            user_id=user_id, connection_id=connection_id
        )
        await self._unregister(request)

    async def refresh(
        self, gateway_id: str, connections: Iterable[presence_pb2.Connection], ttl_s: int
    ) -> int:
        request = presence_pb2.RefreshConnectionsRequest(
            gateway_id=gateway_id, connections=list(connections), ttl_seconds=ttl_s
        )
        return (await self._refresh(request)).refreshed

    async def get_connections(self, user_ids: Sequence[str]) -> list[presence_pb2.Connection]:
        request = presence_pb2.GetConnectionsRequest(user_ids=list(user_ids))
        return list((await self._get_connections(request)).connections)


class ChatClient:
    """chatmesh.chat.v1.ChatService: accepting messages."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self._send: Unary[chat_pb2.SendMessageRequest, chat_pb2.SendMessageResponse] = Unary(
            channel, _method(_CHAT, "SendMessage"), chat_pb2.SendMessageResponse, timeout_s
        )

    async def send(
        self, request: chat_pb2.SendMessageRequest, conversation_id: str
    ) -> chat_pb2.SendMessageResponse:
        """Envoy hashes the conversation header onto the chat_svc ring (chat_svc/logic.py)."""
        return await self._send(
            request, metadata=((channels.CONVERSATION_HEADER, conversation_id),)
        )


class AckRefused(Exception):
    """The store refused one acknowledgement of a batch (INVALID_ARGUMENT with `reason`)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class StoreClient:
    """chatmesh.message.v1.MessageStoreService: sync, acknowledgements and history.

    Every call may wait for the store to catch up with the log (the barrier in
    persister/history.py), so they all get `timeout_s` = CHATMESH_SYNC_TIMEOUT_S.

    Acks of all this instance's sockets share `BatchAckMessages` calls (svckit.batching): up to
    two calls at a time, each carrying the acks that arrived while the others ran. An ack is still
    answered on its own: its socket waits for its result, and a refused one raises AckRefused.
    Only acks whose conversation the gateway knows (it wrote the frame) are batched: those never
    wait for the store's barrier, so a batch never waits for the log.
    """

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float):
        def unary(name: str, response: type[Resp]) -> Unary[Req, Resp]:
            return Unary(channel, _method(_STORE, name), response, timeout_s)

        self._ack: Unary[store_pb2.AckMessagesRequest, store_pb2.AckMessagesResponse] = unary(
            "AckMessages", store_pb2.AckMessagesResponse
        )
        self._batch_ack: Unary[
            store_pb2.BatchAckMessagesRequest, store_pb2.BatchAckMessagesResponse
        ] = unary("BatchAckMessages", store_pb2.BatchAckMessagesResponse)
        self._acks: Batcher[store_pb2.AckMessagesRequest, store_pb2.AckResult] = Batcher(
            self._ack_batch,
            max_batch=ACK_BATCH_MAX,
            max_in_flight=2,
            on_batch=BATCH_SIZE.labels("ack").observe,
        )
        self._sync: Unary[store_pb2.SyncMessagesRequest, store_pb2.SyncMessagesResponse] = unary(
            "SyncMessages", store_pb2.SyncMessagesResponse
        )
        self._history: Unary[store_pb2.ListMessagesRequest, store_pb2.ListMessagesResponse] = unary(
            "ListMessages", store_pb2.ListMessagesResponse
        )
        self._conversations: Unary[
            store_pb2.ListConversationsRequest, store_pb2.ListConversationsResponse
        ] = unary("ListConversations", store_pb2.ListConversationsResponse)

    async def ack(
        self, user_id: str, device_id: str, msg_id: int, conversation_id: str
    ) -> store_pb2.AckMessagesResponse:
        request = store_pb2.AckMessagesRequest(
            user_id=user_id, device_id=device_id, msg_id=msg_id, conversation_id=conversation_id
        )
        if not conversation_id:
            # The store must look the message up, and may wait for its writer to catch up: on
            # its own call, so that the shared batches never wait for the log.
            return await self._ack(request)
        result = await self._acks.submit(request)
        if result.error_reason:
            raise AckRefused(result.error_reason, result.error_message)
        return result.response

    async def _ack_batch(
        self, batch: Sequence[store_pb2.AckMessagesRequest]
    ) -> Sequence[store_pb2.AckResult]:
        reply = await self._batch_ack(store_pb2.BatchAckMessagesRequest(requests=batch))
        return reply.results

    async def close(self) -> None:
        await self._acks.aclose()

    async def sync(
        self, user_id: str, device_id: str, cursor: str, page_size: int
    ) -> store_pb2.SyncMessagesResponse:
        return await self._sync(
            store_pb2.SyncMessagesRequest(
                user_id=user_id, device_id=device_id, cursor=cursor, page_size=page_size
            )
        )

    async def history(
        self, user_id: str, conversation_id: str, before_msg_id: int, limit: int
    ) -> store_pb2.ListMessagesResponse:
        return await self._history(
            store_pb2.ListMessagesRequest(
                user_id=user_id,
                conversation_id=conversation_id,
                before_msg_id=before_msg_id,
                page_size=limit,
            )
        )

    async def conversations(self, user_id: str) -> list[store_pb2.Conversation]:
        response = await self._conversations(store_pb2.ListConversationsRequest(user_id=user_id))
        return list(response.conversations)


class GatewayPeers:
    """chatmesh.gateway.v1.GatewayService on one named instance, through Envoy."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        def unary(name: str, response: type[Resp]) -> Unary[Req, Resp]:
            return Unary(channel, _method(_GATEWAY, name), response, timeout_s)

        self._close: Unary[
            gateway_pb2.CloseSessionConnectionsRequest, gateway_pb2.CloseSessionConnectionsResponse
        ] = unary("CloseSessionConnections", gateway_pb2.CloseSessionConnectionsResponse)
        self._deliver: Unary[
            gateway_pb2.DeliverMessagesRequest, gateway_pb2.DeliverMessagesResponse
        ] = unary("DeliverMessages", gateway_pb2.DeliverMessagesResponse)

    @staticmethod
    def _route(gateway_addr: str) -> tuple[tuple[str, str]]:
        return ((channels.GATEWAY_ADDR_HEADER, gateway_addr),)

    async def close_session_connections(
        self, gateway_addr: str, session_id: str, close_code: int, reason: str
    ) -> int:
        request = gateway_pb2.CloseSessionConnectionsRequest(
            session_id=session_id, close_code=close_code, reason=reason
        )
        response = await self._close(request, metadata=self._route(gateway_addr))
        return response.closed

    async def deliver_messages(
        self, gateway_addr: str, deliveries: Iterable[gateway_pb2.Delivery]
    ) -> list[str]:
        request = gateway_pb2.DeliverMessagesRequest(deliveries=list(deliveries))
        response = await self._deliver(request, metadata=self._route(gateway_addr))
        return list(response.unknown_connection_ids)


class HealthProbe:
    """grpc.health.v1 Check through Envoy, one channel per service authority."""

    def __init__(
        self, channels_by_authority: dict[str, grpc.aio.Channel], timeout_s: float
    ) -> None:
        self._checks: dict[str, _HealthCheck] = {
            authority: Unary(channel, _HEALTH_CHECK, health_pb2.HealthCheckResponse, timeout_s)
            for authority, channel in channels_by_authority.items()
        }

    async def serving(self, authority: str) -> bool:
        """True only when the service answers SERVING before the deadline."""
        try:
            response = await self._checks[authority](health_pb2.HealthCheckRequest(service=""))
        except grpc.aio.AioRpcError:
            return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    async def all_serving(self) -> bool:
        results = await asyncio.gather(*(self.serving(a) for a in self._checks))
        return all(results)


@dataclass
class Clients:
    """Everything the gateway calls; `close()` releases the channels."""

    user: UserClient
    presence: PresenceClient
    chat: ChatClient
    store: StoreClient
    gateways: GatewayPeers
    health: HealthProbe
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def close(self) -> None:
        await self.store.close()
        await asyncio.gather(*(channel.close(None) for channel in self.channels))


def build_clients(cfg: GatewayConfig) -> Clients:
    """One channel per authority, all to Envoy's mesh listener."""
    by_authority = {
        authority: channels.mesh_channel(cfg.mesh_addr, authority)
        for authority in {*READINESS_AUTHORITIES, channels.GATEWAY}
    }
    return Clients(
        user=UserClient(by_authority[channels.USER], cfg.rpc_timeout_s),
        presence=PresenceClient(by_authority[channels.PRESENCE], cfg.rpc_timeout_s),
        chat=ChatClient(by_authority[channels.CHAT], cfg.rpc_timeout_s),
        store=StoreClient(by_authority[channels.PERSISTER], cfg.barrier_timeout_s),
        gateways=GatewayPeers(by_authority[channels.GATEWAY], cfg.rpc_timeout_s),
        health=HealthProbe(
            {a: by_authority[a] for a in READINESS_AUTHORITIES}, cfg.health_timeout_s
        ),
        channels=list(by_authority.values()),
    )
