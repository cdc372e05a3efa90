"""Sync cursors: opaque to clients, a handle on per-conversation positions kept in the store.

A cursor stands for the newest msg_id a device has been sent in each conversation (positions are
per conversation because msg_ids increase within a conversation, not across them). A device may
have thousands of conversations, so the positions stay in the store and the cursor is a short
versioned handle (`v2.<32 hex>`) that fits any frame. A handle the store no longer knows (expired)
means "from the acknowledged positions": the device may see messages again, never miss one.
"""

from __future__ import annotations

import re
import uuid

from svckit.errors import InvalidArgument

PREFIX = "v2."
_HANDLE = re.compile(r"v2\.([0-9a-f]{32})")


def new_handle() -> str:
    return uuid.uuid4().hex


def encode(handle: str) -> str:
    return PREFIX + handle


def decode(cursor: str) -> str | None:
    """The handle inside a cursor; None for an empty cursor; InvalidArgument for anything else."""
    if not cursor:
        return None
    match = _HANDLE.fullmatch(cursor)
    if match is None:
        raise InvalidArgument("cursor is not one this server issued", "bad_field")
    return match.group(1)
