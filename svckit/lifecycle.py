"""gRPC server lifecycle shared by every service process.

`serve()` starts a grpc.aio server on the configured address with the standard health service
(`grpc.health.v1`), reflection and the domain-error interceptor, marks it SERVING, waits for
SIGTERM or SIGINT, then shuts down in this order:

    await stop.wait()                       # SIGTERM
    await health.enter_graceful_shutdown()  # probes go NOT_SERVING
    await server.stop(cfg.grace_s)          # in-flight RPCs finish, new ones are refused
    cleanups, newest first                  # pools, producers, tasks

so a process exits well within 10 seconds with its in-flight calls completed.

`run()` is every process's entry point: JSON logs, tracing when the `OTEL_*` variables ask
(`svckit.telemetry`, flushed at exit), and the Prometheus endpoint (`svckit.metrics`). Every
server gets the tracing interceptor (when on), the metrics interceptor and the error mapping, in
that order from the outside in, so spans and metrics see the status the caller gets.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from svckit import logs, metrics, telemetry
from svckit.config import ConfigError, ServiceConfig, load
from svckit.errors import ErrorInterceptor, StartupError

log = logging.getLogger(__name__)

Cleanup = Callable[[], Awaitable[None]]


class PortInUse(Exception):
    """The configured port is taken; the message names it."""


@dataclass
class Server:
    """A started gRPC server with its health servicer and shutdown hooks."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer  # type: ignore[name-defined]
    port: int
    cleanups: list[Cleanup] = field(default_factory=list)

    def on_stop(self, cleanup: Cleanup) -> None:
        """Run `cleanup` after the server stopped taking calls (newest first)."""
        self.cleanups.append(cleanup)

    async def stop(self, grace_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        for cleanup in reversed(self.cleanups):
            try:
                await cleanup()
            except Exception:
                log.exception("cleanup failed")


async def start_server(
    host: str,
    port: int,
    register: Callable[[grpc.aio.Server], Iterable[str]],
    interceptors: Iterable[grpc.aio.ServerInterceptor[Any, Any]] = (),
) -> Server:
    """Bind and start a server; `register` adds servicers and returns their full service names."""
    server = grpc.aio.server(
        interceptors=[
            *telemetry.server_interceptors(),
            metrics.ServerMetrics(),
            ErrorInterceptor(),
            *interceptors,
        ]
    )
    names = list(register(server))
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise PortInUse(f"cannot bind {host}:{port}: port already in use or not permitted") from exc
    if bound == 0:
        raise PortInUse(f"cannot bind {host}:{port}: port already in use or not permitted")
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Server(server=server, health=health_servicer, port=bound)


async def wait_for_stop_signal() -> None:
    """Return once SIGTERM or SIGINT arrives."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


ServiceMain = Callable[[], Coroutine[Any, Any, None]]


def _version() -> str:
    try:
        return importlib.metadata.version("chatmesh")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return "unknown"


def run(service: str, main: ServiceMain) -> None:
    """Process entry point: JSON logs, tracing if configured, the metrics endpoint (on
    CHATMESH_METRICS_PORT, else the service's default in `metrics.DEFAULT_PORTS`, else any free
    port), uvloop when present, clean exit codes."""
    try:
        cfg = load(ServiceConfig)
        logs.setup(service, cfg.log_level)
        telemetry.setup(service, cfg.instance())
    except (ConfigError, ValueError) as exc:
        logs.setup(service)
        log.error(str(exc), extra={"event": "start_failed"})
        sys.exit(2)
    port = cfg.metrics_port or metrics.DEFAULT_PORTS.get(service, 0)
    try:
        endpoint, bound = metrics.serve(cfg.metrics_host, port)
    except OSError as exc:
        log.error(
            f"cannot bind the metrics endpoint {cfg.metrics_host}:{port} "
            f"(CHATMESH_METRICS_PORT): {exc}",
            extra={"event": "start_failed"},
        )
        sys.exit(2)
    metrics.BUILD_INFO.info({"service": service, "version": _version()})
    log.info(
        "metrics endpoint",
        extra={"event": "metrics", "url": f"http://{cfg.metrics_host}:{bound}/metrics"},
    )
    try:
        import uvloop

        runner: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        runner = asyncio.run
    try:
        runner(main())
    except (ConfigError, PortInUse) as exc:
        log.error(str(exc), extra={"event": "start_failed"})
        sys.exit(2)
    except StartupError as exc:
        log.error(str(exc), extra={"event": "start_failed"})
        sys.exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        telemetry.shutdown()
        endpoint.server_close()  # its thread is a daemon: no wait for its poll interval


async def serve_forever(
    cfg: ServiceConfig,
    default_port: int,
    register: Callable[[grpc.aio.Server], Iterable[str]],
) -> None:
    """Start the server, log readiness, block until SIGTERM, then shut down in order.

    Resources the servicers use (pools, producers) are opened by the caller around this call, so
    they close only after the server has finished its in-flight calls.
    """
    srv = await start_server(cfg.grpc_host, cfg.bind_port(default_port), register)
    log.info(
        "ready",
        extra={"event": "start", "addr": f"{cfg.grpc_host}:{srv.port}", "instance": cfg.instance()},
    )
    await wait_for_stop_signal()
    log.info("stopping", extra={"event": "stop", "grace_s": cfg.grace_s})
    await srv.stop(cfg.grace_s)
    log.info("stopped", extra={"event": "stopped"})
