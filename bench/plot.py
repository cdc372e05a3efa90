"""The benchmark's picture: delivery latency and delivered rate against offered load."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

TARGETS = (("chatmesh", "mesh", "tab:blue"), ("bare relay", "relay", "tab:orange"))
PERCENTILES = (("p50", "-", "o"), ("p99", "--", "s"), ("p99.9", ":", "^"))


def _measured(run: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    stages = [s for s in run["stages"] if not s.get("warmup")]
    return sorted(stages, key=lambda s: s["offered_per_s"])


def plot(result: Mapping[str, Any], path: Path) -> Path:
    """Write a PNG of `result` (bench.suite's JSON) to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(13, 5.2))
    low, top = float("inf"), 1.0
    for name, key, color in TARGETS:
        run = result.get(key)
        if not run:
            continue
        stages = _measured(run)
        x = [s["offered_per_s"] for s in stages]
        for pct, style, marker in PERCENTILES:
            y = [s["latency"]["delivery"][f"{pct}_ms"] for s in stages]
            lat.plot(x, y, style, marker=marker, color=color, label=f"{name} {pct}")
        delivered = [s["throughput"]["delivered_per_s"] for s in stages]
        thr.plot(x, delivered, "-", marker="o", color=color, label=name)
        top = max([top, *x])
        low = min([low, *x])
    broker = (result.get("baselines") or {}).get("broker") or {}
    rtt = (broker.get("round_trip") or {}).get("p50_ms")
    if rtt:
        lat.axhline(
            rtt, color="gray", linestyle="-.", linewidth=1, label="raw broker round trip p50"
        )
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    lat.set_xscale("log")
    lat.set_yscale("log")
    lat.xaxis.set_major_formatter(plain)
    lat.yaxis.set_major_formatter(plain)
    lat.set_xlabel("offered load (messages/s)")
    lat.set_ylabel("end-to-end delivery latency (ms, from intended send time)")
    lat.set_title("delivery latency percentiles")
    lat.grid(True, which="both", alpha=0.3)
    lat.legend(fontsize=8)
    low = min(low, top)
    thr.plot(
        [low, top],
        [low, top],
        color="gray",
        linewidth=1,
        linestyle=":",
        label="delivered = offered",
    )
    thr.set_xscale("log")
    thr.set_yscale("log")
    thr.xaxis.set_major_formatter(plain)
    thr.yaxis.set_major_formatter(plain)
    thr.set_xlabel("offered load (messages/s)")
    thr.set_ylabel("delivered within the sending window (messages/s)")
    thr.set_title("throughput")
    thr.grid(True, which="both", alpha=0.3)
    thr.legend(fontsize=8)
    machine = result.get("machine", {})
    fig.suptitle(
        f"chatmesh vs a bare relay, same load tool, same run ({result.get('started_at', '')}, "
        f"{machine.get('cores', '?')} cores; {result.get('clients', '?')} clients, "
        f"{result.get('stage_seconds', '?')} s per load)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
