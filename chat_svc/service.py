"""gRPC adapter: chatmesh.chat.v1.ChatService over chat_svc.logic.Chat."""

from __future__ import annotations

import grpc
from chatmesh.chat.v1 import chat_pb2, chat_pb2_grpc

from chat_svc.logic import Chat
from svckit.errors import Context


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, chat: Chat) -> None:
        self.chat = chat

    async def SendMessage(
        self, request: chat_pb2.SendMessageRequest, context: Context
    ) -> chat_pb2.SendMessageResponse:
        accepted = await self.chat.send(request)
        return chat_pb2.SendMessageResponse(message=accepted.message, duplicate=accepted.duplicate)


def register(server: grpc.aio.Server, servicer: ChatServicer) -> list[str]:
    chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, server)
    return [chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name]
