"""One message is one trace across every hop, and the metrics move by what it did.

A mesh of its own (one instance of each service, to stay light) runs with the standard OTEL_*
variables pointing at an OTLP receiver this module starts (svckit.testing.OtlpReceiver), once
over HTTP/protobuf and once over gRPC;
the same variables configure Envoy's tracer through the launcher. Alice sends Bob one message
through the edge; the test then reads the trace it produced, and every metrics endpoint the
launcher assigned, before and after. Waits are conditions with deadlines, never sleeps.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from launcher.mesh import ALERT_RULES, ROOT, Mesh, PortPlan
from svckit.testing import OtlpReceiver, ReceivedSpan, eventually, sample, scrape

pytestmark = pytest.mark.e2e

WAIT_S = 15.0
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP span kinds
DASHBOARD = ROOT / "deploy" / "observability" / "grafana" / "chatmesh.json"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module", params=["http/protobuf", "grpc"])
def traced_mesh(
    receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Mesh]:
    """The mesh exporting over OTLP/HTTP, then over OTLP/gRPC (services and Envoy alike)."""
    protocol = request.param
    grpc = protocol == "grpc"
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint if grpc else receiver.http_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # services and Envoy export within 0.2 s
    }
    running = Mesh(
        PortPlan.free(gateways=1, chats=1, persisters=1),
        tmp_path_factory.mktemp("traced-mesh"),
        fsync=False,
        ready_timeout_s=90.0,
        service_env=env,
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()
        running.clean()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
        yield session


async def _account(http: aiohttp.ClientSession, base: str) -> tuple[str, str]:
    body = {"username": f"o{uuid.uuid4().hex[:12]}", "password": "pw123456"}
    async with http.post(f"{base}/api/v1/users", json=body) as r:
        assert r.status == 201, await r.text()
        user_id = (await r.json())["user_id"]
    async with http.post(f"{base}/api/v1/sessions", json=body) as r:
        assert r.status == 201, await r.text()
        token = (await r.json())["token"]
    return user_id, token


async def _receive(ws: aiohttp.ClientWebSocketResponse, action: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        frame = await ws.receive_json(timeout=max(0.1, deadline - time.monotonic()))
        if frame["action"] == action:
            return frame


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def _scrape_all(mesh: Mesh) -> dict[str, Samples]:
    """Every service instance's samples, by instance name."""
    instances = [i for i in mesh.instances.values() if i.kind == "service" and i.metrics_url]
    results = await asyncio.gather(
        *(asyncio.to_thread(scrape, str(i.metrics_url)) for i in instances)
    )
    return {i.name: r for i, r in zip(instances, results, strict=True)}


async def _send_one_message(
    mesh: Mesh, http: aiohttp.ClientSession
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Alice sends Bob one message; (her message_ack, his new_message)."""
    base = mesh.edge_url
    _, alice_token = await _account(http, base)
    bob, bob_token = await _account(http, base)
    ws_base = base.replace("http://", "ws://") + "/api/v1/ws?token="
    async with (
        http.ws_connect(ws_base + bob_token) as bob_ws,
        http.ws_connect(ws_base + alice_token) as alice_ws,
    ):
        for ws in (bob_ws, alice_ws):  # a pong comes after the socket is in presence
            await ws.send_json({"action": "ping"})
            await _receive(ws, "pong")
        await alice_ws.send_json(
            {
                "action": "send_message",
                "to": bob,
                "content": "traced hello",
                "timestamp": int(time.time()),
                "client_msg_id": f"trace-{uuid.uuid4().hex[:8]}",
            }
        )
        ack = await _receive(alice_ws, "message_ack")
        delivered = await _receive(bob_ws, "new_message")
    return ack, delivered


async def test_one_message_is_one_trace_through_every_hop(
    traced_mesh: Mesh, receiver: OtlpReceiver, http: aiohttp.ClientSession
) -> None:
    ack, delivered = await _send_one_message(traced_mesh, http)
    msg_id = ack["msg_id"]
    assert delivered["msg_id"] == msg_id

    def find(spans: list[ReceivedSpan], service: str, name: str, kind: int) -> ReceivedSpan:
        found = [s for s in spans if (s.service, s.name, s.kind) == (service, name, kind)]
        assert found, f"no {service} span {name!r} (kind {kind}) in {_describe(spans)}"
        return found[0]

    # The persister's per-record span names the message; its trace is the message's.
    trace: list[ReceivedSpan] = []

    async def complete() -> bool:
        spans = receiver.spans()
        process = [
            s
            for s in spans
            if s.name == "process chatmesh.messages"
            and s.attributes.get("chatmesh.msg_id") == msg_id
        ]
        if not process:
            return False
        trace[:] = receiver.trace(process[0].trace_id)
        names = {(s.service, s.name) for s in trace}
        return ("gateway", "ws deliver new_message") in names and sum(
            s.service == "envoy" for s in trace
        ) >= 2

    await eventually(complete, WAIT_S, what="the message's trace with every hop")

    by_id = {s.span_id: s for s in trace}

    def parent(span: ReceivedSpan) -> ReceivedSpan:
        assert span.parent_span_id in by_id, f"{span.service} {span.name}: parent not in trace"
        return by_id[span.parent_span_id]

    # gateway: the send_message frame starts the trace ...
    frame = find(trace, "gateway", "ws send_message", SERVER)
    assert frame.parent_span_id == ""
    # ... its gRPC call goes through Envoy to chat_svc ...
    send = "/chatmesh.chat.v1.ChatService/SendMessage"
    call = find(trace, "gateway", send, CLIENT)
    assert parent(call) is frame
    accept = find(trace, "chat_svc", send, SERVER)
    hop = parent(accept)
    assert hop.service == "envoy" and parent(hop) is call
    # ... chat_svc produces to Kafka, and the persister's write is a child of that produce ...
    produce = find(trace, "chat_svc", "send chatmesh.messages", PRODUCER)
    assert parent(produce) is accept
    process = find(trace, "persister", "process chatmesh.messages", CONSUMER)
    assert parent(process) is produce
    # ... and the live delivery goes back through Envoy to the recipient's gateway and socket.
    deliver = "/chatmesh.gateway.v1.GatewayService/DeliverMessages"
    deliver_call = find(trace, "chat_svc", deliver, CLIENT)
    assert parent(deliver_call) is accept
    deliver_served = find(trace, "gateway", deliver, SERVER)
    hop = parent(deliver_served)
    assert hop.service == "envoy" and parent(hop) is deliver_call
    written = find(trace, "gateway", "ws deliver new_message", PRODUCER)
    assert parent(written) is deliver_served
    # The presence lookup is in the same trace, through Envoy as well.
    lookup = find(trace, "presence_svc", "/chatmesh.presence.v1.PresenceService/GetConnections", 2)
    assert parent(lookup).service == "envoy"
    # The persister's batch span is its own trace, linked to the message's produce span.
    batches = [
        s
        for s in receiver.spans()
        if s.name == "persister write" and (produce.trace_id, produce.span_id) in s.links
    ]
    assert batches and batches[0].trace_id != produce.trace_id
    # Every span of the trace ends after it starts; the frame span covers its gRPC call.
    assert all(s.end_ns >= s.start_ns for s in trace)
    assert frame.start_ns <= call.start_ns and call.end_ns <= frame.end_ns


async def test_metrics_move_by_what_one_message_did(
    traced_mesh: Mesh, http: aiohttp.ClientSession
) -> None:
    before = await _scrape_all(traced_mesh)
    sent_at = time.monotonic()
    ack, _ = await _send_one_message(traced_mesh, http)
    elapsed_s = time.monotonic() - sent_at

    after: dict[str, Samples] = {}

    def moved(instance: str, name: str, **labels: str) -> float:
        return sample(after[instance], name, **labels) - sample(before[instance], name, **labels)

    async def stored() -> bool:
        after.update(await _scrape_all(traced_mesh))
        return moved("persister-1", "chatmesh_persister_records_total") >= 1

    await eventually(stored, WAIT_S, what="the persister stored the message")

    gateway = "gateway-1"
    assert moved(gateway, "chatmesh_ws_connections_opened_total") == 2
    assert moved(gateway, "chatmesh_ws_frames_received_total", action="send_message") == 1
    assert moved(gateway, "chatmesh_ws_frames_received_total", action="ping") == 2
    assert moved(gateway, "chatmesh_ws_frames_sent_total", action="message_ack") == 1
    assert moved(gateway, "chatmesh_ws_frames_sent_total", action="new_message") == 1
    assert moved(gateway, "chatmesh_ws_frames_sent_total", action="pong") == 2
    assert moved(gateway, "chatmesh_ws_frames_rejected_total") == 0
    # One live frame: one observation of the delivery latency, within what the test waited.
    assert moved(gateway, "chatmesh_delivery_latency_seconds_count") == 1
    assert moved(gateway, "chatmesh_delivery_latency_seconds_bucket", le="+Inf") == 1
    assert 0 <= moved(gateway, "chatmesh_delivery_latency_seconds_sum") <= elapsed_s
    assert sample(after[gateway], "chatmesh_ws_connections") == 0  # both sockets closed again

    chat = "chat_svc-1"
    assert moved(chat, "chatmesh_messages_accepted_total") == 1
    assert moved(chat, "chatmesh_messages_delivered_live_total") == 1
    assert moved(chat, "chatmesh_messages_handed_to_push_total") == 0
    assert moved(chat, "chatmesh_kafka_produce_seconds_count") == 1
    send = {"grpc_service": "chatmesh.chat.v1.ChatService", "grpc_method": "SendMessage"}
    assert moved(chat, "grpc_server_handled_total", **send, grpc_code="OK") == 1
    assert moved(chat, "grpc_server_handling_seconds_count", **send) == 1
    assert moved(gateway, "grpc_client_handled_total", **send, grpc_code="OK") == 1
    deliver = {
        "grpc_service": "chatmesh.gateway.v1.GatewayService",
        "grpc_method": "DeliverMessages",
    }
    assert moved(chat, "grpc_client_handled_total", **deliver, grpc_code="OK") == 1
    assert moved(gateway, "grpc_server_handled_total", **deliver, grpc_code="OK") == 1

    persister = "persister-1"
    assert moved(persister, "chatmesh_persister_records_total") == 1
    assert moved(persister, "chatmesh_persister_write_seconds_count") >= 1
    assert moved(persister, "chatmesh_persister_batch_records_sum") == 1

    async def caught_up() -> bool:
        lag = await asyncio.to_thread(scrape, str(traced_mesh.instance(persister).metrics_url))
        partitions = [k for k in lag if k[0] == "chatmesh_kafka_consumer_lag"]
        return len(partitions) == 8 and sample(lag, "chatmesh_kafka_consumer_lag") == 0

    await eventually(caught_up, WAIT_S, what="consumer lag back to 0 on all 8 partitions")

    # Every process says what it is; Envoy's own stats are served as they are.
    for name, samples in after.items():
        package = traced_mesh.instances[name].package
        assert sample(samples, "chatmesh_build_info", service=str(package)) == 1
    envoy = await asyncio.to_thread(scrape, str(traced_mesh.instances["envoy"].metrics_url))
    assert sample(envoy, "envoy_cluster_upstream_rq_total", envoy_cluster_name="chat-svc") >= 1
    # The Envoy names the alert rules and the dashboard use are the ones Envoy serves.
    operators = ALERT_RULES.read_text() + DASHBOARD.read_text()
    used = set(re.findall(r"\b(envoy_[a-z0-9_]+)\b", operators))
    # (prometheus-client's parser adds _total to counters; Prometheus keeps Envoy's names.)
    served = {n for name, _ in envoy for n in (name, name.removesuffix("_total"))}
    served |= {label for _, labels in envoy for label, _ in labels}
    assert used and used <= served, sorted(used - served)
    assert ack["msg_id"]


def _describe(spans: list[ReceivedSpan]) -> str:
    return ", ".join(f"{s.service}:{s.name}:{s.kind}" for s in spans)
