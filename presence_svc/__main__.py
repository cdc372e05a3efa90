"""`python -m presence_svc`: the presence service process."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as redis

from presence_svc.logic import DEFAULT_TTL_S, Policy
from presence_svc.service import PresenceServicer, register
from presence_svc.store import PresenceStore
from svckit import lifecycle
from svckit.config import (
    ServiceConfig,
    load,
    redis_url_setting,
    setting,
)

DEFAULT_PORT = 9221


@dataclass(frozen=True)
class PresenceConfig(ServiceConfig):
    redis_url: str = redis_url_setting()
    default_ttl_s: int = setting(
        "CHATMESH_PRESENCE_TTL_S", DEFAULT_TTL_S, "TTL of a connection entry without a heartbeat"
    )


async def main() -> None:
    cfg = load(PresenceConfig)
    client = redis.Redis.from_url(
        cfg.redis_url, socket_timeout=cfg.rpc_timeout_s, socket_connect_timeout=cfg.rpc_timeout_s
    )
    try:
        await client.ping()
        servicer = PresenceServicer(PresenceStore(client), Policy(default_ttl_s=cfg.default_ttl_s))
        await lifecycle.serve_forever(cfg, DEFAULT_PORT, lambda server: register(server, servicer))
    finally:
        await client.aclose()


if __name__ == "__main__":
    lifecycle.run("presence_svc", main)
