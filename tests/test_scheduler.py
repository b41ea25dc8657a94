"""The scheduler: fire times across DST, catch-up within and beyond the grace, two schedulers firing
the same run (SQLite and PostgreSQL), reload of campaign files, periodic jobs and failing jobs.

No test waits for a real schedule: "now" is a clock the test controls, campaign jobs are run by
calling their body (`run_job`), and the few end-to-end runs use an `at:` two seconds ahead or a
catch-up that APScheduler runs at once.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from orchestrator.campaigns import CampaignFile, fire_times
from orchestrator.errors import CampaignError
from orchestrator.scheduler import (
    CampaignScheduler, catch_up_action, diff_files, plan_for_real,
)
from orchestrator.settings import Settings, load_settings
from orchestrator.storage.engine import connect
from orchestrator.storage.schema import deliveries, runs
from tests.planner_fixtures import customer, insert_customers, make_workspace, write_campaign

UTC = timezone.utc
MONDAY_10_MSK = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)   # fire time of "0 10 * * MON" in Moscow
LOGGER = "orchestrator.scheduler"


# --- helpers -------------------------------------------------------------------------------------


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Recorder:
    """A fire that records (campaign, fire time) and optionally delegates to the real planner."""

    def __init__(self, delegate: Callable[[CampaignFile, datetime], Any] | None = None) -> None:
        self.calls: list[tuple[str, datetime]] = []
        self.results: list[Any] = []
        self.delegate = delegate
        self._lock = threading.Lock()

    def __call__(self, file: CampaignFile, fire_at: datetime) -> Any:
        result = self.delegate(file, fire_at) if self.delegate else None
        with self._lock:
            self.calls.append((file.campaign.name, fire_at))
            self.results.append(result)
        return result


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def workspace(tmp_path: Path, url: str, *, grace: str = "1h", reload_interval: str = "1h") -> Settings:
    """A planner workspace (tests/planner_fixtures) with the scheduler's settings; no campaigns."""
    path = make_workspace(tmp_path / "ws", url)
    with path.open("a", encoding="utf-8") as out:
        out.write(f'\n[scheduler]\nmisfire_grace = "{grace}"\nreload_interval = "{reload_interval}"\n')
    return load_settings(path, environ={})


def weekly(settings: Settings, name: str = "weekly", cron: str = "0 10 * * MON", **fields: Any) -> Path:
    return write_campaign(settings.root, name, schedule={"cron": cron}, **fields)


@pytest.fixture
def scheds() -> Any:
    """Schedulers made by a test, shut down afterwards whatever happens."""
    made: list[CampaignScheduler] = []

    def make(*args: Any, **kwargs: Any) -> CampaignScheduler:
        made.append(CampaignScheduler(*args, **kwargs))
        return made[-1]

    yield make
    for sched in made:
        sched.shutdown(wait=True)


def run_rows(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(sa.select(runs).order_by(runs.c.id)).all()


def ledger_keys(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(deliveries.c.run_id, deliveries.c.customer_id, deliveries.c.channel, deliveries.c.status))]


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


# --- pure decisions ------------------------------------------------------------------------------


@pytest.mark.parametrize(("late", "status", "expected"), [
    (timedelta(minutes=20), None, "fire"),
    (timedelta(hours=1), None, "fire"),                 # exactly the grace: still fired
    (timedelta(hours=1, seconds=1), None, "skip"),
    (timedelta(minutes=20), "planned", "done"),
    (timedelta(days=30), "planned", "done"),
    (timedelta(minutes=20), "planning", "fire"),         # interrupted run: resumed
    (timedelta(hours=2), "planning", "skip"),
])
def test_catch_up_action(late: timedelta, status: str | None, expected: str) -> None:
    assert catch_up_action(MONDAY_10_MSK, MONDAY_10_MSK + late, 3600, status) == expected
    assert catch_up_action(None, MONDAY_10_MSK, 3600, None) == "none"


def test_diff_files() -> None:
    a, b, c = Path("a.yaml"), Path("b.yaml"), Path("c.yaml")
    changes = diff_files({a: "1", b: "2"}, {b: "3", c: "4"})
    assert (changes.added, changes.changed, changes.removed) == ((c,), (b,), (a,))
    assert not diff_files({a: "1"}, {a: "1"})


# --- fire times ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cron", "zone", "start", "expected"), [
    # New York springs forward on 8 March 2026: 09:00 EST is 14:00 UTC, 09:00 EDT 13:00 UTC.
    ("0 9 * * *", "America/New_York", datetime(2026, 3, 6, 12, tzinfo=UTC),
     ["2026-03-06T14:00", "2026-03-07T14:00", "2026-03-08T13:00", "2026-03-09T13:00"]),
    # ... and falls back on 1 November.
    ("0 9 * * *", "America/New_York", datetime(2026, 10, 30, 12, tzinfo=UTC),
     ["2026-10-30T13:00", "2026-10-31T13:00", "2026-11-01T14:00", "2026-11-02T14:00"]),
    # London, 29 March 2026: 01:30 does not exist; APScheduler moves it forward (02:30 BST = 01:30 UTC).
    ("30 1 * * *", "Europe/London", datetime(2026, 3, 27, tzinfo=UTC),
     ["2026-03-27T01:30", "2026-03-28T01:30", "2026-03-29T01:30", "2026-03-30T00:30"]),
])
def test_cron_job_fires_with_the_right_fire_time_across_dst(
    tmp_path: Path, scheds: Any, cron: str, zone: str, start: datetime, expected: list[str],
) -> None:
    settings = workspace(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    write_campaign(settings.root, "dst", schedule={"cron": cron, "timezone": zone})
    clock, fired = Clock(start), Recorder()
    sched = scheds(settings, connect(settings.database_url), fire=fired, clock=clock)
    sched.start()
    job = sched.job("dst")
    assert job is not None and job.trigger.timezone == ZoneInfo(zone)

    # The job's own trigger, walked the way APScheduler walks it (previous fire time in the zone).
    previous, now, scheduled = None, start, []
    for _ in expected:
        moment = job.trigger.get_next_fire_time(previous, now)
        scheduled.append(moment)
        previous = now = moment
    # (In UTC: Python never finds a local time inside a DST gap equal to an instant of another zone.)
    scheduled = [m.astimezone(UTC) for m in scheduled]
    assert [m.strftime("%Y-%m-%dT%H:%M") for m in scheduled] == expected
    # ... the same instants `run`, `simulate` and `next_fire_time` compute.
    campaign = sched.campaign("dst").campaign
    assert list(fire_times(campaign, "Europe/Moscow", start, scheduled[-1] + timedelta(seconds=1))) == scheduled

    # Each time APScheduler would run the job (a little late, as it does), it fires that run.
    for moment in scheduled:
        clock.now = moment + timedelta(seconds=3)
        assert sched.run_job("dst") == moment
    assert fired.calls == [("dst", m) for m in scheduled]
    assert all(m.tzinfo is not None for _, m in fired.calls)


def test_campaign_job_options(tmp_path: Path, scheds: Any) -> None:
    settings = workspace(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", grace="2h")
    weekly(settings)
    write_campaign(settings.root, "manual")                                     # no schedule
    write_campaign(settings.root, "birthday", schedule={"trigger": "birthday", "time": "09:30"})
    sched = scheds(settings, connect(settings.database_url), fire=Recorder())
    sched.start()
    job = sched.job("weekly")
    assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 7200)
    assert job.next_run_time.astimezone(ZoneInfo("Europe/Moscow")).strftime("%a %H:%M") == "Mon 10:00"
    assert sched.job("manual") is None and "manual" in sched.campaigns()
    local = sched.job("birthday").next_run_time.astimezone(ZoneInfo("Europe/Moscow"))
    assert local.strftime("%H:%M") == "09:30"


# --- catch-up -----------------------------------------------------------------------------------------


def test_catch_up_within_grace_fires_late_exactly_once(tmp_path: Path, db_url: str, scheds: Any,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    settings = workspace(tmp_path, db_url)
    weekly(settings)
    engine = connect(db_url)
    insert_customers(engine, [customer(f"C{i}") for i in range(4)])
    fired = Recorder(plan_for_real(settings, engine))
    clock = Clock(MONDAY_10_MSK + timedelta(minutes=20))   # the scheduler was down at 10:00

    first = scheds(settings, engine, fire=fired, clock=clock)
    first.start()
    assert [(c.campaign, c.fire_at, c.action) for c in first.catch_ups] == [("weekly", MONDAY_10_MSK, "fire")]
    assert wait_for(lambda: len(fired.calls) == 1)
    first.shutdown(wait=True)
    assert fired.calls == [("weekly", MONDAY_10_MSK)]
    assert [(r.campaign, r.fire_at, r.status) for r in run_rows(engine)] == [
        ("weekly", int(MONDAY_10_MSK.timestamp()), "planned")]
    assert len(ledger_keys(engine)) == 4
    assert any("weekly" in m and "2026-11-23T07:00:00Z" in m and "20m" in m for m in messages(caplog, logging.WARNING))

    # A restart ten minutes later: the run is in `runs`, nothing is fired again.
    clock.now += timedelta(minutes=10)
    second = scheds(settings, engine, fire=fired, clock=clock)
    second.start()
    assert [(c.campaign, c.action) for c in second.catch_ups] == [("weekly", "done")]
    time.sleep(0.3)
    assert fired.calls == [("weekly", MONDAY_10_MSK)]
    assert len(run_rows(engine)) == 1 and len(ledger_keys(engine)) == 4
    engine.dispose()


def test_catch_up_beyond_grace_is_skipped_and_logged(tmp_path: Path, scheds: Any,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    settings = workspace(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    weekly(settings)
    write_campaign(settings.root, "black-friday", schedule={"at": "2026-11-20T10:00"})   # long past
    write_campaign(settings.root, "new-year", schedule={"at": "2026-12-30T10:00"})       # ahead
    engine = connect(settings.database_url)
    fired = Recorder()
    clock = Clock(MONDAY_10_MSK + timedelta(hours=3))
    sched = scheds(settings, engine, fire=fired, clock=clock)
    sched.start()
    assert sorted((c.campaign, c.action) for c in sched.catch_ups) == [
        ("black-friday", "skip"), ("new-year", "none"), ("weekly", "skip")]
    time.sleep(0.3)
    assert fired.calls == [] and run_rows(engine) == []
    warnings = messages(caplog, logging.WARNING)
    assert any("campaign weekly" in m and "2026-11-23T07:00:00Z" in m and "skipped" in m and "3h 00m" in m
               for m in warnings), warnings
    assert any("campaign black-friday" in m and "2026-11-20T07:00:00Z" in m and "skipped" in m for m in warnings)
    # The past `at` is done with: no job, never fired again; the future one waits for its moment.
    assert sched.job("black-friday") is None
    assert sched.job("new-year").next_run_time == datetime(2026, 12, 30, 7, tzinfo=UTC)
    # Its job body agrees: past the grace, nothing is fired even if it runs.
    assert sched.run_job("weekly") is None and fired.calls == []
    engine.dispose()


# --- two schedulers, one run ---------------------------------------------------------------------------


def _assert_one_run(engine: sa.Engine, customers: int) -> None:
    rows = run_rows(engine)
    assert len(rows) == 1 and rows[0].status == "planned"
    keys = ledger_keys(engine)
    assert len(keys) == customers
    assert len({(customer_id, channel) for _, customer_id, channel, _ in keys}) == customers
    assert {run_id for run_id, *_ in keys} == {rows[0].id}


def test_two_schedulers_firing_the_same_run_at_once_plan_it_once(tmp_path: Path, db_url: str, scheds: Any) -> None:
    settings = workspace(tmp_path, db_url)
    weekly(settings, channels=["sms", "email"], channel_mode="all")
    setup_engine = connect(db_url)
    insert_customers(setup_engine, [customer(f"C{i:03d}") for i in range(60)])
    clock = Clock(MONDAY_10_MSK + timedelta(seconds=2))
    # Two instances, each with its own engine (its own connections), as two processes would have.
    instances = []
    for _ in range(2):
        engine = connect(db_url)
        recorder = Recorder(plan_for_real(settings, engine))
        instances.append((scheds(settings, engine, fire=recorder, clock=clock), recorder, engine))
    for sched, _, _ in instances:
        sched.reload()                        # campaigns loaded; APScheduler itself not needed
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def fire(sched: CampaignScheduler) -> None:
        try:
            barrier.wait()
            sched.run_job("weekly")
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=fire, args=(sched,)) for sched, _, _ in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    summaries = [recorder.results[0] for _, recorder, _ in instances]
    assert [s.fire_at for s in summaries] == [MONDAY_10_MSK, MONDAY_10_MSK]
    assert summaries[0].run_id == summaries[1].run_id
    _assert_one_run(setup_engine, 120)
    for _, _, engine in instances:
        engine.dispose()
    setup_engine.dispose()


def test_two_running_schedulers_fire_an_at_campaign_once(tmp_path: Path, db_url: str, scheds: Any) -> None:
    """End to end, on APScheduler's own clock: an `at:` two seconds ahead, two schedulers."""
    settings = workspace(tmp_path, db_url)
    moment = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    write_campaign(settings.root, "flash", schedule={"at": moment.isoformat()})
    setup_engine = connect(db_url)
    insert_customers(setup_engine, [customer(f"C{i}") for i in range(10)])
    recorders = []
    for _ in range(2):
        engine = connect(db_url)
        recorders.append(Recorder(plan_for_real(settings, engine)))
        scheds(settings, engine, fire=recorders[-1]).start()
    assert wait_for(lambda: all(r.calls for r in recorders))
    assert [r.calls for r in recorders] == [[("flash", moment)], [("flash", moment)]]
    _assert_one_run(setup_engine, 10)
    setup_engine.dispose()


# --- reload -------------------------------------------------------------------------------------------


def test_reload_adds_replaces_removes_and_survives_a_broken_file(tmp_path: Path, scheds: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    settings = workspace(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    moscow = ZoneInfo("Europe/Moscow")
    daily = write_campaign(settings.root, "daily", schedule={"cron": "0 10 * * *"})
    fired = Recorder()
    sched = scheds(settings, connect(settings.database_url), fire=fired)
    sched.start()
    assert sched.job("daily").next_run_time.astimezone(moscow).strftime("%H:%M") == "10:00"
    assert not sched.reload()                                   # nothing changed
    daily.write_text(daily.read_text(encoding="utf-8"), encoding="utf-8")
    assert not sched.reload()                                   # rewritten, same content

    # A new campaign gets a job.
    write_campaign(settings.root, "extra", schedule={"cron": "15 12 * * *"})
    changes = sched.reload()
    assert [p.name for p in changes.added] == ["extra.yaml"]
    assert sched.job("extra").next_run_time.astimezone(moscow).strftime("%H:%M") == "12:15"

    # A changed cron replaces the job (same size on purpose: content decides, not mtime or size).
    write_campaign(settings.root, "daily", schedule={"cron": "0 11 * * *"})
    assert [p.name for p in sched.reload().changed] == ["daily.yaml"]
    assert sched.job("daily").next_run_time.astimezone(moscow).strftime("%H:%M") == "11:00"

    # A deleted file loses its job.
    (settings.root / "campaigns" / "extra.yaml").unlink()
    assert [p.name for p in sched.reload().removed] == ["extra.yaml"]
    assert sched.job("extra") is None and "extra" not in sched.campaigns()

    # Broken YAML: one error naming file and line; the previous version stays scheduled and fires.
    daily.write_text("name: daily\nsegment: everyone\ncategory: promo\nchannels: [sms\ntemplate: hello\n", encoding="utf-8")
    sched.reload()
    sched.reload()                                               # reported once, not every interval
    errors = messages(caplog, logging.ERROR)
    assert len(errors) == 1 and f"{daily}:5" in errors[0] and "not valid YAML" in errors[0], errors
    assert "previous version stays scheduled" in errors[0]
    assert sched.job("daily").next_run_time.astimezone(moscow).strftime("%H:%M") == "11:00"
    assert sched.campaign("daily").campaign.schedule.cron == "0 11 * * *"

    # Valid YAML, invalid campaign: the CampaignError's file:line and field.
    caplog.clear()
    daily.write_text("name: daily\nsegment: everyone\ncategory: promo\nchannels: [sms]\ntemplate: hello\n"
                     "schedule:\n  cron: '0 25 * * *'\n", encoding="utf-8")
    sched.reload()
    errors = messages(caplog, logging.ERROR)
    assert len(errors) == 1 and f"{daily}:7: schedule.cron:" in errors[0], errors
    with pytest.raises(CampaignError):                      # the same message `validate` prints
        from orchestrator.campaigns import load_campaign
        load_campaign(daily)

    # A new file that never loaded is simply not scheduled; fixing a file brings it back.
    broken = settings.root / "campaigns" / "late.yaml"
    broken.write_text("name: other-name\nsegment: everyone\ncategory: promo\nchannels: [sms]\ntemplate: hello\n", encoding="utf-8")
    sched.reload()
    assert sched.job("late") is None and sched.job("other-name") is None
    write_campaign(settings.root, "daily", schedule={"cron": "30 9 * * *"})
    sched.reload()
    assert sched.job("daily").next_run_time.astimezone(moscow).strftime("%H:%M") == "09:30"
    assert sched.running and fired.calls == []


def test_reload_runs_on_its_own_interval(tmp_path: Path, scheds: Any) -> None:
    settings = workspace(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", reload_interval="1s")
    sched = scheds(settings, connect(settings.database_url), fire=Recorder())
    sched.start()
    assert sched.campaigns() == {}
    weekly(settings)
    assert wait_for(lambda: sched.job("weekly") is not None, seconds=5)


# --- periodic jobs, failures, run_until ----------------------------------------------------------------


def test_periodic_job_runs_and_failures_do_not_stop_the_scheduler(tmp_path: Path, scheds: Any,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    settings = workspace(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    weekly(settings)
    calls = {"pump": 0, "flaky": 0}

    def pump() -> None:
        calls["pump"] += 1

    def flaky() -> None:
        calls["flaky"] += 1
        raise RuntimeError("broker unreachable")

    def broken_fire(file: CampaignFile, fire_at: datetime) -> None:
        raise CampaignError("segment 'gone' not found", file=file.file, line=2, field="segment")

    clock = Clock(MONDAY_10_MSK + timedelta(minutes=5))     # the catch-up fires at once, and fails
    sched = scheds(settings, connect(settings.database_url), fire=broken_fire, clock=clock,
                   periodic=[("pump", 0.05, pump), ("flaky", 0.05, flaky)])
    sched.start()
    assert wait_for(lambda: calls["flaky"] >= 3 and calls["pump"] >= 3)
    assert sched.running
    errors = messages(caplog, logging.ERROR)
    assert any("periodic job flaky failed" in m for m in errors), errors
    assert any(m.startswith("campaign weekly: ") and "weekly.yaml:2: segment: segment 'gone' not found" in m
               for m in errors), errors
    flaky_errors = [r for r in caplog.records if "periodic job flaky failed" in r.getMessage()]
    assert flaky_errors[0].exc_info is not None                    # an unexpected error keeps its traceback
    # The failed campaign job is still there for its next fire time.
    assert sched.job("weekly") is not None


def test_run_until_stops_when_told(tmp_path: Path) -> None:
    settings = workspace(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    ticks: list[float] = []
    sched = CampaignScheduler(settings, connect(settings.database_url), fire=Recorder(),
                              periodic=[("tick", 0.05, lambda: ticks.append(time.monotonic()))])
    stop = threading.Event()
    runner = threading.Thread(target=sched.run_until, args=(stop,), kwargs={"poll_seconds": 0.05})
    runner.start()
    assert wait_for(lambda: len(ticks) >= 2)
    stop.set()
    runner.join(10)
    assert not runner.is_alive() and not sched.running


def test_job_fire_time_in_the_repeated_autumn_hour_is_computed() -> None:
    """Berlin 02:30 exists twice on 25 October 2026 (00:30 and 01:30 UTC).  Run in a child process
    with a memory limit: the bug is an endless loop that grows a list."""
    import subprocess
    import sys

    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from datetime import datetime, timezone\n"
        "from orchestrator.campaigns import Campaign, latest_fire_time\n"
        "c = Campaign.model_validate({'name': 'c', 'segment': 's', 'category': 'promo', 'channels': ['sms'],"
        " 'template': 't', 'schedule': {'cron': '30 2 * * *', 'timezone': 'Europe/Berlin'}})\n"
        "print(latest_fire_time(c, 'UTC', datetime(2026, 10, 25, 12, tzinfo=timezone.utc)).isoformat())\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        pytest.fail("latest_fire_time did not return within 5 s")
    assert done.stdout.strip() == "2026-10-25T00:30:00+00:00", done.stderr  # the first 02:30 only


# --- a machine whose clock runs ahead ----------------------------------------------------------


def test_a_job_woken_early_by_a_clock_ahead_waits_for_its_fire_time(tmp_path: Path, scheds: Any) -> None:
    """APScheduler follows the machine's clock; `clock` is the database's time, two seconds behind."""
    settings = workspace(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    weekly(settings)
    recorder = Recorder()
    sched = scheds(settings, connect(settings.database_url), fire=recorder,
                   clock=Clock(MONDAY_10_MSK - timedelta(seconds=2)), skew=lambda: 2.0)
    sched.reload()
    started = time.monotonic()
    assert sched.run_job("weekly") == MONDAY_10_MSK
    assert recorder.calls == [("weekly", MONDAY_10_MSK)]
    assert time.monotonic() - started >= 1.9


def test_a_clock_in_step_fires_the_latest_run_at_once(tmp_path: Path, scheds: Any) -> None:
    settings = workspace(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    weekly(settings)
    recorder = Recorder()
    sched = scheds(settings, connect(settings.database_url), fire=recorder,
                   clock=Clock(MONDAY_10_MSK + timedelta(minutes=1)), skew=lambda: 30.0)
    sched.reload()
    assert sched.run_job("weekly") == MONDAY_10_MSK
    assert recorder.calls == [("weekly", MONDAY_10_MSK)]
