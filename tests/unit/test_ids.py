"""Message ids: strictly increasing per generator, unique across workers, safe across fail-over."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat_svc.ids import EPOCH_MS, MAX_SEQUENCE, ClockError, IdGenerator, compose, timestamp_ms


class StepClock:
    def __init__(self, steps: list[int]) -> None:
        self.now = EPOCH_MS + 10_000_000
        self.steps = iter(steps)

    def __call__(self) -> int:
        self.now += next(self.steps, 0)
        return self.now


@given(steps=st.lists(st.integers(min_value=-1500, max_value=50), min_size=1, max_size=400))
def test_ids_strictly_increase_even_when_the_clock_steps_back(steps: list[int]) -> None:
    gen = IdGenerator(worker=7, clock=StepClock(steps), max_backstep_ms=10**9)
    ids = [gen.next_id() for _ in steps]
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False))
    assert all(i < 2**63 for i in ids)


def test_two_workers_never_collide_in_the_same_millisecond() -> None:
    clock = StepClock([])
    a, b = IdGenerator(1, clock), IdGenerator(2, clock)
    ids_a = {a.next_id() for _ in range(5000)}
    ids_b = {b.next_id() for _ in range(5000)}
    assert len(ids_a) == len(ids_b) == 5000
    assert not ids_a & ids_b


def test_sequence_overflow_borrows_the_next_millisecond() -> None:
    gen = IdGenerator(3, StepClock([]))
    ids = [gen.next_id() for _ in range(MAX_SEQUENCE + 3)]
    assert timestamp_ms(ids[-1]) == timestamp_ms(ids[0]) + 1
    assert ids == sorted(set(ids))


def test_floor_continues_above_another_workers_last_id() -> None:
    clock = StepClock([])
    ahead = compose(clock.now + 500, worker=1000, sequence=4000)
    gen = IdGenerator(1, clock)
    gen.floor(ahead)
    assert gen.next_id() > ahead
    assert gen.next_id() > ahead


def test_clock_far_behind_refuses_instead_of_reusing_ids() -> None:
    clock = StepClock([0, -5000])
    gen = IdGenerator(1, clock, max_backstep_ms=2000)
    gen.next_id()
    with pytest.raises(ClockError):
        gen.next_id()


def test_switching_worker_keeps_ids_increasing() -> None:
    gen = IdGenerator(900, StepClock([]))
    before = gen.next_id()
    gen.set_worker(5)
    after = gen.next_id()
    assert after > before
    assert (after >> 12) & 1023 == 5


def test_worker_id_is_bounded() -> None:
    with pytest.raises(ValueError):
        IdGenerator(1024)
