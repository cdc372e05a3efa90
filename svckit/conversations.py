"""Conversation ids: one opaque string per pair of users, the same for both participants.

The id names both participants (`dm:<lower user_id>:<higher user_id>`), so any service can tell
who may read a conversation without a lookup, and the Kafka key (the conversation id) keeps one
conversation in one partition. Clients treat it as opaque (PROTOCOL.md).
"""

from __future__ import annotations

PREFIX = "dm"


def conversation_id(user_a: str, user_b: str) -> str:
    if not user_a or not user_b or ":" in user_a or ":" in user_b:
        raise ValueError("user ids must be non-empty and free of ':'")
    low, high = sorted((user_a, user_b))
    return f"{PREFIX}:{low}:{high}"


def participants(conversation: str) -> tuple[str, str] | None:
    """The two user ids of a conversation id, or None when it is not one."""
    parts = conversation.split(":")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    if parts[1] > parts[2]:
        return None
    return parts[1], parts[2]


def peer_of(conversation: str, user_id: str) -> str | None:
    """The other participant, or None when `user_id` is not in the conversation."""
    pair = participants(conversation)
    if pair is None or user_id not in pair:
        return None
    return pair[1] if pair[0] == user_id else pair[0]
