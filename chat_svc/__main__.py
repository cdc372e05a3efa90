"""`python -m chat_svc`: the chat service process.

Foundation only: the process, its health and its place in the mesh. The messaging RPCs land with
the messaging issue; until then each answers UNIMPLEMENTED.
"""

from __future__ import annotations

import grpc
from chatmesh.chat.v1 import chat_pb2, chat_pb2_grpc

from svckit import lifecycle
from svckit.config import ServiceConfig, load

DEFAULT_PORT = 9201


def register(server: grpc.aio.Server) -> list[str]:
    chat_pb2_grpc.add_ChatServiceServicer_to_server(chat_pb2_grpc.ChatServiceServicer(), server)
    return [chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name]


async def main() -> None:
    await lifecycle.serve_forever(load(ServiceConfig), DEFAULT_PORT, register)


if __name__ == "__main__":
    lifecycle.run("chat_svc", main)
