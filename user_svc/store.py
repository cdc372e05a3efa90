"""The accounts database: PostgreSQL through psycopg 3 and one async connection pool.

Why the pieces are as they are:
- Schema changes are `MIGRATIONS`, applied at start by `migrate()` (svckit.pg: one transaction
  per migration under an advisory lock, safe from any number of instances at once).
- Only `sha256(token)` is stored. Tokens carry 256 random bits, so a fast hash is enough to make a
  leaked table useless for logging in, and it keeps lookups an index probe.
- Usernames are unique by constraint: `create_user` inserts and maps the violation to
  `UsernameTaken`, which is race-free where check-then-insert is not.
- Times used in predicates (`expires_at > now`) come from the caller's clock, so tests can move
  time and every replica judges expiry by the same rule.
- A database that cannot be reached (pool timeout, lost connection, statement timeout) becomes
  `svckit.errors.Unavailable`, which callers may retry, never an opaque INTERNAL.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime

from psycopg import AsyncConnection, errors
from psycopg.rows import TupleRow, class_row

from svckit import pg
from svckit.pg import DatabaseUnreachable, Migration, Pool, describe_dsn, open_pool

__all__ = ["DatabaseUnreachable", "Migration", "describe_dsn", "open_pool"]

# Advisory locks are scoped to one database, so this only contends with other user_svc instances.
MIGRATION_LOCK = pg.lock_key("chatmesh.user_svc.migrations")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "users and sessions",
        (
            """
            CREATE TABLE users (
                user_id       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                username      text NOT NULL,
                display_name  text NOT NULL,
                password_hash text NOT NULL,
                created_at    timestamptz NOT NULL DEFAULT now(),
                CONSTRAINT users_username_key UNIQUE (username),
                CONSTRAINT users_username_format CHECK (username ~ '^[a-z0-9_.]{3,32}$')
            )
            """,
            """
            CREATE TABLE sessions (
                session_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                token_hash bytea NOT NULL,
                user_id    uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
                device_id  text NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                expires_at timestamptz NOT NULL,
                revoked_at timestamptz,
                CONSTRAINT sessions_token_hash_key UNIQUE (token_hash),
                CONSTRAINT sessions_token_hash_len CHECK (octet_length(token_hash) = 32)
            )
            """,
            # A user's sessions (logout everywhere, listing devices) and the FK's cascade.
            "CREATE INDEX sessions_user_id_idx ON sessions (user_id)",
        ),
    ),
)


class UsernameTaken(Exception):
    """The username is already registered (the unique constraint said so)."""


@dataclass(frozen=True)
class UserRecord:
    """A row of `users`; the hash never leaves user_svc."""

    user_id: uuid.UUID
    username: str
    display_name: str
    password_hash: str
    created_at: datetime


@dataclass(frozen=True)
class SessionRecord:
    """A row of `sessions`, without its token hash."""

    session_id: uuid.UUID
    user_id: uuid.UUID
    device_id: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


async def migrate(
    pool: Pool, migrations: Sequence[Migration] = MIGRATIONS, *, lock_timeout_s: float = 60.0
) -> list[int]:
    """Apply the accounts migrations this database lacks (svckit.pg.migrate)."""
    return await pg.migrate(pool, migrations, lock=MIGRATION_LOCK, lock_timeout_s=lock_timeout_s)


def connected(pool: Pool) -> AbstractAsyncContextManager[AsyncConnection[TupleRow]]:
    return pg.connected(pool, "accounts database")


_USER_COLUMNS = "user_id, username, display_name, password_hash, created_at"
_SESSION_COLUMNS = "session_id, user_id, device_id, created_at, expires_at, revoked_at"


class UserStore:
    """Accounts and sessions in PostgreSQL. Holds the pool; does not own it (build() does)."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def create_user(self, username: str, display_name: str, password_hash: str) -> UserRecord:
        """Insert an account; UsernameTaken when the unique constraint refuses the name."""
        try:
            async with connected(self._pool) as conn:
                cur = conn.cursor(row_factory=class_row(UserRecord))
                await cur.execute(
                    f"INSERT INTO users (username, display_name, password_hash)"
                    f" VALUES (%s, %s, %s) RETURNING {_USER_COLUMNS}",
                    (username, display_name, password_hash),
                )
                row = await cur.fetchone()
        except errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "users_username_key":
                raise UsernameTaken(username) from exc
            raise
        assert row is not None  # INSERT ... RETURNING always yields the row
        return row

    async def user_by_id(self, user_id: uuid.UUID) -> UserRecord | None:
        return await self._one_user("user_id = %s", user_id)

    async def user_by_username(self, username: str) -> UserRecord | None:
        return await self._one_user("username = %s", username)

    async def _one_user(self, where: str, value: object) -> UserRecord | None:
        async with connected(self._pool) as conn:
            cur = conn.cursor(row_factory=class_row(UserRecord))
            await cur.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE {where}", (value,))
            return await cur.fetchone()

    async def set_password_hash(self, user_id: uuid.UUID, password_hash: str) -> None:
        """Replace a hash (after a rehash with stronger parameters)."""
        async with connected(self._pool) as conn:
            await conn.execute(
                "UPDATE users SET password_hash = %s WHERE user_id = %s", (password_hash, user_id)
            )

    async def create_session(
        self,
        *,
        user_id: uuid.UUID,
        device_id: str,
        token_digest: bytes,
        created_at: datetime,
        expires_at: datetime,
    ) -> SessionRecord:
        async with connected(self._pool) as conn:
            cur = conn.cursor(row_factory=class_row(SessionRecord))
            await cur.execute(
                "INSERT INTO sessions (token_hash, user_id, device_id, created_at, expires_at)"
                f" VALUES (%s, %s, %s, %s, %s) RETURNING {_SESSION_COLUMNS}",
                (token_digest, user_id, device_id, created_at, expires_at),
            )
            row = await cur.fetchone()
        assert row is not None  # INSERT ... RETURNING always yields the row
        return row

    async def active_session(self, token_digest: bytes, now: datetime) -> SessionRecord | None:
        """The session behind a token hash, unless it is unknown, revoked or expired at `now`."""
        async with connected(self._pool) as conn:
            cur = conn.cursor(row_factory=class_row(SessionRecord))
            await cur.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions"
                " WHERE token_hash = %s AND revoked_at IS NULL AND expires_at > %s",
                (token_digest, now),
            )
            return await cur.fetchone()

    async def revoke_session(self, token_digest: bytes, now: datetime) -> SessionRecord | None:
        """Mark a session revoked (keeping the first revocation time); None if unknown.

        Idempotent: revoking a revoked session returns it unchanged.
        """
        async with connected(self._pool) as conn:
            cur = conn.cursor(row_factory=class_row(SessionRecord))
            await cur.execute(
                "UPDATE sessions SET revoked_at = coalesce(revoked_at, %s)"
                f" WHERE token_hash = %s RETURNING {_SESSION_COLUMNS}",
                (now, token_digest),
            )
            return await cur.fetchone()
