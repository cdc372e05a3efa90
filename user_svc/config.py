"""user_svc settings: the common service settings plus the accounts database and the cost knobs.

Read once at start-up by `svckit.config.load(UserConfig)`; a value that cannot work (a TTL under a
second, an argon2 cost argon2 itself refuses) fails there, naming its variable, instead of at the
first login.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from svckit.config import ConfigError, ServiceConfig, setting

DEFAULT_PORT = 9211
DEFAULT_DSN = "postgresql://chatmesh@127.0.0.1:5433/chatmesh_users"
DEFAULT_SESSION_TTL_S = 30 * 24 * 3600


@dataclass(frozen=True)
class UserConfig(ServiceConfig):
    """Settings of one user_svc process.

    The argon2 defaults are argon2-cffi's (RFC 9106's second recommended profile: 64 MiB, 3 passes,
    4 lanes). Lower them only in tests: they are what makes a stolen hash expensive to crack.
    """

    db_dsn: str = setting(
        "CHATMESH_USER_DB_DSN",
        DEFAULT_DSN,
        "libpq URI of the accounts database (owned by user_svc)",
    )
    session_ttl_s: int = setting(
        "CHATMESH_SESSION_TTL_S", DEFAULT_SESSION_TTL_S, "lifetime of a session token, seconds"
    )
    db_connect_timeout_s: float = setting(
        "CHATMESH_USER_DB_CONNECT_TIMEOUT_S",
        30.0,
        "how long start-up waits for PostgreSQL before giving up",
    )
    db_statement_timeout_s: float = setting(
        "CHATMESH_USER_DB_STATEMENT_TIMEOUT_S", 5.0, "server-side limit of one SQL statement"
    )
    db_pool_min: int = setting("CHATMESH_USER_DB_POOL_MIN", 2, "connections kept open")
    db_pool_max: int = setting("CHATMESH_USER_DB_POOL_MAX", 10, "most connections open at once")
    argon2_time_cost: int = setting("CHATMESH_ARGON2_TIME_COST", 3, "argon2id passes")
    argon2_memory_kib: int = setting("CHATMESH_ARGON2_MEMORY_KIB", 65536, "argon2id memory, KiB")
    argon2_parallelism: int = setting("CHATMESH_ARGON2_PARALLELISM", 4, "argon2id lanes")
    hash_concurrency: int = setting(
        "CHATMESH_ARGON2_CONCURRENCY",
        2,
        "password hashes computed at once; bounds memory (each takes argon2 memory) and CPU",
    )

    def __post_init__(self) -> None:
        self._at_least("session_ttl_s", 1)
        self._at_least("db_connect_timeout_s", 0.1)
        self._at_least("db_statement_timeout_s", 0.1)
        self._at_least("db_pool_min", 1)
        self._at_least("db_pool_max", self.db_pool_min)
        self._at_least("argon2_time_cost", 1)
        self._at_least("argon2_parallelism", 1)
        # argon2 refuses less than 8 KiB per lane.
        self._at_least("argon2_memory_kib", 8 * self.argon2_parallelism)
        self._at_least("hash_concurrency", 1)
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(
                f"CHATMESH_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}"
            )

    def _at_least(self, name: str, minimum: float) -> None:
        value = getattr(self, name)
        if value < minimum:
            env = next(f.metadata["env"] for f in fields(self) if f.name == name)
            raise ConfigError(f"{env} must be at least {minimum}, got {value!r}")
