"""Managers' call tasks (SPEC 9): the board, the live card, outcomes and what they change.

A task is created by the phone channel (`channels.phone.CallTasks`) when a phone delivery goes
out; from then on it belongs to the manager:

* `list_tasks` / `get_task` give the task with the customer's card read *now* (name, phone, local
  time, last purchase, total spent, bonus balance, sleep score from `derived.py`, preferred
  category), its due window as UTC instants and as text on the customer's clock, and whether it
  is overdue and for how many working days (escalation, `control.py`).
* `record_outcome` applies an outcome in one write transaction:

  ============  ======================================================================
  reached       done
  ordered       done
  refused       done
  unsubscribe   done; consent withdrawn at once on `[tasks] unsubscribe_channels`
                (default phone, sms and email): pending messages `suppressed/unsubscribed`,
                the customer's other open call tasks closed
  callback      stays open, due at the time the client asked for (inside calling hours)
  no_answer     attempts + 1; due again in the calling hours of the next working day in the
                customer's zone (today's, if they have not begun yet); closed after
                `[tasks] max_attempts` (default 3)
  wrong_number  closed; `customers.phone_invalid`, pending sms/phone messages `suppressed/
                invalid_contact`, the customer's other open call tasks closed
  ============  ======================================================================

  `done` means the manager talked to the client; `closed` means the task ended without a
  conversation.  Outcomes are recorded on open tasks only.

Where the history lives: `call_tasks.history` holds the events, oldest first (each: at, actor,
outcome, note, status, attempts, due_from, due_until; or `event: closed` with the reason),
`call_tasks.outcome` and `call_tasks.note` the latest outcome and its note.  A task without
history whose `note` holds text (written by something else) reads as one legacy event.

Access: `actor` is a manager login acting on their own tasks; another manager's task is
`NotFound`, word for word like a task that does not exist.  `actor=None` is the marketer (or the
administrator's command line) and sees everything.
"""

from __future__ import annotations

import json
import time as clock
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from orchestrator.errors import InputError, NotFound
from orchestrator.ledger import PENDING_STATES, unsubscribe_in
from orchestrator.settings import Settings
from orchestrator.storage.engine import write_transaction
from orchestrator.storage.locks import lock_customers
from orchestrator.storage.schema import TASK_STATES, call_tasks, customer_stats, customers, deliveries

UTC = timezone.utc

OUTCOMES: tuple[str, ...] = ("reached", "ordered", "callback", "no_answer", "refused", "wrong_number", "unsubscribe")
STATUSES: tuple[str, ...] = TASK_STATES
# Outcomes in which the manager spoke with the client: a contact (control) and a call that may
# be followed by orders.
CONTACT_OUTCOMES: frozenset[str] = frozenset({"reached", "ordered", "callback", "refused", "unsubscribe"})
_FINAL_STATUS = {"reached": "done", "ordered": "done", "refused": "done", "unsubscribe": "done", "wrong_number": "closed"}
UNSUBSCRIBABLE = ("phone", "sms", "email")
HISTORY_LIMIT = 100          # events kept per task (the first one and the latest ones)
MAX_CALLBACK_DAYS = 366
WINDOW_SEARCH_DAYS = 60      # how far ahead a calling window is looked for
_SOURCE_TEXT = {"column": "the customer's timezone", "city": "the city", "phone": "the phone number"}
_RETRYABLE_SQLSTATES = ("40P01", "40001")  # deadlock with a worker's claim, serialization failure


# --- time -------------------------------------------------------------------------------------


def as_epoch(now: datetime | int | float | None) -> int:
    """Whole Unix seconds; None is the wall clock, a naive datetime is UTC."""
    if now is None:
        return int(clock.time())
    if isinstance(now, datetime):
        return int((now if now.tzinfo else now.replace(tzinfo=UTC)).timestamp())
    return int(now)


def iso(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tz_of(zone: str) -> Any:
    from orchestrator.policy.quiet_hours import zone_info

    try:
        return zone_info(zone)
    except Exception:  # noqa: BLE001 - a zone name the tz database lost: show UTC rather than fail
        return UTC


def local_iso(epoch: int | None, zone: str) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz_of(zone)).isoformat(timespec="minutes")


def window_text(start: int, end: int, zone: str) -> str:
    """`2026-02-24 Tue 10:00–19:00 (Asia/Vladivostok)`: a due window on the customer's clock."""
    tz = tz_of(zone)
    a, b = datetime.fromtimestamp(start, tz), datetime.fromtimestamp(end, tz)
    if a.date() == b.date() or (b - a <= timedelta(days=1) and b.time() == time(0) and b.date() == a.date() + timedelta(days=1)):
        text = f"{a:%Y-%m-%d %a %H:%M}–{b:%H:%M}"
    else:
        text = f"{a:%Y-%m-%d %a %H:%M} – {b:%Y-%m-%d %a %H:%M}"
    return f"{text} ({zone})"


def zone_city(zone: str) -> str:
    """Europe/Moscow → Moscow: how a person names a zone."""
    return zone.rsplit("/", 1)[-1].replace("_", " ")


def zone_note(zone: str, source: str | None) -> str:
    """How the customer's zone was found, as the manager should read it (SPEC 7)."""
    if not source or source == "default":
        return f"local time unknown, guessed {zone_city(zone)}"
    return f"{zone} (from {_SOURCE_TEXT.get(source, source)})"


# --- the customer's calendar ------------------------------------------------------------------


def zone_country(zone: str, settings: Settings) -> str:
    from orchestrator.policy.quiet_hours import zone_country as country_of

    return country_of(zone) or settings.general.country


@lru_cache(maxsize=256)
def _holiday_set(country: str, year: int) -> frozenset[date]:
    import holidays

    try:
        return frozenset(holidays.country_holidays(country, years=year).keys())
    except NotImplementedError:
        return frozenset()


def is_day_off(day: date, zone: str, settings: Settings) -> bool:
    """A day without calls in the zone's calendar: `[quiet_hours] phone_days_off` (weekends and
    the public holidays of the zone's country, else of `[general] country`)."""
    days_off = settings.quiet_hours.phone_days_off
    if "weekends" in days_off and day.weekday() >= 5:
        return True
    return "holidays" in days_off and day in _holiday_set(zone_country(zone, settings), day.year)


def working_days_between(after: date, through: date, zone: str, settings: Settings, cap: int = 3660) -> int:
    """Working days d with after < d <= through (at most `cap` calendar days are looked at)."""
    count, day = 0, after + timedelta(days=1)
    end = min(through, after + timedelta(days=cap))
    while day <= end:
        if not is_day_off(day, zone, settings):
            count += 1
        day += timedelta(days=1)
    return count


def working_days_overdue(due_until: int, now: int, zone: str, settings: Settings) -> int:
    """Working days of the customer's calendar begun since the task's due day: a task due on
    Monday is 1 on Tuesday, 2 on Wednesday, 3 on Thursday (0 while not overdue)."""
    if now < due_until:
        return 0
    tz = tz_of(zone)
    due_day = datetime.fromtimestamp(due_until - 1, tz).date()  # the window ends at, not after, due_until
    return working_days_between(due_day, datetime.fromtimestamp(now, tz).date(), zone, settings)


def is_escalated(due_until: int, now: int, zone: str, settings: Settings) -> bool:
    return working_days_overdue(due_until, now, zone, settings) > settings.tasks.escalate_after_working_days


# --- calling windows --------------------------------------------------------------------------


def _quiet(t: int, zone: str, settings: Settings) -> bool:
    from orchestrator.policy.quiet_hours import is_quiet

    return is_quiet("phone", t, zone, settings.quiet_hours, zone_country(zone, settings))


def window_end(t: int, zone: str, settings: Settings) -> int:
    """The end of the calling window that contains `t`: the first quiet instant after it (the
    start of the phone's quiet hours, or the midnight that begins a day off)."""
    from orchestrator.policy.quiet_hours import channel_spec, wall_instant

    spec = channel_spec("phone", settings.quiet_hours)
    tz = tz_of(zone)
    day = datetime.fromtimestamp(t, tz).date()
    candidates: list[int] = []
    for offset in range(3):
        current = day + timedelta(days=offset)
        if spec.start != spec.end:
            wall = datetime.combine(current, time(spec.start // 3600, spec.start % 3600 // 60))
            found = wall_instant(tz, wall, t)
            if found is not None:
                candidates.append(found)
        if offset:
            found = wall_instant(tz, datetime.combine(current, time(0)), t)
            if found is not None:
                candidates.append(found)
    for candidate in sorted(candidates):
        if _quiet(candidate, zone, settings):
            return candidate
    return t + 86400


def calling_window(t: int, zone: str, settings: Settings) -> tuple[int, int] | None:
    """The first calling window at or after `t` in `zone`: (first allowed minute, its end)."""
    from orchestrator.policy.quiet_hours import next_allowed

    start = next_allowed("phone", t, (zone,), settings.quiet_hours, settings.general.country, t + WINDOW_SEARCH_DAYS * 86400)
    if start is None:
        return None
    return start, window_end(start, zone, settings)


def next_working_window(t: int, zone: str, settings: Settings) -> tuple[int, int]:
    """The calling hours of the next working day after the local day of `t` in `zone` — or of
    that very day when they have not begun yet (an outcome recorded early in the morning)."""
    from orchestrator.policy.quiet_hours import wall_instant

    tz = tz_of(zone)
    today = datetime.fromtimestamp(t, tz).date()
    if _quiet(t, zone, settings):
        found = calling_window(t, zone, settings)
        if found is not None and datetime.fromtimestamp(found[0], tz).date() == today:
            return found
    tomorrow = today + timedelta(days=1)
    midnight = wall_instant(tz, datetime.combine(tomorrow, time(0)), t) or t + 86400
    found = calling_window(midnight, zone, settings)
    return found if found is not None else (midnight, midnight + 86400)


def calling_hours_text(settings: Settings) -> str:
    quiet = settings.quiet_hours
    phone = quiet.ranges.get("phone")
    text = f"calls are quiet {phone}" if phone is not None else "calls have no quiet hours"
    days = " and ".join(quiet.phone_days_off)
    return text + (f", {days} off" if days else "")


# --- history ----------------------------------------------------------------------------------


def events_of(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The outcome events of a task row (see the module docstring)."""
    history = row.get("history")
    if isinstance(history, list):
        return [event for event in history if isinstance(event, dict)]
    return history_of(row.get("note"))


def history_of(note: str | None) -> list[dict[str, Any]]:
    """Events from a `note` written before the history column existed (JSON or plain text)."""
    if not note:
        return []
    if note.startswith('{"v"'):
        try:
            document = json.loads(note)
        except ValueError:
            document = None
        if isinstance(document, dict) and isinstance(document.get("history"), list):
            return [event for event in document["history"] if isinstance(event, dict)]
    return [{"at": None, "actor": None, "outcome": None, "note": note}]


def _trimmed(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(events) > HISTORY_LIMIT:
        events = events[:1] + events[-(HISTORY_LIMIT - 1):]
    return events


def contact_times(events: list[dict[str, Any]]) -> list[int]:
    """When the client was spoken to in this task (events with a contact outcome), as epochs."""
    times = []
    for event in events:
        if event.get("outcome") in CONTACT_OUTCOMES and event.get("at"):
            try:
                times.append(int(datetime.fromisoformat(str(event["at"]).replace("Z", "+00:00")).timestamp()))
            except ValueError:
                continue
    return times


# --- reading ----------------------------------------------------------------------------------

_CARD_COLUMNS = ("name", "first_name", "phone", "phone_invalid", "city", "bonus_balance", "discount_percent",
                 "abc_group", "unsubscribed_phone", "consent_phone")
_DERIVED = ("purchases_count", "total_spent", "last_purchase_at", "days_since_last_purchase",
            "preferred_category", "sleep_score", "is_sleeping")


def _query(now: int, settings: Settings) -> sa.Select:
    from orchestrator.derived import derived_columns

    derived = derived_columns(datetime.fromtimestamp(now, UTC), settings)
    return sa.select(
        call_tasks,
        customers.c.id.label("c_id"),
        *(customers.c[name].label(f"c_{name}") for name in _CARD_COLUMNS),
        *(derived[name].label(f"d_{name}") for name in _DERIVED),
    ).select_from(
        call_tasks.outerjoin(customers, customers.c.id == call_tasks.c.customer_id)
        .outerjoin(customer_stats, customer_stats.c.customer_id == customers.c.id)
    )


def _plain(value: Any) -> Any:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return value


def _card(row: Mapping[str, Any], now: int) -> dict[str, Any]:
    """The live card; a customer no longer in the database shows the snapshot of task creation."""
    snapshot = row["card"] if isinstance(row["card"], Mapping) else {}
    tz = tz_of(row["zone"])
    local = datetime.fromtimestamp(now, tz)
    found = row["c_id"] is not None
    if found:
        score = row["d_sleep_score"]
        card = {
            "name": row["c_name"], "first_name": row["c_first_name"], "phone": row["c_phone"],
            "phone_invalid": bool(row["c_phone_invalid"]), "city": row["c_city"],
            "bonus_balance": row["c_bonus_balance"], "discount_percent": row["c_discount_percent"],
            "abc_group": row["c_abc_group"], "purchases_count": row["d_purchases_count"],
            "total_spent": row["d_total_spent"], "last_purchase_at": _plain(row["d_last_purchase_at"]),
            "days_since_last_purchase": row["d_days_since_last_purchase"],
            "preferred_category": row["d_preferred_category"],
            "sleep_score": round(float(score), 2) if score is not None else None,
            "is_sleeping": bool(row["d_is_sleeping"]) if row["d_is_sleeping"] is not None else None,
            "phone_consent": bool(row["c_consent_phone"]) and row["c_unsubscribed_phone"] is None,
        }
    else:
        card = {key: snapshot.get(key) for key in (
            "name", "first_name", "phone", "city", "bonus_balance", "discount_percent", "abc_group",
            "purchases_count", "total_spent", "last_purchase_at", "preferred_category")}
        card.update(phone_invalid=False, days_since_last_purchase=None, sleep_score=None, is_sleeping=None,
                    phone_consent=None)
    card["customer_found"] = found
    card["local_time"] = local.isoformat(timespec="minutes")
    card["local_time_text"] = f"{local:%a %H:%M}"
    return card


def task_record(row: Mapping[str, Any], settings: Settings, now: int) -> dict[str, Any]:
    """The public shape of a task (list_tasks, get_task, record_outcome, the web pages)."""
    history = events_of(row)
    latest = next((event for event in reversed(history) if event.get("outcome")), None)
    overdue = row["status"] == "open" and now >= row["due_until"]
    late_days = working_days_overdue(row["due_until"], now, row["zone"], settings) if overdue else 0
    return {
        "id": row["id"],
        "delivery_id": row["delivery_id"],
        "campaign": row["campaign"],
        "customer_id": row["customer_id"],
        "manager": row["manager"],
        "status": row["status"],
        "due_from": iso(row["due_from"]),
        "due_until": iso(row["due_until"]),
        "due_from_local": local_iso(row["due_from"], row["zone"]),
        "due_until_local": local_iso(row["due_until"], row["zone"]),
        "due_local": window_text(row["due_from"], row["due_until"], row["zone"]),
        "overdue": overdue,
        "working_days_overdue": late_days,
        "escalated": overdue and late_days > settings.tasks.escalate_after_working_days,
        "attempts": row["attempts"],
        "max_attempts": settings.tasks.max_attempts,
        "outcome": row["outcome"],
        "note": latest.get("note") if latest else (history[-1].get("note") if history else None),
        "history": history,
        "script": row["script"],
        "offer": row["offer"] if row["offer"] is not None else {},
        "zone": row["zone"],
        "zone_source": row["zone_source"],
        "zone_note": zone_note(row["zone"], row["zone_source"]),
        "card": _card(row, now),
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }


def _check_status(status: str | None) -> None:
    if status is not None and status not in STATUSES:
        raise InputError(f"'{status}' is not a task status ({', '.join(STATUSES)})", field="status")


def list_tasks(
    engine: Engine,
    settings: Settings,
    *,
    manager: str | None = None,
    status: str | None = None,
    now: datetime | int | None = None,
    customer_id: str | None = None,
    campaign: str | None = None,
    overdue: bool | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Tasks ordered by due time (then id); `manager` restricts to that manager's own tasks."""
    _check_status(status)
    at = as_epoch(now)
    query = _query(at, settings)
    if manager is not None:
        query = query.where(call_tasks.c.manager == manager)
    if status is not None:
        query = query.where(call_tasks.c.status == status)
    if customer_id is not None:
        query = query.where(call_tasks.c.customer_id == customer_id)
    if campaign is not None:
        query = query.where(call_tasks.c.campaign == campaign)
    if overdue is not None:
        late = sa.and_(call_tasks.c.status == "open", call_tasks.c.due_until <= at)
        query = query.where(late if overdue else sa.not_(late))
    query = query.order_by(call_tasks.c.due_from, call_tasks.c.id)
    if limit:
        query = query.limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [task_record(row, settings, at) for row in rows]


def _task_id(task_id: Any) -> int:
    try:
        value = int(task_id)
    except (TypeError, ValueError):
        raise NotFound(f"no task {str(task_id)[:40]!r}") from None
    if value < 1 or value > 2**63 - 1:
        raise NotFound(f"no task {value}")
    return value


def get_task(
    engine: Engine, settings: Settings, task_id: int, *, actor: str | None = None, now: datetime | int | None = None
) -> dict[str, Any]:
    """One task; NotFound when it does not exist or `actor` is a manager it does not belong to."""
    ident = _task_id(task_id)
    at = as_epoch(now)
    with engine.connect() as conn:
        row = conn.execute(_query(at, settings).where(call_tasks.c.id == ident)).mappings().first()
    if row is None or (actor is not None and row["manager"] != actor):
        raise NotFound(f"no task {ident}")
    return task_record(row, settings, at)


def known_managers(engine: Engine, settings: Settings) -> list[str]:
    """Every manager login the workspace knows: of tasks, of customers, of `[tasks] managers`."""
    with engine.connect() as conn:
        found = set(conn.execute(sa.select(call_tasks.c.manager).distinct()).scalars())
        found |= set(conn.execute(sa.select(customers.c.manager).distinct().where(customers.c.manager.is_not(None))).scalars())
    found |= set(settings.tasks.managers)
    return sorted(m for m in found if m)


# --- outcomes ---------------------------------------------------------------------------------


def clean_note(note: Any, settings: Settings) -> str | None:
    """The note as given (customer-hostile text is only ever escaped where it is shown), bounded.

    Two things no database stores are replaced: NUL characters (PostgreSQL text refuses them) and
    lone UTF-16 surrogates.  A blank note is no note.
    """
    if note is None:
        return None
    if not isinstance(note, str):
        raise InputError("a note is text", field="note")
    text = note.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    if not text.strip():
        return None
    limit = settings.tasks.note_max_chars
    if len(text) > limit:
        raise InputError(f"the note is {len(text)} characters long; at most {limit} are kept ([tasks] note_max_chars)", field="note")
    return text


def _check_outcome(outcome: Any) -> str:
    if outcome not in OUTCOMES:
        shown = str(outcome)[:40]
        raise InputError(f"'{shown}' is not an outcome ({', '.join(OUTCOMES)})", field="outcome")
    return str(outcome)


def _check_channels(channels: Iterable[str] | None, settings: Settings) -> tuple[str, ...]:
    chosen = tuple(settings.tasks.unsubscribe_channels if channels is None else channels)
    for channel in chosen:
        if channel not in UNSUBSCRIBABLE:
            raise InputError(f"'{channel}' is not a channel one can unsubscribe from ({', '.join(UNSUBSCRIBABLE)})", field="channels")
    if not chosen:
        raise InputError("name at least one channel to unsubscribe from", field="channels")
    return tuple(dict.fromkeys(chosen))


def parse_due(due: Any, zone: str) -> int:
    """A callback time: an aware datetime, an ISO text (without an offset: the customer's local
    time, as the client said it on the phone), or Unix seconds."""
    if isinstance(due, datetime):
        moment = due if due.tzinfo else due.replace(tzinfo=tz_of(zone))
        return int(moment.timestamp())
    if isinstance(due, (int, float)) and not isinstance(due, bool):
        return int(due)
    if isinstance(due, str) and due.strip():
        text = due.strip()
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InputError(f"'{text[:40]}' is not a moment like 2026-11-25T15:00 (the customer's local time)", field="due") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=tz_of(zone))
        return int(moment.timestamp())
    raise InputError("a callback needs a due time: when to call the client back", field="due")


def _check_callback(due: Any, zone: str, settings: Settings, now: int) -> int:
    if due is None:
        raise InputError("a callback needs a due time: when to call the client back", field="due")
    at = parse_due(due, zone)
    shown = local_iso(at, zone)
    if at <= now:
        raise InputError(f"the callback time {shown} ({zone}) is not in the future", field="due")
    if at > now + MAX_CALLBACK_DAYS * 86400:
        raise InputError(f"the callback time {shown} is more than {MAX_CALLBACK_DAYS} days ahead", field="due")
    if _quiet(at, zone, settings):
        found = calling_window(at, zone, settings)
        hint = f"; the next calling window opens {local_iso(found[0], zone)}" if found else ""
        raise InputError(
            f"{shown} is outside the client's calling hours in {zone} ({calling_hours_text(settings)}){hint}",
            field="due",
        )
    return at


def _event(at: int, actor: str | None, **fields: Any) -> dict[str, Any]:
    return {"at": iso(at), "actor": actor, **fields}


def _close_others(conn: Connection, task: Mapping[str, Any], at: int, actor: str | None, why: str) -> list[int]:
    """Other open tasks of the same customer can no longer be done: closed, with the reason."""
    others = conn.execute(
        sa.select(call_tasks.c.id, call_tasks.c.note, call_tasks.c.history).where(
            call_tasks.c.customer_id == task["customer_id"], call_tasks.c.status == "open", call_tasks.c.id != task["id"]
        ).order_by(call_tasks.c.id)
    ).all()
    for other in others:
        events = events_of(other._mapping) + [_event(at, actor, event="closed", outcome=None, status="closed",
                                                     note=f"{why} (task {task['id']})")]
        conn.execute(call_tasks.update().where(call_tasks.c.id == other.id, call_tasks.c.status == "open")
                     .values(status="closed", history=_trimmed(events), updated_at=at))
    return [other.id for other in others]


def _mark_phone_invalid(conn: Connection, customer_id: str, at: int, detail: str) -> int:
    conn.execute(customers.update().where(customers.c.id == customer_id).values(phone_invalid=True, updated_at=at))
    result = conn.execute(
        deliveries.update().where(
            deliveries.c.customer_id == customer_id, deliveries.c.channel.in_(("sms", "phone")),
            deliveries.c.status.in_(PENDING_STATES),
        ).values(status="suppressed", reason="invalid_contact", detail=detail, updated_at=at)
    )
    return result.rowcount or 0


def _apply(
    conn: Connection, settings: Settings, task_id: int, outcome: str, note: str | None, due: Any,
    actor: str | None, at: int, channels: Sequence[str],
) -> dict[str, Any]:
    select = sa.select(call_tasks).where(call_tasks.c.id == task_id)
    task = conn.execute(select).mappings().first()
    if task is None or (actor is not None and task["manager"] != actor):
        raise NotFound(f"no task {task_id}")
    # The customer's lock first (as the planner, the workers and `unsubscribe` take it), then the row.
    lock_customers(conn, [task["customer_id"]])
    if conn.dialect.name == "postgresql":
        task = conn.execute(select.with_for_update()).mappings().first()
        assert task is not None  # tasks are never deleted
    if task["status"] != "open":
        done = f" with {task['outcome']}" if task["outcome"] else ""
        raise InputError(f"task {task_id} is already {task['status']}{done}; outcomes are recorded on open tasks",
                         field="outcome")
    who = actor or task["manager"]
    values: dict[str, Any] = {"outcome": outcome, "updated_at": at}
    effects: dict[str, Any] = {}
    attempts = task["attempts"]
    due_from, due_until = task["due_from"], task["due_until"]
    if outcome == "callback":
        due_from = _check_callback(due, task["zone"], settings, at)
        due_until = window_end(due_from, task["zone"], settings)
        status = "open"
    elif outcome == "no_answer":
        attempts += 1
        if attempts >= settings.tasks.max_attempts:
            status = "closed"
        else:
            status = "open"
            due_from, due_until = next_working_window(at, task["zone"], settings)
    else:
        status = _FINAL_STATUS[outcome]
    if outcome == "wrong_number":
        effects["suppressed"] = _mark_phone_invalid(conn, task["customer_id"], at, f"phone marked invalid by {who} (wrong number, task {task_id})")
        effects["closed_tasks"] = _close_others(conn, task, at, actor, "the phone number is wrong")
    elif outcome == "unsubscribe":
        effects["unsubscribed"] = list(channels)
        effects["withdrawn"] = sum(
            unsubscribe_in(conn, task["customer_id"], channel, at, f"unsubscribed (manager {who}, task {task_id})")
            for channel in channels
        )
        if "phone" in channels:
            effects["closed_tasks"] = _close_others(conn, task, at, actor, "the client unsubscribed from calls")
    event = _event(at, actor, outcome=outcome, note=note, status=status, attempts=attempts,
                   due_from=iso(due_from) if status == "open" else None,
                   due_until=iso(due_until) if status == "open" else None)
    values.update(status=status, attempts=attempts, due_from=due_from, due_until=due_until,
                  note=note, history=_trimmed(events_of(task) + [event]))
    conn.execute(call_tasks.update().where(call_tasks.c.id == task_id).values(**values))
    return effects


def _retryable(error: sa.exc.DBAPIError) -> bool:
    return getattr(error.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES


def record_outcome(
    engine: Engine,
    settings: Settings,
    task_id: int,
    outcome: str,
    *,
    note: str | None = None,
    due: datetime | str | int | None = None,
    actor: str | None = None,
    now: datetime | int | None = None,
    channels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Record what came of a call and apply its rules (module docstring) in one transaction.

    `due`: for `callback` only. `channels`: for `unsubscribe` only (default `[tasks]
    unsubscribe_channels`).  Returns the updated task with `effects` (rows withdrawn or
    suppressed, other tasks closed).  InputError names the field; NotFound as in `get_task`.
    """
    at = as_epoch(now)
    ident = _task_id(task_id)
    outcome = _check_outcome(outcome)
    text = clean_note(note, settings)
    if due is not None and outcome != "callback":
        raise InputError(f"only a callback takes a due time, not {outcome}", field="due")
    if channels is not None and outcome != "unsubscribe":
        raise InputError(f"channels go with the unsubscribe outcome, not {outcome}", field="channels")
    chosen = _check_channels(channels, settings) if outcome == "unsubscribe" else ()
    for attempt in range(3):
        try:
            with write_transaction(engine) as conn:
                effects = _apply(conn, settings, ident, outcome, text, due, actor, at, chosen)
            break
        except sa.exc.DBAPIError as error:
            if attempt == 2 or not _retryable(error):
                raise
    record = get_task(engine, settings, ident, actor=actor, now=at)
    record["effects"] = effects
    return record


def campaign_outcomes(engine: Engine, campaign: str) -> dict[str, Any]:
    """Call outcomes of a campaign for its report (SPEC 9 "outcomes appear in the campaign
    report"): tasks by status and by latest outcome."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(call_tasks.c.status, call_tasks.c.outcome, sa.func.count())
            .where(call_tasks.c.campaign == campaign)
            .group_by(call_tasks.c.status, call_tasks.c.outcome)
        ).all()
    record: dict[str, Any] = {"tasks": 0, **{status: 0 for status in STATUSES}, "outcomes": {o: 0 for o in OUTCOMES}}
    for status, outcome, count in rows:
        record["tasks"] += count
        record[status] = record.get(status, 0) + count
        if outcome in record["outcomes"]:
            record["outcomes"][outcome] += count
    return record
