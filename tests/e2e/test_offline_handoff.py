"""A recipient with no live socket is handed to notify_svc, durably; presence keeps last seen."""

from __future__ import annotations

import time
import uuid

import aiohttp
import grpc
from chatmesh.notify.v1 import notify_pb2, notify_pb2_grpc
from chatmesh.presence.v1 import presence_pb2, presence_pb2_grpc

from launcher.mesh import Mesh
from svckit import channels
from svckit.testing import eventually


async def _account(http: aiohttp.ClientSession, base: str) -> tuple[str, str]:
    name = f"h{uuid.uuid4().hex[:12]}"
    body = {"username": name, "password": "pw123456"}
    async with http.post(f"{base}/api/v1/users", json=body) as r:
        user_id = (await r.json())["user_id"]
    async with http.post(f"{base}/api/v1/sessions", json=body) as r:
        token = (await r.json())["token"]
    return user_id, token


def _stub(mesh: Mesh, authority: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        mesh.mesh_addr, options=[("grpc.default_authority", authority)]
    )


async def test_offline_recipient_is_handed_to_push_and_last_seen_moves(mesh: Mesh) -> None:
    base = mesh.edge_url
    async with aiohttp.ClientSession() as http, _stub(mesh, channels.PRESENCE) as pch:
        presence = presence_pb2_grpc.PresenceServiceStub(pch)
        alice, alice_token = await _account(http, base)
        bob, bob_token = await _account(http, base)

        async def bob_online(expected: bool) -> bool:
            seen = await presence.GetLastSeen(
                presence_pb2.GetLastSeenRequest(user_id=bob), timeout=5
            )
            return seen.online is expected

        # bob connects once and leaves: he has a last-seen time and no socket.
        bob_ws = await http.ws_connect(f"{base}/api/v1/ws?token={bob_token}")
        await eventually(lambda: bob_online(True), 10, what="bob online")
        before_leaving_ms = time.time_ns() // 1_000_000
        await bob_ws.close()
        await eventually(lambda: bob_online(False), 10, what="bob offline")
        seen = await presence.GetLastSeen(presence_pb2.GetLastSeenRequest(user_id=bob), timeout=5)
        assert before_leaving_ms <= seen.last_seen_ms <= time.time_ns() // 1_000_000

        ws = await http.ws_connect(f"{base}/api/v1/ws?token={alice_token}")
        await ws.send_json(
            {
                "action": "send_message",
                "to": bob,
                "content": "are you there?",
                "timestamp": int(time.time()),
                "client_msg_id": "offline-1",
            }
        )
        ack = await ws.receive_json(timeout=10)
        assert ack["action"] == "message_ack", ack
        await ws.close()

    async with _stub(mesh, channels.NOTIFY) as nch:
        notify = notify_pb2_grpc.NotifyServiceStub(nch)
        found: list[notify_pb2.Notification] = []

        async def handed_off() -> bool:
            reply = await notify.ListNotifications(
                notify_pb2.ListNotificationsRequest(recipient_id=bob), timeout=5
            )
            found[:] = reply.notifications
            return bool(found)

        await eventually(handed_off, 10, what="a push hand-off for bob")
        assert [n.msg_id for n in found] == [int(ack["msg_id"])]
        assert found[0].sender_id == alice
        assert found[0].conversation_id == ack["conversation_id"]
        assert found[0].state == notify_pb2.NOTIFICATION_STATE_PENDING
        # alice was online: nothing was handed off for her.
        mine = await notify.ListNotifications(
            notify_pb2.ListNotificationsRequest(recipient_id=alice), timeout=5
        )
        assert list(mine.notifications) == []
