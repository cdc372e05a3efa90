"""user_svc through a real grpc.aio server against a real PostgreSQL (the session `pg` fixture).

Most tests share one database (`user_svc_it`, migrated again by every test's `build`, which also
proves re-running migrations is harmless) and use fresh usernames; migration tests get a fresh
database each. Time is a fake clock the tests move, except in the one test that proves the wall
clock expires tokens by itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import grpc
import psycopg
import pytest
from chatmesh.user.v1 import user_pb2, user_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from svckit.errors import reason_of
from svckit.lifecycle import start_server
from user_svc.app import App, build
from user_svc.config import UserConfig
from user_svc.logic import Clock, utc_now
from user_svc.service import SERVICE_NAME
from user_svc.store import MIGRATIONS, DatabaseUnreachable, Migration, migrate, open_pool

PASSWORD = "correct horse battery"
TTL_S = 3600


class PgServer(Protocol):
    def dsn(self, dbname: str) -> str: ...


class FakeClock:
    """Wall time frozen at construction; moves only when a test says so."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def fast_config(dsn: str, **overrides: Any) -> UserConfig:
    """Production settings but for argon2 costs low enough for tests."""
    base = UserConfig(
        db_dsn=dsn,
        session_ttl_s=TTL_S,
        argon2_time_cost=1,
        argon2_memory_kib=8,
        argon2_parallelism=1,
        db_connect_timeout_s=10.0,
        db_pool_min=1,
        db_pool_max=4,
    )
    return replace(base, **overrides)


def uname(prefix: str = "u") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def fresh_db(pg: PgServer) -> str:
    return pg.dsn(f"user_svc_{uuid.uuid4().hex[:12]}")


@dataclass
class Stack:
    stub: user_pb2_grpc.UserServiceStub
    channel: grpc.aio.Channel
    app: App

    async def register(self, username: str, display_name: str = "") -> user_pb2.User:
        # The generated stub is untyped; annotating the result keeps the helpers typed.
        resp: user_pb2.CreateUserResponse = await self.stub.CreateUser(
            user_pb2.CreateUserRequest(
                username=username, password=PASSWORD, display_name=display_name
            )
        )
        return resp.user

    async def login(
        self, username: str, password: str = PASSWORD, device_id: str = ""
    ) -> user_pb2.CreateSessionResponse:
        resp: user_pb2.CreateSessionResponse = await self.stub.CreateSession(
            user_pb2.CreateSessionRequest(username=username, password=password, device_id=device_id)
        )
        return resp

    async def auth(self, token: str) -> user_pb2.AuthenticateSessionResponse:
        req = user_pb2.AuthenticateSessionRequest(token=token)
        resp: user_pb2.AuthenticateSessionResponse = await self.stub.AuthenticateSession(req)
        return resp

    async def revoke(self, token: str) -> user_pb2.RevokeSessionResponse:
        req = user_pb2.RevokeSessionRequest(token=token)
        resp: user_pb2.RevokeSessionResponse = await self.stub.RevokeSession(req)
        return resp


@asynccontextmanager
async def serve(cfg: UserConfig, clock: Clock) -> AsyncIterator[Stack]:
    """build() + a real server on a free port + a client channel; torn down in reverse."""
    async with build(cfg, clock=clock) as app:
        srv = await start_server("127.0.0.1", 0, app.register)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
                yield Stack(user_pb2_grpc.UserServiceStub(channel), channel, app)
        finally:
            await srv.stop(0)


@pytest.fixture(scope="module")
def users_dsn(pg: PgServer) -> str:
    return pg.dsn("user_svc_it")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def stack(users_dsn: str, clock: FakeClock) -> AsyncIterator[Stack]:
    async with serve(fast_config(users_dsn), clock) as s:
        yield s


async def refused(call: Awaitable[Any], code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    """Await a call that must fail with `code`, and an ErrorInfo `reason` that got through."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    assert reason_of(caught.value) == reason
    return caught.value


# --- registration and profiles ------------------------------------------------------------


async def test_register_then_get_and_lookup_return_the_profile(stack: Stack) -> None:
    name = uname("alice")
    user = await stack.register(name, display_name="Alice A.")
    assert uuid.UUID(user.user_id)
    assert (user.username, user.display_name) == (name, "Alice A.")
    assert abs(user.created_at_ms - time.time() * 1000) < 60_000

    by_id = await stack.stub.GetUser(user_pb2.GetUserRequest(user_id=user.user_id))
    by_name = await stack.stub.LookupUser(user_pb2.LookupUserRequest(username=name))
    assert by_id.user == user
    assert by_name.user == user


async def test_display_name_defaults_to_the_username(stack: Stack) -> None:
    name = uname()
    user = await stack.register(name)
    assert user.display_name == name


async def test_a_taken_username_is_already_exists_and_the_first_account_is_untouched(
    stack: Stack,
) -> None:
    name = uname()
    first = await stack.register(name)
    err = await refused(
        stack.stub.CreateUser(
            user_pb2.CreateUserRequest(username=name, password="another password")
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "username_taken",
    )
    assert "taken" in (err.details() or "")
    session = await stack.login(name)
    assert session.user_id == first.user_id
    await refused(
        stack.login(name, password="another password"),
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_credentials",
    )


async def test_concurrent_registrations_of_one_name_yield_exactly_one_account(
    stack: Stack,
) -> None:
    name = uname()
    results = await asyncio.gather(
        *(stack.register(name) for _ in range(5)), return_exceptions=True
    )
    created = [r for r in results if isinstance(r, user_pb2.User)]
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(created) == 1 and len(failed) == 4
    assert {reason_of(e) for e in failed} == {"username_taken"}


@pytest.mark.parametrize(
    ("field", "request_fields"),
    [
        ("username", {"username": "No Caps"}),
        ("username", {"username": "ab"}),
        ("username", {"username": "x" * 33}),
        ("password", {"password": "seven77"}),
        ("password", {"password": "p" * 1025}),
        ("display_name", {"display_name": "bell\x07"}),
        ("display_name", {"display_name": "d" * 65}),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field_and_creates_nothing(
    stack: Stack, field: str, request_fields: dict[str, str]
) -> None:
    name = uname()
    fields = {"username": name, "password": PASSWORD, "display_name": "", **request_fields}
    err = await refused(
        stack.stub.CreateUser(user_pb2.CreateUserRequest(**fields)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad_request",
    )
    assert field in (err.details() or "")
    await refused(
        stack.stub.LookupUser(user_pb2.LookupUserRequest(username=name)),
        grpc.StatusCode.NOT_FOUND,
        "not_found",
    )


@pytest.mark.parametrize(
    "user_id",
    ["", "nope", "12345", "'; DROP TABLE users; --", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"],
)
async def test_get_user_with_a_malformed_id_is_not_found(stack: Stack, user_id: str) -> None:
    await refused(
        stack.stub.GetUser(user_pb2.GetUserRequest(user_id=user_id)),
        grpc.StatusCode.NOT_FOUND,
        "not_found",
    )


async def test_unknown_profiles_are_not_found(stack: Stack) -> None:
    await refused(
        stack.stub.GetUser(user_pb2.GetUserRequest(user_id=str(uuid.uuid4()))),
        grpc.StatusCode.NOT_FOUND,
        "not_found",
    )
    for username in (uname(), "Not.Valid", "nul\x00byte", ""):
        await refused(
            stack.stub.LookupUser(user_pb2.LookupUserRequest(username=username)),
            grpc.StatusCode.NOT_FOUND,
            "not_found",
        )


# --- sessions -----------------------------------------------------------------------------


async def test_login_issues_a_device_bound_token_that_authenticates(
    stack: Stack, clock: FakeClock
) -> None:
    name = uname()
    user = await stack.register(name)
    session = await stack.login(name, device_id="phone-1")
    assert session.user_id == user.user_id
    assert session.device_id == "phone-1"
    assert uuid.UUID(session.session_id)
    assert len(session.token) == 43
    assert session.expires_at == int((clock.now + timedelta(seconds=TTL_S)).timestamp())

    who = await stack.auth(session.token)
    assert (who.session_id, who.user_id, who.device_id, who.expires_at) == (
        session.session_id,
        user.user_id,
        "phone-1",
        session.expires_at,
    )


async def test_each_login_is_its_own_session_and_an_empty_device_gets_an_id(
    stack: Stack,
) -> None:
    name = uname()
    await stack.register(name)
    one, two = await stack.login(name), await stack.login(name)
    assert one.device_id and two.device_id and one.device_id != two.device_id
    assert one.token != two.token and one.session_id != two.session_id
    assert (await stack.auth(two.token)).device_id == two.device_id


async def test_a_malformed_device_id_is_invalid_argument(stack: Stack) -> None:
    name = uname()
    await stack.register(name)
    err = await refused(
        stack.login(name, device_id="my phone"), grpc.StatusCode.INVALID_ARGUMENT, "bad_request"
    )
    assert "device_id" in (err.details() or "")


async def test_wrong_password_and_unknown_user_are_the_same_refusal(stack: Stack) -> None:
    name = uname()
    await stack.register(name)
    wrong = await refused(
        stack.login(name, password="wrong password"),
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_credentials",
    )
    unknown = await refused(
        stack.login(uname()), grpc.StatusCode.UNAUTHENTICATED, "invalid_credentials"
    )
    malformed = await refused(
        stack.login("NOT A NAME"), grpc.StatusCode.UNAUTHENTICATED, "invalid_credentials"
    )
    assert wrong.details() == unknown.details() == malformed.details()


@pytest.mark.parametrize("token", ["", "not-a-token", "x" * 10_000])
async def test_an_unknown_token_is_unauthenticated(stack: Stack, token: str) -> None:
    await refused(stack.auth(token), grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")
    await refused(stack.revoke(token), grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")


async def test_revoke_stops_the_token_at_once_and_twice_is_fine(stack: Stack) -> None:
    name = uname()
    await stack.register(name)
    doomed = await stack.login(name, device_id="laptop")
    other = await stack.login(name, device_id="phone")

    revoked = await stack.revoke(doomed.token)
    assert (revoked.session_id, revoked.user_id, revoked.device_id) == (
        doomed.session_id,
        doomed.user_id,
        "laptop",
    )
    await refused(stack.auth(doomed.token), grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")
    again = await stack.revoke(doomed.token)
    assert again == revoked
    # The user's other device is not logged out.
    assert (await stack.auth(other.token)).session_id == other.session_id


async def test_a_token_expires_after_the_ttl(users_dsn: str) -> None:
    clock = FakeClock()
    async with serve(fast_config(users_dsn, session_ttl_s=60), clock) as stack:
        name = uname()
        await stack.register(name)
        session = await stack.login(name)
        assert session.expires_at == int((clock.now + timedelta(seconds=60)).timestamp())
        clock.advance(59.9)
        assert (await stack.auth(session.token)).session_id == session.session_id
        clock.advance(0.1)
        await refused(stack.auth(session.token), grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")
        # A fresh login still works after the old session lapsed.
        assert (await stack.auth((await stack.login(name)).token)).user_id == session.user_id


async def test_the_wall_clock_expires_a_short_lived_token(users_dsn: str) -> None:
    async with serve(fast_config(users_dsn, session_ttl_s=1), utc_now) as stack:
        name = uname()
        await stack.register(name)
        session = await stack.login(name)
        assert (await stack.auth(session.token)).session_id == session.session_id
        deadline = time.monotonic() + 10
        while True:
            try:
                await stack.auth(session.token)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                break
            assert time.monotonic() < deadline, "token still valid 10 s after a 1 s TTL"
            await asyncio.sleep(0.05)


async def test_only_hashes_reach_the_database(stack: Stack) -> None:
    name = uname()
    user = await stack.register(name)
    session = await stack.login(name)
    async with stack.app.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT password_hash FROM users WHERE user_id = %s", (uuid.UUID(user.user_id),)
        )
        row = await cur.fetchone()
        assert row is not None
        assert row[0].startswith("$argon2id$") and PASSWORD not in row[0]
        cur = await conn.execute(
            "SELECT token_hash, device_id FROM sessions WHERE session_id = %s",
            (uuid.UUID(session.session_id),),
        )
        row = await cur.fetchone()
        assert row is not None
        assert bytes(row[0]) == hashlib.sha256(session.token.encode()).digest()
        cur = await conn.execute(
            "SELECT count(*) FROM sessions WHERE position(%s in sessions::text) > 0",
            (session.token,),
        )
        assert await cur.fetchone() == (0,)


async def test_a_stuck_database_call_is_unavailable_within_the_statement_timeout(
    users_dsn: str,
) -> None:
    name = uname()
    async with serve(fast_config(users_dsn, db_statement_timeout_s=0.3), utc_now) as stack:
        async with await psycopg.AsyncConnection.connect(users_dsn) as blocker:
            async with blocker.transaction():
                # An uncommitted insert of the same name makes the service's insert wait on it.
                await blocker.execute(
                    "INSERT INTO users (username, display_name, password_hash) VALUES (%s, %s, '')",
                    (name, name),
                )
                started = time.monotonic()
                await refused(stack.register(name), grpc.StatusCode.UNAVAILABLE, "unavailable")
                assert time.monotonic() - started < 3
                raise psycopg.Rollback()
        # The blocker rolled back: the name is free and the service is healthy again.
        assert (await stack.register(name)).username == name


async def test_the_service_reports_serving_to_health_checks(stack: Stack) -> None:
    health = health_pb2_grpc.HealthStub(stack.channel)
    resp = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


# --- migrations and start-up --------------------------------------------------------------


async def applied_versions(dsn: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT version FROM schema_migrations ORDER BY version")
        return [v for (v,) in await cur.fetchall()]


async def test_migrations_apply_once_and_rerun_as_a_no_op(pg: PgServer) -> None:
    dsn = fresh_db(pg)
    pool = await open_pool(dsn, min_size=1, max_size=2)
    try:
        assert await migrate(pool) == [m.version for m in MIGRATIONS]
        assert await migrate(pool) == []
    finally:
        await pool.close()
    assert await applied_versions(dsn) == [m.version for m in MIGRATIONS]


async def test_concurrent_starts_apply_each_migration_exactly_once(pg: PgServer) -> None:
    dsn = fresh_db(pg)
    pools = [await open_pool(dsn, min_size=1, max_size=1) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(p) for p in pools))
    finally:
        for p in pools:
            await p.close()
    every = sorted(v for applied in results for v in applied)
    assert every == [m.version for m in MIGRATIONS]
    assert await applied_versions(dsn) == [m.version for m in MIGRATIONS]


async def test_two_services_starting_at_once_on_an_empty_database_both_serve(
    pg: PgServer,
) -> None:
    cfg = fast_config(fresh_db(pg))
    user_ids = await asyncio.gather(_register_through(cfg), _register_through(cfg))
    assert len(set(user_ids)) == 2
    assert await applied_versions(cfg.db_dsn) == [m.version for m in MIGRATIONS]


async def _register_through(cfg: UserConfig) -> str:
    """One instance's start (pool, migrations) followed by a registration through it."""
    async with build(cfg) as app:
        profile = await app.accounts.create_user(uname(), PASSWORD, "")
        return profile.user_id


async def test_a_new_migration_applies_on_top_and_a_failed_one_leaves_no_trace(
    pg: PgServer,
) -> None:
    dsn = fresh_db(pg)
    pool = await open_pool(dsn, min_size=1, max_size=1)
    try:
        await migrate(pool)
        broken = Migration(
            2, "broken", ("CREATE TABLE half_done (x int)", "SELECT no_such_function()")
        )
        with pytest.raises(psycopg.errors.UndefinedFunction):
            await migrate(pool, (*MIGRATIONS, broken))
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT to_regclass('half_done')")
            assert await cur.fetchone() == (None,)
        good = Migration(2, "contacts", ("CREATE TABLE contacts (owner uuid, peer uuid)",))
        assert await migrate(pool, (*MIGRATIONS, good)) == [2]
        assert await migrate(pool, (*MIGRATIONS, good)) == []
    finally:
        await pool.close()
    assert await applied_versions(dsn) == [1, 2]


async def test_start_gives_up_on_an_unreachable_database_within_its_deadline() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on `port` now (the socket was closed without listening).
    cfg = fast_config(f"postgresql://chatmesh@127.0.0.1:{port}/x", db_connect_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(DatabaseUnreachable, match=f"127.0.0.1:{port}/x"):
        async with build(cfg):
            pass
    assert time.monotonic() - started < 5


# --- the process ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_serving(channel: grpc.aio.Channel, deadline_s: float) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    end = time.monotonic() + deadline_s
    while True:
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1)
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        assert time.monotonic() < end, f"user_svc not serving after {deadline_s} s"
        await asyncio.sleep(0.05)


def process_env(**env: str) -> dict[str, str]:
    return {
        **os.environ,
        "CHATMESH_ARGON2_TIME_COST": "1",
        "CHATMESH_ARGON2_MEMORY_KIB": "8",
        "CHATMESH_ARGON2_PARALLELISM": "1",
        **env,
    }


async def test_the_process_serves_then_stops_cleanly_on_sigterm(pg: PgServer) -> None:
    port = free_port()
    env = process_env(CHATMESH_USER_DB_DSN=fresh_db(pg), CHATMESH_GRPC_PORT=str(port))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "user_svc", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_serving(channel, 20)
            stub = user_pb2_grpc.UserServiceStub(channel)
            name = uname()
            await stub.CreateUser(user_pb2.CreateUserRequest(username=name, password=PASSWORD))
            session = await stub.CreateSession(
                user_pb2.CreateSessionRequest(username=name, password=PASSWORD)
            )
            assert session.token
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, stderr.decode(errors="replace")
        assert b'"stopped"' in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("env", "code", "needle"),
    [
        ({"CHATMESH_SESSION_TTL_S": "0"}, 2, b"CHATMESH_SESSION_TTL_S"),
        (
            {
                "CHATMESH_USER_DB_DSN": "postgresql://chatmesh@127.0.0.1:1/none",
                "CHATMESH_USER_DB_CONNECT_TIMEOUT_S": "0.5",
            },
            1,
            b"127.0.0.1:1/none",
        ),
    ],
)
async def test_the_process_refuses_to_start_with_a_clear_message(
    env: dict[str, str], code: int, needle: bytes
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "user_svc",
        env=process_env(CHATMESH_GRPC_PORT=str(free_port()), **env),
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == code
    assert needle in stderr
