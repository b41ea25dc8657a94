"""Digest emails (SPEC 9): each manager's morning list of the day's calls, and the marketers'
weekly list of escalated tasks.  Sent through the configured email channel (`[channels.email]`).

* `morning_digest(engine, settings, manager, now=...)`: the manager's open tasks due by the end of
  the manager's local day (overdue ones first), each with the live card; None when the manager has
  no email in `[tasks] managers` or nothing to call.
* `weekly_escalation_digest(engine, settings, now=..., to=None)`: tasks overdue by more than
  `[tasks] escalate_after_working_days` working days, per manager with their figures; None when
  nothing is escalated or no marketer is configured.  `escalation_digests` gives one per marketer.
* `send_message(settings, message)`: one message through the email channel.
* `run_due_digests(engine, settings, now=...)`: what the scheduler's job does on every pass —
  sends each digest whose moment has come (morning: `[tasks] digest_time` in the manager's zone,
  on the manager's working days; weekly: `escalation_digest_day` at `escalation_digest_time` in
  `[general] timezone`) and is not older than `digest_grace`.
* `digest_jobs(settings, engine, clock=...)`: `[("digests", 60.0, callable)]`, the shape of
  `scheduler.CampaignScheduler(periodic=...)` jobs.

Each digest is sent at most once, whatever the number of schedulers or restarts: before sending,
a row is claimed in `runs` under the identity (`digest:morning:<login>` or
`digest:escalation:<hash of the address>`, the digest's scheduled moment) — the same unique key that
makes campaign runs happen once; campaign names cannot contain `:`, so they never collide.  A
transient failure releases the claim (the next pass tries again within the grace); a permanent or
unknown outcome is kept (`failed` / `planned` with the outcome in `summary`), never re-sent.

Customer data in the digests is hostile: HTML is rendered with autoescaping, and one-line fields
of the text part lose their line breaks and control characters and are shortened.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
from dataclasses import replace
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from channels.base import Message, Outcome, SendResult, load_channel
from orchestrator.errors import ConfigError
from orchestrator.settings import Settings
from orchestrator.storage.engine import write_transaction
from orchestrator.storage.schema import runs
from orchestrator.tasks import as_epoch, is_day_off, iso, list_tasks, tz_of

log = logging.getLogger(__name__)
UTC = timezone.utc

MORNING = "digest:morning:"
ESCALATION = "digest:escalation:"
TASKS_PATH = "/tasks"          # the web app's task board, linked from the morning digest
MAX_LISTED = 200               # tasks listed in one digest; the rest are counted
FIELD_CHARS = 200              # one-line customer fields in the text part
JOB_INTERVAL = 60.0
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
_REF_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


# --- building -----------------------------------------------------------------------------------


def manager_zone(settings: Settings, manager: str) -> str:
    return (settings.tasks.managers.get(manager) or {}).get("timezone") or settings.general.timezone


def _line(value: Any, limit: int = FIELD_CHARS) -> str:
    """Customer text for one line of the plain-text part."""
    text = _CONTROL.sub(" ", "" if value is None else str(value)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ref(kind: str, who: str, day: date) -> str:
    """A reference safe as a file name (the outbox names files after it) and as a Message-ID part."""
    digest = hashlib.sha1(f"{kind}\x00{who}\x00{day}".encode("utf-8")).hexdigest()[:10]
    return f"digest-{kind}-{_REF_UNSAFE.sub('-', who)[:40].strip('-')}-{day:%Y%m%d}-{digest}"


def _money(value: Any) -> str:
    if value is None:
        return "-"
    try:
        return f"{float(value):,.2f}".replace(",", " ")
    except (TypeError, ValueError):
        return _line(value)


def _offer(offer: Any) -> str:
    if not isinstance(offer, dict) or not offer:
        return ""
    return ", ".join(f"{_line(k, 40)} {_line(v, 80)}" for k, v in offer.items())


@lru_cache(maxsize=1)
def _html_env() -> Any:
    import jinja2

    # autoescape=True (not select_autoescape): templates built from strings are escaped too.
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["money"] = _money
    env.filters["offer"] = _offer
    return env


_MORNING_HTML = """\
<!doctype html>
<html><body style="font-family: sans-serif">
<p>{{ greeting }}, {{ name }}! Calls for {{ day }}: {{ total }} task(s){% if overdue %}, {{ overdue }} overdue{% endif %}.</p>
{% for title, tasks in sections %}{% if tasks %}
<h3>{{ title }}</h3>
<table border="1" cellpadding="4" cellspacing="0" style="border-collapse: collapse">
<tr><th>#</th><th>When (client's time)</th><th>Client</th><th>Phone</th><th>Campaign / offer</th><th>Card</th></tr>
{% for t in tasks %}
<tr>
<td>{{ t.id }}</td>
<td>{{ t.due_local }}{% if t.overdue %}<br><b>overdue{% if t.working_days_overdue %} {{ t.working_days_overdue }} working day(s){% endif %}</b>{% endif %}<br><small>{{ t.zone_note }}; now {{ t.card.local_time_text }}</small></td>
<td>{{ t.card.name or t.customer_id }}</td>
<td>{{ t.card.phone or "-" }}{% if t.card.phone_invalid %} (marked invalid){% endif %}</td>
<td>{{ t.campaign }}{% if t.offer %}<br><small>{{ t.offer|offer }}</small>{% endif %}{% if t.attempts %}<br><small>attempt {{ t.attempts + 1 }} of {{ t.max_attempts }}</small>{% endif %}</td>
<td><small>last purchase {{ t.card.last_purchase_at or "-" }}; total {{ t.card.total_spent|money }}; bonus {{ t.card.bonus_balance|money }}; sleep score {{ t.card.sleep_score if t.card.sleep_score is not none else "-" }}{% if t.card.preferred_category %}; prefers {{ t.card.preferred_category }}{% endif %}</small></td>
</tr>
{% endfor %}
</table>
{% endif %}{% endfor %}
{% if more %}<p>… and {{ more }} more on the task board.</p>{% endif %}
<p><a href="{{ board }}">Open the task board</a></p>
</body></html>
"""

_ESCALATION_HTML = """\
<!doctype html>
<html><body style="font-family: sans-serif">
<p>{{ total }} call task(s) overdue by more than {{ days }} working day(s), as of {{ day }}.</p>
{% for m in managers %}
<h3>{{ m.name }} ({{ m.manager }})</h3>
<p>open {{ m.open }}, overdue {{ m.overdue }}, escalated {{ m.escalated }}, clients without contact for more than {{ no_contact_days }} days: {{ m.no_contact_count }}</p>
<table border="1" cellpadding="4" cellspacing="0" style="border-collapse: collapse">
<tr><th>#</th><th>Client</th><th>Campaign</th><th>Was due (client's time)</th><th>Working days overdue</th></tr>
{% for t in m.escalated_tasks %}
<tr><td>{{ t.id }}</td><td>{{ t.customer_name or t.customer_id }}</td><td>{{ t.campaign }}</td><td>{{ t.due_local }}</td><td>{{ t.working_days_overdue }}</td></tr>
{% endfor %}
</table>
{% endfor %}
</body></html>
"""


def _day_bounds(at: int, zone: str) -> tuple[date, int]:
    from orchestrator.policy.quiet_hours import wall_instant

    tz = tz_of(zone)
    day = datetime.fromtimestamp(at, tz).date()
    end = wall_instant(tz, datetime.combine(day + timedelta(days=1), time(0)), at) or at + 86400
    return day, end


def _task_text(t: dict[str, Any]) -> list[str]:
    card = t["card"]
    late = ""
    if t["overdue"]:
        days = t["working_days_overdue"]
        late = f"  [overdue {days} working day(s)]" if days else "  [overdue]"
    lines = [
        f"#{t['id']}  {t['due_local']}{late}",
        f"    {_line(card.get('name') or t['customer_id'])}, {_line(card.get('phone') or '-')}"
        f"{' (marked invalid)' if card.get('phone_invalid') else ''}; client's time now {card.get('local_time_text')}",
        f"    campaign {_line(t['campaign'])}" + (f"; offer: {_offer(t['offer'])}" if t["offer"] else "")
        + (f"; attempt {t['attempts'] + 1} of {t['max_attempts']}" if t["attempts"] else ""),
        f"    last purchase {card.get('last_purchase_at') or '-'}, total {_money(card.get('total_spent'))}, "
        f"bonus {_money(card.get('bonus_balance'))}, sleep score {card.get('sleep_score') if card.get('sleep_score') is not None else '-'}"
        + (f", prefers {_line(card.get('preferred_category'), 80)}" if card.get("preferred_category") else ""),
        f"    {_line(t['zone_note'])}",
    ]
    return lines


def morning_digest(engine: Engine, settings: Settings, manager: str, *, now: datetime | int) -> Message | None:
    """The manager's calls of the day: open tasks due before the end of their local day."""
    entry = settings.tasks.managers.get(manager) or {}
    address = entry.get("email")
    if not address:
        return None
    at = as_epoch(now)
    day, day_end = _day_bounds(at, manager_zone(settings, manager))
    due = [t for t in list_tasks(engine, settings, manager=manager, status="open", now=at) if t["due_from"] < iso(day_end)]
    if not due:
        return None
    overdue = [t for t in due if t["overdue"]]
    today = [t for t in due if not t["overdue"]]
    shown_overdue = overdue[:MAX_LISTED]
    shown_today = today[: max(0, MAX_LISTED - len(shown_overdue))]
    more = len(due) - len(shown_overdue) - len(shown_today)
    name = entry.get("name") or manager
    board = settings.web.base_url.rstrip("/") + TASKS_PATH
    subject = f"Calls for {day:%d.%m.%Y}: {len(due)} task(s)" + (f", {len(overdue)} overdue" if overdue else "")
    text_lines = [f"Good morning, {_line(name)}! {subject}.", ""]
    for title, tasks in (("Overdue", shown_overdue), ("Today", shown_today)):
        if tasks:
            text_lines += [f"{title}:", ""]
            for task in tasks:
                text_lines += _task_text(task) + [""]
    if more:
        text_lines.append(f"... and {more} more on the task board.")
    text_lines.append(f"Task board: {board}")
    html = _html_env().from_string(_MORNING_HTML).render(
        greeting="Good morning", name=name, day=f"{day:%d.%m.%Y}", total=len(due), overdue=len(overdue),
        sections=[("Overdue", shown_overdue), ("Today", shown_today)], more=more, board=board,
    )
    return Message(
        ref=_ref("morning", manager, day), channel="email", customer_id="", address=address,
        content={"subject": subject, "text": "\n".join(text_lines) + "\n", "html": html},
        headers={"Auto-Submitted": "auto-generated"}, campaign="digest:morning",
    )


def weekly_escalation_digest(
    engine: Engine, settings: Settings, *, now: datetime | int, to: str | None = None, report: dict[str, Any] | None = None,
) -> Message | None:
    """Tasks overdue by more than N working days, per manager; for `to` (default: the first of
    `[tasks] marketers`).  None when nothing is escalated or there is nobody to tell."""
    from orchestrator.control import control_report

    address = to or (settings.tasks.marketers[0] if settings.tasks.marketers else None)
    if not address:
        return None
    at = as_epoch(now)
    report = report if report is not None else control_report(engine, settings, now=at)
    managers = [m for m in report["managers"] if m["escalated_tasks"]]
    total = sum(len(m["escalated_tasks"]) for m in managers)
    if not total:
        return None
    day = datetime.fromtimestamp(at, tz_of(settings.general.timezone)).date()
    days = settings.tasks.escalate_after_working_days
    subject = f"Escalated call tasks: {total} overdue by more than {days} working day(s)"
    lines = [f"{subject}, as of {day:%d.%m.%Y}.", ""]
    for m in managers:
        lines.append(f"{_line(m['name'])} ({_line(m['manager'])}): open {m['open']}, overdue {m['overdue']}, "
                     f"escalated {m['escalated']}, clients without contact for more than "
                     f"{settings.tasks.no_contact_days} days: {m['no_contact_count']}")
        for t in m["escalated_tasks"][:MAX_LISTED]:
            lines.append(f"    #{t['id']}  {_line(t['customer_name'] or t['customer_id'])}  campaign {_line(t['campaign'])}  "
                         f"was due {t['due_local']}  ({t['working_days_overdue']} working days overdue)")
        if len(m["escalated_tasks"]) > MAX_LISTED:
            lines.append(f"    ... and {len(m['escalated_tasks']) - MAX_LISTED} more")
        lines.append("")
    html = _html_env().from_string(_ESCALATION_HTML).render(
        total=total, days=days, day=f"{day:%d.%m.%Y}", no_contact_days=settings.tasks.no_contact_days,
        managers=[{**m, "escalated_tasks": m["escalated_tasks"][:MAX_LISTED]} for m in managers],
    )
    return Message(
        ref=_ref("escalation", address, day), channel="email", customer_id="", address=address,
        content={"subject": subject, "text": "\n".join(lines) + "\n", "html": html},
        headers={"Auto-Submitted": "auto-generated"}, campaign="digest:escalation",
    )


def escalation_digests(engine: Engine, settings: Settings, *, now: datetime | int) -> list[Message]:
    """The weekly digest, one message per address of `[tasks] marketers`."""
    marketers = settings.tasks.marketers
    if not marketers:
        return []
    first = weekly_escalation_digest(engine, settings, now=now, to=marketers[0])
    if first is None:
        return []
    day = datetime.fromtimestamp(as_epoch(now), tz_of(settings.general.timezone)).date()
    return [first] + [replace(first, address=a, ref=_ref("escalation", a, day)) for a in marketers[1:]]


# --- sending ------------------------------------------------------------------------------------


def email_channel(settings: Settings) -> Any:
    spec = settings.channel("email")
    if spec is None:
        raise ConfigError("there is no email channel to send digests through", field="channels.email")
    from orchestrator.runtime import _resolve_paths

    return load_channel("email", spec.backend, _resolve_paths(settings, spec.options))


async def _send(channel: Any, message: Message) -> SendResult:
    await channel.open()
    try:
        return await channel.send(message)
    finally:
        await channel.close()


def send_message(settings: Settings, message: Message, channel: Any = None) -> SendResult:
    """Send one digest through the email channel (a fresh channel unless one is given)."""
    channel = channel or email_channel(settings)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_send(channel, message))
    # Called from inside an event loop (a web handler): run the send on a thread of its own.
    result: list[SendResult] = []
    worker = threading.Thread(target=lambda: result.append(asyncio.run(_send(channel, message))))
    worker.start()
    worker.join()
    return result[0]


# --- the scheduled job --------------------------------------------------------------------------


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _wall(tz: Any, day: date, at_time: time, reference: int) -> int:
    from orchestrator.policy.quiet_hours import wall_instant

    found = wall_instant(tz, datetime.combine(day, at_time), reference - 10 * 86400)
    return found if found is not None else int(datetime.combine(day, at_time, tz).timestamp())


def latest_daily(at: int, zone: str, at_time: time) -> tuple[date, int]:
    """The latest moment <= at showing `at_time` on the clock of `zone`, and its local date."""
    tz = tz_of(zone)
    today = datetime.fromtimestamp(at, tz).date()
    for back in range(3):
        day = today - timedelta(days=back)
        moment = _wall(tz, day, at_time, at)
        if moment <= at:
            return day, moment
    day = today - timedelta(days=3)
    return day, _wall(tz, day, at_time, at)


def latest_weekly(at: int, zone: str, weekday: int, at_time: time) -> tuple[date, int]:
    tz = tz_of(zone)
    today = datetime.fromtimestamp(at, tz).date()
    for back in range(15):
        day = today - timedelta(days=back)
        if day.weekday() == weekday:
            moment = _wall(tz, day, at_time, at)
            if moment <= at:
                return day, moment
    raise AssertionError("a weekday occurs every week")


def _claim(engine: Engine, key: str, fire_at: int, at: int) -> bool:
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        claimed = conn.execute(
            insert(runs).values(campaign=key, fire_at=fire_at, status="planning", started_at=at)
            .on_conflict_do_nothing(index_elements=["campaign", "fire_at"]).returning(runs.c.id)
        ).first()
        return claimed is not None


def _finish(engine: Engine, key: str, fire_at: int, at: int, status: str | None, summary: dict[str, Any]) -> None:
    where = sa.and_(runs.c.campaign == key, runs.c.fire_at == fire_at)
    with write_transaction(engine) as conn:
        if status is None:  # released: the next pass tries again
            conn.execute(runs.delete().where(where))
        else:
            conn.execute(runs.update().where(where).values(status=status, finished_at=at, summary=summary))


def _deliver(engine: Engine, settings: Settings, key: str, fire_at: int, at: int, build: Callable[[], Message | None],
             channel_box: list[Any]) -> str:
    """Claim (key, fire_at), build, send, record.  Returns what happened, in a word or two."""
    if not _claim(engine, key, fire_at, at):
        return "already sent"
    try:
        message = build()
        if message is None:
            _finish(engine, key, fire_at, at, "planned", {"digest": key, "result": "nothing to send"})
            return "nothing to send"
        if not channel_box:
            channel_box.append(email_channel(settings))
        result = send_message(settings, message, channel_box[0])
    except Exception as error:  # noqa: BLE001 - release the claim, let the next pass retry, report
        _finish(engine, key, fire_at, at, None, {})
        log.exception("digest %s of %s: not sent", key, iso(fire_at))
        return f"error: {type(error).__name__}: {error}"
    summary = {"digest": key, "result": result.outcome.value, "provider_id": result.provider_id, "reason": result.reason}
    if result.outcome is Outcome.SENT:
        _finish(engine, key, fire_at, at, "planned", summary)
        return "sent"
    if result.outcome is Outcome.TRANSIENT:
        _finish(engine, key, fire_at, at, None, summary)
        log.warning("digest %s of %s: %s; tried again on the next pass", key, iso(fire_at), result.reason)
        return f"retry: {result.reason}"
    _finish(engine, key, fire_at, at, "failed" if result.outcome is Outcome.PERMANENT else "planned", summary)
    log.error("digest %s of %s: %s (%s)", key, iso(fire_at), result.outcome.value, result.reason)
    return f"{result.outcome.value}: {result.reason}"


def run_due_digests(engine: Engine, settings: Settings, *, now: datetime | int | None = None) -> list[dict[str, Any]]:
    """Send every digest whose moment has come and that was not sent yet (one scheduler pass)."""
    at = as_epoch(now)
    grace = settings.tasks.seconds("digest_grace")
    done: list[dict[str, Any]] = []
    channel_box: list[Any] = []
    for manager, entry in sorted(settings.tasks.managers.items()):
        if not entry.get("email"):
            continue
        zone = manager_zone(settings, manager)
        day, fire_at = latest_daily(at, zone, _clock(settings.tasks.digest_time))
        if at - fire_at >= grace or is_day_off(day, zone, settings):
            continue
        result = _deliver(engine, settings, MORNING + manager, fire_at, at,
                          lambda m=manager: morning_digest(engine, settings, m, now=at), channel_box)
        done.append({"digest": "morning", "to": manager, "fire_at": iso(fire_at), "result": result})
    if settings.tasks.marketers:
        day, fire_at = latest_weekly(at, settings.general.timezone, _DAYS.index(settings.tasks.escalation_digest_day),
                                     _clock(settings.tasks.escalation_digest_time))
        if at - fire_at < grace:
            shared: dict[str, Any] = {}

            def build(address: str) -> Message | None:
                from orchestrator.control import control_report

                if "report" not in shared:
                    shared["report"] = control_report(engine, settings, now=at)
                return weekly_escalation_digest(engine, settings, now=at, to=address, report=shared["report"])

            for address in settings.tasks.marketers:
                key = ESCALATION + hashlib.sha1(address.lower().encode("utf-8")).hexdigest()[:16]
                result = _deliver(engine, settings, key, fire_at, at, lambda a=address: build(a), channel_box)
                done.append({"digest": "escalation", "to": address, "fire_at": iso(fire_at), "result": result})
    return done


def digest_jobs(
    settings: Settings, engine: Engine, *, clock: Callable[[], datetime] | None = None, interval: float = JOB_INTERVAL,
) -> list[tuple[str, float, Callable[[], Any]]]:
    """Periodic jobs for `CampaignScheduler(periodic=...)`: (name, interval in seconds, callable).

    One job, "digests", every `interval` seconds: `run_due_digests` at `clock()` (an aware UTC
    datetime; default the wall clock).  No job when no digest is configured; none either, with a
    warning, when there is no email channel.
    """
    wanted = any(entry.get("email") for entry in settings.tasks.managers.values()) or bool(settings.tasks.marketers)
    if not wanted:
        return []
    if settings.channel("email") is None:
        log.warning("[tasks] names digest recipients but there is no [channels.email]: digests are not sent")
        return []

    def job() -> list[dict[str, Any]]:
        done = run_due_digests(engine, settings, now=clock() if clock else None)
        for record in done:
            if record["result"] != "already sent":
                log.info("digest %s to %s (%s): %s", record["digest"], record["to"], record["fire_at"], record["result"])
        return done

    return [("digests", interval, job)]
