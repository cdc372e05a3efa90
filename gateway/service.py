"""chatmesh.gateway.v1.GatewayService: what other services ask of the sockets this instance holds.

Callers find the instance in presence (`gateway_addr`) and reach it through Envoy with authority
`gateway` and the `x-chatmesh-gateway-addr` header: direct addressing, so a frame for a socket is
one hop from whoever produced it, however many gateway instances there are.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import grpc
from chatmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from chatmesh.message.v1 import message_pb2
from opentelemetry.trace import SpanKind

from gateway import ws
from gateway.edge_errors import CloseCode
from svckit import telemetry
from svckit.errors import Context

log = logging.getLogger(__name__)

SLOW_SOCKET_WAIT_S = 0.05  # how long DeliverMessages waits for a socket's frames to be written

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


class GatewayService(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, edge: ws.Edge) -> None:
        self._edge = edge
        # Writes to slow sockets that outlive their DeliverMessages call; each ends within
        # CHATMESH_DELIVER_TIMEOUT_S (written, or the socket closed).
        self._background: set[asyncio.Future[bool]] = set()

    async def DeliverMessages(  # noqa: N802 - generated method name
        self,
        request: gateway_pb2.DeliverMessagesRequest,
        context: Context,
    ) -> gateway_pb2.DeliverMessagesResponse:
        """Write each delivery as a `new_message` frame, in request order for each socket, the
        sockets side by side: one request carries the frames of many conversations (chat_svc
        batches them), and a socket too slow to take its frames within
        CHATMESH_DELIVER_TIMEOUT_S is closed with 1001 (its device reconnects and syncs) rather
        than stall the others."""
        per_socket: dict[str, list[message_pb2.Message]] = {}
        for delivery in request.deliveries:
            per_socket.setdefault(delivery.connection_id, []).append(delivery.message)
        writes = {
            cid: asyncio.ensure_future(self._deliver(cid, messages))
            for cid, messages in per_socket.items()
        }
        # A socket whose frames are not written at once has a full buffer (a slow reader): its
        # writes go on in the background, bounded by the timeout, so that one slow reader never
        # holds up a batch meant for many sockets. It counts as having taken them: it is open,
        # and if it is closed for slowness its device reconnects and syncs. Order holds: each
        # socket writes under a FIFO lock, taken in arrival order.
        if writes:
            await asyncio.wait(writes.values(), timeout=SLOW_SOCKET_WAIT_S)
        unknown = [cid for cid, w in writes.items() if w.done() and not w.result()]
        for write in writes.values():
            if not write.done():
                self._background.add(write)
                write.add_done_callback(self._settled)
        return gateway_pb2.DeliverMessagesResponse(unknown_connection_ids=unknown)

    def _settled(self, write: asyncio.Future[bool]) -> None:
        """A background write ended: drop it, and log a failure nobody else would see."""
        self._background.discard(write)
        if not write.cancelled() and write.exception() is not None:
            log.error("writing live frames failed", exc_info=write.exception())

    async def _deliver(self, connection_id: str, messages: list[message_pb2.Message]) -> bool:
        """Write one socket's frames in order; False if the socket is unknown, closed or slow."""
        edge = self._edge
        conn = edge.registry.get(connection_id)
        if conn is None or conn.closed:
            return False
        try:
            async with asyncio.timeout(edge.cfg.deliver_timeout_s):
                for message in messages:
                    with telemetry.span(
                        "ws deliver new_message",
                        kind=SpanKind.PRODUCER,
                        attributes={
                            "chatmesh.connection_id": conn.connection_id,
                            "chatmesh.msg_id": str(message.msg_id),
                            "chatmesh.held": conn.live.holding,
                        },
                    ):
                        await edge.messaging.deliver(conn, message)
        except TimeoutError:
            conn.request_close(CloseCode.GOING_AWAY, "too slow; reconnect and sync")
            return False
        return True

    async def CloseSessionConnections(  # noqa: N802 - generated method name
        self,
        request: gateway_pb2.CloseSessionConnectionsRequest,
        context: Context,
    ) -> gateway_pb2.CloseSessionConnectionsResponse:
        code = (
            request.close_code if _valid_close_code(request.close_code) else CloseCode.UNAUTHORIZED
        )
        conns = self._edge.registry.by_session(request.session_id)
        closed = ws.close_all(conns, code, request.reason)
        return gateway_pb2.CloseSessionConnectionsResponse(closed=closed)


def _valid_close_code(code: int) -> bool:
    """Codes an endpoint may send (RFC 6455 section 7.4)."""
    return code in (1000, 1001, 1008, 1009, 1011) or 3000 <= code <= 4999


def register(edge: ws.Edge) -> Callable[[grpc.aio.Server], Iterable[str]]:
    """The `register` callback of svckit.lifecycle.start_server."""

    def add(server: grpc.aio.Server) -> Iterable[str]:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(GatewayService(edge), server)
        return [SERVICE_NAME]

    return add
