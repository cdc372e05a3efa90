"""`make bench-connections`: idle WebSockets held by one gateway instance, and a reconnect storm.

What it does, in order (`python -m bench.connections --sockets N`, default 5,000):

1. raises this process's RLIMIT_NOFILE soft limit to the hard limit (the mesh's children, Envoy
   and the gateway, inherit it: each socket costs the client one descriptor, Envoy two and the
   gateway one), and starts the whole mesh (`launcher.mesh.Mesh`) on free ports with ONE gateway
   instance, so every socket lands on it, and cheap argon2 settings (setup only);
2. registers N users through the edge and logs each in once: one user, one device, one session
   token per socket (a device holds one socket; the gateway would accept several sockets on one
   token, but that is not what clients do). Setup is timed and reported, never measured against;
3. restarts the gateway, so the baseline is a process that served nothing but a warm-up of a few
   sockets (opened, registered, closed); then opens the N sockets through Envoy's edge, as
   clients do, from `--workers` client processes, and waits until presence_svc lists a live
   connection for every one of the N users and the gateway's `chatmesh_ws_connections` gauge says
   N. Memory per idle socket = (RSS after - RSS before) / N, for the gateway and for Envoy, each
   once its RSS has settled (three samples a second apart within 0.5%); Valkey's memory and key
   count show what presence keeps per socket. The client side is not counted;
4. reconnect storm: a second generation of client processes is started and ready (each holding
   the tokens of its share), then the first generation is SIGKILLed, dropping all N sockets at
   once (the kernel closes them; Envoy and the gateway see every socket end), and right after,
   all N clients connect at the same instant. Measured from that instant until every socket is
   upgraded AND presence lists, for every user, a connection that was not there before the storm
   (so an entry of the old socket not withdrawn yet never counts). A refused or failed attempt is
   retried at once up to the deadline, as a client would; attempts are counted. Reported: total
   time, sockets/s, per-socket connect latency (from its attempt to the upgrade) p50/p90/p99/max.
   With `--resume` a second storm follows where each client connects with `?resume=` (empty
   cursor: the server writes its backlog, here empty, before live frames);
5. prints a report and writes JSON to `bench/results/connections-<time>.json` and
   `bench/results/latest-connections.json`.

Every wait has a deadline; nothing sleeps and hopes. Exit status 0, or 2 when the run could not
be carried out (a deadline passed, a worker failed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
NS = 1_000_000_000
GAUGE = "chatmesh_ws_connections"
PRESENCE_BATCH = 500  # user ids per GetConnections call
SETTLE_TOLERANCE = 0.005  # RSS samples within 0.5% of each other count as settled
RETRY_FIRST_S = 0.1  # a client's pause before its first retry, doubled each time, jittered
RETRY_MAX_S = 2.0

Out = Callable[[str], None]


class BenchFailed(Exception):
    """The run could not be carried out; the message says what and where."""


# --------------------------------------------------------------------------------------------
# Pure parts (unit-tested).


def shares(total: int, workers: int) -> list[int]:
    """`total` split over `workers` as evenly as possible, larger shares first, no empty one."""
    if total < 1 or workers < 1:
        raise ValueError("need at least one socket and one worker")
    workers = min(workers, total)
    base, extra = divmod(total, workers)
    return [base + (i < extra) for i in range(workers)]


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least pct% of values at or below)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil without floats drifting
    return ordered[min(int(rank), len(ordered)) - 1]


def latency_summary(values_ms: Sequence[float]) -> dict[str, Any]:
    """count, p50/p90/p99, max and mean of latencies in milliseconds, rounded to 0.1 ms."""

    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "count": len(values_ms),
        "p50_ms": r(percentile(values_ms, 50)),
        "p90_ms": r(percentile(values_ms, 90)),
        "p99_ms": r(percentile(values_ms, 99)),
        "max_ms": r(max(values_ms, default=None)),
        "mean_ms": r(sum(values_ms) / len(values_ms) if values_ms else None),
    }


def per_socket_kib(before_bytes: int, after_bytes: int, sockets: int) -> float:
    """Memory growth per socket, in KiB (negative when the process shrank)."""
    if sockets < 1:
        raise ValueError("no sockets")
    return round((after_bytes - before_bytes) / sockets / 1024, 2)


def settled(samples: Sequence[int], count: int = 3, tolerance: float = SETTLE_TOLERANCE) -> bool:
    """The last `count` samples are within `tolerance` (relative) of each other."""
    if len(samples) < count:
        return False
    last = samples[-count:]
    low, high = min(last), max(last)
    return high - low <= tolerance * max(high, 1)


def gauge_value(exposition: str, name: str) -> float | None:
    """The value of an unlabelled metric in Prometheus' text exposition; None when absent."""
    for line in exposition.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key == name:
            return float(value.split()[0])
    return None


def users_with_new_connection(
    entries: Iterable[tuple[str, str]], old_ids: Mapping[str, frozenset[str]]
) -> set[str]:
    """Users (of `entries`: (user_id, connection_id)) with a connection not in their old ids."""
    return {user for user, conn_id in entries if conn_id not in old_ids.get(user, frozenset())}


def storm_figures(
    start_ns: int, upgraded_ns: Sequence[int], confirmed_ns: int, sockets: int
) -> dict[str, Any]:
    """Total time of a storm (to the later of the last upgrade and the presence confirmation)
    and the accepted rate over it."""
    end_ns = max([confirmed_ns, *upgraded_ns])
    total_s = max(end_ns - start_ns, 1) / NS
    last_upgrade_s = (max(upgraded_ns) - start_ns) / NS if upgraded_ns else None
    return {
        "total_s": round(total_s, 3),
        "sockets_per_s": round(sockets / total_s, 1),
        "last_upgrade_s": None if last_upgrade_s is None else round(last_upgrade_s, 3),
        "presence_confirmed_s": round((confirmed_ns - start_ns) / NS, 3),
    }


def raise_nofile_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def fds_needed(sockets: int) -> dict[str, int]:
    """Descriptors each process needs with every socket open, with a margin for the rest: the
    clients one per socket (all workers together), Envoy two (downstream and upstream), the
    gateway one. In a storm the old sockets are closed before the new ones are opened."""
    return {"client": sockets + 256, "envoy": 2 * sockets + 512, "gateway": sockets + 256}


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} KiB"


def report_lines(result: Mapping[str, Any]) -> list[str]:
    """The human-readable report of a run (`result` as written to the JSON)."""
    n = result["sockets"]
    mem = result["memory"]
    gw, envoy, valkey = mem["gateway"], mem["envoy"], mem["valkey"]
    setup = result["setup"]
    lines = [
        f"chatmesh connections, {result['started_at']}: {n:,} idle sockets on one gateway, "
        f"through Envoy's edge, clients in {result['workers']} processes "
        f"({result['machine']['cores']} cores)",
        f"  setup (not measured): {n:,} users registered and logged in in "
        f"{setup['accounts_s']:.1f} s ({setup['accounts_per_s']:.0f}/s, cheap argon2)",
        f"  gateway RSS {gw['before_mib']:.1f} MiB -> {gw['after_mib']:.1f} MiB: "
        f"{_kib(gw['per_socket_kib'])} per idle socket (USS {_kib(gw['uss_per_socket_kib'])})"
        f"; {_verdict(gw['per_socket_kib'], result['target_kib'])}",
        f"  envoy RSS {envoy['before_mib']:.1f} MiB -> {envoy['after_mib']:.1f} MiB: "
        f"{_kib(envoy['per_socket_kib'])} per socket (a downstream and an upstream connection)",
        f"  valkey (presence) {valkey['before_mib']:.2f} MiB -> {valkey['after_mib']:.2f} MiB: "
        f"{_kib(valkey['per_socket_kib'])} per socket; keys {valkey['keys_before']:,} -> "
        f"{valkey['keys_after']:,}",
        f"  opening the {n:,} sockets (gated, not the storm) took {mem['open_s']:.1f} s",
    ]
    for storm in result["storms"]:
        lat = storm["connect_latency"]
        lines.append(
            f"  reconnect storm{' with ?resume=' if storm['resume'] else ''}: {n:,} sockets "
            f"dropped at once and reconnected in {storm['total_s']:.2f} s "
            f"({storm['sockets_per_s']:,.0f} sockets/s; last upgrade at "
            f"{storm['last_upgrade_s']:.2f} s, all in presence at "
            f"{storm['presence_confirmed_s']:.2f} s); connect latency p50 {lat['p50_ms']} ms, "
            f"p90 {lat['p90_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms; "
            f"{storm['attempts'] - n} retried attempts"
            + (f" ({_counts(storm['errors'])})" if storm["errors"] else "")
        )
        lines.append(
            f"    old entries withdrawn from presence {storm['old_withdrawn_s']:.2f} s after the "
            f"drop; gateway {storm['gateway_cpu_s']:.1f} s CPU, envoy "
            f"{storm['envoy_cpu_s']:.1f} s, clients {storm['client_cpu_s']:.1f} s"
        )
    return lines


def _verdict(kib: float | None, target: float) -> str:
    if kib is None:
        return "no figure"
    return f"{'under' if kib < target else 'OVER'} the {target:g} KiB target"


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(counter.items()))


# --------------------------------------------------------------------------------------------
# Client worker processes.


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    url: str  # the edge, http://host:port
    connect_timeout_s: float = 30.0


class _Sockets:
    """A worker's sockets: register accounts, open one socket per token, keep reading."""

    def __init__(self, spec: WorkerSpec) -> None:
        import aiohttp

        self.spec = spec
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=spec.connect_timeout_s),
        )
        self.sockets: list[Any] = []
        self.readers: list[asyncio.Task[None]] = []
        self.closed_by_server: Counter[str] = Counter()

    async def register(self, usernames: Sequence[str], concurrency: int) -> list[dict[str, str]]:
        from bench.client import ensure_account

        gate = asyncio.Semaphore(concurrency)

        async def one(name: str) -> dict[str, str]:
            async with gate:
                account = await ensure_account(self.http, self.spec.url, name)
                return account.as_dict()

        return list(await asyncio.gather(*(one(n) for n in usernames)))

    async def open(
        self,
        tokens: Sequence[str],
        start_ns: int,
        deadline_s: float,
        resume: bool,
        concurrency: int,
    ) -> dict[str, Any]:
        """One socket per token; every attempt starts at `start_ns` (or when the gate lets it);
        a failed attempt is retried at once until the deadline."""
        import aiohttp

        from bench.client import ws_url

        url = ws_url(self.spec.url)
        params = {"resume": ""} if resume else None
        deadline_ns = start_ns + round(deadline_s * NS)
        gate = asyncio.Semaphore(concurrency) if concurrency > 0 else None
        latencies_ms: list[float] = []
        upgraded_ns: list[int] = []
        attempts = 0
        errors: Counter[str] = Counter()

        async def one(token: str) -> None:
            nonlocal attempts
            backoff = RETRY_FIRST_S
            async with gate if gate is not None else contextlib.nullcontext():
                first = time.monotonic_ns()
                tried = False
                while True:
                    if tried:
                        # As a client does: a jittered, doubling pause before trying again.
                        await asyncio.sleep(backoff * (0.5 + random.random()))
                        backoff = min(backoff * 2, RETRY_MAX_S)
                    attempts += 1
                    tried = True
                    began = time.monotonic_ns()
                    remaining = (deadline_ns - began) / NS
                    if remaining <= 0:
                        raise BenchFailed(f"worker {self.spec.index}: a socket missed the deadline")
                    try:
                        ws = await asyncio.wait_for(
                            self.http.ws_connect(
                                url,
                                headers={"Authorization": f"Bearer {token}"},
                                params=params,
                                autoping=True,
                                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                            ),
                            min(remaining, self.spec.connect_timeout_s),
                        )
                    except aiohttp.WSServerHandshakeError as exc:
                        errors[f"http_{exc.status}"] += 1
                        continue
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        errors[type(exc).__name__] += 1
                        continue
                    done = time.monotonic_ns()
                    latencies_ms.append((done - first) / 1e6)  # retries included
                    upgraded_ns.append(done)
                    self.sockets.append(ws)
                    self.readers.append(asyncio.create_task(self._read(ws)))
                    return

        delay = (start_ns - time.monotonic_ns()) / NS
        if delay > 0:
            await asyncio.sleep(delay)
        await asyncio.gather(*(one(t) for t in tokens))
        return {
            "latencies_ms": latencies_ms,
            "upgraded_ns": upgraded_ns,
            "attempts": attempts,
            "errors": dict(errors),
        }

    async def _read(self, ws: Any) -> None:
        """Read until the socket ends (aiohttp answers the server's pings while reading)."""
        import aiohttp

        with contextlib.suppress(aiohttp.ClientError, ConnectionError):
            async for _ in ws:
                pass
        self.closed_by_server[str(ws.close_code)] += 1

    async def close_all(self) -> dict[str, int]:
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        closed = len(self.sockets)
        self.sockets, self.readers = [], []
        self.closed_by_server.clear()
        return {"closed": closed}

    async def status(self) -> dict[str, Any]:
        alive = sum(not ws.closed for ws in self.sockets)
        return {"alive": alive, "closed_by_server": dict(self.closed_by_server)}

    async def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.close_all(), 10)
        await self.http.close()


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Process entry point (spawn): serve the parent's commands until `exit` or EOF."""
    from bench.worker import run_worker

    run_worker(_serve(spec, conn))


async def _serve(spec: WorkerSpec, conn: Connection) -> None:
    # Commands are read in a thread: the pipe stays blocking, so large answers (the accounts)
    # are written whole.
    def receive() -> tuple[Any, ...]:
        try:
            message: tuple[Any, ...] = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return ("exit",)
        return message

    sockets = _Sockets(spec)
    conn.send(("ready", spec.index, {"pid": os.getpid()}))
    try:
        while True:
            command, *args = await asyncio.to_thread(receive)
            if command == "exit":
                break
            try:
                if command == "register":
                    answer: Any = await sockets.register(*args)
                elif command == "open":
                    answer = await sockets.open(*args)
                elif command == "close":
                    answer = await sockets.close_all()
                elif command == "status":
                    answer = await sockets.status()
                else:
                    raise BenchFailed(f"unknown command {command!r}")
            except Exception as exc:
                text = str(exc) if isinstance(exc, BenchFailed) else traceback.format_exc()
                conn.send(("failed", spec.index, text))
            else:
                conn.send(("done", spec.index, answer))
    finally:
        await sockets.shutdown()


class Workers:
    """A generation of client processes and their pipes; commands go to all, answers come back
    in worker order."""

    def __init__(self, url: str, count: int, label: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.procs: list[BaseProcess] = []
        self.conns: list[Connection] = []
        for index in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main,
                args=(WorkerSpec(index, url), child),
                name=f"conn-{label}-{index}",
                daemon=True,
            )
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
        self.pids = [int(p["pid"]) for p in self._collect("ready", 60)]

    def ask(self, per_worker: Sequence[tuple[Any, ...]], timeout_s: float) -> list[Any]:
        for conn, command in zip(self.conns, per_worker, strict=True):
            conn.send(command)
        return self._collect("done", timeout_s)

    def _collect(self, kind: str, timeout_s: float) -> list[Any]:
        answers: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        while len(answers) < len(self.conns):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchFailed(f"client workers: no answer within {timeout_s:g} s")
            for conn in wait(self.conns, remaining):
                assert isinstance(conn, Connection)
                index = self.conns.index(conn)
                try:
                    got, who, payload = conn.recv()
                except (EOFError, OSError):
                    code = self.procs[index].exitcode
                    raise BenchFailed(f"client worker {index} exited (code {code})") from None
                if got == "failed":
                    raise BenchFailed(f"client worker {who} failed: {payload}")
                if got != kind:
                    raise BenchFailed(f"client worker {who}: expected {kind}, got {got}")
                answers[who] = payload
        return [answers[i] for i in range(len(self.conns))]

    def kill(self) -> None:
        """SIGKILL every worker at once: the kernel drops all their sockets."""
        for proc in self.procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            proc.join(10)
        for conn in self.conns:
            conn.close()

    def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("exit",))
        deadline = time.monotonic() + 15
        for proc in self.procs:
            proc.join(max(deadline - time.monotonic(), 0.1))
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for conn in self.conns:
            conn.close()


# --------------------------------------------------------------------------------------------
# Observing the mesh.


def _rss(pid: int) -> tuple[int, int]:
    """(RSS, USS) of one process, in bytes."""
    import psutil

    full = psutil.Process(pid).memory_full_info()
    return int(full.rss), int(full.uss)


def _cpu_s(pids: Iterable[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def settled_rss(pids: Mapping[str, int], deadline_s: float, out: Out) -> dict[str, tuple[int, int]]:
    """RSS and USS of each process once every one of them settled (or at the deadline)."""
    samples: dict[str, list[int]] = {name: [] for name in pids}
    end = time.monotonic() + deadline_s
    while True:
        latest = {name: _rss(pid) for name, pid in pids.items()}
        for name, (rss, _) in latest.items():
            samples[name].append(rss)
        if all(settled(s) for s in samples.values()):
            return latest
        if time.monotonic() > end:
            out(f"  memory did not settle within {deadline_s:g} s; taking the last sample")
            return latest
        time.sleep(1.0)


def metric_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - our own endpoint
        return str(resp.read().decode())


def wait_for(
    what: str, check: Callable[[], bool], deadline_s: float, interval_s: float = 0.05
) -> float:
    """Poll `check` until it holds; seconds waited. BenchFailed at the deadline."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > deadline_s:
            raise BenchFailed(f"{what}: not within {deadline_s:g} s")
        time.sleep(interval_s)
    return time.monotonic() - t0


class Presence:
    """GetConnections straight to presence_svc (not through Envoy, whose memory is measured)."""

    def __init__(self, addr: str) -> None:
        import grpc
        from chatmesh.presence.v1 import presence_pb2, presence_pb2_grpc

        self._pb = presence_pb2
        self._channel = grpc.insecure_channel(addr)
        self._stub = presence_pb2_grpc.PresenceServiceStub(self._channel)

    def connections(self, user_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(user_id, connection_id) of every live socket of these users."""
        result: list[tuple[str, str]] = []
        for start in range(0, len(user_ids), PRESENCE_BATCH):
            batch = list(user_ids[start : start + PRESENCE_BATCH])
            reply = self._stub.GetConnections(
                self._pb.GetConnectionsRequest(user_ids=batch), timeout=30
            )
            result.extend((c.user_id, c.connection_id) for c in reply.connections)
        return result

    def close(self) -> None:
        self._channel.close()


def _valkey(url: str) -> tuple[int, int]:
    """(used_memory bytes, keys) of the presence Valkey."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        info = client.info("memory")
        return int(info["used_memory"]), int(client.dbsize())
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# The run.


@dataclass(frozen=True)
class Options:
    sockets: int = 5000
    workers: int = 2
    warmup: int = 50
    resume: bool = False
    open_concurrency: int = 200  # per worker, while opening the idle sockets (not the storm)
    register_concurrency: int = 16  # per worker
    deadline_s: float = 180.0  # of every wait
    target_kib: float = 30.0
    fsync: bool = False
    state_dir: Path | None = None  # keep the mesh's state and logs there (default: temporary)


def _split(items: Sequence[Any], parts: Sequence[int]) -> list[list[Any]]:
    out, start = [], 0
    for size in parts:
        out.append(list(items[start : start + size]))
        start += size
    return out


def run(opts: Options, out: Out) -> dict[str, Any]:
    from bench.suite import CHEAP_ARGON2
    from launcher.mesh import Mesh, PortPlan

    soft, hard = raise_nofile_limit()
    need = fds_needed(opts.sockets)
    out(f"RLIMIT_NOFILE {soft}/{hard} (inherited by the mesh); needed {need}")
    if max(need.values()) > soft:
        raise BenchFailed(
            f"RLIMIT_NOFILE soft limit {soft} is below the {max(need.values())} descriptors "
            f"{opts.sockets} sockets need (Envoy holds two per socket): raise the hard limit"
        )
    result: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "sockets": opts.sockets,
        "workers": opts.workers,
        "warmup": opts.warmup,
        "target_kib": opts.target_kib,
        "nofile": {"soft": soft, "hard": hard},
    }
    with tempfile.TemporaryDirectory(prefix="chatmesh-conn-") as tmp:
        mesh = Mesh(
            PortPlan.free(gateways=1),
            opts.state_dir or Path(tmp) / "mesh",
            fsync=opts.fsync,
            out=lambda line: out(f"  {line}"),
            ready_timeout_s=120,
            service_env=CHEAP_ARGON2,
        )
        out("== the mesh, one gateway instance")
        mesh.start()
        try:
            _measure(mesh, opts, result, out)
        finally:
            mesh.stop()
            mesh.clean()
    return result


def _measure(mesh: Any, opts: Options, result: dict[str, Any], out: Out) -> None:
    n = opts.sockets
    parts = shares(n, opts.workers)
    url = mesh.edge_url
    gen = Workers(url, len(parts), "a")
    others: list[Workers] = []
    presence = Presence(f"127.0.0.1:{mesh.ports.presence}")
    try:
        # -- setup: one user, one device, one session token per socket
        run_id = os.urandom(3).hex()
        names = [f"cx{run_id}u{i}" for i in range(n)]
        out(f"== setup: registering and logging in {n:,} users through the edge")
        t0 = time.monotonic()
        answers = gen.ask(
            [("register", chunk, opts.register_concurrency) for chunk in _split(names, parts)],
            opts.deadline_s * 10,
        )
        accounts = [a for chunk in answers for a in chunk]
        took = time.monotonic() - t0
        result["setup"] = {"accounts_s": round(took, 1), "accounts_per_s": round(n / took, 1)}
        out(f"  {n:,} accounts in {took:.1f} s ({n / took:.0f}/s)")
        tokens = [a["token"] for a in accounts]
        users = [a["user_id"] for a in accounts]

        # -- a fresh gateway, warmed up by a few sockets
        out("== restarting the gateway for a clean baseline; warm-up")
        gateway = mesh.restart_instance("gateway-1")
        gw_pid, envoy_pid = gateway.pid, mesh.instance("envoy").pid
        assert gw_pid is not None and envoy_pid is not None
        metrics_url = gateway.metrics_url

        def gauge() -> float | None:
            return gauge_value(metric_text(metrics_url), GAUGE)

        warm = min(opts.warmup, n)
        if warm:
            _open(gen, [tokens[:warm]] + [[] for _ in parts[1:]], opts, 0, out)
            wait_for(
                "warm-up sockets in presence",
                lambda: _all_live(presence, users[:warm]),
                opts.deadline_s,
            )
            gen.ask([("close",)] * len(parts), opts.deadline_s)
            wait_for(
                "warm-up sockets gone",
                lambda: gauge() == 0 and not presence.connections(users[:warm]),
                opts.deadline_s,
            )
        pids = {"gateway": gw_pid, "envoy": envoy_pid}
        before = settled_rss(pids, 30, out)
        valkey_before = _valkey(mesh.redis_url)

        # -- N idle sockets
        out(f"== opening {n:,} sockets")
        t0 = time.monotonic()
        _open(gen, _split(tokens, parts), opts, opts.open_concurrency, out)
        opened_s = time.monotonic() - t0
        wait_for(
            f"{n} sockets in presence", lambda: _all_live(presence, users), opts.deadline_s, 0.5
        )
        wait_for(f"gauge {GAUGE} == {n}", lambda: gauge() == n, opts.deadline_s)
        out(f"  {n:,} sockets open and in presence after {time.monotonic() - t0:.1f} s; settling")
        after = settled_rss(pids, 60, out)
        valkey_after = _valkey(mesh.redis_url)
        statuses = gen.ask([("status",)] * len(parts), 30)
        alive = sum(s["alive"] for s in statuses)
        if alive != n:
            raise BenchFailed(f"only {alive} of {n} client sockets still open after settling")

        def figures(name: str) -> dict[str, Any]:
            (rss0, uss0), (rss1, uss1) = before[name], after[name]
            return {
                "pid": pids[name],
                "before_mib": round(rss0 / 2**20, 2),
                "after_mib": round(rss1 / 2**20, 2),
                "per_socket_kib": per_socket_kib(rss0, rss1, n),
                "uss_before_mib": round(uss0 / 2**20, 2),
                "uss_after_mib": round(uss1 / 2**20, 2),
                "uss_per_socket_kib": per_socket_kib(uss0, uss1, n),
            }

        result["memory"] = {
            "open_s": round(opened_s, 2),
            "gateway": figures("gateway"),
            "envoy": figures("envoy"),
            "valkey": {
                "before_mib": round(valkey_before[0] / 2**20, 3),
                "after_mib": round(valkey_after[0] / 2**20, 3),
                "per_socket_kib": per_socket_kib(valkey_before[0], valkey_after[0], n),
                "keys_before": valkey_before[1],
                "keys_after": valkey_after[1],
            },
        }
        gw = result["memory"]["gateway"]
        out(
            f"  gateway {gw['before_mib']} -> {gw['after_mib']} MiB: "
            f"{gw['per_socket_kib']} KiB per socket"
        )

        # -- storms
        result["storms"] = []
        for resume in (False, True) if opts.resume else (False,):
            out(f"== reconnect storm{' with ?resume=' if resume else ''}")
            nxt = Workers(url, len(parts), "b" if not resume else "c")
            others.append(nxt)
            storm = _storm(gen, nxt, presence, users, tokens, parts, resume, pids, opts, gauge)
            storm["client_cpu_s"] = round(storm["client_cpu_s"], 2)
            result["storms"].append(storm)
            lat = storm["connect_latency"]
            out(
                f"  {storm['total_s']} s, {storm['sockets_per_s']} sockets/s, connect p50 "
                f"{lat['p50_ms']} ms p99 {lat['p99_ms']} ms"
            )
            gen = nxt
    finally:
        presence.close()
        for g in (gen, *others):
            with contextlib.suppress(Exception):
                g.stop()


def _all_live(presence: Presence, users: Sequence[str]) -> bool:
    return {u for u, _ in presence.connections(users)} >= set(users)


def _open(
    gen: Workers, per_worker: Sequence[Sequence[str]], opts: Options, concurrency: int, out: Out
) -> list[dict[str, Any]]:
    start_ns = time.monotonic_ns() + NS // 10
    return gen.ask(
        [
            ("open", list(chunk), start_ns, opts.deadline_s, False, concurrency)
            for chunk in per_worker
        ],
        opts.deadline_s + 30,
    )


def _storm(
    old: Workers,
    new: Workers,
    presence: Presence,
    users: Sequence[str],
    tokens: Sequence[str],
    parts: Sequence[int],
    resume: bool,
    pids: Mapping[str, int],
    opts: Options,
    gauge: Callable[[], float | None],
) -> dict[str, Any]:
    n = len(users)
    old_ids: dict[str, set[str]] = {}
    for user, conn_id in presence.connections(users):
        old_ids.setdefault(user, set()).add(conn_id)
    frozen = {u: frozenset(ids) for u, ids in old_ids.items()}
    cpu0 = {name: _cpu_s([pid]) for name, pid in pids.items()}
    client0 = _cpu_s(new.pids)
    # Drop every socket at once, then every client connects at the same instant.
    drop_ns = time.monotonic_ns()
    old.kill()
    start_ns = time.monotonic_ns() + NS // 50
    for conn, chunk in zip(new.conns, _split(tokens, parts), strict=True):
        conn.send(("open", chunk, start_ns, opts.deadline_s, resume, 0))
    pending = set(users)
    confirmed_ns = 0
    deadline = start_ns + round(opts.deadline_s * NS)
    while pending:
        if time.monotonic_ns() > deadline:
            raise BenchFailed(f"storm: {len(pending)} users not in presence by the deadline")
        entries = presence.connections(sorted(pending))
        done = users_with_new_connection(entries, frozen)
        if done:
            pending -= done
            confirmed_ns = time.monotonic_ns()
        if pending:
            time.sleep(0.02)
    answers = new._collect("done", opts.deadline_s)
    cpu1 = {name: _cpu_s([pid]) for name, pid in pids.items()}
    client_cpu = _cpu_s(new.pids) - client0
    upgraded = [t for a in answers for t in a["upgraded_ns"]]
    latencies = [x for a in answers for x in a["latencies_ms"]]
    errors: Counter[str] = Counter()
    for a in answers:
        errors.update(a["errors"])
    figures = storm_figures(start_ns, upgraded, confirmed_ns, n)
    # After the storm: the old entries withdrawn (the gateway saw every old socket end).
    all_old = {c for ids in frozen.values() for c in ids}

    def old_gone() -> bool:
        return not any(c in all_old for _, c in presence.connections(users))

    wait_for("old presence entries withdrawn", old_gone, opts.deadline_s, 0.2)
    withdrawn_s = (time.monotonic_ns() - drop_ns) / NS
    wait_for(f"gauge {GAUGE} == {n} after the storm", lambda: gauge() == n, opts.deadline_s)
    return {
        "resume": resume,
        **figures,
        "connect_latency": latency_summary(latencies),
        "attempts": sum(int(a["attempts"]) for a in answers),
        "errors": dict(errors),
        "old_withdrawn_s": round(withdrawn_s, 2),
        "gateway_cpu_s": round(cpu1["gateway"] - cpu0["gateway"], 2),
        "envoy_cpu_s": round(cpu1["envoy"] - cpu0["envoy"], 2),
        "client_cpu_s": client_cpu,
    }


def main(argv: Sequence[str] | None = None) -> int:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(prog="python -m bench.connections", description=doc.split("\n")[0])
    p.add_argument("--sockets", type=int, default=5000, help="idle sockets to hold (5000)")
    p.add_argument("--workers", type=int, default=2, help="client processes (2)")
    p.add_argument("--warmup", type=int, default=50, help="warm-up sockets before the baseline")
    p.add_argument("--resume", action="store_true", help="a second storm with ?resume=")
    p.add_argument("--target-kib", type=float, default=30.0, help="memory target per socket")
    p.add_argument("--deadline", type=float, default=180.0, help="deadline of every wait, s")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (bench/results)")
    p.add_argument("--state", type=Path, default=None, help="keep the mesh's state and logs here")
    args = p.parse_args(argv)
    if args.sockets < 1 or args.workers < 1 or args.warmup < 0:
        p.error("--sockets and --workers must be positive, --warmup not negative")
    opts = Options(
        sockets=args.sockets,
        workers=args.workers,
        warmup=args.warmup,
        resume=args.resume,
        deadline_s=args.deadline,
        target_kib=args.target_kib,
        state_dir=args.state,
    )
    out: Out = lambda line: print(line, flush=True)  # noqa: E731
    stamp = time.strftime("%Y%m%d-%H%M%S")
    t0 = time.monotonic()
    try:
        result = run(opts, out)
    except BenchFailed as exc:
        out(f"bench-connections: the run could not be carried out: {exc}")
        return 2
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    result["command"] = " ".join(
        ["python -m bench.connections", *(sys.argv[1:] if argv is None else argv)]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"connections-{stamp}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    shutil.copyfile(path, args.out / "latest-connections.json")
    out("")
    for line in report_lines(result):
        out(line)
    out(f"results: {path} (also latest-connections.json); {result['elapsed_s']:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
