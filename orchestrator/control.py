"""Management control (SPEC 9, `orchestrator control`): "the manager did not call this client for
three months, and nobody noticed" must not happen.

Per manager:

* tasks `open`, `overdue` (open past the end of their due window), `done`, `closed`, and the
  latest outcome of each task counted by outcome;
* calls and the orders that followed them: a call is a task in which the client was spoken to
  (an outcome of `tasks.CONTACT_OUTCOMES`; the first such outcome of the task is the call's
  moment); its orders are the customer's purchases dated from the call's local day up to
  `[tasks] orders_window_days` (default 30) days after.  A purchase following two calls of the
  manager counts once in the manager's orders and amount;
* the manager's clients (`customers.manager`) with no contact on any channel for more than
  `[tasks] no_contact_days` (default 90): a contact is a message that went out (`sent`) on a
  channel other than phone, or a call task outcome in which the client was spoken to (by any
  manager).  A phone delivery is only the creation of a task, not a contact.  Clients never
  contacted are listed first, then the longest silent; all are counted, `no_contact_limit` listed;
* overdue tasks, each with the working days begun since its due day in the customer's calendar
  (`tasks.working_days_overdue`); more than `[tasks] escalate_after_working_days` (default 2)
  flags it escalated to the marketers (here, on the web page, in the weekly digest).

Access: `manager=LOGIN` is that manager's view (their own figures only); `manager=None` is the
marketer's view of every manager, with totals.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from typing import Any, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from orchestrator.settings import Settings
from orchestrator.storage.schema import call_tasks, customers, deliveries, purchases
from orchestrator.tasks import (
    OUTCOMES, STATUSES, as_epoch, contact_times, events_of, iso, known_managers, local_iso, window_text,
    working_days_overdue, zone_note, tz_of,
)

CONTACT_CHANNELS_EXCLUDED = ("phone",)
_ID_CHUNK = 500


def _empty(login: str, settings: Settings) -> dict[str, Any]:
    entry = settings.tasks.managers.get(login, {})
    return {
        "manager": login,
        "name": entry.get("name") or login,
        **{status: 0 for status in STATUSES},
        "overdue": 0,
        "escalated": 0,
        "outcomes": {outcome: 0 for outcome in OUTCOMES},
        "calls": 0,
        "calls_followed_by_order": 0,
        "orders_after_calls": 0,
        "orders_amount": 0.0,
        "clients": 0,
        "no_contact_count": 0,
        "no_contact": [],
        "overdue_tasks": [],
        "escalated_tasks": [],
    }


def _chunks(items: list[Any], size: int = _ID_CHUNK) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _tasks(conn: Connection, manager: str | None) -> list[Mapping[str, Any]]:
    query = sa.select(
        call_tasks.c.id, call_tasks.c.campaign, call_tasks.c.customer_id, call_tasks.c.manager,
        call_tasks.c.status, call_tasks.c.due_from, call_tasks.c.due_until, call_tasks.c.zone,
        call_tasks.c.zone_source, call_tasks.c.outcome, call_tasks.c.note, call_tasks.c.history,
        call_tasks.c.attempts, customers.c.name.label("customer_name"),
    ).select_from(call_tasks.outerjoin(customers, customers.c.id == call_tasks.c.customer_id)).order_by(call_tasks.c.id)
    if manager is not None:
        query = query.where(call_tasks.c.manager == manager)
    return conn.execute(query).mappings().all()


def _orders(conn: Connection, calls: dict[str, list[tuple[int, date]]], window: int) -> dict[int, list[tuple[int, float]]]:
    """Per task: the purchases (id, amount) of its customer within the window after its call."""
    if not calls:
        return {}
    earliest = min(day for entries in calls.values() for _, day in entries)
    found: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for ids in _chunks(sorted(calls)):
        rows = conn.execute(
            sa.select(purchases.c.id, purchases.c.customer_id, purchases.c.date, purchases.c.amount)
            .where(purchases.c.customer_id.in_(ids), purchases.c.date >= earliest)
        ).all()
        for purchase_id, customer_id, day, amount in rows:
            day = day if isinstance(day, date) else date.fromisoformat(str(day))
            for task_id, call_day in calls[customer_id]:
                if call_day <= day <= call_day + timedelta(days=window):
                    found[task_id].append((purchase_id, float(amount or 0.0)))
    return found


def _managed(manager: str | None) -> Any:
    return customers.c.manager == manager if manager is not None else customers.c.manager.is_not(None)


def _no_contact(conn: Connection, settings: Settings, manager: str | None, now: int) -> tuple[dict[str, int], dict[str, list[dict[str, Any]]]]:
    """Per manager: how many clients had no contact for more than N days, and the first of them."""
    tasks_settings = settings.tasks
    cutoff = now - tasks_settings.no_contact_days * 86400
    sent = (
        sa.select(deliveries.c.customer_id, sa.func.max(deliveries.c.sent_at).label("last"))
        .where(deliveries.c.status == "sent", deliveries.c.channel.not_in(CONTACT_CHANNELS_EXCLUDED),
               deliveries.c.sent_at <= now)
        .group_by(deliveries.c.customer_id)
        .subquery()
    )
    candidates = conn.execute(
        sa.select(customers.c.id, customers.c.name, customers.c.manager, sent.c.last)
        .select_from(customers.outerjoin(sent, sent.c.customer_id == customers.c.id))
        .where(_managed(manager), sa.or_(sent.c.last.is_(None), sent.c.last <= cutoff))
    ).all()
    # Calls in which the client was spoken to, by any manager, are contacts too.
    spoken: dict[str, int] = {}
    rows = conn.execute(
        sa.select(call_tasks.c.customer_id, call_tasks.c.note, call_tasks.c.history)
        .where(call_tasks.c.outcome.is_not(None),
               call_tasks.c.customer_id.in_(sa.select(customers.c.id).where(_managed(manager))))
    )
    for row in rows:
        customer_id = row.customer_id
        times = [t for t in contact_times(events_of(row._mapping)) if t <= now]
        if times:
            spoken[customer_id] = max(spoken.get(customer_id, 0), max(times))
    silent: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for customer_id, name, login, last in candidates:
        last_call = spoken.get(customer_id)
        if last_call is not None and last_call > cutoff:
            continue
        contact = max(x for x in (last, last_call, -1) if x is not None)
        channel = "phone" if last_call is not None and contact == last_call else None
        silent[login].append((contact if contact >= 0 else None, customer_id, name, channel))
    counts = {login: len(entries) for login, entries in silent.items()}
    listed: dict[str, list[dict[str, Any]]] = {}
    limit = tasks_settings.no_contact_limit
    for login, entries in silent.items():
        entries.sort(key=lambda e: (e[0] is not None, e[0] or 0, e[1]))
        listed[login] = [
            {"customer_id": cid, "name": name, "last_contact": iso(contact), "last_contact_channel": channel,
             "days_since_contact": (now - contact) // 86400 if contact is not None else None}
            for contact, cid, name, channel in entries[:limit]
        ]
    _fill_channels(conn, [e for entries in listed.values() for e in entries])
    return counts, listed


def _fill_channels(conn: Connection, entries: list[dict[str, Any]]) -> None:
    """The channel of each listed client's last message (a short query on the listed few)."""
    wanted = {e["customer_id"]: e for e in entries if e["last_contact"] and not e["last_contact_channel"]}
    for ids in _chunks(sorted(wanted)):
        rows = conn.execute(
            sa.select(deliveries.c.customer_id, deliveries.c.channel, sa.func.max(deliveries.c.sent_at))
            .where(deliveries.c.customer_id.in_(ids), deliveries.c.status == "sent",
                   deliveries.c.channel.not_in(CONTACT_CHANNELS_EXCLUDED))
            .group_by(deliveries.c.customer_id, deliveries.c.channel)
        ).all()
        best: dict[str, tuple[int, str]] = {}
        for customer_id, channel, at in rows:
            if at is not None and (customer_id not in best or at > best[customer_id][0]):
                best[customer_id] = (at, channel)
        for customer_id, (_, channel) in best.items():
            wanted[customer_id]["last_contact_channel"] = channel


def _clients(conn: Connection, manager: str | None) -> Counter:
    rows = conn.execute(
        sa.select(customers.c.manager, sa.func.count()).where(_managed(manager)).group_by(customers.c.manager)
    ).all()
    return Counter({login: count for login, count in rows})


def control_report(
    engine: Engine, settings: Settings, *, manager: str | None = None, now: datetime | int | None = None
) -> dict[str, Any]:
    """The figures of every manager (the marketer's view) or of one (`manager`: their own view).

    Returns {generated_at, settings: {...}, managers: [per-manager records], totals} — see the
    module docstring for what each figure means.
    """
    at = as_epoch(now)
    tasks_settings = settings.tasks
    window = tasks_settings.orders_window_days
    with engine.connect() as conn:
        task_rows = _tasks(conn, manager)
        clients = _clients(conn, manager)
        no_contact_counts, no_contact_lists = _no_contact(conn, settings, manager, at)
        calls: dict[str, list[tuple[int, date]]] = defaultdict(list)
        for row in task_rows:
            times = [t for t in contact_times(events_of(row)) if t <= at]
            if times:
                calls[row["customer_id"]].append((row["id"], datetime.fromtimestamp(min(times), tz_of(row["zone"])).date()))
        orders = _orders(conn, calls, window)
    logins = [manager] if manager is not None else sorted(
        set(known_managers(engine, settings)) | {row["manager"] for row in task_rows})
    records = {login: _empty(login, settings) for login in logins}
    purchases_seen: dict[str, dict[int, float]] = defaultdict(dict)
    called_tasks = {task_id for entries in calls.values() for task_id, _ in entries}
    for row in task_rows:
        record = records[row["manager"]]
        record[row["status"]] += 1
        if row["outcome"] in record["outcomes"]:
            record["outcomes"][row["outcome"]] += 1
        if row["id"] in called_tasks:
            record["calls"] += 1
            bought = orders.get(row["id"], [])
            if bought:
                record["calls_followed_by_order"] += 1
                purchases_seen[row["manager"]].update(bought)
        if row["status"] == "open" and at >= row["due_until"]:
            late = working_days_overdue(row["due_until"], at, row["zone"], settings)
            escalated = late > tasks_settings.escalate_after_working_days
            entry = {
                "id": row["id"], "campaign": row["campaign"], "customer_id": row["customer_id"],
                "customer_name": row["customer_name"], "due_until": iso(row["due_until"]),
                "due_until_local": local_iso(row["due_until"], row["zone"]),
                "due_local": window_text(row["due_from"], row["due_until"], row["zone"]),
                "zone_note": zone_note(row["zone"], row["zone_source"]),
                "attempts": row["attempts"], "working_days_overdue": late, "escalated": escalated,
            }
            record["overdue"] += 1
            record["overdue_tasks"].append(entry)
            if escalated:
                record["escalated"] += 1
                record["escalated_tasks"].append(entry)
    for login, record in records.items():
        seen = purchases_seen.get(login, {})
        record["orders_after_calls"] = len(seen)
        record["orders_amount"] = round(sum(seen.values()), 2)
        record["clients"] = clients.get(login, 0)
        record["no_contact_count"] = no_contact_counts.get(login, 0)
        record["no_contact"] = no_contact_lists.get(login, [])
        for key in ("overdue_tasks", "escalated_tasks"):
            record[key].sort(key=lambda e: (-e["working_days_overdue"], e["due_until"], e["id"]))
    managers = [records[login] for login in logins]
    summed = ("open", "done", "closed", "overdue", "escalated", "calls", "calls_followed_by_order",
              "orders_after_calls", "clients", "no_contact_count")
    totals: dict[str, Any] = {key: sum(r[key] for r in managers) for key in summed}
    totals["orders_amount"] = round(sum(r["orders_amount"] for r in managers), 2)
    totals["outcomes"] = {o: sum(r["outcomes"][o] for r in managers) for o in OUTCOMES}
    return {
        "generated_at": iso(at),
        "manager": manager,
        "settings": {
            "orders_window_days": window,
            "no_contact_days": tasks_settings.no_contact_days,
            "escalate_after_working_days": tasks_settings.escalate_after_working_days,
        },
        "managers": managers,
        "totals": totals,
    }
