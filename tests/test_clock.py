"""The shared clock: a process whose machine's clock is off runs on the database's time."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from orchestrator.clock import SharedClock
from orchestrator.storage.engine import connect


@pytest.mark.postgres
@pytest.mark.parametrize("off", [300.0, -90.0])
def test_a_clock_off_by_minutes_runs_on_the_databases_time(pg_url: str, off: float,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    engine = connect(pg_url)
    wrong = lambda: time.time() + off  # noqa: E731 - the machine's clock, off by `off`
    with caplog.at_level(logging.WARNING, logger="orchestrator.clock"):
        clock = SharedClock(engine, wrong, real=wrong)
        assert abs(clock() - time.time()) < 1.0
    assert abs(clock.skew() - off) < 1.0
    assert any("off the database's" in record.getMessage() for record in caplog.records)
    engine.dispose()


@pytest.mark.postgres
def test_a_clock_within_the_tolerance_is_left_alone(pg_url: str) -> None:
    engine = connect(pg_url)
    virtual = lambda: 1_800_000_000.0  # noqa: E731 - a demo's virtual clock, on a machine in step
    clock = SharedClock(engine, virtual)
    assert clock() == 1_800_000_000.0 and clock.skew() == 0.0
    engine.dispose()


def test_sqlite_has_no_other_clock(tmp_path: Path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'db.sqlite'}")
    clock = SharedClock(engine, lambda: 5.0, real=lambda: time.time() + 3600)
    assert clock() == 5.0


@pytest.mark.postgres
def test_an_unreachable_database_keeps_the_last_figure(pg_url: str) -> None:
    engine = connect(pg_url)
    wrong = lambda: time.time() + 120  # noqa: E731
    clock = SharedClock(engine, wrong, real=wrong, refresh=0.0)
    assert abs(clock.skew() - 120) < 1.0
    engine.dispose()
    clock.engine = _unreachable(pg_url)
    assert abs(clock.skew() - 120) < 1.0


def _unreachable(pg_url: str):  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    url = sa.engine.make_url(pg_url.replace("postgresql://", "postgresql+psycopg://")).set(port=1)
    return sa.create_engine(url, connect_args={"connect_timeout": 1})


@pytest.mark.postgres
def test_a_clock_that_steps_is_measured_again_at_once(pg_url: str) -> None:
    engine = connect(pg_url)
    offset = [0.0]
    machine = lambda: time.time() + offset[0]  # noqa: E731
    clock = SharedClock(engine, machine, real=machine, refresh=3600)
    assert clock.skew() == 0.0
    offset[0] = 300.0
    assert abs(clock() - time.time()) < 1.0
    engine.dispose()
