"""presence_svc against a real Redis-protocol server, through a real grpc.aio server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as redis
from chatmesh.presence.v1 import presence_pb2, presence_pb2_grpc

from presence_svc.logic import Policy
from presence_svc.service import PresenceServicer, register
from presence_svc.store import PresenceStore
from svckit.errors import reason_of
from svckit.lifecycle import start_server


class FakeClock:
    def __init__(self) -> None:
        self.now_ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now_ms


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def stub(
    client: redis.Redis, clock: FakeClock
) -> AsyncIterator[presence_pb2_grpc.PresenceServiceStub]:
    servicer = PresenceServicer(PresenceStore(client), Policy(default_ttl_s=30), clock)
    srv = await start_server("127.0.0.1", 0, lambda s: register(s, servicer))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        yield presence_pb2_grpc.PresenceServiceStub(channel)
    await srv.stop(1)


def conn(cid: str, user: str = "u1", session: str = "s1") -> presence_pb2.Connection:
    return presence_pb2.Connection(
        connection_id=cid,
        user_id=user,
        device_id="d-" + cid,
        session_id=session,
        gateway_id="gateway-1",
        gateway_addr="127.0.0.1:9191",
    )


async def live_ids(stub: presence_pb2_grpc.PresenceServiceStub, *users: str) -> set[str]:
    resp = await stub.GetConnections(presence_pb2.GetConnectionsRequest(user_ids=list(users)))
    return {c.connection_id for c in resp.connections}


async def test_register_lists_and_unregister_removes(
    stub: presence_pb2_grpc.PresenceServiceStub, clock: FakeClock
) -> None:
    await stub.RegisterConnection(presence_pb2.RegisterConnectionRequest(connection=conn("c1")))
    await stub.RegisterConnection(presence_pb2.RegisterConnectionRequest(connection=conn("c2")))
    await stub.RegisterConnection(
        presence_pb2.RegisterConnectionRequest(connection=conn("c3", user="u2"))
    )
    assert await live_ids(stub, "u1") == {"c1", "c2"}
    assert await live_ids(stub, "u1", "u2") == {"c1", "c2", "c3"}
    got = await stub.GetConnections(presence_pb2.GetConnectionsRequest(user_ids=["u1"]))
    assert {c.gateway_addr for c in got.connections} == {"127.0.0.1:9191"}

    clock.now_ms += 1234
    removed = await stub.UnregisterConnection(
        presence_pb2.UnregisterConnectionRequest(user_id="u1", connection_id="c1")
    )
    assert removed.removed
    again = await stub.UnregisterConnection(
        presence_pb2.UnregisterConnectionRequest(user_id="u1", connection_id="c1")
    )
    assert not again.removed
    assert await live_ids(stub, "u1") == {"c2"}
    seen = await stub.GetLastSeen(presence_pb2.GetLastSeenRequest(user_id="u1"))
    assert seen.online and seen.last_seen_ms == clock.now_ms


async def test_entries_lapse_without_heartbeat_and_refresh_keeps_them(
    stub: presence_pb2_grpc.PresenceServiceStub, clock: FakeClock
) -> None:
    await stub.RegisterConnection(
        presence_pb2.RegisterConnectionRequest(connection=conn("c1"), ttl_seconds=10)
    )
    await stub.RegisterConnection(
        presence_pb2.RegisterConnectionRequest(connection=conn("c2"), ttl_seconds=10)
    )
    clock.now_ms += 8_000
    refreshed = await stub.RefreshConnections(
        presence_pb2.RefreshConnectionsRequest(
            gateway_id="gateway-1", connections=[conn("c2")], ttl_seconds=10
        )
    )
    assert refreshed.refreshed == 1
    clock.now_ms += 8_000  # c1 is 16 s old with a 10 s TTL; c2 was refreshed 8 s ago
    assert await live_ids(stub, "u1") == {"c2"}
    clock.now_ms += 10_000
    assert await live_ids(stub, "u1") == set()
    seen = await stub.GetLastSeen(presence_pb2.GetLastSeenRequest(user_id="u1"))
    assert not seen.online


async def test_a_read_prunes_lapsed_entries_of_every_user_it_reads(
    stub: presence_pb2_grpc.PresenceServiceStub, client: redis.Redis, clock: FakeClock
) -> None:
    for cid, user, ttl in (("a1", "ua", 10), ("a2", "ua", 60), ("b1", "ub", 10), ("c1", "uc", 10)):
        await stub.RegisterConnection(
            presence_pb2.RegisterConnectionRequest(connection=conn(cid, user=user), ttl_seconds=ttl)
        )
    clock.now_ms += 20_000
    # One read of several users (and a repeated one, and one never seen) in one call.
    assert await live_ids(stub, "ua", "ub", "ua", "nobody") == {"a2"}
    assert await client.hkeys("presence:{ua}:conn") == [b"a2"]
    assert await client.zrange("presence:{ua}:exp", 0, -1) == [b"a2"]
    assert await client.hlen("presence:{ub}:conn") == 0
    assert await client.hkeys("presence:{uc}:conn") == [b"c1"]  # not read: left to its key TTL


async def test_incomplete_connection_is_refused_with_a_reason(
    stub: presence_pb2_grpc.PresenceServiceStub,
) -> None:
    bad = conn("c1")
    bad.gateway_addr = ""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterConnection(presence_pb2.RegisterConnectionRequest(connection=bad))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "bad_request"
    assert "gateway_addr" in (caught.value.details() or "")
