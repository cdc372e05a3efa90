"""The message store on PostgreSQL, the embedded default.

Tables mirror the wide-column layout so the ScyllaDB store can keep the same shape:
- `messages`, primary key (conversation_id, msg_id): a conversation is one partition clustered by
  msg_id; history and sync are range scans of one partition;
- `message_locations` (msg_id -> conversation_id): finds the conversation of an `ack`;
- `user_conversations` (user_id, conversation_id): a user's conversation list with its newest
  msg_id, maintained by the writer (GREATEST, so replays and reordering are harmless);
- `device_positions` (user_id, device_id, conversation_id): what each device acknowledged;
- `read_positions` (user_id, conversation_id): the newest acknowledged by any device (unread);
- `applied_offsets` (topic, partition): the next log offset applied, written in the same
  transaction as the messages it covers.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from chatmesh.message.v1 import message_pb2
from psycopg.types.json import Jsonb

from persister.store import Ack, ConversationRow, LogRecord, SyncPage
from svckit import pg
from svckit.pg import Migration, Pool

MIGRATION_LOCK = pg.lock_key("chatmesh.persister.migrations")
CURSOR_RETENTION_MS = 7 * 24 * 3600 * 1000  # a cursor older than this means "from the acks"


def messages_table(name: str) -> str:
    """The messages table's DDL under `name` (the raw PostgreSQL baseline of `make bench`
    measures inserts into a table of the same shape)."""
    return f"""
            CREATE TABLE {name} (
                conversation_id  text   NOT NULL,
                msg_id           bigint NOT NULL,
                sender_id        text   NOT NULL,
                sender_device_id text   NOT NULL,
                recipient_id     text   NOT NULL,
                content          text   NOT NULL,
                client_msg_id    text   NOT NULL,
                client_ts        bigint NOT NULL,
                server_ts_ms     bigint NOT NULL,
                PRIMARY KEY (conversation_id, msg_id)
            )
            """


def insert_messages(name: str) -> str:
    """The persister's idempotent insert of one message row into table `name`."""
    return (
        f"INSERT INTO {name} ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING"
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "messages, conversation lists, device positions, applied offsets",
        (
            messages_table("messages"),
            """
            CREATE TABLE message_locations (
                msg_id          bigint PRIMARY KEY,
                conversation_id text   NOT NULL
            )
            """,
            """
            CREATE TABLE user_conversations (
                user_id         text   NOT NULL,
                conversation_id text   NOT NULL,
                peer_id         text   NOT NULL,
                last_msg_id     bigint NOT NULL,
                PRIMARY KEY (user_id, conversation_id)
            )
            """,
            "CREATE INDEX user_conversations_recent"
            " ON user_conversations (user_id, last_msg_id DESC)",
            """
            CREATE TABLE device_positions (
                user_id         text   NOT NULL,
                device_id       text   NOT NULL,
                conversation_id text   NOT NULL,
                acked_msg_id    bigint NOT NULL,
                PRIMARY KEY (user_id, device_id, conversation_id)
            )
            """,
            """
            CREATE TABLE read_positions (
                user_id         text   NOT NULL,
                conversation_id text   NOT NULL,
                read_msg_id     bigint NOT NULL,
                PRIMARY KEY (user_id, conversation_id)
            )
            """,
            """
            CREATE TABLE sync_cursors (
                handle     text   PRIMARY KEY,
                user_id    text   NOT NULL,
                device_id  text   NOT NULL,
                positions  jsonb  NOT NULL,
                created_ms bigint NOT NULL
            )
            """,
            "CREATE INDEX sync_cursors_age ON sync_cursors (created_ms)",
            """
            CREATE TABLE applied_offsets (
                topic       text    NOT NULL,
                partition   integer NOT NULL,
                next_offset bigint  NOT NULL,
                PRIMARY KEY (topic, partition)
            )
            """,
        ),
    ),
)

_COLUMNS = (
    "msg_id, conversation_id, sender_id, sender_device_id, recipient_id, content,"
    " client_msg_id, client_ts, server_ts_ms"
)


def _message(row: Sequence[Any]) -> message_pb2.Message:
    return message_pb2.Message(
        msg_id=row[0],
        conversation_id=row[1],
        sender_id=row[2],
        sender_device_id=row[3],
        recipient_id=row[4],
        content=row[5],
        client_msg_id=row[6],
        timestamp=row[7],
        server_ts_ms=row[8],
    )


async def migrate(pool: Pool) -> list[int]:
    return await pg.migrate(pool, MIGRATIONS, lock=MIGRATION_LOCK)


class PostgresMessageStore:
    """`persister.store.MessageStore` on PostgreSQL."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def _connected(self) -> Any:
        return pg.connected(self._pool, "message store")

    async def apply(
        self, records: Sequence[LogRecord], next_offsets: Mapping[tuple[str, int], int]
    ) -> None:
        if not records and not next_offsets:
            return
        messages = {r.message.msg_id: r.message for r in records}
        latest: dict[tuple[str, str], tuple[str, int]] = {}
        for m in messages.values():
            for user, peer in ((m.sender_id, m.recipient_id), (m.recipient_id, m.sender_id)):
                key = (user, m.conversation_id)
                if key not in latest or latest[key][1] < m.msg_id:
                    latest[key] = (peer, m.msg_id)
        offsets = dict(next_offsets)
        for r in records:
            offsets[r.topic, r.partition] = max(
                offsets.get((r.topic, r.partition), 0), r.offset + 1
            )
        async with self._connected() as conn, conn.transaction():
            cur = conn.cursor()
            await cur.executemany(
                insert_messages("messages"),
                [
                    (
                        m.msg_id,
                        m.conversation_id,
                        m.sender_id,
                        m.sender_device_id,
                        m.recipient_id,
                        m.content,
                        m.client_msg_id,
                        m.timestamp,
                        m.server_ts_ms,
                    )
                    for m in messages.values()
                ],
            )
            await cur.executemany(
                "INSERT INTO message_locations (msg_id, conversation_id) VALUES (%s, %s)"
                " ON CONFLICT DO NOTHING",
                [(m.msg_id, m.conversation_id) for m in messages.values()],
            )
            await cur.executemany(
                "INSERT INTO user_conversations (user_id, conversation_id, peer_id, last_msg_id)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (user_id, conversation_id) DO UPDATE"
                " SET last_msg_id = GREATEST(user_conversations.last_msg_id, EXCLUDED.last_msg_id)",
                [(u, c, peer, mid) for (u, c), (peer, mid) in sorted(latest.items())],
            )
            await cur.executemany(
                "INSERT INTO applied_offsets (topic, partition, next_offset) VALUES (%s, %s, %s)"
                " ON CONFLICT (topic, partition) DO UPDATE"
                " SET next_offset = GREATEST(applied_offsets.next_offset, EXCLUDED.next_offset)",
                [(t, p, o) for (t, p), o in sorted(offsets.items())],
            )

    async def applied_offsets(self, topic: str) -> dict[int, int]:
        async with self._connected() as conn:
            cur = await conn.execute(
                "SELECT partition, next_offset FROM applied_offsets WHERE topic = %s", (topic,)
            )
            return {int(p): int(o) for p, o in await cur.fetchall()}

    async def history(
        self, conversation_id: str, before_msg_id: int, limit: int
    ) -> list[message_pb2.Message]:
        async with self._connected() as conn:
            if before_msg_id:
                cur = await conn.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE conversation_id = %s AND msg_id < %s"
                    " ORDER BY msg_id DESC LIMIT %s",
                    (conversation_id, before_msg_id, limit),
                )
            else:
                cur = await conn.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE conversation_id = %s"
                    " ORDER BY msg_id DESC LIMIT %s",
                    (conversation_id, limit),
                )
            return [_message(row) for row in await cur.fetchall()]

    async def sync_page(
        self, user_id: str, device_id: str, from_positions: Mapping[str, int], limit: int
    ) -> SyncPage:
        async with self._connected() as conn:
            cur = await conn.execute(
                "SELECT conversation_id, acked_msg_id FROM device_positions"
                " WHERE user_id = %s AND device_id = %s",
                (user_id, device_id),
            )
            positions = {str(c): int(m) for c, m in await cur.fetchall()}
            for conv, pos in from_positions.items():
                positions[conv] = max(positions.get(conv, 0), pos)
            cur = await conn.execute(
                "SELECT conversation_id, last_msg_id FROM user_conversations WHERE user_id = %s"
                " ORDER BY conversation_id",
                (user_id,),
            )
            pending = [str(c) for c, last in await cur.fetchall() if last > positions.get(c, 0)]
            page: list[message_pb2.Message] = []
            covered: dict[str, int] = {}
            has_more = False
            for conv in pending:
                if len(page) >= limit:
                    has_more = True
                    break
                pos = positions.get(conv, 0)
                while True:
                    room = limit - len(page)
                    cur = await conn.execute(
                        f"SELECT {_COLUMNS} FROM messages WHERE conversation_id = %s"
                        " AND msg_id > %s ORDER BY msg_id LIMIT %s",
                        (conv, pos, room + 1),
                    )
                    rows = await cur.fetchall()
                    for row in rows:
                        if len(page) >= limit:
                            has_more = True
                            break
                        message = _message(row)
                        pos = message.msg_id
                        if not (
                            message.sender_id == user_id and message.sender_device_id == device_id
                        ):
                            page.append(message)
                    if has_more or len(rows) <= room:
                        break
                if pos > positions.get(conv, 0):
                    covered[conv] = pos
        return SyncPage(messages=page, positions=covered, has_more=has_more)

    async def conversations(self, user_id: str, limit: int) -> list[ConversationRow]:
        async with self._connected() as conn:
            cur = await conn.execute(
                "SELECT uc.conversation_id, uc.peer_id, uc.last_msg_id,"
                " COALESCE(rp.read_msg_id, 0)"
                " FROM user_conversations uc LEFT JOIN read_positions rp"
                " ON rp.user_id = uc.user_id AND rp.conversation_id = uc.conversation_id"
                " WHERE uc.user_id = %s ORDER BY uc.last_msg_id DESC LIMIT %s",
                (user_id, limit),
            )
            rows = await cur.fetchall()
            result: list[ConversationRow] = []
            for conv, peer, last_id, read_id in rows:
                cur = await conn.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE conversation_id = %s AND msg_id = %s",
                    (conv, last_id),
                )
                last = await cur.fetchone()
                if last is None:
                    continue
                cur = await conn.execute(
                    "SELECT count(*) FROM messages WHERE conversation_id = %s AND msg_id > %s"
                    " AND sender_id = %s",
                    (conv, read_id, peer),
                )
                unread = await cur.fetchone()
                result.append(
                    ConversationRow(
                        conversation_id=conv,
                        peer_id=peer,
                        last_message=_message(last),
                        unread=int(unread[0]) if unread else 0,
                    )
                )
            return result

    async def conversations_of(self, msg_ids: Sequence[int]) -> dict[int, str]:
        if not msg_ids:
            return {}
        async with self._connected() as conn:
            cur = await conn.execute(
                "SELECT msg_id, conversation_id FROM message_locations WHERE msg_id = ANY(%s)",
                (list(msg_ids),),
            )
            return {int(msg_id): str(conv) for msg_id, conv in await cur.fetchall()}

    async def ack(self, acks: Sequence[Ack]) -> dict[tuple[str, str, str], int]:
        if not acks:
            return {}
        # One row per position (ON CONFLICT may touch a row once per statement), in key order so
        # that two concurrent batches lock shared rows in the same order and cannot deadlock.
        devices: dict[tuple[str, str, str], int] = {}
        readers: dict[tuple[str, str], int] = {}
        for ack in acks:
            devices[ack.position] = max(devices.get(ack.position, 0), ack.msg_id)
            reader = (ack.user_id, ack.conversation_id)
            readers[reader] = max(readers.get(reader, 0), ack.msg_id)
        rows = sorted(devices.items())
        reads = sorted(readers.items())
        async with self._connected() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO device_positions (user_id, device_id, conversation_id, acked_msg_id)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[])"
                " ON CONFLICT (user_id, device_id, conversation_id)"
                " DO UPDATE SET acked_msg_id ="
                " GREATEST(device_positions.acked_msg_id, EXCLUDED.acked_msg_id)"
                " RETURNING user_id, device_id, conversation_id, acked_msg_id",
                (
                    [k[0] for k, _ in rows],
                    [k[1] for k, _ in rows],
                    [k[2] for k, _ in rows],
                    [v for _, v in rows],
                ),
            )
            after = {(u, d, c): int(v) for u, d, c, v in await cur.fetchall()}
            await conn.execute(
                "INSERT INTO read_positions (user_id, conversation_id, read_msg_id)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[])"
                " ON CONFLICT (user_id, conversation_id)"
                " DO UPDATE SET read_msg_id ="
                " GREATEST(read_positions.read_msg_id, EXCLUDED.read_msg_id)",
                ([k[0] for k, _ in reads], [k[1] for k, _ in reads], [v for _, v in reads]),
            )
        return after

    async def save_cursor(
        self, handle: str, user_id: str, device_id: str, positions: Mapping[str, int]
    ) -> None:
        now_ms = int(time.time() * 1000)
        async with self._connected() as conn:
            await conn.execute(
                "INSERT INTO sync_cursors (handle, user_id, device_id, positions, created_ms)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (handle) DO NOTHING",
                (handle, user_id, device_id, Jsonb(dict(positions)), now_ms),
            )
            if random.random() < 0.01:  # keep the table bounded without a separate job
                await conn.execute(
                    "DELETE FROM sync_cursors WHERE created_ms < %s",
                    (now_ms - CURSOR_RETENTION_MS,),
                )

    async def load_cursor(self, handle: str, user_id: str, device_id: str) -> dict[str, int] | None:
        async with self._connected() as conn:
            cur = await conn.execute(
                "SELECT positions FROM sync_cursors WHERE handle = %s AND user_id = %s"
                " AND device_id = %s AND created_ms >= %s",
                (handle, user_id, device_id, int(time.time() * 1000) - CURSOR_RETENTION_MS),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return {str(k): int(v) for k, v in row[0].items()}
