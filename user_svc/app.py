"""Wiring: build every user_svc dependency from one UserConfig, in one place.

`build(cfg)` opens the pool (waiting for PostgreSQL up to its deadline), applies migrations, and
yields the store, the rules and the servicer, each handed to the next. Tests call it with cheaper
argon2 settings and a fake clock; `__main__` calls it around `serve_forever`, so the pool closes
only after the server has finished its in-flight calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from argon2 import PasswordHasher

from svckit.pg import Pool, open_pool
from user_svc.config import UserConfig
from user_svc.logic import Accounts, Clock, PasswordHashing, utc_now
from user_svc.service import UserServicer, register
from user_svc.store import UserStore, migrate


@dataclass(frozen=True)
class App:
    """The built service: what tests poke at, and what the server registers."""

    pool: Pool
    store: UserStore
    accounts: Accounts
    servicer: UserServicer

    def register(self, server: grpc.aio.Server) -> list[str]:
        return register(server, self.servicer)


def password_hasher(cfg: UserConfig) -> PasswordHasher:
    """argon2id with the configured costs (argon2-cffi's type default is argon2id)."""
    return PasswordHasher(
        time_cost=cfg.argon2_time_cost,
        memory_cost=cfg.argon2_memory_kib,
        parallelism=cfg.argon2_parallelism,
    )


@asynccontextmanager
async def build(cfg: UserConfig, clock: Clock = utc_now) -> AsyncIterator[App]:
    """Open, migrate and wire; close the pool on exit. Raises DatabaseUnreachable past the
    configured connect deadline."""
    pool = await open_pool(
        cfg.db_dsn,
        name="user_svc",
        min_size=cfg.db_pool_min,
        max_size=cfg.db_pool_max,
        connect_timeout_s=cfg.db_connect_timeout_s,
        statement_timeout_s=cfg.db_statement_timeout_s,
        checkout_timeout_s=cfg.rpc_timeout_s,
    )
    try:
        await migrate(pool)
        store = UserStore(pool)
        hashing = PasswordHashing(password_hasher(cfg), concurrency=cfg.hash_concurrency)
        accounts = Accounts(store, hashing, session_ttl_s=cfg.session_ttl_s, clock=clock)
        yield App(pool=pool, store=store, accounts=accounts, servicer=UserServicer(accounts))
    finally:
        await pool.close()
