"""`python -m notify_svc`: the notification service process."""

from __future__ import annotations

from dataclasses import dataclass

from notify_svc.service import NotifyServicer, register
from notify_svc.store import NotificationStore, migrate
from svckit import lifecycle
from svckit.config import ServiceConfig, load, setting
from svckit.pg import open_pool

DEFAULT_PORT = 9231


@dataclass(frozen=True)
class NotifyConfig(ServiceConfig):
    db_dsn: str = setting(
        "CHATMESH_NOTIFY_DB_DSN",
        "postgresql://chatmesh@127.0.0.1:5433/chatmesh_notify",
        "the notification database (PostgreSQL)",
    )


async def main() -> None:
    cfg = load(NotifyConfig)
    pool = await open_pool(cfg.db_dsn, name="notify_svc", checkout_timeout_s=cfg.rpc_timeout_s)
    try:
        await migrate(pool)
        servicer = NotifyServicer(NotificationStore(pool))
        await lifecycle.serve_forever(cfg, DEFAULT_PORT, lambda s: register(s, servicer))
    finally:
        await pool.close()


if __name__ == "__main__":
    lifecycle.run("notify_svc", main)
