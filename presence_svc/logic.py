"""Presence policy, as pure functions over an injected clock.

A connection entry lives until `expires_at_ms`; the gateway that holds the socket refreshes it
(heartbeat) well within the TTL, so a crashed gateway's entries lapse on their own. The policy:

- `expiry(now_ms, ttl_s)`: when an entry written now lapses;
- `clamp_ttl(requested_s)`: the TTL actually granted (bounded, so a bad caller cannot pin entries);
- `is_live(expires_at_ms, now_ms)`: whether an entry still counts;
- `last_seen(previous_ms, now_ms)`: last seen only moves forward.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TTL_S = 30
MIN_TTL_S = 5
MAX_TTL_S = 300


@dataclass(frozen=True)
class Policy:
    default_ttl_s: int = DEFAULT_TTL_S
    min_ttl_s: int = MIN_TTL_S
    max_ttl_s: int = MAX_TTL_S

    def clamp_ttl(self, requested_s: int) -> int:
        if requested_s <= 0:
            return self.default_ttl_s
        return max(self.min_ttl_s, min(self.max_ttl_s, requested_s))

    def expiry(self, now_ms: int, ttl_s: int) -> int:
        return now_ms + self.clamp_ttl(ttl_s) * 1000


def is_live(expires_at_ms: int, now_ms: int) -> bool:
    return expires_at_ms > now_ms


def last_seen(previous_ms: int | None, now_ms: int) -> int:
    return now_ms if previous_ms is None else max(previous_ms, now_ms)
