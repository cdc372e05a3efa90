"""Per-socket flood control: a token bucket, and a count of refusals in a row.

Every frame a client sends takes a token; tokens come back at `rate_per_s` up to `burst`. A frame
that finds the bucket empty is refused with `rate_limited`; `abuse_limit` refusals in a row close
the socket with 1008. The defaults (PROTOCOL.md) let a connection send bursts of 200 frames and
100 frames per second sustained.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class Verdict(Enum):
    ALLOW = "allow"
    REFUSE = "refuse"
    CLOSE = "close"


class TokenBucket:
    def __init__(
        self,
        burst: int,
        rate_per_s: float,
        abuse_limit: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.rate_per_s = rate_per_s
        self.abuse_limit = abuse_limit
        self.clock = clock
        self.tokens = float(burst)
        self.updated = clock()
        self.refused_in_a_row = 0

    def take(self) -> Verdict:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.refused_in_a_row = 0
            return Verdict.ALLOW
        self.refused_in_a_row += 1
        if self.refused_in_a_row >= self.abuse_limit:
            return Verdict.CLOSE
        return Verdict.REFUSE
