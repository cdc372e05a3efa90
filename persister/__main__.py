"""`python -m persister`: the message store's one owner.

One process does both halves of owning the store: a consumer group member writes the log into
the store (`persister.consumer.LogWriter`), and a gRPC server answers sync, history and
acknowledgements over it (`persister.history`). Several instances split the log's partitions
and all serve reads.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass

import grpc
from chatmesh.message.v1 import store_pb2, store_pb2_grpc
from confluent_kafka.admin import AdminClient

from persister.consumer import LogWriter
from persister.history import Barrier, MessageStoreServicer
from persister.logend import LogEnd
from persister.stores.postgres import PostgresMessageStore, migrate
from svckit import lifecycle
from svckit.config import (
    ServiceConfig,
    kafka_bootstrap_setting,
    load,
    setting,
)
from svckit.kafka import MESSAGES_TOPIC, consumer_config
from svckit.pg import open_pool

log = logging.getLogger(__name__)

DEFAULT_PORT = 9241


@dataclass(frozen=True)
class PersisterConfig(ServiceConfig):
    kafka_bootstrap: str = kafka_bootstrap_setting()
    db_dsn: str = setting(
        "CHATMESH_MESSAGE_DB_DSN",
        "postgresql://chatmesh@127.0.0.1:5433/chatmesh_messages",
        "the message store (PostgreSQL)",
    )
    group: str = setting("CHATMESH_PERSISTER_GROUP", "chatmesh-persister", "consumer group id")
    batch_max: int = setting("CHATMESH_PERSISTER_BATCH_MAX", 500, "records per store batch")
    sync_wait_s: float = setting(
        "CHATMESH_SYNC_BARRIER_TIMEOUT_S",
        12.0,
        "how long a sync waits for the store to catch up with the log",
    )
    db_pool_max: int = setting("CHATMESH_MESSAGE_DB_POOL_MAX", 10, "store connections")


def register(server: grpc.aio.Server, servicer: MessageStoreServicer) -> list[str]:
    store_pb2_grpc.add_MessageStoreServiceServicer_to_server(servicer, server)
    return [store_pb2.DESCRIPTOR.services_by_name["MessageStoreService"].full_name]


async def main() -> None:
    cfg = load(PersisterConfig)
    pool = await open_pool(
        cfg.db_dsn, name="persister", max_size=cfg.db_pool_max, checkout_timeout_s=cfg.rpc_timeout_s
    )
    try:
        await migrate(pool)
        store = PostgresMessageStore(pool)
        admin = AdminClient({"bootstrap.servers": cfg.kafka_bootstrap})
        log_end = LogEnd(admin, MESSAGES_TOPIC, cfg.rpc_timeout_s)
        barrier = Barrier(store, MESSAGES_TOPIC, log_end, cfg.sync_wait_s)
        servicer = MessageStoreServicer(store, barrier)
        writer = LogWriter(
            consumer_config(cfg.kafka_bootstrap, cfg.group, cfg.instance()),
            MESSAGES_TOPIC,
            store,
            batch_max=cfg.batch_max,
        )
        stop = asyncio.Event()
        writing = asyncio.create_task(writer.run(stop), name="log-writer")
        serving = asyncio.create_task(
            lifecycle.serve_forever(cfg, DEFAULT_PORT, lambda s: register(s, servicer)),
            name="grpc",
        )
        done, _ = await asyncio.wait({writing, serving}, return_when=asyncio.FIRST_COMPLETED)
        if writing in done:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            error = writing.exception()
            log.error("log writer stopped", extra={"error": repr(error)})
            sys.exit(1)
        stop.set()
        await writing
        serving.result()
        await log_end.aclose()
    finally:
        await pool.close()


if __name__ == "__main__":
    lifecycle.run("persister", main)
