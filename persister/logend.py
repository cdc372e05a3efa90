"""Log-end offsets of the message topic, for the sync barrier (persister.history.Barrier).

Reads are coalesced (svckit.batching): while one ListOffsets request is under way, every sync,
ack lookup and history call that needs the log end waits for the next one, and they all share
it. So the broker sees at most one request per persister at a time, however many devices sync
at once (a reconnect storm), and each caller still gets offsets read after it asked, which is
what the barrier needs: a message acknowledged before the call is below them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from svckit.batching import Batcher
from svckit.metrics import BATCH_SIZE


class LogEnd:
    def __init__(self, admin: AdminClient, topic: str, timeout_s: float) -> None:
        self.admin = admin
        self.topic = topic
        self.timeout_s = timeout_s
        self._partitions: list[int] = []
        self._reads: Batcher[None, dict[int, int]] = Batcher(
            self._read_for, max_batch=100_000, on_batch=BATCH_SIZE.labels("log_end").observe
        )

    async def _partition_ids(self) -> list[int]:
        if not self._partitions:
            meta = await asyncio.to_thread(self.admin.list_topics, self.topic, self.timeout_s)
            topic = meta.topics.get(self.topic)
            if topic is None or topic.error is not None or not topic.partitions:
                raise LookupError(f"topic {self.topic} is not available")
            self._partitions = sorted(topic.partitions)
        return self._partitions

    async def __call__(self) -> dict[int, int]:
        """Per partition, the offset the next record will get (the high watermark), read after
        this call began."""
        return await self._reads.submit(None)

    async def aclose(self) -> None:
        await self._reads.aclose()

    async def _read_for(self, callers: Sequence[None]) -> list[dict[int, int]]:
        ends = await self._read()
        return [dict(ends) for _ in callers]

    async def _read(self) -> dict[int, int]:
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
