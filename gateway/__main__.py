"""`python -m gateway`: the REST/WebSocket edge and its chatmesh.gateway.v1 server, one process.

Shutdown on SIGTERM, well within 10 seconds:
1. stop accepting HTTP connections; /livez and /healthz answer 503 to what is still in flight;
2. close every WebSocket with 1001 (clients reconnect elsewhere and sync);
3. give open HTTP handlers `CHATMESH_HTTP_SHUTDOWN_S`, then cancel them; stop the heartbeat;
4. stop the gRPC server (health NOT_SERVING, in-flight calls finish within what is left of
   `CHATMESH_GRACE_S`), then close the outbound channels.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway import service
from gateway.app import build_app
from gateway.clients import build_clients
from gateway.config import load_config
from gateway.ws import Edge
from svckit import lifecycle

log = logging.getLogger("gateway")

_HARD_LIMIT_S = 9.0  # whatever the settings say, exit before a 10 s kill


async def main() -> None:
    cfg = load_config()  # a ConfigError ends the process with status 2, naming the variable
    clients = build_clients(cfg)
    edge = Edge(cfg=cfg, clients=clients, gateway_id=cfg.instance())
    try:
        grpc_server = await lifecycle.start_server(
            cfg.grpc_host, cfg.grpc_port, service.register(edge)
        )
    except BaseException:
        await clients.close()
        raise
    grpc_server.on_stop(clients.close)
    edge.gateway_addr = cfg.advertise(grpc_server.port)

    runner = web.AppRunner(
        build_app(edge), shutdown_timeout=cfg.http_shutdown_s, handle_signals=False
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, cfg.http_host, cfg.http_port, backlog=cfg.http_backlog)
        try:
            await site.start()
        except OSError as exc:
            raise lifecycle.PortInUse(
                f"cannot bind {cfg.http_host}:{cfg.http_port} (CHATMESH_HTTP_PORT): {exc}"
            ) from exc
        log.info(
            "ready",
            extra={
                "event": "start",
                "http": f"{cfg.http_host}:{cfg.http_port}",
                "grpc": edge.gateway_addr,
                "instance": edge.gateway_id,
            },
        )
        await lifecycle.wait_for_stop_signal()
        log.info("stopping", extra={"event": "stop", "sockets": len(edge.registry)})
    finally:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(cfg.grace_s, _HARD_LIMIT_S)
        edge.draining = True
        await runner.cleanup()  # stop accepting, close sockets 1001, finish handlers, heartbeat
        await grpc_server.stop(max(0.1, deadline - loop.time()))
        log.info("stopped", extra={"event": "stopped"})


def run() -> None:
    lifecycle.run("gateway", main)


if __name__ == "__main__":
    run()
