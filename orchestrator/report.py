"""What a campaign did (SPEC 10 `report`, SPEC 11 report pages): per run and in total.

`campaign_report(engine, settings, name, now=...)` returns one plain dict (JSON-ready) that the
command line and the web page both render:

- **Funnel.** Every ledger row is counted once, in its *current* state: `planned` means "still
  waiting to go out", `sent` "went out".  `targeted` counts customers (one per run and customer);
  the states count rows (one per channel in `channel_mode: all`).  `suppressed` is a mapping
  reason → rows, `suppressed_total` its sum.  The totals add the runs up (a customer targeted by
  four weekly runs counts four times; `distinct_customers` counts them once).
- **Calls.** Outcomes of the call tasks the campaign created (`call_tasks.outcome`, the latest one
  recorded), the tasks' states, and the managers' notes (newest first).
- **Sends per local hour.** 24 counts: rows `sent`, by the hour of `sent_at` on the recipient's
  own clock (the zone kept on the row).  `pending_per_local_hour`: rows still to go, by `send_at`.
- **Purchases after.** For each run, who bought within 30 days after the message, compared between
  groups (see `purchases_after` below for the exact rules and how windows still open are handled).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from orchestrator.derived import day_number
from orchestrator.errors import NotFound, OrchestratorError
from orchestrator.storage.schema import call_tasks, deliveries, purchases, runs

UTC = timezone.utc
FUNNEL_STATES = ("planned", "queued", "sending", "sent", "failed", "unknown", "cancelled")
PENDING_STATES = ("planned", "queued", "sending")
WINDOW_DAYS = 30
NOTES_LIMIT = 200


# --- small helpers ------------------------------------------------------------------------------


def _iso(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _of_campaign(campaign: str) -> sa.ColumnElement[bool]:
    """Rows of a campaign, found through its runs (the ledger is indexed by run, not by name)."""
    return deliveries.c.run_id.in_(sa.select(runs.c.id).where(runs.c.campaign == campaign))


def _zone(name: str | None, default: str, cache: dict[str, ZoneInfo]) -> ZoneInfo:
    key = name or default
    zone = cache.get(key)
    if zone is None:
        try:
            zone = ZoneInfo(key)
        except (KeyError, ValueError):  # a zone name the tz database no longer knows
            zone = ZoneInfo(default)
        cache[key] = zone
    return zone


# --- funnel -------------------------------------------------------------------------------------


def empty_funnel() -> dict[str, Any]:
    funnel: dict[str, Any] = {"targeted": 0, "messages": 0, "suppressed": {}, "suppressed_total": 0}
    funnel.update({state: 0 for state in FUNNEL_STATES})
    return funnel


def _count(funnel: dict[str, Any], status: str, reason: str | None, count: int) -> None:
    funnel["messages"] += count
    if status == "suppressed":
        key = reason or "unspecified"
        funnel["suppressed"][key] = funnel["suppressed"].get(key, 0) + count
        funnel["suppressed_total"] += count
    elif status in funnel:
        funnel[status] += count


def _sorted_reasons(funnel: dict[str, Any]) -> None:
    funnel["suppressed"] = dict(sorted(funnel["suppressed"].items(), key=lambda kv: (-kv[1], kv[0])))


# --- sends per local hour -----------------------------------------------------------------------


def sends_per_local_hour(conn: Connection, campaign: str, default_zone: str) -> tuple[list[int], list[int]]:
    """(sent, pending): 24 counts each, by the recipient's local hour (the row's zone; rows
    without one: the settings' zone).  Sent rows by `sent_at`, rows still to go by `send_at`."""
    query = (
        sa.select(deliveries.c.status, deliveries.c.sent_at, deliveries.c.send_at, deliveries.c.zone)
        .where(_of_campaign(campaign))
        .where(sa.or_(
            sa.and_(deliveries.c.status == "sent", deliveries.c.sent_at.is_not(None)),
            sa.and_(deliveries.c.status.in_(PENDING_STATES), deliveries.c.send_at.is_not(None)),
        ))
    )
    sent, pending = [0] * 24, [0] * 24
    zones: dict[str, ZoneInfo] = {}
    # Every zone's offset is a multiple of 15 minutes: the local hour of an instant is that of
    # its quarter-hour, so a run's thousands of rows need a few conversions only.
    hours: dict[tuple[int, str | None], int] = {}
    for status, sent_at, send_at, zone in conn.execute(query.execution_options(yield_per=10000)):
        at = int(sent_at if status == "sent" else send_at)
        key = (at // 900, zone)
        hour = hours.get(key)
        if hour is None:
            hour = hours[key] = datetime.fromtimestamp(key[0] * 900, _zone(zone, default_zone, zones)).hour
        (sent if status == "sent" else pending)[hour] += 1
    return sent, pending


# --- purchases after ----------------------------------------------------------------------------


@dataclass
class _Group:
    customers: int = 0
    buyers: int = 0
    purchases: int = 0
    revenue: float = 0.0
    open_windows: int = 0  # members whose 30 days are not over at `now`

    def add(self, other: "_Group") -> None:
        self.customers += other.customers
        self.buyers += other.buyers
        self.purchases += other.purchases
        self.revenue += other.revenue
        self.open_windows += other.open_windows

    def record(self) -> dict[str, Any]:
        n = self.customers
        return {
            "customers": n,
            "buyers": self.buyers,
            "conversion_pct": round(100.0 * self.buyers / n, 2) if n else None,
            "purchases": self.purchases,
            "revenue": round(self.revenue, 2),
            "revenue_per_customer": round(self.revenue / n, 2) if n else None,
            "open_windows": self.open_windows,
        }


GROUPS = ("contacted", "holdout", "not_held_out")


def uplift(treated: _Group, control: _Group) -> dict[str, Any] | None:
    """Treated against control: differences in conversion and revenue per customer, what they
    make over the treated group, and a two-sided two-proportion z-test of the conversions."""
    if not treated.customers or not control.customers:
        return None
    rate_t, rate_c = treated.buyers / treated.customers, control.buyers / control.customers
    rpc_t, rpc_c = treated.revenue / treated.customers, control.revenue / control.customers
    pooled = (treated.buyers + control.buyers) / (treated.customers + control.customers)
    variance = pooled * (1 - pooled) * (1 / treated.customers + 1 / control.customers)
    p_value = 1.0 if variance == 0 else math.erfc(abs(rate_t - rate_c) / math.sqrt(variance) / math.sqrt(2))
    return {
        "conversion_pp": round(100.0 * (rate_t - rate_c), 2),
        "conversion_relative_pct": round(100.0 * (rate_t / rate_c - 1), 2) if rate_c else None,
        "revenue_per_customer": round(rpc_t - rpc_c, 2),
        "incremental_buyers": round((rate_t - rate_c) * treated.customers, 1),
        "incremental_revenue": round((rpc_t - rpc_c) * treated.customers, 2),
        "p_value": round(p_value, 4),
    }


def _purchases_record(groups: dict[str, _Group], has_holdout: bool) -> dict[str, Any]:
    record: dict[str, Any] = {"window_days": WINDOW_DAYS}
    record["complete"] = not any(g.open_windows for g in groups.values())
    record["contacted"] = groups["contacted"].record()
    record["holdout"] = groups["holdout"].record() if has_holdout else None
    record["uplift"] = uplift(groups["contacted"], groups["holdout"]) if has_holdout else None
    record["not_held_out"] = groups["not_held_out"].record() if has_holdout else None
    record["uplift_not_held_out"] = uplift(groups["not_held_out"], groups["holdout"]) if has_holdout else None
    return record


def _run_purchases(conn: Connection, run_id: int, fire_at: int, now: datetime,
                   default_zone: str, zones: dict[str, ZoneInfo]) -> tuple[dict[str, _Group], bool]:
    """The groups of one run and their purchases in the window; (groups, has holdout rows).

    Per customer of the run: contacted = at least one row `sent` (window from the first
    `sent_at`, on the date of the row's zone); holdout = suppressed `holdout` (window from the
    run's fire time, on the date of the settings' zone: a held-out customer has no zone on the
    row); not_held_out = everyone targeted but the holdout (window from their message if they got
    one, else from the fire time).  A purchase counts when its date is in
    [window start, window start + 30 days) and not after today (`now`, same zone).
    """
    members: dict[str, list[Any]] = {}  # customer -> [first sent_at, its zone, held out]
    rows = sa.select(deliveries.c.customer_id, deliveries.c.status, deliveries.c.reason,
                     deliveries.c.sent_at, deliveries.c.send_at, deliveries.c.zone).where(deliveries.c.run_id == run_id)
    for customer_id, status, reason, sent_at, send_at, zone in conn.execute(rows):
        member = members.setdefault(customer_id, [None, None, False])
        if status == "suppressed" and reason == "holdout":
            member[2] = True
        elif status == "sent":
            at = int(sent_at or send_at or fire_at)
            if member[0] is None or at < member[0]:
                member[0], member[1] = at, zone
    groups = {name: _Group() for name in GROUPS}
    if not members:
        return groups, False
    today_of: dict[str, int] = {}
    now_ts = now.timestamp()
    windows: dict[str, tuple[int, int]] = {}  # customer -> [start day, end day)
    for customer_id, (sent_at, zone, held_out) in members.items():
        at, zone_name = (sent_at, zone or default_zone) if sent_at is not None else (fire_at, default_zone)
        tz = _zone(zone_name, default_zone, zones)
        today = today_of.get(zone_name)
        if today is None:
            today = today_of[zone_name] = day_number(now.astimezone(tz).date())
        start = day_number(datetime.fromtimestamp(at, tz).date())
        full_end = start + WINDOW_DAYS
        # Not yet messaged at `now` (a report "as of" an earlier moment): an empty window.
        windows[customer_id] = (start, start if at > now_ts else min(full_end, today + 1))
        is_open = today < full_end
        for name in _groups_of(sent_at is not None, held_out):
            groups[name].customers += 1
            groups[name].open_windows += is_open
    low = min(start for start, _ in windows.values())
    high = max(end for _, end in windows.values())
    spent: dict[str, list[float]] = {}  # customer -> [purchases, revenue]
    if high > low:
        of_run = sa.select(deliveries.c.customer_id).where(deliveries.c.run_id == run_id)
        query = (
            sa.select(purchases.c.customer_id, purchases.c.day, purchases.c.amount)
            .where(purchases.c.customer_id.in_(of_run))
            .where(purchases.c.day >= low, purchases.c.day < high)
        )
        for customer_id, day, amount in conn.execute(query.execution_options(yield_per=10000)):
            start, end = windows[customer_id]
            if start <= day < end:
                tally = spent.setdefault(customer_id, [0, 0.0])
                tally[0] += 1
                tally[1] += float(amount or 0.0)
    for customer_id, (count, revenue) in spent.items():
        sent_at, _, held_out = members[customer_id]
        for name in _groups_of(sent_at is not None, held_out):
            group = groups[name]
            group.buyers += 1
            group.purchases += count
            group.revenue += revenue
    return groups, any(member[2] for member in members.values())


def _groups_of(contacted: bool, held_out: bool) -> Iterable[str]:
    if held_out:
        return ("holdout",)
    return ("contacted", "not_held_out") if contacted else ("not_held_out",)


# --- calls ----------------------------------------------------------------------------------


def _calls(conn: Connection, campaign: str, notes_limit: int) -> tuple[dict[Any, dict[str, int]], dict[str, int], dict[str, int], list[dict[str, Any]], int]:
    """Outcomes per run and in total (each task counted by its latest outcome), task states, the
    newest notes and how many notes there are.

    `call_tasks.history` holds every recorded outcome with its own note and time
    (orchestrator.tasks); every event with a note is one note here, with that event's outcome
    and time.  A plain-text note (written by something else) is one note at the task's last change.
    """
    from orchestrator.tasks import events_of

    query = (
        sa.select(call_tasks.c.id, call_tasks.c.customer_id, call_tasks.c.manager, call_tasks.c.status,
                  call_tasks.c.outcome, call_tasks.c.note, call_tasks.c.history, call_tasks.c.updated_at,
                  deliveries.c.run_id)
        .select_from(call_tasks.outerjoin(deliveries, deliveries.c.id == call_tasks.c.delivery_id))
        .where(call_tasks.c.campaign == campaign)
    )
    per_run: dict[Any, dict[str, int]] = {}
    outcomes: dict[str, int] = {}
    states: dict[str, int] = {"total": 0, "open": 0, "done": 0, "closed": 0, "without_outcome": 0}
    notes: list[tuple[str, int, int, dict[str, Any]]] = []  # a min-heap of the newest notes_limit
    total_notes = 0
    for task_id, customer_id, manager, status, outcome, note, history, updated_at, run_id in conn.execute(query):
        states["total"] += 1
        states[status] = states.get(status, 0) + 1
        if outcome:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            run_outcomes = per_run.setdefault(run_id, {})
            run_outcomes[outcome] = run_outcomes.get(outcome, 0) + 1
        else:
            states["without_outcome"] += 1
        for number, event in enumerate(events_of({"note": note, "history": history})):
            text = event.get("note")
            if not isinstance(text, str) or not text.strip():
                continue
            total_notes += 1
            at = event.get("at") or _iso(updated_at)
            item = (str(at or ""), int(task_id), number, {
                "task_id": task_id, "run": run_id, "customer_id": customer_id, "manager": manager,
                "outcome": event.get("outcome") if event.get("at") else (event.get("outcome") or outcome),
                "note": text, "at": at,
            })
            if len(notes) < notes_limit:
                heapq.heappush(notes, item)
            elif notes_limit and item[:3] > notes[0][:3]:
                heapq.heapreplace(notes, item)
    newest = [item[3] for item in sorted(notes, key=lambda item: item[:3], reverse=True)]
    ordered = lambda counts: dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))  # noqa: E731
    return ({run: ordered(c) for run, c in per_run.items()}, ordered(outcomes), states, newest, total_notes)


# --- the report ---------------------------------------------------------------------------------


def _campaign_file(settings: Any, name: str) -> tuple[Any, NotFound | None]:
    """The campaign's definition if its file is there and valid (for the holdout share)."""
    from orchestrator.campaigns import find_campaign

    try:
        return find_campaign(settings.campaigns_dir, name).campaign, None
    except NotFound as error:
        return None, error
    except OrchestratorError:
        return None, None  # a broken file: the ledger still tells what happened


def campaign_report(engine: Engine, settings: Any, campaign_name: str, *, now: datetime | None = None,
                    notes_limit: int = NOTES_LIMIT) -> dict[str, Any]:
    """Everything the report shows, as one JSON-ready dict (see the module docstring).

    Raises NotFound when the campaign has neither runs nor a file.
    """
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    default_zone = settings.general.timezone
    definition, missing = _campaign_file(settings, campaign_name)
    zones: dict[str, ZoneInfo] = {}
    with engine.connect() as conn:
        run_rows = conn.execute(
            sa.select(runs.c.id, runs.c.fire_at, runs.c.status)
            .where(runs.c.campaign == campaign_name).order_by(runs.c.fire_at, runs.c.id)
        ).all()
        if not run_rows and missing is not None:
            raise missing
        counts = conn.execute(
            sa.select(deliveries.c.run_id, deliveries.c.status, deliveries.c.reason, sa.func.count())
            .where(_of_campaign(campaign_name))
            .group_by(deliveries.c.run_id, deliveries.c.status, deliveries.c.reason)
        ).all()
        targeted = dict(conn.execute(
            sa.select(deliveries.c.run_id, sa.func.count(sa.distinct(deliveries.c.customer_id)))
            .where(_of_campaign(campaign_name)).group_by(deliveries.c.run_id)
        ).all())
        distinct_customers = conn.execute(
            sa.select(sa.func.count(sa.distinct(deliveries.c.customer_id))).where(_of_campaign(campaign_name))
        ).scalar_one()
        calls_per_run, outcomes, task_states, notes, notes_total = _calls(conn, campaign_name, notes_limit)
        sent_hours, pending_hours = sends_per_local_hour(conn, campaign_name, default_zone)
        purchases_per_run = {
            run_id: _run_purchases(conn, run_id, int(fire_at), now, default_zone, zones)
            for run_id, fire_at, _ in run_rows
        }

    total = empty_funnel()
    run_records: dict[int, dict[str, Any]] = {}
    for run_id, fire_at, status in run_rows:
        funnel = empty_funnel()
        funnel["targeted"] = targeted.get(run_id, 0)
        total["targeted"] += funnel["targeted"]
        run_records[run_id] = {"run": run_id, "fire_at": _iso(fire_at), "status": status, "funnel": funnel}
    for run_id, status, reason, count in counts:
        if run_id in run_records:
            _count(run_records[run_id]["funnel"], status, reason, count)
            _count(total, status, reason, count)
    _sorted_reasons(total)

    totals = {name: _Group() for name in GROUPS}
    any_holdout, open_runs = False, []
    for run_id, record in run_records.items():
        _sorted_reasons(record["funnel"])
        record["call_outcomes"] = calls_per_run.get(run_id, {})
        groups, has_holdout = purchases_per_run[run_id]
        record["purchases_after"] = _purchases_record(groups, has_holdout)
        if not record["purchases_after"]["complete"]:
            open_runs.append(run_id)
        any_holdout = any_holdout or has_holdout
        for name in GROUPS:
            totals[name].add(groups[name])
    purchases_after = _purchases_record(totals, any_holdout)
    purchases_after["open_runs"] = open_runs
    purchases_after["as_of"] = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    return {
        "campaign": campaign_name,
        "now": purchases_after["as_of"],
        "holdout": definition.holdout if definition is not None else None,
        "runs": list(run_records.values()),
        "funnel": total,
        "distinct_customers": distinct_customers,
        "call_tasks": task_states,
        "call_outcomes": outcomes,
        "notes": notes,
        "notes_total": notes_total,
        "sends_per_local_hour": sent_hours,
        "pending_per_local_hour": pending_hours,
        "purchases_after": purchases_after,
    }


def flat_funnel(run: Any, fire_at: str | None, funnel: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    """A funnel as one flat record (the `report --json` line): `suppressed` is the total there,
    `suppressed_by_reason` the mapping."""
    record: dict[str, Any] = {"run": run, "fire_at": fire_at}
    if status is not None:
        record["status"] = status
    record.update({key: value for key, value in funnel.items() if key not in ("suppressed", "suppressed_total")})
    record["suppressed"] = funnel["suppressed_total"]
    record["suppressed_by_reason"] = dict(funnel["suppressed"])
    return record
