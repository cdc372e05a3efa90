"""`python -m notify_svc`: the notification service process.

Foundation only: the process, its health and its place in the mesh. Recording hand-offs lands
with the messaging issue; until then each RPC answers UNIMPLEMENTED.
"""

from __future__ import annotations

import grpc
from chatmesh.notify.v1 import notify_pb2, notify_pb2_grpc

from svckit import lifecycle
from svckit.config import ServiceConfig, load

DEFAULT_PORT = 9231


def register(server: grpc.aio.Server) -> list[str]:
    notify_pb2_grpc.add_NotifyServiceServicer_to_server(
        notify_pb2_grpc.NotifyServiceServicer(), server
    )
    return [notify_pb2.DESCRIPTOR.services_by_name["NotifyService"].full_name]


async def main() -> None:
    await lifecycle.serve_forever(load(ServiceConfig), DEFAULT_PORT, register)


if __name__ == "__main__":
    lifecycle.run("notify_svc", main)
