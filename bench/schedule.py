"""The open-loop send schedule: every send has an intended time fixed before the run starts.

A closed-loop tool sends the next message when the previous one was answered; when the server
stalls, it stops sending, and the messages it would have sent during the stall are never
measured (coordinated omission). Here send `k` is intended at

    start + (k + phase) * period,        period = 1 / rate

whatever happens: a sender that finds itself late sends every overdue message at once, and each
message's latency is counted from its intended time, so a stall of the server (or of the tool)
shows in the figures as the time the messages waited, not as a gap in the samples.

Several workers share one aggregate rate R: worker w of W runs a schedule at R / W with phase
w / W, so their sends interleave evenly, (k W + w) / R apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

NS = 1_000_000_000


@dataclass(frozen=True)
class OpenLoopSchedule:
    rate_per_s: float
    start_ns: int
    duration_s: float
    phase: float = 0.0  # a fraction of one period, 0 <= phase < 1

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0:
            raise ValueError(f"rate must be positive, got {self.rate_per_s}")
        if not self.duration_s > 0:
            raise ValueError(f"duration must be positive, got {self.duration_s}")
        if not 0 <= self.phase < 1:
            raise ValueError(f"phase must be in [0, 1), got {self.phase}")

    @classmethod
    def for_worker(
        cls, total_rate: float, start_ns: int, duration_s: float, worker: int, workers: int
    ) -> OpenLoopSchedule:
        """Worker `worker`'s share (of `workers`) of an aggregate rate, interleaved."""
        return cls(total_rate / workers, start_ns, duration_s, worker / workers)

    @property
    def period_ns(self) -> float:
        return NS / self.rate_per_s

    @property
    def count(self) -> int:
        """Sends in the window: those intended before its end."""
        n = math.ceil(self.duration_s * self.rate_per_s - self.phase - 1e-9)
        return max(n, 0)

    @property
    def end_ns(self) -> int:
        return self.start_ns + round(self.duration_s * NS)

    def intended_ns(self, k: int) -> int:
        return self.start_ns + round((k + self.phase) * self.period_ns)

    def due(self, now_ns: int) -> int:
        """How many sends are due at `now_ns`: those intended at or before it (at most count)."""
        if now_ns < self.start_ns:
            return 0
        k = math.floor((now_ns - self.start_ns) / self.period_ns - self.phase) + 1
        k = min(max(k, 0), self.count)
        # Correct the float estimate so the answer agrees exactly with intended_ns.
        while k > 0 and self.intended_ns(k - 1) > now_ns:
            k -= 1
        while k < self.count and self.intended_ns(k) <= now_ns:
            k += 1
        return k
