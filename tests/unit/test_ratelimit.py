from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.ratelimit import TokenBucket, Verdict


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusals_then_close() -> None:
    clock = Clock()
    bucket = TokenBucket(burst=200, rate_per_s=100, abuse_limit=5, clock=clock)
    assert [bucket.take() for _ in range(200)] == [Verdict.ALLOW] * 200
    assert [bucket.take() for _ in range(5)] == [Verdict.REFUSE] * 4 + [Verdict.CLOSE]


def test_sustained_rate_is_allowed_forever() -> None:
    clock = Clock()
    bucket = TokenBucket(burst=200, rate_per_s=100, abuse_limit=5, clock=clock)
    for _ in range(5000):
        clock.now += 0.01
        assert bucket.take() is Verdict.ALLOW


def test_a_pause_refills_and_resets_the_abuse_count() -> None:
    clock = Clock()
    bucket = TokenBucket(burst=10, rate_per_s=10, abuse_limit=3, clock=clock)
    for _ in range(10):
        bucket.take()
    assert bucket.take() is Verdict.REFUSE
    assert bucket.take() is Verdict.REFUSE
    clock.now += 0.5
    assert bucket.take() is Verdict.ALLOW
    assert bucket.refused_in_a_row == 0


@given(gaps=st.lists(st.floats(min_value=0, max_value=0.05), max_size=300))
def test_never_more_than_burst_plus_refill(gaps: list[float]) -> None:
    clock = Clock()
    bucket = TokenBucket(burst=20, rate_per_s=100, abuse_limit=10**9, clock=clock)
    allowed = 0
    for gap in gaps:
        clock.now += gap
        allowed += bucket.take() is Verdict.ALLOW
    assert allowed <= 20 + sum(gaps) * 100 + 1e-6
