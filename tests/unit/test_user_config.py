"""user_svc configuration: the documented defaults; a bad value fails naming its variable."""

from __future__ import annotations

import pytest

from svckit.config import ConfigError, load
from user_svc.config import UserConfig


def test_defaults() -> None:
    cfg = load(UserConfig, environ={})
    assert cfg.db_dsn == "postgresql://chatmesh@127.0.0.1:5433/chatmesh_users"
    assert cfg.session_ttl_s == 30 * 24 * 3600
    assert cfg.bind_port(9211) == 9211
    # argon2-cffi's defaults (RFC 9106 profile 2): tests lower them, production must not.
    assert (cfg.argon2_time_cost, cfg.argon2_memory_kib, cfg.argon2_parallelism) == (3, 65536, 4)


def test_values_come_from_the_environment() -> None:
    cfg = load(
        UserConfig,
        environ={
            "CHATMESH_USER_DB_DSN": "postgresql://u@db:5432/x",
            "CHATMESH_SESSION_TTL_S": "60",
            "CHATMESH_ARGON2_MEMORY_KIB": "1024",
            "CHATMESH_GRPC_PORT": "9999",
        },
    )
    assert cfg.db_dsn == "postgresql://u@db:5432/x"
    assert cfg.session_ttl_s == 60
    assert cfg.argon2_memory_kib == 1024
    assert cfg.bind_port(9211) == 9999


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("CHATMESH_SESSION_TTL_S", "0"),
        ("CHATMESH_SESSION_TTL_S", "a month"),
        ("CHATMESH_ARGON2_TIME_COST", "0"),
        ("CHATMESH_ARGON2_MEMORY_KIB", "16"),  # under 8 KiB per lane with 4 lanes
        ("CHATMESH_ARGON2_PARALLELISM", "0"),
        ("CHATMESH_ARGON2_CONCURRENCY", "0"),
        ("CHATMESH_USER_DB_POOL_MAX", "1"),  # under the minimum of 2
        ("CHATMESH_USER_DB_CONNECT_TIMEOUT_S", "0"),
        ("CHATMESH_LOG_LEVEL", "LOUD"),
    ],
)
def test_a_bad_value_fails_at_start_naming_its_variable(env: str, value: str) -> None:
    with pytest.raises(ConfigError, match=env):
        load(UserConfig, environ={env: value})
