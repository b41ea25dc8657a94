"""The `orchestrator` command line (SPEC 10).

Exit codes: 0 success, 2 bad input or usage, 3 an import with rejected rows, 1 anything else.
Heavy modules (SQLAlchemy, Jinja2, babel, phonenumbers) are imported inside the commands that use
them, so that `--help` and small commands answer at once.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from orchestrator import console
from orchestrator.errors import InputError, OrchestratorError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from orchestrator.settings import Settings

UTC = timezone.utc

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Loyalty campaign orchestrator: whom to contact, through which channel, when, and how often.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
import_app = typer.Typer(no_args_is_help=True, help="Import customers or purchases from CSV (SPEC 3).")
segment_app = typer.Typer(no_args_is_help=True, help="List and inspect segments.")
customer_app = typer.Typer(no_args_is_help=True, help="Look at one customer.")
app.add_typer(import_app, name="import")
app.add_typer(segment_app, name="segment")
app.add_typer(customer_app, name="customer")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="settings.toml of the workspace (default ./settings.toml or $ORCHESTRATOR_SETTINGS)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON object per line, for scripts")]
NowOpt = Annotated[Optional[str], typer.Option("--now", help="pretend it is this moment (ISO-8601; without an offset: the settings' zone)")]

_state: dict[str, Any] = {"config": None}


@app.callback()
def _root(config: ConfigOpt = None) -> None:
    _state["config"] = config


# --- shared plumbing -------------------------------------------------------------------------


def settings_for(config: Path | None) -> "Settings":
    from orchestrator.settings import load_settings

    return load_settings(config or _state["config"])


def engine_for(settings: "Settings") -> "Engine":
    from orchestrator.storage.engine import connect

    return connect(settings.database_url)


def parse_now(now: str | None, settings: "Settings") -> datetime:
    from zoneinfo import ZoneInfo

    if not now:
        return datetime.now(UTC).replace(microsecond=0)
    try:
        moment = datetime.fromisoformat(now.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"'{now}' is not an ISO-8601 moment like 2026-11-25T10:00", field="--now") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(settings.general.timezone))
    return moment.astimezone(UTC)


def _rel(settings: "Settings", path: Path) -> str:
    try:
        return str(path.resolve().relative_to(settings.root))
    except ValueError:
        return str(path)


# --- import ----------------------------------------------------------------------------------


PROBLEMS_SHOWN = 50


def _parse_map(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    mapping = {}
    for pair in text.split(","):
        source, sep, target = pair.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise InputError(f"'{pair}' is not a pair like Код=id", field="--map")
        mapping[source.strip()] = target.strip()
    return mapping


def _import(kind: str, file: Path, config: Path | None, encoding: str | None, delimiter: str | None,
            column_map: str | None, errors: Path | None, as_json: bool) -> None:
    from orchestrator import importer

    settings = settings_for(config)
    mapping = _parse_map(column_map)
    if delimiter == "\\t" or (delimiter or "").lower() == "tab":
        delimiter = "\t"
    engine = engine_for(settings)
    total = file.stat().st_size if file.exists() else 0
    run = importer.import_customers if kind == "customers" else importer.import_purchases
    with console.byte_progress(f"import {kind}", total, enabled=not as_json) as bar:
        report = run(engine, file, settings, encoding=encoding, delimiter=delimiter, column_map=mapping, progress=bar)
    if errors:
        report.write_errors_csv(errors)
    if as_json:
        console.json_line(report.to_dict())
    else:
        duplicates = f", {report.duplicates} already there" if report.duplicates else ""
        console.out(f"{file}: {report.rows_read} rows read, {report.inserted} inserted, "
                    f"{report.updated} updated{duplicates}, {report.rejected} rejected")
        shown = report.problems[:PROBLEMS_SHOWN]
        for problem in shown:
            console.out(str(problem) + ("" if problem.rejected else " (row kept without it)"))
        hidden = len(report.problems) - len(shown) + report.problems_omitted
        if hidden:
            console.out(f"... and {hidden} more problems" + ("" if errors else " (--errors FILE writes them all)"))
    raise typer.Exit(report.exit_code)


@import_app.command("customers")
def import_customers(
    file: Path, config: ConfigOpt = None,
    encoding: Annotated[Optional[str], typer.Option(help="utf-8, utf-8-sig or cp1251 (default: detected)")] = None,
    delimiter: Annotated[Optional[str], typer.Option(help="',' ';' or tab (default: detected)")] = None,
    map: Annotated[Optional[str], typer.Option("--map", help="rename columns: \"Код=id,Телефон=phone\"")] = None,
    errors: Annotated[Optional[Path], typer.Option(help="write every rejected row's problems to this CSV")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Import or update customers (upsert by id)."""
    _import("customers", file, config, encoding, delimiter, map, errors, as_json)


@import_app.command("purchases")
def import_purchases(
    file: Path, config: ConfigOpt = None,
    encoding: Annotated[Optional[str], typer.Option(help="utf-8, utf-8-sig or cp1251 (default: detected)")] = None,
    delimiter: Annotated[Optional[str], typer.Option(help="',' ';' or tab (default: detected)")] = None,
    map: Annotated[Optional[str], typer.Option("--map", help="rename columns: \"Дата=date,Сумма=amount\"")] = None,
    errors: Annotated[Optional[Path], typer.Option(help="write every rejected row's problems to this CSV")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Import purchases (idempotent) and refresh the derived statistics."""
    _import("purchases", file, config, encoding, delimiter, map, errors, as_json)


# --- segments --------------------------------------------------------------------------------


@segment_app.command("list")
def segment_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The segments of the workspace."""
    from orchestrator.segments import load_segments

    settings = settings_for(config)
    segments = load_segments(settings.segments_dir)
    if as_json:
        for name, segment in segments.items():
            console.json_line({"name": name, "description": segment.description, "kind": "sql" if segment.sql else "where"})
        return
    console.table(["segment", "kind", "description"],
                  [(n, "sql" if s.sql else "where", s.description) for n, s in segments.items()])


@segment_app.command("show")
def segment_show(
    name: str, config: ConfigOpt = None, now: NowOpt = None, as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option(help="how many members to show")] = 10,
) -> None:
    """The number of members of a segment and a sample."""
    from orchestrator.errors import NotFound
    from orchestrator.segments import load_segment, segment_count, segment_sample, validate_segment

    settings = settings_for(config)
    path = settings.segments_dir / f"{name}.yaml"
    if not path.exists():
        raise NotFound(f"no segment '{name}' (expected {_rel(settings, path)})")
    segment = load_segment(path)
    engine = engine_for(settings)
    validate_segment(segment, engine)
    moment = parse_now(now, settings)
    count = segment_count(engine, segment, now=moment, settings=settings)
    sample = segment_sample(engine, segment, now=moment, settings=settings, limit=limit)
    columns = ["id", "name", "city", "phone", "email", "purchases_count", "days_since_last_purchase", "sleep_score"]
    if as_json:
        console.json_line({"segment": name, "count": count, "sample": [{k: r.get(k) for k in columns} for r in sample]})
        return
    console.out(f"{name}: {count} customers" + (f" — {segment.description}" if segment.description else ""))
    if sample:
        console.table(columns, [[_short(r.get(c)) for c in columns] for r in sample])


def _short(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.2f}"
    return value


# --- validate, plan, run, simulate -------------------------------------------------------------


@app.command()
def validate(
    files: Annotated[Optional[list[Path]], typer.Argument(help="only these files (default: the whole workspace)")] = None,
    config: ConfigOpt = None, now: NowOpt = None, as_json: JsonOpt = False,
) -> None:
    """Check settings, segments, templates and campaigns; render every template for every member."""
    from orchestrator.validate import validate as run_validate

    settings = settings_for(config)
    engine = engine_for(settings)
    with console.progress("render for every member", None, enabled=not as_json) as bar:
        report = run_validate(settings, engine, files or None, now=parse_now(now, settings), progress=bar)
    if as_json:
        for check in report.campaigns:
            console.json_line({"campaign": check.name, "members": check.members, "rendered": dict(check.rendered),
                               "sms_parts": dict(check.sms_parts), "sms_max_units": check.sms_max_units})
        for problem in report.problems:
            console.json_line({"problem": problem})
    else:
        for check in report.campaigns:
            sms = ""
            if check.sms_parts:
                parts = ", ".join(f"{p} part{'s' if p != 1 else ''}: {count}" for p, count in sorted(check.sms_parts.items()))
                sms = f"; SMS {'/'.join(sorted(check.sms_encodings))}, longest {check.sms_max_units} units ({parts})"
            rendered = ", ".join(f"{c} {n}" for c, n in check.rendered.items())
            console.out(f"campaign {check.name}: {check.members} members, rendered {rendered or 'nothing'}{sms}")
        for problem in report.problems:
            console.err(problem)
        console.out(f"{len(report.checked_files)} files checked, {len(report.problems)} problem(s)")
    if not report.ok:
        raise typer.Exit(2)


def _prepare(settings: "Settings", engine: "Engine", name: str):  # type: ignore[no-untyped-def]
    from orchestrator.campaigns import find_campaign
    from orchestrator.planner import prepare

    return prepare(settings, find_campaign(settings.campaigns_dir, name), engine=engine)


def _fire_time(settings: "Settings", prepared: Any, moment: datetime, *, for_plan: bool) -> datetime:
    from orchestrator.campaigns import latest_fire_time, next_fire_time

    campaign = prepared.campaign
    fire = latest_fire_time(campaign, settings.general.timezone, moment)
    if fire is None and for_plan:
        fire = next_fire_time(campaign, settings.general.timezone, moment)
    if fire is None:
        upcoming = next_fire_time(campaign, settings.general.timezone, moment)
        when = f"; it is scheduled for {upcoming:%Y-%m-%d %H:%M} UTC" if upcoming else ""
        raise InputError(f"campaign '{campaign.name}' has no run due yet{when} (use --now to pretend)")
    return fire


def _decision_record(row: dict[str, Any]) -> dict[str, Any]:
    from orchestrator.planner import iso

    payload = row.get("payload") or {}
    record = {
        "customer_id": row["customer_id"], "channel": row["channel"], "status": row["status"],
        "reason": row["reason"], "send_at": iso(row["send_at"]),
        "send_at_local": _local_text(row["send_at"], row["zone"]),
        "zone": row["zone"], "zone_source": row["zone_source"], "detail": row["detail"],
    }
    if "sms" in payload:
        record["sms_parts"] = payload["sms"]["parts"]
    return record


@lru_cache(maxsize=4096)
def _local_text(send_at: int | None, zone: str | None) -> str | None:
    """Recipients of one run share a few send times and zones: format each pair once."""
    from zoneinfo import ZoneInfo

    if send_at is None or not zone:
        return None
    return datetime.fromtimestamp(send_at, ZoneInfo(zone)).isoformat(timespec="minutes")


@app.command()
def plan(campaign: str, config: ConfigOpt = None, now: NowOpt = None, as_json: JsonOpt = False) -> None:
    """Dry run: one decision per recipient and a summary; changes nothing."""
    from orchestrator.planner import plan_run

    settings = settings_for(config)
    engine = engine_for(settings)
    prepared = _prepare(settings, engine, campaign)
    fire = _fire_time(settings, prepared, parse_now(now, settings), for_plan=True)
    printed = [False]

    def show(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            record = _decision_record(row)
            if as_json:
                console.json_line({"type": "decision", **record})
            else:
                if not printed[0]:
                    console.out("customer  channel  decision  send at (UTC)  local  zone (source)  detail")
                    printed[0] = True
                what = "planned" if record["status"] == "planned" else f"suppressed:{record['reason']}"
                local = record["send_at_local"] or "-"
                zone = f"{record['zone'] or '-'} ({record['zone_source']})"
                extra = f"sms {record['sms_parts']} part(s)" if record.get("sms_parts") else ""
                console.out("  ".join(str(x) for x in (record["customer_id"], record["channel"], what,
                                                        record["send_at"] or "-", local, zone,
                                                        "; ".join(filter(None, [record["detail"], extra])) or "")).rstrip())

    # The bar (stderr) only when the decisions go elsewhere: both on one terminal would garble.
    with console.progress(f"plan {campaign}", None, enabled=not sys.stdout.isatty()) as bar:
        summary = plan_run(engine, engine, prepared, fire, dry_run=True, on_rows=show, progress=bar)
    _print_summary(summary, as_json, heading="plan (nothing written)")


def _print_summary(summary: Any, as_json: bool, *, heading: str) -> None:
    record = summary.to_dict()
    if as_json:
        console.json_line({"type": "summary", **record})
        return
    console.out("")
    console.out(f"{heading}: campaign {record['campaign']}, run at {record['fire_at']}"
                + (f" (run {record['run']})" if record["run"] else ""))
    if record["already_planned"]:
        console.out("this run was already planned: nothing new (run identity = campaign + fire time)")
    console.out(f"  targeted   {record['targeted']}")
    console.out(f"  planned    {record['planned']}" + (
        "  (" + ", ".join(f"{k} {v}" for k, v in sorted(record["planned_by_channel"].items())) + ")" if record["planned_by_channel"] else ""))
    console.out(f"  suppressed {record['suppressed']}" + (
        "  (" + ", ".join(f"{k} {v}" for k, v in sorted(record["suppressed_by_reason"].items())) + ")" if record["suppressed_by_reason"] else ""))


@app.command()
def run(campaign: str, config: ConfigOpt = None, now: NowOpt = None, as_json: JsonOpt = False) -> None:
    """Plan the run for real into the ledger (the scheduler does this on schedule)."""
    from orchestrator.planner import plan_run

    settings = settings_for(config)
    engine = engine_for(settings)
    prepared = _prepare(settings, engine, campaign)
    fire = _fire_time(settings, prepared, parse_now(now, settings), for_plan=False)
    with console.progress(f"run {campaign}", None, enabled=not as_json) as bar:
        summary = plan_run(engine, engine, prepared, fire, dry_run=False, progress=bar)
    _print_summary(summary, as_json, heading="run")


@app.command()
def simulate(
    start: Annotated[str, typer.Option(help="first day (ISO date or moment)")],
    days: Annotated[int, typer.Option(min=1, max=366, help="how many days")] = 30,
    campaigns: Annotated[Optional[list[str]], typer.Argument(help="only these campaigns (default: every scheduled one)")] = None,
    config: ConfigOpt = None, as_json: JsonOpt = False,
) -> None:
    """Run every scheduled campaign in virtual time; sends nothing, writes nothing to the ledger."""
    from orchestrator.campaigns import campaign_files, load_campaign
    from orchestrator.planner import prepare
    from orchestrator.simulate import schedule_runs, simulate as run_simulation

    settings = settings_for(config)
    engine = engine_for(settings)
    moment = parse_now(start, settings)
    files = [load_campaign(p) for p in campaign_files(settings.campaigns_dir)]
    if campaigns:
        known = {f.campaign.name for f in files}
        for name in campaigns:
            if name not in known:
                raise InputError(f"no campaign '{name}' (known: {', '.join(sorted(known))})")
        files = [f for f in files if f.campaign.name in campaigns]
    prepared = [prepare(settings, f, engine=engine) for f in files if f.campaign.schedule is not None]
    schedule = schedule_runs(settings, prepared, moment, days)
    with console.progress("simulate", len(schedule), enabled=not as_json) as bar:
        result = run_simulation(settings, engine, engine, schedule, moment, days, progress=bar)
    if as_json:
        for record in result.to_records():
            console.json_line(record)
        return
    _print_simulation(result, settings)


def _print_simulation(result: Any, settings: "Settings") -> None:
    channels = sorted({c for counts in result.per_day.values() for c in counts})
    console.out(f"simulation from {result.start:%Y-%m-%d %H:%M} UTC, {result.days} days, "
                f"{len(result.runs)} runs (nothing sent, real ledger untouched)")
    console.table(["date"] + channels + ["total"],
                  [[day] + [counts.get(c, 0) for c in channels] + [sum(counts.values())]
                   for day, counts in sorted(result.per_day.items())],
                  title=f"messages per day ({settings.general.timezone} dates)")
    console.out("")
    console.out("runs:")
    for summary in result.runs:
        console.out(f"  {summary.fire_at:%Y-%m-%d %H:%M}Z  {summary.campaign}: targeted {summary.targeted}, "
                    f"planned {summary.planned}, suppressed {sum(summary.suppressed.values())}")
    console.out("suppressed by reason: " + (", ".join(f"{k} {v}" for k, v in result.suppressed.most_common()) or "none"))
    if result.peak_hour:
        console.out(f"peak hour: {result.peak_hour[0]} ({settings.general.timezone}) with {result.peak_hour[1]} messages; "
                    f"busiest hour on the recipients' own clocks: {result.peak_local_hour[0]:02d}:00 ({result.peak_local_hour[1]})")
    for channel, worst in sorted(result.max_per_window.items()):
        console.out(f"most {channel} messages to one customer within one cap window ({worst['cap']}): "
                    f"{worst['messages']} (customer {worst['customer_id']})")


# --- ledger, report, customers --------------------------------------------------------------


@app.command()
def deliveries(
    campaign: Annotated[Optional[str], typer.Option(help="only this campaign")] = None,
    customer: Annotated[Optional[str], typer.Option(help="only this customer id")] = None,
    status: Annotated[Optional[str], typer.Option(help="only this status")] = None,
    limit: Annotated[Optional[int], typer.Option(help="at most this many rows")] = None,
    config: ConfigOpt = None, as_json: JsonOpt = False,
) -> None:
    """Ledger rows."""
    from orchestrator.ledger import list_deliveries
    from orchestrator.storage.schema import DELIVERY_STATES

    if status and status not in DELIVERY_STATES:
        raise InputError(f"'{status}' is not a status ({', '.join(DELIVERY_STATES)})", field="--status")
    settings = settings_for(config)
    rows = list_deliveries(engine_for(settings), campaign=campaign, customer=customer, status=status, limit=limit)
    if as_json:
        for record in rows:
            console.json_line(record)
        return
    columns = ["id", "run", "campaign", "customer_id", "channel", "status", "reason", "send_at", "sent_at", "attempts"]
    console.table(columns, ([r[c] for c in columns] for r in rows))


@app.command()
def report(campaign: str, config: ConfigOpt = None, now: NowOpt = None, as_json: JsonOpt = False) -> None:
    """A campaign per run: funnel, call outcomes and notes, sends per local hour, purchases within
    30 days (recipients against the holdout)."""
    from orchestrator.report import campaign_report

    settings = settings_for(config)
    data = campaign_report(engine_for(settings), settings, campaign, now=parse_now(now, settings))
    if as_json:
        _report_json(data)
    else:
        _report_text(data)


def _report_json(data: dict[str, Any]) -> None:
    from orchestrator.report import flat_funnel

    name = data["campaign"]
    for run in data["runs"]:
        console.json_line({"type": "funnel", "campaign": name, **flat_funnel(run["run"], run["fire_at"], run["funnel"], run["status"])})
    if data["runs"]:
        console.json_line({"type": "funnel", "campaign": name, **flat_funnel("all", None, data["funnel"]),
                           "distinct_customers": data["distinct_customers"]})
    console.json_line({"type": "calls", "campaign": name, "tasks": data["call_tasks"], "outcomes": data["call_outcomes"],
                       "per_run": {str(r["run"]): r["call_outcomes"] for r in data["runs"] if r["call_outcomes"]}})
    for note in data["notes"]:
        console.json_line({"type": "note", "campaign": name, **note})
    console.json_line({"type": "local_hours", "campaign": name, "hours": data["sends_per_local_hour"],
                       "pending": data["pending_per_local_hour"]})
    for run in data["runs"]:
        console.json_line({"type": "purchases_after", "campaign": name, "run": run["run"], "fire_at": run["fire_at"],
                           **run["purchases_after"]})
    console.json_line({"type": "purchases_after", "campaign": name, "run": "all", **data["purchases_after"]})


def _report_text(data: dict[str, Any]) -> None:
    name = data["campaign"]
    if not data["runs"]:
        console.out(f"campaign {name}: no runs yet")
        return
    columns = ["targeted", "suppressed", "planned", "queued", "sent", "failed", "unknown", "cancelled"]
    rows = []
    for run in [*data["runs"], {"run": "all", "fire_at": "", "status": "", "funnel": data["funnel"]}]:
        funnel = run["funnel"]
        counts = [funnel["suppressed_total"] if c == "suppressed" else funnel[c] for c in columns]
        reasons = ", ".join(f"{k} {v}" for k, v in funnel["suppressed"].items())
        rows.append([run["run"], run["fire_at"], run["status"], *counts, reasons])
    holdout = f", holdout {data['holdout']}" if data["holdout"] else ""
    console.table(["run", "fire_at", "status", *columns, "suppressed by reason"], rows,
                  title=f"campaign {name}{holdout} ({data['distinct_customers']} distinct customers)")
    tasks = data["call_tasks"]
    if tasks["total"]:
        console.out("")
        console.out(f"call tasks: {tasks['total']} ({tasks.get('open', 0)} open, {tasks.get('done', 0)} done, "
                    f"{tasks['without_outcome']} without an outcome yet)")
        console.out("outcomes: " + (", ".join(f"{k} {v}" for k, v in data["call_outcomes"].items()) or "none yet"))
        if data["notes"]:
            shown = len(data["notes"])
            more = f", newest {shown} of {data['notes_total']}" if data["notes_total"] > shown else ""
            console.out(f"managers' notes{more}:")
            for note in data["notes"]:
                text = " ".join(str(note["note"]).split())  # a note's newlines would break the listing
                console.out(f"  {note['at']}  {note['manager']}  customer {note['customer_id']}  "
                            f"[{note['outcome'] or 'no outcome'}]  {text}")
    console.out("")
    _hours_text("sent per local hour", data["sends_per_local_hour"])
    if any(data["pending_per_local_hour"]):
        _hours_text("waiting, per local hour", data["pending_per_local_hour"])
    console.out("")
    _purchases_text(data)


_BLOCKS = " ▁▂▃▄▅▆▇█"


def _spark(values: list[float], *, root: bool = False) -> str:
    """One block character per value, scaled to the largest; `root`: on a square-root scale, so
    that one very strong month does not flatten the others into the same block."""
    top = max(values) if values else 0
    if top <= 0:
        return _BLOCKS[0] * len(values)
    scale = (lambda share: share ** 0.5) if root else (lambda share: share)
    return "".join(_BLOCKS[0] if v <= 0 else _BLOCKS[max(1, round(scale(v / top) * 8))] for v in values)


def _hours_text(title: str, hours: list[int]) -> None:
    console.out(f"{title} (recipients' own clocks): {sum(hours)} in all")
    console.out("  " + "".join(f"{h:<3d}" for h in range(0, 24, 3)))  # one column per hour
    console.out("  " + _spark(hours))
    busy = [f"{h:02d}h {n}" for h, n in enumerate(hours) if n]
    console.out("  " + (", ".join(busy) or "none"))


def _purchases_text(data: dict[str, Any]) -> None:
    after = data["purchases_after"]
    window = "" if after["complete"] else (
        f" — windows still open for run(s) {', '.join(map(str, after['open_runs']))}: counted up to {after['as_of'][:10]}")
    console.out(f"purchases within {after['window_days']} days after the message{window}")
    groups = [("contacted", after["contacted"]), ("holdout", after["holdout"]), ("not held out", after["not_held_out"])]
    console.table(["group", "customers", "buyers", "conversion %", "revenue", "per customer"],
                  ([label, g["customers"], g["buyers"], _short(g["conversion_pct"]), _short(g["revenue"]),
                    _short(g["revenue_per_customer"])] for label, g in groups if g is not None))
    lift = after["uplift"]
    if lift is None:
        console.out("uplift: no holdout group (set `holdout: 10%` in the campaign to measure the effect)"
                    if after["holdout"] is None else "uplift: not measurable yet (an empty group)")
        return
    relative = f" ({lift['conversion_relative_pct']:+.1f}%)" if lift["conversion_relative_pct"] is not None else ""
    console.out(f"uplift, contacted vs holdout: conversion {lift['conversion_pp']:+.2f} pp{relative}, "
                f"revenue per customer {lift['revenue_per_customer']:+.2f}, about {lift['incremental_buyers']:g} extra buyers "
                f"and {lift['incremental_revenue']:+.2f} revenue; p = {lift['p_value']:.3f}")
    itt = after["uplift_not_held_out"]
    if itt is not None:
        console.out(f"uplift, everyone not held out vs holdout (unbiased by consent and caps): "
                    f"conversion {itt['conversion_pp']:+.2f} pp, p = {itt['p_value']:.3f}")


@customer_app.command("show")
def customer_show(customer_id: str, config: ConfigOpt = None, now: NowOpt = None, as_json: JsonOpt = False) -> None:
    """The card, the seasonal index beside the sleep score, the contact history, and per channel
    when the next message is allowed."""
    from orchestrator.customer_card import customer_card

    settings = settings_for(config)
    card = customer_card(engine_for(settings), settings, customer_id, parse_now(now, settings))
    if as_json:
        console.json_line(card)
        return
    history = card.pop("history")
    allowed = card.pop("next_allowed")
    season = card.pop("seasonal_index", None)
    sleep = card.pop("sleep", None)
    for key, value in card.items():
        if value not in (None, {}, ""):
            console.out(f"{key:28} {_short(value)}")
    console.out("")
    if sleep:
        console.out(f"sleep score {_short(sleep['score']) if sleep['score'] is not None else '-'} — {sleep['why']}")
    _season_text(season)
    console.out("")
    console.out("next promo message allowed:")
    for channel, info in allowed.items():
        text = f"from {info['from']}" if info["allowed"] else f"no ({info['reason']})"
        console.out(f"  {channel:6} {text}")
    console.out("")
    console.table(["id", "campaign", "channel", "status", "reason", "send_at", "sent_at"],
                  ([h["id"], h["campaign"], h["channel"], h["status"], h["reason"], h["send_at"], h["sent_at"]] for h in history),
                  title="contact history")


def _season_text(season: list[dict[str, Any]] | None) -> None:
    if not season:
        console.out("seasonal index: no purchase history")
        return
    console.out("seasonal index per calendar month (1.0 = an average month; quiet months age the client slowly):")
    console.out("  " + " ".join(f"{m['name']:>4}" for m in season))
    console.out("  " + " ".join(f"{m['index']:>4.1f}" for m in season))
    console.out("  " + " ".join(f"{ch:>4}" for ch in _spark([m["index"] for m in season], root=True)))


@app.command()
def unsubscribe(
    customer_id: str,
    channel: Annotated[str, typer.Option("--channel", help="sms, email or phone")],
    config: ConfigOpt = None, as_json: JsonOpt = False,
) -> None:
    """Withdraw a customer's consent for a channel, at once (pending messages are suppressed)."""
    from orchestrator.ledger import unsubscribe as withdraw

    settings = settings_for(config)
    withdrawn = withdraw(engine_for(settings), customer_id, channel, source="cli")
    if as_json:
        console.json_line({"customer_id": customer_id, "channel": channel, "withdrawn_messages": withdrawn})
    else:
        console.out(f"customer {customer_id} unsubscribed from {channel}; {withdrawn} pending message(s) withdrawn")


def _offset_clock(settings: "Settings", now: str | None):  # type: ignore[no-untyped-def]
    """`--now`: the processes' clock starts at that moment and runs on in real time."""
    import time

    if not now:
        return time.time
    offset = parse_now(now, settings).timestamp() - time.time()
    return lambda: time.time() + offset


def _serve_signals(seconds: float | None):  # type: ignore[no-untyped-def]
    from orchestrator.logs import setup_logging
    from orchestrator.runtime import stop_event_on_signals

    setup_logging()
    stop = stop_event_on_signals()
    if seconds:
        import threading

        threading.Timer(seconds, stop.set).start()
    return stop


ForOpt = Annotated[Optional[float], typer.Option("--for", min=0.1, help="stop after this many seconds (demos, tests)")]


@app.command()
def worker(
    config: ConfigOpt = None,
    processes: Annotated[Optional[int], typer.Option(min=1, max=64, help="worker processes (default: processes in the dispatch settings)")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, max=256, help="threads per process (default: worker_threads in the dispatch settings)")] = None,
    queues: Annotated[Optional[list[str]], typer.Option("--queue", help="only these channels' queues")] = None,
    seconds: ForOpt = None,
) -> None:
    """Deliver: dramatiq workers take due messages from the broker and send them (SPEC 8)."""
    from orchestrator.runtime import require_shared_broker, run_worker, supervise

    settings = settings_for(config)
    require_shared_broker(settings, "worker")
    stop = _serve_signals(seconds)
    count = processes or settings.dispatch.processes
    if count == 1:
        run_worker(settings, threads, set(queues) if queues else None, stop)
        return
    args = [*(["--config", str(settings.path)] if settings.path else []),
            *(["--threads", str(threads)] if threads else []), *sum((["--queue", q] for q in queues or []), [])]
    supervise(args, count, stop)


@app.command()
def scheduler(config: ConfigOpt = None, now: NowOpt = None, seconds: ForOpt = None) -> None:
    """Fire campaigns on their schedules and pump due messages to the broker."""
    from orchestrator.runtime import run_scheduler

    settings = settings_for(config)
    clock = _offset_clock(settings, now)
    run_scheduler(settings, _serve_signals(seconds), now=clock)


@app.command()
def up(config: ConfigOpt = None, now: NowOpt = None, seconds: ForOpt = None,
       threads: Annotated[Optional[int], typer.Option(min=1, max=256)] = None,
       host: Annotated[str, typer.Option(help="web app address")] = "127.0.0.1",
       port: Annotated[int, typer.Option(min=0, max=65535, help="web app port (0: no web app)")] = 8000) -> None:
    """Schedules, pump, workers and the web app in one process: the embedded default."""
    from orchestrator.runtime import run_up

    settings = settings_for(config)
    clock = _offset_clock(settings, now)
    run_up(settings, _serve_signals(seconds), now=clock, threads=threads, web=(host, port) if port else None)


@app.command("sample-data")
def sample_data(
    directory: Annotated[Path, typer.Argument(help="where to write customers.csv and purchases.csv")] = Path("var/sample"),
    customers: Annotated[int, typer.Option(min=1, help="how many customers")] = 3000,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same files)")] = 7,
) -> None:
    """Write sample customers and purchases (Russia and the CIS, seasonal history)."""
    from orchestrator.sample import write_sample

    customers_csv, purchases_csv = write_sample(directory, customers=customers, seed=seed)
    console.out(f"wrote {customers_csv} and {purchases_csv}")


@app.command()
def demo(config: ConfigOpt = None, days: Annotated[int, typer.Option(min=1, max=366)] = 31,
         start: Annotated[str, typer.Option(help="first simulated day")] = "2026-12-01",
         port: Annotated[int, typer.Option(min=0, max=65535, help="web app port at the end (0: do not serve)")] = 8000) -> None:
    """The tour in one command: sample data, a month through the pipeline, reports, then the web app."""
    from orchestrator.demo import demo_settings, run_demo

    run_demo(demo_settings(settings_for(config)), start=start, days=days, serve=("127.0.0.1", port) if port else None)


# --- entry point -------------------------------------------------------------------------------


# Commands kept in their own modules register themselves on `app` when imported.
from orchestrator import cli_tasks, cli_web  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    """Usage errors exit 2 (the framework's standalone mode); ours are printed as one line."""
    try:
        app(args=argv, prog_name="orchestrator")
    except OrchestratorError as error:
        console.err(f"error: {error}")
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        console.err("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as error:  # noqa: BLE001 - the last line of defence: no traceback for users
        if os.environ.get("ORCHESTRATOR_DEBUG"):
            raise
        console.err(f"internal error: {type(error).__name__}: {error} (set ORCHESTRATOR_DEBUG=1 for details)")
        sys.exit(1)
