"""What the persister measures (Prometheus, served by svckit.metrics on every persister)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from svckit.metrics import LATENCY_BUCKETS

CONSUMER_LAG = Gauge(
    "chatmesh_kafka_consumer_lag",
    "Records in the log not yet written by this member, per assigned partition (high watermark "
    "minus position, measured before each poll; exact on real Kafka, and on the local broker "
    "with one record per producer batch).",
    ["topic", "partition"],
)
BATCH_RECORDS = Histogram(
    "chatmesh_persister_batch_records",
    "Records per batch written into the message store.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)
WRITE_SECONDS = Histogram(
    "chatmesh_persister_write_seconds",
    "Time to write one batch into the message store, retries included.",
    buckets=LATENCY_BUCKETS,
)
RECORDS = Counter("chatmesh_persister_records_total", "Messages written into the store.")
SKIPPED = Counter(
    "chatmesh_persister_skipped_records_total",
    "Records skipped because they are not valid messages.",
)
STORE_RETRIES = Counter(
    "chatmesh_persister_store_retries_total",
    "Batch writes retried because the store was unavailable.",
)
