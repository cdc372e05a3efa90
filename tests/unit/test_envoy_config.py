"""The rendered Envoy bootstrap: Envoy accepts it, and the routing policy is the intended one.

Retrying a non-idempotent call (CreateUser, CreateSession, DeliverMessages) could create a second
account, mint a second token or push a frame twice, so the tests pin which routes retry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from launcher import envoy_config, servers
from svckit import channels

NOT_RETRIED = {
    "/chatmesh.user.v1.UserService/CreateUser",
    "/chatmesh.user.v1.UserService/CreateSession",
    "/chatmesh.gateway.v1.GatewayService/DeliverMessages",
}


def _topology() -> envoy_config.Topology:
    return envoy_config.Topology(
        edge_port=18080,
        mesh_port=20000,
        admin_port=19901,
        gateway_http_ports=(18091, 18092),
        grpc_ports={
            channels.USER: (19211,),
            channels.CHAT: (19201, 19202),
            channels.PRESENCE: (19221,),
            channels.NOTIFY: (19231,),
            channels.PERSISTER: (19241,),
        },
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return envoy_config.render(_topology())


def _listener(config: dict[str, Any], name: str) -> dict[str, Any]:
    for listener in config["static_resources"]["listeners"]:
        if listener["name"] == name:
            return dict(listener)
    raise AssertionError(f"no listener {name}")


def _hcm(listener: dict[str, Any]) -> dict[str, Any]:
    return dict(listener["filter_chains"][0]["filters"][0]["typed_config"])


def _mesh_routes(config: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    vhosts = _hcm(_listener(config, "mesh"))["route_config"]["virtual_hosts"]
    return {vh["name"]: vh["routes"] for vh in vhosts}


def _cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == name:
            return dict(cluster)
    raise AssertionError(f"no cluster {name}")


def test_envoy_accepts_the_rendered_config(config: dict[str, Any], tmp_path: Path) -> None:
    path = servers.write_envoy_config(config, tmp_path / "envoy.json")
    servers.validate_envoy_config(path)  # raises with Envoy's complaint


def test_only_idempotent_methods_are_retried(config: dict[str, Any]) -> None:
    routed: dict[str, bool] = {}
    for routes in _mesh_routes(config).values():
        for route in routes:
            path = route["match"].get("path")
            if path is not None:
                routed[path] = "retry_policy" in route["route"]
    for authority, rpcs in envoy_config.rpc_policies().items():
        for rpc in rpcs:
            assert rpc.path in routed, f"{authority} {rpc.path} has no route"
            expected = rpc.path not in NOT_RETRIED
            assert routed[rpc.path] is expected, rpc.path
    assert NOT_RETRIED <= set(routed)
    retried = [r for r, retry in routed.items() if retry]
    assert "/chatmesh.chat.v1.ChatService/SendMessage" in retried
    assert "/chatmesh.notify.v1.NotifyService/EnqueueNotification" in retried


def test_retry_policy_details(config: dict[str, Any]) -> None:
    routes = _mesh_routes(config)[channels.USER]
    get_user = next(r for r in routes if r["match"].get("path", "").endswith("/GetUser"))
    policy = get_user["route"]["retry_policy"]
    assert policy["retry_on"] == "unavailable,reset,connect-failure,refused-stream"
    assert policy["num_retries"] == 2
    assert policy["per_try_timeout"]
    assert get_user["match"]["grpc"] == {}


def test_every_virtual_host_has_a_grpc_catch_all(config: dict[str, Any]) -> None:
    routes = _mesh_routes(config)
    for authority in envoy_config.GRPC_AUTHORITIES:
        vh_domains = [authority, f"{authority}:*"]
        last = routes[authority][-1]
        assert last["match"] == {"prefix": "/", "grpc": {}}, authority
        assert last["route"]["cluster"] == authority
        assert "retry_policy" not in last["route"]
        vhosts = _hcm(_listener(config, "mesh"))["route_config"]["virtual_hosts"]
        assert next(v for v in vhosts if v["name"] == authority)["domains"] == vh_domains


def test_gateway_host_routes_by_header_to_original_dst(config: dict[str, Any]) -> None:
    cluster = _cluster(config, envoy_config.GATEWAY_DIRECT_CLUSTER)
    assert cluster["type"] == "ORIGINAL_DST"
    assert cluster["lb_policy"] == "CLUSTER_PROVIDED"
    assert cluster["original_dst_lb_config"] == {
        "use_http_header": True,
        "http_header_name": "x-chatmesh-gateway-addr",
    }
    for route in _mesh_routes(config)[channels.GATEWAY]:
        if "route" in route:
            assert route["route"]["cluster"] == envoy_config.GATEWAY_DIRECT_CLUSTER
            assert route["match"]["headers"][0]["name"] == "x-chatmesh-gateway-addr"


def test_service_clusters_health_check_and_never_panic(config: dict[str, Any]) -> None:
    for authority in envoy_config.GRPC_AUTHORITIES:
        cluster = _cluster(config, authority)
        assert cluster["type"] == "STATIC"
        (check,) = cluster["health_checks"]
        assert check["grpc_health_check"] == {"service_name": ""}
        assert check["no_traffic_interval"] == "1s"
        assert cluster["common_lb_config"]["healthy_panic_threshold"]["value"] == 0
        assert "outlier_detection" in cluster
        options = cluster["typed_extension_protocol_options"]
        assert "http2_protocol_options" in next(iter(options.values()))["explicit_http_config"]
    chat = _cluster(config, channels.CHAT)
    endpoints = chat["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints] == [
        19201,
        19202,
    ]


def test_edge_serves_websockets_without_timeouts(config: dict[str, Any]) -> None:
    hcm = _hcm(_listener(config, "edge"))
    assert hcm["codec_type"] == "AUTO"
    assert hcm["upgrade_configs"] == [{"upgrade_type": "websocket"}]
    assert hcm["stream_idle_timeout"] == "0s"
    reads, others = hcm["route_config"]["virtual_hosts"][0]["routes"]
    for route in (reads, others):
        assert route["route"]["timeout"] == "0s"
        assert route["route"]["cluster"] == envoy_config.GATEWAY_HTTP_CLUSTER
    # A POST is retried only when it never reached a gateway; a GET also after a reset.
    assert "reset" in reads["route"]["retry_policy"]["retry_on"]
    assert reads["match"]["headers"][0]["name"] == ":method"
    assert "reset" not in others["route"]["retry_policy"]["retry_on"]
    assert "headers" not in others["match"]
    gateways = _cluster(config, envoy_config.GATEWAY_HTTP_CLUSTER)
    assert gateways["health_checks"][0]["http_health_check"] == {"path": "/livez"}
    assert gateways["common_lb_config"]["healthy_panic_threshold"]["value"] == 0
    # Client-closed WebSockets count as local-origin failures in Envoy: no outlier ejection of
    # gateways, or a few closes would take the edge down (the active check finds dead ones).
    assert "outlier_detection" not in gateways
    # Each socket holds an upstream connection and a request: Envoy's default circuit breakers
    # (1,024 for all gateways together) would refuse socket 1,025 with 503.
    (breakers,) = gateways["circuit_breakers"]["thresholds"]
    for key in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
        assert breakers[key] == envoy_config.MAX_DOWNSTREAM_CONNECTIONS


def test_edge_local_replies_are_json_errors(config: dict[str, Any]) -> None:
    local = _hcm(_listener(config, "edge"))["local_reply_config"]
    by_status = {
        m["filter"]["status_code_filter"]["comparison"]["value"]["default_value"]: m
        for m in local["mappers"]
    }
    unavailable = by_status[503]["body_format_override"]
    assert unavailable["content_type"] == "application/json"
    assert unavailable["json_format"]["error"]["code"] == "unavailable"


def test_everything_binds_loopback_only(config: dict[str, Any]) -> None:
    assert config["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 19901,
    }
    for listener in config["static_resources"]["listeners"]:
        assert listener["address"]["socket_address"]["address"] == "127.0.0.1"


def test_a_method_without_policy_fails_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    user = dict(envoy_config.RPC_POLICIES[channels.USER])
    del user["GetUser"]
    monkeypatch.setitem(envoy_config.RPC_POLICIES, channels.USER, user)
    with pytest.raises(ValueError, match="GetUser"):
        envoy_config.render(_topology())


def test_send_message_is_hashed_on_the_conversation_onto_a_chat_ring() -> None:
    config = envoy_config.render(_topology())
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert clusters[channels.CHAT]["lb_policy"] == "RING_HASH"
    assert clusters[channels.USER]["lb_policy"] == "ROUND_ROBIN"
    routes = [
        route
        for listener in config["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for f in chain["filters"]
        for host in f["typed_config"].get("route_config", {}).get("virtual_hosts", [])
        for route in host["routes"]
    ]
    send = [r for r in routes if r["match"].get("path", "").endswith("/SendMessage")]
    assert len(send) == 1
    assert send[0]["route"]["hash_policy"] == [
        {"header": {"header_name": envoy_config.CONVERSATION_HEADER}}
    ]
