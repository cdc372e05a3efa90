"""Metrics: one Prometheus endpoint per process (prometheus-client), and the gRPC metrics every
service shares.

`serve()` (called once per process by `svckit.lifecycle.run`) exposes the process's default
registry on `http://CHATMESH_METRICS_HOST:CHATMESH_METRICS_PORT/metrics`, 127.0.0.1 unless told
otherwise. Each component declares what it measures next to the code that measures it
(`gateway/metrics.py`, `chat_svc/metrics.py`, `persister/metrics.py`); this module holds what
every process has:

- `grpc_server_handled_total{grpc_service,grpc_method,grpc_code}` and
  `grpc_server_handling_seconds{grpc_service,grpc_method}`, by `ServerMetrics`, an interceptor
  on every server (`svckit.lifecycle.start_server`);
- `grpc_client_handled_total{...}` and `grpc_client_handling_seconds{...}`, by `ClientMetrics`,
  on every mesh channel (`svckit.channels.mesh_channel`), so a caller sees what Envoy and the
  callee cost it, timeouts included;
- `chatmesh_build_info{service,version}` (always 1: which processes exist, for joins);
- prometheus-client's `process_*` and `python_*` families.

Names follow the Prometheus conventions (base units, `_total` counters, `_seconds`), and the
gRPC names are those of go-grpc-prometheus, so existing dashboards read them; `grpc_code` is
the Python enum's name (`OK`, `UNAVAILABLE`, ...).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    Counter,
    Histogram,
    Info,
    disable_created_metrics,
    start_http_server,
)

from svckit.errors import Handler, UnaryServerInterceptor

# No `_created` series next to every counter and histogram: half the series, no information an
# alert or dashboard here uses. (Every module declaring metrics imports this one first.)
disable_created_metrics()  # type: ignore[no-untyped-call]

# Each service's endpoint port when CHATMESH_METRICS_PORT is not set: its gRPC default + 100 (the
# launcher's port plan starts from these; a second instance takes the next port).
DEFAULT_PORTS: dict[str, int] = {
    "gateway": 9291,
    "chat_svc": 9301,
    "user_svc": 9311,
    "presence_svc": 9321,
    "notify_svc": 9331,
    "persister": 9341,
}

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

BUILD_INFO = Info("chatmesh_build", "Which chatmesh service this process runs, and its version.")

GRPC_SERVER_HANDLED = Counter(
    "grpc_server_handled_total",
    "gRPC calls this server completed, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_SERVER_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time this server took to answer a gRPC call, by method.",
    ["grpc_service", "grpc_method"],
    buckets=LATENCY_BUCKETS,
)
GRPC_CLIENT_HANDLED = Counter(
    "grpc_client_handled_total",
    "gRPC calls this process made through the mesh, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_CLIENT_SECONDS = Histogram(
    "grpc_client_handling_seconds",
    "Time a gRPC call this process made took until its answer, by method.",
    ["grpc_service", "grpc_method"],
    buckets=LATENCY_BUCKETS,
)


BATCH_SIZE = Histogram(
    "chatmesh_batch_size",
    "Items carried by one coalesced call (svckit.batching), by call: presence (chat_svc's "
    "presence reads, messages), deliver (chat_svc's DeliverMessages to one gateway, messages), "
    "ack (a gateway's BatchAckMessages, acks), log_end (a persister's log-end reads shared by "
    "sync barriers, callers). Near 1 when quiet; it grows with the load.",
    ["call"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)

M = TypeVar("M", Counter, Histogram)


def by_label(metric: M) -> Callable[..., M]:
    """`metric.labels(...)` with the children remembered: a hot path pays a dict lookup instead
    of prometheus-client's locked validation (about 0.1 us against 2.5 us). Only for bounded
    label values, and never for a metric whose children are removed."""
    return functools.lru_cache(maxsize=1024)(metric.labels)


def serve(host: str, port: int) -> tuple[WSGIServer, int]:
    """Start the /metrics endpoint in a daemon thread; return the server and the bound port.

    Raises OSError when the port is taken."""
    server, _thread = start_http_server(port, addr=host)
    return server, int(server.server_port)


def split_method(method: str | bytes) -> tuple[str, str]:
    """`/chatmesh.chat.v1.ChatService/SendMessage` -> (`chatmesh.chat.v1.ChatService`, name)."""
    text = method.decode() if isinstance(method, bytes) else method
    service, _, name = text.lstrip("/").rpartition("/")
    return service or "unknown", name or "unknown"


def _code_name(code: Any) -> str:
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class ServerMetrics(UnaryServerInterceptor):
    """Counts and times every unary call a server answers, with its final status code."""

    def wrap(self, inner: Handler, full_method: str) -> Handler:
        service, method = split_method(full_method)
        handled = _server_handled
        seconds = _server_seconds(service, method)

        async def measured(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            start = time.perf_counter()
            code = "OK"
            try:
                return await inner(request, context)
            except grpc.aio.AbortError:
                code = _code_name(context.code())
                raise
            except BaseException:  # cancelled by the caller, or a bug below the error mapping
                code = "CANCELLED" if context.cancelled() else "UNKNOWN"
                raise
            finally:
                seconds.observe(time.perf_counter() - start)
                handled(service, method, code).inc()

        return measured


class ClientMetrics(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Counts and times every unary call made on a channel, until its status is known."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        service, method = split_method(client_call_details.method)
        start = time.perf_counter()
        code = "UNKNOWN"
        try:
            call = await continuation(client_call_details, request)
            code = _code_name(await call.code())
            return call
        except grpc.aio.AioRpcError as exc:
            code = _code_name(exc.code())
            raise
        except BaseException:
            code = "CANCELLED"
            raise
        finally:
            _client_seconds(service, method).observe(time.perf_counter() - start)
            _client_handled(service, method, code).inc()


_server_handled = by_label(GRPC_SERVER_HANDLED)
_server_seconds = by_label(GRPC_SERVER_SECONDS)
_client_handled = by_label(GRPC_CLIENT_HANDLED)
_client_seconds = by_label(GRPC_CLIENT_SECONDS)
