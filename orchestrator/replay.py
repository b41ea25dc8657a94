"""A stretch of time replayed through the real pipeline on a virtual clock (the demo's month).

Unlike `simulate` (which decides on a scratch ledger and sends nothing), this fires every scheduled
campaign at its fire times into the workspace's own ledger, and lets the pump and the in-process
workers deliver through the configured channels as the virtual clock moves on in steps: the same
code as `up`, only the clock is ours.  Runs are identified by campaign and fire time, so replaying a
month twice plans and sends nothing new.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

import sqlalchemy as sa

from orchestrator.campaigns import campaign_files, fire_times, load_campaign
from orchestrator.planner import plan_run, prepare
from orchestrator.pump import pump_until_drained
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings
from orchestrator.storage.schema import deliveries

log = logging.getLogger("orchestrator.replay")
UTC = timezone.utc


class VirtualClock:
    def __init__(self, start: datetime) -> None:
        self.t = start.timestamp()

    def __call__(self) -> float:
        return self.t

    def set(self, moment: datetime) -> None:
        self.t = max(self.t, moment.timestamp())


@dataclass
class Replay:
    runs: int = 0
    statuses: Counter = field(default_factory=Counter)


def replay(settings: Settings, start: datetime, days: int, *, step: timedelta = timedelta(minutes=30),
           progress: Callable[[int], None] | None = None) -> Replay:
    """Fire, pump and deliver from `start` for `days`, `step` by `step` of virtual time."""
    clock = VirtualClock(start)
    runtime = Runtime(settings, now=clock)
    runtime.start_delivery(threads=4)
    engine = runtime.engine
    result = Replay()
    try:
        files = [load_campaign(path) for path in campaign_files(settings.campaigns_dir)]
        scheduled = [prepare(settings, f, engine=engine) for f in files if f.campaign.schedule is not None]
        end = start + timedelta(days=days)
        moment = start
        while moment < end:
            following = min(moment + step, end)
            fires = sorted(
                (fire, index)
                for index, prepared in enumerate(scheduled)
                for fire in fire_times(prepared.campaign, settings.general.timezone, moment, following)
            )
            for fire, index in fires:
                clock.set(fire)
                summary = plan_run(engine, engine, scheduled[index], fire, dry_run=False)
                result.runs += 0 if summary.existed else 1
                _deliver(runtime, clock)
            clock.set(following)
            _deliver(runtime, clock)
            if progress is not None:
                progress(int((following - moment).total_seconds()))
            moment = following
        with engine.connect() as conn:
            result.statuses = Counter(dict(conn.execute(
                sa.select(deliveries.c.status, sa.func.count()).group_by(deliveries.c.status)
            ).all()))
    finally:
        runtime.stop()
    return result


def _deliver(runtime: Runtime, clock: VirtualClock) -> None:
    """Everything due now, sent now: the pump queues at most `max_queued` rows of a channel at a
    time, so it pumps again whenever the workers have emptied the queues."""
    while True:
        moved = pump_until_drained(runtime.engine, runtime.settings, runtime.queues.enqueue, int(clock()),
                                   runtime.channel_names).moved
        runtime.join(timeout=600)
        if not moved:
            return
