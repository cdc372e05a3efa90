"""Push requests in PostgreSQL: recorded once per request_id, listed newest first."""

from __future__ import annotations

from typing import Any

from chatmesh.notify.v1 import notify_pb2

from svckit import pg
from svckit.pg import Migration, Pool

MIGRATION_LOCK = pg.lock_key("chatmesh.notify_svc.migrations")

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "notifications",
        (
            """
            CREATE TABLE notifications (
                seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                notification_id uuid   NOT NULL DEFAULT gen_random_uuid() UNIQUE,
                request_id      text   NOT NULL UNIQUE,
                recipient_id    text   NOT NULL,
                sender_id       text   NOT NULL,
                conversation_id text   NOT NULL,
                msg_id          bigint NOT NULL,
                state           smallint NOT NULL,
                created_at_ms   bigint NOT NULL
            )
            """,
            "CREATE INDEX notifications_recipient ON notifications (recipient_id, seq DESC)",
        ),
    ),
)

_COLUMNS = (
    "seq, notification_id, request_id, recipient_id, sender_id, conversation_id, msg_id, state,"
    " created_at_ms"
)


def _row(row: Any) -> tuple[int, notify_pb2.Notification]:
    return row[0], notify_pb2.Notification(
        notification_id=str(row[1]),
        request_id=row[2],
        recipient_id=row[3],
        sender_id=row[4],
        conversation_id=row[5],
        msg_id=row[6],
        state=row[7],
        created_at_ms=row[8],
    )


async def migrate(pool: Pool) -> list[int]:
    return await pg.migrate(pool, MIGRATIONS, lock=MIGRATION_LOCK)


class NotificationStore:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def enqueue(
        self, request: notify_pb2.EnqueueNotificationRequest, now_ms: int
    ) -> notify_pb2.Notification:
        """Record a push request; a repeated request_id returns the first record."""
        async with pg.connected(self._pool, "notification store") as conn:
            cur = await conn.execute(
                "INSERT INTO notifications (request_id, recipient_id, sender_id, conversation_id,"
                " msg_id, state, created_at_ms) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                f" ON CONFLICT (request_id) DO NOTHING RETURNING {_COLUMNS}",
                (
                    request.request_id,
                    request.recipient_id,
                    request.sender_id,
                    request.conversation_id,
                    request.msg_id,
                    notify_pb2.NOTIFICATION_STATE_PENDING,
                    now_ms,
                ),
            )
            row = await cur.fetchone()
            if row is None:
                cur = await conn.execute(
                    f"SELECT {_COLUMNS} FROM notifications WHERE request_id = %s",
                    (request.request_id,),
                )
                row = await cur.fetchone()
        assert row is not None  # inserted, or there since the conflict
        return _row(row)[1]

    async def list(
        self, recipient_id: str, limit: int, before_seq: int
    ) -> tuple[list[notify_pb2.Notification], int]:
        """Newest first; returns the page and the seq to continue before (0: no more)."""
        async with pg.connected(self._pool, "notification store") as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM notifications WHERE recipient_id = %s"
                " AND (%s = 0 OR seq < %s) ORDER BY seq DESC LIMIT %s",
                (recipient_id, before_seq, before_seq, limit + 1),
            )
            rows = [_row(r) for r in await cur.fetchall()]
        more = len(rows) > limit
        rows = rows[:limit]
        return [n for _, n in rows], (rows[-1][0] if more else 0)
