"""Account rules: what a valid account is, how passwords and tokens are handled, who a token is.

Everything here is decided once and in one place, so the gRPC adapter stays a translation:
- Validation: `check_username`, `check_password`, `display_name_or_default`, `device_id_or_new`
  raise `InvalidArgument` (reason `bad_request`) with a message naming the field. Lengths are in
  Unicode code points, as in PROTOCOL.md.
- Passwords: argon2id through `PasswordHashing`, off the event loop and with bounded concurrency
  (each hash takes the configured argon2 memory). Login on an unknown username still verifies
  against a dummy hash, so response time does not tell which usernames exist. A hash made with
  weaker parameters than the current ones is replaced at the next successful login.
- Tokens: `secrets.token_urlsafe(32)` (256 random bits), bound to one device, expiring after the
  configured TTL; the store keeps only `token_digest(token)`.
- Refusals: a taken username is AlreadyExists(`username_taken`), decided by the database's unique
  constraint; a bad login is Unauthenticated(`invalid_credentials`) whatever the cause; a token
  that is unknown, expired or revoked is Unauthenticated(`unauthenticated`); a missing profile is
  NotFound(`not_found`), including for ids that are not even UUIDs.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from svckit.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from user_svc.store import SessionRecord, UsernameTaken, UserRecord

USERNAME_RE = re.compile(r"[a-z0-9_.]{3,32}")
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MIN_PASSWORD = 8
# Argon2 pre-hashes its input, so this is not about hashing time so much as refusing megabytes of
# "password" that would only be copied around; no real password is longer.
MAX_PASSWORD = 1024
MAX_DISPLAY_NAME = 64
# token_urlsafe(32) is 43 characters; anything much longer is not ours and is refused unread.
MAX_TOKEN = 256

# Characters a display name may not hold: controls (Cc), line and paragraph separators, and the
# bidirectional embeddings, overrides and isolates that let a name render as someone else's.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def check_username(username: str) -> str:
    if not USERNAME_RE.fullmatch(username):
        raise InvalidArgument(
            "username must be 3 to 32 characters of a-z, 0-9, '_' and '.'", reason="bad_request"
        )
    return username


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InvalidArgument(
            f"password must be at least {MIN_PASSWORD} characters", reason="bad_request"
        )
    if len(password) > MAX_PASSWORD:
        raise InvalidArgument(
            f"password must be at most {MAX_PASSWORD} characters", reason="bad_request"
        )
    return password


def display_name_or_default(display_name: str, username: str) -> str:
    """The display name to store: trimmed, the username when empty, bounded and printable."""
    name = display_name.strip()
    if not name:
        return username
    if len(name) > MAX_DISPLAY_NAME:
        raise InvalidArgument(
            f"display_name must be at most {MAX_DISPLAY_NAME} characters", reason="bad_request"
        )
    for ch in name:
        if ch in _BIDI_CONTROLS or unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
            raise InvalidArgument(
                f"display_name must not contain control characters (found U+{ord(ch):04X})",
                reason="bad_request",
            )
    return name


def device_id_or_new(device_id: str) -> str:
    """The caller's device id if well formed, a fresh one when empty."""
    if not device_id:
        return str(uuid.uuid4())
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise InvalidArgument(
            "device_id must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '.', ':' and '-'",
            reason="bad_request",
        )
    return device_id


def token_digest(token: str) -> bytes:
    """What the store keeps instead of a token: sha256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


class PasswordHashing:
    """argon2id hashing off the event loop, at most `concurrency` hashes at a time.

    Hashing is deliberately slow and memory-hungry; running it in threads keeps the loop serving,
    and the semaphore keeps a burst of logins from taking (threads x argon2 memory) at once.
    """

    def __init__(self, hasher: PasswordHasher, concurrency: int = 2) -> None:
        self._hasher = hasher
        self._slots = asyncio.Semaphore(concurrency)
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """Whether `password` matches `stored_hash`; with no hash, spend the same time and fail.

        The dummy hash is made once, lazily, with the current parameters, so an unknown username
        costs what a wrong password costs.
        """
        if stored_hash is None:
            if self._dummy is None:
                self._dummy = await self.hash(secrets.token_urlsafe(16))
            await self._verify(self._dummy, password)
            return False
        return await self._verify(stored_hash, password)

    async def _verify(self, stored_hash: str, password: str) -> bool:
        async with self._slots:
            try:
                return await asyncio.to_thread(self._hasher.verify, stored_hash, password)
            except (VerificationError, InvalidHashError):
                return False

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True


class AccountStore(Protocol):
    """What the rules need from storage (user_svc.store.UserStore, or a fake in tests)."""

    async def create_user(
        self, username: str, display_name: str, password_hash: str
    ) -> UserRecord: ...

    async def user_by_id(self, user_id: uuid.UUID) -> UserRecord | None: ...

    async def user_by_username(self, username: str) -> UserRecord | None: ...

    async def set_password_hash(self, user_id: uuid.UUID, password_hash: str) -> None: ...

    async def create_session(
        self,
        *,
        user_id: uuid.UUID,
        device_id: str,
        token_digest: bytes,
        created_at: datetime,
        expires_at: datetime,
    ) -> SessionRecord: ...

    async def active_session(self, token_digest: bytes, now: datetime) -> SessionRecord | None: ...

    async def revoke_session(self, token_digest: bytes, now: datetime) -> SessionRecord | None: ...


@dataclass(frozen=True)
class Profile:
    """The public face of an account."""

    user_id: str
    username: str
    display_name: str
    created_at_ms: int


@dataclass(frozen=True)
class Session:
    """A session as callers see it: never its token."""

    session_id: str
    user_id: str
    device_id: str
    expires_at_s: int


@dataclass(frozen=True)
class IssuedSession:
    """A new session and its bearer token, which exists only in this answer."""

    token: str
    session: Session


def _profile(record: UserRecord) -> Profile:
    return Profile(
        user_id=str(record.user_id),
        username=record.username,
        display_name=record.display_name,
        created_at_ms=int(record.created_at.timestamp() * 1000),
    )


def _session(record: SessionRecord) -> Session:
    return Session(
        session_id=str(record.session_id),
        user_id=str(record.user_id),
        device_id=record.device_id,
        expires_at_s=int(record.expires_at.timestamp()),
    )


def _bad_credentials() -> Unauthenticated:
    return Unauthenticated("invalid username or password", reason="invalid_credentials")


def _bad_token() -> Unauthenticated:
    return Unauthenticated("invalid, expired or revoked token", reason="unauthenticated")


def _no_user() -> NotFound:
    return NotFound("no such user", reason="not_found")


class Accounts:
    """The accounts use cases, over an injected store, hashing and clock."""

    def __init__(
        self,
        store: AccountStore,
        hashing: PasswordHashing,
        session_ttl_s: int,
        clock: Clock = utc_now,
        tokens: Callable[[], str] = new_token,
    ) -> None:
        self._store = store
        self._hashing = hashing
        self._ttl = timedelta(seconds=session_ttl_s)
        self._clock = clock
        self._tokens = tokens

    async def create_user(self, username: str, password: str, display_name: str) -> Profile:
        check_username(username)
        check_password(password)
        name = display_name_or_default(display_name, username)
        password_hash = await self._hashing.hash(password)
        try:
            record = await self._store.create_user(username, name, password_hash)
        except UsernameTaken:
            raise AlreadyExists("username is taken", reason="username_taken") from None
        return _profile(record)

    async def create_session(self, username: str, password: str, device_id: str) -> IssuedSession:
        device = device_id_or_new(device_id)
        if len(password) > MAX_PASSWORD:
            # No account has such a password (registration refuses it): fail without hashing.
            raise _bad_credentials()
        # A malformed username cannot exist; skip the query but still pay for a verification.
        record = (
            await self._store.user_by_username(username)
            if USERNAME_RE.fullmatch(username)
            else None
        )
        ok = await self._hashing.verify(record.password_hash if record else None, password)
        if record is None or not ok:
            raise _bad_credentials()
        if self._hashing.needs_rehash(record.password_hash):
            await self._store.set_password_hash(record.user_id, await self._hashing.hash(password))
        token = self._tokens()
        now = self._clock()
        session = await self._store.create_session(
            user_id=record.user_id,
            device_id=device,
            token_digest=token_digest(token),
            created_at=now,
            expires_at=now + self._ttl,
        )
        return IssuedSession(token=token, session=_session(session))

    async def authenticate(self, token: str) -> Session:
        if not token or len(token) > MAX_TOKEN:
            raise _bad_token()
        record = await self._store.active_session(token_digest(token), self._clock())
        if record is None:
            raise _bad_token()
        return _session(record)

    async def revoke(self, token: str) -> Session:
        """End a session at once; revoking it again answers the same, without error."""
        if not token or len(token) > MAX_TOKEN:
            raise _bad_token()
        record = await self._store.revoke_session(token_digest(token), self._clock())
        if record is None:
            raise _bad_token()
        return _session(record)

    async def get_user(self, user_id: str) -> Profile:
        try:
            parsed = uuid.UUID(user_id)
        except ValueError:
            raise _no_user() from None
        record = await self._store.user_by_id(parsed)
        if record is None:
            raise _no_user()
        return _profile(record)

    async def lookup_user(self, username: str) -> Profile:
        if not USERNAME_RE.fullmatch(username):
            raise _no_user()
        record = await self._store.user_by_username(username)
        if record is None:
            raise _no_user()
        return _profile(record)
