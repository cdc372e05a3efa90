"""What happened to every message of one stage: sent, acknowledged, refused, received.

A `StageLedger` is fed by the clients of one worker and answers the questions the report asks:

- latency of delivery: from a message's *intended* send time (`bench.schedule`) to the moment
  its recipient's socket read the `new_message`; of acknowledgement: intended time to the
  sender's `message_ack`; send lag: how late the tool itself wrote the frame (a large lag means
  the tool, not the server, fell behind);
- loss: every `msg_id` a `message_ack` announced must be received, once the stage has drained;
  an acknowledged message that never arrives is lost, and the run fails;
- duplicates: a `msg_id` received twice is counted and dropped, as a real client would;
- errors by code; a send refused with a transient code (`RETRYABLE`) is sent again with the
  same `client_msg_id`, as PROTOCOL.md's idempotency lets a client do, up to `max_retries`;
- unanswered: sends that got neither an ack nor a final error by the end of the drain.

Pure bookkeeping: times are passed in, so tests drive it with a fake clock.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench import stats

# Codes after which the same frame may succeed if sent again.
RETRYABLE = frozenset({"unavailable", "internal", "rate_limited"})
SAMPLE = 20  # ids listed in a result, at most


class StageLedger:
    def __init__(self, stage: int, window_end_ns: int, max_retries: int = 3) -> None:
        self.stage = stage
        self.window_end_ns = window_end_ns
        self.max_retries = max_retries
        self.sent = 0  # distinct messages put on the schedule
        self.transmissions = 0  # frames written, retries included
        self.pending: dict[str, int] = {}  # client_msg_id -> intended ns, not answered yet
        self.acked: dict[str, str] = {}  # client_msg_id -> msg_id of its first message_ack
        self.acked_ids: set[str] = set()
        self.failed: dict[str, str] = {}  # client_msg_id -> the code that refused it for good
        self.attempts: Counter[str] = Counter()  # client_msg_id -> retries so far
        self._written: set[str] = set()
        self.received: set[str] = set()
        self.received_in_window = 0  # received before the end of the sending window
        self.acked_in_window = 0
        self.duplicates = 0
        self.ack_mismatches: list[str] = []
        self.errors: Counter[str] = Counter()
        self.delivery = stats.new_histogram()
        self.ack_latency = stats.new_histogram()
        self.send_lag = stats.new_histogram()
        self.interval_delivery = stats.new_histogram()  # reset by whoever reports progress

    # -- the sending side

    def scheduled(self, client_msg_id: str, intended_ns: int) -> None:
        self.sent += 1
        self.pending[client_msg_id] = intended_ns

    def transmitted(self, client_msg_id: str, intended_ns: int, now_ns: int) -> None:
        """A frame was written to its socket (the first time, or again for a retry)."""
        self.transmissions += 1
        if client_msg_id not in self._written:
            self._written.add(client_msg_id)
            stats.record_ns(self.send_lag, now_ns - intended_ns)

    def on_ack(self, client_msg_id: str, msg_id: str, now_ns: int) -> None:
        first = self.acked.get(client_msg_id)
        if first is not None:
            if first != msg_id:  # PROTOCOL.md guarantee 2 broken: a retry got a new msg_id
                self.ack_mismatches.append(f"{client_msg_id}: {first} then {msg_id}")
            return
        intended = self.pending.pop(client_msg_id, None)
        self.failed.pop(client_msg_id, None)
        self.acked[client_msg_id] = msg_id
        self.acked_ids.add(msg_id)
        if now_ns <= self.window_end_ns:
            self.acked_in_window += 1
        if intended is not None:
            stats.record_ns(self.ack_latency, now_ns - intended)

    def on_error(self, code: str, client_msg_id: str | None) -> bool:
        """Count an `error` frame; True when the refused send should be sent again."""
        self.errors[code] += 1
        if client_msg_id is None or client_msg_id not in self.pending:
            return False
        if code in RETRYABLE and self.attempts[client_msg_id] < self.max_retries:
            self.attempts[client_msg_id] += 1
            return True
        self.pending.pop(client_msg_id)
        self.failed[client_msg_id] = code
        return False

    # -- the receiving side

    def on_receipt(self, msg_id: str, intended_ns: int, now_ns: int) -> bool:
        """A `new_message` of this stage; False for a duplicate (dropped)."""
        if msg_id in self.received:
            self.duplicates += 1
            return False
        self.received.add(msg_id)
        latency = now_ns - intended_ns
        stats.record_ns(self.delivery, latency)
        stats.record_ns(self.interval_delivery, latency)
        if now_ns <= self.window_end_ns:
            self.received_in_window += 1
        return True

    # -- verdict

    def settled(self) -> bool:
        """Every send answered and every acknowledged message received."""
        return not self.pending and self.acked_ids <= self.received

    def lost(self) -> list[str]:
        return sorted(self.acked_ids - self.received, key=_numeric)

    def result(self) -> dict[str, Any]:
        lost = self.lost()
        without_ack = sorted(self.received - self.acked_ids, key=_numeric)
        return {
            "stage": self.stage,
            "sent": self.sent,
            "transmissions": self.transmissions,
            "acked": len(self.acked_ids),
            "acked_in_window": self.acked_in_window,
            "received": len(self.received),
            "received_in_window": self.received_in_window,
            "duplicates": self.duplicates,
            "lost": len(lost),
            "lost_msg_ids": lost[:SAMPLE],
            "unanswered": len(self.pending),
            "unanswered_client_msg_ids": sorted(self.pending)[:SAMPLE],
            "failed": len(self.failed),
            "failed_codes": dict(Counter(self.failed.values())),
            "received_without_ack": len(without_ack),
            "ack_mismatches": self.ack_mismatches[:SAMPLE],
            "errors": dict(self.errors),
            "histograms": {
                "delivery": stats.encode(self.delivery),
                "ack": stats.encode(self.ack_latency),
                "send_lag": stats.encode(self.send_lag),
            },
        }


def _numeric(msg_id: str) -> tuple[int, str]:
    return (int(msg_id), msg_id) if msg_id.isdigit() else (-1, msg_id)
