from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from persister import cursor
from svckit.errors import InvalidArgument


def test_round_trip() -> None:
    handle = cursor.new_handle()
    assert cursor.decode(cursor.encode(handle)) == handle
    assert len(cursor.encode(handle)) < 40


@given(text=st.text(max_size=200))
def test_anything_else_is_refused_with_bad_field(text: str) -> None:
    try:
        value = cursor.decode(text)
    except InvalidArgument as exc:
        assert exc.reason == "bad_field"
    else:
        assert value is None or cursor.encode(value) == text


def test_empty_cursor_means_stored_positions() -> None:
    assert cursor.decode("") is None
    with pytest.raises(InvalidArgument):
        cursor.decode("v1.bm90IGEgZGljdA")
