"""The presence policy: any (state, event) ends in a valid state."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from presence_svc.logic import Policy, is_live, last_seen

policy = Policy(default_ttl_s=30, min_ttl_s=5, max_ttl_s=300)
times = st.integers(min_value=0, max_value=2**53)


@given(now=times, requested=st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_granted_ttl_is_bounded_and_entries_start_live(now: int, requested: int) -> None:
    ttl = policy.clamp_ttl(requested)
    assert 5 <= ttl <= 300
    expires = policy.expiry(now, requested)
    assert is_live(expires, now)
    assert not is_live(expires, now + 300_000)


def test_non_positive_ttl_means_the_default() -> None:
    assert policy.clamp_ttl(0) == 30
    assert policy.clamp_ttl(-1) == 30
    assert policy.clamp_ttl(1) == 5
    assert policy.clamp_ttl(10_000) == 300


@given(previous=st.none() | times, now=times)
def test_last_seen_never_moves_back(previous: int | None, now: int) -> None:
    seen = last_seen(previous, now)
    assert seen >= now
    if previous is not None:
        assert seen >= previous
