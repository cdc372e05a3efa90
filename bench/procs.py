"""CPU and memory of named processes over a window, each counted with its descendants.

A mesh process is often more than one: PostgreSQL forks a backend per connection, and the work
of a query is done there. So each name stands for a process tree: CPU time is summed over the
process and every descendant alive at the end of the window (a descendant born inside the
window counts from zero), and memory is the proportional set size (PSS: a page shared by n
processes counts 1/n in each, so PostgreSQL's shared buffers are not counted once per backend) of
the whole tree at the end, or the resident set size where PSS cannot be read.

`cpu_percent` is of one core: 100 means one core fully busy for the whole window.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import psutil


def _tree(pid: int, alone: bool = False) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root] if alone else [root, *root.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _cpu_s(proc: psutil.Process) -> float | None:
    try:
        t = proc.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return float(t.user + t.system)


def _memory(proc: psutil.Process) -> int:
    """Proportional set size (shared pages split among their users), else resident set size."""
    try:
        full = proc.memory_full_info()
        return int(getattr(full, "pss", full.rss))
    except (psutil.AccessDenied, psutil.ZombieProcess):
        pass
    except psutil.NoSuchProcess:
        return 0
    try:
        return int(proc.memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return 0


def _machine_busy_s() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, of which in interrupt handlers) since boot."""
    t = psutil.cpu_times()
    irq = float(getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0)), irq


class ProcessSampler:
    """`start()` at the beginning of a window, `stop()` at its end; figures per name.

    Names in `alone` count their process without its descendants (the load tool's parent, whose
    children are its workers and, under `make bench`, the whole mesh, each watched by name).
    """

    def __init__(self, pids: Mapping[str, int], alone: Iterable[str] = ()) -> None:
        self.pids = dict(pids)
        self.alone = frozenset(alone)
        self._start: dict[str, dict[int, float]] = {}
        self._t0 = 0.0
        self._busy0 = (0.0, 0.0)
        # The whole machine's busy CPU over the window, in % of one core (all cores together),
        # and the part spent in interrupt handlers (loopback networking is mostly softirq): what
        # neither the named processes nor interrupts account for is load from elsewhere.
        self.machine_cpu_percent: float | None = None
        self.irq_cpu_percent: float | None = None

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._busy0 = _machine_busy_s()
        self._start = {}
        for name, pid in self.pids.items():
            times: dict[int, float] = {}
            for proc in _tree(pid, name in self.alone):
                cpu = _cpu_s(proc)
                if cpu is not None:
                    times[proc.pid] = cpu
            self._start[name] = times

    def stop(self) -> dict[str, dict[str, Any]]:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        busy, irq = _machine_busy_s()
        self.machine_cpu_percent = round(100.0 * (busy - self._busy0[0]) / elapsed, 1)
        self.irq_cpu_percent = round(100.0 * (irq - self._busy0[1]) / elapsed, 1)
        out: dict[str, dict[str, Any]] = {}
        for name, pid in self.pids.items():
            before = self._start.get(name, {})
            tree = _tree(pid, name in self.alone)
            if not tree:
                out[name] = {"pid": pid, "alive": False}
                continue
            used = 0.0
            for proc in tree:
                cpu = _cpu_s(proc)
                if cpu is not None:
                    used += cpu - before.get(proc.pid, 0.0)
            out[name] = {
                "pid": pid,
                "alive": True,
                "processes": len(tree),
                "cpu_s": round(used, 3),
                "cpu_percent": round(100.0 * used / elapsed, 1),
                "memory_mib": round(sum(_memory(p) for p in tree) / 2**20, 1),
            }
        return out


def totals(figures: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Sum of cpu_percent, cpu_s and memory_mib over the named processes that were alive."""
    alive = [f for f in figures.values() if f.get("alive")]
    return {
        "cpu_percent": round(sum(float(f["cpu_percent"]) for f in alive), 1),
        "cpu_s": round(sum(float(f["cpu_s"]) for f in alive), 3),
        "memory_mib": round(sum(float(f["memory_mib"]) for f in alive), 1),
    }
