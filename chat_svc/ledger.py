"""The send ledger in Redis: what chat_svc accepted, for idempotency and per-conversation order.

- `chat:{sender}:sent:{client_msg_id}` holds the accepted record, prefixed `P` while it is being
  published and routed, and `D` once the log acknowledged it and live delivery was attempted. A
  retry on any instance, at any time within the retention, finds it and gets the same msg_id. A
  `P` record found by a retry (the first attempt died half way) is published and routed again:
  the persister's upsert by msg_id and the clients' dedupe by msg_id make that harmless.
- `chat:{conversation}:last` holds the newest msg_id given out in a conversation, so after a
  fail-over to another instance new ids continue above it (`IdGenerator.floor`). Ids are stored
  zero-padded, because Lua compares numbers as doubles and msg_ids need 63 bits.

A send costs three round trips: `lookup` (the record and the conversation's last id, pipelined),
`claim` (the pending record and the new last id, pipelined) and `mark_durable`. The two keys of
a pipeline live in different cluster slots (one is the sender's, one the conversation's), so
they are never one transaction; none needs to be: a claim that loses still advances the last id
to an id nobody uses, which only moves the floor up.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as redis
from chatmesh.message.v1 import message_pb2

PENDING = b"P"
DURABLE = b"D"

_ADVANCE = """
local current = redis.call('GET', KEYS[1])
if (not current) or current < ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return current
"""


@dataclass(frozen=True)
class Entry:
    durable: bool
    message: message_pb2.Message


def _sent_key(sender: str, client_msg_id: str) -> str:
    return f"chat:{{{sender}}}:sent:{client_msg_id}"


def _last_key(conversation: str) -> str:
    return f"chat:{{{conversation}}}:last"


def _parse(raw: bytes | str | None) -> Entry | None:
    if not isinstance(raw, bytes) or not raw:
        return None
    return Entry(durable=raw[:1] == DURABLE, message=message_pb2.Message.FromString(raw[1:]))


class SendLedger:
    def __init__(self, client: redis.Redis, retention_s: int) -> None:
        self.client = client
        self.retention_ms = retention_s * 1000

    async def get(self, sender: str, client_msg_id: str) -> Entry | None:
        return _parse(await self.client.get(_sent_key(sender, client_msg_id)))

    async def lookup(
        self, sender: str, client_msg_id: str, conversation: str
    ) -> tuple[Entry | None, int]:
        """The sender's record of `client_msg_id` if any, and the conversation's last msg_id."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(_sent_key(sender, client_msg_id))
            pipe.get(_last_key(conversation))
            raw, last = await pipe.execute()
        return _parse(raw), int(last) if last else 0

    async def claim(self, message: message_pb2.Message) -> Entry | None:
        """Record `message` as pending and its msg_id as the conversation's newest (unless a
        newer one is); if another attempt got there first, return its entry instead."""
        key = _sent_key(message.sender_id, message.client_msg_id)
        value = PENDING + message.SerializeToString()
        async with self.client.pipeline(transaction=False) as pipe:
            # SET NX GET (Redis 7): sets when absent and answers the earlier value, if any.
            pipe.set(key, value, nx=True, px=self.retention_ms, get=True)
            # EVAL, not a registered script: redis-py checks a pipeline's scripts with SCRIPT
            # EXISTS before every execution, a round trip of its own.
            pipe.eval(
                _ADVANCE,
                1,
                _last_key(message.conversation_id),
                f"{message.msg_id:020d}",
                self.retention_ms,
            )
            earlier, _ = await pipe.execute()
        return _parse(earlier)

    async def mark_durable(self, message: message_pb2.Message) -> None:
        key = _sent_key(message.sender_id, message.client_msg_id)
        await self.client.set(key, DURABLE + message.SerializeToString(), px=self.retention_ms)
