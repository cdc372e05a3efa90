"""Message ids: time-ordered 63-bit integers, unique across every chat_svc instance.

Layout (most significant first): 41 bits of milliseconds since 2025-01-01T00:00:00Z (good until
2094), 10 bits of worker id, 12 bits of sequence within the millisecond. So:

- ids are unique across instances because each live instance holds a distinct worker id, leased
  in Redis (`WorkerLease`) and given up on exit; a lease that cannot be refreshed stops issuing;
- ids from one generator strictly increase, even if the wall clock steps back (the generator
  keeps issuing from its last millisecond and refuses to run more than `max_backstep_ms` behind);
- ids fit a signed 64-bit column (PostgreSQL bigint, ScyllaDB bigint) and a JSON string.

Why time-ordered ids rather than a per-conversation counter: they need no round trip to a
sequencer per message and sort by time across conversations, which history and sync pages use.
Order *within* a conversation in server order also needs every message of a conversation to be
numbered by one generator at a time: chat_svc pins a conversation to one instance (Envoy hashes
the conversation header onto a ring), serializes it with a lock, and after a fail-over
`floor(last_id)` makes the new instance's ids continue above the conversation's last one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
WORKER_BITS = 10
SEQUENCE_BITS = 12
MAX_WORKER = (1 << WORKER_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
TIME_SHIFT = WORKER_BITS + SEQUENCE_BITS


class ClockError(Exception):
    """The clock is too far behind the last issued id to issue more without waiting too long."""


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def timestamp_ms(msg_id: int) -> int:
    """The Unix milliseconds an id was issued at."""
    return (msg_id >> TIME_SHIFT) + EPOCH_MS


def compose(ms: int, worker: int, sequence: int) -> int:
    return ((ms - EPOCH_MS) << TIME_SHIFT) | (worker << SEQUENCE_BITS) | sequence


class IdGenerator:
    """Issues strictly increasing ids for one worker id. Not thread-safe; one per event loop."""

    def __init__(
        self, worker: int, clock: Callable[[], int] = wall_ms, max_backstep_ms: int = 2_000
    ) -> None:
        if not 0 <= worker <= MAX_WORKER:
            raise ValueError(f"worker id {worker} outside 0..{MAX_WORKER}")
        self.worker = worker
        self.clock = clock
        self.max_backstep_ms = max_backstep_ms
        self.last_ms = 0
        self.sequence = 0

    def next_id(self) -> int:
        now = self.clock()
        if now > self.last_ms:
            self.last_ms, self.sequence = now, 0
        elif self.last_ms - now > self.max_backstep_ms:
            raise ClockError(f"clock is {self.last_ms - now} ms behind the last issued id")
        elif self.sequence < MAX_SEQUENCE:
            self.sequence += 1
        else:
            # This millisecond is used up: borrow the next one (the clock will catch up).
            self.last_ms, self.sequence = self.last_ms + 1, 0
        return compose(self.last_ms, self.worker, self.sequence)

    def set_worker(self, worker: int) -> None:
        """Switch worker id (after a lease was lost and another taken), staying increasing."""
        if worker != self.worker:
            if not 0 <= worker <= MAX_WORKER:
                raise ValueError(f"worker id {worker} outside 0..{MAX_WORKER}")
            if self.last_ms:
                self.floor(compose(self.last_ms, MAX_WORKER, MAX_SEQUENCE))
            self.worker = worker

    def floor(self, last_id: int) -> None:
        """Make every later id greater than `last_id`, which any worker may have issued."""
        floor_ms = timestamp_ms(last_id)
        if floor_ms >= self.last_ms:
            # Continue in the millisecond after last_id's: sequence -1 makes the next id use 0.
            self.last_ms, self.sequence = floor_ms + 1, -1
