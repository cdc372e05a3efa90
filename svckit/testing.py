"""Test helpers shared by every suite: waiting on a condition with a deadline, never sleeping
and hoping; an OTLP receiver for tests of traces; reading a Prometheus endpoint."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


async def eventually(
    condition: Callable[[], Awaitable[bool]],
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    what: str = "condition",
) -> None:
    """Poll `condition` until it holds; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout_s} s")
        await asyncio.sleep(interval_s)


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as an OTLP receiver got it, flattened with its resource's service name."""

    service: str
    instance: str
    name: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind: 1 internal, 2 server, 3 client...
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace_id, span_id)
    start_ns: int
    end_ns: int


class OtlpReceiver:
    """An OTLP trace receiver for tests: OTLP/HTTP (protobuf, on aiohttp) and OTLP/gRPC, each on
    a free 127.0.0.1 port, decoding `ExportTraceServiceRequest` with opentelemetry-proto.

    It runs in its own thread (with its own event loop), so it keeps receiving while a test
    blocks on a mesh start or runs on another loop. `start()`, then point `OTEL_EXPORTER_OTLP_
    ENDPOINT` at `http_endpoint` (or `grpc_endpoint` with `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`);
    `spans()` is everything received so far; `stop()`.
    """

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._grpc: Any = None
        self.http_port = 0
        self.grpc_port = 0
        self.requests = 0

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans() if s.trace_id == trace_id]

    def _add(self, payload: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        request = trace_service_pb2.ExportTraceServiceRequest.FromString(payload)
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _any_value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    found.append(
                        ReceivedSpan(
                            service=str(resource.get("service.name", "")),
                            instance=str(resource.get("service.instance.id", "")),
                            name=s.name,
                            kind=s.kind,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            attributes={a.key: _any_value(a.value) for a in s.attributes},
                            links=tuple((k.trace_id.hex(), k.span_id.hex()) for k in s.links),
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                        )
                    )
        with self._lock:
            self._spans.extend(found)
            self.requests += 1

    def start(self) -> OtlpReceiver:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )

        receiver = self

        class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - generated name
                receiver._add(request.SerializeToString())
                return trace_service_pb2.ExportTraceServiceResponse()

        self._grpc = grpc.server(ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            TraceService(), self._grpc
        )
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        self._thread = threading.Thread(target=self._serve_http, name="otlp-receiver", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the OTLP/HTTP receiver did not start")
        return self

    def _serve_http(self) -> None:
        from aiohttp import web

        async def export(request: web.Request) -> web.Response:
            from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

            self._add(await request.read())
            body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            return web.Response(body=body, content_type="application/x-protobuf")

        async def main() -> None:
            app = web.Application()
            app.router.add_post("/v1/traces", export)
            runner = web.AppRunner(app, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            server: Any = site._server
            self.http_port = int(server.sockets[0].getsockname()[1])
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(0)
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


def scrape(url: str, timeout_s: float = 5.0) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A Prometheus endpoint's samples: (name, labels) -> value (blocking; use a thread)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - test URL
        text = response.read().decode()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)
