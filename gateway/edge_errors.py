"""The one mapping from failures behind the edge to what clients see (STYLE.md section 5).

Nothing else in the gateway knows gRPC status codes. A downstream failure (`AioRpcError`), an HTTP
routing failure (unknown route, wrong method, body too large) or a refusal of the gateway's own
(bad body, missing token) becomes an `EdgeError`: the stable PROTOCOL.md `code`, a human
`message`, the REST `status`, and the WebSocket behaviour (`frame_code` for an `error` frame, and
`close_code` when the socket must close).

| gRPC                           | REST                           | WebSocket                   |
|--------------------------------|--------------------------------|-----------------------------|
| INVALID_ARGUMENT               | 400, reason or `bad_request`   | `error` with the reason     |
| UNAUTHENTICATED                | 401 `invalid_credentials` /    | close 4001                  |
|                                | `unauthenticated`              |                             |
| PERMISSION_DENIED              | 403 `forbidden`                | `error` `forbidden`         |
| NOT_FOUND                      | 404 `not_found`                | `error` `unknown_recipient` |
| ALREADY_EXISTS                 | 409 reason (`username_taken`)  | `error` with the reason     |
| RESOURCE_EXHAUSTED             | 429 `rate_limited`             | `error` `rate_limited`,     |
|                                |                                | then close 1008             |
| UNAVAILABLE, DEADLINE_EXCEEDED | 503 `unavailable`              | `error` `unavailable`       |
| anything else                  | 500 `internal`, no detail      | `error` `internal`          |

An `error` frame leaves the socket open unless a close is listed.

Downstream messages reach clients only when the service attached an ErrorInfo reason (a
deliberate `svckit.errors.DomainError` refusal) and the status is a 4xx one; everything else gets
a fixed text, so debug detail never leaks.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import grpc

from svckit.errors import reason_of


class CloseCode(enum.IntEnum):
    """WebSocket close codes the edge uses (RFC 6455 section 7.4, plus PROTOCOL.md's 4001)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001  # the server is draining: reconnect elsewhere and sync
    POLICY_VIOLATION = 1008  # repeated abuse
    MESSAGE_TOO_BIG = 1009  # a frame over the limit
    INTERNAL_ERROR = 1011
    UNAUTHORIZED = 4001  # bad token, or the session was logged out


class EdgeError(Exception):
    """A refusal as the client sees it, over REST and over a WebSocket."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int,
        frame_code: str | None = None,
        close_code: CloseCode | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.status = status
        # The `error` frame's code (None: the REST code); with no frame when the socket closes 4001.
        self.frame_code = frame_code
        # Close the socket (after the frame, if any) with this code.
        self.close_code = close_code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"EdgeError({self.code!r}, {self.message!r}, {self.status})"

    @property
    def sends_frame(self) -> bool:
        """False when the socket just closes (4001): there is no one left to tell."""
        return self.close_code != CloseCode.UNAUTHORIZED

    def body(self) -> dict[str, dict[str, str]]:
        """The REST error envelope of PROTOCOL.md."""
        return {"error": {"code": self.code, "message": self.message}}

    def frame(self, client_msg_id: str | None = None) -> dict[str, str]:
        """The WebSocket `error` frame, echoing `client_msg_id` when the refused frame had one."""
        frame = {"action": "error", "code": self.frame_code or self.code, "message": self.message}
        if client_msg_id is not None:
            frame["client_msg_id"] = client_msg_id
        return frame


# Refusals of the gateway's own, and their REST status (STYLE.md section 5 where it has them).
def bad_request(message: str) -> EdgeError:
    return EdgeError("bad_request", message, 400, frame_code="bad_request")


def unauthenticated(message: str = "missing or invalid bearer token") -> EdgeError:
    return EdgeError("unauthenticated", message, 401, close_code=CloseCode.UNAUTHORIZED)


def not_found(message: str = "not found") -> EdgeError:
    return EdgeError("not_found", message, 404, frame_code="not_found")


def method_not_allowed(message: str = "method not allowed") -> EdgeError:
    return EdgeError("method_not_allowed", message, 405, frame_code="bad_request")


def too_large(message: str = "request body too large") -> EdgeError:
    return EdgeError("too_large", message, 413, close_code=CloseCode.MESSAGE_TOO_BIG)


def unavailable(message: str = "a service is unavailable, try again later") -> EdgeError:
    return EdgeError("unavailable", message, 503, frame_code="unavailable")


def rate_limited(close: bool) -> EdgeError:
    """A socket over its frame rate; `close` after repeated abuse (1008)."""
    return EdgeError(
        "rate_limited",
        "too many frames, slow down" + ("; closing" if close else ""),
        429,
        frame_code="rate_limited",
        close_code=CloseCode.POLICY_VIOLATION if close else None,
    )


def internal() -> EdgeError:
    return EdgeError("internal", "internal error", 500, frame_code="internal")


# Codes for HTTP failures aiohttp raises itself (routing, body limits, bad requests).
_HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    409: "conflict",
    411: "bad_request",
    413: "too_large",
    414: "too_large",
    415: "bad_request",
    429: "rate_limited",
    431: "too_large",
    503: "unavailable",
}
_HTTP_MESSAGES: dict[str, str] = {
    "bad_request": "bad request",
    "unauthenticated": "missing or invalid bearer token",
    "forbidden": "forbidden",
    "not_found": "no such resource",
    "method_not_allowed": "method not allowed for this resource",
    "timeout": "request timeout",
    "conflict": "conflict",
    "too_large": "request too large",
    "rate_limited": "too many requests",
    "unavailable": "a service is unavailable, try again later",
}


def from_http_status(status: int) -> EdgeError:
    """An HTTP error aiohttp produced (unknown route, wrong method, body over the limit)."""
    if status >= 500 and status != 503:
        return internal()
    code = _HTTP_CODES.get(status, "bad_request" if 400 <= status < 500 else "internal")
    return EdgeError(code, _HTTP_MESSAGES.get(code, code.replace("_", " ")), status)


@dataclass(frozen=True)
class _Rule:
    status: int
    default_code: str
    message: str
    use_reason: bool  # the REST code is the downstream reason when it gives one
    frame_code: str | None  # fixed WebSocket code; None: the REST code
    close_code: CloseCode | None = None
    relay_message: bool = True  # a deliberate refusal's text is fit for clients


_RULES: dict[grpc.StatusCode, _Rule] = {
    grpc.StatusCode.INVALID_ARGUMENT: _Rule(400, "bad_request", "bad request", True, None),
    grpc.StatusCode.UNAUTHENTICATED: _Rule(
        401, "unauthenticated", "not authenticated", True, None, CloseCode.UNAUTHORIZED
    ),
    grpc.StatusCode.PERMISSION_DENIED: _Rule(403, "forbidden", "forbidden", False, "forbidden"),
    grpc.StatusCode.NOT_FOUND: _Rule(404, "not_found", "not found", False, "unknown_recipient"),
    grpc.StatusCode.ALREADY_EXISTS: _Rule(409, "conflict", "already exists", True, None),
    grpc.StatusCode.RESOURCE_EXHAUSTED: _Rule(
        429,
        "rate_limited",
        "rate limited, slow down",
        False,
        "rate_limited",
        CloseCode.POLICY_VIOLATION,
        relay_message=False,
    ),
    grpc.StatusCode.UNAVAILABLE: _Rule(
        503,
        "unavailable",
        "a service is unavailable, try again later",
        False,
        "unavailable",
        relay_message=False,
    ),
    grpc.StatusCode.DEADLINE_EXCEEDED: _Rule(
        503,
        "unavailable",
        "a service did not answer in time, try again later",
        False,
        "unavailable",
        relay_message=False,
    ),
}

# The reasons an UNAUTHENTICATED status may carry to clients; others read `unauthenticated`.
_AUTH_CODES = frozenset({"invalid_credentials", "unauthenticated"})
_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")
_MAX_MESSAGE = 300


def refused(reason: str, message: str) -> EdgeError:
    """A refusal a batch call reported for one of its items: read as INVALID_ARGUMENT with
    `reason`, exactly as the same refusal of a unary call would be."""
    return _mapped(grpc.StatusCode.INVALID_ARGUMENT, reason, message)


def from_rpc(error: grpc.aio.AioRpcError, *, bearer: bool = False) -> EdgeError:
    """Map a failed call behind the edge.

    `bearer=True` marks the check of a presented token: any refusal is then `unauthenticated`
    (401 / close 4001), whatever reason the service chose.
    """
    return _mapped(error.code(), reason_of(error), error.details() or "", bearer=bearer)


def _mapped(
    status: grpc.StatusCode, reason: str | None, details: str, *, bearer: bool = False
) -> EdgeError:
    rule = _RULES.get(status)
    if rule is None:
        return internal()
    if reason is not None and not _REASON.fullmatch(reason):
        reason = None
    code = reason if (rule.use_reason and reason is not None) else rule.default_code
    if status == grpc.StatusCode.UNAUTHENTICATED and (bearer or code not in _AUTH_CODES):
        code = "unauthenticated"
    message = rule.message
    if rule.relay_message and reason is not None:
        details = details.strip()
        if details and details.isprintable():
            message = details[:_MAX_MESSAGE]
    return EdgeError(
        code=code,
        message=message,
        status=rule.status,
        frame_code=rule.frame_code or code,
        close_code=rule.close_code,
    )
