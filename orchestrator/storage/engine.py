"""Engines for SQLite (WAL, immediate write transactions) and PostgreSQL, and schema migrations."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from orchestrator.errors import StorageError
from orchestrator.storage import schema


def normalize_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (the only PostgreSQL driver we depend on)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_engine(url: str) -> Engine:
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and ":memory:" not in path and not path.startswith("file:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Take transaction control from the sqlite3 module so that writers can BEGIN IMMEDIATE
        # (a deferred transaction that upgrades to a write fails instead of waiting).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        # 64 MiB of page cache (the default is 2 MiB): ledger indexes of a million rows stay in
        # memory while a run writes, which keeps the insert rate flat as the ledger grows.
        cursor.execute("PRAGMA cache_size=-65536")
        # Checkpoint every 40 MB of WAL rather than 4 MB: index pages that a run rewrites many
        # times reach the database file once per checkpoint.
        cursor.execute("PRAGMA wal_autocheckpoint=10000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def connect(url: str, *, migrate: bool = True, pre_ping: bool = True) -> Engine:
    """An engine for `url`, its schema brought up to date (or checked, with migrate=False).

    pre_ping=False for the workers' hot path: a ping per transaction costs a round trip, and a
    transaction that meets a dead connection fails, invalidates the pool and is retried safely
    (its rows stay queued until the pump enqueues them again).
    """
    url = normalize_url(url)
    try:
        engine = _sqlite_engine(url) if url.startswith("sqlite") else sa.create_engine(
            url, pool_pre_ping=pre_ping, pool_size=10, max_overflow=20
        )
        if migrate:
            upgrade(engine)
    except sa.exc.OperationalError as error:
        raise StorageError(f"cannot open the database {shown_url(url)!r}: {error.orig}") from None
    except sa.exc.ArgumentError as error:
        raise StorageError(f"the database url {shown_url(url)!r} is not usable: {error}") from None
    return engine


def shown_url(url: str) -> str:
    """The database url as it may be printed: the password (`user:pass@host`) replaced by `***`.

    Error messages reach the terminal and the logs; the password in `[database] url` (or
    ORCHESTRATOR_DATABASE_URL) must not."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return re.sub(r"(//[^/:@]*:)[^/]*@", r"\1***@", url)


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that intends to write: on SQLite it takes the write lock up front."""
    if is_sqlite(engine):
        with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn:
            with conn.begin():
                yield conn
    else:
        with engine.begin() as conn:
            yield conn


def refresh_statistics(engine: Engine, *tables: str) -> None:
    """After a bulk load, give PostgreSQL's planner the tables' statistics at once rather than
    when autovacuum next wakes: without them it guesses a segment matches a few hundred
    customers and sorts all of them for every page of a run (100 ms a page instead of 3 ms at
    200,000 customers).  SQLite's planner does not use statistics unless told to, and ours are
    tuned for that; nothing to do there."""
    if is_sqlite(engine) or not tables:
        return
    with engine.begin() as conn:
        conn.exec_driver_sql(f"ANALYZE {', '.join(tables)}")


# --- migrations -----------------------------------------------------------------------------

def _v1(conn: Connection) -> None:
    later = {"call_tasks", "users"}  # created by their own migrations below
    tables = [table for table in schema.metadata.sorted_tables if table.name not in later]
    schema.metadata.create_all(conn, tables=tables)


def _v2(conn: Connection) -> None:
    """Call tasks for managers (the phone channel)."""
    schema.call_tasks.create(conn, checkfirst=True)


def _v3(conn: Connection) -> None:
    """Users of the web app (marketers and managers); the index of the SMS status hook."""
    schema.users.create(conn, checkfirst=True)
    schema.deliveries_provider_index.create(conn, checkfirst=True)


def _v4(conn: Connection) -> None:
    """Call tasks keep their outcome history in a column of its own."""
    if "history" not in {column["name"] for column in sa.inspect(conn).get_columns("call_tasks")}:
        conn.execute(sa.text("ALTER TABLE call_tasks ADD COLUMN history JSON"))


def _v5(conn: Connection) -> None:
    """Indexes found missing under load: the pump's sweep of expired rows, the STOP hook's phone."""
    schema.deliveries_expiry_index.create(conn, checkfirst=True)
    schema.customers_phone_index.create(conn, checkfirst=True)


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1, 2: _v2, 3: _v3, 4: _v4, 5: _v5}


def current_version(conn: Connection) -> int:
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    value = conn.execute(sa.select(sa.func.max(schema.schema_version.c.version))).scalar()
    return int(value or 0)


def upgrade(engine: Engine) -> int:
    """Apply pending migrations in one write transaction; concurrent callers wait, then skip."""
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(724201)"))
        version = current_version(conn)
        if version > schema.SCHEMA_VERSION:
            raise StorageError(
                f"the database schema is version {version}, newer than this program "
                f"({schema.SCHEMA_VERSION}); upgrade the orchestrator"
            )
        for target in range(version + 1, schema.SCHEMA_VERSION + 1):
            MIGRATIONS[target](conn)
            conn.execute(schema.schema_version.delete())
            conn.execute(schema.schema_version.insert().values(version=target))
        return schema.SCHEMA_VERSION

