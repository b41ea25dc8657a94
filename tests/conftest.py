"""Shared fixtures.  Storage and planner tests run against SQLite and the real PostgreSQL.

PostgreSQL is at 127.0.0.1:5432, database `test` (ORCHESTRATOR_TEST_PG overrides the URL).  Each
test gets its own schema, dropped afterwards.  In CI (CI=true) an unreachable server is a failure,
never a silent skip.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from orchestrator.storage.engine import connect

PG_URL = os.environ.get("ORCHESTRATOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parent.parent


def _pg_available() -> bool:
    try:
        engine = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_server() -> str:
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and is not reachable at {PG_URL}")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    return PG_URL


def pg_schema_url(base: str, schema: str) -> str:
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh, empty schema."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_server.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield pg_schema_url(pg_server, schema)
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both databases: the test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'orchestrator.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = connect(db_url)
    yield engine
    engine.dispose()



REDIS_URL = os.environ.get("ORCHESTRATOR_TEST_REDIS", "redis://127.0.0.1:6379/7")
AMQP_URL = os.environ.get("ORCHESTRATOR_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")


def _require(service: str, url: str, probe) -> None:  # type: ignore[no-untyped-def]
    try:
        probe()
    except Exception as error:  # noqa: BLE001 - any failure means the service is not usable
        if os.environ.get("CI"):
            pytest.fail(f"{service} is required in CI and is not usable at {url}: {error}")
        pytest.skip(f"{service} not reachable at {url}")


@pytest.fixture
def redis_url() -> str:
    """A Redis database of its own, emptied before the test (queues, rate-limit counters)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    _require("Redis", REDIS_URL, client.ping)
    client.flushdb()
    client.close()
    return REDIS_URL


@pytest.fixture
def amqp_url() -> str:
    import pika

    def probe() -> None:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL + "?socket_timeout=2"))
        channel = connection.channel()
        for queue in ("sms", "email", "phone", "webhook"):
            channel.queue_delete(queue=queue)
            channel.queue_delete(queue=f"{queue}.DQ")
            channel.queue_delete(queue=f"{queue}.XQ")
        connection.close()

    _require("RabbitMQ", AMQP_URL, probe)
    return AMQP_URL
