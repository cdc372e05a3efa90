"""`make bench`'s arithmetic and picture, on made-up runs (the runs themselves are measured by
`make bench`, never inside `make test`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import plot
from bench.suite import ratios, summary_lines


def _stage(
    rate: float, p50: float, delivered: float, cpu_ms: float, warmup: bool = False
) -> dict[str, Any]:
    return {
        "offered_per_s": rate,
        "warmup": warmup,
        "latency": {
            "delivery": {"p50_ms": p50, "p99_ms": 4 * p50, "p99.9_ms": 8 * p50},
        },
        "throughput": {"delivered_per_s": delivered},
        "cpu_ms_per_message": cpu_ms,
    }


def _run(stages: list[dict[str, Any]], sustained: float, peak: float) -> dict[str, Any]:
    return {"stages": stages, "sustained_per_s": sustained, "peak_delivered_per_s": peak}


MESH = _run(
    [
        _stage(100, 1, 1, 1, warmup=True),
        _stage(100, 8, 100, 4),
        _stage(200, 10, 200, 3),
        _stage(400, 900, 300, 3),
    ],
    sustained=200,
    peak=300,
)
RELAY = _run(
    [
        _stage(100, 0.5, 100, 0.1),
        _stage(200, 0.5, 200, 0.1),
        _stage(400, 0.8, 400, 0.1),
        _stage(800, 2, 800, 0.1),
    ],
    sustained=800,
    peak=800,
)
BROKER = {
    "round_trip": {"p50_ms": 0.2},
    "serial_per_s": 5000,
    "concurrent_per_s": 10000,
    "concurrency": 64,
}
POSTGRES = {"single_rows_per_s": 4000, "batched_rows_per_s": 40000, "batch_rows": 500}


def test_chatmesh_figures_become_ratios_of_the_baselines() -> None:
    r = ratios(MESH, RELAY, BROKER, POSTGRES)
    assert r["sustained_throughput_vs_relay"] == 0.25
    assert r["peak_delivered_vs_relay"] == 0.375
    assert [row["offered_per_s"] for row in r["at_each_load_vs_relay"]] == [100, 200, 400]
    first = r["at_each_load_vs_relay"][0]
    assert first["p50"] == 16 and first["p99"] == 16 and first["cpu_per_message"] == 40
    assert r["delivery_p50_in_broker_round_trips"] == 40  # 8 ms at 100/s over 0.2 ms
    assert r["sustained_vs_broker_serial_publishes"] == 0.04
    assert r["sustained_vs_postgres_single_row_commits"] == 0.05
    assert r["sustained_vs_postgres_batched_rows"] == 0.005
    result = {
        "mesh": MESH,
        "relay": RELAY,
        "ratios": r,
        "rates": [100, 200, 400, 800, 1600],
        "baselines": {"broker": BROKER, "postgres": POSTGRES},
    }
    text = "\n".join(summary_lines(result))
    assert "chatmesh 200/s, bare relay 800/s: 0.25x" in text


def test_a_run_that_sustained_nothing_has_no_ratio() -> None:
    none = _run([_stage(100, 900, 10, 4)], sustained=0, peak=10)
    assert ratios(none, RELAY, BROKER, POSTGRES)["sustained_throughput_vs_relay"] is None


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    result = {
        "mesh": MESH,
        "relay": RELAY,
        "baselines": {"broker": BROKER},
        "machine": {"cores": 2},
        "clients": 100,
        "stage_seconds": 6,
        "started_at": "now",
    }
    path = plot.plot(result, tmp_path / "out" / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
