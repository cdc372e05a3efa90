"""The aiohttp edge: REST and WebSocket for clients (PROTOCOL.md), typed gRPC through Envoy behind.

The gateway validates shapes, authenticates, translates to gRPC calls and maps errors back
(`edge_errors`); it holds no business logic and no state but its live sockets (`ws.Registry`).
It also serves `chatmesh.gateway.v1` so other services can reach the sockets it holds.
"""
