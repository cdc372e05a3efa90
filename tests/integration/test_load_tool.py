"""The load tool against the bare relay on 127.0.0.1, over real sockets.

In-process (`bench.worker.Worker` in the test's loop, the relay on an aiohttp site): counts match,
a stalled relay shows as latency from the intended send time, a lossy relay is caught. Then the
whole tool as a user runs it (`python -m bench`, worker processes) against `python -m bench.relay`
in its own process: exit status 0 and matching counts, exit status 1 on loss.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bench import stats
from bench.relay import Relay
from bench.schedule import NS
from bench.worker import StageSpec, Worker, WorkerSpec
from launcher import servers


@pytest.fixture
async def relay() -> AsyncIterator[tuple[Relay, str]]:
    server = Relay()
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _stage(worker: Worker, rate: float, seconds: float, drain: float = 5.0) -> dict[str, Any]:
    start = time.monotonic_ns() + NS // 10
    return await worker.run_stage(StageSpec(0, rate, start, seconds, drain))


async def test_every_acknowledged_message_is_received_once(relay: tuple[Relay, str]) -> None:
    _, url = relay
    worker = Worker(WorkerSpec(index=0, workers=1, url=url, clients=6, run_id="t1"))
    try:
        accounts = await worker.setup()
        assert len({a.user_id for a in accounts}) == 6
        result = await _stage(worker, rate=200, seconds=1.0)
    finally:
        await worker.close()
    assert result["scheduled"] == result["sent"] == 200
    assert result["acked"] == result["received"] == 200
    assert result["lost"] == result["unanswered"] == result["duplicates"] == 0
    assert result["errors"] == {}
    delivery = stats.summary(stats.merge([result["histograms"]["delivery"]]))
    assert delivery["count"] == 200
    assert delivery["p50_ms"] < 50


async def test_a_stalled_server_shows_as_latency_from_the_intended_time(
    relay: tuple[Relay, str],
) -> None:
    server, url = relay
    worker = Worker(WorkerSpec(index=0, workers=1, url=url, clients=4, run_id="t2"))
    try:
        await worker.setup()
        stage = asyncio.ensure_future(_stage(worker, rate=100, seconds=1.5))
        await asyncio.sleep(0.6)
        server.pause()  # frames queue in the sockets; the tool keeps sending on schedule
        await asyncio.sleep(0.4)
        server.resume()
        result = await stage
    finally:
        await worker.close()
    assert result["acked"] == result["received"] == result["sent"] == 150
    delivery = stats.summary(stats.merge([result["histograms"]["delivery"]]))
    # The first message sent into the stall waited for all of it: measured from its intended
    # time. A closed-loop tool would have sent nothing more during the stall and missed it.
    assert delivery["max_ms"] >= 300
    assert delivery["p90_ms"] >= 50  # about a quarter of the messages waited
    lag = stats.summary(stats.merge([result["histograms"]["send_lag"]]))
    assert lag["p99_ms"] < 100  # the tool itself kept to its schedule


async def test_a_server_that_loses_acknowledged_messages_is_caught(
    relay: tuple[Relay, str],
) -> None:
    server, url = relay
    server.drop_every = 10
    worker = Worker(WorkerSpec(index=0, workers=1, url=url, clients=4, run_id="t3"))
    try:
        await worker.setup()
        result = await _stage(worker, rate=100, seconds=1.0, drain=0.5)
    finally:
        await worker.close()
    assert result["acked"] == 100
    assert result["lost"] == 10 and result["received"] == 90
    assert len(result["lost_msg_ids"]) == 10


# --- the tool as a user runs it --------------------------------------------------------------


@pytest.fixture
def relay_process(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    drop_every = getattr(request, "param", 0)
    port = servers.free_ports(1)[0]
    log = (tmp_path / "relay.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.relay", "--port", str(port)]
        + (["--drop-every", str(drop_every)] if drop_every else []),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        servers.wait_until(lambda: servers.http_status(f"{url}/healthz") == 200, None, "relay", 20)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _tool(url: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", url, "--json", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tool_runs_a_series_and_counts_match(relay_process: str, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    run = _tool(
        relay_process,
        out,
        *("--rate", "100,300", "--duration", "1.5", "--warmup", "0.5", "--workers", "2"),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "OK: every acknowledged message was received" in run.stdout
    assert "1s     300/s" in run.stdout  # a progress line per second
    report = json.loads(out.read_text())
    assert report["ok"] is True
    assert [s["offered_per_s"] for s in report["stages"]] == [100, 100, 300]
    for stage in report["stages"]:
        assert stage["sent"] == stage["acked"] == stage["received"] == stage["scheduled"]
        assert stage["lost"] == 0 and stage["errors"] == {}
        assert stage["latency"]["delivery"]["count"] == stage["received"]
    assert report["stages"][-1]["sent"] == 450
    tool = report["stages"][-1]["load_tool"]
    assert tool["cpu_s"] > 0 and tool["memory_mib"] > 0


@pytest.mark.parametrize("relay_process", [7], indirect=True)
def test_the_tool_fails_loudly_on_loss(relay_process: str, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    run = _tool(
        relay_process,
        out,
        *("--rate", "70", "--duration", "1", "--warmup", "0", "--drain", "1", "--workers", "1"),
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAILED: stage 0: 10 acknowledged messages never arrived" in run.stdout
    report = json.loads(out.read_text())
    assert report["ok"] is False and report["stages"][0]["lost"] == 10


def test_the_tool_refuses_targets_off_this_machine(tmp_path: Path) -> None:
    run = _tool("http://192.0.2.1:8080", tmp_path / "r.json")
    assert run.returncode == 2
    assert "not a loopback address" in run.stdout
