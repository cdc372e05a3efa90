"""REST routes of PROTOCOL.md, the WebSocket upgrade, and the error middleware.

Handlers check shapes, authenticate, call one service and translate its answer; what a username
may look like or who may read what is the services' business. Every failure leaves through
`error_middleware` as the JSON envelope `{"error": {"code", "message"}}` (`edge_errors` decides
the code and status): never HTML, never a stack trace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import orjson
from aiohttp import web
from chatmesh.user.v1 import user_pb2

from gateway import edge_errors, frames, ws
from gateway.edge_errors import EdgeError
from gateway.messaging import message_object
from svckit import telemetry

log = logging.getLogger(__name__)

EDGE = web.AppKey("edge", ws.Edge)
_MAX_TOKEN_CHARS = 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(error: EdgeError, headers: dict[str, str] | None = None) -> web.Response:
    response = json_response(error.body(), error.status)
    if headers:
        response.headers.update(headers)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes the PROTOCOL.md error envelope."""
    try:
        return await handler(request)
    except EdgeError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(edge_errors.from_http_status(exc.status), allow)
    except grpc.aio.AioRpcError as exc:
        error = edge_errors.from_rpc(exc)
        if error.status >= 500:
            log.warning(
                "call behind the edge failed",
                extra={"path": request.path, "status": error.status, "grpc": str(exc.code())},
            )
        return error_response(error)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return error_response(edge_errors.internal())


# --- request shapes -------------------------------------------------------------------------


async def read_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; 400 bad_request otherwise, 413 too_large over the limit."""
    body = await request.read()  # aiohttp raises 413 over client_max_size
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise edge_errors.bad_request("body must be a JSON object") from None
    if not isinstance(obj, dict):
        raise edge_errors.bad_request("body must be a JSON object")
    return obj


def _text(obj: dict[str, Any], name: str, required: bool) -> str:
    value = obj.get(name)
    if value is None:
        if required:
            raise edge_errors.bad_request(f"`{name}` is required")
        return ""
    if not isinstance(value, str):
        raise edge_errors.bad_request(f"`{name}` must be a string")
    if "\x00" in value:
        raise edge_errors.bad_request(f"`{name}` must not contain NUL")
    return value


def required_text(obj: dict[str, Any], name: str) -> str:
    return _text(obj, name, required=True)


def optional_text(obj: dict[str, Any], name: str) -> str:
    return _text(obj, name, required=False)


def bearer_token(request: web.Request, *, allow_query: bool = False) -> str:
    """The token of `Authorization: Bearer <token>` (or `?token=` where allowed); 401 if none."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise edge_errors.unauthenticated("expected `Authorization: Bearer <token>`")
        token = token.strip()
    elif allow_query:
        token = request.query.get("token", "")
    else:
        token = ""
    if not token or len(token) > _MAX_TOKEN_CHARS or not token.isprintable():
        raise edge_errors.unauthenticated()
    return token


async def authenticate(edge: ws.Edge, token: str) -> user_pb2.AuthenticateSessionResponse:
    """Resolve the token on every request (no cache: a revocation works at once)."""
    try:
        return await edge.clients.user.authenticate(token)
    except grpc.aio.AioRpcError as exc:
        raise edge_errors.from_rpc(exc, bearer=True) from None


def profile(user: user_pb2.User) -> dict[str, str]:
    return {"user_id": user.user_id, "username": user.username, "display_name": user.display_name}


# --- handlers -------------------------------------------------------------------------------


class Readiness:
    """GET /healthz's verdict, probed through Envoy at most once per `cache_s`."""

    def __init__(self, edge: ws.Edge) -> None:
        self._edge = edge
        self._ready = False
        self._checked_at: float | None = None
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        now = asyncio.get_running_loop().time()
        checked = self._checked_at
        return checked is not None and now - checked < self._edge.cfg.health_cache_s

    async def ready(self) -> bool:
        if self._fresh():
            return self._ready
        async with self._lock:  # one probe at a time; waiters reuse its verdict
            if not self._fresh():
                self._ready = await self._edge.clients.health.all_serving()
                self._checked_at = asyncio.get_running_loop().time()
            return self._ready


READINESS = web.AppKey("readiness", Readiness)


async def healthz(request: web.Request) -> web.Response:
    edge = request.app[EDGE]
    if edge.draining:
        raise edge_errors.unavailable("this gateway is draining")
    if not await request.app[READINESS].ready():
        raise edge_errors.unavailable("not every service behind the edge is ready")
    return json_response({"status": "ok"})


async def livez(request: web.Request) -> web.Response:
    if request.app[EDGE].draining:
        raise edge_errors.unavailable("this gateway is draining")
    return json_response({"status": "ok"})


async def create_user(request: web.Request) -> web.Response:
    edge = request.app[EDGE]
    body = await read_object(request)
    username = required_text(body, "username")
    password = required_text(body, "password")
    display_name = optional_text(body, "display_name")
    user = await edge.clients.user.create_user(username, password, display_name)
    return json_response(profile(user), status=201)


async def create_session(request: web.Request) -> web.Response:
    edge = request.app[EDGE]
    body = await read_object(request)
    username = required_text(body, "username")
    password = required_text(body, "password")
    device_id = optional_text(body, "device_id")
    session = await edge.clients.user.create_session(username, password, device_id)
    return json_response(
        {
            "token": session.token,
            "user_id": session.user_id,
            "device_id": session.device_id,
            "expires_at": session.expires_at,
        },
        status=201,
    )


async def delete_current_session(request: web.Request) -> web.Response:
    edge = request.app[EDGE]
    token = bearer_token(request)
    session = await authenticate(edge, token)
    await edge.clients.user.revoke(token)
    await ws.close_session_everywhere(edge, session.user_id, session.session_id)
    return web.Response(status=204)


async def get_user(request: web.Request) -> web.Response:
    edge = request.app[EDGE]
    await authenticate(edge, bearer_token(request))
    user = await edge.clients.user.get_user(request.match_info["user_id"])
    return json_response(profile(user))


async def lookup_user(request: web.Request) -> web.Response:
    edge = request.app[EDGE]
    await authenticate(edge, bearer_token(request))
    username = request.query.get("username", "")
    if not username:
        raise edge_errors.bad_request("query parameter `username` is required")
    if "\x00" in username:
        raise edge_errors.bad_request("`username` must not contain NUL")
    user = await edge.clients.user.lookup_user(username)
    return json_response(profile(user))


async def list_conversations(request: web.Request) -> web.Response:
    edge = request.app[EDGE]
    session = await authenticate(edge, bearer_token(request))
    rows = await edge.clients.store.conversations(session.user_id)
    return json_response(
        {
            "conversations": [
                {
                    "conversation_id": row.conversation_id,
                    "peer_id": row.peer_id,
                    "last_message": message_object(row.last_message),
                    "unread": row.unread,
                }
                for row in rows
            ]
        }
    )


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name, "")
    if not text:
        return default
    if (
        not (text.isascii() and text.isdecimal() and len(text) <= 20)
        or not low <= int(text) <= high
    ):
        raise edge_errors.bad_request(f"`{name}` must be a whole number from {low} to {high}")
    return int(text)


async def list_messages(request: web.Request) -> web.Response:
    edge = request.app[EDGE]
    session = await authenticate(edge, bearer_token(request))
    limit = _query_int(request, "limit", 50, 1, 100)
    before = _query_int(request, "before", 0, 1, 2**63 - 1)
    page = await edge.clients.store.history(
        session.user_id, request.match_info["conversation_id"], before, limit
    )
    return json_response(
        {
            "messages": [message_object(m) for m in page.messages],
            "next_before": str(page.next_before_msg_id) if page.next_before_msg_id else None,
        }
    )


async def websocket(request: web.Request) -> web.StreamResponse:
    edge = request.app[EDGE]
    if edge.draining:
        raise edge_errors.unavailable("this gateway is draining; reconnect")
    token = bearer_token(request, allow_query=True)
    session = await authenticate(edge, token)
    resume = request.query.get("resume")
    if resume is not None and (len(resume) > frames.MAX_CURSOR_CHARS or "\x00" in resume):
        raise edge_errors.bad_request("`resume` must be a cursor")
    return await ws.serve_socket(request, edge, token, session, resume)


# --- application ----------------------------------------------------------------------------


async def _heartbeat(app: web.Application) -> AsyncIterator[None]:
    async with ws.heartbeat_owner(app[EDGE]):
        yield


async def _drain(app: web.Application) -> None:
    await ws.drain(app[EDGE])


def build_app(edge: ws.Edge) -> web.Application:
    """The edge application; its owner starts the gRPC side and closes `edge.clients`.

    With tracing on, every request but the probes gets a span that continues Envoy's."""
    telemetry.instrument_aiohttp_server()  # before the Application exists: it adds a middleware
    app = web.Application(middlewares=[error_middleware], client_max_size=edge.cfg.max_body_bytes)
    app[EDGE] = edge
    app[READINESS] = Readiness(edge)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    app.router.add_post("/api/v1/users", create_user)
    app.router.add_get("/api/v1/users", lookup_user)
    app.router.add_get("/api/v1/users/{user_id}", get_user)
    app.router.add_post("/api/v1/sessions", create_session)
    app.router.add_delete("/api/v1/sessions/current", delete_current_session)
    app.router.add_get("/api/v1/ws", websocket)
    app.router.add_get("/api/v1/conversations", list_conversations)
    app.router.add_get("/api/v1/conversations/{conversation_id}/messages", list_messages)
    app.cleanup_ctx.append(_heartbeat)
    app.on_shutdown.append(_drain)
    return app
