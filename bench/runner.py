"""The load tool's parent process: workers, stages, progress, process figures, one report.

`run_load(LoadConfig(...))` starts `workers` processes (`bench.worker`), each registering and
connecting its share of the clients, then runs one stage per offered rate, back to back on the
same sockets: every stage sends on its open-loop schedule for `duration_s`, then drains (until
every send is answered and every acknowledged message received, or `drain_s` passed). While a
stage runs, one progress line per second is printed; CPU and memory of the named processes (the
target's, given by pid, and the tool's own workers) are sampled over its sending window. The
report (a dict, JSON-ready) has one entry per stage with the histograms merged across workers.

Everything is bounded: setup by `setup_timeout_s`, each stage by its duration plus its drain plus
a margin; a worker that dies or fails ends the run with `LoadFailed`.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from bench import procs, stats
from bench.client import Account
from bench.schedule import NS
from bench.worker import StageSpec, WorkerSpec, worker_main

STAGE_MARGIN_S = 30.0
START_DELAY_S = 0.3  # between telling the workers and the first intended send
KEPT_UP_SHARE = 0.95  # of the scheduled messages delivered within the sending window
TOOL_PREFIX = "load-"  # the tool's own processes: load-parent, load-worker-N

Out = Callable[[str], None]


class LoadFailed(Exception):
    """The run could not be carried out (setup refused, a worker died); says why."""


@dataclass(frozen=True)
class LoadConfig:
    url: str
    rates: Sequence[float]  # messages per second, one stage each
    duration_s: float = 10.0
    warmup_s: float = 0.0  # a first stage at the lowest rate, reported but marked warmup
    drain_s: float = 15.0
    workers: int = 2
    clients: int | None = None  # default: enough that none sends over per_client_rate
    per_client_rate: float = 20.0
    content_bytes: int = 64
    ack_interval_s: float = 0.1
    max_retries: int = 3
    max_reconnects: int = 5
    setup_timeout_s: float = 300.0
    setup_concurrency: int = 8
    pids: Mapping[str, int] = field(default_factory=dict)  # target processes to watch
    accounts: Sequence[Account] = ()  # reused before new ones are registered
    slo_p99_ms: float = 1000.0  # a stage keeps up only with delivery p99 at or under this
    idle_s: float = 2.0  # CPU of the watched processes with every socket open and no traffic
    stop_after_slow: int = 0  # end the series after this many stages in a row did not keep up
    label: str = "target"

    def __post_init__(self) -> None:
        if not self.rates or any(not 0 < r <= 1_000_000 for r in self.rates):
            raise ValueError("rates must be between 0 and 1,000,000 messages per second")
        if not 0 < self.duration_s <= 3600 or not 0 <= self.warmup_s <= 3600:
            raise ValueError("duration and warmup must be at most an hour")
        if not 1 <= self.workers <= 64:
            raise ValueError("workers must be between 1 and 64")
        if self.clients is not None and not 2 <= self.clients <= 100_000:
            raise ValueError("clients must be between 2 and 100,000")

    def clients_per_worker(self) -> list[int]:
        """An even share per worker, together at least `clients` (or the rate's need)."""
        wanted = self.clients or math.ceil(max(self.rates) / self.per_client_rate)
        share = max(2, math.ceil(wanted / self.workers))
        share += share % 2
        return [share] * self.workers


def run_load(cfg: LoadConfig, out: Out = print) -> dict[str, Any]:
    run_id = secrets.token_hex(4)
    shares = cfg.clients_per_worker()
    target = cfg.url if cfg.label == cfg.url else f"{cfg.label} ({cfg.url})"
    out(
        f"{target}: {sum(shares)} clients in {cfg.workers} workers, "
        f"{cfg.content_bytes}-byte messages, run {run_id}"
    )
    pool = _Pool(cfg, run_id, shares)
    try:
        accounts = pool.start(out)
        idle = pool.idle(cfg.idle_s, out) if cfg.idle_s > 0 and cfg.pids else None
        stages: list[tuple[str, float, float, bool]] = []
        if cfg.warmup_s > 0:
            stages.append(("warmup", min(cfg.rates), cfg.warmup_s, True))
        stages += [(f"{r:g}/s", r, cfg.duration_s, False) for r in cfg.rates]
        reports = []
        slow = 0
        for index, (label, rate, duration, warmup) in enumerate(stages):
            out(f"stage {index}: {label} offered for {duration:g} s" + (" (warm-up)" * warmup))
            stage = pool.run_stage(index, rate, duration, out)
            stage.update(label=label, warmup=warmup)
            _over_idle(stage, idle)
            reports.append(stage)
            out(stage_line(stage))
            if not warmup:
                slow = 0 if stage["kept_up"] else slow + 1
            if cfg.stop_after_slow and slow >= cfg.stop_after_slow and index < len(stages) - 1:
                out(f"  {slow} stage(s) in a row did not keep up: the series ends here")
                break
    finally:
        pool.close()
    measured = [s for s in reports if not s["warmup"]]
    kept = [s["offered_per_s"] for s in measured if s["kept_up"]]
    return {
        "tool": "chatmesh-load",
        "label": cfg.label,
        "target": cfg.url,
        "run_id": run_id,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": _config_dict(cfg, shares),
        "idle": idle,
        "stages": reports,
        "ok": all(s["ok"] for s in reports),
        "sustained_per_s": max(kept, default=0.0),
        "peak_delivered_per_s": max(
            (s["throughput"]["delivered_per_s"] for s in measured), default=0.0
        ),
        "accounts": [a.as_dict() for a in accounts],
    }


def _over_idle(stage: dict[str, Any], idle: Mapping[str, Any] | None) -> None:
    """CPU per delivered message beyond what the target burns idle (heartbeats, polls)."""
    delivered = stage["received_in_window"]
    if idle is None or not delivered or not stage["processes"]:
        stage["cpu_ms_per_message_over_idle"] = None
        return
    extra = stage["process_totals"]["cpu_s"] - idle["cpu_percent"] / 100 * stage["duration_s"]
    stage["cpu_ms_per_message_over_idle"] = round(1000 * max(extra, 0.0) / delivered, 3)


def _config_dict(cfg: LoadConfig, shares: list[int]) -> dict[str, Any]:
    data = asdict(cfg)
    data.pop("accounts")
    data["rates"] = list(cfg.rates)
    data["pids"] = dict(cfg.pids)
    data["clients"] = sum(shares)
    return data


class _Pool:
    """The worker processes and their pipes."""

    def __init__(self, cfg: LoadConfig, run_id: str, shares: list[int]) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.shares = shares
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[BaseProcess] = []
        self.conns: list[Connection] = []
        self.worker_pids: dict[str, int] = {}

    def _specs(self) -> list[WorkerSpec]:
        cfg = self.cfg
        specs, offset = [], 0
        for index, share in enumerate(self.shares):
            reused = tuple(cfg.accounts[offset : offset + share])
            offset += share
            specs.append(
                WorkerSpec(
                    index=index,
                    workers=cfg.workers,
                    url=cfg.url.rstrip("/"),
                    clients=share,
                    run_id=self.run_id,
                    content_bytes=cfg.content_bytes,
                    ack_interval_s=cfg.ack_interval_s,
                    max_retries=cfg.max_retries,
                    max_reconnects=cfg.max_reconnects,
                    setup_concurrency=cfg.setup_concurrency,
                    accounts=reused,
                )
            )
        return specs

    def start(self, out: Out) -> list[Account]:
        for spec in self._specs():
            parent, child = self.ctx.Pipe()
            proc = self.ctx.Process(
                target=worker_main, args=(spec, child), name=f"load-worker-{spec.index}"
            )
            proc.daemon = True
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
        ready: dict[int, dict[str, Any]] = {}
        t0 = time.monotonic()
        deadline = t0 + self.cfg.setup_timeout_s
        next_note = t0 + 5
        while len(ready) < len(self.conns):
            now = time.monotonic()
            if now > deadline:
                raise LoadFailed(
                    f"setup took over {self.cfg.setup_timeout_s:g} s: "
                    f"{len(ready)} of {len(self.conns)} workers ready"
                )
            if now >= next_note:
                out(f"  setup: {len(ready)} of {len(self.conns)} workers ready, {now - t0:.0f} s")
                next_note += 5
            for kind, index, payload in self._receive(min(deadline, next_note) - now):
                if kind == "ready":
                    ready[index] = payload
        for index, info in ready.items():
            self.worker_pids[f"load-worker-{index}"] = int(info["pid"])
        out(f"  setup: {sum(self.shares)} clients connected in {time.monotonic() - t0:.1f} s")
        return [Account.from_dict(a) for i in sorted(ready) for a in ready[i]["accounts"]]

    def _receive(self, timeout_s: float) -> list[tuple[str, int, Any]]:
        messages = []
        for conn in wait(self.conns, max(timeout_s, 0)):
            assert isinstance(conn, Connection)
            index = self.conns.index(conn)
            try:
                message = conn.recv()
            except (EOFError, OSError):
                code = self.procs[index].exitcode
                raise LoadFailed(f"load worker {index} exited unexpectedly (code {code})") from None
            kind, who, payload = message
            if kind == "failed":
                raise LoadFailed(f"load worker {who} failed: {payload}")
            messages.append((kind, who, payload))
        return messages

    def idle(self, seconds: float, out: Out) -> dict[str, Any]:
        """Totals of the watched processes over `seconds` with the sockets open and quiet."""
        sampler = procs.ProcessSampler(self.cfg.pids)
        sampler.start()
        time.sleep(seconds)
        figures = sampler.stop()
        totals = procs.totals(figures)
        if figures:
            out(
                f"  idle with every socket open: {totals['cpu_percent']:g}% of a core, "
                f"{totals['memory_mib']:g} MiB"
            )
        return {**totals, "seconds": seconds, "processes": figures}

    def run_stage(self, index: int, rate: float, duration: float, out: Out) -> dict[str, Any]:
        cfg = self.cfg
        start_ns = time.monotonic_ns() + round(START_DELAY_S * NS)
        spec = StageSpec(index, rate, start_ns, duration, cfg.drain_s)
        for conn in self.conns:
            conn.send(("stage", spec))
        tool = {**self.worker_pids, "load-parent": os.getpid()}
        sampler = procs.ProcessSampler({**cfg.pids, **tool}, alone={"load-parent"})
        time.sleep(max(start_ns - time.monotonic_ns(), 0) / NS)
        sampler.start()
        window_end = start_ns + round(duration * NS)
        deadline = window_end + round((cfg.drain_s + STAGE_MARGIN_S) * NS)
        sampled: dict[str, Any] | None = None
        latest: dict[int, dict[str, Any]] = {}
        intervals: list[str] = []
        results: dict[int, dict[str, Any]] = {}
        tick = 1
        next_print = start_ns + NS + round(0.2 * NS)
        while len(results) < len(self.conns):
            now = time.monotonic_ns()
            if now > deadline:
                raise LoadFailed(f"stage {index} did not end within its drain and margin")
            if sampled is None and now >= window_end:
                sampled = sampler.stop()
            if now >= next_print:
                out(_progress_line(tick, rate, latest, intervals))
                intervals = []
                tick += 1
                next_print += NS
            wake = min(next_print, deadline, window_end if sampled is None else deadline)
            for kind, who, payload in self._receive((wake - now) / NS):
                if kind == "progress":
                    latest[who] = payload
                    intervals.append(payload["interval"])
                elif kind == "done":
                    results[who] = payload
        if sampled is None:
            sampled = sampler.stop()
        stage = combine(index, rate, duration, list(results.values()), sampled, cfg.slo_p99_ms)
        machine = sampler.machine_cpu_percent
        stage["machine_cpu_percent"] = machine
        stage["irq_cpu_percent"] = sampler.irq_cpu_percent
        if machine is not None:  # CPU neither the target, the tool nor interrupts used: noise
            used = stage["process_totals"]["cpu_percent"] + stage["load_tool"]["cpu_percent"]
            used += sampler.irq_cpu_percent or 0.0
            stage["other_cpu_percent"] = round(max(machine - used, 0.0), 1)
        return stage

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("close",))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 15
        for proc in self.procs:
            proc.join(max(deadline - time.monotonic(), 0.1))
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for conn in self.conns:
            conn.close()


def _progress_line(
    tick: int, rate: float, latest: Mapping[int, Mapping[str, Any]], intervals: list[str]
) -> str:
    def total(key: str) -> int:
        return sum(int(p[key]) for p in latest.values())

    last = stats.summary(stats.merge(intervals))
    behind = max((float(p["behind_ms"]) for p in latest.values()), default=0.0)
    p50, p99 = last["p50_ms"], last["p99_ms"]
    latency = f"p50 {p50:8.2f} p99 {p99:8.2f} ms" if p50 is not None else f"{'no deliveries':>27}"
    return (
        f"  {tick:>3d}s {rate:>7g}/s  sent {total('sent'):>7d}  acked {total('acked'):>7d}  "
        f"recv {total('received'):>7d}  pending {total('pending'):>5d}  "
        f"err {total('errors'):>4d}  last 1s {latency}  tool behind {behind:.1f} ms"
    )


_SUMMED = (
    "scheduled",
    "sent",
    "transmissions",
    "acked",
    "acked_in_window",
    "received",
    "received_in_window",
    "duplicates",
    "lost",
    "unanswered",
    "failed",
    "received_without_ack",
    "reconnects",
    "clients_gave_up",
    "foreign",
)


def combine(
    index: int,
    rate: float,
    duration: float,
    results: Sequence[Mapping[str, Any]],
    processes: Mapping[str, Mapping[str, Any]],
    slo_p99_ms: float,
) -> dict[str, Any]:
    """One stage's report from every worker's result: counts summed, histograms merged."""
    stage: dict[str, Any] = {"stage": index, "offered_per_s": rate, "duration_s": duration}
    for key in _SUMMED:
        stage[key] = sum(int(r.get(key, 0)) for r in results)
    for key in ("lost_msg_ids", "unanswered_client_msg_ids", "ack_mismatches"):
        stage[key] = [x for r in results for x in r.get(key, [])][:20]
    errors: Counter[str] = Counter()
    failed_codes: Counter[str] = Counter()
    for r in results:
        errors.update(r.get("errors", {}))
        failed_codes.update(r.get("failed_codes", {}))
    stage["errors"] = dict(errors)
    stage["failed_codes"] = dict(failed_codes)
    merged = {
        name: stats.merge(r["histograms"][name] for r in results)
        for name in ("delivery", "ack", "send_lag")
    }
    stage["latency"] = {name: stats.summary(h) for name, h in merged.items()}
    stage["delivery_histogram"] = stats.encode(merged["delivery"])
    stage["throughput"] = {
        "sent_per_s": round(stage["sent"] / duration, 1),
        "acked_per_s": round(stage["acked_in_window"] / duration, 1),
        "delivered_per_s": round(stage["received_in_window"] / duration, 1),
    }
    tool = {n: f for n, f in processes.items() if n.startswith(TOOL_PREFIX)}
    target = {n: f for n, f in processes.items() if n not in tool}
    stage["processes"] = target
    stage["process_totals"] = procs.totals(target)
    stage["load_tool"] = procs.totals(tool)
    # CPU is sampled over the sending window, so it is divided by what arrived within it.
    delivered = stage["received_in_window"]
    cpu_s = stage["process_totals"]["cpu_s"]
    stage["cpu_ms_per_message"] = (
        round(1000 * cpu_s / delivered, 3) if target and delivered else None
    )
    stage["ok"] = (
        stage["lost"] == 0
        and stage["unanswered"] == 0
        and not stage["ack_mismatches"]
        and stage["clients_gave_up"] == 0
    )
    p99 = stage["latency"]["delivery"]["p99_ms"]
    stage["kept_up"] = bool(
        stage["ok"]
        and stage["scheduled"] > 0
        and stage["received_in_window"] >= KEPT_UP_SHARE * stage["scheduled"]
        and p99 is not None
        and p99 <= slo_p99_ms
    )
    return stage


def stage_line(stage: Mapping[str, Any]) -> str:
    d = stage["latency"]["delivery"]
    t = stage["throughput"]
    verdict = "ok" if stage["ok"] else "FAILED"
    kept = "kept up" if stage["kept_up"] else "did not keep up"
    lat = (
        f"p50 {d['p50_ms']:.2f} p90 {d['p90_ms']:.2f} p99 {d['p99_ms']:.2f} "
        f"p99.9 {d['p99.9_ms']:.2f} max {d['max_ms']:.2f} ms"
        if d["count"]
        else "no deliveries"
    )
    errors = ", ".join(f"{k} {v}" for k, v in sorted(stage["errors"].items())) or "none"
    return (
        f"  => {verdict}, {kept}: sent {stage['sent']} acked {stage['acked']} "
        f"received {stage['received']} lost {stage['lost']} unanswered {stage['unanswered']}; "
        f"delivered {t['delivered_per_s']:g}/s; delivery {lat}; errors: {errors}"
    )
