"""`python -m launcher up` runs the whole mesh in the foreground; `python -m launcher clean`.

`up` starts every server and service (launcher/mesh.py), prints one line per component as it
becomes ready, then runs until Ctrl-C, SIGTERM or SIGHUP, and stops everything in order. A service
that dies meanwhile is restarted on its ports (`Supervisor`). It stays
in the foreground on purpose: Envoy exits with its parent, and one long-lived parent is what
guarantees no process outlives `up`.

Ports: the defaults of the spec, each movable by a variable (`--help` lists them), or
`--free-ports`. State (PostgreSQL data, Valkey append-only file, logs, launcher.json):
`--state-dir`, else $CHATMESH_STATE_DIR, else .state at the repository root.

Exit codes: 0 after a requested stop, 1 when a component failed to start, 2 for a port or
configuration problem (the one-line message names the port, its component and its variable).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from launcher import servers
from launcher.mesh import (
    DEFAULT_STATE_DIR,
    PORT_VARIABLES,
    STATE_FILE,
    Mesh,
    MeshError,
    PortInUseError,
    PortPlan,
    kill_leftovers,
    live_launcher,
)


def _err(message: str) -> None:
    print(f"launcher: {message}", file=sys.stderr, flush=True)


def _state_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("CHATMESH_STATE_DIR")
    return Path(env) if env else DEFAULT_STATE_DIR


def cmd_up(args: argparse.Namespace) -> int:
    try:
        ports = PortPlan.free() if args.free_ports else PortPlan.from_env()
    except MeshError as exc:
        _err(str(exc))
        return 2
    mesh = Mesh(ports, _state_dir(args.state_dir), fsync=not args.no_fsync)
    # Orphans of our children (a process that setsid-ed and lost its parent) come back to us,
    # so the final sweep below can stop them: nothing outlives `up`.
    servers.become_subreaper()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            return  # already stopping: let the ordered shutdown finish
        stop.set()
        mesh.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    try:
        mesh.start()
    except PortInUseError as exc:
        _err(str(exc))
        return 2
    except MeshError as exc:
        servers.kill_adopted_orphans()
        if stop.is_set():
            print("launcher: stopped before the mesh was ready", flush=True)
            return 0
        _err(f"cannot start the mesh, everything was stopped: {exc}")
        return 1

    print(f"launcher: ready on {mesh.edge_url} (state {mesh.state_dir}); Ctrl-C stops", flush=True)
    supervisor = Supervisor(mesh)
    try:
        while not stop.wait(0.5):
            supervisor.tick(time.monotonic())
    finally:
        print("launcher: stopping", flush=True)
        mesh.stop()
        orphans = servers.kill_adopted_orphans()
        if orphans:
            _err(f"killed processes that had escaped their group: {orphans}")
        print("launcher: stopped", flush=True)
    return 0


class Supervisor:
    """Restarts a service that died, as Kubernetes would, with backoff; reports dead servers.

    Services keep no state of their own (the broker, PostgreSQL and Valkey do), so starting one
    again on the same ports is always safe. A server that died is reported, not restarted: the
    local broker keeps its log in memory, and a silent restart would hide that loss.
    """

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.next_try: dict[str, float] = {}
        self.backoff: dict[str, float] = {}
        self.reported: set[str] = set()

    def tick(self, now: float) -> None:
        for inst in self.mesh.dead_instances():
            if inst.kind != "service":
                if inst.name not in self.reported:
                    self.reported.add(inst.name)
                    _err(inst.child.describe_failure())
                continue
            if now < self.next_try.get(inst.name, 0.0):
                continue
            _err(f"{inst.name} exited ({inst.child.returncode()}); restarting it")
            delay = self.backoff.get(inst.name, 1.0)
            try:
                self.mesh.restart_instance(inst.name, timeout_s=30)
            except (MeshError, servers.StartError) as exc:
                _err(f"{inst.name} did not come back: {exc}; next try in {delay:.0f} s")
                self.backoff[inst.name] = min(delay * 2, 30.0)
                self.next_try[inst.name] = time.monotonic() + delay
            else:
                print(f"launcher: {inst.name} restarted, pid {inst.pid}", flush=True)
                self.backoff.pop(inst.name, None)
                self.next_try.pop(inst.name, None)


def cmd_clean(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args.state_dir).resolve()
    pid = live_launcher(state_dir)
    if pid is not None:
        _err(f"a launcher (pid {pid}) is running on {state_dir}: stop it first")
        return 1
    killed = kill_leftovers(state_dir)
    if killed:
        print(f"launcher: killed leftover process groups {killed}")
    for path in servers.remove_external_paths(state_dir):
        print(f"launcher: removed {path}")
    ours = (state_dir / STATE_FILE).exists() or (state_dir / "logs").exists()
    if state_dir.exists() and (ours or state_dir == DEFAULT_STATE_DIR.resolve()):
        shutil.rmtree(state_dir)
        print(f"launcher: removed {state_dir}")
    return 0


def _ports_help() -> str:
    defaults = PortPlan()
    lines = ["port variables (defaults):"]
    for name, (var, component) in PORT_VARIABLES.items():
        value = getattr(defaults, name)
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        lines.append(f"  {var:<30} {shown:<12} {component.format(n='N')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launcher",
        description="Run the chatmesh mesh locally with real servers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_ports_help(),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "up",
        help="start everything and run until Ctrl-C",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_ports_help(),
    )
    up.add_argument("--state-dir", help="state folder (default $CHATMESH_STATE_DIR or .state)")
    up.add_argument(
        "--free-ports", action="store_true", help="ignore the port plan, pick free ports"
    )
    up.add_argument("--no-fsync", action="store_true", help="PostgreSQL fsync=off (tests)")
    up.set_defaults(func=cmd_up)
    clean = sub.add_parser("clean", help="kill leftovers, remove the state folder and /tmp copies")
    clean.add_argument("--state-dir", help="state folder (default $CHATMESH_STATE_DIR or .state)")
    clean.set_defaults(func=cmd_clean)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
