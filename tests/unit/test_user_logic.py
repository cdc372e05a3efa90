"""user_svc rules without a database: validation, hashing policy and token handling.

Validation tests build a valid request, break one field, and assert the violation names it.
The use-case tests run `Accounts` over a small in-memory store, to pin down what must happen
where a database would hide it (which hash is verified, when a hash is replaced).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

import grpc
import pytest
from argon2 import PasswordHasher
from hypothesis import given
from hypothesis import strategies as st

from svckit.errors import AlreadyExists, InvalidArgument, Unauthenticated
from user_svc import logic
from user_svc.logic import Accounts, PasswordHashing
from user_svc.store import MIGRATIONS, SessionRecord, UsernameTaken, UserRecord

USERNAME_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789_."


def cheap_hasher(time_cost: int = 1) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=8, parallelism=1)


# --- validation: a valid request, then one field broken -------------------------------------


@dataclass(frozen=True)
class NewAccount:
    username: str = "alice.b_01"
    password: str = "correct horse"
    display_name: str = "Alice B."

    def check(self) -> str:
        """Run every CreateUser check; return the display name that would be stored."""
        logic.check_username(self.username)
        logic.check_password(self.password)
        return logic.display_name_or_default(self.display_name, self.username)


def test_the_valid_request_passes() -> None:
    assert NewAccount().check() == "Alice B."


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", "ab"),  # too short
        ("username", "a" * 33),  # too long
        ("username", ""),
        ("username", "Alice"),  # upper case
        ("username", "al ice"),
        ("username", "al-ice"),
        ("username", "alice\n"),  # a `$` anchor would let the newline through
        ("username", "\u00e5lice"),  # non-ASCII letter
        ("username", "ali\x00ce"),
        ("password", "seven77"),  # 7 code points
        ("password", "\u00e9" * 7),  # 14 UTF-8 bytes, still 7 code points
        ("password", ""),
        ("password", "x" * (logic.MAX_PASSWORD + 1)),
        ("display_name", "x" * (logic.MAX_DISPLAY_NAME + 1)),
        ("display_name", "Bob\x07"),
        ("display_name", "Bob\nSmith"),
        ("display_name", "Bob\u2028Smith"),  # line separator
        ("display_name", "evil\u202egnp.exe"),  # right-to-left override
        ("display_name", "nul\x00"),
    ],
)
def test_one_broken_field_is_refused_naming_it(field: str, value: str) -> None:
    broken = replace(NewAccount(), **{field: value})
    with pytest.raises(InvalidArgument) as caught:
        broken.check()
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "bad_request"
    assert caught.value.message.startswith(field)


@pytest.mark.parametrize("username", ["abc", "a" * 32, "a.b_c", "...", "123", "___"])
def test_usernames_at_the_edges_are_accepted(username: str) -> None:
    assert replace(NewAccount(), username=username).check()


def test_passwords_count_code_points_not_bytes() -> None:
    assert logic.check_password("\U0001f512" * 8)  # 8 code points, 32 bytes
    assert logic.check_password("x" * logic.MAX_PASSWORD)
    with pytest.raises(InvalidArgument):
        logic.check_password("\U0001f512" * 7)


@pytest.mark.parametrize(
    ("given_name", "stored"),
    [
        ("", "alice.b_01"),
        ("   ", "alice.b_01"),
        ("  Bob  ", "Bob"),
        ("x" * logic.MAX_DISPLAY_NAME, "x" * logic.MAX_DISPLAY_NAME),
        ("\U0001f469\u200d\U0001f4bb Ann", "\U0001f469\u200d\U0001f4bb Ann"),  # ZWJ emoji stays
        ("Zo\u00eb", "Zo\u00eb"),
    ],
)
def test_display_name_defaults_to_username_and_is_trimmed(given_name: str, stored: str) -> None:
    assert replace(NewAccount(), display_name=given_name).check() == stored


@given(st.text(alphabet=USERNAME_ALPHABET, min_size=3, max_size=32))
def test_every_username_in_the_grammar_is_accepted(username: str) -> None:
    assert logic.check_username(username) == username


@given(st.text(max_size=40))
def test_a_username_is_accepted_exactly_when_it_matches_the_grammar(username: str) -> None:
    expected = 3 <= len(username) <= 32 and all(c in USERNAME_ALPHABET for c in username)
    try:
        logic.check_username(username)
        accepted = True
    except InvalidArgument:
        accepted = False
    assert accepted == expected


@given(st.text(max_size=logic.MAX_PASSWORD + 20))
def test_a_password_is_accepted_exactly_when_its_length_is_in_bounds(password: str) -> None:
    expected = logic.MIN_PASSWORD <= len(password) <= logic.MAX_PASSWORD
    try:
        logic.check_password(password)
        accepted = True
    except InvalidArgument:
        accepted = False
    assert accepted == expected


@given(st.text(max_size=80))
def test_a_stored_display_name_is_never_empty_long_or_controlled(display_name: str) -> None:
    try:
        stored = logic.display_name_or_default(display_name, "fallback")
    except InvalidArgument as exc:
        assert exc.message.startswith("display_name")
        return
    assert 1 <= len(stored) <= logic.MAX_DISPLAY_NAME
    assert stored == stored.strip()
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in stored)


def test_device_id_is_kept_when_valid_and_generated_when_empty() -> None:
    assert logic.device_id_or_new("phone-1:A.b_c") == "phone-1:A.b_c"
    assert logic.device_id_or_new("d" * 64) == "d" * 64
    first, second = logic.device_id_or_new(""), logic.device_id_or_new("")
    assert first != second
    assert logic.DEVICE_ID_RE.fullmatch(first)


@pytest.mark.parametrize("device_id", ["d" * 65, "my phone", "t\u00e9l\u00e9phone", "a/b", "x\n"])
def test_a_malformed_device_id_is_refused_naming_it(device_id: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        logic.device_id_or_new(device_id)
    assert caught.value.message.startswith("device_id")
    assert caught.value.reason == "bad_request"


def test_tokens_are_random_url_safe_and_only_their_digest_is_kept() -> None:
    tokens = {logic.new_token() for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    digest = logic.token_digest(token)
    assert len(digest) == 32
    assert digest == logic.token_digest(token)
    assert digest != logic.token_digest(token + "x")
    assert token.encode() not in digest


def test_migrations_are_ordered_and_unique() -> None:
    versions = [m.version for m in MIGRATIONS]
    assert versions == sorted(set(versions))
    assert versions[0] == 1


# --- use cases over an in-memory store ------------------------------------------------------


class MemoryStore:
    """Just enough of UserStore for the rules; the real one is tested against PostgreSQL."""

    def __init__(self) -> None:
        self.users: dict[str, UserRecord] = {}
        self.sessions: dict[bytes, SessionRecord] = {}
        self.lookups = 0

    async def create_user(self, username: str, display_name: str, password_hash: str) -> UserRecord:
        if username in self.users:
            raise UsernameTaken(username)
        record = UserRecord(uuid.uuid4(), username, display_name, password_hash, datetime.now(UTC))
        self.users[username] = record
        return record

    async def user_by_id(self, user_id: uuid.UUID) -> UserRecord | None:
        return next((u for u in self.users.values() if u.user_id == user_id), None)

    async def user_by_username(self, username: str) -> UserRecord | None:
        self.lookups += 1
        return self.users.get(username)

    async def set_password_hash(self, user_id: uuid.UUID, password_hash: str) -> None:
        for name, user in self.users.items():
            if user.user_id == user_id:
                self.users[name] = replace(user, password_hash=password_hash)

    async def create_session(
        self,
        *,
        user_id: uuid.UUID,
        device_id: str,
        token_digest: bytes,
        created_at: datetime,
        expires_at: datetime,
    ) -> SessionRecord:
        record = SessionRecord(uuid.uuid4(), user_id, device_id, created_at, expires_at, None)
        self.sessions[token_digest] = record
        return record

    async def active_session(self, token_digest: bytes, now: datetime) -> SessionRecord | None:
        s = self.sessions.get(token_digest)
        return s if s and s.revoked_at is None and s.expires_at > now else None

    async def revoke_session(self, token_digest: bytes, now: datetime) -> SessionRecord | None:
        s = self.sessions.get(token_digest)
        if s and s.revoked_at is None:
            s = self.sessions[token_digest] = replace(s, revoked_at=now)
        return s


class CountingHasher(PasswordHasher):
    """Records which hashes were verified, so timing-evenness is observable."""

    def __init__(self, time_cost: int = 1) -> None:
        super().__init__(time_cost=time_cost, memory_cost=8, parallelism=1)
        self.verified: list[str] = []
        self.hashed = 0

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.hashed += 1
        return super().hash(password, salt=salt)

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


def accounts(store: MemoryStore, hasher: PasswordHasher, now: datetime | None = None) -> Accounts:
    start = now or datetime(2025, 1, 1, tzinfo=UTC)
    return Accounts(store, PasswordHashing(hasher), session_ttl_s=3600, clock=lambda: start)


async def test_registration_stores_an_argon2id_hash_never_the_password() -> None:
    store = MemoryStore()
    profile = await accounts(store, cheap_hasher()).create_user("alice", "correct horse", "")
    stored = store.users["alice"].password_hash
    assert stored.startswith("$argon2id$")
    assert "correct horse" not in stored
    assert profile.display_name == "alice"


async def test_a_refused_registration_hashes_and_stores_nothing() -> None:
    store, hasher = MemoryStore(), CountingHasher()
    with pytest.raises(InvalidArgument):
        await accounts(store, hasher).create_user("alice", "short", "")
    assert hasher.hashed == 0 and store.users == {}


async def test_a_taken_username_is_already_exists_with_its_reason() -> None:
    store = MemoryStore()
    acc = accounts(store, cheap_hasher())
    await acc.create_user("alice", "correct horse", "")
    with pytest.raises(AlreadyExists) as caught:
        await acc.create_user("alice", "another password", "")
    assert caught.value.reason == "username_taken"


async def test_an_unknown_username_still_costs_a_verification() -> None:
    store, hasher = MemoryStore(), CountingHasher()
    acc = accounts(store, hasher)
    await acc.create_user("alice", "correct horse", "")
    for username in ("nobody", "Not-A-Name"):
        with pytest.raises(Unauthenticated) as caught:
            await acc.create_session(username, "correct horse", "")
        assert caught.value.reason == "invalid_credentials"
    assert len(hasher.verified) == 2
    assert store.users["alice"].password_hash not in hasher.verified
    # The malformed username never reached the store.
    assert store.lookups == 1


async def test_an_oversized_password_is_refused_without_hashing() -> None:
    store, hasher = MemoryStore(), CountingHasher()
    acc = accounts(store, hasher)
    with pytest.raises(Unauthenticated):
        await acc.create_session("alice", "x" * (logic.MAX_PASSWORD + 1), "")
    assert hasher.verified == [] and hasher.hashed == 0


async def test_a_weak_hash_is_replaced_at_the_next_login() -> None:
    store = MemoryStore()
    await accounts(store, cheap_hasher(time_cost=1)).create_user("alice", "correct horse", "")
    weak = store.users["alice"].password_hash
    stronger = cheap_hasher(time_cost=2)
    issued = await accounts(store, stronger).create_session("alice", "correct horse", "")
    strong = store.users["alice"].password_hash
    assert strong != weak
    assert "t=2" in strong and not stronger.check_needs_rehash(strong)
    assert stronger.verify(strong, "correct horse")
    assert issued.session.user_id == str(store.users["alice"].user_id)


async def test_a_session_expires_after_the_ttl_by_the_injected_clock() -> None:
    store = MemoryStore()
    now = [datetime(2025, 1, 1, tzinfo=UTC)]
    acc = Accounts(store, PasswordHashing(cheap_hasher()), session_ttl_s=60, clock=lambda: now[0])
    await acc.create_user("alice", "correct horse", "")
    issued = await acc.create_session("alice", "correct horse", "tablet")
    assert issued.session.expires_at_s == int((now[0] + timedelta(seconds=60)).timestamp())
    now[0] += timedelta(seconds=59)
    assert (await acc.authenticate(issued.token)).device_id == "tablet"
    now[0] += timedelta(seconds=1)
    with pytest.raises(Unauthenticated) as caught:
        await acc.authenticate(issued.token)
    assert caught.value.reason == "unauthenticated"
