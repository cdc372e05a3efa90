"""`python -m chat_svc`: the chat service process.

`build()` wires every dependency from one ChatConfig: the Redis client (send ledger, worker
lease), the idempotent Kafka producer, and mesh stubs for user_svc, presence_svc, notify_svc and
the gateways, all through Envoy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import grpc
import redis.asyncio as redis
from chatmesh.gateway.v1 import gateway_pb2_grpc
from chatmesh.notify.v1 import notify_pb2_grpc
from chatmesh.presence.v1 import presence_pb2_grpc
from chatmesh.user.v1 import user_pb2, user_pb2_grpc

from chat_svc.delivery import LiveRouter
from chat_svc.events import LogProducer
from chat_svc.ids import IdGenerator
from chat_svc.lease import WorkerLease
from chat_svc.ledger import SendLedger
from chat_svc.logic import Chat, KnownUsers
from chat_svc.service import ChatServicer, register
from svckit import channels, lifecycle
from svckit.config import (
    ServiceConfig,
    kafka_bootstrap_setting,
    load,
    redis_url_setting,
    setting,
)
from svckit.errors import Unavailable
from svckit.kafka import MESSAGES_TOPIC, producer_config

DEFAULT_PORT = 9201


@dataclass(frozen=True)
class ChatConfig(ServiceConfig):
    kafka_bootstrap: str = kafka_bootstrap_setting()
    redis_url: str = redis_url_setting()
    kafka_batch_max: int = setting(
        "CHATMESH_KAFKA_BATCH_MAX",
        10_000,
        "records per producer batch (1 against the local broker, see svckit/kafka.py)",
    )
    dedupe_retention_s: int = setting(
        "CHATMESH_DEDUPE_RETENTION_S",
        30 * 24 * 3600,
        "how long a client_msg_id is remembered for retries",
    )


@asynccontextmanager
async def build(cfg: ChatConfig) -> AsyncIterator[ChatServicer]:
    async with AsyncExitStack() as stack:
        client = redis.Redis.from_url(
            cfg.redis_url,
            socket_timeout=cfg.rpc_timeout_s,
            socket_connect_timeout=cfg.rpc_timeout_s,
        )
        stack.push_async_callback(client.aclose)
        lease = WorkerLease(client, cfg.instance())
        await lease.acquire()
        lease.start()
        stack.push_async_callback(lease.release)
        producer = LogProducer(
            producer_config(cfg.kafka_bootstrap, cfg.kafka_batch_max, cfg.rpc_timeout_s)
        )
        stack.push_async_callback(producer.close)
        stubs = {}
        for name in (channels.USER, channels.PRESENCE, channels.NOTIFY, channels.GATEWAY):
            channel = channels.mesh_channel(cfg.mesh_addr, name)
            stack.push_async_callback(channel.close, None)
            stubs[name] = channel
        users = user_pb2_grpc.UserServiceStub(stubs[channels.USER])

        async def user_exists(user_id: str) -> bool:
            try:
                await users.GetUser(
                    user_pb2.GetUserRequest(user_id=user_id), timeout=cfg.rpc_timeout_s
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return False
                raise Unavailable("accounts are unavailable") from exc
            return True

        router = LiveRouter(
            presence_pb2_grpc.PresenceServiceStub(stubs[channels.PRESENCE]),
            gateway_pb2_grpc.GatewayServiceStub(stubs[channels.GATEWAY]),
            notify_pb2_grpc.NotifyServiceStub(stubs[channels.NOTIFY]),
            cfg.rpc_timeout_s,
        )
        stack.push_async_callback(router.aclose)
        chat = Chat(
            ledger=SendLedger(client, cfg.dedupe_retention_s),
            ids=IdGenerator(lease.current()),
            worker=lease.current,
            publisher=producer,
            topic=MESSAGES_TOPIC,
            users=KnownUsers(user_exists),
            router=router,
        )
        yield ChatServicer(chat)


async def main() -> None:
    cfg = load(ChatConfig)
    async with build(cfg) as servicer:
        await lifecycle.serve_forever(cfg, DEFAULT_PORT, lambda s: register(s, servicer))


if __name__ == "__main__":
    lifecycle.run("chat_svc", main)
