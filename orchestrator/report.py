"""What a campaign did: the funnel per run (SPEC 10 `report`)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orchestrator.storage.schema import deliveries, runs

UTC = timezone.utc
FUNNEL_STATES = ("planned", "queued", "sending", "sent", "failed", "unknown", "cancelled")


def _of_campaign(campaign: str) -> sa.ColumnElement[bool]:
    """Rows of a campaign, found through its runs (the ledger is indexed by run, not by name)."""
    return deliveries.c.run_id.in_(sa.select(runs.c.id).where(runs.c.campaign == campaign))


def funnel(engine: Engine, campaign: str) -> list[dict[str, Any]]:
    """One record per run and one for the whole campaign (run = "all")."""
    query = (
        sa.select(deliveries.c.run_id, deliveries.c.status, deliveries.c.reason, sa.func.count())
        .where(_of_campaign(campaign))
        .group_by(deliveries.c.run_id, deliveries.c.status, deliveries.c.reason)
    )
    targeted = (
        sa.select(deliveries.c.run_id, sa.func.count(sa.distinct(deliveries.c.customer_id)))
        .where(_of_campaign(campaign))
        .group_by(deliveries.c.run_id)
    )
    with engine.connect() as conn:
        fire = dict(conn.execute(sa.select(runs.c.id, runs.c.fire_at).where(runs.c.campaign == campaign)).all())
        counts = conn.execute(query).all()
        targets = dict(conn.execute(targeted).all())
        total_targeted = conn.execute(
            sa.select(sa.func.count(sa.distinct(deliveries.c.customer_id))).where(_of_campaign(campaign))
        ).scalar_one()
    per_run: dict[int, dict[str, Any]] = {}
    total = _empty("all", None, total_targeted)
    for run_id, status, reason, count in counts:
        record = per_run.setdefault(run_id, _empty(run_id, fire.get(run_id), targets.get(run_id, 0)))
        for target in (record, total):
            if status == "suppressed":
                target["suppressed"] += count
                target["suppressed_by_reason"][reason] = target["suppressed_by_reason"].get(reason, 0) + count
            else:
                target[status] += count
    records = [per_run[key] for key in sorted(per_run, key=lambda k: per_run[k]["fire_at"] or "")]
    return records + [total] if records else []


def _empty(run: Any, fire_at: int | None, targeted: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "run": run,
        "fire_at": datetime.fromtimestamp(fire_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if fire_at else None,
        "targeted": targeted,
        "suppressed": 0,
        "suppressed_by_reason": {},
    }
    record.update({state: 0 for state in FUNNEL_STATES})
    return record


def sends_per_local_hour(engine: Engine, campaign: str) -> dict[int, int]:
    """Messages by the hour of the recipient's own clock at which they go (or went) out."""
    moment = sa.func.coalesce(deliveries.c.sent_at, deliveries.c.send_at)
    query = (
        sa.select(moment, deliveries.c.zone)
        .where(_of_campaign(campaign))
        .where(deliveries.c.status.in_(("planned", "queued", "sending", "sent", "unknown")))
    )
    hours: Counter = Counter()
    zones: dict[str, ZoneInfo] = {}
    with engine.connect() as conn:
        for at, zone in conn.execute(query.execution_options(yield_per=10000)):
            tz = zones.setdefault(zone or "UTC", ZoneInfo(zone or "UTC"))
            hours[datetime.fromtimestamp(at, tz).hour] += 1
    return dict(sorted(hours.items()))
