"""Coalescing concurrent calls into batches, without adding a wait.

`Batcher` sends an item at once when no batch call is under way; items that arrive while calls
are under way (up to `max_in_flight` of them) wait and go together in the next call. So a quiet
service pays nothing (one item, one call, as before), and a busy one makes one call per batch:
the per-call cost (a gRPC round trip through Envoy, a Redis round trip) is shared by every item
that queued behind it. There is no timer: the batch size follows the load by itself ("smart
batching"). Items submitted in the same turn of the event loop go together.

Order: items of one `Batcher` are handed to `call` in the order they were submitted, but two
batches in flight may complete in any order. A caller that needs order between two items waits
for the first before submitting the second (chat_svc does: one conversation's messages are routed
one after the other).

`KeyedBatcher` keeps one `Batcher` per key (one per gateway address, for instance) and drops a
key's batcher when it is idle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K", bound=Hashable)

BatchCall = Callable[[Sequence[T]], Awaitable[Sequence[R]]]


class Batcher(Generic[T, R]):
    """`await submit(item)` returns `call([..., item, ...])`'s result for that item.

    `call` takes a batch and returns one result per item, in the same order; if it raises, every
    item of that batch gets the exception.
    """

    def __init__(
        self,
        call: BatchCall[T, R],
        *,
        max_batch: int = 256,
        max_in_flight: int = 1,
        on_batch: Callable[[int], None] | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._call = call
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._on_batch = on_batch
        self._on_idle = on_idle
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduled = False

    @property
    def idle(self) -> bool:
        return not self._pending and not self._tasks and not self._scheduled

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        # Start a call on the next turn of the loop, so that items submitted in this turn join it.
        if self._pending and not self._scheduled and len(self._tasks) < self._max_in_flight:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        batch = [(i, f) for i, f in self._pending[: self._max_batch] if not f.done()]
        del self._pending[: self._max_batch]
        if batch:
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._finished)
            self._kick()  # more than a batch waiting, and a call free: start it too
        else:
            self._settle()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._settle()

    def _settle(self) -> None:
        self._kick()
        if self.idle and self._on_idle is not None:
            self._on_idle()

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            results = await self._call([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(results)} results")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # handed to every caller of the batch
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def aclose(self) -> None:
        """Cancel the calls under way (their callers get CancelledError) and fail the waiting."""
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class KeyedBatcher(Generic[K, T, R]):
    """One `Batcher` per key; `call(key, batch)` serves a batch of one key."""

    def __init__(
        self,
        call: Callable[[K, Sequence[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 256,
        max_in_flight: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._call = call
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._on_batch = on_batch
        self._batchers: dict[K, Batcher[T, R]] = {}

    async def submit(self, key: K, item: T) -> R:
        batcher = self._batchers.get(key)
        if batcher is None:

            async def call(batch: Sequence[T]) -> Sequence[R]:
                return await self._call(key, batch)

            def drop() -> None:
                if self._batchers.get(key) is batcher:
                    del self._batchers[key]

            batcher = Batcher(
                call,
                max_batch=self._max_batch,
                max_in_flight=self._max_in_flight,
                on_batch=self._on_batch,
                on_idle=drop,
            )
            self._batchers[key] = batcher
        return await batcher.submit(item)

    def __len__(self) -> int:
        return len(self._batchers)

    async def aclose(self) -> None:
        batchers = list(self._batchers.values())
        self._batchers.clear()
        await asyncio.gather(*(b.aclose() for b in batchers))
