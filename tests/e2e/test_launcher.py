"""`python -m launcher up` as a developer runs it: ready, then SIGTERM leaves nothing behind.

The launcher runs as a subprocess on free ports (through the documented CHATMESH_*_PORT
variables) with a temporary state folder. While it runs we collect every descendant process
(from /proc, so grandchildren such as PostgreSQL backends count too) plus the process groups it
recorded in launcher.json; after SIGTERM every one of them must be gone and every port bindable.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher import servers
from launcher.mesh import Mesh, PortPlan, read_state

pytestmark = pytest.mark.e2e

READY_DEADLINE_S = 120.0
STOP_DEADLINE_S = 40.0


def _poll(condition: Callable[[], bool], deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {deadline_s:.0f} s")
        time.sleep(0.1)


def _launch(plan: PortPlan, state: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **plan.as_env()}
    env.pop("CHATMESH_STATE_DIR", None)
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "launcher", "up", "--state-dir", str(state), "--no-fsync"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time in clock ticks) from /proc/PID/stat, None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of every live descendant of `root`; start time guards pid reuse."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[1], []).append((int(entry.name), st[2]))
    found: set[tuple[int, int]] = set()
    todo = [root]
    while todo:
        for pid, started in children.get(todo.pop(), []):
            found.add((pid, started))
            todo.append(pid)
    return found


def _still_running(pid: int, started: int) -> bool:
    st = _stat(pid)
    return st is not None and st[2] == started and st[0] != "Z"


def test_up_then_sigterm_leaves_no_process_and_no_port(tmp_path: Path) -> None:
    launcher_log = tmp_path / "launcher-output.log"
    plan = PortPlan.free()
    state = tmp_path / "state"
    launcher = _launch(plan, state, launcher_log)
    try:

        def edge_ready() -> bool:
            if launcher.poll() is not None:
                raise AssertionError(
                    f"launcher exited with {launcher.returncode}:\n{launcher_log.read_text()}"
                )
            return servers.http_status(f"http://127.0.0.1:{plan.edge}/healthz") == 200

        _poll(edge_ready, READY_DEADLINE_S, "GET /healthz on the launcher's edge == 200")

        # A service that dies is started again, like a pod; the mesh serves again.
        def chat_pid() -> int:
            processes = json.loads((state / "launcher.json").read_text())["processes"]
            return int(processes["chat_svc-1"]["pid"])

        killed = chat_pid()
        os.kill(killed, signal.SIGKILL)
        _poll(
            lambda: chat_pid() != killed and _stat(chat_pid()) is not None,
            READY_DEADLINE_S,
            "chat_svc-1 restarted by the launcher",
        )
        _poll(
            lambda: "chat_svc-1 restarted" in launcher_log.read_text(),
            READY_DEADLINE_S,
            "the launcher reporting the restart",
        )
        _poll(edge_ready, READY_DEADLINE_S, "GET /healthz == 200 after the restart")

        descendants = _descendants(launcher.pid)
        recorded = json.loads((state / "launcher.json").read_text())["processes"]
        recorded_pids = {info["pid"] for info in recorded.values()}
        assert {pid for pid, _ in descendants} >= recorded_pids
        expected = {"tansu", "postgres", "valkey", "envoy", "gateway-1", "gateway-2"}
        assert expected <= set(recorded)

        launcher.send_signal(signal.SIGTERM)
        launcher.wait(STOP_DEADLINE_S)
        assert launcher.returncode == 0, launcher_log.read_text()
    finally:
        if launcher.poll() is None:
            # A failed check still stops the mesh the way a developer would (SIGTERM), so no
            # process it started outlives the test; SIGKILL only if that hangs.
            launcher.send_signal(signal.SIGTERM)
            try:
                launcher.wait(STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()

    _poll(
        lambda: not [p for p in descendants if _still_running(*p)],
        STOP_DEADLINE_S,
        "every process the launcher started is gone",
    )
    for pgid in recorded_pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
    _poll(
        lambda: all(servers.port_is_free(port) for port, _, _ in plan.entries()),
        STOP_DEADLINE_S,
        "every port of the plan can be bound again",
    )
    output = launcher_log.read_text()
    assert "launcher: stopped" in output

    # `clean` removes the state folder and what lived outside it (PostgreSQL data under /tmp
    # when pytest's 0700 temp folder is not reachable by `nobody`).
    outside = servers.read_external_paths(state)
    cleaned = subprocess.run(
        [sys.executable, "-m", "launcher", "clean", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cleaned.returncode == 0, cleaned.stderr
    assert not state.exists()
    assert not [p for p in outside if p.exists()]


def test_taken_port_fails_fast_naming_it(tmp_path: Path) -> None:
    launcher_log = tmp_path / "launcher-output.log"
    plan = PortPlan.free()
    state = tmp_path / "state"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", plan.edge))
        holder.listen()
        launcher = _launch(plan, state, launcher_log)
        try:
            code = launcher.wait(30)
        finally:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()
    output = launcher_log.read_text()
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert f"port {plan.edge}" in lines[0]
    assert "envoy edge listener" in lines[0]
    assert "CHATMESH_EDGE_PORT" in lines[0]
    record = read_state(state)
    assert record is None or record["processes"] == {}  # nothing was started


def test_mesh_fixture_survives_a_killed_gateway(mesh: Mesh) -> None:
    """The `mesh` fixture's instance control: kill one gateway, the edge still serves, restart."""
    healthz = f"{mesh.edge_url}/healthz"
    assert servers.http_status(healthz) == 200
    victim = mesh.instance("gateway-1")
    old_pid = victim.pid
    mesh.kill_instance("gateway-1")
    assert not victim.alive()
    # Envoy retries connect failures on the other gateway: no request is lost.
    for _ in range(5):
        assert servers.http_status(healthz) == 200
    mesh.restart_instance("gateway-1")
    assert victim.alive() and victim.pid != old_pid
    _poll(lambda: servers.http_status(healthz) == 200, 30, "edge healthy after restart")
