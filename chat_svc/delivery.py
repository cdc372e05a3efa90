"""Live delivery: from an accepted message to the gateway instances holding the sockets.

Design: direct addressing through Envoy. presence_svc says which gateway instance holds each of
the recipient's and the sender's sockets, with that instance's address; chat_svc calls
`chatmesh.gateway.v1.GatewayService/DeliverMessages` on each instance once, through Envoy's
original-destination cluster (authority `gateway`, header `x-chatmesh-gateway-addr`).

Why this over the alternatives: a delivery costs one presence read and one call per gateway that
holds a socket, whatever the number of gateways; Envoy needs no per-gateway configuration (a new
gateway registers its address with each socket), keeps connections to busy gateways warm and
applies timeouts and outlier detection. Per-gateway pub/sub channels would make every chat_svc
hold a subscription per gateway or every gateway receive traffic for others; a delivery topic
partitioned by gateway adds a log hop and its latency to every live message. What it costs: a
presence read per message (one Redis round trip behind presence_svc), and a gateway that dies
between the read and the call loses those frames, which its devices recover by syncing after
they reconnect.

A recipient with no live socket is handed to notify_svc for a push.

Batching: both calls go through `svckit.batching`. A presence read for a message that finds
reads under way (two at most) waits and goes, together with the others that waited, in the next;
frames for one gateway instance likewise share the next `DeliverMessages` to it. A quiet mesh
makes one call per message as before; a busy one makes one call per batch, which is what lets
chat_svc, presence_svc, Envoy and the gateways carry more messages per second than calls per
second. Order holds: a conversation's messages are routed one after the other (its lock in
`chat_svc.logic`), so two of them are never in one batch or in two batches at once, and the
gateway writes each socket's frames in request order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence

import grpc
from chatmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from chatmesh.message.v1 import message_pb2
from chatmesh.notify.v1 import notify_pb2, notify_pb2_grpc
from chatmesh.presence.v1 import presence_pb2, presence_pb2_grpc

from chat_svc import metrics as m
from svckit.batching import Batcher, KeyedBatcher
from svckit.channels import GATEWAY_ADDR_HEADER
from svckit.metrics import BATCH_SIZE

log = logging.getLogger(__name__)


class LiveRouter:
    def __init__(
        self,
        presence: presence_pb2_grpc.PresenceServiceStub,
        gateways: gateway_pb2_grpc.GatewayServiceStub,
        notify: notify_pb2_grpc.NotifyServiceStub,
        timeout_s: float,
    ) -> None:
        self.presence = presence
        self.gateways = gateways
        self.notify = notify
        self.timeout_s = timeout_s
        # Two calls in flight, so one slow call (a timeout) never stalls every message behind
        # it; batches large enough that a backlog drains in a call or two. A DeliverMessages
        # batch is bounded by size too: 64 messages of at most 4,096 characters (16 KiB of
        # UTF-8) each stay far below gRPC's 4 MiB default message limit.
        self._lookups: Batcher[tuple[str, ...], list[presence_pb2.Connection]] = Batcher(
            self._lookup_batch,
            max_batch=1024,
            max_in_flight=2,
            on_batch=BATCH_SIZE.labels("presence").observe,
        )
        self._deliveries: KeyedBatcher[str, list[gateway_pb2.Delivery], set[str]] = KeyedBatcher(
            self._deliver_batch,
            max_batch=64,
            max_in_flight=2,
            on_batch=BATCH_SIZE.labels("deliver").observe,
        )

    async def route(self, message: message_pb2.Message) -> None:
        try:
            found = await self._lookups.submit((message.recipient_id, message.sender_id))
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "presence lookup failed; devices will sync", extra={"code": str(exc.code())}
            )
            await self._hand_off(message)
            return
        by_gateway: dict[str, list[gateway_pb2.Delivery]] = defaultdict(list)
        recipient_sockets: set[str] = set()
        for conn in found:
            if conn.user_id == message.sender_id and conn.device_id == message.sender_device_id:
                continue  # the sending device has its message_ack
            if conn.user_id == message.recipient_id:
                recipient_sockets.add(conn.connection_id)
            by_gateway[conn.gateway_addr].append(
                gateway_pb2.Delivery(connection_id=conn.connection_id, message=message)
            )
        missed = await asyncio.gather(*(self._deliver(a, d) for a, d in by_gateway.items()))
        # Presence may still list a socket that just closed, or a dead gateway's: the recipient
        # counts as reached only if one of their sockets took the frame.
        reached = recipient_sockets - set().union(*missed)
        if reached:
            m.DELIVERED_LIVE.inc()
        elif message.recipient_id != message.sender_id:
            await self._hand_off(message)

    async def _lookup_batch(
        self, batch: Sequence[tuple[str, ...]]
    ) -> list[list[presence_pb2.Connection]]:
        """One presence read for the users of every message in the batch."""
        users = list(dict.fromkeys(user for item in batch for user in item))
        found = await self.presence.GetConnections(
            presence_pb2.GetConnectionsRequest(user_ids=users), timeout=self.timeout_s
        )
        by_user: dict[str, list[presence_pb2.Connection]] = defaultdict(list)
        for conn in found.connections:
            by_user[conn.user_id].append(conn)
        return [[c for user in dict.fromkeys(item) for c in by_user[user]] for item in batch]

    async def _deliver(self, addr: str, deliveries: list[gateway_pb2.Delivery]) -> set[str]:
        """Deliver to one gateway; returns the connection ids that did not take the frame."""
        try:
            return await self._deliveries.submit(addr, deliveries)
        except grpc.aio.AioRpcError as exc:
            m.LIVE_DELIVERY_FAILURES.inc()
            log.warning(
                "live delivery failed; devices will sync",
                extra={"gateway": addr, "code": str(exc.code())},
            )
            return {d.connection_id for d in deliveries}

    async def _deliver_batch(
        self, addr: str, batch: Sequence[list[gateway_pb2.Delivery]]
    ) -> list[set[str]]:
        """One DeliverMessages call to one gateway for the frames of every message in the batch."""
        reply = await self.gateways.DeliverMessages(
            gateway_pb2.DeliverMessagesRequest(deliveries=[d for item in batch for d in item]),
            metadata=((GATEWAY_ADDR_HEADER, addr),),
            timeout=self.timeout_s,
        )
        unknown = set(reply.unknown_connection_ids)
        return [{d.connection_id for d in item} & unknown for item in batch]

    async def aclose(self) -> None:
        await self._lookups.aclose()
        await self._deliveries.aclose()

    async def _hand_off(self, message: message_pb2.Message) -> None:
        try:
            await self.notify.EnqueueNotification(
                notify_pb2.EnqueueNotificationRequest(
                    request_id=f"{message.msg_id}:{message.recipient_id}",
                    recipient_id=message.recipient_id,
                    sender_id=message.sender_id,
                    conversation_id=message.conversation_id,
                    msg_id=message.msg_id,
                ),
                timeout=self.timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            m.PUSH_HANDOFF_FAILURES.inc()
            log.warning("push hand-off failed", extra={"code": str(exc.code())})
            return
        m.HANDED_TO_PUSH.inc()
