"""gRPC adapter: chatmesh.notify.v1.NotifyService over NotificationStore.

This milestone records hand-offs durably; pushing them to FCM, APNs and webhook providers, with
retries and collapse, comes with its own issue.
"""

from __future__ import annotations

import time

import grpc
from chatmesh.notify.v1 import notify_pb2, notify_pb2_grpc

from notify_svc.store import NotificationStore
from svckit.errors import Context, InvalidArgument

DEFAULT_PAGE = 50
MAX_PAGE = 500


class NotifyServicer(notify_pb2_grpc.NotifyServiceServicer):
    def __init__(self, store: NotificationStore) -> None:
        self.store = store

    async def EnqueueNotification(
        self, request: notify_pb2.EnqueueNotificationRequest, context: Context
    ) -> notify_pb2.EnqueueNotificationResponse:
        if not request.request_id or not request.recipient_id:
            raise InvalidArgument("request_id and recipient_id are required")
        notification = await self.store.enqueue(request, time.time_ns() // 1_000_000)
        return notify_pb2.EnqueueNotificationResponse(notification=notification)

    async def ListNotifications(
        self, request: notify_pb2.ListNotificationsRequest, context: Context
    ) -> notify_pb2.ListNotificationsResponse:
        if not request.recipient_id:
            raise InvalidArgument("recipient_id is required")
        if not 0 <= request.page_size <= MAX_PAGE:
            raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE}")
        try:
            before = int(request.page_token or 0)
        except ValueError:
            raise InvalidArgument("page_token is not one this service issued") from None
        page, next_seq = await self.store.list(
            request.recipient_id, request.page_size or DEFAULT_PAGE, before
        )
        return notify_pb2.ListNotificationsResponse(
            notifications=page, next_page_token=str(next_seq) if next_seq else ""
        )


def register(server: grpc.aio.Server, servicer: NotifyServicer) -> list[str]:
    notify_pb2_grpc.add_NotifyServiceServicer_to_server(servicer, server)
    return [notify_pb2.DESCRIPTOR.services_by_name["NotifyService"].full_name]
