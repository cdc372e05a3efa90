"""Sync cursors: opaque to clients, a versioned encoding of per-conversation positions.

A cursor maps conversation ids to the newest msg_id a device has been sent. Positions are
per conversation because msg_ids increase within a conversation, not across them.
"""

from __future__ import annotations

import base64
import binascii

import orjson

from svckit.errors import InvalidArgument

PREFIX = "v1."
MAX_CURSOR_CHARS = 48_000


def encode(positions: dict[str, int]) -> str:
    body = orjson.dumps(positions, option=orjson.OPT_SORT_KEYS)
    return PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=")


def decode(cursor: str) -> dict[str, int]:
    """Positions of a cursor; empty for an empty cursor; InvalidArgument for anything else."""
    if not cursor:
        return {}
    if len(cursor) > MAX_CURSOR_CHARS or not cursor.startswith(PREFIX):
        raise InvalidArgument("cursor is not one this server issued", "bad_field")
    text = cursor[len(PREFIX) :]
    try:
        value = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise InvalidArgument("cursor is not one this server issued", "bad_field") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and type(v) is int and 0 <= v < 2**63 for k, v in value.items()
    ):
        raise InvalidArgument("cursor is not one this server issued", "bad_field")
    return value
