"""The web app in a real headless Chromium (Debian's `chromium`, driven by Playwright).

One workspace for the whole module (SQLite), built the way production builds it:

* users made by `orchestrator users add` (a marketer, two managers);
* customers of both managers, one with a hostile name;
* call tasks made by planning phone campaigns and delivering them in process with a controlled
  clock (tests/test_dispatch.py): `winback` on the last working day, so petrov's task is overdue
  now, and `calls` on the next working day, for every manager's clients;
* an email campaign delivered by the real `channels.email.Smtp` into the aiosmtpd sink
  (tests/fakes/smtp_sink.py): the unsubscribe link is taken from a received email;
* the app served by uvicorn in a background thread on a free port (`[web] base_url` points there,
  so the links in the emails lead to it).

Scenarios: a manager logs in and sees only their tasks, records an outcome that the marketer
then finds in the campaign report; the marketer sees the overdue task on the control page; a
customer unsubscribes by the link of an email; a hostile name stays text.  Screenshots of the main
pages at 1366×800 (laptop) and 390×844 (phone) go to var/screenshots/; at phone width every page
is checked not to scroll sideways.

Chromium is /usr/bin/chromium (ORCHESTRATOR_CHROMIUM overrides); `.ci/run` installs it.  Without
it (or without Playwright) these tests skip on a developer's machine and fail in CI (CI=true).
"""

from __future__ import annotations

import email.policy
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from orchestrator.campaigns import load_campaign
from orchestrator.planner import plan_run, prepare
from orchestrator.runtime import Runtime
from orchestrator.settings import load_settings
from orchestrator.storage.engine import connect, write_transaction
from orchestrator.storage.schema import call_tasks, customer_stats, customers, deliveries
from orchestrator.tasks import is_day_off
from tests.fakes.smtp_sink import SmtpSink
from tests.planner_fixtures import customer, insert_customers, make_workspace, write_campaign

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "var" / "screenshots"
CHROMIUM = os.environ.get("ORCHESTRATOR_CHROMIUM", "/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
MSK = ZoneInfo("Europe/Moscow")
PASSWORD = "correct horse battery"
HOSTILE_NAME = "<script>alert(1)</script> \"O'Brien\" 😀"
NOTE = "Заказал диван «Осло», доставка в пятницу"
LAPTOP: dict[str, Any] = {"viewport": {"width": 1366, "height": 800}}
PHONE: dict[str, Any] = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
                         "has_touch": True}
TIMEOUT_MS = 10_000

pytestmark = pytest.mark.timeout(120)


def _unavailable(reason: str) -> None:
    """No browser here: a skip on a developer's machine, a failure in CI (it must run there)."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the browser tests must run; .ci/run installs Chromium)", pytrace=False)
    pytest.skip(reason)


# --- the workspace --------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def set(self, at: datetime) -> None:
        self.t = at.timestamp()


@dataclass
class World:
    root: Path
    base: str
    settings: Any
    engine: sa.Engine
    sink: SmtpSink
    tasks: dict[str, int] = field(default_factory=dict)

    def task_row(self, task_id: int) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(call_tasks).where(call_tasks.c.id == task_id)).first()

    def customer(self, customer_id: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(customers).where(customers.c.id == customer_id)).first()

    def deliveries(self, customer_id: str, channel: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(deliveries).where(
                deliveries.c.customer_id == customer_id, deliveries.c.channel == channel).order_by(deliveries.c.id)))


def _working_day(start: date, step: int) -> date:
    day = start + timedelta(days=step)
    while day.weekday() >= 5:  # the phone channel's days off: weekends (and holidays, checked below)
        day += timedelta(days=step)
    return day


def _calling_day(settings: Any, start: date, step: int) -> date:
    day = _working_day(start, step)
    while is_day_off(day, "Europe/Moscow", settings):
        day = _working_day(day, step)
    return day


CUSTOMERS = [
    customer("C1", manager="ivanova", name="Анна Иванова", first_name="Анна", city="Москва", abc_group="A",
             bonus_balance=1250.0, discount_percent=5.0),
    customer("C2", manager="petrov", name="Пётр Сидоров", first_name="Пётр", phone="+79121111111", city="Казань",
             abc_group="B", bonus_balance=300.0),
    customer("EVIL", manager="ivanova", name=HOSTILE_NAME, first_name="<b>Bob</b>", phone="+79122222222",
             city="<img src=x onerror=alert(2)>", abc_group="C"),
    customer("C3", manager="petrov", name="Ольга Смирнова", first_name="Ольга", phone="+79123333333",
             city="Новосибирск", timezone="Asia/Novosibirsk", zones="Asia/Novosibirsk", abc_group="A",
             bonus_balance=4800.0, discount_percent=10.0),
]
STATS = {
    "C1": {"purchases_count": 14, "total_spent": 186_400.0, "last_purchase_at": date.today() - timedelta(days=41),
           "avg_purchase_interval_days": 27.5, "preferred_category": "диваны"},
    "C2": {"purchases_count": 3, "total_spent": 23_900.0, "last_purchase_at": date.today() - timedelta(days=120),
           "avg_purchase_interval_days": 60.0, "preferred_category": "кухни"},
    "EVIL": {"purchases_count": 1, "total_spent": 990.0, "last_purchase_at": date.today() - timedelta(days=300),
             "preferred_category": "<i>текстиль</i>"},
    "C3": {"purchases_count": 22, "total_spent": 412_000.0, "last_purchase_at": date.today() - timedelta(days=75),
           "avg_purchase_interval_days": 30.0, "preferred_category": "мебель"},
}


def _settings_text(port: int, smtp: tuple[str, int]) -> str:
    return f"""
[web]
base_url = "http://127.0.0.1:{port}"
session_lifetime = "2h"

[broker]
url = "memory://"

[channels.email]
backend = "channels.email.Smtp"
host = "{smtp[0]}"
port = {smtp[1]}
sender = "Мебельный клуб <club@shop.example>"
timeout = 5

[channels.phone]
backend = "channels.phone.CallTasks"
"""


def _users_add(config: Path, login: str, role: str, name: str) -> None:
    """Users are made as an administrator makes them: `orchestrator users add`."""
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "users", "add", login, "--role", role, "--name", name,
         "--password-stdin", "--config", str(config)],
        cwd=REPO, input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _plan(world: World, runtime: Runtime | None, clock: Clock, name: str, fire: datetime, **campaign: Any) -> None:
    """Plans a run of the campaign and, with a runtime, delivers it at its fire time."""
    path = write_campaign(world.root, name, **campaign)
    prepared = prepare(world.settings, load_campaign(path), engine=world.engine)
    plan_run(world.engine, world.engine, prepared, fire, dry_run=False)
    if runtime is None:
        return
    clock.set(fire + timedelta(minutes=1))
    runtime.pump()
    runtime.join(timeout=30)


def _build(root: Path, port: int, sink: SmtpSink) -> World:
    config = make_workspace(root, f"sqlite:///{root / 'orchestrator.db'}")
    with config.open("a", encoding="utf-8") as handle:
        handle.write(_settings_text(port, sink.address))
    (root / "segments" / "petrov_vip.yaml").write_text("description: one client\nwhere:\n  id: C3\n", encoding="utf-8")
    settings = load_settings(config)
    world = World(root, f"http://127.0.0.1:{port}", settings, connect(settings.database_url), sink)
    insert_customers(world.engine, CUSTOMERS)
    with write_transaction(world.engine) as conn:
        for cid, stats in STATS.items():
            conn.execute(customer_stats.update().where(customer_stats.c.customer_id == cid).values(**stats))
    for login, role, name in (("marta", "marketer", "Марта Маркетолог"), ("ivanova", "manager", "Ирина Иванова"),
                              ("petrov", "manager", "Пётр Петров")):
        _users_add(config, login, role, name)

    today = datetime.now(MSK).date()
    last_working = _calling_day(settings, today, -1)
    next_working = _calling_day(settings, today, +1)
    clock = Clock()
    runtime = Runtime(settings, now=clock)
    runtime.start_delivery(threads=2)
    try:
        # Last working day: a call for petrov's client, never made: overdue now.
        _plan(world, runtime, clock, "winback", datetime.combine(last_working, datetime.min.time(), MSK).replace(hour=11),
              channels=["phone"], segment="petrov_vip", offer={"discount": 10},
              description="Returning a key client")
        # Next working day: calls for every manager's clients (C3 is capped by winback's call).
        _plan(world, runtime, clock, "calls", datetime.combine(next_working, datetime.min.time(), MSK).replace(hour=11),
              channels=["phone"], offer={"discount": 7, "valid_until": "2026-12-31"},
              description="Autumn sofa offer by phone")
        # An email through the real SMTP channel into the sink.
        _plan(world, runtime, clock, "news", datetime.combine(next_working, datetime.min.time(), MSK).replace(hour=12),
              channels=["email"], category="content", description="Monthly news",
              schedule={"cron": "0 12 1 * *"})
        # A promo email three weeks later, still waiting in the ledger (an unsubscribe withdraws it).
        _plan(world, None, clock, "season-sale",
              datetime.combine(next_working + timedelta(days=21), datetime.min.time(), MSK).replace(hour=10),
              channels=["email"], description="Season sale", schedule={"cron": "0 10 * * MON"})
    finally:
        runtime.stop(timeout=30)

    with world.engine.connect() as conn:
        rows = conn.execute(sa.select(call_tasks.c.id, call_tasks.c.campaign, call_tasks.c.customer_id)).all()
    world.tasks = {f"{campaign}:{cid}": task_id for task_id, campaign, cid in rows}
    assert set(world.tasks) == {"winback:C3", "calls:C1", "calls:C2", "calls:EVIL"}, world.tasks
    assert sorted(world.sink.wait_for(4, timeout=20)[i].rcpt_tos[0] for i in range(4)) == [
        "c1@example.com", "c2@example.com", "c3@example.com", "evil@example.com"]
    assert {r.status for r in world.deliveries("C2", "email")} == {"sent", "planned"}
    return world


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (pip install -e '.[dev]')")
    if not os.path.exists(CHROMIUM):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def world(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    import uvicorn

    from orchestrator.web import create_app

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sink = SmtpSink()
    sink.start()
    built = _build(tmp_path_factory.mktemp("browser"), port, sink)
    app = create_app(built.settings, engine=built.engine)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="web", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the web app did not start"
        time.sleep(0.02)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield built
    finally:
        server.should_exit = True
        thread.join(15)
        listener.close()
        sink.stop()
        built.engine.dispose()


# --- browser helpers ------------------------------------------------------------------------------


class Session:
    """A browser context (one person's cookies) with one page that records any dialog it opens."""

    def __init__(self, browser: Any, world: World, **options: Any) -> None:
        self.browser = browser
        self.world = world
        self.context = browser.new_context(**(options or LAPTOP))
        self.context.set_default_timeout(TIMEOUT_MS)
        self.dialogs: list[str] = []
        self.page = self.context.new_page()
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def goto(self, path: str) -> Any:
        return self.page.goto(self.world.base + path)

    def login(self, login: str) -> None:
        page = self.page
        self.goto("/")
        page.wait_for_url("**/login")
        page.get_by_label("Login").fill(login)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(re.compile(r"/(tasks|campaigns)$"))

    def shot(self, name: str) -> None:
        """Screenshots of the page as it is (laptop) and of its address at phone width."""
        self.page.wait_for_load_state("load")
        assert_clean(self)
        self.page.screenshot(path=str(SHOTS / f"{name}-laptop.png"), full_page=True)
        wide = self.page.locator(".table-wrap").evaluate_all(
            "ws => ws.filter(w => w.scrollWidth > w.clientWidth + 1).map(w => w.innerText.slice(0, 60))")
        assert not wide, f"{name}: a table scrolls sideways on a laptop: {wide}"
        phone = self.browser.new_context(storage_state=self.context.storage_state(), **PHONE)
        try:
            page = phone.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(self.page.url)
            page.wait_for_load_state("load")
            width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], f"{name}: the page scrolls sideways at phone width ({width})"
            if page.locator(".nav").count():  # every section's tab is visible, none scrolled away
                nav = page.locator(".nav").evaluate("n => [n.scrollWidth, n.clientWidth]")
                assert nav[0] <= nav[1], f"{name}: the menu does not fit at phone width ({nav})"
            page.screenshot(path=str(SHOTS / f"{name}-phone.png"), full_page=True)
            assert not dialogs
        finally:
            phone.close()

    def close(self) -> None:
        assert not self.dialogs, f"a dialog was opened: {self.dialogs}"
        self.context.close()


def assert_clean(session: Session) -> None:
    """No customer data became markup: no script or injected element, no dialog."""
    page = session.page
    assert page.locator("script").count() == 0
    assert page.locator("img, iframe, object, embed").count() == 0
    assert page.locator("i, b").count() == 0  # the fixtures' <b>…</b>, <i>…</i> stay text
    assert not session.dialogs


@pytest.fixture
def open_session(browser: Any, world: World) -> Iterator[Any]:
    sessions: list[Session] = []

    def make(**options: Any) -> Session:
        session = Session(browser, world, **options)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


# --- scenarios ------------------------------------------------------------------------------------


def test_a_manager_sees_only_their_tasks_and_the_marketer_sees_the_outcome(world: World, open_session: Any) -> None:
    own, evil = world.tasks["calls:C1"], world.tasks["calls:EVIL"]
    others = [world.tasks["calls:C2"], world.tasks["winback:C3"]]

    ivanova = open_session()
    ivanova.goto("/")
    ivanova.page.wait_for_url("**/login")
    ivanova.shot("01-login")
    ivanova.login("ivanova")
    page = ivanova.page
    assert page.locator("h1").inner_text() == "My calls"
    board = page.locator(".tasks")
    page.locator(f"#task-{own}").wait_for()
    assert page.locator(f"#task-{evil}").is_visible()
    for other in others:
        assert page.locator(f"#task-{other}").count() == 0
    text = board.inner_text()
    assert "Анна Иванова" in text and "Пётр Сидоров" not in text and "Ольга Смирнова" not in text
    ivanova.shot("02-task-board")

    # Another manager's task and client: 404, whatever the URL.
    for other in others:
        answer = ivanova.goto(f"/tasks/{other}")
        assert answer is not None and answer.status == 404
        assert page.locator("h1").inner_text().startswith("Not found")
        assert "Пётр Сидоров" not in page.content() and "Ольга Смирнова" not in page.content()
    assert ivanova.goto("/customers/C2").status == 404
    assert ivanova.goto("/tasks?manager=petrov&show=all").status == 200
    assert page.locator(f"#task-{others[0]}").count() == 0 and page.locator(f"#task-{others[1]}").count() == 0

    # Her own task, from the board; its client's card.
    ivanova.goto("/tasks")
    page.locator(f"#task-{own}").get_by_role("link", name=f"Task #{own}").click()
    page.wait_for_url(f"**/tasks/{own}")
    assert "Анна Иванова" in page.locator("h2").first.inner_text()
    ivanova.shot("03-task")
    page.locator(f"#task-{own} h2 a").click()
    page.wait_for_url("**/customers/C1")
    assert page.locator("h1").inner_text() == "Анна Иванова"
    ivanova.shot("04-customer-card-manager")

    # The outcome, through the form on the task page.
    ivanova.goto(f"/tasks/{own}")
    page.get_by_label("Outcome").select_option("ordered")
    page.get_by_label("Note").fill(NOTE)
    page.get_by_role("button", name="Save outcome").click()
    page.wait_for_url(f"**/tasks/{own}")
    flash = page.locator(".flash.ok")
    flash.wait_for()
    assert "outcome “Ordered” saved" in flash.inner_text()
    assert page.locator(f"#task-{own} .pill.ordered").first.is_visible()
    assert NOTE in page.locator(f"#task-{own} table").inner_text()  # the task's history
    ivanova.shot("05-task-done")
    row = world.task_row(own)
    assert (row.status, row.outcome) == ("done", "ordered") and NOTE in row.note

    # The marketer finds the outcome and the note in the campaign's report.
    marta = open_session()
    marta.login("marta")
    page = marta.page
    assert page.locator("h1").inner_text() == "Campaigns"
    marta.shot("06-campaigns")
    page.get_by_role("link", name="calls", exact=True).click()
    page.wait_for_url("**/campaigns/calls")
    notes = page.locator("section", has=page.get_by_role("heading", name=re.compile("Managers' notes")))
    notes.wait_for()
    row_text = notes.locator("tbody tr").filter(has_text="C1").inner_text()
    assert NOTE in row_text and "Ordered" in row_text and "ivanova" in row_text
    outcomes = page.locator("section", has=page.get_by_role("heading", name="Call outcomes"))
    assert "Ordered" in outcomes.inner_text()
    assert page.locator(".chart svg").count() >= 2  # funnel and hours
    marta.shot("07-campaign-report-calls")
    marta.goto("/campaigns/news")
    assert page.locator(".chart svg").count() >= 2
    sent = page.locator(".stat", has=page.locator(".name", has_text=re.compile("^Sent$")))
    assert sent.locator(".value").inner_text() == "4"
    marta.shot("08-campaign-report-email")


def test_the_marketer_sees_the_overdue_task_on_the_control_page(world: World, open_session: Any) -> None:
    late = world.tasks["winback:C3"]
    marta = open_session()
    marta.login("marta")
    page = marta.page
    page.get_by_role("link", name="Control").click()
    page.wait_for_url("**/control")
    assert page.locator("h1").inner_text() == "Management control"
    overdue_stat = page.locator(".stat", has_text="Overdue")
    assert overdue_stat.locator(".value").inner_text() == "1" and "alert" in (overdue_stat.get_attribute("class") or "")
    petrov = page.locator("section", has=page.get_by_role("heading", name="Пётр Петров", exact=True))
    overdue_row = petrov.locator("tbody tr", has=page.locator(f'a[href="/tasks/{late}"]'))
    overdue_row.wait_for()
    assert "Ольга Смирнова" in overdue_row.inner_text()
    assert overdue_row.locator(".pill.overdue, .pill.escalated").count() == 1  # flagged, not just listed
    managers = page.locator("section", has=page.get_by_role("heading", name="Managers", exact=True))
    petrov_row = managers.locator("tbody tr", has_text="Пётр Петров")
    assert petrov_row.locator(".pill.overdue").inner_text() == "1"
    ivanova_row = managers.locator("tbody tr", has_text="Ирина Иванова")
    assert ivanova_row.locator(".pill.overdue").count() == 0
    marta.shot("09-control")

    # From the control page to the task: flagged overdue there too.
    overdue_row.locator(f'a[href="/tasks/{late}"]').click()
    page.wait_for_url(f"**/tasks/{late}")
    card = page.locator(f"#task-{late}")
    assert "overdue" in (card.get_attribute("class") or "")
    assert card.locator(".pill.overdue, .pill.escalated").count() == 1
    marta.shot("10-task-overdue")
    marta.goto("/tasks?show=overdue")
    assert page.locator(".tasks article").count() == 1 and page.locator(f"#task-{late}").is_visible()
    marta.shot("11-task-board-marketer-overdue")


def _unsubscribe_link(world: World, address: str) -> str:
    (received,) = [m for m in world.sink.messages if address in m.rcpt_tos]
    message = message_from_bytes(received.raw, policy=email.policy.default)
    header = str(message["List-Unsubscribe"]).strip()
    assert header.startswith("<") and header.endswith(">"), header
    link = header[1:-1]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html = message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    assert f'href="{link}"' in html, "the body's link is the header's"
    assert link.startswith(world.base + "/u/")
    return link


def test_a_customer_unsubscribes_by_the_link_in_the_email(world: World, open_session: Any) -> None:
    link = _unsubscribe_link(world, "c2@example.com")
    assert world.customer("C2").unsubscribed_email is None
    waiting = [r for r in world.deliveries("C2", "email") if r.status == "planned"]
    assert [r.campaign for r in waiting] == ["season-sale"]

    customer_session = open_session(**PHONE)  # a customer reads the email on a phone
    page = customer_session.page
    answer = page.goto(link)
    assert answer is not None and answer.status == 200
    assert page.locator("h1").inner_text() == "Unsubscribe?"
    assert world.customer("C2").unsubscribed_email is None  # opening the link changes nothing
    page.screenshot(path=str(SHOTS / "12-unsubscribe-phone.png"), full_page=True)
    page.get_by_role("button", name="Unsubscribe").click()
    page.get_by_role("heading", name="You are unsubscribed").wait_for()
    assert "emails" in page.locator(".card").inner_text()
    page.screenshot(path=str(SHOTS / "13-unsubscribed-phone.png"), full_page=True)

    row = world.customer("C2")
    assert row.unsubscribed_email is not None and row.unsubscribed_sms is None and row.unsubscribed_phone is None
    by_campaign = {r.campaign: (r.status, r.reason) for r in world.deliveries("C2", "email")}
    assert by_campaign == {"news": ("sent", None), "season-sale": ("suppressed", "unsubscribed")}
    assert {r.status for r in world.deliveries("C1", "email")} == {"sent", "planned"}  # others untouched

    # The marketer sees it on the customer's card.
    marta = open_session()
    marta.login("marta")
    marta.goto("/customers?q=Сидоров")
    marta.page.get_by_role("link", name="Пётр Сидоров").click()
    marta.page.wait_for_url("**/customers/C2")
    channels = marta.page.locator("section", has=marta.page.get_by_role("heading", name="Channels"))
    email_row = channels.locator("tbody tr", has_text="Email")
    assert email_row.locator(".pill.danger").inner_text().startswith("unsubscribed")
    history = marta.page.locator("section", has=marta.page.get_by_role("heading", name="Contact history"))
    assert "Unsubscribed" in history.locator("tbody tr", has_text="season-sale").inner_text()
    marta.shot("14-customer-card")


def test_a_hostile_name_is_shown_as_text(world: World, open_session: Any) -> None:
    evil = world.tasks["calls:EVIL"]
    ivanova = open_session()
    ivanova.login("ivanova")
    page = ivanova.page
    title = page.locator(f"#task-{evil} h2")
    assert title.inner_text() == HOSTILE_NAME
    assert "Позвонить " + HOSTILE_NAME in page.locator(f"#task-{evil} .script").inner_text()
    assert "<img src=x onerror=alert(2)>" in page.locator(f"#task-{evil} .facts").inner_text()
    assert_clean(ivanova)
    title.get_by_role("link").click()
    page.wait_for_url("**/customers/EVIL")
    assert page.locator("h1").inner_text() == HOSTILE_NAME
    assert page.title().startswith(HOSTILE_NAME)
    assert "<img src=x onerror=alert(2)>" in page.locator(".facts").first.inner_text()
    ivanova.shot("15-customer-card-hostile")

    marta = open_session()
    marta.login("marta")
    for path in ("/tasks", f"/tasks/{evil}", "/customers/EVIL", "/customers?q=script", "/control",
                 "/campaigns/calls", "/campaigns/news"):
        answer = marta.goto(path)
        assert answer is not None and answer.status == 200, path
        assert_clean(marta)
    marta.goto("/customers?q=script")
    assert marta.page.get_by_role("link", name=HOSTILE_NAME).is_visible()
