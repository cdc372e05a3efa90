"""`make bench`: chatmesh against its baselines, all measured in one run on this machine.

In order, each alone on the machine (the previous one stopped first):

1. the raw servers (`launcher.servers`): the Kafka-protocol broker's awaited `acks=all` publish
   round trip and rate (`bench.baselines.broker_baseline`), and PostgreSQL's insert rates, one row
   per commit and in the persister's batches (`bench.baselines.postgres_baseline`);
2. the bare relay (`bench.relay`, one process) driven by the load tool over a series of offered
   loads;
3. the whole mesh (`launcher.mesh.Mesh` on free ports, state in a temporary folder) driven by the
   same tool, with the same clients and the same series; CPU and memory of each of its processes.

A series climbs until two loads in a row were not kept up (`bench.runner`: 95% delivered within
the window, p99 within the SLO, nothing lost). The report gives chatmesh's figures as ratios of
the baselines; the JSON (every figure, and the merged histograms) and a PNG (latency percentiles
and delivered rate against offered load, chatmesh and the relay) go to `bench/results/` as
`bench-<time>.{json,png}` and `latest.{json,png}`. Exit status 1 when any run lost a message.

The benchmark mesh hashes passwords with cheap argon2 settings so that registering the load
clients takes seconds; nothing measured touches password hashing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import baselines, plot
from bench.report import format_report
from bench.runner import LoadConfig, LoadFailed, run_load

RESULTS = Path(__file__).resolve().parent / "results"
RATES = (100, 200, 400, 700, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 12000, 16000, 24000, 32000)
QUICK_RATES = (50, 100)
CHEAP_ARGON2 = {
    "CHATMESH_ARGON2_TIME_COST": "1",
    "CHATMESH_ARGON2_MEMORY_KIB": "8192",
    "CHATMESH_ARGON2_PARALLELISM": "1",
}

Out = Callable[[str], None]


def _say(line: str) -> None:
    print(line, flush=True)


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return round(a / b, 3)


def _measured(run: Mapping[str, Any]) -> dict[float, Mapping[str, Any]]:
    return {s["offered_per_s"]: s for s in run["stages"] if not s.get("warmup")}


def ratios(
    mesh: Mapping[str, Any],
    relay: Mapping[str, Any],
    broker: Mapping[str, Any],
    postgres: Mapping[str, Any],
) -> dict[str, Any]:
    """chatmesh's figures divided by the baselines' (None where a figure is missing)."""
    m, r = _measured(mesh), _measured(relay)
    common = sorted(set(m) & set(r))
    latency = []
    for rate in common:
        md, rd = m[rate]["latency"]["delivery"], r[rate]["latency"]["delivery"]
        latency.append(
            {
                "offered_per_s": rate,
                **{p: _div(md[f"{p}_ms"], rd[f"{p}_ms"]) for p in ("p50", "p99", "p99.9")},
                "cpu_per_message": _div(
                    m[rate]["cpu_ms_per_message"], r[rate]["cpu_ms_per_message"]
                ),
                "cpu_per_message_over_idle": _div(
                    m[rate].get("cpu_ms_per_message_over_idle"),
                    r[rate].get("cpu_ms_per_message_over_idle"),
                ),
            }
        )
    lowest = m[common[0]] if common else None
    sustained = mesh["sustained_per_s"] or None
    return {
        "sustained_throughput_vs_relay": _div(sustained, relay["sustained_per_s"]),
        "peak_delivered_vs_relay": _div(
            mesh["peak_delivered_per_s"], relay["peak_delivered_per_s"]
        ),
        "at_each_load_vs_relay": latency,
        "delivery_p50_in_broker_round_trips": _div(
            lowest["latency"]["delivery"]["p50_ms"] if lowest else None,
            broker["round_trip"]["p50_ms"],
        ),
        "sustained_vs_broker_serial_publishes": _div(sustained, broker["serial_per_s"]),
        "sustained_vs_broker_concurrent_publishes": _div(sustained, broker["concurrent_per_s"]),
        "sustained_vs_postgres_single_row_commits": _div(sustained, postgres["single_rows_per_s"]),
        "sustained_vs_postgres_batched_rows": _div(sustained, postgres["batched_rows_per_s"]),
    }


def _noise(run: Mapping[str, Any]) -> float:
    """Mean CPU (% of a core) used by neither the target nor the tool during a run's stages."""
    values = [float(s.get("other_cpu_percent") or 0.0) for s in run["stages"]]
    return sum(values) / len(values) if values else 0.0


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    mesh, relay = result["mesh"], result["relay"]
    broker, pg = result["baselines"]["broker"], result["baselines"]["postgres"]
    ratio = result["ratios"]

    def x(value: float | None) -> str:
        return "-" if value is None else f"{value:.3g}x"

    top = max(result["rates"], default=0)
    capped = relay["sustained_per_s"] >= top
    lines = [
        "chatmesh against its baselines (same machine, same run):",
        f"  sustained throughput   chatmesh {mesh['sustained_per_s']:g}/s, bare relay "
        f"{relay['sustained_per_s']:g}/s{' (the top of the series: at least)' if capped else ''}: "
        f"{x(ratio['sustained_throughput_vs_relay'])}",
        f"  peak delivered         chatmesh {mesh['peak_delivered_per_s']:g}/s, bare relay "
        f"{relay['peak_delivered_per_s']:g}/s: {x(ratio['peak_delivered_vs_relay'])}",
    ]
    for row in ratio["at_each_load_vs_relay"]:
        lines.append(
            f"  at {row['offered_per_s']:>6g}/s latency vs relay: p50 {x(row['p50'])}, "
            f"p99 {x(row['p99'])}, p99.9 {x(row['p99.9'])}; CPU per message "
            f"{x(row['cpu_per_message'])} ({x(row['cpu_per_message_over_idle'])} beyond idle)"
        )
    lines += [
        f"  other programs used {_noise(mesh):.0f}% of a core on average while chatmesh was "
        f"measured, {_noise(relay):.0f}% during the relay (of {100 * (os.cpu_count() or 1)}%)",
        f"  raw broker: awaited acks=all publish p50 {broker['round_trip']['p50_ms']} ms, "
        f"{broker['serial_per_s']:g}/s one at a time, {broker['concurrent_per_s']:g}/s with "
        f"{broker['concurrency']} in flight; chatmesh's delivery p50 at its lowest load is "
        f"{x(ratio['delivery_p50_in_broker_round_trips'])} that round trip",
        f"  raw PostgreSQL: {pg['single_rows_per_s']:g} single-row commits/s, "
        f"{pg['batched_rows_per_s']:g} rows/s in {pg['batch_rows']}-row batches; chatmesh "
        f"sustains {x(ratio['sustained_vs_postgres_single_row_commits'])} and "
        f"{x(ratio['sustained_vs_postgres_batched_rows'])} of them",
        f"  chatmesh sustains {x(ratio['sustained_vs_broker_serial_publishes'])} of serial and "
        f"{x(ratio['sustained_vs_broker_concurrent_publishes'])} of concurrent broker publishes",
    ]
    return lines


def run_baselines(tmp: Path, fsync: bool, seconds: float, out: Out) -> dict[str, Any]:
    from launcher import servers

    out("== raw broker and PostgreSQL")
    port = servers.free_ports(1)[0]
    tansu = servers.start_tansu(port, tmp / "tansu.log")
    try:
        broker = baselines.broker_baseline(f"{servers.HOST}:{port}", seconds)
    finally:
        tansu.stop()
    out(
        f"  broker: publish round trip p50 {broker['round_trip']['p50_ms']} ms "
        f"p99 {broker['round_trip']['p99_ms']} ms; {broker['serial_per_s']:g}/s serial, "
        f"{broker['concurrent_per_s']:g}/s concurrent"
    )
    port = servers.free_ports(1)[0]
    pg_state = tmp / "pg"
    pg = servers.start_postgres(port, pg_state, tmp / "postgres.log", fsync=fsync)
    try:
        postgres = baselines.postgres_baseline(pg.create_database("bench"), seconds)
    finally:
        pg.stop()
        servers.remove_external_paths(pg_state)
    postgres["fsync"] = fsync
    out(
        f"  postgres (fsync {'on' if fsync else 'off'}): {postgres['single_rows_per_s']:g} "
        f"single-row commits/s (p50 {postgres['single_row']['p50_ms']} ms), "
        f"{postgres['batched_rows_per_s']:g} rows/s batched"
    )
    return {"broker": broker, "postgres": postgres}


def run_relay(cfg_for: Callable[..., LoadConfig], tmp: Path, out: Out) -> dict[str, Any]:
    from launcher import servers

    out("== bare relay")
    port = servers.free_ports(1)[0]
    log = (tmp / "relay.log").open("wb")
    proc = subprocess.Popen(  # noqa: S603 - our own module
        [sys.executable, "-m", "bench.relay", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://{servers.HOST}:{port}"
        servers.wait_until(
            lambda: servers.http_status(f"{url}/healthz") == 200,
            None,
            "the bare relay",
            20,
            interval_s=0.05,
        )
        report = run_load(cfg_for(url, "bare relay", {"relay": proc.pid}), out)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return report


def run_mesh(
    cfg_for: Callable[..., LoadConfig], tmp: Path, fsync: bool, out: Out
) -> dict[str, Any]:
    from launcher.mesh import Mesh, PortPlan

    out("== chatmesh (the whole mesh, as `make up` runs it)")
    mesh = Mesh(
        PortPlan.free(),
        tmp / "mesh",
        fsync=fsync,
        out=lambda line: out(f"  {line}"),
        ready_timeout_s=120,
        service_env=CHEAP_ARGON2,
    )
    mesh.start()
    try:
        return run_load(cfg_for(mesh.edge_url, "chatmesh", mesh.pids()), out)
    finally:
        mesh.stop()
        mesh.clean()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.split("\n")[0])
    p.add_argument("--rates", default=None, help="comma list of offered loads (messages/s)")
    p.add_argument("--seconds", type=float, default=6.0, help="seconds per load (6)")
    p.add_argument("--clients", type=int, default=100, help="WebSocket clients (100)")
    p.add_argument("--workers", type=int, default=2, help="load tool processes (2)")
    p.add_argument(
        "--no-fsync", action="store_true", help="PostgreSQL without fsync (default: as make up)"
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: two low loads, 2 s each")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (bench/results)")
    args = p.parse_args(argv)
    out = _say
    if args.rates:
        rates: tuple[float, ...] = tuple(float(r) for r in args.rates.split(",") if r.strip())
    else:
        rates = QUICK_RATES if args.quick else RATES
    seconds = 2.0 if args.quick else args.seconds
    fsync = not args.no_fsync

    def cfg_for(url: str, label: str, pids: Mapping[str, int]) -> LoadConfig:
        return LoadConfig(
            url=url,
            rates=rates,
            duration_s=seconds,
            warmup_s=1.0 if args.quick else 3.0,
            drain_s=20.0,
            workers=args.workers,
            clients=args.clients,
            pids=pids,
            label=label,
            stop_after_slow=2,
        )

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    t0 = time.monotonic()
    result: dict[str, Any] = {
        "started_at": started,
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "clients": args.clients,
        "workers": args.workers,
        "stage_seconds": seconds,
        "rates": list(rates),
        "fsync": fsync,
        "command": " ".join(["python -m bench.suite", *(sys.argv[1:] if argv is None else argv)]),
    }
    out(f"chatmesh benchmark, {started}: loads {', '.join(f'{r:g}' for r in rates)} msg/s")
    with tempfile.TemporaryDirectory(prefix="chatmesh-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            result["baselines"] = run_baselines(tmp, fsync, 2.0 if args.quick else 3.0, out)
            result["relay"] = run_relay(cfg_for, tmp, out)
            out(format_report(result["relay"]))
            result["mesh"] = run_mesh(cfg_for, tmp, fsync, out)
            out(format_report(result["mesh"]))
        except LoadFailed as exc:
            out(f"make bench: a load run could not be carried out: {exc}")
            return 2
    for run in (result["relay"], result["mesh"]):
        run.pop("accounts", None)
    result["ratios"] = ratios(
        result["mesh"],
        result["relay"],
        result["baselines"]["broker"],
        result["baselines"]["postgres"],
    )
    result["noise_cpu_percent"] = {
        "relay": round(_noise(result["relay"]), 1),
        "mesh": round(_noise(result["mesh"]), 1),
    }
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    result["ok"] = bool(result["mesh"]["ok"] and result["relay"]["ok"])
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"bench-{stamp}.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    png_path = plot.plot(result, args.out / f"bench-{stamp}.png")
    shutil.copyfile(json_path, args.out / "latest.json")
    shutil.copyfile(png_path, args.out / "latest.png")
    out("")
    for line in summary_lines(result):
        out(line)
    out(
        f"results: {json_path} and {png_path} (also latest.json, latest.png); "
        f"{result['elapsed_s']:.0f} s in all"
    )
    if not result["ok"]:
        out("make bench: FAILED: a run lost messages (see the reports above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
