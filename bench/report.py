"""The load tool's closing report as text: one row per stage, process figures, a verdict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psutil


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def stage_table(stages: list[Mapping[str, Any]]) -> list[str]:
    head = (
        f"{'stage':>9} {'offered/s':>9} {'sent':>7} {'acked':>7} {'received':>8} {'lost':>5} "
        f"{'unansw':>6} {'errors':>6} {'deliv/s':>8} {'p50':>8} {'p90':>8} {'p99':>8} "
        f"{'p99.9':>8} {'max ms':>8} {'ack p99':>8} {'lag p99':>8} {'verdict':>8}"
    )
    rows = [head]
    for s in stages:
        d = s["latency"]["delivery"]
        a = s["latency"]["ack"]
        lag = s["latency"]["send_lag"]
        verdict = ("ok" if s["kept_up"] else "slow") if s["ok"] else "FAILED"
        name = "warmup" if s.get("warmup") else str(s["stage"])
        rows.append(
            f"{name:>9} {s['offered_per_s']:>9g} {s['sent']:>7d} {s['acked']:>7d} "
            f"{s['received']:>8d} {s['lost']:>5d} {s['unanswered']:>6d} "
            f"{sum(s['errors'].values()):>6d} {s['throughput']['delivered_per_s']:>8g} "
            f"{_ms(d['p50_ms']):>8} {_ms(d['p90_ms']):>8} {_ms(d['p99_ms']):>8} "
            f"{_ms(d['p99.9_ms']):>8} {_ms(d['max_ms']):>8} {_ms(a['p99_ms']):>8} "
            f"{_ms(lag['p99_ms']):>8} {verdict:>8}"
        )
    return rows


def process_table(stage: Mapping[str, Any]) -> list[str]:
    figures: Mapping[str, Mapping[str, Any]] = stage.get("processes", {})
    rows = [f"  {'process':<16} {'pid':>8} {'CPU % of a core':>16} {'PSS MiB':>9} {'procs':>6}"]
    for name, f in figures.items():
        if not f.get("alive"):
            rows.append(f"  {name:<16} {f['pid']:>8} {'(not running)':>16}")
            continue
        rows.append(
            f"  {name:<16} {f['pid']:>8} {f['cpu_percent']:>16.1f} {f['memory_mib']:>9.1f} "
            f"{f['processes']:>6d}"
        )
    if figures:
        t = stage["process_totals"]
        rows.append(f"  {'total':<16} {'':>8} {t['cpu_percent']:>16.1f} {t['memory_mib']:>9.1f}")
    tool = stage.get("load_tool") or {}
    if tool:
        rows.append(
            f"  {'(load tool)':<16} {'':>8} {tool['cpu_percent']:>16.1f} {tool['memory_mib']:>9.1f}"
        )
    if stage.get("machine_cpu_percent") is not None:
        rows.append(
            f"  {'(whole machine)':<16} {'':>8} {stage['machine_cpu_percent']:>16.1f}"
            f"   of {100 * (psutil.cpu_count() or 1)}"
        )
        rows.append(
            f"  {'(interrupts)':<16} {'':>8} {stage.get('irq_cpu_percent') or 0.0:>16.1f}"
            "   (the kernel's network work, mostly)"
        )
        rows.append(
            f"  {'(anything else)':<16} {'':>8} {stage.get('other_cpu_percent', 0.0):>16.1f}"
            "   (other programs on this machine: noise in these figures)"
        )
    if stage.get("cpu_ms_per_message") is not None:
        over = stage.get("cpu_ms_per_message_over_idle")
        rows.append(
            f"  CPU of the processes above per delivered message: "
            f"{stage['cpu_ms_per_message']:.3f} ms"
            + (f" ({over:.3f} ms beyond their idle CPU)" if over is not None else "")
        )
    return rows


def format_report(report: Mapping[str, Any]) -> str:
    stages = report["stages"]
    target = report["target"]
    if report["label"] != target:
        target = f"{report['label']} ({target})"
    lines = [
        f"results for {target}, delivery latency from each message's intended send time:",
        *stage_table(stages),
    ]
    measured = [s for s in stages if not s.get("warmup")] or stages
    busiest = max(measured, key=lambda s: s["offered_per_s"])
    lines += ["", f"processes during stage {busiest['stage']} ({busiest['offered_per_s']:g}/s):"]
    lines += process_table(busiest)
    errors: dict[str, int] = {}
    for s in stages:
        for code, n in s["errors"].items():
            errors[code] = errors.get(code, 0) + n
    if errors:
        lines.append("errors by code: " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
    lines.append(
        f"sustained (kept up, p99 within the SLO): {report['sustained_per_s']:g}/s; "
        f"peak delivered: {report['peak_delivered_per_s']:g}/s"
    )
    lines.append(verdict(report))
    return "\n".join(lines)


def verdict(report: Mapping[str, Any]) -> str:
    stages = report["stages"]
    acked = sum(s["acked"] for s in stages)
    if report["ok"]:
        return f"OK: every acknowledged message was received ({acked} of {acked})"
    problems = []
    for s in stages:
        name = "warmup" if s.get("warmup") else f"stage {s['stage']}"
        if s["lost"]:
            problems.append(
                f"{name}: {s['lost']} acknowledged messages never arrived "
                f"(msg_ids {', '.join(s['lost_msg_ids'][:10])})"
            )
        if s["unanswered"]:
            problems.append(
                f"{name}: {s['unanswered']} sends got neither message_ack nor error "
                f"({', '.join(s['unanswered_client_msg_ids'][:5])})"
            )
        if s["ack_mismatches"]:
            problems.append(f"{name}: retries got another msg_id: {s['ack_mismatches'][:3]}")
        if s["clients_gave_up"]:
            problems.append(f"{name}: {s['clients_gave_up']} clients could not reconnect")
    return "FAILED: " + "; ".join(problems)
