"""The raw figures of the servers under chatmesh, measured without chatmesh.

- `broker_baseline`: the Kafka-protocol broker's round trip as chat_svc sees it: the very producer
  chat_svc uses (`chat_svc.events.LogProducer`, idempotent, `acks=all`, the launcher's settings
  for the local broker) publishing one record and awaiting its acknowledgement, one at a time
  (round trip latency, and its rate), then with `concurrency` publishes in flight (throughput).
- `postgres_baseline`: inserts into a table shaped like the persister's `messages`: one row per
  autocommitted statement (commits per second, latency), then batches of `batch` rows per
  transaction as the persister writes them (rows per second).

Each runs for a fixed time against a server the caller started (`launcher.servers`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from bench import stats
from persister.stores import postgres

RECORD_BYTES = 200  # about a message record: ids, conversation, 64 characters of content
TOPIC = "chatmesh.bench.raw"
PARTITIONS = 8  # as chatmesh.messages


async def _broker(bootstrap: str, duration_s: float, concurrency: int) -> dict[str, Any]:
    from chat_svc.events import LogProducer
    from svckit.kafka import producer_config

    # The launcher runs chat_svc with one record per batch against the local broker.
    producer = LogProducer(producer_config(bootstrap, 1, 5.0))
    value = b"x" * RECORD_BYTES
    try:
        for _ in range(20):  # connect, learn the partition leaders
            await producer.publish(TOPIC, b"warm", value)
        serial = stats.new_histogram()
        count = 0
        t0 = time.perf_counter()
        end = t0 + duration_s
        while time.perf_counter() < end:
            key = f"c{count % 64}".encode()
            start = time.perf_counter_ns()
            await producer.publish(TOPIC, key, value)
            stats.record_ns(serial, time.perf_counter_ns() - start)
            count += 1
        serial_rate = count / (time.perf_counter() - t0)

        done = 0
        end = time.perf_counter() + duration_s
        t1 = time.perf_counter()

        async def publisher(i: int) -> None:
            nonlocal done
            n = 0
            while time.perf_counter() < end:
                await producer.publish(TOPIC, f"c{i}-{n % 8}".encode(), value)
                n += 1
                done += 1

        await asyncio.gather(*(publisher(i) for i in range(concurrency)))
        concurrent_rate = done / (time.perf_counter() - t1)
    finally:
        await producer.close()
    return {
        "record_bytes": RECORD_BYTES,
        "round_trip": stats.summary(serial),
        "serial_per_s": round(serial_rate, 1),
        "concurrency": concurrency,
        "concurrent_per_s": round(concurrent_rate, 1),
    }


def broker_baseline(
    bootstrap: str, duration_s: float = 3.0, concurrency: int = 64
) -> dict[str, Any]:
    """Awaited acks=all publishes against `bootstrap`: serial round trip, then concurrent."""
    from launcher import servers

    servers.create_topics(bootstrap, {TOPIC: PARTITIONS})
    return asyncio.run(_broker(bootstrap, duration_s, concurrency))


_TABLE = "bench_messages"  # shaped as the persister's messages table, dropped afterwards
_INSERT = postgres.insert_messages(_TABLE)


def _rows(start: int, count: int) -> list[tuple[Any, ...]]:
    a, b = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))
    now = int(time.time() * 1000)
    return [
        (
            start + i,
            f"{a}:{b}:{(start + i) % 64}",
            a,
            "device-a",
            b,
            "x" * 64,
            f"bench-{start + i}",
            now // 1000,
            now,
        )
        for i in range(count)
    ]


def postgres_baseline(dsn: str, duration_s: float = 3.0, batch: int = 500) -> dict[str, Any]:
    """Single-row autocommitted inserts, then `batch`-row transactions, each for `duration_s`."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {_TABLE}")
        conn.execute(postgres.messages_table(_TABLE))
        single = stats.new_histogram()
        next_id = 1
        t0 = time.perf_counter()
        end = t0 + duration_s
        while time.perf_counter() < end:
            (row,) = _rows(next_id, 1)
            start = time.perf_counter_ns()
            conn.execute(_INSERT, row)
            stats.record_ns(single, time.perf_counter_ns() - start)
            next_id += 1
        single_rate = (next_id - 1) / (time.perf_counter() - t0)

        rows = 0
        t1 = time.perf_counter()
        end = t1 + duration_s
        while time.perf_counter() < end:
            data = _rows(next_id, batch)
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(_INSERT, data)
            next_id += batch
            rows += batch
        batched_rate = rows / (time.perf_counter() - t1)
        conn.execute(f"DROP TABLE {_TABLE}")
    return {
        "single_row": stats.summary(single),
        "single_rows_per_s": round(single_rate, 1),
        "batch_rows": batch,
        "batched_rows_per_s": round(batched_rate, 1),
    }
