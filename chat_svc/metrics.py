"""What chat_svc measures (Prometheus, served by svckit.metrics on every chat_svc process)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from svckit.metrics import LATENCY_BUCKETS

ACCEPTED = Counter(
    "chatmesh_messages_accepted_total",
    "Messages accepted: numbered and durable in the log (answered with message_ack).",
)
DUPLICATE_SENDS = Counter(
    "chatmesh_messages_duplicate_sends_total",
    "Sends repeated with a known client_msg_id, answered with the first msg_id.",
)
DELIVERED_LIVE = Counter(
    "chatmesh_messages_delivered_live_total",
    "Accepted messages that at least one socket of the recipient took live.",
)
HANDED_TO_PUSH = Counter(
    "chatmesh_messages_handed_to_push_total",
    "Accepted messages handed to notify_svc because no socket of the recipient took them.",
)
LIVE_DELIVERY_FAILURES = Counter(
    "chatmesh_live_delivery_failures_total",
    "Messages whose DeliverMessages call to a gateway instance failed (its devices will sync).",
)
PUSH_HANDOFF_FAILURES = Counter(
    "chatmesh_push_handoff_failures_total",
    "Hand-offs to notify_svc that failed (the recipient's devices sync when they connect).",
)
KAFKA_PRODUCE_SECONDS = Histogram(
    "chatmesh_kafka_produce_seconds",
    "From producing a record to the broker's acks=all acknowledgement (or failure).",
    buckets=LATENCY_BUCKETS,
)
KAFKA_PRODUCE_ERRORS = Counter(
    "chatmesh_kafka_produce_errors_total",
    "Records the broker did not acknowledge within the delivery timeout.",
)
