"""The load tool against the real mesh: a short, low-rate run loses nothing.

The same `run_load` that `chatmesh-load` and `make bench` use, with its worker processes, against
the edge of the session's mesh; every process of the mesh is watched by pid.
"""

from __future__ import annotations

from bench.runner import LoadConfig, run_load
from launcher.mesh import Mesh


def test_a_short_run_against_the_mesh_loses_nothing(mesh: Mesh) -> None:
    lines: list[str] = []
    report = run_load(
        LoadConfig(
            url=mesh.edge_url,
            rates=[20],
            duration_s=3.0,
            drain_s=20.0,
            workers=2,
            clients=4,
            pids=mesh.pids(),
            label="chatmesh",
        ),
        out=lines.append,
    )
    (stage,) = report["stages"]
    assert report["ok"], stage
    assert stage["scheduled"] == stage["sent"] == 60
    assert stage["acked"] == stage["received"] == 60, stage
    assert stage["lost"] == stage["unanswered"] == stage["failed"] == 0
    assert stage["errors"] == {}
    assert stage["latency"]["delivery"]["count"] == 60
    assert stage["latency"]["delivery"]["p50_ms"] < 1000
    # Every process of the mesh was watched, and the ones on the message path worked.
    assert set(stage["processes"]) == set(mesh.instances)
    for name in ("gateway-1", "gateway-2", "envoy", "tansu", "postgres"):
        figures = stage["processes"][name]
        assert figures["alive"] and figures["memory_mib"] > 0, (name, figures)
    assert sum(stage["processes"][n]["cpu_s"] for n in ("chat_svc-1", "chat_svc-2")) > 0
    assert any(line.startswith("    1s ") for line in lines)  # progress while it ran
