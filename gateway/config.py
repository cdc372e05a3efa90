"""Gateway settings, read once from the environment (svckit.config)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from svckit.config import ConfigError, ServiceConfig, load, setting

DEFAULT_HTTP_PORT = 8091
DEFAULT_GRPC_PORT = 9191


@dataclasses.dataclass(frozen=True)
class GatewayConfig(ServiceConfig):
    """Everything one gateway process needs; the common gRPC settings come from ServiceConfig."""

    grpc_port: int = setting(
        "CHATMESH_GRPC_PORT",
        DEFAULT_GRPC_PORT,
        "port of this instance's chatmesh.gateway.v1 server (0: any free port)",
    )
    http_host: str = setting(
        "CHATMESH_HTTP_HOST", "127.0.0.1", "address the REST/WebSocket edge binds"
    )
    http_port: int = setting(
        "CHATMESH_HTTP_PORT", DEFAULT_HTTP_PORT, "port the REST/WebSocket edge binds"
    )
    http_backlog: int = setting(
        "CHATMESH_HTTP_BACKLOG",
        4096,
        "listen backlog of the edge port (the kernel caps it at net.core.somaxconn): a reconnect "
        "storm opens thousands of connections at once",
    )
    advertise_addr: str = setting(
        "CHATMESH_ADVERTISE_ADDR",
        "",
        "host:port other services reach this instance's gRPC server at (default grpc host:port)",
    )
    health_timeout_s: float = setting(
        "CHATMESH_HEALTH_TIMEOUT_S", 1.0, "deadline of each dependency probe behind GET /healthz"
    )
    health_cache_s: float = setting(
        "CHATMESH_HEALTH_CACHE_S", 1.0, "how long GET /healthz reuses its last verdict"
    )
    ws_heartbeat_s: float = setting(
        "CHATMESH_WS_HEARTBEAT_S",
        20.0,
        "WebSocket ping interval; a peer that misses a pong for half of it is dropped",
    )
    ws_close_timeout_s: float = setting(
        "CHATMESH_WS_CLOSE_TIMEOUT_S", 2.0, "how long a close waits for the peer's close frame"
    )
    max_frame_bytes: int = setting(
        "CHATMESH_MAX_FRAME_BYTES", 64 * 1024, "largest WebSocket frame; larger closes with 1009"
    )
    max_body_bytes: int = setting(
        "CHATMESH_MAX_BODY_BYTES", 64 * 1024, "largest REST request body; larger is 413 too_large"
    )
    presence_ttl_s: int = setting(
        "CHATMESH_PRESENCE_TTL_S", 30, "lifetime of a socket's presence entry without a refresh"
    )
    presence_heartbeat_s: float = setting(
        "CHATMESH_PRESENCE_HEARTBEAT_S",
        10.0,
        "how often this instance refreshes its sockets' presence entries",
    )
    barrier_timeout_s: float = setting(
        "CHATMESH_SYNC_TIMEOUT_S",
        30.0,
        "deadline of sync and ack calls, which may wait for the store to catch up with the log",
    )
    sync_page_size: int = setting(
        "CHATMESH_SYNC_PAGE_SIZE", 100, "messages per sync page (at most 500)"
    )
    sync_hold_s: float = setting(
        "CHATMESH_SYNC_HOLD_S",
        30.0,
        "how long live frames wait for the client's next sync after a page with has_more",
    )
    ws_rate_burst: int = setting(
        "CHATMESH_WS_RATE_BURST", 200, "frames a socket may send in a burst"
    )
    ws_rate_per_s: float = setting(
        "CHATMESH_WS_RATE_PER_S", 100.0, "frames per second a socket may send sustained"
    )
    ws_abuse_limit: int = setting(
        "CHATMESH_WS_ABUSE_LIMIT",
        50,
        "rate-limited frames in a row after which the socket is closed with 1008",
    )
    deliver_timeout_s: float = setting(
        "CHATMESH_DELIVER_TIMEOUT_S",
        2.0,
        "how long a live frame may wait on a slow socket before it is closed with 1001",
    )
    http_shutdown_s: float = setting(
        "CHATMESH_HTTP_SHUTDOWN_S", 1.5, "on SIGTERM, how long open HTTP handlers may finish"
    )

    def advertise(self, bound_grpc_port: int) -> str:
        """The address stored in presence for direct addressing through Envoy."""
        return self.advertise_addr or f"{self.grpc_host}:{bound_grpc_port}"


def load_config(environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and check the settings; raise ConfigError naming the first bad variable."""
    cfg = load(GatewayConfig, environ)
    positive = {
        "CHATMESH_RPC_TIMEOUT_S": cfg.rpc_timeout_s,
        "CHATMESH_HEALTH_TIMEOUT_S": cfg.health_timeout_s,
        "CHATMESH_WS_HEARTBEAT_S": cfg.ws_heartbeat_s,
        "CHATMESH_WS_CLOSE_TIMEOUT_S": cfg.ws_close_timeout_s,
        "CHATMESH_MAX_FRAME_BYTES": cfg.max_frame_bytes,
        "CHATMESH_MAX_BODY_BYTES": cfg.max_body_bytes,
        "CHATMESH_PRESENCE_TTL_S": cfg.presence_ttl_s,
        "CHATMESH_PRESENCE_HEARTBEAT_S": cfg.presence_heartbeat_s,
        "CHATMESH_HTTP_BACKLOG": cfg.http_backlog,
    }
    for env, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{env} must be positive, got {value!r}")
    # Two refreshes must fit in one TTL, so a single lost heartbeat never drops an entry.
    if cfg.presence_heartbeat_s * 2 > cfg.presence_ttl_s:
        raise ConfigError(
            "CHATMESH_PRESENCE_HEARTBEAT_S must be at most half of CHATMESH_PRESENCE_TTL_S, got "
            f"{cfg.presence_heartbeat_s!r} for a TTL of {cfg.presence_ttl_s!r}"
        )
    for env, port in (("CHATMESH_HTTP_PORT", cfg.http_port), ("CHATMESH_GRPC_PORT", cfg.grpc_port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{env} must be a port number, got {port!r}")
    if cfg.advertise_addr and ":" not in cfg.advertise_addr:
        raise ConfigError(f"CHATMESH_ADVERTISE_ADDR must be host:port, got {cfg.advertise_addr!r}")
    return cfg
