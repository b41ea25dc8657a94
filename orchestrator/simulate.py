"""A month of every scheduled campaign in virtual time, against the real data and policies.

The real ledger is never written: the simulation plans into a scratch SQLite ledger seeded with
the real ledger's counted messages (so caps see what customers already got), using exactly the
planner that `run` uses.  What it prints is read back from that scratch ledger.
"""

from __future__ import annotations

import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Sequence
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orchestrator.campaigns import fire_times
from orchestrator.planner import Prepared, RunSummary, plan_run
from orchestrator.policy.caps import caps_for, max_in_window
from orchestrator.settings import Settings
from orchestrator.storage.engine import connect, write_transaction
from orchestrator.storage.schema import CAP_COUNTED_STATES, deliveries

UTC = timezone.utc


@dataclass
class SimulationResult:
    start: datetime
    days: int
    runs: list[RunSummary] = field(default_factory=list)
    per_day: dict[str, Counter] = field(default_factory=dict)          # date → channel → messages
    suppressed: Counter = field(default_factory=Counter)                 # reason → count
    suppressed_by_campaign: dict[str, Counter] = field(default_factory=dict)
    peak_hour: tuple[str, int] | None = None                             # ("2026-12-01T10:00", n)
    peak_local_hour: tuple[int, int] | None = None                       # (hour of the recipients' clocks, n)
    max_per_window: dict[str, dict[str, Any]] = field(default_factory=dict)  # channel → worst customer

    def to_records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for summary in self.runs:
            records.append({"type": "run", **summary.to_dict()})
        for day, channels in sorted(self.per_day.items()):
            records.append({"type": "day", "date": day, **dict(sorted(channels.items())), "total": sum(channels.values())})
        records.append({"type": "suppressed", **dict(self.suppressed.most_common())})
        if self.peak_hour:
            records.append({"type": "peak_hour", "hour": self.peak_hour[0], "messages": self.peak_hour[1]})
        if self.peak_local_hour:
            records.append({"type": "peak_local_hour", "hour": self.peak_local_hour[0], "messages": self.peak_local_hour[1]})
        for channel, worst in sorted(self.max_per_window.items()):
            records.append({"type": "max_per_customer", "channel": channel, **worst})
        return records


def simulate(
    settings: Settings,
    data_engine: Engine,
    real_ledger: Engine,
    schedule: Sequence[tuple[datetime, Prepared]],
    start: datetime,
    days: int,
    *,
    progress: Callable[[int], None] | None = None,
) -> SimulationResult:
    """Plan every run of `schedule` (see `schedule_runs`) into a scratch ledger, in order."""
    result = SimulationResult(start=start, days=days)
    with tempfile.TemporaryDirectory(prefix="orchestrator-sim-") as scratch:
        ledger = connect(f"sqlite:///{Path(scratch) / 'simulation.db'}")
        try:
            _seed(real_ledger, ledger, start - timedelta(days=400))
            for fire, prepared in schedule:
                result.runs.append(plan_run(data_engine, ledger, prepared, fire, dry_run=False))
                if progress:
                    progress(1)
            _read_back(settings, ledger, result, {s.run_id for s in result.runs})
        finally:
            ledger.dispose()
    return result


def schedule_runs(settings: Settings, campaigns: Sequence[Prepared], start: datetime, days: int) -> list[tuple[datetime, Prepared]]:
    """Every (fire time, campaign) in [start, start + days), in the order they would fire."""
    end = start + timedelta(days=days)
    return sorted(
        ((fire, prepared) for prepared in campaigns
         for fire in fire_times(prepared.campaign, settings.general.timezone, start, end)),
        key=lambda item: (item[0], item[1].campaign.name),
    )


def _seed(real: Engine, scratch: Engine, since: datetime) -> None:
    """Copy the counted messages customers already have, so that caps start where reality is."""
    moment = sa.func.coalesce(deliveries.c.sent_at, deliveries.c.send_at)
    query = sa.select(deliveries).where(deliveries.c.status.in_(CAP_COUNTED_STATES), moment >= int(since.timestamp()))
    with real.connect() as source:
        batch: list[dict[str, Any]] = []
        for row in source.execute(query.execution_options(yield_per=5000)).mappings():
            record = dict(row)
            record["run_id"] = -abs(record["run_id"])  # never collides with simulated runs
            batch.append(record)
            if len(batch) >= 5000:
                _copy(scratch, batch)
                batch = []
        _copy(scratch, batch)


def _copy(scratch: Engine, batch: list[dict[str, Any]]) -> None:
    if batch:
        with write_transaction(scratch) as conn:
            conn.execute(deliveries.insert(), batch)


def _read_back(settings: Settings, ledger: Engine, result: SimulationResult, run_ids: set[int | None]) -> None:
    zone = ZoneInfo(settings.general.timezone)
    hours: Counter = Counter()
    local_hours: Counter = Counter()
    per_day: dict[str, Counter] = defaultdict(Counter)
    times: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    zones: dict[str, ZoneInfo] = {}
    moment = sa.func.coalesce(deliveries.c.sent_at, deliveries.c.send_at)
    query = sa.select(
        deliveries.c.run_id, deliveries.c.campaign, deliveries.c.customer_id, deliveries.c.channel,
        deliveries.c.category, deliveries.c.status, deliveries.c.reason, moment, deliveries.c.zone,
    )
    with ledger.connect() as conn:
        for run_id, campaign, customer, channel, category, status, reason, at, row_zone in conn.execute(query):
            simulated = run_id in run_ids
            if status == "suppressed":
                if simulated:
                    result.suppressed[reason] += 1
                    result.suppressed_by_campaign.setdefault(campaign, Counter())[reason] += 1
                continue
            if status not in CAP_COUNTED_STATES or at is None:
                continue
            times[(customer, channel)].append((at, category))
            if not simulated:
                continue
            local = datetime.fromtimestamp(at, zone)
            per_day[local.date().isoformat()][channel] += 1
            hours[local.strftime("%Y-%m-%dT%H:00")] += 1
            tz = zones.setdefault(row_zone or settings.general.timezone, ZoneInfo(row_zone or settings.general.timezone))
            local_hours[datetime.fromtimestamp(at, tz).hour] += 1
    result.per_day = dict(per_day)
    if hours:
        result.peak_hour = hours.most_common(1)[0]
        result.peak_local_hour = local_hours.most_common(1)[0]
    result.max_per_window = _worst_customers(settings, times)


def _worst_customers(settings: Settings, times: dict[tuple[str, str], list[tuple[int, str]]]) -> dict[str, dict[str, Any]]:
    """Per channel: the most messages any one customer gets within one window of the channel cap."""
    worst: dict[str, dict[str, Any]] = {}
    for (customer, channel), items in times.items():
        caps = [c for c in caps_for(channel, "promo", settings.caps, None) if c.key == channel]
        if not caps:
            continue
        cap = caps[0]
        counted = sorted(at for at, category in items if category != "transactional")
        count = max_in_window(counted, cap.period)
        current = worst.get(channel)
        if current is None or count > current["messages"]:
            worst[channel] = {"messages": count, "customer_id": customer, "cap": f"{cap.limit}/{cap.period // 86400}d"}
    return worst
