"""The message log producer: asyncio over confluent-kafka's idempotent producer.

`publish()` returns once the broker acknowledged the record with acks=all (or raises). A
background thread serves the producer's delivery callbacks (`poll`), which resolve the awaiting
futures on the event loop, as in confluent-kafka's asyncio example.

Each publish is timed (`chatmesh_kafka_produce_seconds`) and, with tracing on, is a PRODUCER span
`send <topic>` whose context travels in the record's headers (`traceparent`), where the
persister picks it up.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from confluent_kafka import KafkaException, Producer
from opentelemetry.trace import SpanKind

from chat_svc import metrics as m
from svckit import telemetry


class PublishError(Exception):
    """The broker did not acknowledge the record within the delivery timeout."""


class LogProducer:
    def __init__(self, config: dict[str, Any]) -> None:
        self._producer = Producer(config)
        self._closing = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-producer-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(0.1)

    async def publish(self, topic: str, key: bytes, value: bytes) -> tuple[int, int]:
        """Produce one record; return (partition, offset) once it is durable."""
        start = time.perf_counter()
        attributes = {"messaging.system": "kafka", "messaging.destination.name": topic}
        with telemetry.span(f"send {topic}", kind=SpanKind.PRODUCER, attributes=attributes) as span:
            try:
                partition, offset = await self._produce(topic, key, value, telemetry.inject())
            except PublishError:
                m.KAFKA_PRODUCE_ERRORS.inc()
                raise
            finally:
                m.KAFKA_PRODUCE_SECONDS.observe(time.perf_counter() - start)
            if span is not None:
                span.set_attribute("messaging.destination.partition.id", str(partition))
                span.set_attribute("messaging.kafka.offset", offset)
        return partition, offset

    async def _produce(
        self, topic: str, key: bytes, value: bytes, headers: telemetry.KafkaHeaders
    ) -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[int, int]] = loop.create_future()

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                result: BaseException = PublishError(str(err))
                loop.call_soon_threadsafe(_set_exception, done, result)
            else:
                loop.call_soon_threadsafe(_set_result, done, (msg.partition(), msg.offset()))

        while True:
            try:
                self._producer.produce(
                    topic, key=key, value=value, headers=headers or None, on_delivery=on_delivery
                )
                break
            except BufferError:
                await asyncio.sleep(0.01)  # local queue full: let the poller drain it
            except KafkaException as exc:
                raise PublishError(str(exc)) from exc
        return await done

    async def close(self, timeout_s: float = 5.0) -> None:
        await asyncio.to_thread(self._producer.flush, timeout_s)
        self._closing.set()
        await asyncio.to_thread(self._poller.join, timeout_s)


def _set_result(future: asyncio.Future[tuple[int, int]], value: tuple[int, int]) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[tuple[int, int]], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
