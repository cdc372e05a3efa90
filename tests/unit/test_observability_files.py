"""The operators' files (alert rules, Grafana dashboard, the launcher's scrape config) name only
metrics the code exports, and Prometheus' own checker accepts them.

`make lint` runs `promtool check rules` and `promtool test rules` on the alert rules; here the
names are checked against the code, and the launcher's scrape config against `promtool check
config`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import chat_svc.metrics
import gateway.metrics
import persister.metrics
import svckit.metrics
from launcher.mesh import ALERT_RULES, Mesh, PortPlan

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "observability" / "grafana" / "chatmesh.json"
# Metric names (not recording rules, which are named level:metric:operations).
OURS = re.compile(r"(?<![\w:])((?:chatmesh|grpc_server|grpc_client)_[a-z0-9_]+)\b")
_ = (chat_svc.metrics, gateway.metrics, persister.metrics, svckit.metrics)  # registered


def exported() -> set[str]:
    """Every sample name the chatmesh processes can expose."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("", "_bucket", "_sum", "_count"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names = set()
    for family in REGISTRY.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_alerts_and_dashboard_name_only_exported_metrics() -> None:
    names = exported()
    texts = {"alerts.yml": ALERT_RULES.read_text(), "chatmesh.json": "\n".join(dashboard_exprs())}
    for where, text in texts.items():
        used = set(OURS.findall(text))
        assert used, where
        unknown = sorted(used - names)
        assert not unknown, f"{where} names metrics no process exports: {unknown}"


def test_every_metric_is_named_by_the_conventions() -> None:
    for family in REGISTRY.collect():
        if not family.name.startswith(("chatmesh_", "grpc_")):
            continue
        assert re.fullmatch(r"[a-z][a-z0-9_]*", family.name), family.name
        assert family.documentation, family.name
        if "latency" in family.name or "seconds" in family.name:
            assert family.name.endswith("_seconds"), f"{family.name}: base unit seconds"


def test_the_dashboard_is_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        for target in panel.get("targets", []):
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    assert board["templating"]["list"][0]["type"] == "datasource"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: `make test` installs it (Debian package prometheus)")
    return found


def test_the_launchers_scrape_config_passes_promtool(tmp_path: Path) -> None:
    mesh = Mesh(PortPlan.free(), tmp_path)
    mesh.state_dir.mkdir(parents=True, exist_ok=True)
    path = mesh._write_prometheus_config()
    config = json.loads(path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {
        "gateway",
        "chat_svc",
        "user_svc",
        "presence_svc",
        "notify_svc",
        "persister",
        "envoy",
    }
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    assert len(jobs["gateway"]["static_configs"][0]["targets"]) == 2
    result = subprocess.run(
        [promtool(), "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
