"""Presence entries in a Redis-protocol server.

Per user, two keys in one cluster slot (the `{user_id}` hash tag):
- `presence:{u}:exp`, a sorted set: connection_id scored by its expiry (Unix ms);
- `presence:{u}:conn`, a hash: connection_id -> the serialized `Connection`.
Reads take only members whose score is in the future and prune the rest; both keys carry a key
TTL of the longest entry, so a user whose gateways all died leaves nothing behind.
`presence:{u}:seen` holds the last-seen time.

A read of any number of users is one round trip: a script per user (prune, then the live
entries), all of them in one pipeline. chat_svc reads two users per message, so this is the
presence path's main cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis.asyncio as redis
from chatmesh.presence.v1 import presence_pb2

from presence_svc import logic

# KEYS: exp, conn; ARGV: now_ms. Drops the expired entries, returns the live ones' values.
_LIVE = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for i = 1, #dead, 1000 do
  local chunk = {unpack(dead, i, math.min(i + 999, #dead))}
  redis.call('ZREM', KEYS[1], unpack(chunk))
  redis.call('HDEL', KEYS[2], unpack(chunk))
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
if #live == 0 then
  return {}
end
return redis.call('HMGET', KEYS[2], unpack(live))
"""


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
        users = list(dict.fromkeys(user_ids))
        if not users:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for user_id in users:
                exp_key, conn_key, _ = _keys(user_id)
                # EVAL, not a registered script: redis-py checks a pipeline's scripts with
                # SCRIPT EXISTS before every execution, a round trip of its own.
                pipe.eval(_LIVE, 2, exp_key, conn_key, now_ms)
            replies = await pipe.execute()
        return [
            presence_pb2.Connection.FromString(raw)
            for values in replies
            for raw in values
            if isinstance(raw, bytes)
        ]

    async def last_seen(self, user_id: str) -> int:
        value = await self.client.get(_keys(user_id)[2])
        return int(value) if value else 0
