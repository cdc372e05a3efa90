"""The shared server fixtures (tests/conftest.py) give real, usable servers."""

from __future__ import annotations

from typing import Any

import psycopg
import redis
from confluent_kafka.admin import AdminClient


def test_pg_dsn_creates_the_database_once(pg: Any) -> None:
    dsn = pg.dsn("chatmesh_fixture_check")
    assert dsn == f"postgresql://chatmesh@127.0.0.1:{pg.port}/chatmesh_fixture_check"
    assert pg.dsn("chatmesh_fixture_check") == dsn  # idempotent
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT current_database(), current_setting('fsync')").fetchone()
    assert row == ("chatmesh_fixture_check", "off")


def test_redis_url_answers(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping()
    finally:
        client.close()


def test_kafka_bootstrap_has_the_messages_topic(kafka_bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topics = admin.list_topics(timeout=10).topics
    assert len(topics["chatmesh.messages"].partitions) == 8
