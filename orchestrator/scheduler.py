"""The scheduler (SPEC 6, SPEC 10 `scheduler` and `up`): fires every scheduled campaign's runs.

APScheduler 3 does the timing; this module decides *what* a job means, because APScheduler alone
gets three things wrong for us (see docs/STACK-NOTES: APScheduler pitfalls):

* its memory job store forgets a fire time missed while the process was down, and its
  `misfire_grace_time` defaults to one second: `start()` therefore catches up on the latest fire
  time of every campaign itself, against the `runs` table, within `[scheduler] misfire_grace`;
* it has no leader: two schedulers both fire every job.  Nothing here tries to elect one — the run
  identity (campaign + scheduled fire time, unique in `runs`, and the ledger's unique key) makes the
  second firing plan nothing;
* it does not tell a job the run time it was scheduled for.  The job recomputes it as
  `latest_fire_time(campaign, zone, now)` — exactly what `run CAMPAIGN` by hand computes, from the
  very same trigger — so a scheduled run and a manual one in the same period are the same run.

Campaign files are re-read every `reload_interval`; a file that stops validating keeps its previous
version scheduled and is reported once (file:line), so a typo in one campaign never stops the others.
The pure decisions (`catch_up_action`, `diff_files`) are separate from the APScheduler glue.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.job import Job
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.engine import Engine

from orchestrator.campaigns import (
    CampaignFile, at_instant, campaign_files, latest_fire_time, load_campaign, schedule_trigger,
)
from orchestrator.errors import OrchestratorError
from orchestrator.settings import Settings
from orchestrator.storage.schema import runs

UTC = timezone.utc
log = logging.getLogger(__name__)

Fire = Callable[[CampaignFile, datetime], Any]
Clock = Callable[[], datetime]
Periodic = tuple[str, float, Callable[[], Any]]
Action = Literal["fire", "skip", "done", "none"]

CAMPAIGN_JOB = "campaign:"
PERIODIC_JOB = "periodic:"
RELOAD_JOB = "reload-campaigns"


# --- pure decisions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatchUp:
    """What `start()` decided about one campaign's latest fire time (kept for logs and tests)."""

    campaign: str
    fire_at: datetime | None
    action: Action
    status: str | None = None     # the run's status in `runs`, None when there is no such run


def catch_up_action(fire_at: datetime | None, now: datetime, grace_seconds: float, status: str | None) -> Action:
    """The fate of a campaign's latest fire time at start.

    `planned`: the run happened (here or in another scheduler) → done.  Otherwise (no run, or a run
    interrupted while `planning`) it is fired late when at most `grace_seconds` old, else skipped:
    a weekly promo planned a day late would reach people at a moment nobody chose.
    """
    if fire_at is None:
        return "none"
    if status == "planned":
        return "done"
    if (now - fire_at).total_seconds() > grace_seconds:
        return "skip"
    return "fire"


@dataclass(frozen=True)
class FileChanges:
    added: tuple[Path, ...] = ()
    changed: tuple[Path, ...] = ()
    removed: tuple[Path, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def diff_files(known: Mapping[Path, str], current: Mapping[Path, str]) -> FileChanges:
    """Campaign files added, changed (another content digest) and removed since the last look."""
    return FileChanges(
        added=tuple(sorted(p for p in current if p not in known)),
        changed=tuple(sorted(p for p, digest in current.items() if p in known and known[p] != digest)),
        removed=tuple(sorted(p for p in known if p not in current)),
    )


def file_digest(path: Path) -> str:
    """Content, not mtime, decides whether a file changed: an edit within one tick of a coarse
    file-system clock keeps mtime and size, and a mere `touch` is not a change."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def late_by(fire_at: datetime, now: datetime) -> str:
    """`2h 05m` — how late a fire time is, for the marketer's log."""
    seconds = max(0, int((now - fire_at).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the default fire: plan the run for real -----------------------------------------------------


def plan_for_real(settings: Settings, engine: Engine) -> Fire:
    """What a fire does in production: the same planning as `run CAMPAIGN`, then one log line."""
    from orchestrator.planner import plan_run, prepare

    def fire(file: CampaignFile, fire_at: datetime) -> Any:
        prepared = prepare(settings, file, engine=engine)
        summary = plan_run(engine, engine, prepared, fire_at, dry_run=False)
        log.info("%s", describe_summary(summary))
        return summary

    return fire


def describe_summary(summary: Any) -> str:
    record = summary.to_dict()
    if record["already_planned"]:
        return (f"campaign {record['campaign']}: run {record['run']} of {record['fire_at']} was already "
                f"planned: nothing new")
    suppressed = ", ".join(f"{k} {v}" for k, v in sorted(record["suppressed_by_reason"].items()))
    return (f"campaign {record['campaign']}: run {record['run']} of {record['fire_at']} planned: "
            f"{record['targeted']} targeted, {record['planned']} planned, {record['suppressed']} suppressed"
            + (f" ({suppressed})" if suppressed else ""))


def run_status(engine: Engine, campaign: str, fire_at: datetime) -> str | None:
    """The status of the run (campaign, fire time) in `runs`, None when it never started."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(runs.c.status).where(runs.c.campaign == campaign, runs.c.fire_at == int(fire_at.timestamp()))
        ).scalar_one_or_none()


def guarded(what: str, function: Callable[..., Any], *args: Any) -> None:
    """Run a job body; whatever it raises is logged and goes no further, so one bad campaign or a
    failing pump never takes the scheduler down.  Our own errors are one line (they name file and
    line); anything else gets its traceback."""
    try:
        function(*args)
    except OrchestratorError as error:
        log.error("%s: %s", what, error)
    except Exception:
        log.exception("%s failed", what)


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --- the scheduler -------------------------------------------------------------------------------


@dataclass
class _Files:
    """The campaign files as the scheduler knows them; guarded by the scheduler's lock."""

    seen: dict[Path, str] = field(default_factory=dict)             # digest last looked at, valid or not
    loaded: dict[Path, CampaignFile] = field(default_factory=dict)  # last valid version of each file
    names: dict[str, Path] = field(default_factory=dict)            # campaign name → its file


class CampaignScheduler:
    """One job per scheduled campaign, catch-up at start, campaign files reloaded as they change,
    and extra periodic jobs (the dispatch pump) on the same thread pool.

    fire(campaign_file, fire_at): plans the run (default: `plan_for_real`); clock(): the current aware
    UTC moment, injectable so that tests decide what "now" is; periodic: (name, interval seconds,
    callable) jobs run one at a time each, coalesced, first at start.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        fire: Fire | None = None,
        clock: Clock | None = None,
        skew: Callable[[], float] | None = None,
        periodic: Iterable[Periodic] = (),
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.zone: str = settings.general.timezone
        self.grace: int = settings.scheduler.seconds("misfire_grace")
        self.reload_interval: int = settings.scheduler.seconds("reload_interval")
        self.periodic: list[Periodic] = list(periodic)
        self.catch_ups: list[CatchUp] = []
        self._fire = fire or plan_for_real(settings, engine)
        self._clock = clock or _utc_now
        self._skew = skew or (lambda: 0.0)
        self._lock = threading.RLock()
        self._files = _Files()
        self._scheduler = BackgroundScheduler(timezone=ZoneInfo(self.zone))
        self._scheduler.add_listener(self._on_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Load the campaigns, catch up on the runs missed while down, start the timers.

        APScheduler starts paused so that nothing fires before the catch-up has been decided (a job
        due this very second and its catch-up are then one and the same job).
        """
        self._scheduler.start(paused=True)
        try:
            self.reload()
            self.catch_ups = self.catch_up()
            self._add_reload_job()
            for name, interval, function in self.periodic:
                self._add_periodic_job(name, interval, function)
        finally:
            self._scheduler.resume()

    def shutdown(self, wait: bool = True) -> None:
        """Stop the timers; wait=True lets running plans finish (they are resumable anyway)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)

    def run_until(self, stop_event: threading.Event, *, poll_seconds: float = 1.0) -> None:
        """`orchestrator scheduler`: run until stop_event is set (a signal handler sets it).

        The main thread polls instead of blocking forever so that signals reach it promptly.
        """
        self.start()
        try:
            while not stop_event.wait(poll_seconds):
                pass
        finally:
            self.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    # --- what is scheduled ---------------------------------------------------------------------

    def campaigns(self) -> dict[str, CampaignFile]:
        """The version of every campaign the scheduler would fire now, by name."""
        with self._lock:
            return {name: self._files.loaded[path] for name, path in self._files.names.items()}

    def campaign(self, name: str) -> CampaignFile | None:
        with self._lock:
            path = self._files.names.get(name)
            return self._files.loaded.get(path) if path is not None else None

    def job(self, name: str) -> Job | None:
        """The APScheduler job of a campaign (None: unscheduled, or an `at` already done)."""
        return self._scheduler.get_job(CAMPAIGN_JOB + name)

    # --- the campaign job ----------------------------------------------------------------------

    def run_job(self, name: str) -> datetime | None:
        """The body of a campaign's job: the fire time it stands for, fired; returns that time.

        The fire time is the latest one at or before now (APScheduler 3 does not hand the job its
        scheduled run time, and an EVENT_JOB_SUBMITTED listener would race the job it describes).
        A job delayed past the grace — a thread pool busy for an hour — is skipped like any misfire.
        Raises what the fire raises; the APScheduler job wraps this in `guarded`.
        """
        file = self.campaign(name)
        if file is None:
            log.warning("campaign %s: no longer known; its job does nothing", name)
            return None
        now = self._clock()
        fire_at = latest_fire_time(file.campaign, self.zone, now)
        woken_for = self._woken_early_for(file, now, fire_at)
        if woken_for is not None:
            log.warning("campaign %s: this machine's clock runs ahead; the run of %s waits for its time",
                        name, utc_text(woken_for))
            time.sleep((woken_for - now).total_seconds())
            now, fire_at = woken_for, woken_for
        if fire_at is None:
            log.info("campaign %s: no fire time at or before %s yet; nothing to do", name, utc_text(now))
            return None
        if (now - fire_at).total_seconds() > self.grace:
            self._log_skipped(name, fire_at, now)
            return None
        log.info("campaign %s: firing the run of %s", name, utc_text(fire_at))
        self._fire(file, fire_at)
        return fire_at

    def _woken_early_for(self, file: CampaignFile, now: datetime, fire_at: datetime | None) -> datetime | None:
        """The fire time APScheduler woke this job for, when this machine's clock runs ahead of the
        database's (`now` is the database's time) and that time has not come yet."""
        ahead = self._skew()
        if ahead <= 0:
            return None
        woken_for = latest_fire_time(file.campaign, self.zone, now + timedelta(seconds=min(ahead, self.grace)))
        if woken_for is None or woken_for == fire_at or woken_for <= now:
            return None
        return woken_for

    def _job(self, name: str) -> None:
        guarded(f"campaign {name}", self.run_job, name)

    # --- catch-up --------------------------------------------------------------------------------

    def catch_up(self) -> list[CatchUp]:
        """Decide, for every loaded campaign, the fate of its latest fire time (see
        `catch_up_action`); a run to fire late becomes its own job's next run, now."""
        now = self._clock()
        decisions: list[CatchUp] = []
        for name, file in sorted(self.campaigns().items()):
            if file.campaign.schedule is None:
                continue
            try:
                decision = self._catch_up_one(file, now)
            except Exception:  # the database may be down: the other campaigns still get their jobs
                log.exception("campaign %s: cannot check for a missed run", name)
                continue
            decisions.append(decision)
            self._apply_catch_up(file, decision, now)
        return decisions

    def _catch_up_one(self, file: CampaignFile, now: datetime) -> CatchUp:
        name = file.campaign.name
        fire_at = latest_fire_time(file.campaign, self.zone, now)
        status = run_status(self.engine, name, fire_at) if fire_at is not None else None
        return CatchUp(name, fire_at, catch_up_action(fire_at, now, self.grace, status), status)

    def _apply_catch_up(self, file: CampaignFile, decision: CatchUp, now: datetime) -> None:
        name, fire_at = decision.campaign, decision.fire_at
        if decision.action == "fire" and fire_at is not None:
            resumed = " (resuming the interrupted run)" if decision.status else ""
            log.warning("campaign %s: the run of %s was missed while the scheduler was down; firing it "
                        "%s late%s", name, utc_text(fire_at), late_by(fire_at, now), resumed)
            self._schedule(file, run_now=True)
        elif decision.action == "skip" and fire_at is not None:
            self._log_skipped(name, fire_at, now, interrupted=decision.status is not None)

    def _log_skipped(self, name: str, fire_at: datetime, now: datetime, *, interrupted: bool = False) -> None:
        what = "was interrupted and is left unfinished" if interrupted else "was missed"
        log.warning(
            "campaign %s: the run of %s %s: skipped, %s late, more than the misfire grace of %s "
            "([scheduler] misfire_grace); `orchestrator run %s --now %s` plans it by hand",
            name, utc_text(fire_at), what, late_by(fire_at, now), self.settings.scheduler.misfire_grace,
            name, utc_text(fire_at),
        )

    # --- jobs -------------------------------------------------------------------------------------

    def _trigger(self, file: CampaignFile, *, run_now: bool) -> Any:
        """The campaign's APScheduler trigger, or None when it has nothing left to fire: no
        schedule, or an `at` whose moment passed (done or skipped, never fired again) unless the
        catch-up fires it now."""
        at = at_instant(file.campaign, self.zone)
        if at is not None:
            return DateTrigger(run_date=at, timezone=UTC) if run_now or at > self._clock() else None
        return schedule_trigger(file.campaign, self.zone)

    def _schedule(self, file: CampaignFile, *, run_now: bool = False) -> None:
        name = file.campaign.name
        trigger = self._trigger(file, run_now=run_now)
        if trigger is None:
            self._unschedule(name)
            return
        when = {"next_run_time": datetime.now(UTC)} if run_now else {}  # APScheduler's own clock
        self._scheduler.add_job(
            self._job, trigger, args=(name,), id=CAMPAIGN_JOB + name, name=f"campaign {name}",
            replace_existing=True, coalesce=True, max_instances=1,
            misfire_grace_time=max(1, self.grace), **when,
        )

    def _unschedule(self, name: str) -> None:
        try:
            self._scheduler.remove_job(CAMPAIGN_JOB + name)
        except JobLookupError:
            pass

    def _add_reload_job(self) -> None:
        self._scheduler.add_job(
            guarded, IntervalTrigger(seconds=max(1, self.reload_interval)), args=("reload of campaign files", self.reload),
            id=RELOAD_JOB, name="reload campaign files", replace_existing=True,
            coalesce=True, max_instances=1, misfire_grace_time=None,
        )

    def _add_periodic_job(self, name: str, interval: float, function: Callable[[], Any]) -> None:
        """First run at start, then every `interval`; a late one runs late rather than never."""
        if interval <= 0:
            raise ValueError(f"periodic job {name}: the interval must be positive, not {interval}")
        self._scheduler.add_job(
            guarded, IntervalTrigger(seconds=interval), args=(f"periodic job {name}", function),
            id=PERIODIC_JOB + name, name=name, replace_existing=True, coalesce=True, max_instances=1,
            misfire_grace_time=None, next_run_time=datetime.now(UTC),
        )

    def _on_event(self, event: JobEvent) -> None:
        """APScheduler's own skips of a campaign job, told in the campaign's terms."""
        if not event.job_id.startswith(CAMPAIGN_JOB):
            return
        name = event.job_id[len(CAMPAIGN_JOB):]
        if event.code == EVENT_JOB_MISSED:
            self._log_skipped(name, event.scheduled_run_time, self._clock())
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            times = ", ".join(utc_text(t) for t in getattr(event, "scheduled_run_times", ()))
            log.warning("campaign %s: the run of %s came while its previous run was still being planned: "
                        "skipped (one run at a time per campaign)", name, times)

    # --- reload -----------------------------------------------------------------------------------

    def reload(self) -> FileChanges:
        """Bring the jobs in line with the campaign files: added files get a job, changed ones
        have it replaced, deleted ones lose it.  A file that does not load keeps its previous
        version scheduled (or none, if it never loaded) and is reported once per content."""
        with self._lock:
            current = self._digests()
            changes = diff_files(self._files.seen, current)
            for path in changes.removed:
                self._forget(path)
            for path in changes.added + changes.changed:
                self._load(path, current[path])
            return changes

    def _digests(self) -> dict[Path, str]:
        digests: dict[Path, str] = {}
        for path in campaign_files(self.settings.campaigns_dir):
            try:
                digests[path] = file_digest(path)
            except OSError as error:   # vanished between listing and reading, or unreadable
                log.warning("%s: cannot read the campaign file (%s); looking again later", path, error.strerror)
                if path in self._files.seen:
                    digests[path] = self._files.seen[path]
        return digests

    def _load(self, path: Path, digest: str) -> None:
        self._files.seen[path] = digest
        previous = self._files.loaded.get(path)
        try:
            file = load_campaign(path)
        except OrchestratorError as error:
            kept = "the previous version stays scheduled" if previous else "not scheduled"
            log.error("%s (%s)", error, kept)
            return
        name = file.campaign.name
        other = self._files.names.get(name)
        if other is not None and other != path:
            log.error("%s: campaign '%s' is already defined in %s; this file is ignored", path, name, other.name)
            return
        self._files.loaded[path] = file
        self._files.names[name] = path
        self._schedule(file)
        moment = getattr(self.job(name), "next_run_time", None)   # a job added before start has none yet
        next_run = utc_text(moment) if moment else "none"
        log.info("campaign %s: %s from %s; next run %s", name, "reloaded" if previous else "loaded", path.name, next_run)

    def _forget(self, path: Path) -> None:
        self._files.seen.pop(path, None)
        file = self._files.loaded.pop(path, None)
        if file is None:
            return
        name = file.campaign.name
        self._files.names.pop(name, None)
        self._unschedule(name)
        log.info("campaign %s: %s was deleted; unscheduled", name, path.name)
        for other in [p for p in self._files.seen if p.stem == path.stem]:
            self._files.seen.pop(other)   # a twin x.yml ignored for x.yaml gets its chance now


__all__: Sequence[str] = (
    "CampaignScheduler", "CatchUp", "FileChanges", "catch_up_action", "describe_summary", "diff_files",
    "file_digest", "guarded", "plan_for_real", "run_status",
)
