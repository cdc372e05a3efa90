"""Messaging on a socket: send_message, ack, sync and resume, and live frames held back in order.

Translation only: chat_svc accepts messages, the store's owner answers sync and acks; this module
turns frames into those calls and their answers into frames.

Order on one connection (PROTOCOL.md guarantee 4). While a sync or a resume runs on a socket, live
frames for it are held; when the last page (`has_more: false`) has been written, the held frames
are written in arrival order, except those the sync already carried. After a page with
`has_more: true` the hold lasts until the client's next sync, or `sync_hold_s` at most. A live
frame is also dropped when a sync on this connection already carried it (its msg_id is at or
below what the sync covered in that conversation), so a message never arrives twice on one
connection from these two paths. Live frames for a conversation arrive in msg_id order because
one chat_svc instance at a time delivers a conversation, waiting for each delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatmesh.chat.v1 import chat_pb2
from chatmesh.message.v1 import message_pb2

from gateway import edge_errors, frames
from gateway import metrics as m
from gateway.clients import AckRefused, Clients
from gateway.config import GatewayConfig
from svckit.conversations import conversation_id

log = logging.getLogger(__name__)

_RECENT = 4096  # msg_id -> conversation of frames written on a socket, for its acks


def message_object(message: message_pb2.Message) -> dict[str, Any]:
    """A message as PROTOCOL.md shows it in history, `last_message` and frames."""
    return {
        "msg_id": str(message.msg_id),
        "conversation_id": message.conversation_id,
        "from": message.sender_id,
        "to": message.recipient_id,
        "content": message.content,
        "timestamp": message.timestamp,
        "client_msg_id": message.client_msg_id,
        "server_ts_ms": message.server_ts_ms,
    }


def new_message_frame(message: message_pb2.Message) -> dict[str, Any]:
    return {"action": "new_message", **message_object(message)}


def message_ack_frame(message: message_pb2.Message) -> dict[str, Any]:
    return {
        "action": "message_ack",
        "client_msg_id": message.client_msg_id,
        "msg_id": str(message.msg_id),
        "conversation_id": message.conversation_id,
        "timestamp": message.timestamp,
        "server_ts_ms": message.server_ts_ms,
    }


def sync_done_frame(cursor: str, has_more: bool) -> dict[str, Any]:
    return {"action": "sync_done", "cursor": cursor, "has_more": has_more}


@dataclass
class LiveState:
    """What one socket needs for in-order live delivery."""

    holding: bool = False
    held: list[message_pb2.Message] = field(default_factory=list)
    # Per conversation, the newest msg_id a sync on this socket carried.
    synced: dict[str, int] = field(default_factory=dict)
    recent: OrderedDict[int, str] = field(default_factory=OrderedDict)
    release_timer: asyncio.TimerHandle | None = None

    def remember(self, message: message_pb2.Message) -> None:
        self.recent[message.msg_id] = message.conversation_id
        if len(self.recent) > _RECENT:
            self.recent.popitem(last=False)

    def already_synced(self, message: message_pb2.Message) -> bool:
        return message.msg_id <= self.synced.get(message.conversation_id, 0)


class Socket(Protocol):
    """The slice of a gateway connection messaging needs (gateway.ws.Connection has it)."""

    user_id: str
    device_id: str
    live: LiveState

    async def send(self, frame: dict[str, Any]) -> bool: ...


class Messaging:
    def __init__(self, cfg: GatewayConfig, clients: Clients) -> None:
        self.cfg = cfg
        self.clients = clients

    # -- frames from the client -------------------------------------------------------------

    async def send_message(self, conn: Socket, frame: frames.SendMessage) -> None:
        try:
            conversation = conversation_id(conn.user_id, frame.to)
        except ValueError:
            raise edge_errors.EdgeError(
                "not_found", "no such recipient", 404, frame_code="unknown_recipient"
            ) from None
        response = await self.clients.chat.send(
            chat_pb2.SendMessageRequest(
                sender_id=conn.user_id,
                sender_device_id=conn.device_id,
                recipient_id=frame.to,
                content=frame.content,
                client_msg_id=frame.client_msg_id,
                timestamp=frame.timestamp,
            ),
            conversation,
        )
        await conn.send(message_ack_frame(response.message))

    async def ack(self, conn: Socket, frame: frames.Ack) -> None:
        if frame.msg_id >= 2**63:
            raise edge_errors.EdgeError("bad_field", "no such message", 400, frame_code="bad_field")
        known = conn.live.recent.get(frame.msg_id, "")
        try:
            await self.clients.store.ack(conn.user_id, conn.device_id, frame.msg_id, known)
        except AckRefused as exc:
            raise edge_errors.refused(exc.reason, exc.message) from None

    async def sync(self, conn: Socket, cursor: str | None, *, all_pages: bool = False) -> None:
        """One page (a client's `sync`), or every page (a resume), then release held frames."""
        self.hold(conn)
        has_more = True
        try:
            next_cursor = cursor or ""
            while has_more:
                page = await self.clients.store.sync(
                    conn.user_id, conn.device_id, next_cursor, self.cfg.sync_page_size
                )
                for message in page.messages:
                    await conn.send(new_message_frame(message))
                    conn.live.remember(message)
                    synced = conn.live.synced
                    synced[message.conversation_id] = max(
                        synced.get(message.conversation_id, 0), message.msg_id
                    )
                next_cursor, has_more = page.cursor, page.has_more
                await conn.send(sync_done_frame(next_cursor, has_more))
                if not all_pages:
                    break
        finally:
            if has_more and not all_pages:
                self._release_later(conn)
            else:
                await self.release(conn)

    # -- live frames from chat_svc (through GatewayService.DeliverMessages) -------------------

    async def deliver(self, conn: Socket, message: message_pb2.Message) -> None:
        live = conn.live
        if live.holding:
            live.held.append(message)
            return
        if live.already_synced(message):
            return
        await _write_live(conn, message)

    # -- holding -------------------------------------------------------------------------------

    def hold(self, conn: Socket) -> None:
        live = conn.live
        live.holding = True
        if live.release_timer is not None:
            live.release_timer.cancel()
            live.release_timer = None

    def _release_later(self, conn: Socket) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            conn.live.release_timer = None
            task = loop.create_task(self.release(conn))
            task.add_done_callback(_log_failure)

        conn.live.release_timer = loop.call_later(self.cfg.sync_hold_s, fire)

    async def release(self, conn: Socket) -> None:
        """Write the held frames in arrival order, then deliver live again."""
        live = conn.live
        if live.release_timer is not None:
            live.release_timer.cancel()
            live.release_timer = None
        while live.held:
            message = live.held.pop(0)
            if not live.already_synced(message):
                await _write_live(conn, message)
        live.holding = False

    def forget(self, conn: Socket) -> None:
        """The socket closed: drop its timer and held frames (its device will sync)."""
        if conn.live.release_timer is not None:
            conn.live.release_timer.cancel()
        conn.live.held.clear()


async def _write_live(conn: Socket, message: message_pb2.Message) -> None:
    """Write a live frame; its delivery latency is measured from chat_svc's acceptance."""
    if await conn.send(new_message_frame(message)):
        if message.server_ts_ms:
            latency_ms = time.time_ns() // 1_000_000 - message.server_ts_ms
            m.DELIVERY_LATENCY.observe(max(latency_ms, 0) / 1000)
    conn.live.remember(message)


def _log_failure(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        error = task.exception()
        if error is not None:
            log.error("releasing held frames failed", exc_info=error)
