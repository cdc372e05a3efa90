"""The shared plumbing on real sockets: spans reach an OTLP receiver over HTTP and gRPC, every
gRPC server and mesh channel counts and times calls by method and status, and the metrics
endpoint serves them."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from chatmesh.user.v1 import user_pb2, user_pb2_grpc
from opentelemetry.trace import SpanKind

from svckit import metrics, telemetry
from svckit.errors import Context, NotFound
from svckit.lifecycle import start_server
from svckit.testing import OtlpReceiver, eventually, sample, scrape


@pytest.fixture(scope="module")
def receiver() -> OtlpReceiver:
    with OtlpReceiver() as running:
        yield running


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_spans_reach_an_otlp_receiver(
    receiver: OtlpReceiver, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    cfg = telemetry.settings()
    assert cfg.enabled and cfg.protocol == protocol
    provider = telemetry.build_provider("persister", "persister-1", cfg)
    name = f"process via {protocol}"
    try:
        with telemetry.use(provider), telemetry.span(name, kind=SpanKind.CONSUMER):
            pass
        assert provider.force_flush(5000)
    finally:
        provider.shutdown()

    async def arrived() -> bool:
        return any(s.name == name for s in receiver.spans())

    await eventually(arrived, 10, what=f"a span over OTLP {protocol}")
    span = next(s for s in receiver.spans() if s.name == name)
    assert (span.service, span.instance, span.kind) == ("persister", "persister-1", 5)


class Users(user_pb2_grpc.UserServiceServicer):
    async def GetUser(  # noqa: N802 - generated name
        self, request: user_pb2.GetUserRequest, context: Context
    ) -> user_pb2.GetUserResponse:
        if request.user_id != "alice":
            raise NotFound("no such user")
        return user_pb2.GetUserResponse(user=user_pb2.User(user_id="alice"))


async def test_grpc_calls_are_counted_and_timed_on_both_sides() -> None:
    def register(server: grpc.aio.Server) -> list[str]:
        user_pb2_grpc.add_UserServiceServicer_to_server(Users(), server)
        return ["chatmesh.user.v1.UserService"]

    srv = await start_server("127.0.0.1", 0, register)
    endpoint, port = metrics.serve("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/metrics"
    service, method = "chatmesh.user.v1.UserService", "GetUser"
    try:
        before = await asyncio.to_thread(scrape, url)
        # A mesh channel, pointed straight at the server (the authority is ignored).
        from svckit.channels import mesh_channel

        async with mesh_channel(f"127.0.0.1:{srv.port}", "user-svc") as channel:
            stub = user_pb2_grpc.UserServiceStub(channel)
            await stub.GetUser(user_pb2.GetUserRequest(user_id="alice"), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetUser(user_pb2.GetUserRequest(user_id="mallory"), timeout=5)
        after = await asyncio.to_thread(scrape, url)
    finally:
        await srv.stop(0)
        endpoint.shutdown()
        endpoint.server_close()

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    labels = {"grpc_service": service, "grpc_method": method}
    for side in ("server", "client"):
        assert moved(f"grpc_{side}_handled_total", **labels, grpc_code="OK") == 1
        assert moved(f"grpc_{side}_handled_total", **labels, grpc_code="NOT_FOUND") == 1
        assert moved(f"grpc_{side}_handling_seconds_count", **labels) == 2
        assert moved(f"grpc_{side}_handling_seconds_bucket", **labels, le="+Inf") == 2


def test_the_endpoint_binds_loopback_and_refuses_a_taken_port() -> None:
    endpoint, port = metrics.serve("127.0.0.1", 0)
    try:
        assert endpoint.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert "# TYPE grpc_server_handled_total counter" in text
        with pytest.raises(OSError):
            metrics.serve("127.0.0.1", port)
    finally:
        endpoint.shutdown()
        endpoint.server_close()
