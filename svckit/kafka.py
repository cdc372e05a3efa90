"""The message log: its topic and the client settings every producer and consumer shares.

- Producers are idempotent with `acks=all`: a record is acknowledged only once every in-sync
  replica has it, and a retried send never duplicates it. No Kafka transactions: exactly-once
  effects come from idempotent producers plus idempotent writes (the local broker does not honour
  transactions).
- Consumers use the classic group protocol (the local broker hangs on KIP-848), manual commits
  and short session timeouts so a restarted member rejoins in seconds.
- `max_batch_records` bounds the records per producer batch. The local broker reports log-end
  offsets from the last batch's base offset, so the launcher sets it to 1 there; real Kafka needs
  no such limit (LOCAL-STACK.md). The sync barrier relies on exact log-end offsets.
"""

from __future__ import annotations

from typing import Any

MESSAGES_TOPIC = "chatmesh.messages"
MESSAGES_PARTITIONS = 8


def producer_config(bootstrap: str, max_batch_records: int, timeout_s: float) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 1,
        "batch.num.messages": max_batch_records,
        "compression.type": "none",
        "message.timeout.ms": int(timeout_s * 1000),
        "socket.keepalive.enable": True,
    }


def consumer_config(bootstrap: str, group: str, instance: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "client.id": instance,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "isolation.level": "read_uncommitted",
    }
