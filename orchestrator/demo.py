"""`orchestrator demo`: the five-minute tour as one command, on the embedded default.

It writes the sample data, imports it, validates the workspace, previews one campaign, then runs a
month of every campaign through the real embedded pipeline (scheduler fire times, planner, ledger,
pump, in-process workers, the outbox and call-task channels) on a virtual clock, and prints reports.
It drives the same commands a marketer would type, in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import typer

from orchestrator import console
from orchestrator.settings import Settings

TOUR_CAMPAIGN = "wake-sleeping-wholesale"
REPORT_CAMPAIGNS = ("monthly-bonus-balance", "wake-sleeping-wholesale")


def _step(title: str, command: Callable[..., Any], **kwargs: Any) -> int:
    console.out("")
    console.out(f"=== {title}")
    try:
        command(**kwargs)
    except typer.Exit as done:
        return done.exit_code
    return 0


DEMO_PASSWORD = "demo-password"
DEMO_SECRET_FILE = "var/demo-secret-key"


def demo_settings(settings: Settings) -> Settings:
    """Without a secret key, unsubscribe links cannot be signed: the demo makes one for this
    workspace (kept in var/, so links in the outbox stay valid across runs) rather than showing a
    newcomer links that do not work.  A configured key is always used as it is."""
    import os
    import secrets

    from orchestrator.settings import load_settings

    if settings.general.secret_key:
        return settings
    path = settings.resolve(DEMO_SECRET_FILE)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32), encoding="utf-8")
        path.chmod(0o600)
    console.out(f"demo: no [general] secret_key, so unsubscribe links are signed with the key in {path}")
    return load_settings(settings.path, environ={**os.environ, "ORCHESTRATOR_GENERAL_SECRET_KEY": path.read_text(encoding="utf-8").strip()})


def run_demo(settings: Settings, *, start: str, days: int, serve: tuple[str, int] | None = ("127.0.0.1", 8000)) -> None:
    from orchestrator import cli
    from orchestrator.sample import write_sample

    config = settings.path
    sample_dir = settings.resolve("var/sample")
    customers_csv, purchases_csv = write_sample(sample_dir)
    console.out(f"sample data: {customers_csv} and {purchases_csv}")
    common: dict[str, Any] = {"config": config, "as_json": False}
    imports = {"encoding": None, "delimiter": None, "map": None, "errors": None}
    _step(f"orchestrator import customers {_short(customers_csv)}", cli.import_customers, file=customers_csv, **imports, **common)
    _step(f"orchestrator import purchases {_short(purchases_csv)}", cli.import_purchases, file=purchases_csv, **imports, **common)
    _step("orchestrator segment list", cli.segment_list, **common)
    _step("orchestrator segment show sleeping_wholesale", cli.segment_show, name="sleeping_wholesale", now=start, limit=5, **common)
    code = _step("orchestrator validate", cli.validate, files=None, now=start, **common)
    if code:
        raise typer.Exit(code)
    campaigns = {p.stem for p in settings.campaigns_dir.glob("*.yaml")}
    if TOUR_CAMPAIGN in campaigns:
        _step(f"orchestrator plan {TOUR_CAMPAIGN} --now {start}T10:00 (summary)", _plan_summary,
              settings=settings, name=TOUR_CAMPAIGN, now=f"{start}T10:00")
    _step(f"a month through the real pipeline: every campaign fired on schedule from {start} for {days} days, "
          "pumped and delivered by in-process workers into the outbox", _replay, settings=settings, start=start, days=days)
    for name in REPORT_CAMPAIGNS:
        if name in campaigns:
            _step(f"orchestrator report {name}", cli.report, campaign=name, **common)
    logins = _demo_users(settings)
    console.out("")
    console.out("Next: `orchestrator plan CAMPAIGN` shows every decision; `orchestrator run CAMPAIGN` writes the ledger; "
                "`orchestrator deliveries` and `orchestrator report CAMPAIGN` show what it holds.")
    if serve is None:
        return
    host, port = serve
    console.out("")
    console.out(f"=== the web app: http://{host}:{port}/  (Ctrl-C to stop)")
    for login, role, password in logins:
        console.out(f"  {role:9} {login:10} password {password}")
    _serve(settings, host, port)


def _replay(settings: Settings, start: str, days: int) -> None:
    from datetime import datetime

    from orchestrator.cli import parse_now
    from orchestrator.replay import replay

    moment: datetime = parse_now(start, settings)
    with console.progress("replay", days * 86400) as bar:
        result = replay(settings, moment, days, progress=bar)
    console.out(f"{result.runs} runs fired; ledger: " + ", ".join(f"{k} {v}" for k, v in sorted(result.statuses.items())))
    for folder in sorted(settings.resolve("var/outbox").glob("*")):
        console.out(f"  {folder}: {sum(1 for _ in folder.iterdir())} messages")


def _demo_users(settings: Settings) -> list[tuple[str, str, str]]:
    """A marketer and the sample data's managers, with one known password (a demo, not a real site)."""
    from orchestrator import cli
    from orchestrator.sample import MANAGERS
    from orchestrator.users import add_user, get_user, set_password

    engine = cli.engine_for(settings)
    logins = [("marketer", "marketer"), *((name, "manager") for name in MANAGERS)]
    for login, role in logins:
        if get_user(engine, login) is None:
            add_user(engine, login, role, DEMO_PASSWORD, name=login.capitalize())
        else:
            set_password(engine, login, DEMO_PASSWORD)
    return [(login, role, DEMO_PASSWORD) for login, role in logins]


def _serve(settings: Settings, host: str, port: int) -> None:
    from orchestrator.runtime import WebServer, stop_event_on_signals

    stop = stop_event_on_signals()
    server = WebServer(settings, host, port)
    server.start()
    try:
        while not stop.wait(0.5) and server.thread.is_alive():
            pass
    finally:
        server.stop()


def _plan_summary(settings: Settings, name: str, now: str) -> None:
    from orchestrator import cli
    from orchestrator.planner import plan_run

    engine = cli.engine_for(settings)
    prepared = cli._prepare(settings, engine, name)
    fire = cli._fire_time(settings, prepared, cli.parse_now(now, settings), for_plan=True)
    summary = plan_run(engine, engine, prepared, fire, dry_run=True)
    cli._print_summary(summary, False, heading="plan (nothing written)")


def _short(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
