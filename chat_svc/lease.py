"""Worker ids for message ids, leased in Redis so no two live instances share one.

An instance claims `chat:worker:{n}` with SET NX PX for a free n, refreshes it well within the
TTL, and gives it up on exit. If a refresh finds the lease gone or taken (a long pause, a Redis
failover), the instance stops issuing ids until it holds a lease again: a duplicate msg_id would
be worse than a failed send the client retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import redis.asyncio as redis

from chat_svc.ids import MAX_WORKER
from svckit.errors import Unavailable

log = logging.getLogger(__name__)

_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _key(worker: int) -> str:
    return f"chat:worker:{worker}"


class WorkerLease:
    def __init__(self, client: redis.Redis, owner: str, ttl_s: float = 30.0) -> None:
        self.client = client
        self.owner = owner
        self.ttl_ms = int(ttl_s * 1000)
        self.worker: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def acquire(self) -> int:
        start = random.randrange(MAX_WORKER + 1)
        for i in range(MAX_WORKER + 1):
            worker = (start + i) % (MAX_WORKER + 1)
            if await self.client.set(_key(worker), self.owner, nx=True, px=self.ttl_ms):
                self.worker = worker
                log.info("worker id leased", extra={"worker": worker})
                return worker
        raise Unavailable("no free worker id: every one of 1024 is leased")

    def current(self) -> int:
        if self.worker is None:
            raise Unavailable("this instance holds no worker id right now")
        return self.worker

    async def refresh(self) -> bool:
        if self.worker is None:
            return False
        ok = await self.client.eval(_REFRESH, 1, _key(self.worker), self.owner, self.ttl_ms)
        if not ok:
            log.error("worker id lease lost", extra={"worker": self.worker})
            self.worker = None
        return bool(ok)

    async def keep(self) -> None:
        """Refresh every third of the TTL; re-acquire after a loss."""
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                if not await self.refresh():
                    await self.acquire()
            except (redis.RedisError, Unavailable) as exc:
                log.warning("worker lease refresh failed", extra={"error": str(exc)})

    def start(self) -> None:
        self._task = asyncio.create_task(self.keep(), name="worker-lease")

    async def release(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.worker is not None:
            with contextlib.suppress(redis.RedisError):
                await self.client.eval(_RELEASE, 1, _key(self.worker), self.owner)
            self.worker = None
