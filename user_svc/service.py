"""gRPC adapter: chatmesh.user.v1.UserService over `logic.Accounts`.

Only translation lives here (protobuf in, domain call, protobuf out). Refusals are DomainErrors
raised by the logic; svckit's ErrorInterceptor turns them into a status with an ErrorInfo reason.
"""

from __future__ import annotations

from typing import Any

import grpc
from chatmesh.user.v1 import user_pb2, user_pb2_grpc

from user_svc.logic import Accounts, Profile, Session

Context = grpc.aio.ServicerContext[Any, Any]

SERVICE_NAME: str = user_pb2.DESCRIPTOR.services_by_name["UserService"].full_name


def _user(profile: Profile) -> user_pb2.User:
    return user_pb2.User(
        user_id=profile.user_id,
        username=profile.username,
        display_name=profile.display_name,
        created_at_ms=profile.created_at_ms,
    )


def _session_fields(session: Session) -> dict[str, Any]:
    return {
        "session_id": session.session_id,
        "user_id": session.user_id,
        "device_id": session.device_id,
        "expires_at": session.expires_at_s,
    }


class UserServicer(user_pb2_grpc.UserServiceServicer):
    """UserService RPCs, each a call into the injected Accounts."""

    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    async def CreateUser(
        self, request: user_pb2.CreateUserRequest, context: Context
    ) -> user_pb2.CreateUserResponse:
        profile = await self._accounts.create_user(
            request.username, request.password, request.display_name
        )
        return user_pb2.CreateUserResponse(user=_user(profile))

    async def CreateSession(
        self, request: user_pb2.CreateSessionRequest, context: Context
    ) -> user_pb2.CreateSessionResponse:
        issued = await self._accounts.create_session(
            request.username, request.password, request.device_id
        )
        return user_pb2.CreateSessionResponse(token=issued.token, **_session_fields(issued.session))

    async def AuthenticateSession(
        self, request: user_pb2.AuthenticateSessionRequest, context: Context
    ) -> user_pb2.AuthenticateSessionResponse:
        session = await self._accounts.authenticate(request.token)
        return user_pb2.AuthenticateSessionResponse(**_session_fields(session))

    async def RevokeSession(
        self, request: user_pb2.RevokeSessionRequest, context: Context
    ) -> user_pb2.RevokeSessionResponse:
        session = await self._accounts.revoke(request.token)
        return user_pb2.RevokeSessionResponse(
            session_id=session.session_id, user_id=session.user_id, device_id=session.device_id
        )

    async def GetUser(
        self, request: user_pb2.GetUserRequest, context: Context
    ) -> user_pb2.GetUserResponse:
        return user_pb2.GetUserResponse(user=_user(await self._accounts.get_user(request.user_id)))

    async def LookupUser(
        self, request: user_pb2.LookupUserRequest, context: Context
    ) -> user_pb2.LookupUserResponse:
        profile = await self._accounts.lookup_user(request.username)
        return user_pb2.LookupUserResponse(user=_user(profile))


def register(server: grpc.aio.Server, servicer: UserServicer) -> list[str]:
    """Add the servicer to `server`; return the service names for health and reflection."""
    user_pb2_grpc.add_UserServiceServicer_to_server(servicer, server)
    return [SERVICE_NAME]
