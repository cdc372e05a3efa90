"""svckit.batching: one call when quiet, one call per batch when busy, errors to every caller."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svckit.batching import Batcher, KeyedBatcher


class Recorder:
    """A batch call that records its batches and can be held open."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None
        self.changed = asyncio.Condition()

    async def started(self, calls: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: len(self.batches) >= calls)

    async def __call__(self, batch: Sequence[int]) -> list[int]:
        self.batches.append(list(batch))
        async with self.changed:
            self.changed.notify_all()
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [item * 10 for item in batch]


async def test_a_lone_item_is_sent_alone_at_once() -> None:
    rec = Recorder()
    batcher = Batcher(rec)
    assert await batcher.submit(1) == 10
    assert await batcher.submit(2) == 20
    assert rec.batches == [[1], [2]]
    await asyncio.sleep(0)  # the finished call's task is dropped on the next turn
    assert batcher.idle


async def test_items_of_one_loop_turn_go_in_one_call() -> None:
    rec = Recorder()
    batcher = Batcher(rec)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    assert results == [0, 10, 20, 30, 40]
    assert rec.batches == [[0, 1, 2, 3, 4]]


async def test_items_arriving_during_a_call_wait_and_go_together_in_order() -> None:
    rec = Recorder()
    batcher = Batcher(rec)
    rec.gate.clear()
    first = asyncio.ensure_future(batcher.submit(1))
    await rec.started(1)
    later = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert rec.batches == [[1]]  # nothing else starts while the one allowed call runs
    rec.gate.set()
    assert await first == 10
    assert await asyncio.gather(*later) == [20, 30, 40]
    assert rec.batches == [[1], [2, 3, 4]]


async def test_max_batch_splits_a_long_queue() -> None:
    rec = Recorder()
    batcher = Batcher(rec, max_batch=2)
    assert await asyncio.gather(*(batcher.submit(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert rec.batches == [[0, 1], [2, 3], [4]]


async def test_a_queue_longer_than_a_batch_uses_every_free_call() -> None:
    rec = Recorder()
    batcher = Batcher(rec, max_batch=2, max_in_flight=2)
    rec.gate.clear()
    waiting = [asyncio.ensure_future(batcher.submit(i)) for i in range(5)]
    await rec.started(2)
    assert rec.batches == [[0, 1], [2, 3]]  # both calls started, the fifth item waits
    rec.gate.set()
    assert await asyncio.gather(*waiting) == [0, 10, 20, 30, 40]
    assert rec.batches == [[0, 1], [2, 3], [4]]


async def test_max_in_flight_allows_overlapping_calls() -> None:
    rec = Recorder()
    batcher = Batcher(rec, max_in_flight=2)
    rec.gate.clear()
    first = asyncio.ensure_future(batcher.submit(1))
    await rec.started(1)
    second = asyncio.ensure_future(batcher.submit(2))
    await rec.started(2)
    assert rec.batches == [[1], [2]]
    rec.gate.set()
    assert (await first, await second) == (10, 20)


async def test_a_failed_call_fails_every_item_of_its_batch_only() -> None:
    rec = Recorder()
    batcher = Batcher(rec)
    rec.fail = ValueError("down")
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    rec.fail = None
    assert await batcher.submit(7) == 70


async def test_a_wrong_result_count_is_an_error_not_a_mismatch() -> None:
    async def short(batch: Sequence[int]) -> list[int]:
        return [1]

    batcher: Batcher[int, int] = Batcher(short)
    with pytest.raises(RuntimeError, match="a batch of 2 got 1 results"):
        await asyncio.gather(batcher.submit(1), batcher.submit(2))


async def test_a_cancelled_caller_does_not_stop_the_others() -> None:
    rec = Recorder()
    batcher = Batcher(rec)
    rec.gate.clear()
    blocker = asyncio.ensure_future(batcher.submit(0))
    await rec.started(1)
    gone = asyncio.ensure_future(batcher.submit(1))
    stays = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)
    gone.cancel()
    rec.gate.set()
    assert await stays == 20
    assert await blocker == 0
    assert rec.batches == [[0], [2]]


async def test_aclose_cancels_what_is_under_way() -> None:
    rec = Recorder()
    batcher = Batcher(rec)
    rec.gate.clear()
    running = asyncio.ensure_future(batcher.submit(1))
    await rec.started(1)
    waiting = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)
    await batcher.aclose()
    for task in (running, waiting):
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_keyed_batches_per_key_and_forgets_idle_keys() -> None:
    calls: list[tuple[str, list[int]]] = []

    async def call(key: str, batch: Sequence[int]) -> list[str]:
        calls.append((key, list(batch)))
        await asyncio.sleep(0)
        return [f"{key}{i}" for i in batch]

    keyed: KeyedBatcher[str, int, str] = KeyedBatcher(call)
    results = await asyncio.gather(keyed.submit("a", 1), keyed.submit("b", 2), keyed.submit("a", 3))
    assert list(results) == ["a1", "b2", "a3"]
    assert sorted(calls) == [("a", [1, 3]), ("b", [2])]
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(keyed) == 0


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=1, max_value=3),
)
def test_every_item_gets_its_own_result_in_submission_order(
    delays: list[int], max_batch: int, max_in_flight: int
) -> None:
    """Whatever the arrival pattern and limits, each caller gets f(its item), and the batches,
    in the order they were started, hold the items in the order they were submitted."""

    async def scenario() -> None:
        batches: list[list[int]] = []

        async def call(batch: Sequence[int]) -> list[int]:
            batches.append(list(batch))
            for _ in range(len(batch) % 3):
                await asyncio.sleep(0)
            return [i * 2 + 1 for i in batch]

        batcher = Batcher(call, max_batch=max_batch, max_in_flight=max_in_flight)

        submitted: list[int] = []

        async def one(i: int, delay: int) -> int:
            for _ in range(delay):
                await asyncio.sleep(0)
            submitted.append(i)
            return await batcher.submit(i)

        results = await asyncio.gather(*(one(i, d) for i, d in enumerate(delays)))
        assert results == [i * 2 + 1 for i in range(len(delays))]
        assert [i for b in batches for i in b] == submitted
        assert all(len(b) <= max_batch for b in batches)
        await asyncio.sleep(0)
        assert batcher.idle

    asyncio.run(scenario())
