"""One load worker: an asyncio loop (uvloop) holding a share of the clients and of the rate.

The parent (`bench.runner`) starts each worker as its own process and drives it over a pipe:

    parent -> worker   ("stage", StageSpec) ... ("close",)
    worker -> parent   ("ready", index, info) ("progress", index, snapshot) ("done", index, result)
                       ("failed", index, text)

Clients come in pairs inside a worker (client 2i talks to 2i+1), so both ends of every message are
accounted in one place: the worker knows, for each stage, every send, every `message_ack` and every
`new_message`, and can tell at the end of the drain which acknowledged message never arrived.
Sends follow the open-loop schedule (`bench.schedule`): send k goes from client k mod n to its
peer, with its intended send time (monotonic nanoseconds) as the first word of its content, so the
recipient measures delivery latency from that time. Every frame carries a `client_msg_id`
`<run>.<stage>.<worker>.<k>` that routes its ack, error or delivery to its stage's ledger.

Received messages are acknowledged as PROTOCOL.md allows: an `ack` of a conversation's newest
msg_id covers the older ones, so each client acks each conversation at most once per
`ack_interval_s` (0: every message at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import orjson

from bench import stats
from bench.client import Account, Client, Frame, Outgoing, SetupError, ensure_account, login
from bench.ledger import StageLedger
from bench.schedule import NS, OpenLoopSchedule

OnProgress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    workers: int
    url: str
    clients: int  # even: clients come in pairs
    run_id: str
    content_bytes: int = 64
    ack_interval_s: float = 0.1
    max_retries: int = 3
    max_reconnects: int = 5
    setup_concurrency: int = 8
    connect_timeout_s: float = 30.0
    accounts: tuple[Account, ...] = ()  # reused before registering new ones

    def __post_init__(self) -> None:
        if self.clients < 2 or self.clients % 2:
            raise ValueError(f"a worker needs an even number of clients, got {self.clients}")


@dataclass(frozen=True)
class StageSpec:
    index: int
    total_rate: float  # messages per second, all workers together
    start_ns: int  # time.monotonic_ns() of the first intended send
    duration_s: float
    drain_s: float


@dataclass
class _Stage:
    spec: StageSpec
    schedule: OpenLoopSchedule
    ledger: StageLedger
    next_k: int = 0
    progress: list[dict[str, Any]] = field(default_factory=list)


class Worker:
    """A share of the clients; `setup()`, then `run_stage()` as often as asked, then `close()`."""

    def __init__(self, spec: WorkerSpec, on_progress: OnProgress | None = None) -> None:
        self.spec = spec
        self.on_progress = on_progress
        self.prefix = f"{spec.run_id}."
        self.http: aiohttp.ClientSession | None = None
        self.clients: list[Client] = []
        self.stages: dict[int, _Stage] = {}
        self.current: _Stage | None = None
        self.foreign = 0  # frames that belong to no stage of this run
        self.idle_errors: Counter[str] = Counter()  # error frames and closes between stages
        self._acker: asyncio.Task[None] | None = None
        self._answered = asyncio.Event()  # set by every ack, error and delivery of a stage

    # -- setup

    async def setup(self) -> list[Account]:
        spec = self.spec
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),  # every socket holds a connection
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=spec.connect_timeout_s),
        )
        gate = asyncio.Semaphore(spec.setup_concurrency)

        async def account(i: int) -> Account:
            async with gate:
                if i < len(spec.accounts):
                    return await self._reuse(spec.accounts[i])
                name = f"lt{spec.run_id}w{spec.index}c{i}"
                return await ensure_account(self.http_session, spec.url, name)

        accounts = await _gather_all([account(i) for i in range(spec.clients)])
        self.clients = [
            Client(
                self.http_session,
                spec.url,
                acc,
                self,
                max_reconnects=spec.max_reconnects,
                connect_timeout_s=spec.connect_timeout_s,
            )
            for acc in accounts
        ]
        for a, b in zip(self.clients[::2], self.clients[1::2], strict=True):
            a.peer, b.peer = b, a
        connect_gate = asyncio.Semaphore(max(spec.setup_concurrency, 32))

        async def connect(client: Client) -> None:
            async with connect_gate:
                await client.open()

        await _gather_all([connect(c) for c in self.clients])
        if spec.ack_interval_s > 0:
            self._acker = asyncio.create_task(self._ack_loop(), name="acks")
        return accounts

    @property
    def http_session(self) -> aiohttp.ClientSession:
        assert self.http is not None, "setup() first"
        return self.http

    async def _reuse(self, acc: Account) -> Account:
        """An account from an earlier run: keep its token if it still works, else log in."""
        url = f"{self.spec.url}/api/v1/users/{acc.user_id}"
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with self.http_session.get(
                url,
                headers={"Authorization": f"Bearer {acc.token}"},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                if resp.status == 200:
                    return acc
        return await login(self.http_session, self.spec.url, acc.username, acc.password)

    # -- a stage

    async def run_stage(self, spec: StageSpec) -> dict[str, Any]:
        schedule = OpenLoopSchedule.for_worker(
            spec.total_rate, spec.start_ns, spec.duration_s, self.spec.index, self.spec.workers
        )
        ledger = StageLedger(spec.index, schedule.end_ns, self.spec.max_retries)
        stage = _Stage(spec, schedule, ledger)
        self.stages[spec.index] = stage
        self.current = stage
        reporter = asyncio.create_task(self._report_progress(stage), name="progress")
        try:
            await self._send_on_schedule(stage)
            deadline = schedule.end_ns + round(spec.drain_s * NS)
            while not ledger.settled():
                remaining = deadline - time.monotonic_ns()
                if remaining <= 0:
                    break
                self._answered.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._answered.wait(), remaining / NS)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        result = ledger.result()
        result.update(
            worker=self.spec.index,
            scheduled=schedule.count,
            foreign=self.foreign,
            reconnects=sum(c.reconnects for c in self.clients),
            clients_gave_up=sum(c.gave_up for c in self.clients),
        )
        return result

    async def _send_on_schedule(self, stage: _Stage) -> None:
        schedule, ledger = stage.schedule, stage.ledger
        clients = self.clients
        n = len(clients)
        prefix = f"{self.prefix}{stage.spec.index}.{self.spec.index}."
        pad = "x" * max(0, self.spec.content_bytes - 20)
        dumps = orjson.dumps
        total = schedule.count
        while stage.next_k < total:
            now = time.monotonic_ns()
            due = schedule.due(now)
            if due <= stage.next_k:
                wait_ns = schedule.intended_ns(stage.next_k) - now
                await asyncio.sleep(max(wait_ns, 0) / NS)
                continue
            timestamp = int(time.time())
            for k in range(stage.next_k, due):
                intended = schedule.intended_ns(k)
                sender = clients[k % n]
                assert sender.peer is not None
                cmid = f"{prefix}{k}"
                text = dumps(
                    {
                        "action": "send_message",
                        "to": sender.peer.user_id,
                        "content": f"{intended} {pad}",
                        "timestamp": timestamp,
                        "client_msg_id": cmid,
                    }
                ).decode()
                ledger.scheduled(cmid, intended)
                sender.send(Outgoing(text, cmid, intended, ledger))
            stage.next_k = due
            await asyncio.sleep(0)  # let the writers and readers run between batches

    async def _report_progress(self, stage: _Stage) -> None:
        ledger, schedule = stage.ledger, stage.schedule
        tick = 0
        while True:
            tick += 1
            wake = stage.spec.start_ns + tick * NS
            await asyncio.sleep(max(wake - time.monotonic_ns(), 0) / NS)
            now = time.monotonic_ns()
            due = schedule.due(now)
            behind = now - schedule.intended_ns(stage.next_k) if due > stage.next_k else 0
            snapshot = {
                "stage": stage.spec.index,
                "tick": tick,
                "sent": ledger.sent,
                "acked": len(ledger.acked_ids),
                "received": len(ledger.received),
                "errors": sum(ledger.errors.values()),
                "pending": len(ledger.pending),
                "behind_ms": round(behind / 1e6, 1),
                "interval": stats.encode(ledger.interval_delivery),
            }
            ledger.interval_delivery.reset()
            if self.on_progress is not None:
                self.on_progress(snapshot)

    # -- acks

    async def _ack_loop(self) -> None:
        interval = self.spec.ack_interval_s
        while True:
            await asyncio.sleep(interval)
            for client in self.clients:
                if client.to_ack and client.connected.is_set():
                    client.flush_acks()

    # -- frames (bench.client.Handler)

    def _stage_of(self, client_msg_id: object) -> _Stage | None:
        if not isinstance(client_msg_id, str) or not client_msg_id.startswith(self.prefix):
            return None
        parts = client_msg_id.split(".")
        if len(parts) != 4 or not parts[1].isdigit():
            return None
        return self.stages.get(int(parts[1]))

    def on_frame(self, client: Client, frame: Frame, now_ns: int) -> None:
        action = frame.get("action")
        if action == "new_message":
            msg_id = str(frame.get("msg_id"))
            client.note_received(str(frame.get("conversation_id")), msg_id)
            if self.spec.ack_interval_s <= 0:
                client.flush_acks()
            stage = self._stage_of(frame.get("client_msg_id"))
            intended = _intended_ns(frame.get("content"))
            if stage is None or intended is None:
                self.foreign += 1
                return
            stage.ledger.on_receipt(msg_id, intended, now_ns)
            self._answered.set()
        elif action == "message_ack":
            cmid = frame.get("client_msg_id")
            stage = self._stage_of(cmid)
            if stage is None or not isinstance(cmid, str):
                self.foreign += 1
                return
            stage.ledger.on_ack(cmid, str(frame.get("msg_id")), now_ns)
            client.answered(cmid)
            self._answered.set()
        elif action == "error":
            code = str(frame.get("code") or "unknown")
            cmid = frame.get("client_msg_id")
            stage = self._stage_of(cmid)
            if stage is not None and isinstance(cmid, str):
                ledger = stage.ledger
                if ledger.on_error(code, cmid):
                    client.resend_later(cmid, 0.1 * 2 ** ledger.attempts[cmid])
                elif cmid not in ledger.pending:
                    client.answered(cmid)
                self._answered.set()
            elif self.current is not None:
                self.current.ledger.on_error(code, None)
            else:
                self.idle_errors[code] += 1

    def on_closed(self, client: Client, code: int | None) -> None:
        name = f"closed_{code}"
        if self.current is not None:
            self.current.ledger.errors[name] += 1
        else:
            self.idle_errors[name] += 1

    # -- end

    async def close(self) -> None:
        if self._acker is not None:
            self._acker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acker
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
        if self.http is not None:
            await self.http.close()


def _intended_ns(content: object) -> int | None:
    if not isinstance(content, str):
        return None
    head = content.split(" ", 1)[0]
    return int(head) if head.isdigit() else None


async def _gather_all(coros: list[Coroutine[Any, Any, Any]]) -> list[Any]:
    """All results, or the first failure after cancelling the rest."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# --------------------------------------------------------------------------------------------
# The worker process.


def run_worker(main: Coroutine[Any, Any, None]) -> None:
    """Run a worker process's event loop (uvloop where it builds); Ctrl-C is left to the parent,
    which stops its workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency everywhere it builds
        asyncio.run(main)
    else:
        uvloop.run(main)


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Process entry point (multiprocessing, spawn): serve the parent's commands until told."""
    run_worker(_serve(spec, conn))


async def _serve(spec: WorkerSpec, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    fd = conn.fileno()

    def readable() -> None:
        try:
            inbox.put_nowait(conn.recv())
        except (EOFError, OSError):  # the parent is gone
            loop.remove_reader(fd)
            inbox.put_nowait(("close",))

    def send(message: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):
            conn.send(message)

    loop.add_reader(fd, readable)
    worker = Worker(spec, on_progress=lambda p: send(("progress", spec.index, p)))
    try:
        accounts = await worker.setup()
        send(
            ("ready", spec.index, {"pid": os.getpid(), "accounts": [a.as_dict() for a in accounts]})
        )
        while True:
            command = await inbox.get()
            if command[0] != "stage":
                break
            send(("done", spec.index, await worker.run_stage(command[1])))
    except SetupError as exc:
        send(("failed", spec.index, str(exc)))
    except Exception:
        send(("failed", spec.index, traceback.format_exc()))
    finally:
        loop.remove_reader(fd)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(worker.close(), 10)
