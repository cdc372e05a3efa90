"""`python -m persister`: the persister process.

Foundation only: the process and its gRPC health endpoint (which Envoy and the launcher probe).
The consumer lands with the messaging issue.
"""

from __future__ import annotations

import grpc

from svckit import lifecycle
from svckit.config import ServiceConfig, load

DEFAULT_PORT = 9241


def register(server: grpc.aio.Server) -> list[str]:
    return []


async def main() -> None:
    await lifecycle.serve_forever(load(ServiceConfig), DEFAULT_PORT, register)


if __name__ == "__main__":
    lifecycle.run("persister", main)
