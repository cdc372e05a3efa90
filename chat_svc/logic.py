"""Accepting a message: validate, dedupe, number, log durably, then route it live.

The order of one conversation is decided here. Envoy hashes the conversation onto one chat_svc
instance (a ring hash on the `x-chatmesh-conversation` header), and within an instance a
per-conversation lock serializes numbering, publishing and live delivery. So msg_ids increase
within a conversation in server order, the log holds them in that order (one partition per
conversation), and every gateway receives a conversation's deliveries in that order. After a
fail-over the new instance's ids continue above the conversation's last one (SendLedger.claim
and IdGenerator.floor). A message is answered only after the log acknowledged it (acks=all);
live delivery happens after that and never fails the send: a device that misses it syncs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from chatmesh.chat.v1 import chat_pb2
from chatmesh.message.v1 import message_pb2

from chat_svc import metrics as m
from chat_svc.events import PublishError
from chat_svc.ids import ClockError, IdGenerator
from chat_svc.ledger import SendLedger
from svckit.conversations import conversation_id
from svckit.errors import InvalidArgument, NotFound, Unavailable

log = logging.getLogger(__name__)

MAX_CONTENT_CHARS = 4096
MAX_CLIENT_MSG_ID_CHARS = 128


class Publisher(Protocol):
    async def publish(self, topic: str, key: bytes, value: bytes) -> tuple[int, int]: ...


class Router(Protocol):
    async def route(self, message: message_pb2.Message) -> None: ...


UserExists = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True)
class Accepted:
    message: message_pb2.Message
    duplicate: bool


def validate(request: chat_pb2.SendMessageRequest) -> None:
    """The domain rules of a send; InvalidArgument carries the PROTOCOL.md code as reason."""
    if not request.sender_id or not request.sender_device_id:
        raise InvalidArgument("sender_id and sender_device_id are required", "missing_field")
    if not request.recipient_id:
        raise InvalidArgument("to is required", "missing_field")
    if not request.client_msg_id:
        raise InvalidArgument("client_msg_id is required", "missing_field")
    if len(request.client_msg_id) > MAX_CLIENT_MSG_ID_CHARS:
        raise InvalidArgument(
            f"client_msg_id is longer than {MAX_CLIENT_MSG_ID_CHARS} characters", "bad_field"
        )
    if not request.content:
        raise InvalidArgument("content is empty", "bad_field")
    if len(request.content) > MAX_CONTENT_CHARS:
        raise InvalidArgument(
            f"content is longer than {MAX_CONTENT_CHARS} characters", "content_too_long"
        )


class KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class KnownUsers:
    """Caches that a user exists (accounts are never deleted yet), bounded."""

    def __init__(self, lookup: UserExists, size: int = 100_000) -> None:
        self.lookup = lookup
        self.size = size
        self._known: OrderedDict[str, None] = OrderedDict()

    async def exists(self, user_id: str) -> bool:
        if user_id in self._known:
            self._known.move_to_end(user_id)
            return True
        if not await self.lookup(user_id):
            return False
        self._known[user_id] = None
        if len(self._known) > self.size:
            self._known.popitem(last=False)
        return True


class Chat:
    def __init__(
        self,
        *,
        ledger: SendLedger,
        ids: IdGenerator,
        worker: Callable[[], int],
        publisher: Publisher,
        topic: str,
        users: KnownUsers,
        router: Router,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.ledger = ledger
        self.ids = ids
        self.worker = worker
        self.publisher = publisher
        self.topic = topic
        self.users = users
        self.router = router
        self.clock_ms = clock_ms
        self.locks = KeyedLocks()

    async def send(self, request: chat_pb2.SendMessageRequest) -> Accepted:
        validate(request)
        conversation = conversation_id(request.sender_id, request.recipient_id)
        # A caller may give up half way (its gateway died, its deadline passed): the accept
        # sequence still runs to its end, so no claim is left half done and a later retry, or
        # the next message of the conversation, finds it published and routed, in order.
        work = asyncio.ensure_future(self._send(request, conversation))
        work.add_done_callback(_retrieve)
        return await asyncio.shield(work)

    async def _send(self, request: chat_pb2.SendMessageRequest, conversation: str) -> Accepted:
        async with self.locks.hold(conversation):
            entry, last = await self.ledger.lookup(
                request.sender_id, request.client_msg_id, conversation
            )
            if entry is not None:
                return await self._repeat(entry.message, entry.durable)
            if not await self.users.exists(request.recipient_id):
                raise NotFound("no such recipient", "unknown_recipient")
            message = self._number(request, conversation, last)
            earlier = await self.ledger.claim(message)  # also advances the conversation's last
            if earlier is not None:
                return await self._repeat(earlier.message, earlier.durable)
            # A failed publish keeps the claim: the broker may have the record all the same
            # (a timeout is ambiguous), so a retry republishes it under the same msg_id.
            await self._publish(message)
            await self.router.route(message)
            # Durable *and routed*: a retry that finds a pending claim finishes both.
            await self.ledger.mark_durable(message)
            m.ACCEPTED.inc()
            return Accepted(message, duplicate=False)

    def _number(
        self, request: chat_pb2.SendMessageRequest, conversation: str, last: int
    ) -> message_pb2.Message:
        self.ids.set_worker(self.worker())
        if last:
            self.ids.floor(last)
        try:
            msg_id = self.ids.next_id()
        except ClockError as exc:
            raise Unavailable("cannot number messages right now") from exc
        return message_pb2.Message(
            msg_id=msg_id,
            conversation_id=conversation,
            sender_id=request.sender_id,
            sender_device_id=request.sender_device_id,
            recipient_id=request.recipient_id,
            content=request.content,
            client_msg_id=request.client_msg_id,
            timestamp=request.timestamp,
            server_ts_ms=self.clock_ms(),
        )

    async def _publish(self, message: message_pb2.Message) -> None:
        try:
            await self.publisher.publish(
                self.topic, message.conversation_id.encode(), message.SerializeToString()
            )
        except PublishError as exc:
            log.warning("publish failed", extra={"error": str(exc)})
            raise Unavailable("the message log did not acknowledge the message") from exc

    async def _repeat(self, message: message_pb2.Message, durable: bool) -> Accepted:
        if not durable:
            # The first attempt died between claiming and being routed: finish its work. The
            # record may reach the log twice under one msg_id; the store and clients dedupe.
            await self._publish(message)
            await self.router.route(message)
            await self.ledger.mark_durable(message)
            m.ACCEPTED.inc()  # the first attempt never got this far
        m.DUPLICATE_SENDS.inc()
        return Accepted(message, duplicate=True)


def _retrieve(task: asyncio.Future[Accepted]) -> None:
    """Consume the outcome of a send whose caller went away, so it is not reported as lost."""
    if not task.cancelled() and task.exception() is not None:
        log.info("a send finished with an error after its caller left")
