"""`chatmesh-load URL` (or `python -m bench URL`): drive a chatmesh deployment and count losses.

    chatmesh-load http://127.0.0.1:8080 --rate 500 --duration 20
    chatmesh-load http://127.0.0.1:8080 --rate 250,500,1000 --mesh-state .state --json out.json

Exit status: 0 when every acknowledged message was received and every send answered; 1 when a
message was lost (or a send never answered, or a client could not reconnect); 2 when the run could
not be carried out (the target refused the setup, bad arguments).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.client import Account
from bench.report import format_report
from bench.runner import LoadConfig, LoadFailed, run_load

EXIT_OK, EXIT_LOSS, EXIT_NOT_RUN = 0, 1, 2


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of rates: {text!r}") from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError("rates must be positive")
    return rates


def _pid(text: str) -> tuple[str, int]:
    name, sep, pid = text.partition("=")
    if not sep or not pid.isdigit() or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=PID, got {text!r}")
    return name, int(pid)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chatmesh-load",
        description="Open-loop load against a chatmesh edge (or anything speaking PROTOCOL.md): "
        "registers users, opens WebSockets in several processes, sends at a fixed aggregate "
        "rate, measures delivery latency from each message's intended send time, and fails "
        "on any acknowledged message that never arrives.",
    )
    p.add_argument("url", help="the edge's base URL, e.g. http://127.0.0.1:8080")
    p.add_argument(
        "--rate",
        type=_rates,
        default=[200.0],
        help="messages per second, all clients together; a comma list runs one stage each "
        "(default 200)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per stage (default 10)")
    p.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of warm-up at the lowest rate (2)"
    )
    p.add_argument(
        "--drain",
        type=float,
        default=15.0,
        help="after a stage, seconds to wait for outstanding acks and deliveries (15)",
    )
    p.add_argument("--workers", type=int, default=2, help="load processes (default 2)")
    p.add_argument(
        "--clients",
        type=int,
        default=None,
        help="WebSocket clients in all (default: enough that none sends over --per-client-rate)",
    )
    p.add_argument(
        "--per-client-rate",
        type=float,
        default=20.0,
        help="most messages per second one client sends, when --clients is not given (20); "
        "chatmesh's default limit is 100 frames/s per socket, acks included",
    )
    p.add_argument("--size", type=int, default=64, help="content length in characters (64)")
    p.add_argument(
        "--ack-interval",
        type=float,
        default=0.1,
        help="each client acks each conversation's newest message this often, in seconds; "
        "0 acks every message at once (0.1)",
    )
    p.add_argument("--retries", type=int, default=3, help="resends after a transient error (3)")
    p.add_argument(
        "--pid",
        type=_pid,
        action="append",
        default=[],
        metavar="NAME=PID",
        help="a target process to report CPU and memory for (with its children); repeatable",
    )
    p.add_argument(
        "--mesh-state",
        type=Path,
        default=None,
        help="a launcher state folder (`make up` uses .state): watch every process it started",
    )
    p.add_argument(
        "--accounts",
        type=Path,
        default=None,
        help="JSON file of accounts to reuse, updated after the run (saves password hashing)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the full report here")
    p.add_argument(
        "--slo-p99",
        type=float,
        default=1000.0,
        help="a stage keeps up only with delivery p99 at or under this many ms (1000)",
    )
    p.add_argument(
        "--idle",
        type=float,
        default=2.0,
        help="seconds to sample the watched processes with every socket open and no traffic, "
        "before the first stage (2; 0 skips)",
    )
    p.add_argument(
        "--stop-after-slow",
        type=int,
        default=0,
        metavar="N",
        help="end a series of rates after N stages in a row did not keep up (0: run them all)",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a target that is not a loopback address (never point this at a system "
        "you do not own)",
    )
    return p


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def pids_from_state(state_dir: Path) -> dict[str, int]:
    """name -> pid of every process a launcher recorded in `state_dir/launcher.json`."""
    data = json.loads((state_dir / "launcher.json").read_text())
    found = data.get("processes", {})
    return {name: int(info["pid"]) for name, info in found.items() if "pid" in info}


def load_accounts(path: Path | None, url: str) -> list[Account]:
    if path is None or not path.exists():
        return []
    data = json.loads(path.read_text())
    return [Account.from_dict(a) for a in data.get(url, [])]


def save_accounts(path: Path, url: str, accounts: list[dict[str, Any]]) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    known = {a["username"]: a for a in data.get(url, [])}
    known.update({a["username"]: a for a in accounts})
    data[url] = list(known.values())
    path.write_text(json.dumps(data, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    url = args.url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        print(f"chatmesh-load: the URL must start with http:// or https://, got {url}")
        return EXIT_NOT_RUN
    if not args.allow_remote and not is_loopback(url):
        print(f"chatmesh-load: {url} is not a loopback address; pass --allow-remote if you own it")
        return EXIT_NOT_RUN
    pids = dict(args.pid)
    if args.mesh_state is not None:
        try:
            pids = {**pids_from_state(args.mesh_state), **pids}
        except (OSError, ValueError, KeyError) as exc:
            print(f"chatmesh-load: cannot read {args.mesh_state}/launcher.json: {exc}")
            return EXIT_NOT_RUN
    try:
        cfg = LoadConfig(
            url=url,
            rates=args.rate,
            duration_s=args.duration,
            warmup_s=args.warmup,
            drain_s=args.drain,
            workers=args.workers,
            clients=args.clients,
            per_client_rate=args.per_client_rate,
            content_bytes=args.size,
            ack_interval_s=args.ack_interval,
            max_retries=args.retries,
            pids=pids,
            accounts=load_accounts(args.accounts, url),
            slo_p99_ms=args.slo_p99,
            stop_after_slow=args.stop_after_slow,
            idle_s=args.idle,
            label=url,
        )
    except ValueError as exc:
        print(f"chatmesh-load: {exc}")
        return EXIT_NOT_RUN
    try:
        report = run_load(cfg, out=lambda line: print(line, flush=True))
    except LoadFailed as exc:
        print(f"chatmesh-load: the run could not be carried out: {exc}", flush=True)
        return EXIT_NOT_RUN
    except KeyboardInterrupt:
        print("chatmesh-load: interrupted", flush=True)
        return EXIT_NOT_RUN
    if args.accounts is not None:
        save_accounts(args.accounts, url, report["accounts"])
    report.pop("accounts")
    print(format_report(report), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"report written to {args.json}")
    return EXIT_OK if report["ok"] else EXIT_LOSS


if __name__ == "__main__":
    sys.exit(main())
