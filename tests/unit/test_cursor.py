from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from persister import cursor
from svckit.errors import InvalidArgument

positions = st.dictionaries(st.text(max_size=30), st.integers(min_value=0, max_value=2**63 - 1))


@given(p=positions)
def test_round_trip(p: dict[str, int]) -> None:
    assert cursor.decode(cursor.encode(p)) == p


@given(text=st.text(max_size=200))
def test_anything_else_is_refused_with_bad_field_or_decodes_to_positions(text: str) -> None:
    try:
        value = cursor.decode(text)
    except InvalidArgument as exc:
        assert exc.reason == "bad_field"
    else:
        assert isinstance(value, dict)


def test_empty_cursor_means_stored_positions() -> None:
    assert cursor.decode("") == {}
    with pytest.raises(InvalidArgument):
        cursor.decode("v1.bm90IGEgZGljdA")
