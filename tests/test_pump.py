"""The pump: due rows move once, even with several pumps at the same time (PostgreSQL SKIP LOCKED,
SQLite's exclusive writer); rows not due, or of channels without a backend, stay in the ledger."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.pump import pump_once, pump_until_drained
from orchestrator.settings import load_settings
from orchestrator.storage.engine import connect, write_transaction
from orchestrator.storage.schema import deliveries, runs
from tests.planner_fixtures import make_workspace

NOW = 1_800_000_000


def fill(engine: sa.Engine, count: int, *, channel: str = "sms", send_at: int = NOW - 10) -> None:
    with write_transaction(engine) as conn:
        fire_at = send_at + conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar_one()
        run_id = conn.execute(runs.insert().returning(runs.c.id), {"campaign": "c", "fire_at": fire_at,
                              "status": "planned", "started_at": NOW}).scalar_one()
        conn.execute(deliveries.insert(), [
            {"run_id": run_id, "campaign": "c", "customer_id": f"C{i}", "channel": channel, "category": "promo",
             "status": "planned", "send_at": send_at, "expires_at": NOW + 86400, "attempts": 0,
             "created_at": NOW, "updated_at": NOW} for i in range(count)])


def settings_for(tmp_path: Path, url: str, batch: int = 500, extra: str = ""):  # type: ignore[no-untyped-def]
    path = make_workspace(tmp_path, url)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f"\n[dispatch]\npump_batch = {batch}\nmessage_batch = 40\n{extra}\n")
    return load_settings(path)


def queued(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).where(deliveries.c.status == "queued")).scalar_one()


def test_concurrent_pumps_move_every_row_exactly_once(tmp_path: Path, db_url: str) -> None:
    settings = settings_for(tmp_path, db_url, batch=300)
    engine = connect(db_url)
    fill(engine, 3000)
    seen: list[int] = []
    lock = threading.Lock()

    def enqueue(channel: str, ids: list[int]) -> None:
        assert channel == "sms" and len(ids) <= 40
        with lock:
            seen.extend(ids)

    def pump() -> None:
        own = connect(db_url, migrate=False)
        for _ in range(30):
            pump_once(own, settings, enqueue, NOW, ["sms"])
            time.sleep(0.001)
        own.dispose()

    threads = [threading.Thread(target=pump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = Counter(seen)
    assert len(counts) == 3000 and set(counts.values()) == {1}
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(deliveries.c.status == "queued")).scalar() == 3000


def test_only_due_rows_of_configured_channels_move(tmp_path: Path, db_url: str) -> None:
    settings = settings_for(tmp_path, db_url)
    engine = connect(db_url)
    fill(engine, 5)
    fill(engine, 5, send_at=NOW + 3600)
    fill(engine, 5, channel="webhook")
    moved: list[int] = []
    result = pump_until_drained(engine, settings, lambda channel, ids: moved.extend(ids), NOW, ["sms"])
    assert result.moved == 5 and len(moved) == 5
    with engine.connect() as conn:
        states = Counter(conn.execute(sa.select(deliveries.c.channel, deliveries.c.status)).all())
    assert states == Counter({("sms", "queued"): 5, ("sms", "planned"): 5, ("webhook", "planned"): 5})


def test_rows_past_their_window_expire_instead_of_going_out(tmp_path: Path, db_url: str) -> None:
    settings = settings_for(tmp_path, db_url)
    engine = connect(db_url)
    fill(engine, 3)
    moved: list[int] = []
    result = pump_once(engine, settings, lambda channel, ids: moved.extend(ids), NOW + 86400, ["sms"])
    assert result.expired == 3 and moved == []
    with engine.connect() as conn:
        assert set(conn.execute(sa.select(deliveries.c.status, deliveries.c.reason)).all()) == {("suppressed", "expired")}


def test_a_backlog_waits_in_the_ledger_beyond_max_queued(tmp_path: Path, db_url: str) -> None:
    settings = settings_for(tmp_path, db_url, extra="max_queued = 1200")
    engine = connect(db_url)
    fill(engine, 3000)
    moved: list[int] = []
    result = pump_until_drained(engine, settings, lambda channel, ids: moved.extend(ids), NOW, ["sms"])
    assert result.moved == 1200 == len(moved) == queued(engine)
    with write_transaction(engine) as conn:  # workers take 1000 of them
        conn.execute(deliveries.update().where(deliveries.c.id.in_(moved[:1000])).values(status="sent"))
    result = pump_until_drained(engine, settings, lambda channel, ids: moved.extend(ids), NOW, ["sms"])
    assert result.moved == 1000 and queued(engine) == 1200 and len(set(moved)) == 2200


def test_a_rate_limited_channel_queues_what_its_rate_sends_in_half_the_requeue_time(tmp_path: Path, db_url: str) -> None:
    """2/s for half of 2 minutes: 120 rows in the broker at most, so that none waits there long
    enough to be enqueued twice (a duplicate would take a rate slot from a real send)."""
    settings = settings_for(tmp_path, db_url, extra='requeue_after = "2m"\n[channels.sms]\nbackend = '
                                                   '"channels.outbox.Memory"\nrate = "2/s"')
    engine = connect(db_url)
    fill(engine, 3000)
    result = pump_until_drained(engine, settings, lambda channel, ids: None, NOW, ["sms"])
    assert result.moved == 120 == queued(engine)


@pytest.mark.postgres
def test_the_expiry_sweep_reads_its_own_index(pg_url: str) -> None:
    """A backlog of due rows must not make every pump pass scan the ledger for expired ones."""
    engine = connect(pg_url)
    fill(engine, 20_000)
    sweep = sa.select(deliveries.c.id).where(deliveries.c.status == "planned", deliveries.c.expires_at <= NOW)
    with engine.connect() as conn:
        conn.execute(sa.text("ANALYZE deliveries"))
        sql = str(sweep.compile(conn, compile_kwargs={"literal_binds": True}))
        plan = " ".join(conn.execute(sa.text("EXPLAIN " + sql)).scalars())
    engine.dispose()
    assert "ix_deliveries_expiry" in plan
