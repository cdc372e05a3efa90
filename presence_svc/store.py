"""Presence entries in a Redis-protocol server.

Per user, two keys in one cluster slot (the `{user_id}` hash tag):
- `presence:{u}:exp`, a sorted set: connection_id scored by its expiry (Unix ms);
- `presence:{u}:conn`, a hash: connection_id -> the serialized `Connection`.
Reads take only members whose score is in the future and prune the rest; both keys carry a key
TTL of the longest entry, so a user whose gateways all died leaves nothing behind.
`presence:{u}:seen` holds the last-seen time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis.asyncio as redis
from chatmesh.presence.v1 import presence_pb2

from presence_svc import logic


def _keys(user_id: str) -> tuple[str, str, str]:
    tag = f"presence:{{{user_id}}}"
    return f"{tag}:exp", f"{tag}:conn", f"{tag}:seen"


class PresenceStore:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    async def put(
        self, entries: Iterable[presence_pb2.Connection], expires_at_ms: int, now_ms: int
    ) -> int:
        """Add or extend entries; returns how many were written."""
        count = 0
        async with self.client.pipeline(transaction=True) as pipe:
            for conn in entries:
                exp_key, conn_key, _ = _keys(conn.user_id)
                pipe.zadd(exp_key, {conn.connection_id: expires_at_ms})
                pipe.hset(conn_key, conn.connection_id, conn.SerializeToString())
                ttl_ms = max(1, expires_at_ms - now_ms)
                pipe.pexpire(exp_key, ttl_ms, gt=True)
                pipe.pexpire(conn_key, ttl_ms, gt=True)
                # A key without a TTL is not extended by GT; make sure a fresh key gets one.
                pipe.pexpire(exp_key, ttl_ms, nx=True)
                pipe.pexpire(conn_key, ttl_ms, nx=True)
                count += 1
            await pipe.execute()
        return count

    async def remove(self, user_id: str, connection_id: str, now_ms: int) -> bool:
        exp_key, conn_key, seen_key = _keys(user_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(exp_key, connection_id)
            pipe.hdel(conn_key, connection_id)
            pipe.get(seen_key)
            removed, _, previous = await pipe.execute()
        seen = logic.last_seen(int(previous) if previous else None, now_ms)
        await self.client.set(seen_key, seen)
        return bool(removed)

    async def live(self, user_ids: Sequence[str], now_ms: int) -> list[presence_pb2.Connection]:
        result: list[presence_pb2.Connection] = []
        for user_id in dict.fromkeys(user_ids):
            exp_key, conn_key, _ = _keys(user_id)
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(exp_key, f"({now_ms}", "+inf")
                pipe.zrangebyscore(exp_key, "-inf", now_ms)
                live_ids, dead_ids = await pipe.execute()
            if dead_ids:
                async with self.client.pipeline(transaction=True) as pipe:
                    pipe.zrem(exp_key, *dead_ids)
                    pipe.hdel(conn_key, *dead_ids)
                    await pipe.execute()
            if live_ids:
                for raw in await self.client.hmget(conn_key, live_ids):
                    if isinstance(raw, bytes):
                        result.append(presence_pb2.Connection.FromString(raw))
        return result

    async def last_seen(self, user_id: str) -> int:
        value = await self.client.get(_keys(user_id)[2])
        return int(value) if value else 0
