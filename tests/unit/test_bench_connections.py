"""`make bench-connections`'s arithmetic and conditions, on made-up figures (the run itself is
measured by `make bench-connections`, never inside `make test`)."""

from __future__ import annotations

import resource

import pytest

from bench import connections as c

NS = c.NS


def test_shares_split_evenly_and_never_leave_a_worker_empty() -> None:
    assert c.shares(5000, 2) == [2500, 2500]
    assert c.shares(10, 3) == [4, 3, 3]
    assert c.shares(2, 4) == [1, 1]
    assert sum(c.shares(4999, 3)) == 4999
    with pytest.raises(ValueError):
        c.shares(0, 2)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert c.percentile(values, 50) == 50.0
    assert c.percentile(values, 99) == 99.0
    assert c.percentile(values, 100) == 100.0
    assert c.percentile([7.0], 99) == 7.0
    assert c.percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input
    assert c.percentile([], 50) is None


def test_latency_summary() -> None:
    summary = c.latency_summary([10.0, 20.0, 30.0, 40.0])
    assert summary == {
        "count": 4,
        "p50_ms": 20.0,
        "p90_ms": 40.0,
        "p99_ms": 40.0,
        "max_ms": 40.0,
        "mean_ms": 25.0,
    }
    assert c.latency_summary([])["p50_ms"] is None


def test_per_socket_kib() -> None:
    assert c.per_socket_kib(100 * 2**20, 100 * 2**20 + 5000 * 27 * 1024, 5000) == 27.0
    assert c.per_socket_kib(2048, 1024, 1) == -1.0
    with pytest.raises(ValueError):
        c.per_socket_kib(0, 1, 0)


def test_settled_needs_three_close_samples() -> None:
    assert not c.settled([100, 100])
    assert c.settled([50, 1000, 1001, 1004])
    assert not c.settled([1000, 1001, 1100])


def test_gauge_value_reads_an_unlabelled_metric() -> None:
    text = (
        "# HELP chatmesh_ws_connections WebSockets open.\n"
        "# TYPE chatmesh_ws_connections gauge\n"
        "chatmesh_ws_connections 5000.0\n"
        "chatmesh_ws_connections_opened_total 5050.0\n"
    )
    assert c.gauge_value(text, "chatmesh_ws_connections") == 5000.0
    assert c.gauge_value(text, "chatmesh_ws_connections_opened_total") == 5050.0
    assert c.gauge_value(text, "missing") is None


def test_only_a_connection_unseen_before_the_storm_counts() -> None:
    old = {"u1": frozenset({"a"}), "u2": frozenset({"b"})}
    entries = [("u1", "a"), ("u2", "b"), ("u2", "c"), ("u3", "d")]
    # u1 still shows its old socket only (not withdrawn yet): not reconnected.
    assert c.users_with_new_connection(entries, old) == {"u2", "u3"}


def test_storm_figures_end_at_the_later_of_upgrades_and_presence() -> None:
    start = 10 * NS
    upgraded = [start + NS // 2, start + 2 * NS]
    late_presence = c.storm_figures(start, upgraded, start + 4 * NS, 1000)
    assert late_presence["total_s"] == 4.0
    assert late_presence["sockets_per_s"] == 250.0
    assert late_presence["last_upgrade_s"] == 2.0
    assert late_presence["presence_confirmed_s"] == 4.0
    late_upgrade = c.storm_figures(start, upgraded, start + NS, 1000)
    assert late_upgrade["total_s"] == 2.0


def test_fds_needed_counts_two_per_socket_in_envoy() -> None:
    need = c.fds_needed(5000)
    assert need["envoy"] >= 10_000
    assert need["gateway"] >= 5000 and need["client"] >= 5000
    assert max(need.values()) < 20_000  # fits the hard limit of our machines


def test_raise_nofile_limit_reaches_the_hard_limit() -> None:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        soft, hard = c.raise_nofile_limit()
        assert hard == before[1]
        assert soft == hard or hard == resource.RLIM_INFINITY
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_report_lines_name_every_figure() -> None:
    storm = {
        "resume": False,
        "total_s": 4.2,
        "sockets_per_s": 1190.5,
        "last_upgrade_s": 4.0,
        "presence_confirmed_s": 4.2,
        "connect_latency": c.latency_summary([100.0, 2000.0]),
        "attempts": 5003,
        "errors": {"http_503": 3},
        "old_withdrawn_s": 5.0,
        "gateway_cpu_s": 3.0,
        "envoy_cpu_s": 1.0,
        "client_cpu_s": 2.0,
    }
    memory = {"before_mib": 60.0, "after_mib": 180.0, "per_socket_kib": 24.6}
    result = {
        "started_at": "2026-11-22 10:00:00",
        "sockets": 5000,
        "workers": 2,
        "machine": {"cores": 2},
        "target_kib": 30.0,
        "setup": {"accounts_s": 50.0, "accounts_per_s": 100.0},
        "memory": {
            "open_s": 20.0,
            "gateway": {**memory, "uss_per_socket_kib": 24.0},
            "envoy": memory,
            "valkey": {**memory, "keys_before": 2, "keys_after": 10002},
        },
        "storms": [storm, {**storm, "resume": True, "errors": {}}],
    }
    text = "\n".join(c.report_lines(result))
    assert "24.6 KiB per idle socket" in text and "under the 30 KiB target" in text
    assert "reconnected in 4.20 s (1,190 sockets/s" in text
    assert "http_503 x3" in text and "3 retried attempts" in text
    assert "with ?resume=" in text
