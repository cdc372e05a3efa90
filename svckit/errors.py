"""Domain errors and their one mapping to gRPC status.

Services raise a `DomainError` subclass; `ErrorInterceptor` turns it into a gRPC status carrying a
`google.rpc.ErrorInfo` whose `reason` is the precise, stable code (`username_taken`,
`content_too_long`...). Anything else becomes INTERNAL with no detail for the caller, and is logged.
Callers read the reason back with `reason_of(error)`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

log = logging.getLogger(__name__)

DOMAIN = "chatmesh"
_DETAILS_KEY = "grpc-status-details-bin"


class StartupError(Exception):
    """A dependency could not be reached at start-up; the message says which and where."""


class DomainError(Exception):
    """A refusal the caller can act on: a status code, a stable reason and a human message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "internal"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "bad_request"


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "not_found"


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "conflict"


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "unauthenticated"


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "forbidden"


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "rate_limited"


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "unavailable"


def status_details(code: grpc.StatusCode, message: str, reason: str) -> bytes:
    """The serialized google.rpc.Status for `grpc-status-details-bin`."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN))
    status = status_pb2.Status(code=code.value[0], message=message, details=[info])
    return bytes(status.SerializeToString())


def reason_of(error: grpc.aio.AioRpcError) -> str | None:
    """The ErrorInfo reason a chatmesh service attached to `error`, if any."""
    metadata: Any = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return str(info.reason)
    return None


Context = grpc.aio.ServicerContext[Any, Any]
"""The servicer context type every chatmesh servicer method takes."""

Handler = Callable[[Any, Context], Awaitable[Any]]


class UnaryServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps the behaviour of every unary method; `wrap` says how. Streams pass untouched."""

    def wrap(self, inner: Handler, method: str) -> Handler:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner: Handler = handler.unary_unary  # type: ignore[assignment]
        return grpc.unary_unary_rpc_method_handler(
            self.wrap(inner, handler_call_details.method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class ErrorInterceptor(UnaryServerInterceptor):
    """Maps DomainError to its status with ErrorInfo; hides everything else behind INTERNAL."""

    def wrap(self, inner: Handler, method: str) -> Handler:
        async def guarded(request: Any, context: Context) -> Any:
            try:
                return await inner(request, context)
            except DomainError as exc:
                await context.abort(
                    exc.code,
                    exc.message,
                    trailing_metadata=(
                        (_DETAILS_KEY, status_details(exc.code, exc.message, exc.reason)),
                    ),
                )
            except grpc.aio.AbortError:
                raise
            except Exception:
                log.exception("unhandled error", extra={"method": method})
                code = grpc.StatusCode.INTERNAL
                await context.abort(
                    code,
                    "internal error",
                    trailing_metadata=(
                        (_DETAILS_KEY, status_details(code, "internal error", "internal")),
                    ),
                )

        return guarded
