"""The pump: due rows move once, even with several pumps at the same time (PostgreSQL SKIP LOCKED,
SQLite's exclusive writer); rows not due, or of channels without a backend, stay in the ledger."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

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


def settings_for(tmp_path: Path, url: str, batch: int = 500):  # type: ignore[no-untyped-def]
    path = make_workspace(tmp_path, url)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f"\n[dispatch]\npump_batch = {batch}\nmessage_batch = 40\n")
    return load_settings(path)


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
