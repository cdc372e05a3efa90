"""The port plan: variables override defaults, and a taken port fails with one clear line."""

from __future__ import annotations

import socket

import pytest

from launcher.mesh import MeshError, PortInUseError, PortPlan


def test_defaults_are_the_spec_table() -> None:
    plan = PortPlan.from_env({})
    assert (plan.edge, plan.mesh, plan.envoy_admin) == (8080, 10000, 9901)
    assert plan.gateway_http == (8091, 8092)
    assert plan.gateway_grpc == (9191, 9192)
    assert plan.chat == (9201, 9202)
    assert (plan.user, plan.presence, plan.notify) == (9211, 9221, 9231)
    assert plan.persister == (9241, 9242)
    assert (plan.kafka, plan.postgres, plan.valkey) == (9092, 5433, 6380)


def test_variables_override_and_round_trip() -> None:
    plan = PortPlan.from_env({"CHATMESH_EDGE_PORT": "18080", "CHATMESH_CHAT_PORTS": "1,2,3"})
    assert plan.edge == 18080
    assert plan.chat == (1, 2, 3)
    free = PortPlan.free()
    assert PortPlan.from_env(free.as_env()) == free
    ports = [p for p, _, _ in free.entries()]
    assert len(ports) == len(set(ports))


@pytest.mark.parametrize("value", ["http", "0", "70000", "1,2"])
def test_bad_values_name_the_variable(value: str) -> None:
    with pytest.raises(MeshError, match="CHATMESH_POSTGRES_PORT"):
        PortPlan.from_env({"CHATMESH_POSTGRES_PORT": value})


def test_taken_port_is_named_with_component_and_variable() -> None:
    plan = PortPlan.free()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", plan.valkey))
        sock.listen()
        with pytest.raises(PortInUseError) as info:
            plan.check_free()
    message = str(info.value)
    assert f"port {plan.valkey}" in message
    assert "valkey" in message
    assert "CHATMESH_VALKEY_PORT" in message
    assert "\n" not in message


def test_duplicate_port_in_plan_is_refused() -> None:
    plan = PortPlan.free()
    clash = PortPlan.from_env({**plan.as_env(), "CHATMESH_USER_PORT": str(plan.edge)})
    with pytest.raises(PortInUseError, match="CHATMESH_USER_PORT"):
        clash.check_free()


def test_every_service_instance_has_a_metrics_port() -> None:
    plan = PortPlan.from_env({})
    assert plan.gateway_metrics == (9291, 9292)
    assert plan.chat_metrics == (9301, 9302)
    assert (plan.user_metrics, plan.presence_metrics, plan.notify_metrics) == (9311, 9321, 9331)
    assert plan.persister_metrics == (9341, 9342)
    # More instances than metrics ports given: the ports follow on from the first.
    three = PortPlan.from_env({"CHATMESH_CHAT_PORTS": "1,2,3"})
    assert three.chat_metrics == (9301, 9302, 9303)
    with pytest.raises(MeshError, match="CHATMESH_CHAT_METRICS_PORTS"):
        PortPlan.from_env({"CHATMESH_CHAT_PORTS": "1,2,3", "CHATMESH_CHAT_METRICS_PORTS": "7,8"})
    small = PortPlan.free(gateways=1, chats=3, persisters=1)
    assert (len(small.gateway_metrics), len(small.chat_metrics)) == (1, 3)
    assert len(small.persister_metrics) == 1
    ports = [p for p, _, _ in small.entries()]
    assert len(ports) == len(set(ports))
