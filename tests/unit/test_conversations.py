from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from svckit.conversations import conversation_id, participants, peer_of

ids = st.text(alphabet=st.characters(blacklist_characters=":"), min_size=1, max_size=40)


@given(a=ids, b=ids)
def test_same_id_for_both_participants_and_round_trips(a: str, b: str) -> None:
    cid = conversation_id(a, b)
    assert cid == conversation_id(b, a)
    assert set(participants(cid) or ()) == {a, b}
    assert peer_of(cid, a) == b
    assert peer_of(cid, b) == a


@given(text=st.text(max_size=80))
def test_anything_else_is_not_a_conversation_or_names_its_participants(text: str) -> None:
    pair = participants(text)
    if pair is not None:
        assert conversation_id(*pair) == text


def test_outsider_is_not_a_participant() -> None:
    cid = conversation_id("u1", "u2")
    assert peer_of(cid, "u3") is None
    assert participants("dm:u2:u1") is None
    assert participants("nonsense") is None
