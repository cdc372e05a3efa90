"""The log writer: a consumer group member that writes message batches into the store.

At-least-once, made harmless: auto-commit is off; a batch is stored first (an idempotent upsert
keyed by msg_id, which also advances the store's applied offsets) and only then are its offsets
committed. A crash between the two replays the batch, which stores nothing twice. A store that
is down is retried with backoff without committing, so nothing is skipped. A record that is not a
valid message (never produced by chat_svc) is logged and skipped, so one bad record cannot stall
a partition.

confluent-kafka's consumer is blocking; every call runs in a worker thread, one at a time.

Observability: before each poll the lag of every assigned partition is measured (high watermark
minus position, both cached by the client: no extra round trip); each batch's size and write
time are measured. With tracing on, each record whose headers carry a trace context gets a
`process <topic>` CONSUMER span, child of chat_svc's `send` span, covering its batch's write;
the batch itself is a `persister write` span linked to every record's context.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from chatmesh.message.v1 import message_pb2
from confluent_kafka import Consumer, KafkaError, TopicPartition
from google.protobuf.message import DecodeError
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind

from persister import metrics as m
from persister.store import LogRecord, MessageStore
from svckit import telemetry
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
        self._partitions: set[int] = set()  # assigned; touched only by the consumer's thread

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self.factory(self.config)
        loop = asyncio.get_running_loop()

        def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
            log.info("partitions assigned", extra={"partitions": [p.partition for p in partitions]})
            self._partitions.update(p.partition for p in partitions)
            loop.call_soon_threadsafe(self.assigned.set)

        def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
            log.info("partitions revoked", extra={"partitions": [p.partition for p in partitions]})
            for p in partitions:
                self._partitions.discard(p.partition)
                try:
                    m.CONSUMER_LAG.remove(self.topic, str(p.partition))
                except KeyError:
                    pass

        consumer.subscribe([self.topic], on_assign=on_assign, on_revoke=on_revoke)
        try:
            while not stop.is_set():
                batch = await asyncio.to_thread(self._poll, consumer)
                if not batch:
                    continue
                records, contexts = self._decode(batch)
                offsets = _next_offsets(batch)
                if offsets:
                    next_offsets = {(tp.topic, tp.partition): tp.offset for tp in offsets}
                    await self._store_traced(records, contexts, next_offsets, stop)
                    await asyncio.to_thread(consumer.commit, offsets=offsets, asynchronous=False)
                self.stored_batches += 1
        finally:
            for partition in list(self._partitions):
                try:
                    m.CONSUMER_LAG.remove(self.topic, str(partition))
                except KeyError:
                    pass
            await asyncio.to_thread(consumer.close)

    def _poll(self, consumer: Consumer) -> list[Any]:
        """(In the consumer's thread) measure the lag left by the last batch, then consume."""
        self._measure_lag(consumer)
        return list(consumer.consume(self.batch_max, self.poll_timeout_s))

    def _measure_lag(self, consumer: Consumer) -> None:
        if not self._partitions:
            return
        try:
            positions = consumer.position(
                [TopicPartition(self.topic, p) for p in sorted(self._partitions)]
            )
            for tp in positions:
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    continue  # no fetch answer yet
                if tp.offset < 0:  # nothing consumed since the assignment
                    if high > 0:
                        continue  # unknown until the first fetch
                    lag = 0
                else:
                    lag = max(high - tp.offset, 0)
                m.CONSUMER_LAG.labels(self.topic, str(tp.partition)).set(lag)
        except Exception:  # a metric must never stop the writer
            log.debug("measuring consumer lag failed", exc_info=True)

    def _decode(
        self, batch: list[Any]
    ) -> tuple[list[LogRecord], list[otel_context.Context | None]]:
        """The valid messages, and each one's trace context (None when tracing is off)."""
        traced = telemetry.enabled()
        records = []
        contexts: list[otel_context.Context | None] = []
        for item in batch:
            err = item.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error", extra={"error": str(err)})
                continue
            try:
                message = message_pb2.Message.FromString(item.value() or b"")
            except DecodeError:
                m.SKIPPED.inc()
                log.error(
                    "skipping a record that is not a message",
                    extra={"partition": item.partition(), "offset": item.offset()},
                )
                continue
            if not message.msg_id or not message.conversation_id:
                m.SKIPPED.inc()
                log.error(
                    "skipping a message without id or conversation",
                    extra={"partition": item.partition(), "offset": item.offset()},
                )
                continue
            records.append(LogRecord(item.topic(), item.partition(), item.offset(), message))
            contexts.append(telemetry.extract(item.headers()) if traced else None)
        return records, contexts

    async def _store_traced(
        self,
        records: list[LogRecord],
        contexts: list[otel_context.Context | None],
        next_offsets: dict[tuple[str, int], int],
        stop: asyncio.Event,
    ) -> None:
        """Write one batch, timed; with tracing on, inside the batch and per-record spans."""
        start = time.perf_counter()
        links = [link for c in contexts if c is not None and (link := telemetry.link_to(c))]
        attributes = {"messaging.system": "kafka", "messaging.batch.message_count": len(records)}
        with telemetry.span("persister write", root=True, links=links, attributes=attributes):
            batch_link = telemetry.current_link()
            spans = [
                telemetry.start(
                    f"process {record.topic}",
                    kind=SpanKind.CONSUMER,
                    parent=context,
                    links=[batch_link] if batch_link is not None else [],
                    attributes={
                        "messaging.system": "kafka",
                        "messaging.destination.name": record.topic,
                        "messaging.destination.partition.id": str(record.partition),
                        "messaging.kafka.offset": record.offset,
                        "chatmesh.msg_id": str(record.message.msg_id),
                    },
                )
                for record, context in zip(records, contexts, strict=True)
                if context is not None and telemetry.link_to(context) is not None
            ]
            try:
                await self._store(records, next_offsets, stop)
            finally:
                for span in spans:
                    if span is not None:
                        span.end()
        m.WRITE_SECONDS.observe(time.perf_counter() - start)
        m.BATCH_RECORDS.observe(len(records))
        m.RECORDS.inc(len(records))

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
                m.STORE_RETRIES.inc()
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
