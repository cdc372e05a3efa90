"""What the edge measures (Prometheus, served by svckit.metrics on every gateway process).

Label values are bounded: actions are PROTOCOL.md's (plus `invalid` for a frame refused by
validation and `throttled` for one refused by the rate limit before it was read), codes are
PROTOCOL.md's error codes, close codes are the ones this server sends.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from svckit.metrics import by_label

SOCKETS = Gauge("chatmesh_ws_connections", "WebSockets open on this gateway instance.")
SOCKETS_OPENED = Counter(
    "chatmesh_ws_connections_opened_total", "WebSockets accepted (authenticated and upgraded)."
)
FRAMES_RECEIVED = Counter(
    "chatmesh_ws_frames_received_total",
    "Frames received from clients, by action (invalid: refused by validation; throttled: "
    "refused by the rate limit).",
    ["action"],
)
FRAMES_SENT = Counter(
    "chatmesh_ws_frames_sent_total", "Frames written to clients' sockets, by action.", ["action"]
)
FRAMES_REJECTED = Counter(
    "chatmesh_ws_frames_rejected_total",
    "error frames sent, by PROTOCOL.md code (bad_json, rate_limited, unavailable...).",
    ["code"],
)
RATE_LIMITED_SOCKETS = Counter(
    "chatmesh_ws_rate_limited_sockets_total",
    "Sockets that had at least one frame refused by the rate limit (once per socket).",
)
SERVER_CLOSES = Counter(
    "chatmesh_ws_server_closes_total",
    "Sockets this server closed, by close code (1001 draining or slow, 1008 abuse, 4001...).",
    ["code"],
)
DELIVERY_LATENCY = Histogram(
    "chatmesh_delivery_latency_seconds",
    "From chat_svc accepting a message (its server_ts_ms) to its live new_message frame written "
    "to a socket of the recipient (or of the sender's other devices). Across hosts it includes "
    "their clock difference.",
    buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)

# The per-frame paths use these (label values are bounded, see above).
received = by_label(FRAMES_RECEIVED)
sent = by_label(FRAMES_SENT)
rejected = by_label(FRAMES_REJECTED)
