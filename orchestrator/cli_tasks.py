"""Commands for managers' call tasks and management control (SPEC 9): `from orchestrator.cli import app` and decorate.

    orchestrator tasks [--manager LOGIN] [--status open|done|closed] [--json] [--now ISO]
    orchestrator tasks done ID --outcome O [--note TEXT] [--due ISO] [--manager LOGIN] [--channel CH]
    orchestrator tasks digest (--manager LOGIN | --weekly) [--send] [--now ISO]
    orchestrator control [--manager LOGIN] [--json] [--now ISO]

`--manager` on `tasks done` acts as that manager: another manager's task is "no task N", exactly
like a task that does not exist.  `--due` without an offset is the client's local time.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterable, Optional

import typer

from orchestrator import console
from orchestrator.cli import ConfigOpt, JsonOpt, NowOpt, _state, app, engine_for, parse_now, settings_for
from orchestrator.errors import InputError, NotFound

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from orchestrator.settings import Settings

tasks_app = typer.Typer(help="Managers' call tasks: the board, outcomes, digests (SPEC 9).")
app.add_typer(tasks_app, name="tasks")

ManagerOpt = Annotated[Optional[str], typer.Option("--manager", help="a manager's login: only their own tasks")]
_OPTION_OF_FIELD = {"outcome": "--outcome", "note": "--note", "due": "--due", "channels": "--channel", "status": "--status"}


def _cli_error(error: InputError) -> InputError:
    """The API names its fields (`due`); the command line names its options (`--due`)."""
    if error.field in _OPTION_OF_FIELD and not isinstance(error, NotFound):
        return InputError(error.message, field=_OPTION_OF_FIELD[error.field])
    return error


def _remember_config(config: Path | None) -> None:
    if config is not None:
        _state["config"] = config


def _check_manager(engine: "Engine", settings: "Settings", manager: str | None) -> None:
    from orchestrator.tasks import known_managers

    if manager is not None and manager not in known_managers(engine, settings):
        raise NotFound(f"no manager '{manager}': no tasks, no clients, not in [tasks] managers", field="--manager")


def _cells(rows: Iterable[Iterable[Any]]) -> list[list[Any]]:
    """Rows as text (console.table shows cells as text, never as rich markup)."""
    return [["" if cell is None else str(cell) for cell in row] for row in rows]


def _title(text: str) -> str:
    if not sys.stdout.isatty():
        return text
    from rich.markup import escape

    return escape(text)


def _one_line(value: Any, limit: int = 60) -> str:
    import re

    text = re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]+", " ", "" if value is None else str(value)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


@tasks_app.callback(invoke_without_command=True)
def tasks_list(
    ctx: typer.Context,
    manager: ManagerOpt = None,
    status: Annotated[Optional[str], typer.Option("--status", help="open, done or closed")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="at most this many tasks")] = None,
    config: ConfigOpt = None, now: NowOpt = None, as_json: JsonOpt = False,
) -> None:
    """Call tasks ordered by due time, with the client's card (a manager's own with --manager)."""
    _remember_config(config)
    if ctx.invoked_subcommand is not None:
        return
    from orchestrator.tasks import STATUSES, list_tasks

    if status is not None and status not in STATUSES:
        raise InputError(f"'{status}' is not a task status ({', '.join(STATUSES)})", field="--status")
    settings = settings_for(config)
    engine = engine_for(settings)
    _check_manager(engine, settings, manager)
    records = list_tasks(engine, settings, manager=manager, status=status, now=parse_now(now, settings), limit=limit)
    if as_json:
        for record in records:
            console.json_line(record)
        return
    if not records:
        console.out("no tasks" + (f" for {manager}" if manager else "") + (f" with status {status}" if status else ""))
        return
    columns = ["id", "due (client's time)", "status", "client", "phone", "campaign", "tries", "outcome", "manager"]
    rows = []
    for r in records:
        state = r["status"] + (" OVERDUE" if r["overdue"] else "") + (" ESCALATED" if r["escalated"] else "")
        card = r["card"]
        rows.append([
            r["id"], r["due_local"], state, _one_line(card.get("name") or r["customer_id"], 40),
            _one_line(card.get("phone")) + (" (invalid)" if card.get("phone_invalid") else ""),
            r["campaign"], r["attempts"], r["outcome"] or "", r["manager"],
        ])
    console.table(columns, _cells(rows), title=_title(f"call tasks of {manager}" if manager else "call tasks"))


@tasks_app.command("done")
def tasks_done(
    task_id: Annotated[int, typer.Argument(help="the task's id")],
    outcome: Annotated[str, typer.Option("--outcome", help="reached, ordered, callback, no_answer, refused, wrong_number or unsubscribe")],
    note: Annotated[Optional[str], typer.Option("--note", help="free text: what the client said")] = None,
    due: Annotated[Optional[str], typer.Option("--due", help="callback: when to call back (ISO; without an offset: the client's local time)")] = None,
    manager: Annotated[Optional[str], typer.Option("--manager", help="act as this manager (their own tasks only)")] = None,
    channel: Annotated[Optional[list[str]], typer.Option("--channel", help="unsubscribe: from these channels (default: tasks.unsubscribe_channels in settings)")] = None,
    config: ConfigOpt = None, now: NowOpt = None, as_json: JsonOpt = False,
) -> None:
    """Record the outcome of a call."""
    from orchestrator.tasks import record_outcome

    settings = settings_for(config)
    engine = engine_for(settings)
    try:
        record = record_outcome(engine, settings, task_id, outcome, note=note, due=due, actor=manager,
                                now=parse_now(now, settings), channels=channel or None)
    except InputError as error:
        raise _cli_error(error) from None
    if as_json:
        console.json_line(record)
        return
    line = f"task {record['id']}: {record['outcome']}, now {record['status']}"
    if record["status"] == "open":
        line += f"; due {record['due_local']}"
        if record["outcome"] == "no_answer":
            line += f" (attempt {record['attempts'] + 1} of {record['max_attempts']})"
    console.out(line)
    effects = record.get("effects") or {}
    if "unsubscribed" in effects:
        console.out(f"unsubscribed from {', '.join(effects['unsubscribed'])}; {effects['withdrawn']} pending message(s) withdrawn")
    if "suppressed" in effects:
        console.out(f"phone marked invalid; {effects['suppressed']} pending sms/phone message(s) suppressed")
    if effects.get("closed_tasks"):
        console.out("also closed: " + ", ".join(f"task {i}" for i in effects["closed_tasks"]))


@tasks_app.command("digest")
def tasks_digest(
    manager: Annotated[Optional[str], typer.Option("--manager", help="this manager's morning digest")] = None,
    weekly: Annotated[bool, typer.Option("--weekly", help="the marketers' weekly digest of escalated tasks")] = False,
    send: Annotated[bool, typer.Option("--send", help="send it now through the email channel")] = False,
    config: ConfigOpt = None, now: NowOpt = None, as_json: JsonOpt = False,
) -> None:
    """Show a digest email as it would go out now (or send it with --send)."""
    from orchestrator.digests import escalation_digests, morning_digest, send_message

    if bool(manager) == weekly:
        raise InputError("give either --manager LOGIN or --weekly")
    settings = settings_for(config)
    engine = engine_for(settings)
    moment = parse_now(now, settings)
    if manager:
        _check_manager(engine, settings, manager)
        if not (settings.tasks.managers.get(manager) or {}).get("email"):
            raise InputError(f"manager '{manager}' has no email in [tasks] managers", field="--manager")
        message = morning_digest(engine, settings, manager, now=moment)
        messages = [message] if message else []
    else:
        if not settings.tasks.marketers:
            raise InputError("there is no marketer to write to ([tasks] marketers)", field="--weekly")
        messages = escalation_digests(engine, settings, now=moment)
    if not messages:
        if as_json:
            console.json_line({"to": manager or "marketers", "digest": None})
        else:
            console.out("nothing to send: " + ("no calls due today" if manager else "no escalated tasks"))
        return
    failed = False
    for message in messages:
        record: dict[str, Any] = {"to": message.address, "subject": message.content["subject"]}
        if send:
            result = send_message(settings, message)
            record.update(result=result.outcome.value, reason=result.reason)
            failed = failed or result.outcome.value != "sent"
        if as_json:
            console.json_line({**record, "text": message.content["text"], "html": message.content["html"]})
        else:
            console.out(f"To: {message.address}\nSubject: {message.content['subject']}\n")
            console.out(message.content["text"])
            if send:
                console.out(f"-> {record['result']}" + (f": {record['reason']}" if record["reason"] else ""))
    if failed:
        raise typer.Exit(1)


@app.command()
def control(
    manager: Annotated[Optional[str], typer.Option("--manager", help="one manager's own figures")] = None,
    config: ConfigOpt = None, now: NowOpt = None, as_json: JsonOpt = False,
) -> None:
    """Management control: per manager open, overdue, done tasks, outcomes, orders after calls,
    clients without contact, escalated tasks (SPEC 9)."""
    from orchestrator.control import control_report

    settings = settings_for(config)
    engine = engine_for(settings)
    _check_manager(engine, settings, manager)
    report = control_report(engine, settings, manager=manager, now=parse_now(now, settings))
    limits = report["settings"]
    if as_json:
        for record in report["managers"]:
            console.json_line({"type": "manager", "generated_at": report["generated_at"], **limits, **record})
        if manager is None:
            console.json_line({"type": "totals", "generated_at": report["generated_at"], **limits, **report["totals"]})
        return
    if not report["managers"]:
        console.out("no managers yet: no call tasks, no clients with a manager, none in [tasks] managers")
        return
    days = limits["no_contact_days"]
    columns = ["manager", "open", "overdue", "escalated", "done", "closed", "calls", "calls→order",
               "orders", "amount", "clients", f"no contact >{days}d"]
    keys = ["open", "overdue", "escalated", "done", "closed", "calls", "calls_followed_by_order",
            "orders_after_calls", "orders_amount", "clients", "no_contact_count"]
    rows = [[m["manager"]] + [m[k] for k in keys] for m in report["managers"]]
    if manager is None and len(report["managers"]) > 1:
        rows.append(["total"] + [report["totals"][k] for k in keys])
    console.table(columns, _cells(rows), title=f"management control at {report['generated_at']} "
                  f"(orders within {limits['orders_window_days']} days after a call; escalated after "
                  f"{limits['escalate_after_working_days']} working days overdue)")
    for m in report["managers"]:
        outcomes = ", ".join(f"{k} {v}" for k, v in m["outcomes"].items() if v)
        if not (outcomes or m["overdue_tasks"] or m["no_contact"]):
            continue
        console.out("")
        console.out(f"{m['manager']}: outcomes: {outcomes or 'none yet'}")
        if m["overdue_tasks"]:
            console.table(["task", "client", "campaign", "was due (client's time)", "working days overdue", "escalated"],
                          _cells([t["id"], _one_line(t["customer_name"] or t["customer_id"], 40), t["campaign"], t["due_local"],
                                  t["working_days_overdue"], "ESCALATED" if t["escalated"] else ""] for t in m["overdue_tasks"]),
                          title=_title(f"{m['manager']}: overdue tasks"))
        if m["no_contact"]:
            console.table(["client", "name", "last contact", "channel", "days"],
                          _cells([c["customer_id"], _one_line(c["name"], 40), c["last_contact"] or "never",
                                  c["last_contact_channel"] or "", c["days_since_contact"] if c["days_since_contact"] is not None else ""]
                                 for c in m["no_contact"]),
                          title=_title(f"{m['manager']}: {m['no_contact_count']} client(s) without contact for more than {days} days"
                                       + (f" (first {len(m['no_contact'])})" if len(m["no_contact"]) < m["no_contact_count"] else "")))
