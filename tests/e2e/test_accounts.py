"""Accounts, sessions and WebSocket authentication through the real edge (PROTOCOL.md).

Envoy's edge -> gateway -> Envoy's mesh -> user_svc -> PostgreSQL, and presence_svc on Valkey for
the logout fan-out. Each test makes its own users, so tests share the session's mesh freely.
Waits are conditions with deadlines (`receive(timeout=...)`), never sleeps.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from launcher.mesh import Mesh

pytestmark = pytest.mark.e2e

WAIT_S = 10.0  # deadline for anything the mesh should do "at once"
PASSWORD = "correct horse"


def unique(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:16]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def gateway_url(mesh: Mesh, index: int) -> str:
    """One gateway instance's HTTP port directly, bypassing Envoy's spreading."""
    return f"http://127.0.0.1:{mesh.ports.gateway_http[index]}"


def ws_url(base: str, token: str | None = None) -> str:
    url = base.replace("http://", "ws://", 1) + "/api/v1/ws"
    return f"{url}?token={token}" if token is not None else url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
        yield session


@pytest.fixture
def edge(mesh: Mesh) -> str:
    return mesh.edge_url


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    json: Any = None,
    data: bytes | str | None = None,
    token: str | None = None,
) -> tuple[int, Any]:
    headers = bearer(token) if token is not None else {}
    kwargs: dict[str, Any] = {"headers": headers}
    if json is not None:
        kwargs["json"] = json
    if data is not None:
        kwargs["data"] = data
    async with http.request(method, url, **kwargs) as resp:
        assert "html" not in resp.headers.get("Content-Type", "")
        if resp.status == 204:
            assert await resp.read() == b""
            return resp.status, None
        assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
        return resp.status, await resp.json()


def assert_error(answer: tuple[int, Any], status: int, code: str) -> None:
    got_status, body = answer
    assert (got_status, body) == (
        status,
        {"error": {"code": code, "message": body["error"]["message"]}},
    )
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


async def register(
    http: aiohttp.ClientSession, base: str, username: str | None = None
) -> dict[str, Any]:
    name = username or unique()
    status, body = await call(
        http, "POST", f"{base}/api/v1/users", json={"username": name, "password": PASSWORD}
    )
    assert status == 201, body
    return dict(body)


async def login(
    http: aiohttp.ClientSession, base: str, username: str, device_id: str | None = None
) -> dict[str, Any]:
    payload = {"username": username, "password": PASSWORD}
    if device_id is not None:
        payload["device_id"] = device_id
    status, body = await call(http, "POST", f"{base}/api/v1/sessions", json=payload)
    assert status == 201, body
    return dict(body)


async def new_session(http: aiohttp.ClientSession, base: str) -> tuple[dict[str, Any], str]:
    user = await register(http, base)
    return user, (await login(http, base, user["username"]))["token"]


async def ping(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_json({"action": "ping"})
    assert await receive(ws) == {"action": "pong"}


async def receive(ws: aiohttp.ClientWebSocketResponse) -> Any:
    msg = await ws.receive(timeout=WAIT_S)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return msg.json()


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Wait (with a deadline) for the server's close frame; its close code."""
    msg = await ws.receive(timeout=WAIT_S)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    return ws.close_code


# --- health -----------------------------------------------------------------------------------


async def test_healthz(http: aiohttp.ClientSession, edge: str) -> None:
    assert await call(http, "GET", f"{edge}/healthz") == (200, {"status": "ok"})


async def test_livez_on_each_gateway(http: aiohttp.ClientSession, mesh: Mesh) -> None:
    for index in range(len(mesh.ports.gateway_http)):
        status, _ = await call(http, "GET", f"{gateway_url(mesh, index)}/livez")
        assert status == 200


# --- registration -----------------------------------------------------------------------------


async def test_register_answers_the_profile(http: aiohttp.ClientSession, edge: str) -> None:
    name = unique()
    status, body = await call(
        http,
        "POST",
        f"{edge}/api/v1/users",
        json={"username": name, "password": PASSWORD, "display_name": "Ada L."},
    )
    assert status == 201
    assert set(body) == {"user_id", "username", "display_name"}
    assert isinstance(body["user_id"], str) and body["user_id"]
    assert (body["username"], body["display_name"]) == (name, "Ada L.")


async def test_register_without_display_name(http: aiohttp.ClientSession, edge: str) -> None:
    name = unique()
    body = await register(http, edge, name)
    assert body["username"] == name
    assert isinstance(body["display_name"], str)


@pytest.mark.parametrize(
    "name",
    [uuid.uuid4().hex[:3], uuid.uuid4().hex[:32], f"a.b_{uuid.uuid4().hex[:8]}"],
    ids=["3 chars", "32 chars", "dot and underscore"],
)
async def test_register_username_bounds(http: aiohttp.ClientSession, edge: str, name: str) -> None:
    status, body = await call(
        http, "POST", f"{edge}/api/v1/users", json={"username": name, "password": PASSWORD}
    )
    assert status == 201, body
    assert body["username"] == name


async def test_register_username_taken(http: aiohttp.ClientSession, edge: str) -> None:
    user = await register(http, edge)
    answer = await call(
        http,
        "POST",
        f"{edge}/api/v1/users",
        json={"username": user["username"], "password": "another password"},
    )
    assert_error(answer, 409, "username_taken")


@pytest.mark.parametrize(
    "name",
    [
        "ab",  # too short
        "",  # empty
        "Abcdef",  # uppercase
        "a" * 33,  # too long
        "bad-name",  # hyphen
        "bad name",  # space
        "ünïcode",  # outside [a-z0-9_.]
        "name!",
    ],
)
async def test_register_bad_username(http: aiohttp.ClientSession, edge: str, name: str) -> None:
    answer = await call(
        http, "POST", f"{edge}/api/v1/users", json={"username": name, "password": PASSWORD}
    )
    assert_error(answer, 400, "bad_request")


async def test_register_short_password(http: aiohttp.ClientSession, edge: str) -> None:
    answer = await call(
        http, "POST", f"{edge}/api/v1/users", json={"username": unique(), "password": "1234567"}
    )
    assert_error(answer, 400, "bad_request")
    status, _ = await call(
        http, "POST", f"{edge}/api/v1/users", json={"username": unique(), "password": "12345678"}
    )
    assert status == 201


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"[1, 2]",
        b'"a string"',
        b"null",
        b'{"username": "abcdef"}',  # no password
        b'{"password": "12345678"}',  # no username
        b'{"username": 12345, "password": "12345678"}',
        b'{"username": "abcdef", "password": 12345678}',
        b'{"username": ["abcdef"], "password": "12345678"}',
        b'{"username": "abcdef", "password": "12345678", "display_name": 5}',
    ],
)
async def test_register_bad_body(http: aiohttp.ClientSession, edge: str, body: bytes) -> None:
    answer = await call(http, "POST", f"{edge}/api/v1/users", data=body)
    assert_error(answer, 400, "bad_request")


# --- login --------------------------------------------------------------------------------------


async def test_login_answers_a_session(http: aiohttp.ClientSession, edge: str) -> None:
    user = await register(http, edge)
    session = await login(http, edge, user["username"], device_id="phone-1")
    assert set(session) == {"token", "user_id", "device_id", "expires_at"}
    assert isinstance(session["token"], str) and session["token"]
    assert session["user_id"] == user["user_id"]
    assert session["device_id"] == "phone-1"
    assert isinstance(session["expires_at"], int) and session["expires_at"] > time.time()


async def test_login_assigns_a_device(http: aiohttp.ClientSession, edge: str) -> None:
    user = await register(http, edge)
    first = await login(http, edge, user["username"])
    second = await login(http, edge, user["username"])
    assert isinstance(first["device_id"], str) and first["device_id"]
    assert first["token"] != second["token"]


async def test_login_refused(http: aiohttp.ClientSession, edge: str) -> None:
    user = await register(http, edge)
    wrong = {"username": user["username"], "password": "wrong password"}
    assert_error(
        await call(http, "POST", f"{edge}/api/v1/sessions", json=wrong), 401, "invalid_credentials"
    )
    nobody = {"username": unique(), "password": PASSWORD}
    assert_error(
        await call(http, "POST", f"{edge}/api/v1/sessions", json=nobody), 401, "invalid_credentials"
    )


@pytest.mark.parametrize(
    "body", [b"{", b"[]", b'{"username": "abcdef"}', b'{"username": 1, "password": "x"}']
)
async def test_login_bad_body(http: aiohttp.ClientSession, edge: str, body: bytes) -> None:
    assert_error(await call(http, "POST", f"{edge}/api/v1/sessions", data=body), 400, "bad_request")


# --- profiles -----------------------------------------------------------------------------------


async def test_profile_by_id_and_by_username(http: aiohttp.ClientSession, edge: str) -> None:
    _, token = await new_session(http, edge)
    other = await register(http, edge)
    by_id = await call(http, "GET", f"{edge}/api/v1/users/{other['user_id']}", token=token)
    assert by_id == (200, other)
    by_name = await call(
        http, "GET", f"{edge}/api/v1/users?username={other['username']}", token=token
    )
    assert by_name == (200, other)


async def test_profile_not_found(http: aiohttp.ClientSession, edge: str) -> None:
    _, token = await new_session(http, edge)
    for user_id in ("999999999999999", "no-such-user"):
        answer = await call(http, "GET", f"{edge}/api/v1/users/{user_id}", token=token)
        assert_error(answer, 404, "not_found")
    for username in (unique(), "No-Such-User"):
        answer = await call(http, "GET", f"{edge}/api/v1/users?username={username}", token=token)
        assert_error(answer, 404, "not_found")


async def test_lookup_needs_a_username(http: aiohttp.ClientSession, edge: str) -> None:
    _, token = await new_session(http, edge)
    assert_error(await call(http, "GET", f"{edge}/api/v1/users", token=token), 400, "bad_request")
    assert_error(
        await call(http, "GET", f"{edge}/api/v1/users?username=", token=token), 400, "bad_request"
    )


async def test_bearer_required(http: aiohttp.ClientSession, edge: str) -> None:
    user = await register(http, edge)
    urls = [
        ("GET", f"{edge}/api/v1/users/{user['user_id']}"),
        ("GET", f"{edge}/api/v1/users?username={user['username']}"),
        ("DELETE", f"{edge}/api/v1/sessions/current"),
    ]
    for method, url in urls:
        assert_error(await call(http, method, url), 401, "unauthenticated")
        assert_error(await call(http, method, url, token="not-a-token"), 401, "unauthenticated")
        async with http.request(method, url, headers={"Authorization": "Basic dTpw"}) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthenticated"


# --- logout -------------------------------------------------------------------------------------


async def test_logout_revokes_at_once(http: aiohttp.ClientSession, edge: str) -> None:
    user, token = await new_session(http, edge)
    other_token = (await login(http, edge, user["username"]))["token"]
    profile_url = f"{edge}/api/v1/users/{user['user_id']}"
    assert (await call(http, "GET", profile_url, token=token))[0] == 200

    assert await call(http, "DELETE", f"{edge}/api/v1/sessions/current", token=token) == (204, None)

    assert_error(await call(http, "GET", profile_url, token=token), 401, "unauthenticated")
    assert_error(
        await call(http, "DELETE", f"{edge}/api/v1/sessions/current", token=token),
        401,
        "unauthenticated",
    )
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(ws_url(edge), headers=bearer(token))
    assert refused.value.status == 401
    # Only that session ended: the user's other session still works.
    assert (await call(http, "GET", profile_url, token=other_token))[0] == 200


# --- edge-level errors --------------------------------------------------------------------------


async def test_unknown_route_wrong_method_too_large(http: aiohttp.ClientSession, edge: str) -> None:
    assert_error(await call(http, "GET", f"{edge}/api/v1/nothing-here"), 404, "not_found")
    assert_error(await call(http, "GET", f"{edge}/"), 404, "not_found")
    assert_error(await call(http, "PUT", f"{edge}/api/v1/users"), 405, "method_not_allowed")
    assert_error(await call(http, "GET", f"{edge}/api/v1/sessions"), 405, "method_not_allowed")
    big = b'{"username": "' + b"a" * (80 * 1024) + b'", "password": "12345678"}'
    assert_error(await call(http, "POST", f"{edge}/api/v1/users", data=big), 413, "too_large")


# --- WebSocket authentication and frames --------------------------------------------------------


async def test_ws_upgrade_refused_without_a_good_token(
    http: aiohttp.ClientSession, edge: str
) -> None:
    for url, headers in [
        (ws_url(edge), {}),
        (ws_url(edge, "not-a-token"), {}),
        (ws_url(edge), bearer("not-a-token")),
    ]:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, headers=headers)
        assert refused.value.status == 401


async def test_ws_token_in_header_or_query(http: aiohttp.ClientSession, edge: str) -> None:
    _, token = await new_session(http, edge)
    async with http.ws_connect(ws_url(edge), headers=bearer(token)) as ws:
        await ping(ws)
    async with http.ws_connect(ws_url(edge, token)) as ws:
        await ping(ws)


async def test_ws_bad_frames_keep_the_socket_open(http: aiohttp.ClientSession, edge: str) -> None:
    _, token = await new_session(http, edge)
    async with http.ws_connect(ws_url(edge, token)) as ws:
        for text, code in [
            ("not json", "bad_json"),
            ("[1, 2]", "bad_json"),
            ('"ping"', "bad_json"),
            ("{}", "unknown_action"),
            ('{"action": "dance"}', "unknown_action"),
        ]:
            await ws.send_str(text)
            frame = await receive(ws)
            assert frame["action"] == "error"
            assert frame["code"] == code
            assert isinstance(frame["message"], str)
            await ping(ws)  # still open, still served
        assert not ws.closed


async def test_ws_frame_over_64_kib_closes_1009(http: aiohttp.ClientSession, edge: str) -> None:
    _, token = await new_session(http, edge)
    async with http.ws_connect(ws_url(edge, token)) as ws:
        await ping(ws)
        await ws.send_str('{"action": "ping", "pad": "' + "x" * (65 * 1024) + '"}')
        assert await closed_with(ws) == 1009


async def test_logout_closes_sockets_on_the_other_gateway(
    http: aiohttp.ClientSession, mesh: Mesh
) -> None:
    first, second = gateway_url(mesh, 0), gateway_url(mesh, 1)
    user, token = await new_session(http, first)
    other_token = (await login(http, first, user["username"]))["token"]
    async with (
        http.ws_connect(ws_url(first, token)) as ws,
        http.ws_connect(ws_url(first), headers=bearer(token)) as ws_again,
        http.ws_connect(ws_url(second, token)) as ws_local,
        http.ws_connect(ws_url(first, other_token)) as ws_other,
    ):
        for socket in (ws, ws_again, ws_local, ws_other):
            await ping(socket)  # the sockets are served, hence registered

        status, _ = await call(http, "DELETE", f"{second}/api/v1/sessions/current", token=token)
        assert status == 204

        assert await closed_with(ws) == 4001  # on gateway-1, closed through gateway-1's gRPC
        assert await closed_with(ws_again) == 4001
        assert await closed_with(ws_local) == 4001  # on gateway-2 itself
        await ping(ws_other)  # another session of the same user stays open


async def test_sigterm_closes_sockets_1001_and_exits_in_time(
    http: aiohttp.ClientSession, mesh: Mesh
) -> None:
    """Draining: every socket of the stopped instance is closed with 1001, the process exits
    well within 10 s, and the other instance keeps serving (the mesh restarts this one after)."""
    first, second = gateway_url(mesh, 0), gateway_url(mesh, 1)
    _, token = await new_session(http, first)
    async with (
        http.ws_connect(ws_url(first, token)) as ws,
        http.ws_connect(ws_url(first, token)) as ws_too,
        http.ws_connect(ws_url(second, token)) as ws_other,
    ):
        for socket in (ws, ws_too, ws_other):
            await ping(socket)
        gateway = mesh.instance("gateway-1")
        started = time.monotonic()
        stopping = asyncio.ensure_future(asyncio.to_thread(mesh.stop_instance, "gateway-1"))
        try:
            assert await closed_with(ws) == 1001
            assert await closed_with(ws_too) == 1001
        finally:
            await stopping
        assert time.monotonic() - started < 9.0
        assert not gateway.alive()
        assert gateway.child.returncode() == 0  # a clean exit, not a kill
        await ping(ws_other)


async def test_a_dependency_that_is_down_is_503_unavailable(
    http: aiohttp.ClientSession, mesh: Mesh, edge: str
) -> None:
    profile, token = await new_session(http, edge)
    await asyncio.to_thread(mesh.stop_instance, "user_svc")
    try:
        answer = await call(
            http, "POST", f"{edge}/api/v1/users", json={"username": unique(), "password": PASSWORD}
        )
        assert_error(answer, 503, "unavailable")
        answer = await call(http, "GET", f"{edge}/api/v1/users/{profile['user_id']}", token=token)
        assert_error(answer, 503, "unavailable")
        # Each gateway reuses its readiness verdict for a second: poll until one says 503.
        deadline = time.monotonic() + 10
        while (health := await call(http, "GET", f"{edge}/healthz"))[0] != 503:
            assert time.monotonic() < deadline, "/healthz kept answering 200 with user_svc down"
            await asyncio.sleep(0.1)  # poll interval under the deadline
        assert_error(health, 503, "unavailable")
    finally:
        await asyncio.to_thread(mesh.restart_instance, "user_svc")
    deadline = time.monotonic() + 10
    while (await call(http, "GET", f"{edge}/healthz"))[0] != 200:
        assert time.monotonic() < deadline, "/healthz stayed 503 after user_svc came back"
        await asyncio.sleep(0.1)  # poll interval under the deadline
    await register(http, edge)
