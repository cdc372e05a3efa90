"""chatmesh.message.v1.MessageStoreService: sync, history and acknowledgements over the store.

The store's one owner serves its reads, so no other service shares its database.

Sync barrier: before reading, a sync (and a history or conversation listing) takes the log-end
offset of every partition of the message
topic and waits until the store has applied them all. Every message whose `message_ack` went out
before the sync started (acks=all, so it is below the log end) is then in the store, including
one the writer had not stored yet when the device reconnected. Waiting is bounded; past the bound
the call fails UNAVAILABLE and the client syncs again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from chatmesh.message.v1 import store_pb2, store_pb2_grpc

from persister import cursor
from persister.store import Ack, MessageStore
from svckit.conversations import peer_of
from svckit.errors import Context, DomainError, InvalidArgument, PermissionDenied, Unavailable

EndOffsets = Callable[[], Awaitable[dict[int, int]]]

DEFAULT_SYNC_PAGE = 100
MAX_SYNC_PAGE = 500
MAX_HISTORY_PAGE = 100
DEFAULT_CONVERSATIONS = 100
MAX_ACK_BATCH = 1000
MAX_CONVERSATIONS = 500


class Barrier:
    """Waits until the store has applied the log up to its end as of the call."""

    def __init__(
        self, store: MessageStore, topic: str, end_offsets: EndOffsets, timeout_s: float
    ) -> None:
        self.store = store
        self.topic = topic
        self.end_offsets = end_offsets
        self.timeout_s = timeout_s

    async def wait(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        try:
            ends = await asyncio.wait_for(self.end_offsets(), self.timeout_s)
        except (TimeoutError, Exception) as exc:
            raise Unavailable("the message log is unreachable") from exc
        ends = {p: o for p, o in ends.items() if o > 0}
        delay = 0.005
        while True:
            applied = await self.store.applied_offsets(self.topic)
            if all(applied.get(p, 0) >= o for p, o in ends.items()):
                return
            if time.monotonic() + delay > deadline:
                raise Unavailable("the message store is catching up; sync again")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)


def _page_size(requested: int, default: int, maximum: int) -> int:
    if requested < 0 or requested > maximum:
        raise InvalidArgument(f"page_size must be between 1 and {maximum}", "bad_request")
    return requested or default


class MessageStoreServicer(store_pb2_grpc.MessageStoreServiceServicer):
    def __init__(self, store: MessageStore, barrier: Barrier) -> None:
        self.store = store
        self.barrier = barrier

    async def SyncMessages(
        self, request: store_pb2.SyncMessagesRequest, context: Context
    ) -> store_pb2.SyncMessagesResponse:
        if not request.user_id or not request.device_id:
            raise InvalidArgument("user_id and device_id are required")
        limit = _page_size(request.page_size, DEFAULT_SYNC_PAGE, MAX_SYNC_PAGE)
        handle = cursor.decode(request.cursor)
        positions: dict[str, int] = {}
        if handle is not None:
            saved = await self.store.load_cursor(handle, request.user_id, request.device_id)
            positions = saved or {}  # expired: from the acknowledged positions
        await self.barrier.wait()
        page = await self.store.sync_page(request.user_id, request.device_id, positions, limit)
        merged = {**positions, **page.positions}
        next_handle = cursor.new_handle()
        await self.store.save_cursor(next_handle, request.user_id, request.device_id, merged)
        return store_pb2.SyncMessagesResponse(
            messages=page.messages, cursor=cursor.encode(next_handle), has_more=page.has_more
        )

    async def AckMessages(
        self, request: store_pb2.AckMessagesRequest, context: Context
    ) -> store_pb2.AckMessagesResponse:
        (result,) = await self._ack([request])
        if isinstance(result, DomainError):
            raise result
        return result

    async def BatchAckMessages(
        self, request: store_pb2.BatchAckMessagesRequest, context: Context
    ) -> store_pb2.BatchAckMessagesResponse:
        if len(request.requests) > MAX_ACK_BATCH:
            raise InvalidArgument(f"at most {MAX_ACK_BATCH} acknowledgements per call")
        results = [
            store_pb2.AckResult(error_reason=r.reason, error_message=r.message)
            if isinstance(r, DomainError)
            else store_pb2.AckResult(response=r)
            for r in await self._ack(request.requests)
        ]
        return store_pb2.BatchAckMessagesResponse(results=results)

    async def _ack(
        self, requests: Sequence[store_pb2.AckMessagesRequest]
    ) -> list[store_pb2.AckMessagesResponse | DomainError]:
        """Apply acknowledgements together: one lookup of the conversations not given, one
        store write; each gets its response or its refusal."""
        valid = [bool(r.user_id and r.device_id and r.msg_id) for r in requests]
        missing = [
            r.msg_id for r, ok in zip(requests, valid, strict=True) if ok and not r.conversation_id
        ]
        found = await self.store.conversations_of(missing)
        if any(m not in found for m in missing):
            # Acknowledged live before the writer stored it: wait for the store, then look again.
            await self.barrier.wait()
            found = await self.store.conversations_of(missing)
        outcome: list[Ack | DomainError] = []
        for request, ok in zip(requests, valid, strict=True):
            if not ok:
                outcome.append(InvalidArgument("user_id, device_id and msg_id are required"))
                continue
            conversation = request.conversation_id or found.get(request.msg_id, "")
            if not conversation or peer_of(conversation, request.user_id) is None:
                # Unknown and not-yours read the same: an ack never reveals other conversations.
                outcome.append(
                    InvalidArgument(f"no message {request.msg_id} for this user", "bad_field")
                )
                continue
            outcome.append(Ack(request.user_id, request.device_id, conversation, request.msg_id))
        after = await self.store.ack([a for a in outcome if isinstance(a, Ack)])
        return [
            a
            if isinstance(a, DomainError)
            else store_pb2.AckMessagesResponse(
                conversation_id=a.conversation_id, acked_msg_id=after.get(a.position, a.msg_id)
            )
            for a in outcome
        ]

    async def ListMessages(
        self, request: store_pb2.ListMessagesRequest, context: Context
    ) -> store_pb2.ListMessagesResponse:
        if not 1 <= request.page_size <= MAX_HISTORY_PAGE:
            raise InvalidArgument(f"limit must be between 1 and {MAX_HISTORY_PAGE}", "bad_request")
        if peer_of(request.conversation_id, request.user_id) is None:
            raise PermissionDenied("not a participant of that conversation")
        await self.barrier.wait()  # read your writes: what was acknowledged is listed
        rows = await self.store.history(
            request.conversation_id, request.before_msg_id, request.page_size + 1
        )
        more = len(rows) > request.page_size
        rows = rows[: request.page_size]
        return store_pb2.ListMessagesResponse(
            messages=rows, next_before_msg_id=rows[-1].msg_id if more else 0
        )

    async def ListConversations(
        self, request: store_pb2.ListConversationsRequest, context: Context
    ) -> store_pb2.ListConversationsResponse:
        if not request.user_id:
            raise InvalidArgument("user_id is required")
        limit = _page_size(request.page_size, DEFAULT_CONVERSATIONS, MAX_CONVERSATIONS)
        await self.barrier.wait()
        rows = await self.store.conversations(request.user_id, limit)
        return store_pb2.ListConversationsResponse(
            conversations=[
                store_pb2.Conversation(
                    conversation_id=r.conversation_id,
                    peer_id=r.peer_id,
                    last_message=r.last_message,
                    unread=r.unread,
                )
                for r in rows
            ]
        )
