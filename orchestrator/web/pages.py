"""The pages behind the login: campaigns and reports, customers, the task board, control.

Every handler is `async` (forms are read asynchronously) and runs database work in the thread pool.
Access rules (auth.py): `@requires("marketer")` pages answer 403 to a manager; a manager asking for a
task or a customer that is not theirs gets 404, whatever the URL or the query string says.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import quote

import sqlalchemy as sa
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from orchestrator.errors import InputError, NotFound, OrchestratorError
from orchestrator.storage.schema import call_tasks, customers, runs, users
from orchestrator.web import auth
from orchestrator.web.auth import requires

log = logging.getLogger("orchestrator.web")
UTC = timezone.utc
SEARCH_LIMIT = 50
HISTORY_LIMIT = 500


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    return request.app.state.templates.TemplateResponse(request, name, context, status_code=status)


def context(request: Request) -> dict[str, Any]:
    """What every template gets: the user, lazy CSRF token and flash messages, the settings' zone."""
    settings = request.app.state.settings
    return {
        "user": getattr(request.state, "user", None),
        "csrf": lambda: auth.csrf_token(request),
        "flashes": lambda: auth.pop_flash(request),
        "zone": settings.general.timezone,
        "path": request.url.path,
        "urlpart": lambda value: quote(str(value), safe=""),
    }


async def _db(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await run_in_threadpool(function, *args, **kwargs)


# --- login ------------------------------------------------------------------------------------------


async def home(request: Request) -> Response:
    user = await auth.current_user(request)
    if user is None:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse("/campaigns" if user["role"] == "marketer" else "/tasks", status_code=303)


async def login_page(request: Request) -> Response:
    user = await auth.current_user(request)
    target = auth.safe_next(request.query_params.get("next"))
    if user is not None:
        return RedirectResponse(target, status_code=303)
    return _render(request, "login.html", {"next": target, "login": "", "error": ""})


async def login_post(request: Request) -> Response:
    form = await auth.read_form(request)
    login = str(form.get("login") or "")[:200].strip()
    password = str(form.get("password") or "")
    target = auth.safe_next(str(form.get("next") or ""))
    throttle: auth.LoginThrottle = request.app.state.throttle
    address = request.client.host if request.client else "?"
    wait = throttle.blocked_for(login, address)
    if wait:
        minutes = max(1, (wait + 59) // 60)
        return _render(request, "login.html", {
            "next": target, "login": login,
            "error": f"Too many failed attempts. Try again in {minutes} minute{'s' if minutes != 1 else ''}.",
        }, 429)
    user = await auth.log_in(request, login, password)
    if user is None:
        throttle.failed(login, address)
        log.info("failed login for %r from %s", login[:64], address)
        return _render(request, "login.html", {"next": target, "login": login,
                                               "error": "Wrong login or password."}, 401)
    throttle.succeeded(login)
    log.info("%s logged in", user["login"])
    if target == "/":
        target = "/campaigns" if user["role"] == "marketer" else "/tasks"
    return RedirectResponse(target, status_code=303)


async def logout_post(request: Request) -> Response:
    await auth.read_form(request)
    await auth.log_out(request)
    auth.flash(request, "You are logged out.")
    return RedirectResponse("/login", status_code=303)


# --- campaigns -----------------------------------------------------------------------------------


def _schedule_text(campaign: Any) -> str:
    schedule = campaign.schedule
    if schedule is None:
        return "by hand"
    if schedule.cron:
        text = f"cron {schedule.cron}"
    elif schedule.at:
        text = f"once at {schedule.at:%Y-%m-%d %H:%M}"
    else:
        text = f"trigger {schedule.trigger}" + (f" at {schedule.time}" if schedule.time else " daily")
    if schedule.timezone:
        text += f" ({schedule.timezone})"
    if schedule.local_time:
        text += f", delivered at {schedule.local_time} local time"
    return text


def _campaign_list(settings: Any, engine: Any, now: datetime) -> dict[str, Any]:
    from orchestrator.campaigns import campaign_files, fire_times, load_campaign

    with engine.connect() as conn:
        run_rows = conn.execute(
            sa.select(runs.c.campaign, sa.func.count(), sa.func.max(runs.c.fire_at)).group_by(runs.c.campaign)
        ).all()
    run_info = {name: {"runs": count, "last_run": last} for name, count, last in run_rows}
    items, broken = [], []
    for path in campaign_files(settings.campaigns_dir):
        try:
            campaign = load_campaign(path).campaign
        except OrchestratorError as error:
            broken.append({"file": path.name, "error": str(error)})
            continue
        upcoming = []
        try:
            for fire in fire_times(campaign, settings.general.timezone, now, now + timedelta(days=400)):
                upcoming.append(fire)
                if len(upcoming) == 3:
                    break
        except Exception as error:  # noqa: BLE001 - a schedule that cannot be computed is shown as such
            log.warning("campaign %s: next fire times not computable: %s", campaign.name, error)
        info = run_info.pop(campaign.name, {"runs": 0, "last_run": None})
        items.append({
            "name": campaign.name, "description": campaign.description, "category": campaign.category,
            "channels": list(campaign.channels), "schedule": _schedule_text(campaign),
            "next_runs": upcoming, "holdout": campaign.holdout, **info,
        })
    items.sort(key=lambda item: (item["next_runs"][0] if item["next_runs"] else datetime.max.replace(tzinfo=UTC), item["name"]))
    retired = [{"name": name, **info} for name, info in sorted(run_info.items())]
    return {"campaigns": items, "broken": broken, "retired": retired}


@requires("marketer")
async def campaigns_page(request: Request, user: dict[str, Any]) -> Response:
    settings = request.app.state.settings
    data = await _db(_campaign_list, settings, request.app.state.engine, now_utc())
    return _render(request, "campaigns.html", data)


def _charts(report: dict[str, Any]) -> dict[str, Markup]:
    """The SVG charts (our own code draws them and escapes every label): marked safe here only."""
    try:
        from orchestrator.charts import funnel_svg, hours_svg
    except ImportError:
        return {}
    charts: dict[str, Markup] = {}
    for key, draw in (("funnel", funnel_svg), ("hours", hours_svg)):
        try:
            charts[key] = Markup(draw(report))
        except Exception as error:  # noqa: BLE001 - a chart that fails leaves its table
            log.warning("chart %s failed for campaign %s: %s", key, report.get("campaign"), error)
    return charts


@requires("marketer")
async def campaign_page(request: Request, user: dict[str, Any]) -> Response:
    from orchestrator.report import campaign_report

    name = request.path_params["name"]
    settings = request.app.state.settings
    try:
        report = await _db(campaign_report, request.app.state.engine, settings, name, now=now_utc())
    except NotFound:
        raise HTTPException(404, "There is no campaign with this name.") from None
    charts = await _db(_charts, report)
    return _render(request, "campaign.html", {"report": report, "charts": charts})


# --- customers -------------------------------------------------------------------------------------


def _search_customers(engine: Any, text: str) -> list[dict[str, Any]]:
    text = text.strip()[:200]
    if not text:
        return []
    def like(value: str) -> str:
        return "%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"

    digits = "".join(ch for ch in text if ch.isdigit())
    conditions = [customers.c.id == text, customers.c.id.like(like(text), escape="\\"),
                  sa.func.lower(customers.c.email).like(like(text.lower()), escape="\\")]
    # SQLite's lower() knows ASCII only: the spellings a person types are tried as they are.
    for variant in {text, text.lower(), text.capitalize(), text.title()}:
        conditions.append(customers.c.name.like(like(variant), escape="\\"))
    conditions.append(sa.func.lower(customers.c.name).like(like(text.lower()), escape="\\"))
    if len(digits) >= 4:
        conditions.append(customers.c.phone.like(f"%{digits}%"))
    query = (
        sa.select(customers.c.id, customers.c.name, customers.c.city, customers.c.phone, customers.c.email,
                  customers.c.manager)
        .where(sa.or_(*conditions))
        .order_by(sa.case((customers.c.id == text, 0), else_=1), customers.c.name, customers.c.id)
        .limit(SEARCH_LIMIT)
    )
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


@requires("marketer")
async def customers_page(request: Request, user: dict[str, Any]) -> Response:
    query = request.query_params.get("q", "")[:200]
    found = await _db(_search_customers, request.app.state.engine, query) if query.strip() else []
    return _render(request, "customers.html", {"q": query, "found": found, "limit": SEARCH_LIMIT})


def _may_see_customer(engine: Any, user: dict[str, Any], customer_id: str) -> bool:
    """A marketer sees everyone; a manager their own clients (or those they have a task for)."""
    if user["role"] == "marketer":
        return True
    with engine.connect() as conn:
        own = conn.execute(
            sa.select(customers.c.id).where(customers.c.id == customer_id, customers.c.manager == user["login"])
        ).first()
        if own is not None:
            return True
        task = conn.execute(
            sa.select(call_tasks.c.id).where(call_tasks.c.customer_id == customer_id,
                                             call_tasks.c.manager == user["login"]).limit(1)
        ).first()
    return task is not None


CARD_FACTS = (
    ("phone", "Phone"), ("email", "Email"), ("city", "City"), ("manager", "Manager"),
    ("abc_group", "ABC group"), ("bonus_balance", "Bonus balance"), ("discount_percent", "Discount, %"),
    ("birthday", "Birthday"), ("purchases_count", "Purchases"), ("total_spent", "Total spent"),
    ("last_purchase_at", "Last purchase"), ("days_since_last_purchase", "Days since last purchase"),
    ("avg_purchase_interval_days", "Usual interval, days"), ("preferred_category", "Preferred category"),
    ("sleep_score", "Sleep score"), ("is_sleeping", "Sleeping"), ("phone_cap_days", "Agreed call interval, days"),
)
HIDDEN_KEYS = {
    "id", "name", "first_name", "zones", "zone_source", "zone_used", "zone_note", "local_time", "timezone",
    "created_at", "updated_at", "birth_month", "birth_day", "history", "next_allowed", "phone_invalid",
    "consent_email", "consent_sms", "consent_phone", "unsubscribed_email", "unsubscribed_sms",
    "unsubscribed_phone", "seasonal_index", "customer_id", "attrs", "first_purchase_day", "last_purchase_day",
    "clock_last", "usual_gap", "birthday_in_days", "sleep",
}


def _card_view(card: dict[str, Any]) -> dict[str, Any]:
    facts = [(title, card.get(key), key) for key, title in CARD_FACTS if card.get(key) not in (None, "")]
    consents = []
    for channel in ("email", "sms", "phone"):
        unsubscribed = card.get(f"unsubscribed_{channel}")
        consents.append({
            "channel": channel, "consent": bool(card.get(f"consent_{channel}")), "unsubscribed": unsubscribed,
            "next": (card.get("next_allowed") or {}).get(channel) or {"allowed": False, "reason": None},
        })
    extra = [
        (key, value) for key, value in sorted(card.items(), key=lambda kv: str(kv[0]))
        if key not in HIDDEN_KEYS and key not in dict(CARD_FACTS) and not str(key).startswith("season_")
        and value not in (None, "", [], {})
    ]
    history = list(reversed(card.get("history") or []))
    return {"facts": facts, "consents": consents, "extra": extra, "history": history[:HISTORY_LIMIT],
            "history_total": len(history)}


@requires()
async def customer_page(request: Request, user: dict[str, Any]) -> Response:
    from orchestrator.customer_card import customer_card

    customer_id = request.path_params["customer_id"]
    engine, settings = request.app.state.engine, request.app.state.settings
    if not await _db(_may_see_customer, engine, user, customer_id):
        raise HTTPException(404)
    try:
        card = await _db(customer_card, engine, settings, customer_id, now_utc())
    except NotFound:
        raise HTTPException(404, "There is no customer with this id.") from None
    season = None
    if card.get("seasonal_index"):
        try:
            from orchestrator.charts import season_svg

            season = Markup(season_svg(card))
        except Exception as error:  # noqa: BLE001
            log.warning("season chart failed: %s", error)
    return _render(request, "customer.html", {"card": card, "view": _card_view(card), "season": season})


@requires()
async def customer_unsubscribe(request: Request, user: dict[str, Any]) -> Response:
    from orchestrator.ledger import unsubscribe

    form = await auth.read_form(request)
    customer_id = request.path_params["customer_id"]
    engine = request.app.state.engine
    if not await _db(_may_see_customer, engine, user, customer_id):
        raise HTTPException(404)
    channel = str(form.get("channel") or "")
    try:
        withdrawn = await _db(unsubscribe, engine, customer_id, channel, source=f"web, {user['login']}")
    except NotFound:
        raise HTTPException(404, "There is no customer with this id.") from None
    except InputError as error:
        auth.flash(request, error.message, "error")
    else:
        auth.flash(request, f"Unsubscribed from {channel}; {withdrawn} pending message(s) withdrawn.")
    return RedirectResponse(f"/customers/{quote(customer_id, safe='')}", status_code=303)


# --- tasks -------------------------------------------------------------------------------------------


def _managers(engine: Any, settings: Any) -> list[tuple[str, str]]:
    """(login, name to show) of every manager: users of the app, and logins that tasks or customers name."""
    from orchestrator.tasks import known_managers

    with engine.connect() as conn:
        names = {login: name for login, name in conn.execute(
            sa.select(users.c.login, users.c.name).where(users.c.role == "manager"))}
    for login, entry in settings.tasks.managers.items():
        names.setdefault(login, entry.get("name"))
    logins = sorted(set(names) | set(known_managers(engine, settings)))
    return [(login, names.get(login) or login) for login in logins]


TASK_FILTERS = ("open", "overdue", "done", "all")
BOARD_LIMIT = 200


def _board(engine: Any, settings: Any, manager: str | None, show: str, now: datetime) -> list[dict[str, Any]]:
    from orchestrator.tasks import list_tasks

    if show == "overdue":
        return list_tasks(engine, settings, manager=manager, overdue=True, now=now, limit=BOARD_LIMIT + 1)
    status = None if show == "all" else show
    return list_tasks(engine, settings, manager=manager, status=status, now=now, limit=BOARD_LIMIT + 1)


@requires()
async def tasks_page(request: Request, user: dict[str, Any]) -> Response:
    from orchestrator.tasks import OUTCOMES

    engine, settings = request.app.state.engine, request.app.state.settings
    show = request.query_params.get("show", "open")
    if show not in TASK_FILTERS:
        show = "open"
    if user["role"] == "manager":
        manager: str | None = user["login"]  # whatever the query string says
        managers: list[str] = []
    else:
        manager = request.query_params.get("manager") or None
        managers = await _db(_managers, engine, settings)
    tasks = await _db(_board, engine, settings, manager, show, now_utc())
    here = "/tasks" + (f"?{request.url.query}" if request.url.query else "")
    return _render(request, "tasks.html", {
        "tasks": tasks[:BOARD_LIMIT], "truncated": len(tasks) > BOARD_LIMIT, "show": show, "filters": TASK_FILTERS,
        "manager": manager or "", "managers": managers, "names": dict(managers), "outcomes": OUTCOMES, "back": here,
    })


def _actor(user: dict[str, Any]) -> str | None:
    """What tasks.py calls the actor: a manager's login restricts to their own tasks."""
    return user["login"] if user["role"] == "manager" else None


def _own_task(engine: Any, settings: Any, task_id: int, user: dict[str, Any], now: datetime) -> dict[str, Any]:
    from orchestrator.tasks import get_task

    task = get_task(engine, settings, task_id, actor=_actor(user), now=now)
    if user["role"] == "manager" and task.get("manager") != user["login"]:
        raise NotFound(f"no task {task_id}")
    return task


@requires()
async def task_page(request: Request, user: dict[str, Any]) -> Response:
    from orchestrator.tasks import OUTCOMES

    engine, settings = request.app.state.engine, request.app.state.settings
    try:
        task = await _db(_own_task, engine, settings, request.path_params["task_id"], user, now_utc())
    except NotFound:
        raise HTTPException(404) from None
    names = dict(await _db(_managers, engine, settings)) if user["role"] == "marketer" else {}
    return _render(request, "task.html", {"task": task, "outcomes": OUTCOMES, "back": f"/tasks/{task['id']}",
                                          "names": names})


def _record(engine: Any, settings: Any, task_id: int, user: dict[str, Any], outcome: str, note: str | None,
            due: str | None, now: datetime) -> dict[str, Any]:
    """`due`: the form's `datetime-local` text, the client's local time (tasks.parse_due)."""
    from orchestrator.tasks import record_outcome

    _own_task(engine, settings, task_id, user, now)
    return record_outcome(engine, settings, task_id, outcome, note=note, due=due if outcome == "callback" else None,
                          actor=_actor(user), now=now)


@requires()
async def task_outcome(request: Request, user: dict[str, Any]) -> Response:
    form = await auth.read_form(request)
    engine, settings = request.app.state.engine, request.app.state.settings
    task_id = request.path_params["task_id"]
    back = auth.safe_next(str(form.get("back") or ""), "/tasks")
    outcome = str(form.get("outcome") or "")
    note = str(form.get("note") or "")
    due = str(form.get("due") or "").strip()[:40] or None
    try:
        result = await _db(_record, engine, settings, task_id, user, outcome, note or None, due, now_utc())
    except NotFound:
        raise HTTPException(404) from None
    except InputError as error:
        auth.flash(request, f"Task {task_id}: {error.message}", "error")
        return RedirectResponse(back, status_code=303)
    auth.flash(request, f"Task {task_id}: {_outcome_text(outcome, result)}")
    log.info("%s recorded %s on task %s", user["login"], outcome, task_id)
    return RedirectResponse(back, status_code=303)


def _outcome_text(outcome: str, result: dict[str, Any]) -> str:
    from orchestrator.web.formatting import label

    text = f"outcome “{label(outcome)}” saved"
    if result.get("status") == "open":
        text += f"; next due {result.get('due_local')}"
    elif result.get("status") == "closed":
        text += "; the task is closed"
    effects = result.get("effects") or {}
    if effects.get("withdrawn"):
        text += f"; {effects['withdrawn']} pending message(s) withdrawn"
    if effects.get("closed_tasks"):
        text += f"; {len(effects['closed_tasks'])} other task(s) of this client closed"
    return text + "."


# --- control -----------------------------------------------------------------------------------------


@requires()
async def control_page(request: Request, user: dict[str, Any]) -> Response:
    from orchestrator.control import control_report

    engine, settings = request.app.state.engine, request.app.state.settings
    if user["role"] == "manager":
        manager: str | None = user["login"]
        managers: list[str] = []
    else:
        manager = request.query_params.get("manager") or None
        managers = await _db(_managers, engine, settings)
    report = await _db(control_report, engine, settings, manager=manager, now=now_utc())
    names = dict(managers) if managers else {user["login"]: user["name"] or user["login"]}
    return _render(request, "control.html", {"report": report, "manager": manager or "", "managers": managers,
                                             "names": names})
