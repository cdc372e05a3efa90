"""Traces: OpenTelemetry in every process, configured by the standard `OTEL_*` variables.

Off unless configured. `setup()` (called once per process by `svckit.lifecycle.run`) turns
tracing on only when an OTLP endpoint is given (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and neither `OTEL_SDK_DISABLED=true` nor
`OTEL_TRACES_EXPORTER=none` says otherwise. When off, nothing is installed: no exporter, no
interceptor, no middleware; `span()` is a `nullcontext` and `inject()` returns nothing, so the
hot paths pay one attribute read.

When on, the OpenTelemetry SDK does the rest from the same variables: the exporter
(`OTEL_EXPORTER_OTLP_PROTOCOL` `http/protobuf`, the default, or `grpc`; headers, timeout and
compression through the exporter's own variables), the sampler (`OTEL_TRACES_SAMPLER`,
`OTEL_TRACES_SAMPLER_ARG`; default parent-based always-on, so a caller's decision is followed),
the batch processor (`OTEL_BSP_*`) and the resource (`OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`; by default `service.name` is the service's package and
`service.instance.id` its CHATMESH_INSTANCE_ID).

How context crosses each hop (W3C `traceparent`, the global propagator, `OTEL_PROPAGATORS`):
- gRPC: opentelemetry-instrumentation-grpc's aio interceptors on every server and on every mesh
  channel (health checks and reflection are left out), so Envoy, which traces too, sits between
  a client span and the server span of every call;
- HTTP at the edge: opentelemetry-instrumentation-aiohttp-server's middleware in the gateway;
- a WebSocket frame: its own root span (`ws <action>`), linked to the socket's upgrade span, so
  one message is one trace rather than a branch of a socket's hours-long trace;
- Kafka: `inject()`/`extract()` move the context through the record's headers; chat_svc's
  `send` span is the parent of the persister's `process` span for that record.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind

from svckit.config import ConfigError

log = logging.getLogger(__name__)

PROTOCOLS = ("http/protobuf", "grpc")
# gRPC services whose calls are not traced: Envoy health-checks every instance every second.
UNTRACED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")
# Edge paths probed by Envoy and orchestrators; their requests are not traced.
UNTRACED_PATHS = "livez,healthz"


@dataclass(frozen=True)
class Settings:
    """What the environment asks for; `enabled` is False unless an endpoint is configured."""

    enabled: bool
    protocol: str = "http/protobuf"
    endpoint: str = ""
    reason: str = ""


def _truthy(text: str | None) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes", "on")


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the standard variables; raise ConfigError naming one that is wrong."""
    env = os.environ if environ is None else environ
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        return Settings(False, reason="OTEL_SDK_DISABLED")
    exporters = [e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if e.strip()]
    if not exporters or exporters == ["none"]:
        return Settings(False, reason="OTEL_TRACES_EXPORTER=none")
    if exporters != ["otlp"]:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER must be otlp or none, got {env['OTEL_TRACES_EXPORTER']!r}"
        )
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", ""
    )
    if not endpoint.strip():
        return Settings(False, reason="no OTEL_EXPORTER_OTLP_ENDPOINT")
    protocol_var = (
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        if env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        else "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    protocol = (env.get(protocol_var) or "http/protobuf").strip()
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{protocol_var} must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return Settings(True, protocol=protocol, endpoint=endpoint.strip())


@dataclass
class _State:
    enabled: bool = False
    tracer: trace.Tracer | None = None
    provider: Any = None  # opentelemetry.sdk.trace.TracerProvider once enabled


_state = _State()


def enabled() -> bool:
    return _state.enabled


def build_provider(
    service: str, instance: str, cfg: Settings, environ: Mapping[str, str] | None = None
) -> Any:
    """An SDK TracerProvider exporting to `cfg`'s endpoint in batches (not installed globally)."""
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter: Any
    if cfg.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        exporter = GrpcExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        exporter = HttpExporter()
    ours = {
        "service.name": service,
        "service.namespace": "chatmesh",
        "service.instance.id": instance,
    }
    # The environment (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) wins over our defaults.
    given = OTELResourceDetector().detect().attributes
    resource = Resource.create({k: v for k, v in ours.items() if k not in given})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def setup(service: str, instance: str, environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on for this process if the environment asks; True when on. Once per process."""
    cfg = settings(environ)
    if not cfg.enabled:
        return False
    provider = build_provider(service, instance, cfg, environ)
    trace.set_tracer_provider(provider)
    _state.provider = provider
    _state.tracer = provider.get_tracer("chatmesh")
    _state.enabled = True
    log.info(
        "tracing on",
        extra={"event": "tracing", "endpoint": cfg.endpoint, "protocol": cfg.protocol},
    )
    return True


def shutdown(timeout_s: float = 3.0) -> None:
    """Export what is buffered, then stop (at process exit)."""
    provider = _state.provider
    if provider is None:
        return
    try:
        provider.force_flush(int(timeout_s * 1000))
        provider.shutdown()
    except Exception:  # an unreachable collector must not fail the exit
        log.warning("flushing traces failed", exc_info=True)


@contextlib.contextmanager
def use(provider: Any) -> Iterator[None]:
    """Tests: trace with `provider` (an SDK TracerProvider) inside the block, then off again."""
    previous = (_state.enabled, _state.tracer, _state.provider)
    _state.enabled, _state.tracer, _state.provider = True, provider.get_tracer("chatmesh"), None
    try:
        yield
    finally:
        _state.enabled, _state.tracer, _state.provider = previous


# --- spans ------------------------------------------------------------------------------------


def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    links: Sequence[Link] = (),
    parent: otel_context.Context | None = None,
    root: bool = False,
) -> contextlib.AbstractContextManager[trace.Span | None]:
    """A current span, or a `nullcontext` yielding None when tracing is off.

    `root=True` starts a new trace (ignoring the current span); `parent` gives the context
    explicitly (one extracted from a Kafka record's headers).
    """
    tracer = _state.tracer
    if tracer is None:
        return contextlib.nullcontext()
    context = otel_context.Context() if root else parent
    return tracer.start_as_current_span(
        name, context=context, kind=kind, attributes=dict(attributes or {}), links=list(links)
    )


def start(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: otel_context.Context | None = None,
    links: Sequence[Link] = (),
    attributes: Mapping[str, Any] | None = None,
) -> trace.Span | None:
    """A span that is not made current (the caller ends it); None when tracing is off."""
    tracer = _state.tracer
    if tracer is None:
        return None
    return tracer.start_span(
        name, context=parent, kind=kind, attributes=dict(attributes or {}), links=list(links)
    )


def current_link() -> Link | None:
    """A link to the current span, to remember (a socket's upgrade span) and attach later."""
    if not _state.enabled:
        return None
    ctx = trace.get_current_span().get_span_context()
    return Link(ctx) if ctx.is_valid else None


def link_to(context: otel_context.Context) -> Link | None:
    ctx = trace.get_current_span(context).get_span_context()
    return Link(ctx) if ctx.is_valid else None


KafkaHeaders = list[tuple[str, str | bytes | None]]


def inject() -> KafkaHeaders:
    """The current context as Kafka record headers (`traceparent`...); [] when off."""
    if not _state.enabled:
        return []
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


def extract(headers: KafkaHeaders | None) -> otel_context.Context:
    """The context carried by Kafka record headers (an empty one when none)."""
    carrier: dict[str, str] = {}
    for key, value in headers or ():
        if value is not None:
            carrier[key] = value.decode(errors="replace") if isinstance(value, bytes) else value
    return propagate.extract(carrier, context=otel_context.Context())


# --- instrumentation of the field's libraries ------------------------------------------------


def _grpc_filter() -> Any:
    from opentelemetry.instrumentation.grpc.filters import negate, service_name

    untraced = [service_name(s) for s in UNTRACED_SERVICES]

    def any_untraced(details: Any) -> bool:
        return any(f(details) for f in untraced)

    return negate(any_untraced)


def server_interceptors() -> list[Any]:
    """opentelemetry-instrumentation-grpc's aio server interceptor; [] when off."""
    if not _state.enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(filter_=_grpc_filter())]  # type: ignore[no-untyped-call]


def client_interceptors() -> list[Any]:
    """opentelemetry-instrumentation-grpc's aio client interceptors; [] when off."""
    if not _state.enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(filter_=_grpc_filter()))  # type: ignore[no-untyped-call]


def instrument_aiohttp_server() -> None:
    """Trace every aiohttp request (but the probes) with opentelemetry-instrumentation-aiohttp-
    server; its middleware joins the trace Envoy's edge span started. No-op when off."""
    if not _state.enabled:
        return
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

    os.environ.setdefault("OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS", UNTRACED_PATHS)
    instrumentor = AioHttpServerInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current span in hex, for log lines; None without one."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
