"""The one mapping from failures behind the edge to PROTOCOL.md codes (STYLE.md section 5)."""

from __future__ import annotations

import grpc
import pytest

from gateway import edge_errors
from gateway.edge_errors import CloseCode, EdgeError
from svckit.errors import status_details

SECRET = "psycopg.errors.UniqueViolation at store.py:42"


def rpc_error(
    code: grpc.StatusCode, details: str, reason: str | None = None
) -> grpc.aio.AioRpcError:
    """An error as a chatmesh service's ErrorInterceptor sends it (reason in ErrorInfo)."""
    trailing = grpc.aio.Metadata()
    if reason is not None:
        trailing.add("grpc-status-details-bin", status_details(code, details, reason))
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), trailing, details=details, debug_error_string=""
    )


# (status, reason) -> (REST status, REST code, WebSocket error-frame code or None, close code)
TABLE = [
    (grpc.StatusCode.INVALID_ARGUMENT, "bad_request", 400, "bad_request", "bad_request", None),
    (
        grpc.StatusCode.INVALID_ARGUMENT,
        "content_too_long",
        400,
        "content_too_long",
        "content_too_long",
        None,
    ),
    (grpc.StatusCode.INVALID_ARGUMENT, None, 400, "bad_request", "bad_request", None),
    (
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_credentials",
        401,
        "invalid_credentials",
        None,
        CloseCode.UNAUTHORIZED,
    ),
    (
        grpc.StatusCode.UNAUTHENTICATED,
        "unauthenticated",
        401,
        "unauthenticated",
        None,
        CloseCode.UNAUTHORIZED,
    ),
    (
        grpc.StatusCode.UNAUTHENTICATED,
        "token_expired",
        401,
        "unauthenticated",
        None,
        CloseCode.UNAUTHORIZED,
    ),
    (grpc.StatusCode.UNAUTHENTICATED, None, 401, "unauthenticated", None, CloseCode.UNAUTHORIZED),
    (grpc.StatusCode.PERMISSION_DENIED, "forbidden", 403, "forbidden", "forbidden", None),
    (grpc.StatusCode.PERMISSION_DENIED, "not_yours", 403, "forbidden", "forbidden", None),
    (grpc.StatusCode.NOT_FOUND, "not_found", 404, "not_found", "unknown_recipient", None),
    (grpc.StatusCode.NOT_FOUND, "no_such_user", 404, "not_found", "unknown_recipient", None),
    (
        grpc.StatusCode.ALREADY_EXISTS,
        "username_taken",
        409,
        "username_taken",
        "username_taken",
        None,
    ),
    (grpc.StatusCode.ALREADY_EXISTS, None, 409, "conflict", "conflict", None),
    (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "rate_limited",
        429,
        "rate_limited",
        "rate_limited",
        CloseCode.POLICY_VIOLATION,
    ),
    (grpc.StatusCode.UNAVAILABLE, None, 503, "unavailable", "unavailable", None),
    (grpc.StatusCode.UNAVAILABLE, "unavailable", 503, "unavailable", "unavailable", None),
    (grpc.StatusCode.DEADLINE_EXCEEDED, None, 503, "unavailable", "unavailable", None),
    (grpc.StatusCode.INTERNAL, "internal", 500, "internal", "internal", None),
    (grpc.StatusCode.UNKNOWN, None, 500, "internal", "internal", None),
    (grpc.StatusCode.UNIMPLEMENTED, None, 500, "internal", "internal", None),
    (grpc.StatusCode.DATA_LOSS, None, 500, "internal", "internal", None),
    (grpc.StatusCode.FAILED_PRECONDITION, "stale", 500, "internal", "internal", None),
    (grpc.StatusCode.CANCELLED, None, 500, "internal", "internal", None),
]


@pytest.mark.parametrize(("grpc_code", "reason", "status", "code", "frame_code", "close"), TABLE)
def test_mapping_table(
    grpc_code: grpc.StatusCode,
    reason: str | None,
    status: int,
    code: str,
    frame_code: str | None,
    close: CloseCode | None,
) -> None:
    error = edge_errors.from_rpc(rpc_error(grpc_code, "refused", reason))
    assert (error.status, error.code, error.close_code) == (status, code, close)
    if frame_code is None:
        assert not error.sends_frame  # the socket just closes
    else:
        assert error.sends_frame
        assert error.frame()["code"] == frame_code


def test_bearer_check_is_always_unauthenticated() -> None:
    exc = rpc_error(grpc.StatusCode.UNAUTHENTICATED, "bad password", "invalid_credentials")
    assert edge_errors.from_rpc(exc).code == "invalid_credentials"
    error = edge_errors.from_rpc(exc, bearer=True)
    assert (error.status, error.code, error.close_code) == (401, "unauthenticated", 4001)


def test_bearer_flag_does_not_hide_outages() -> None:
    error = edge_errors.from_rpc(rpc_error(grpc.StatusCode.UNAVAILABLE, "down"), bearer=True)
    assert (error.status, error.code) == (503, "unavailable")


def test_deliberate_refusal_text_reaches_the_client() -> None:
    exc = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, "username must match [a-z0-9_.]{3,32}", "bad_request"
    )
    assert edge_errors.from_rpc(exc).message == "username must match [a-z0-9_.]{3,32}"


def test_a_refused_item_of_a_batch_reads_like_the_same_unary_refusal() -> None:
    unary = edge_errors.from_rpc(
        rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "no message 5 for this user", "bad_field")
    )
    batched = edge_errors.refused("bad_field", "no message 5 for this user")
    assert batched.frame() == unary.frame()
    assert (batched.code, batched.status, batched.close_code) == ("bad_field", 400, None)
    # A reason that is not a stable code is not relayed, nor is its text.
    odd = edge_errors.refused("Bad Field!", "internal detail")
    assert (odd.code, odd.message) == ("bad_request", "bad request")


@pytest.mark.parametrize(
    ("grpc_code", "reason"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, None),  # no ErrorInfo: not a deliberate refusal
        (grpc.StatusCode.ALREADY_EXISTS, None),
        (grpc.StatusCode.INTERNAL, "internal"),
        (grpc.StatusCode.UNKNOWN, None),
        (grpc.StatusCode.UNAVAILABLE, "unavailable"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, None),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limited"),
    ],
)
def test_debug_detail_never_leaks(grpc_code: grpc.StatusCode, reason: str | None) -> None:
    error = edge_errors.from_rpc(rpc_error(grpc_code, SECRET, reason))
    assert SECRET not in error.message
    assert SECRET not in str(error.body())
    assert SECRET not in str(error.frame())


@pytest.mark.parametrize("reason", ["Username Taken", "drop table;", "", "x" * 100, "9lives"])
def test_malformed_reasons_are_ignored(reason: str) -> None:
    error = edge_errors.from_rpc(rpc_error(grpc.StatusCode.ALREADY_EXISTS, "taken", reason))
    assert error.code == "conflict"


def test_unprintable_detail_is_not_relayed() -> None:
    exc = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "line one\nline two", "bad_request")
    assert edge_errors.from_rpc(exc).message == "bad request"


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "bad_request"),
        (401, "unauthenticated"),
        (403, "forbidden"),
        (404, "not_found"),
        (405, "method_not_allowed"),
        (413, "too_large"),
        (418, "bad_request"),
        (429, "rate_limited"),
        (500, "internal"),
        (502, "internal"),
        (503, "unavailable"),
    ],
)
def test_http_failures(status: int, code: str) -> None:
    error = edge_errors.from_http_status(status)
    assert error.code == code
    assert error.status == (500 if code == "internal" else status)


def test_envelope_shape() -> None:
    error = edge_errors.from_rpc(
        rpc_error(grpc.StatusCode.ALREADY_EXISTS, "taken", "username_taken")
    )
    assert error.body() == {"error": {"code": "username_taken", "message": "taken"}}


def test_error_frame_echoes_client_msg_id() -> None:
    error = edge_errors.unavailable("messaging is not enabled yet")
    assert error.frame("c-1") == {
        "action": "error",
        "code": "unavailable",
        "message": "messaging is not enabled yet",
        "client_msg_id": "c-1",
    }
    assert "client_msg_id" not in error.frame()


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (edge_errors.bad_request("x"), 400, "bad_request"),
        (edge_errors.unauthenticated(), 401, "unauthenticated"),
        (edge_errors.not_found(), 404, "not_found"),
        (edge_errors.method_not_allowed(), 405, "method_not_allowed"),
        (edge_errors.too_large(), 413, "too_large"),
        (edge_errors.unavailable(), 503, "unavailable"),
        (edge_errors.internal(), 500, "internal"),
    ],
)
def test_edge_refusals(error: EdgeError, status: int, code: str) -> None:
    assert (error.status, error.code) == (status, code)
    assert set(error.body()["error"]) == {"code", "message"}


def test_unauthenticated_closes_4001_without_a_frame() -> None:
    error = edge_errors.unauthenticated()
    assert error.close_code == 4001
    assert not error.sends_frame
