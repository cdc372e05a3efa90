"""Client frames: anything parses to a valid frame or raises FrameError with a stable code."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import frames
from gateway.frames import FRAME_ERROR_CODES, FrameError

ACTIONS = ["ping", "send_message", "ack", "sync", "pong", "error", "Send_Message", ""]
FIELDS = ["action", "to", "content", "timestamp", "client_msg_id", "msg_id", "cursor", "extra"]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Objects that look like frames, so the per-action checks are exercised, not just the JSON parser.
field_values = (
    json_values
    | st.sampled_from(ACTIONS)
    | st.text(min_size=1, max_size=8).filter(str.isdecimal)
    | st.integers(min_value=0, max_value=2**64 + 5)
    | st.text(min_size=4090, max_size=4100, alphabet="ab\U0001f600")
)
frame_like = st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=len(FIELDS))


def check(data: str | bytes) -> None:
    try:
        frame = frames.parse(data)
    except FrameError as exc:
        assert exc.code in FRAME_ERROR_CODES
        assert exc.message
        assert exc.client_msg_id is None or isinstance(exc.client_msg_id, str)
        return
    assert_valid(frame)


def assert_valid(frame: frames.ClientFrame) -> None:
    if isinstance(frame, frames.SendMessage):
        for value in (frame.to, frame.content, frame.client_msg_id):
            assert isinstance(value, str) and value and "\x00" not in value
        assert len(frame.content) <= frames.MAX_CONTENT_CHARS
        assert isinstance(frame.timestamp, int) and not isinstance(frame.timestamp, bool)
        assert -(2**63) <= frame.timestamp < 2**63
    elif isinstance(frame, frames.Ack):
        assert isinstance(frame.msg_id, int) and 0 < frame.msg_id < 2**64
    elif isinstance(frame, frames.Sync):
        assert frame.cursor is None or (isinstance(frame.cursor, str) and frame.cursor)
    else:
        assert isinstance(frame, frames.Ping)


@settings(max_examples=300)
@given(st.binary(max_size=256))
def test_any_bytes(data: bytes) -> None:
    check(data)


@settings(max_examples=300)
@given(st.text(max_size=256))
def test_any_text(data: str) -> None:
    check(data)


@settings(max_examples=300)
@given(json_values)
def test_any_json(value: Any) -> None:
    check(json.dumps(value))
    check(json.dumps(value).encode())


@settings(max_examples=500)
@given(frame_like)
def test_any_frame_like_object(obj: dict[str, Any]) -> None:
    check(json.dumps(obj))
    check(json.dumps(obj, ensure_ascii=False).encode())


def send(**overrides: Any) -> str:
    frame: dict[str, Any] = {
        "action": "send_message",
        "to": "42",
        "content": "hi",
        "timestamp": 1700000000,
        "client_msg_id": "c-1",
    }
    frame.update(overrides)
    return orjson.dumps({k: v for k, v in frame.items() if v is not ...}).decode()


def refused(data: str | bytes) -> FrameError:
    with pytest.raises(FrameError) as info:
        frames.parse(data)
    return info.value


def test_ping() -> None:
    assert frames.parse('{"action":"ping"}') == frames.Ping()
    assert frames.parse(b'{"action":"ping","extra":[1]}') == frames.Ping()


def test_send_message() -> None:
    assert frames.parse(send()) == frames.SendMessage(
        to="42", content="hi", timestamp=1700000000, client_msg_id="c-1"
    )


@pytest.mark.parametrize("data", ["", "not json", "{", "[1]", "1", '"x"', "null", b"\xff\xfe"])
def test_bad_json(data: str | bytes) -> None:
    assert refused(data).code == "bad_json"


@pytest.mark.parametrize("data", ["{}", '{"action":"fly"}', '{"action":1}', '{"action":null}'])
def test_unknown_action(data: str) -> None:
    assert refused(data).code == "unknown_action"


def test_unknown_action_echoes_client_msg_id() -> None:
    assert refused('{"action":"fly","client_msg_id":"c-9"}').client_msg_id == "c-9"


@pytest.mark.parametrize("name", ["to", "content", "timestamp", "client_msg_id"])
def test_send_message_missing_field(name: str) -> None:
    error = refused(send(**{name: ...}))
    assert error.code == "missing_field"
    assert error.client_msg_id == (None if name == "client_msg_id" else "c-1")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("to", 42),
        ("to", ""),
        ("content", ""),
        ("content", ["hi"]),
        ("content", "a\x00b"),
        ("timestamp", "1700000000"),
        ("timestamp", True),
        ("timestamp", 2**63),
        ("client_msg_id", 7),
        ("client_msg_id", ""),
        ("client_msg_id", "x" * 129),
    ],
)
def test_send_message_bad_field(name: str, value: Any) -> None:
    assert refused(send(**{name: value})).code == "bad_field"


def test_content_length_counts_code_points() -> None:
    assert frames.parse(send(content="\U0001f600" * 4096))
    error = refused(send(content="\U0001f600" * 4097))
    assert (error.code, error.client_msg_id) == ("content_too_long", "c-1")


def test_ack() -> None:
    assert frames.parse('{"action":"ack","msg_id":"18446744073709551615"}') == frames.Ack(2**64 - 1)
    assert frames.parse('{"action":"ack","msg_id":12}') == frames.Ack(12)
    assert refused('{"action":"ack"}').code == "missing_field"
    for bad in ('"18446744073709551616"', '"-1"', '"0"', '"1.5"', "1.5", "true", '""', '"٣"'):
        assert refused(f'{{"action":"ack","msg_id":{bad}}}').code == "bad_field", bad


def test_sync() -> None:
    assert frames.parse('{"action":"sync","cursor":null}') == frames.Sync(None)
    assert frames.parse('{"action":"sync"}') == frames.Sync(None)
    assert frames.parse('{"action":"sync","cursor":""}') == frames.Sync(None)
    assert frames.parse('{"action":"sync","cursor":"abc"}') == frames.Sync("abc")
    assert refused('{"action":"sync","cursor":5}').code == "bad_field"


def test_server_frames() -> None:
    assert orjson.loads(frames.encode(frames.pong())) == {"action": "pong"}
    assert frames.error("bad_json", "nope", "c") == {
        "action": "error",
        "code": "bad_json",
        "message": "nope",
        "client_msg_id": "c",
    }
