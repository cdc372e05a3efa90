"""WebSocket frames of PROTOCOL.md: parsing and shape validation of client frames, and the server
frames the edge writes.

`parse(data)` turns any text (or bytes) into exactly one of the client frame types, or raises
`FrameError` carrying one of the stable codes in `FRAME_ERROR_CODES`; it never raises anything
else. Only shapes are checked here (types, presence, emptiness, the protocol's published limits):
what a message may say and who may receive it is the services' business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

# Stable error codes a refused frame gets (PROTOCOL.md, guarantee 6).
BAD_JSON = "bad_json"
UNKNOWN_ACTION = "unknown_action"
MISSING_FIELD = "missing_field"
BAD_FIELD = "bad_field"
CONTENT_TOO_LONG = "content_too_long"
FRAME_ERROR_CODES = frozenset(
    {BAD_JSON, UNKNOWN_ACTION, MISSING_FIELD, BAD_FIELD, CONTENT_TOO_LONG}
)

MAX_CONTENT_CHARS = 4096  # code points, PROTOCOL.md
MAX_ID_CHARS = 128  # `to`, `client_msg_id`
MAX_CURSOR_CHARS = 4096
_U64_MAX = 2**64 - 1
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class FrameError(Exception):
    """A client frame was refused; `code` is one of FRAME_ERROR_CODES."""

    def __init__(self, code: str, message: str, client_msg_id: str | None = None) -> None:
        assert code in FRAME_ERROR_CODES, code
        super().__init__(code, message)
        self.code = code
        self.message = message
        # Echoed in the error frame when the refused frame carried a usable one.
        self.client_msg_id = client_msg_id

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class Ping:
    action = "ping"


@dataclass(frozen=True)
class SendMessage:
    to: str
    content: str
    timestamp: int
    client_msg_id: str
    action = "send_message"


@dataclass(frozen=True)
class Ack:
    msg_id: int  # unsigned 64-bit
    action = "ack"


@dataclass(frozen=True)
class Sync:
    cursor: str | None  # None: from the device's acknowledged positions
    action = "sync"


ClientFrame = Ping | SendMessage | Ack | Sync


def _string(obj: dict[str, Any], name: str, max_chars: int, client_msg_id: str | None) -> str:
    if name not in obj or obj[name] is None:
        raise FrameError(MISSING_FIELD, f"`{name}` is required", client_msg_id)
    value = obj[name]
    if not isinstance(value, str):
        raise FrameError(BAD_FIELD, f"`{name}` must be a string", client_msg_id)
    if not value:
        raise FrameError(BAD_FIELD, f"`{name}` must not be empty", client_msg_id)
    if "\x00" in value:
        raise FrameError(BAD_FIELD, f"`{name}` must not contain NUL", client_msg_id)
    if len(value) > max_chars:
        code = CONTENT_TOO_LONG if name == "content" else BAD_FIELD
        raise FrameError(code, f"`{name}` is over {max_chars} characters", client_msg_id)
    return value


def _echo_id(obj: dict[str, Any]) -> str | None:
    value = obj.get("client_msg_id")
    if isinstance(value, str) and value and len(value) <= MAX_ID_CHARS and "\x00" not in value:
        return value
    return None


def _send_message(obj: dict[str, Any]) -> SendMessage:
    echo = _echo_id(obj)
    client_msg_id = _string(obj, "client_msg_id", MAX_ID_CHARS, echo)
    to = _string(obj, "to", MAX_ID_CHARS, echo)
    content = _string(obj, "content", MAX_CONTENT_CHARS, echo)
    if "timestamp" not in obj or obj["timestamp"] is None:
        raise FrameError(MISSING_FIELD, "`timestamp` is required", echo)
    timestamp = obj["timestamp"]
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        raise FrameError(BAD_FIELD, "`timestamp` must be Unix seconds", echo)
    if not _I64_MIN <= timestamp <= _I64_MAX:  # orjson never yields NaN or infinities
        raise FrameError(BAD_FIELD, "`timestamp` is out of range", echo)
    return SendMessage(
        to=to, content=content, timestamp=int(timestamp), client_msg_id=client_msg_id
    )


def _ack(obj: dict[str, Any]) -> Ack:
    if "msg_id" not in obj or obj["msg_id"] is None:
        raise FrameError(MISSING_FIELD, "`msg_id` is required")
    raw = obj["msg_id"]
    value: int | None = None
    if isinstance(raw, str) and raw.isascii() and raw.isdecimal() and len(raw) <= 20:
        value = int(raw)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    if value is None or not 0 < value <= _U64_MAX:
        raise FrameError(BAD_FIELD, "`msg_id` must be a msg_id (a decimal string)")
    return Ack(msg_id=value)


def _sync(obj: dict[str, Any]) -> Sync:
    cursor = obj.get("cursor")
    if cursor is None:
        return Sync(cursor=None)
    if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_CHARS or "\x00" in cursor:
        raise FrameError(BAD_FIELD, "`cursor` must be a string or null")
    return Sync(cursor=cursor or None)


def parse(data: str | bytes) -> ClientFrame:
    """One client frame from a WebSocket message; FrameError with a stable code otherwise."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise FrameError(BAD_JSON, "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise FrameError(BAD_JSON, "frame must be a JSON object")
    action = obj.get("action")
    if action == "ping":
        return Ping()
    if action == "send_message":
        return _send_message(obj)
    if action == "ack":
        return _ack(obj)
    if action == "sync":
        return _sync(obj)
    if action is None:
        raise FrameError(UNKNOWN_ACTION, "frame has no `action`", _echo_id(obj))
    raise FrameError(UNKNOWN_ACTION, "unknown `action`", _echo_id(obj))


def encode(frame: dict[str, Any]) -> str:
    """A server frame as the text of a WebSocket text frame."""
    return orjson.dumps(frame).decode()


def pong() -> dict[str, Any]:
    return {"action": "pong"}


def error(code: str, message: str, client_msg_id: str | None = None) -> dict[str, Any]:
    """An `error` frame: the refused frame's stable code; the socket stays open."""
    frame: dict[str, Any] = {"action": "error", "code": code, "message": message}
    if client_msg_id is not None:
        frame["client_msg_id"] = client_msg_id
    return frame
