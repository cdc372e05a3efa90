"""Tracing is off unless an OTLP endpoint is configured, costs nothing when off, and carries
trace ids into log lines and Kafka headers when on."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from svckit import logs, telemetry
from svckit.config import ConfigError

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}


def test_off_unless_an_endpoint_is_configured() -> None:
    assert not telemetry.settings({}).enabled
    assert not telemetry.settings({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}).enabled
    assert not telemetry.settings({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}).enabled
    on = telemetry.settings(ENDPOINT)
    assert on.enabled and on.protocol == "http/protobuf"
    assert telemetry.settings({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}).protocol == (
        "grpc"
    )
    traces_only = telemetry.settings(
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }
    )
    assert traces_only.enabled and traces_only.protocol == "grpc"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
    ],
)
def test_unusable_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        telemetry.settings(env)


def test_off_installs_nothing_and_costs_nothing() -> None:
    assert telemetry.setup("chat_svc", "chat_svc-1", {}) is False
    assert not telemetry.enabled()
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    assert telemetry.server_interceptors() == []
    assert telemetry.client_interceptors() == []
    assert telemetry.inject() == []
    assert telemetry.current_link() is None
    assert telemetry.start("x") is None
    with telemetry.span("ws send_message", root=True) as span:
        assert span is None
    assert isinstance(telemetry.span("x"), contextlib.nullcontext)
    exporters = [t.name for t in threading.enumerate() if "Otel" in t.name or "Span" in t.name]
    assert exporters == []


def test_the_provider_names_the_service_and_exports_otlp(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    for protocol, kind in (("http/protobuf", Http), ("grpc", Grpc)):
        cfg = telemetry.Settings(True, protocol=protocol, endpoint="http://127.0.0.1:1")
        provider = telemetry.build_provider("chat_svc", "chat_svc-2", cfg)
        try:
            attributes = provider.resource.attributes
            assert attributes["service.name"] == "chat_svc"
            assert attributes["service.instance.id"] == "chat_svc-2"
            processor = provider._active_span_processor._span_processors[0]
            assert isinstance(processor._batch_processor._exporter, kind)
        finally:
            provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "chat-eu")
    provider = telemetry.build_provider("chat_svc", "x", telemetry.settings(ENDPOINT))
    try:
        assert provider.resource.attributes["service.name"] == "chat-eu"
    finally:
        provider.shutdown()


@contextlib.contextmanager
def traced() -> contextlib.AbstractContextManager[InMemorySpanExporter]:  # type: ignore[misc]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with telemetry.use(provider):
        yield exporter
    provider.shutdown()


def test_log_lines_carry_the_trace_and_span_ids() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter("gateway"))
    logger = logging.getLogger("test.telemetry")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("outside")
        with traced(), telemetry.span("ws send_message", root=True) as span:
            assert span is not None
            logger.info("inside")
            ctx = span.get_span_context()
    finally:
        logger.removeHandler(handler)
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "trace_id" not in outside
    assert inside["trace_id"] == format(ctx.trace_id, "032x")
    assert inside["span_id"] == format(ctx.span_id, "016x")


def test_kafka_headers_carry_the_context_and_frames_start_new_traces() -> None:
    with traced() as exported:
        with telemetry.span("outer"):
            with telemetry.span("ws send_message", root=True) as frame:
                assert frame is not None
                headers = telemetry.inject()
                sent = frame.get_span_context()
        assert [k for k, _ in headers] == ["traceparent"]
        carried = trace.get_current_span(telemetry.extract(headers)).get_span_context()
        assert (carried.trace_id, carried.span_id) == (sent.trace_id, sent.span_id)
        consumer = telemetry.start("process", parent=telemetry.extract(headers))
        assert consumer is not None
        consumer.end()
    spans = {s.name: s for s in exported.get_finished_spans()}
    assert spans["ws send_message"].parent is None  # a root, not a child of "outer"
    assert spans["process"].parent is not None
    assert spans["process"].parent.span_id == sent.span_id
    assert telemetry.extract([]) is not None
    empty = trace.get_current_span(telemetry.extract([("other", b"x")])).get_span_context()
    assert not empty.is_valid
