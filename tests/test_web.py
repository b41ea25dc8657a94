"""The web app (SPEC 11) through Starlette's TestClient: logins, roles on every route, CSRF, the
pages, one-click unsubscribe, the SMS gateway hooks, /healthz, /metrics, hostile customer data, and
the `users` commands.  SQLite throughout; the main flow runs on PostgreSQL too."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():  # Starlette 1.x suggests httpx2; httpx is what the project has
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from orchestrator.campaigns import load_campaign
from orchestrator.links import unsubscribe_token
from orchestrator.planner import plan_run, prepare
from orchestrator.settings import load_settings
from orchestrator.storage.engine import connect, write_transaction
from orchestrator.storage.schema import call_tasks, customers, deliveries
from orchestrator.users import add_user
from orchestrator.web import create_app
from orchestrator.web.app import describe_routes
from tests.planner_fixtures import customer, insert_customers, make_workspace, write_campaign

REPO = Path(__file__).resolve().parent.parent
MSK = ZoneInfo("Europe/Moscow")
UTC = timezone.utc
SECRET = "test-secret"
HOOK_SECRET = "hook-s3cret-value"
PASSWORD = "correct horse battery"
HOSTILE_NAME = '"><script>alert(1)</script> O\'Brien «ёлка» 🎄'
LONG_NAME = "Ж" * 10_000
WEB_SETTINGS = f"""
[web]
base_url = "https://loyalty.example"
hook_secret = "{HOOK_SECRET}"
session_lifetime = "2h"
"""


# --- the workspace --------------------------------------------------------------------------------


class Workspace:
    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.path = make_workspace(root, url)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(WEB_SETTINGS)
        self.settings = load_settings(self.path)
        self.engine = connect(self.settings.database_url)
        self.app = create_app(self.settings, engine=self.engine)

    def client(self) -> TestClient:
        return TestClient(self.app, base_url="https://testserver", follow_redirects=False)

    def plan(self, name: str, fire: datetime, **campaign: Any) -> None:
        path = write_campaign(self.root, name, **campaign)
        plan_run(self.engine, self.engine, prepare(self.settings, load_campaign(path), engine=self.engine), fire,
                 dry_run=False)

    def task(self, customer_id: str, manager: str, *, due_from: int, due_until: int, delivery_id: int,
             campaign: str = "calls", script: str = "Предложить скидку 7%") -> int:
        now = int(time.time())
        with write_transaction(self.engine) as conn:
            return conn.execute(call_tasks.insert().returning(call_tasks.c.id), {
                "delivery_id": delivery_id, "campaign": campaign, "customer_id": customer_id, "manager": manager,
                "status": "open", "due_from": due_from, "due_until": due_until, "zone": "Europe/Moscow",
                "zone_source": "column", "script": script, "offer": {"discount": 7}, "card": {}, "attempts": 0,
                "created_at": now, "updated_at": now,
            }).scalar_one()

    def rows(self, **where: Any) -> list[Any]:
        query = sa.select(deliveries).order_by(deliveries.c.id)
        for key, value in where.items():
            query = query.where(deliveries.c[key] == value)
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    def customer(self, customer_id: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(customers).where(customers.c.id == customer_id)).first()

    def task_row(self, task_id: int) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(call_tasks).where(call_tasks.c.id == task_id)).first()


def populate(ws: Workspace) -> dict[str, Any]:
    """Customers of two managers (one with hostile data), an email campaign planned, call tasks."""
    insert_customers(ws.engine, [
        customer("C1", manager="ivanova", name="Анна Иванова"),
        customer("C2", manager="petrov", name="Пётр Сидоров", phone="+79121111111"),
        customer("EVIL", manager="ivanova", name=HOSTILE_NAME, city="<b>Омск</b>", first_name="\"'<>&"),
        customer("LONG", manager="ivanova", name=LONG_NAME, email="long@example.com"),
    ])
    fire = datetime.now(MSK).replace(second=0, microsecond=0) + timedelta(days=2)
    ws.plan("news", fire, channels=["email"], schedule={"cron": "0 10 * * MON"})
    now = int(time.time())
    ids = {
        "own": ws.task("C1", "ivanova", due_from=now - 3600, due_until=now + 3 * 3600, delivery_id=900001),
        "evil": ws.task("EVIL", "ivanova", due_from=now - 1800, due_until=now + 4 * 3600, delivery_id=900002,
                        script="<script>alert('script')</script> Звонок"),
        "long": ws.task("LONG", "ivanova", due_from=now - 900, due_until=now + 5 * 3600, delivery_id=900003),
        "other": ws.task("C2", "petrov", due_from=now - 3600, due_until=now + 3600, delivery_id=900004),
        "late": ws.task("C2", "petrov", due_from=now - 10 * 86400, due_until=now - 9 * 86400, delivery_id=900005),
    }
    add_user(ws.engine, "marta", "marketer", PASSWORD, name="Марта Маркетолог")
    add_user(ws.engine, "ivanova", "manager", PASSWORD, name="Ирина Иванова")
    add_user(ws.engine, "petrov", "manager", PASSWORD, name="Пётр Петров")
    return ids


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace(tmp_path, f"sqlite:///{tmp_path / 'orchestrator.db'}")
    workspace.ids = populate(workspace)  # type: ignore[attr-defined]
    yield workspace
    workspace.engine.dispose()


# --- helpers ----------------------------------------------------------------------------------------

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(client: TestClient, path: str = "/login") -> str:
    page = client.get(path)
    assert page.status_code == 200, (path, page.status_code)
    match = _CSRF.search(page.text)
    assert match, f"no CSRF field on {path}"
    return match.group(1)


def login(client: TestClient, user: str, password: str = PASSWORD, next_: str = "/") -> Any:
    token = csrf_of(client)
    return client.post("/login", data={"login": user, "password": password, "csrf": token, "next": next_})


def logged_in(ws: Workspace, user: str) -> TestClient:
    client = ws.client()
    answer = login(client, user)
    assert answer.status_code == 303, answer.text
    return client


# --- login and sessions ----------------------------------------------------------------------------


def test_login_logout_and_cookie_flags(ws: Workspace) -> None:
    client = ws.client()
    assert client.get("/").headers["location"] == "/login"
    assert client.get("/campaigns").headers["location"] == "/login?next=/campaigns"
    page = client.get("/login")
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" in cookie and "max-age=7200" in cookie

    answer = login(client, "marta", next_="/campaigns")
    assert answer.status_code == 303 and answer.headers["location"] == "/campaigns"
    campaigns = client.get("/campaigns")
    assert campaigns.status_code == 200 and "news" in campaigns.text and "Марта Маркетолог" in campaigns.text

    token = csrf_of(client, "/campaigns")
    assert client.post("/logout", data={}).status_code == 403  # logout is a CSRF-protected form too
    out = client.post("/logout", data={"csrf": token})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert client.get("/login").status_code == 200
    assert client.get("/campaigns").status_code == 303


def test_wrong_password_unknown_user_and_throttle(ws: Workspace) -> None:
    client = ws.client()
    for who, password in (("marta", "wrong password"), ("nobody", PASSWORD), ("", "")):
        answer = login(client, who, password)
        assert answer.status_code == 401 and "Wrong login or password." in answer.text
        assert client.get("/campaigns").status_code == 303  # still not logged in
    for _ in range(10):
        login(client, "petrov", "guess-guess")
    blocked = login(client, "petrov", PASSWORD)  # even the right password waits now
    assert blocked.status_code == 429 and "Too many failed attempts" in blocked.text


def test_login_needs_csrf_and_refuses_open_redirects(ws: Workspace) -> None:
    client = ws.client()
    assert client.post("/login", data={"login": "marta", "password": PASSWORD}).status_code == 403
    assert client.post("/login", data={"login": "marta", "password": PASSWORD, "csrf": "forged"}).status_code == 403
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        answer = login(client, "marta", next_=target)
        assert answer.headers["location"] == "/campaigns", target
        csrf = csrf_of(client, "/campaigns")
        client.post("/logout", data={"csrf": csrf})


def test_changing_the_password_ends_sessions(ws: Workspace) -> None:
    from orchestrator.users import set_password

    client = logged_in(ws, "ivanova")
    assert client.get("/tasks").status_code == 200
    set_password(ws.engine, "ivanova", "a brand new password")
    assert client.get("/tasks").status_code == 303
    assert login(ws.client(), "ivanova", "a brand new password").status_code == 303


def test_a_forged_session_cookie_is_not_a_login(ws: Workspace) -> None:
    import base64

    client = ws.client()
    forged = base64.b64encode(json.dumps({"login": "marta", "key": "x"}).encode()).decode() + ".AAAA.BBBB"
    client.cookies.set("orchestrator_session", forged)
    assert client.get("/campaigns").status_code == 303


# --- roles on every route -----------------------------------------------------------------------------


MARKETER_ONLY = {"/campaigns", "/campaigns/{name}", "/customers"}
EVERY_LOGIN = {"/", "/tasks", "/tasks/{task_id:int}", "/control", "/customers/{customer_id:path}",
               "/tasks/{task_id:int}/outcome", "/customers/{customer_id:path}/unsubscribe", "/logout"}
PUBLIC = {"/login", "/u/{token}", "/hooks/sms/status", "/hooks/sms/inbound", "/healthz", "/metrics"}


def test_every_route_has_an_access_rule_tested_here(ws: Workspace) -> None:
    paths = {route["path"] for route in describe_routes(ws.app)}
    assert paths == MARKETER_ONLY | EVERY_LOGIN | PUBLIC


def test_anonymous_users_reach_no_private_page(ws: Workspace) -> None:
    client = ws.client()
    ids = ws.ids  # type: ignore[attr-defined]
    for path in ("/", "/campaigns", "/campaigns/news", "/customers", "/customers/C1", "/tasks",
                 f"/tasks/{ids['own']}", "/control"):
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login"), path
    token = csrf_of(client)  # a session exists (the login form's), but no login
    for path in (f"/tasks/{ids['own']}/outcome", "/customers/C1/unsubscribe", "/logout"):
        answer = client.post(path, data={"csrf": token, "outcome": "reached", "channel": "email"})
        assert answer.status_code in (303, 403), path
        if path != "/logout":
            assert answer.status_code == 403
    assert ws.task_row(ids["own"]).outcome is None
    assert ws.customer("C1").unsubscribed_email is None


def test_a_manager_sees_and_changes_only_their_own(ws: Workspace) -> None:
    ids = ws.ids  # type: ignore[attr-defined]
    client = logged_in(ws, "ivanova")
    assert client.get("/").headers["location"] == "/tasks"
    for path in ("/campaigns", "/campaigns/news", "/campaigns/nope", "/customers", "/customers?q=C2"):
        assert client.get(path).status_code == 403, path
    # Another manager's task and client: 404 by every URL, whatever the query string says.
    assert client.get(f"/tasks/{ids['other']}").status_code == 404
    assert client.get(f"/tasks/{ids['late']}").status_code == 404
    assert client.get("/customers/C2").status_code == 404
    token = csrf_of(client, "/tasks")
    refused = client.post(f"/tasks/{ids['other']}/outcome", data={"csrf": token, "outcome": "reached", "note": "x"})
    assert refused.status_code == 404
    assert ws.task_row(ids["other"]).outcome is None
    assert client.post("/customers/C2/unsubscribe", data={"csrf": token, "channel": "email"}).status_code == 404
    assert ws.customer("C2").unsubscribed_email is None

    for query in ("", "?manager=petrov", "?show=all&manager=petrov", "?show=overdue&manager=petrov"):
        board = client.get(f"/tasks{query}")
        assert board.status_code == 200
        assert "Пётр Сидоров" not in board.text and f"task-{ids['other']}" not in board.text, query
    board = client.get("/tasks")
    assert f"task-{ids['own']}" in board.text and "Анна Иванова" in board.text
    # ordered by due: own (due_from now-1h), evil (-30 min), long (-15 min)
    positions = [board.text.index(f'id="task-{ids[key]}"') for key in ("own", "evil", "long")]
    assert positions == sorted(positions)

    control = client.get("/control?manager=petrov")
    assert control.status_code == 200 and "My figures" in control.text
    assert f"/tasks/{ids['late']}" not in control.text  # petrov's escalated task is not shown to ivanova
    assert client.get("/customers/C1").status_code == 200  # own client
    assert client.get(f"/tasks/{ids['own']}").status_code == 200


def test_a_marketer_sees_everything(ws: Workspace) -> None:
    ids = ws.ids  # type: ignore[attr-defined]
    client = logged_in(ws, "marta")
    for path in ("/campaigns", "/campaigns/news", "/customers?q=C", "/customers/C2", "/tasks", "/tasks?manager=petrov",
                 f"/tasks/{ids['other']}", "/control", "/control?manager=petrov"):
        assert client.get(path).status_code == 200, path
    board = client.get("/tasks?manager=petrov&show=all")
    assert f"task-{ids['other']}" in board.text and f"task-{ids['own']}" not in board.text
    control = client.get("/control")
    assert "Escalated tasks" in control.text and f"/tasks/{ids['late']}" in control.text
    assert client.get("/campaigns/no-such-campaign").status_code == 404
    assert client.get("/customers/NOPE").status_code == 404
    assert client.get("/tasks/999999").status_code == 404


# --- CSRF and outcomes ----------------------------------------------------------------------------------


def test_posts_without_the_right_csrf_token_are_refused(ws: Workspace) -> None:
    ids = ws.ids  # type: ignore[attr-defined]
    client = logged_in(ws, "ivanova")
    url = f"/tasks/{ids['own']}/outcome"
    assert client.post(url, data={"outcome": "reached"}).status_code == 403
    assert client.post(url, data={"outcome": "reached", "csrf": "not-the-token"}).status_code == 403
    other = logged_in(ws, "petrov")  # a real token, of another session
    assert client.post(url, data={"outcome": "reached", "csrf": csrf_of(other, "/tasks")}).status_code == 403
    assert client.post("/customers/C1/unsubscribe", data={"channel": "email"}).status_code == 403
    assert ws.task_row(ids["own"]).outcome is None and ws.customer("C1").unsubscribed_email is None

    token = csrf_of(client, "/tasks")
    saved = client.post(url, data={"outcome": "reached", "note": "Купит в декабре", "csrf": token,
                                   "back": f"/tasks#task-{ids['own']}"})
    assert saved.status_code == 303 and saved.headers["location"] == f"/tasks#task-{ids['own']}"
    row = ws.task_row(ids["own"])
    assert row.outcome == "reached" and row.status == "done" and "Купит в декабре" in row.note
    page = client.get("/tasks?show=done")
    assert "outcome “Reached” saved" in page.text and "Купит в декабре" in page.text


def test_outcome_forms_callback_and_bad_input(ws: Workspace) -> None:
    ids = ws.ids  # type: ignore[attr-defined]
    client = logged_in(ws, "ivanova")
    token = csrf_of(client, "/tasks")
    url = f"/tasks/{ids['evil']}/outcome"
    bad = client.post(url, data={"outcome": "teleported", "csrf": token, "back": "/tasks"})
    assert bad.status_code == 303 and "is not an outcome" in client.get("/tasks").text
    missing_due = client.post(url, data={"outcome": "callback", "csrf": token, "back": "/tasks"})
    assert missing_due.status_code == 303 and "needs a due time" in client.get("/tasks").text
    assert ws.task_row(ids["evil"]).outcome is None
    # A callback at 11:00 of the client's next working day (Moscow), typed in the form as local time.
    from orchestrator.tasks import is_day_off

    day = datetime.now(MSK).date() + timedelta(days=1)
    while is_day_off(day, "Europe/Moscow", ws.settings):
        day += timedelta(days=1)
    due = f"{day.isoformat()}T11:00"
    ok = client.post(url, data={"outcome": "callback", "due": due, "note": "после обеда", "csrf": token,
                                "back": "/tasks"})
    assert ok.status_code == 303
    row = ws.task_row(ids["evil"])
    assert row.status == "open" and row.outcome == "callback"
    assert row.due_from == int(datetime.fromisoformat(due).replace(tzinfo=MSK).timestamp())
    assert "next due" in client.get("/tasks").text


# --- pages -------------------------------------------------------------------------------------------


def test_campaign_list_and_report(ws: Workspace) -> None:
    client = logged_in(ws, "marta")
    page = client.get("/campaigns")
    assert page.status_code == 200
    assert "cron 0 10 * * MON" in page.text and 'href="/campaigns/news"' in page.text
    assert re.search(r"Mon \d+ \w+ \d{4}, 10:00", page.text), "the next run (a Monday 10:00) is shown"
    report = client.get("/campaigns/news")
    assert report.status_code == 200
    assert "<svg" in report.text and "Funnel" in report.text and "Sends per local hour" in report.text
    assert "<script" not in report.text.lower()  # charts come without scripts
    assert ">4<" in report.text  # four customers targeted


def test_customer_card_history_and_unsubscribe(ws: Workspace) -> None:
    client = logged_in(ws, "marta")
    card = client.get("/customers/C1")
    assert card.status_code == 200
    assert "Анна Иванова" in card.text and "Next promo message allowed" in card.text
    assert "Contact history" in card.text and "news" in card.text and "Planned" in card.text
    search = client.get("/customers?q=Иванова")
    assert 'href="/customers/C1"' in search.text
    token = csrf_of(client, "/customers/C1")
    answer = client.post("/customers/C1/unsubscribe", data={"csrf": token, "channel": "email"})
    assert answer.status_code == 303 and answer.headers["location"] == "/customers/C1"
    assert ws.customer("C1").unsubscribed_email is not None
    assert {r.status for r in ws.rows(customer_id="C1", channel="email")} == {"suppressed"}
    page = client.get("/customers/C1")
    assert "Unsubscribed from email; 1 pending message(s) withdrawn." in page.text
    assert "unsubscribed" in page.text


def test_hostile_customer_data_is_escaped_everywhere(ws: Workspace) -> None:
    ids = ws.ids  # type: ignore[attr-defined]
    for who, paths in (("marta", ["/customers/EVIL", "/tasks", f"/tasks/{ids['evil']}", "/customers?q=script",
                                  "/control", "/customers/LONG", "/campaigns/news"]),
                       ("ivanova", ["/customers/EVIL", "/tasks", f"/tasks/{ids['evil']}", "/control"])):
        client = logged_in(ws, who)
        for path in paths:
            page = client.get(path)
            assert page.status_code == 200, (who, path)
            text = page.text
            assert "<script>alert" not in text and "<b>Омск</b>" not in text, (who, path)
            assert "&lt;script&gt;" in text or path in ("/control", "/customers/LONG", "/campaigns/news"), (who, path)
            assert "ЖЖЖЖЖЖЖЖЖЖ" * 200 not in text or path == "/customers/LONG", (who, path)
    client = logged_in(ws, "ivanova")
    board = client.get("/tasks").text
    assert "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt; O&#39;Brien «ёлка» 🎄" in board
    assert "&lt;script&gt;alert(&#39;script&#39;)&lt;/script&gt; Звонок" in board
    assert "Ж" * 89 + "…" in board  # the 10 KB name is clipped on the board
    assert "Ж" * 100 not in board


# --- unsubscribe ---------------------------------------------------------------------------------------


def test_one_click_unsubscribe(ws: Workspace) -> None:
    client = ws.client()  # no session, no CSRF token: a mail client posting
    pending = [r for r in ws.rows(customer_id="C1", channel="email") if r.status == "planned"]
    assert pending
    token = unsubscribe_token(SECRET, "C1", "email", "news")
    page = client.get(f"/u/{token}")
    assert page.status_code == 200 and "Unsubscribe?" in page.text and "List-Unsubscribe" in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in page.headers
    assert ws.customer("C1").unsubscribed_email is None  # a GET changes nothing (link scanners)

    answer = client.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 200 and "You are unsubscribed" in answer.text and "emails" in answer.text
    assert ws.customer("C1").unsubscribed_email is not None
    assert {(r.status, r.reason) for r in ws.rows(customer_id="C1", channel="email")} == {("suppressed", "unsubscribed")}
    assert ws.customer("C1").unsubscribed_sms is None  # only the channel of the link
    assert client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200  # twice: harmless
    assert "You are unsubscribed" in client.get(f"/u/{token}").text


@pytest.mark.parametrize("token", [
    unsubscribe_token(SECRET, "C1", "email", "news")[:-2] + "AA",      # signature altered
    unsubscribe_token("another secret", "C2", "email", "news"),        # forged with another key
    unsubscribe_token(SECRET, "C1", "email", "news").replace(".", ""),  # mangled
    "not-a-token",
    unsubscribe_token(SECRET, "GONE", "email", "news"),                # customer no longer there
    unsubscribe_token(SECRET, "C1", "carrier-pigeon", "news"),         # no such channel
])
def test_forged_or_dead_unsubscribe_links(ws: Workspace, token: str) -> None:
    client = ws.client()
    page = client.get(f"/u/{token}")
    assert page.status_code == 400 and "This link does not work" in page.text
    answer = client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 400 and "This link does not work" in answer.text
    for cid in ("C1", "C2"):
        assert ws.customer(cid).unsubscribed_email is None
    assert all(r.status == "planned" for r in ws.rows(channel="email"))


# --- gateway hooks --------------------------------------------------------------------------------------


def _mark(ws: Workspace, row_id: int, **values: Any) -> None:
    with write_transaction(ws.engine) as conn:
        conn.execute(deliveries.update().where(deliveries.c.id == row_id).values(**values))


def test_hooks_need_the_shared_secret(ws: Workspace) -> None:
    client = ws.client()
    for path in ("/hooks/sms/status", "/hooks/sms/inbound"):
        payload = {"ref": "1", "status": "delivered", "from": "+79120000000", "text": "STOP"}
        assert client.post(path, json=payload).status_code == 401
        assert client.post(path, json=payload, headers={"X-Hook-Secret": "wrong"}).status_code == 401
        assert client.post(f"{path}?secret=wrong", json=payload).status_code == 401
        assert client.post(path, json=payload, headers={"X-Hook-Secret": ""}).status_code == 401
    assert ws.customer("C1").unsubscribed_sms is None
    assert client.post("/hooks/sms/status", json={"ref": "1", "status": "x"},
                       headers={"X-Hook-Secret": HOOK_SECRET}).status_code == 200
    assert client.post(f"/hooks/sms/status?secret={HOOK_SECRET}", json={"ref": "1", "status": "x"}).status_code == 200


def test_without_secrets_hooks_and_links_refuse_politely(tmp_path: Path) -> None:
    path = make_workspace(tmp_path, f"sqlite:///{tmp_path / 'o.db'}")
    settings = load_settings(path, environ={"ORCHESTRATOR_GENERAL_SECRET_KEY": ""})
    app = create_app(settings)
    with TestClient(app) as client:
        for headers in ({}, {"X-Hook-Secret": ""}, {"X-Hook-Secret": "anything"}):
            assert client.post("/hooks/sms/inbound", json={"from": "+79120000000", "text": "STOP"},
                               headers=headers).status_code == 401
        link = unsubscribe_token("", "C1", "email", "news")  # what a workspace without a key signs
        for answer in (client.get(f"/u/{link}"), client.post(f"/u/{link}", data={"List-Unsubscribe": "One-Click"})):
            assert answer.status_code == 503 and "cannot be checked at the moment" in answer.text
            assert "secret_key" not in answer.text
    app.state.engine.dispose()


def test_sms_delivery_status_hook(ws: Workspace) -> None:
    fire = datetime.now(MSK).replace(second=0, microsecond=0) + timedelta(days=3)
    ws.plan("promo-sms", fire, channels=["sms"])
    first, second, third = [r.id for r in ws.rows(channel="sms")][:3]
    now = int(time.time())
    _mark(ws, first, status="sent", sent_at=now - 60, provider_id="gw-1")
    _mark(ws, second, status="unknown", error="worker lost")
    _mark(ws, third, status="sent", sent_at=now - 60, provider_id="gw-3")
    client = ws.client()
    headers = {"X-Hook-Secret": HOOK_SECRET}

    answer = client.post("/hooks/sms/status", json={"message_id": "gw-1", "status": "DELIVRD"}, headers=headers)
    assert answer.json() == {"received": 1, "matched": 1, "updated": 1}
    row = ws.rows(id=first)[0]
    assert row.status == "sent" and "delivery report: DELIVRD" in row.detail

    answer = client.post("/hooks/sms/status", data={"ref": str(second), "status": "delivered"}, headers=headers)
    assert answer.json()["matched"] == 1
    row = ws.rows(id=second)[0]
    assert row.status == "sent" and row.sent_at is not None and row.error is None  # unknown resolved

    batch = [{"id": "gw-3", "status": "undelivered"}, {"id": "no-such-id", "status": "delivered"}]
    answer = client.post("/hooks/sms/status", json=batch, headers=headers)
    assert answer.json() == {"received": 2, "matched": 1, "updated": 1}
    row = ws.rows(id=third)[0]
    assert row.status == "failed" and "undelivered" in row.error

    assert client.post("/hooks/sms/status", json={"status": "delivered"}, headers=headers).status_code == 400
    assert client.post("/hooks/sms/status", content=b"{not json", headers={**headers, "Content-Type": "application/json"}).status_code == 400
    # A ref of an email row is not an SMS: nothing matched.
    email_row = ws.rows(channel="email")[0]
    assert client.post("/hooks/sms/status", json={"ref": str(email_row.id), "status": "failed"},
                       headers=headers).json()["matched"] == 0
    assert ws.rows(id=email_row.id)[0].status == "planned"


def test_sms_inbound_stop_hook(ws: Workspace) -> None:
    fire = datetime.now(MSK).replace(second=0, microsecond=0) + timedelta(days=3)
    ws.plan("promo-sms", fire, channels=["sms"])
    client = ws.client()
    headers = {"X-Hook-Secret": HOOK_SECRET}
    hello = client.post("/hooks/sms/inbound", data={"from": "+79121111111", "text": "Спасибо, жду"}, headers=headers)
    assert hello.status_code == 200 and hello.json()["stop"] == 0
    assert ws.customer("C2").unsubscribed_sms is None

    # C1, EVIL and LONG share the fixture's phone +79120000000; a local spelling of it says СТОП.
    answer = client.post(f"/hooks/sms/inbound?secret={HOOK_SECRET}",
                         data={"from": "8 (912) 000-00-00", "text": " стоп! "})
    assert answer.status_code == 200
    assert answer.json() == {"received": 1, "stop": 1, "customers": 3, "withdrawn": 3}
    for cid in ("C1", "EVIL", "LONG"):
        assert ws.customer(cid).unsubscribed_sms is not None
        assert ws.customer(cid).unsubscribed_email is None
        assert {(r.status, r.reason) for r in ws.rows(customer_id=cid, channel="sms")} == {("suppressed", "unsubscribed")}
    assert ws.customer("C2").unsubscribed_sms is None
    assert {r.status for r in ws.rows(customer_id="C2", channel="sms")} == {"planned"}
    assert client.post("/hooks/sms/inbound", json={"msisdn": "79121111111", "message": "STOP"},
                       headers=headers).json()["customers"] == 1
    assert client.post("/hooks/sms/inbound", json={"text": "STOP"}, headers=headers).status_code == 400
    assert client.post("/hooks/sms/inbound", json={"from": "12", "text": "STOP"}, headers=headers).status_code == 400


# --- health and metrics -----------------------------------------------------------------------------------


def test_handlers_get_as_many_threads_as_the_pool_keeps_connections(ws: Workspace) -> None:
    """With more threads than pooled connections, every request beyond the pool opened and closed
    a database session under load (docs/LOAD.md)."""
    import anyio.to_thread

    async def threads() -> float:
        return anyio.to_thread.current_default_thread_limiter().total_tokens

    with TestClient(ws.app) as client:
        assert client.portal is not None and client.portal.call(threads) == ws.engine.pool.size()


def test_healthz(ws: Workspace, tmp_path: Path) -> None:
    answer = ws.client().get("/healthz")
    assert answer.status_code == 200 and answer.json()["status"] == "ok" and answer.json()["database"] == "ok"
    dead = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    app = create_app(ws.settings, engine=dead)
    answer = TestClient(app).get("/healthz")
    assert answer.status_code == 503 and answer.json()["status"] == "error"
    assert "nobody" not in answer.text  # no connection details leak
    metrics = TestClient(app).get("/metrics")
    assert metrics.status_code == 200 and "orchestrator_database_up 0.0" in metrics.text


def test_metrics_has_ledger_and_task_gauges(ws: Workspace) -> None:
    text = ws.client().get("/metrics").text
    assert 'orchestrator_deliveries{channel="email",status="planned"} 4.0' in text
    assert 'orchestrator_call_tasks{status="open"} 5.0' in text
    assert 'orchestrator_call_tasks_overdue{manager="petrov"} 1.0' in text
    assert "orchestrator_database_up 1.0" in text


def test_metrics_collects_the_workers_dramatiq_metrics(ws: Workspace, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prom"
    script = textwrap.dedent(f"""
        import time
        import dramatiq
        from orchestrator.broker import Queues
        done = []
        queues = Queues("memory://", ["sms"], metrics_dir={str(metrics_dir)!r})
        queues.handler = lambda channel, ids: done.append(ids)
        worker = dramatiq.Worker(queues.broker, worker_threads=1)
        worker.start()
        queues.enqueue("sms", [1, 2])
        queues.broker.join("sms")
        worker.join()
        worker.stop()
        assert done == [[1, 2]], done
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "dramatiq_prom_db")}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert list(metrics_dir.glob("*.db"))
    settings_text = (ws.root / "settings.toml").read_text(encoding="utf-8")
    settings_text = settings_text.replace('session_lifetime = "2h"', 'session_lifetime = "2h"\nmetrics_dir = "prom"')
    (ws.root / "settings.toml").write_text(settings_text, encoding="utf-8")
    app = create_app(load_settings(ws.root / "settings.toml"), engine=ws.engine)
    text = TestClient(app).get("/metrics").text
    assert 'dramatiq_messages_total{actor_name="deliver_sms",queue_name="sms"} 1.0' in text
    assert "orchestrator_deliveries{" in text


# --- headers ---------------------------------------------------------------------------------------------


def test_security_headers(ws: Workspace) -> None:
    client = logged_in(ws, "marta")
    page = client.get("/campaigns")
    assert page.headers["x-frame-options"] == "DENY"
    assert "script-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-content-type-options"] == "nosniff"
    css = client.get("/static/app.css")
    assert css.status_code == 200 and "@media (max-width: 720px)" in css.text


# --- the `users` commands ---------------------------------------------------------------------------------


def cli(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args, "--config", str(config)], cwd=REPO,
                          input=stdin, capture_output=True, text=True, timeout=120)


def test_users_commands(tmp_path: Path) -> None:
    config = make_workspace(tmp_path, f"sqlite:///{tmp_path / 'o.db'}")
    secret = "s3cret-Пароль-42"
    added = cli(config, "users", "add", "anna", "--role", "manager", "--name", "Анна", "--email", "Anna@Example.com",
                "--password-stdin", stdin=secret + "\n")
    assert added.returncode == 0, added.stderr
    assert "user anna (manager) created" in added.stdout
    assert secret not in added.stdout + added.stderr

    assert cli(config, "users", "add", "anna", "--role", "manager", "--password-stdin", stdin=secret + "\n").returncode == 2
    wrong_role = cli(config, "users", "add", "bob", "--role", "admin", "--password-stdin", stdin=secret + "\n")
    assert wrong_role.returncode == 2 and "not a role" in wrong_role.stderr
    short = cli(config, "users", "add", "bob", "--role", "marketer", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "too short" in short.stderr and "short\n" not in short.stdout
    bad_login = cli(config, "users", "add", "bad login!", "--role", "marketer", "--password-stdin", stdin=secret + "\n")
    assert bad_login.returncode == 2
    no_tty = cli(config, "users", "add", "bob", "--role", "marketer", stdin="")
    assert no_tty.returncode == 2 and "--password-stdin" in no_tty.stderr
    assert cli(config, "users", "add", "--role", "marketer").returncode == 2  # usage: the login is missing

    listed = cli(config, "users", "list", "--json")
    assert listed.returncode == 0
    users = [json.loads(line) for line in listed.stdout.splitlines()]
    assert users == [{"login": "anna", "name": "Анна", "email": "Anna@example.com", "role": "manager"}]
    assert "scrypt" not in listed.stdout

    new = "another-long-password"
    changed = cli(config, "users", "passwd", "anna", "--password-stdin", stdin=new + "\n")
    assert changed.returncode == 0 and new not in changed.stdout + changed.stderr
    assert cli(config, "users", "passwd", "nobody", "--password-stdin", stdin=new + "\n").returncode == 2

    settings = load_settings(config)
    engine = connect(settings.database_url)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT password_hash FROM users WHERE login = 'anna'")).scalar_one()
    assert stored.startswith("scrypt$") and new not in stored and secret not in stored
    from orchestrator.users import authenticate

    assert authenticate(engine, "anna", new) is not None and authenticate(engine, "anna", secret) is None
    engine.dispose()


def test_password_hashes_are_salted_per_user() -> None:
    from orchestrator.users import hash_password, verify_password

    first, second = hash_password("same password"), hash_password("same password")
    assert first != second
    assert verify_password("same password", first) and verify_password("same password", second)
    assert not verify_password("same passwore", first)
    assert not verify_password("same password", "garbage") and not verify_password("x", "scrypt$1$2$3$!!$!!")


def test_the_users_table_arrives_by_migration(tmp_path: Path) -> None:
    from orchestrator.storage import engine as storage
    from orchestrator.storage.schema import SCHEMA_VERSION, schema_version

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = storage.connect(url, migrate=False)
    with storage.write_transaction(old) as conn:  # a database as version 2 left it
        storage.MIGRATIONS[1](conn)
        storage.MIGRATIONS[2](conn)
        conn.execute(schema_version.insert().values(version=2))
        assert not sa.inspect(conn).has_table("users")
    old.dispose()
    upgraded = storage.connect(url)
    with upgraded.connect() as conn:
        assert sa.inspect(conn).has_table("users") and storage.current_version(conn) == SCHEMA_VERSION
        assert "ix_deliveries_provider" in {ix["name"] for ix in sa.inspect(conn).get_indexes("deliveries")}
    upgraded.dispose()


def test_the_indexes_found_missing_under_load_arrive_by_migration(tmp_path: Path) -> None:
    """A version 4 database gets the STOP hook's index of phones and the pump's of expiring rows
    (docs/LOAD.md)."""
    from orchestrator.storage import engine as storage
    from orchestrator.storage.schema import schema_version

    url = f"sqlite:///{tmp_path / 'v4.db'}"
    old = storage.connect(url)
    with storage.write_transaction(old) as conn:
        conn.execute(sa.text("DROP INDEX ix_customers_phone"))
        conn.execute(sa.text("DROP INDEX ix_deliveries_expiry"))
        conn.execute(schema_version.update().values(version=4))
    old.dispose()
    upgraded = storage.connect(url)
    with upgraded.connect() as conn:
        assert "ix_customers_phone" in {ix["name"] for ix in sa.inspect(conn).get_indexes("customers")}
        assert "ix_deliveries_expiry" in {ix["name"] for ix in sa.inspect(conn).get_indexes("deliveries")}
    upgraded.dispose()


# --- the main flow on both databases ------------------------------------------------------------------------


def test_main_flow(tmp_path: Path, db_url: str) -> None:
    workspace = Workspace(tmp_path, db_url)
    try:
        ids = populate(workspace)
        manager = logged_in(workspace, "ivanova")
        token = csrf_of(manager, "/tasks")
        assert manager.post(f"/tasks/{ids['own']}/outcome",
                            data={"outcome": "ordered", "note": "заказал", "csrf": token}).status_code == 303
        assert workspace.task_row(ids["own"]).status == "done"
        assert manager.get(f"/tasks/{ids['other']}").status_code == 404
        assert manager.get("/control").status_code == 200

        marketer = logged_in(workspace, "marta")
        for path in ("/campaigns", "/campaigns/news", "/customers/EVIL", "/tasks", "/control"):
            page = marketer.get(path)
            assert page.status_code == 200 and "<script>alert" not in page.text, path

        public = workspace.client()
        link = unsubscribe_token(SECRET, "C2", "email", "news")
        assert public.post(f"/u/{link}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
        assert {r.reason for r in workspace.rows(customer_id="C2", channel="email")} == {"unsubscribed"}
        assert public.get("/healthz").json()["status"] == "ok"
        assert 'orchestrator_deliveries{channel="email",status="suppressed"} 1.0' in public.get("/metrics").text
    finally:
        workspace.engine.dispose()


def test_access_log_hides_tokens_and_secrets() -> None:
    import logging

    from orchestrator.web.app import AccessLogRedaction

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "POST", "/u/WyJDMSJd.abc?x=1", "1.1", 200), None)
    AccessLogRedaction().filter(record)
    assert "WyJDMSJd" not in record.getMessage() and "/u/***" in record.getMessage()
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "POST", f"/hooks/sms/status?secret={HOOK_SECRET}&a=1", "1.1", 200), None)
    AccessLogRedaction().filter(record)
    assert HOOK_SECRET not in record.getMessage() and "secret=***&a=1" in record.getMessage()
