"""Envoy traces only when an OTLP endpoint is configured, from the same OTEL_* variables as the
services, and Envoy accepts what is rendered for either protocol."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from launcher import envoy_config, servers
from svckit import channels

Tracing = envoy_config.Tracing


def _topology(tracing: Tracing | None) -> envoy_config.Topology:
    return envoy_config.Topology(
        edge_port=18080,
        mesh_port=20000,
        admin_port=19901,
        gateway_http_ports=(18091,),
        grpc_ports={a: (19211 + i,) for i, a in enumerate(envoy_config.GRPC_AUTHORITIES)},
        tracing=tracing,
    )


def _hcms(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        listener["filter_chains"][0]["filters"][0]["typed_config"]
        for listener in config["static_resources"]["listeners"]
    ]


def test_no_endpoint_no_tracing() -> None:
    assert Tracing.from_env({}) is None
    assert Tracing.from_env({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"}) is (
        None
    )
    config = envoy_config.render(_topology(None))
    assert all("tracing" not in hcm for hcm in _hcms(config))
    names = [c["name"] for c in config["static_resources"]["clusters"]]
    assert envoy_config.OTLP_CLUSTER not in names
    assert "layered_runtime" not in config


def test_the_standard_variables_configure_envoy() -> None:
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert Tracing.from_env(base) == Tracing("127.0.0.1", 4318, "http/protobuf", "/v1/traces")
    grpc = Tracing.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "127.0.0.1:4317",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_BSP_SCHEDULE_DELAY": "500",
        }
    )
    assert grpc == Tracing("127.0.0.1", 4317, "grpc", "/v1/traces", 25.0, 500)
    full = Tracing.from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://otel:4318/in/traces"})
    assert full is not None and (full.host, full.path) == ("otel", "/in/traces")
    off = Tracing.from_env({**base, "OTEL_TRACES_SAMPLER": "always_off"})
    assert off is not None and off.sampling_percent == 0


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:1",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
            },
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:1", "OTEL_BSP_SCHEDULE_DELAY": "soon"},
            "OTEL_BSP_SCHEDULE_DELAY",
        ),
    ],
)
def test_what_envoy_cannot_use_is_named(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ValueError, match=variable):
        Tracing.from_env(env)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_envoy_accepts_the_tracing_config(protocol: str, tmp_path: Path) -> None:
    tracing = Tracing("127.0.0.1", 4318, protocol, sampling_percent=10.0, flush_interval_ms=200)
    config = envoy_config.render(_topology(tracing))
    for hcm in _hcms(config):
        assert hcm["tracing"]["random_sampling"] == {"value": 10.0}
        provider = hcm["tracing"]["provider"]
        assert provider["name"] == "envoy.tracers.opentelemetry"
        assert ("grpc_service" if protocol == "grpc" else "http_service") in provider[
            "typed_config"
        ]
    layer = config["layered_runtime"]["layers"][0]["static_layer"]
    assert layer == {"tracing.opentelemetry.flush_interval_ms": 200}
    path = servers.write_envoy_config(config, tmp_path / "envoy.json")
    servers.validate_envoy_config(path)
    named = dataclasses.replace(tracing, host="otel-collector.observability")
    cluster = {
        c["name"]: c for c in envoy_config.render(_topology(named))["static_resources"]["clusters"]
    }[envoy_config.OTLP_CLUSTER]
    assert cluster["type"] == "STRICT_DNS"


def test_mesh_routes_name_envoys_spans_after_the_method() -> None:
    config = envoy_config.render(_topology(None))
    mesh = _hcms(config)[1]
    chat = next(v for v in mesh["route_config"]["virtual_hosts"] if v["name"] == channels.CHAT)
    send = chat["routes"][0]
    assert send["decorator"] == {"operation": "/chatmesh.chat.v1.ChatService/SendMessage"}
