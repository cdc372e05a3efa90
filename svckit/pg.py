"""PostgreSQL plumbing every service that owns a database shares: one pool, versioned migrations.

- `open_pool()` waits for the server up to a deadline (the pool retries with backoff), so a service
  may start before PostgreSQL without crashing, yet never hangs: past the deadline it raises
  `DatabaseUnreachable` naming host:port/dbname (never the password).
- `migrate()` applies an ordered list of `Migration`s. Each runs in its own transaction that first
  takes `pg_advisory_xact_lock(key)` and re-checks `schema_migrations`, so any number of instances
  starting at once (or restarting) apply each migration exactly once and never see a half-built
  schema. Versions are never edited or reused once released; a change is a new entry.
- `connected()` turns an unreachable or timed-out database into `svckit.errors.Unavailable`, which
  callers may retry, never an opaque INTERNAL.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from svckit.errors import StartupError, Unavailable

log = logging.getLogger(__name__)

Pool = AsyncConnectionPool[AsyncConnection[TupleRow]]


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@dataclass(frozen=True)
class Migration:
    """One schema change: applied once, in one transaction, recorded in `schema_migrations`."""

    version: int
    name: str
    statements: tuple[str, ...]


_SCHEMA_MIGRATIONS = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version    integer PRIMARY KEY,
        name       text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    )
"""


def describe_dsn(dsn: str) -> str:
    """host:port/dbname of a DSN, for logs and errors; never the password."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


class DatabaseUnreachable(StartupError):
    """Start-up could not connect to PostgreSQL within its deadline; the message says where."""


async def open_pool(
    dsn: str,
    *,
    name: str = "chatmesh",
    min_size: int = 2,
    max_size: int = 10,
    connect_timeout_s: float = 30.0,
    statement_timeout_s: float = 5.0,
    checkout_timeout_s: float = 5.0,
) -> Pool:
    """Open a pool and wait until `min_size` connections work, or fail after `connect_timeout_s`.

    Waiting here (the pool retries with backoff) lets the service start before PostgreSQL is up
    without crashing, yet never hang: past the deadline it raises DatabaseUnreachable.
    Connections are autocommit (every multi-statement change opens an explicit transaction),
    checked before each use (a restarted server costs no failed call), and carry a
    `statement_timeout` so no query outlives the calls waiting on it (it replaces any `options`
    given in the DSN).
    """
    pool: Pool = AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        open=False,
        timeout=checkout_timeout_s,
        check=AsyncConnectionPool.check_connection,
        kwargs={
            "autocommit": True,
            # One attempt is worth at most what a caller waits for a connection (libpq: >= 2 s);
            # the start-up deadline spans many attempts.
            "connect_timeout": max(2, round(checkout_timeout_s)),
            "options": f"-c statement_timeout={int(statement_timeout_s * 1000)}",
        },
        name=name,
    )
    try:
        await pool.open(wait=True, timeout=connect_timeout_s)
    except PoolTimeout as exc:
        await pool.close()
        raise DatabaseUnreachable(
            f"PostgreSQL at {describe_dsn(dsn)} not reachable within {connect_timeout_s} s"
        ) from exc
    return pool


@asynccontextmanager
async def connected(pool: Pool, what: str = "database") -> AsyncIterator[AsyncConnection[TupleRow]]:
    """A pooled connection; an unreachable or timed-out database becomes Unavailable."""
    try:
        async with pool.connection() as conn:
            yield conn
    except PoolTimeout as exc:
        log.warning("no database connection available", extra={"error": str(exc)})
        raise Unavailable(f"{what} unavailable") from exc
    except psycopg.OperationalError as exc:
        log.warning("database operation failed", extra={"error": str(exc)})
        raise Unavailable(f"{what} unavailable") from exc


async def migrate(
    pool: Pool,
    migrations: Sequence[Migration],
    *,
    lock: int,
    lock_timeout_s: float = 60.0,
) -> list[int]:
    """Apply the migrations this database lacks, in order; return the versions applied here.

    Safe to run from any number of instances at once: each step holds the advisory lock for its
    whole transaction and re-reads `schema_migrations` under it. `lock_timeout_s` bounds both the
    wait for another instance's migration and the migration itself.
    """
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError(f"migration versions must be unique and increasing, got {versions}")
    applied: list[int] = []
    async with pool.connection() as conn:
        async with conn.transaction():
            await _lock(conn, lock, lock_timeout_s)
            # Under the lock: concurrent CREATE TABLE IF NOT EXISTS can otherwise collide.
            await conn.execute(_SCHEMA_MIGRATIONS)
        for migration in migrations:
            async with conn.transaction():
                await _lock(conn, lock, lock_timeout_s)
                cur = await conn.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = %s", (migration.version,)
                )
                if await cur.fetchone() is not None:
                    continue
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                applied.append(migration.version)
                log.info(
                    "migration applied",
                    extra={"version": migration.version, "migration": migration.name},
                )
    return applied


async def _lock(conn: AsyncConnection[TupleRow], key: int, timeout_s: float) -> None:
    # set_config(..., true) is SET LOCAL: it ends with the transaction, unlike the pool-wide limit.
    await conn.execute(
        "SELECT set_config('statement_timeout', %s, true)", (f"{int(timeout_s * 1000)}ms",)
    )
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
