"""Outbound gRPC: every service-to-service call goes through Envoy's mesh listener.

Envoy picks the upstream cluster by the call's `:authority`, which is the target service's name
(`user-svc`, `chat-svc`, ...). A gateway instance is addressed directly: authority `gateway` plus
the `x-chatmesh-gateway-addr` header naming the instance, which Envoy's original-destination
cluster routes to (see launcher/envoy_config.py).
"""

from __future__ import annotations

import grpc

from svckit import metrics, telemetry

GATEWAY_ADDR_HEADER = "x-chatmesh-gateway-addr"
# SendMessage carries the conversation id here; Envoy hashes it onto the chat_svc ring.
CONVERSATION_HEADER = "x-chatmesh-conversation"

# Authorities, one per service; Envoy's virtual hosts use the same names.
USER = "user-svc"
CHAT = "chat-svc"
PRESENCE = "presence-svc"
NOTIFY = "notify-svc"
PERSISTER = "persister"
GATEWAY = "gateway"

_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]


def mesh_channel(mesh_addr: str, authority: str) -> grpc.aio.Channel:
    """A channel to `authority` through Envoy at `mesh_addr` (host:port).

    Every call on it is counted and timed (`svckit.metrics.ClientMetrics`) and, when tracing is
    on, traced with its context propagated (`svckit.telemetry`)."""
    return grpc.aio.insecure_channel(
        mesh_addr,
        options=[*_OPTIONS, ("grpc.default_authority", authority)],
        interceptors=[*telemetry.client_interceptors(), metrics.ClientMetrics()],  # type: ignore[list-item]
    )
