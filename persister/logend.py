"""Log-end offsets of the message topic, for the sync barrier (persister.history.Barrier)."""

from __future__ import annotations

import asyncio

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]


class LogEnd:
    def __init__(self, admin: AdminClient, topic: str, timeout_s: float) -> None:
        self.admin = admin
        self.topic = topic
        self.timeout_s = timeout_s
        self._partitions: list[int] = []

    async def _partition_ids(self) -> list[int]:
        if not self._partitions:
            meta = await asyncio.to_thread(self.admin.list_topics, self.topic, self.timeout_s)
            topic = meta.topics.get(self.topic)
            if topic is None or topic.error is not None or not topic.partitions:
                raise LookupError(f"topic {self.topic} is not available")
            self._partitions = sorted(topic.partitions)
        return self._partitions

    async def __call__(self) -> dict[int, int]:
        """Per partition, the offset the next record will get (the high watermark)."""
        partitions = await self._partition_ids()
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        futures = self.admin.list_offsets(
            {TopicPartition(self.topic, p): latest for p in partitions},
            request_timeout=self.timeout_s,
        )
        result: dict[int, int] = {}
        for tp, future in futures.items():
            info = await asyncio.wrap_future(future)
            result[tp.partition] = int(info.offset)
        return result
