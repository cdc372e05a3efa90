"""The log writer: a consumer group member that writes message batches into the store.

At-least-once, made harmless: auto-commit is off; a batch is stored first (an idempotent upsert
keyed by msg_id, which also advances the store's applied offsets) and only then are its offsets
committed. A crash between the two replays the batch, which stores nothing twice. A store that
is down is retried with backoff without committing, so nothing is skipped. A record that is not a
valid message (never produced by chat_svc) is logged and skipped, so one bad record cannot stall
a partition.

confluent-kafka's consumer is blocking; every call runs in a worker thread, one at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from chatmesh.message.v1 import message_pb2
from confluent_kafka import Consumer, KafkaError, TopicPartition
from google.protobuf.message import DecodeError

from persister.store import LogRecord, MessageStore
from svckit.errors import Unavailable

log = logging.getLogger(__name__)

ConsumerFactory = Callable[[dict[str, Any]], Consumer]


class LogWriter:
    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        store: MessageStore,
        *,
        batch_max: int = 500,
        poll_timeout_s: float = 0.2,
        factory: ConsumerFactory = Consumer,
    ) -> None:
        self.config = config
        self.topic = topic
        self.store = store
        self.batch_max = batch_max
        self.poll_timeout_s = poll_timeout_s
        self.factory = factory
        self.stored_batches = 0
        self.assigned = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self.factory(self.config)
        loop = asyncio.get_running_loop()

        def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
            log.info("partitions assigned", extra={"partitions": [p.partition for p in partitions]})
            loop.call_soon_threadsafe(self.assigned.set)

        def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
            log.info("partitions revoked", extra={"partitions": [p.partition for p in partitions]})

        consumer.subscribe([self.topic], on_assign=on_assign, on_revoke=on_revoke)
        try:
            while not stop.is_set():
                batch = await asyncio.to_thread(
                    consumer.consume, self.batch_max, self.poll_timeout_s
                )
                if not batch:
                    continue
                records = self._decode(batch)
                offsets = _next_offsets(batch)
                if offsets:
                    await self._store(
                        records, {(tp.topic, tp.partition): tp.offset for tp in offsets}, stop
                    )
                    await asyncio.to_thread(consumer.commit, offsets=offsets, asynchronous=False)
                self.stored_batches += 1
        finally:
            await asyncio.to_thread(consumer.close)

    def _decode(self, batch: list[Any]) -> list[LogRecord]:
        records = []
        for item in batch:
            err = item.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error", extra={"error": str(err)})
                continue
            try:
                message = message_pb2.Message.FromString(item.value() or b"")
            except DecodeError:
                log.error(
                    "skipping a record that is not a message",
                    extra={"partition": item.partition(), "offset": item.offset()},
                )
                continue
            if not message.msg_id or not message.conversation_id:
                log.error(
                    "skipping a message without id or conversation",
                    extra={"partition": item.partition(), "offset": item.offset()},
                )
                continue
            records.append(LogRecord(item.topic(), item.partition(), item.offset(), message))
        return records

    async def _store(
        self,
        records: list[LogRecord],
        next_offsets: dict[tuple[str, int], int],
        stop: asyncio.Event,
    ) -> None:
        delay = 0.05
        while True:
            try:
                await self.store.apply(records, next_offsets)
                return
            except Unavailable:
                if stop.is_set():
                    raise
                log.warning("store unavailable; retrying the batch", extra={"retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


def _next_offsets(batch: list[Any]) -> list[TopicPartition]:
    latest: dict[tuple[str, int], int] = {}
    for item in batch:
        if item.error() is None:
            key = (item.topic(), item.partition())
            latest[key] = max(latest.get(key, -1), item.offset())
    return [TopicPartition(t, p, o + 1) for (t, p), o in latest.items()]
