"""The message store's interface, shared by every implementation (PostgreSQL, ScyllaDB).

Shaped for a wide-column store: every read is keyed by one partition (a conversation, or a user's
conversation list, or a device's positions) and clustered by `msg_id`; no joins on the hot path;
every write is an idempotent upsert keyed by `msg_id`, so a replayed log batch stores nothing
twice. `apply()` also records, per log partition, the next offset the store has applied, in the
same unit of work as the messages; a sync uses it as a barrier ("everything the log acknowledged
before I started is stored") so a reconnect right after a Kafka acknowledgement misses nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from chatmesh.message.v1 import message_pb2


@dataclass(frozen=True)
class LogRecord:
    """One message as read from the log, with where it was read."""

    topic: str
    partition: int
    offset: int
    message: message_pb2.Message


@dataclass(frozen=True)
class ConversationRow:
    conversation_id: str
    peer_id: str
    last_message: message_pb2.Message
    unread: int


@dataclass(frozen=True, order=True)
class Ack:
    """A device has stored everything up to `msg_id` in a conversation."""

    user_id: str
    device_id: str
    conversation_id: str
    msg_id: int

    @property
    def position(self) -> tuple[str, str, str]:
        return self.user_id, self.device_id, self.conversation_id


@dataclass(frozen=True)
class SyncPage:
    messages: list[message_pb2.Message]
    # Per conversation: the newest msg_id this page covered (sent or skipped as the device's own).
    positions: dict[str, int]
    has_more: bool


class MessageStore(Protocol):
    async def apply(
        self, records: Sequence[LogRecord], next_offsets: Mapping[tuple[str, int], int]
    ) -> None:
        """Store a batch idempotently and advance the applied offsets, all or nothing.

        `next_offsets` is, per (topic, partition), the offset after the batch: it covers records
        the writer skipped as well, so a bad record never holds a sync barrier back."""

    async def applied_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the next log offset not yet applied."""

    async def history(
        self, conversation_id: str, before_msg_id: int, limit: int
    ) -> list[message_pb2.Message]:
        """Messages older than `before_msg_id` (0: from the newest), newest first."""

    async def sync_page(
        self, user_id: str, device_id: str, from_positions: Mapping[str, int], limit: int
    ) -> SyncPage:
        """Up to `limit` messages newer than the device's positions, oldest first per
        conversation; `from_positions` overrides (upwards only) the stored acknowledged ones."""

    async def conversations(self, user_id: str, limit: int) -> list[ConversationRow]:
        """A user's conversations, newest activity first."""

    async def conversations_of(self, msg_ids: Sequence[int]) -> dict[int, str]:
        """The conversation holding each stored msg_id (unknown ones are left out)."""

    async def ack(self, acks: Sequence[Ack]) -> dict[tuple[str, str, str], int]:
        """Move each device's position forward (never back), all in one unit of work; return
        each position (`Ack.position`) after the call."""

    async def save_cursor(
        self, handle: str, user_id: str, device_id: str, positions: Mapping[str, int]
    ) -> None:
        """Keep a sync cursor's positions under `handle` (for a bounded time)."""

    async def load_cursor(self, handle: str, user_id: str, device_id: str) -> dict[str, int] | None:
        """A saved cursor's positions, or None when unknown, expired or another device's."""
