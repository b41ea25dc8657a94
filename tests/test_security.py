"""Security suite: what an attacker would try, through the real pipeline (CSV import, the CLI, the
planner, dispatch to a real SMTP server and HTTP gateway, the web app), on SQLite and PostgreSQL.

Index — points already covered elsewhere (not repeated here):

* template sandbox: tests/test_rendering.py::test_sandbox_refuses_internals_and_mutation (unit:
  `__class__`, `cycler.__init__.__globals__`, mutation of the context),
  ::test_huge_output_is_refused_before_it_is_built (`*`, `%`, `format`, `center`, `replace`,
  `range` loops), ::test_template_names_cannot_leave_the_folder, ::test_html_is_autoescaped,
  ::test_newlines_cannot_reach_the_subject;
* email headers: tests/test_channel_email.py::test_a_subject_cannot_inject_a_header_or_a_recipient,
  ::test_any_customer_text_reads_back_equal_and_adds_no_header (hypothesis over the writer),
  ::test_an_invalid_address_is_permanent_and_never_reaches_the_server,
  ::test_extra_headers_go_through_but_may_not_replace_the_channels_own;
* web pages: tests/test_web.py::test_hostile_customer_data_is_escaped_everywhere (rows written
  straight into storage), ::test_security_headers (CSP `script-src 'none'`, framing, nosniff);
* CSRF and roles: tests/test_web.py::test_posts_without_the_right_csrf_token_are_refused,
  ::test_login_needs_csrf_and_refuses_open_redirects, ::test_every_route_has_an_access_rule_tested_here,
  ::test_anonymous_users_reach_no_private_page, ::test_a_manager_sees_and_changes_only_their_own,
  ::test_changing_the_password_ends_sessions, ::test_a_forged_session_cookie_is_not_a_login,
  ::test_wrong_password_unknown_user_and_throttle;
* hooks: tests/test_web.py::test_hooks_need_the_shared_secret (none, wrong, header, query),
  ::test_without_secrets_hooks_and_links_refuse_politely (empty setting);
* `sql:` segments: tests/test_segments.py::test_sql_segment_rejects_writes_and_several_statements
  (DELETE, stacked statements, `WITH ... DELETE`, `SELECT INTO`, PRAGMA, `E'\\''` tricks),
  ::test_sql_segment_strings_may_hold_semicolons, ::test_sql_segment_database_guards (stacked
  statements and `nextval` past the text check), ::test_sql_segment_time_limit;
* unsubscribe links: tests/test_links.py::test_tampered_token_is_refused, ::test_other_secret_is_refused,
  ::test_another_customers_payload_with_my_signature_is_refused (unit),
  ::test_empty_secret_makes_links_but_refuses_them; tests/test_web.py::test_one_click_unsubscribe
  (GET changes nothing, POST without session or CSRF), ::test_forged_or_dead_unsubscribe_links;
* logs: tests/test_logs.py (the masking function and the JSON formatter, unit);
  tests/test_web.py::test_access_log_hides_tokens_and_secrets (unit).

What this file adds, by point of the issue:

1. hostile customer fields (CR/LF + `Bcc:`/`To:`, Jinja syntax, `<script>`, `"><img onerror>`)
   from a CSV file through import → run → dispatch to the SMTP sink and the HTTP gateway, and on the
   customer card, the task board and page, the campaign report (test_hostile_*);
2. template sandbox escapes as a marketer meets them: `validate` exits 2 naming file and line,
   `plan`/`run` suppress every recipient with that message; nothing runs, nothing leaks
   (test_template_escapes_*);
3. `sql:` segments that write, stack statements, hide a statement in a comment or a dollar quote,
   read outside the customer data or call server functions — refused on SQLite and PostgreSQL by
   the text check *and* by the database, nothing changed afterwards (test_sql_segment_*);
4. unsubscribe links: every single-character change, splicing another customer's or another
   channel's payload, non-ASCII signatures, links that never expire, replay (test_unsubscribe_*);
5. CSRF on every POST route enumerated from the app, forged / expired / fixated / logged-out
   session cookies, a manager guessing ids of another manager's tasks and clients and every
   marketer page (test_csrf_*, test_session_*, test_manager_*);
6. hooks: secret in header or query, header wins, constant-time comparison, never echoed
   (test_hooks_*);
7. logs at DEBUG over the whole flow (JSON logs and uvicorn's access log of a real server) and the
   CLI's error messages: no phone in any spelling, no email, no configured secret
   (test_logs_*, test_cli_*).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hmac
import io
import json
import logging
import re
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():  # Starlette 1.x suggests httpx2; httpx is what the project has
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from channels.base import Channel, Message, SendResult
from orchestrator.links import unsubscribe_token, verify_unsubscribe
from orchestrator.settings import load_settings
from orchestrator.storage.engine import connect, write_transaction
from orchestrator.storage.schema import call_tasks, customers, deliveries, metadata
from orchestrator.users import add_user
from orchestrator.web import create_app
from orchestrator.web.app import describe_routes
from tests.fakes.gateway import FakeGateway, control
from tests.fakes.smtp_sink import SmtpSink
from tests.test_web import HOOK_SECRET as WEB_HOOK_SECRET
from tests.test_web import PASSWORD, Workspace, csrf_of, logged_in, login, populate
from tests.test_web import SECRET as WEB_SECRET

# The SMTP sink takes the password without TLS (loopback only), so that the password is used.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

MSK = ZoneInfo("Europe/Moscow")
FIRE = datetime(2026, 11, 24, 10, 0, tzinfo=MSK)  # a Tuesday: inside every channel's allowed hours
NOW = "2026-11-24T10:00"

SECRET_KEY = "sk-unsubscribe-9f8e7d6c5b4a3921"
HOOK_SECRET = "hook-Secr3t-4a1b2c3d"
SMTP_PASSWORD = "smtp-Pa55w0rd-x7y8z9"
GATEWAY_TOKEN = "gw-T0ken-q9w8e7r6"
SECRETS = (SECRET_KEY, HOOK_SECRET, SMTP_PASSWORD, GATEWAY_TOKEN)

INJECTED_HEADERS = "\r\nBcc: spy@evil.example\r\nTo: victim@evil.example"
JINJA = "{{ 7*7 }}{% if true %}JINJA{% endif %}{{ links._settings.general.secret_key }}"
SCRIPT_CITY = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
NOTE = "<script>alert('note')</script> {{ 7*7 }} перезвонить"

# The customers of the hostile CSV file: (id, name, first name, email, phone, city, manager).
HOSTILE = [
    ("H1", "Анна Петрова" + INJECTED_HEADERS, JINJA, "anna.petrova@example.com", "+7 916 123-45-67", SCRIPT_CITY,
     "ivanova"),
    ("H2", "Bob <script>alert(3)</script>", "Bob", "bob@example.com" + INJECTED_HEADERS, "89161234568", "Omsk",
     "ivanova"),
    ("H3", "Carol", "Carol", "carol@example.com>, spy@evil.example", "8(916)123 45 69", "Kazan", "petrov"),
    ("H4", "Dave%0d%0aBcc: spy@evil.example", "Dave\nBcc: spy@evil.example", "dave@example.com", "8 916 123 45 70",
     "Tver", "petrov"),
    ("H5", "Frank", "Frank", "frank+p550@example.com", "8-916-123-45-71", "Perm", "petrov"),
]
# Rows the import refuses (no id) or keeps without a bad value: they carry addresses too.
BAD_ROWS = [
    ("", "Nobody", "Nobody", "nobody.here@example.com", "+7 916 123-45-72", "Ufa", "ivanova"),
    ("H6", "Gleb", "Gleb", "gleb@@example.com", "8 (916) 12", "Ufa", "ivanova"),
]
# Every spelling of every phone and email above: none may reach a log line.
PHONES = ["+7 916 123-45-67", "89161234568", "8(916)123 45 69", "8 916 123 45 70", "8-916-123-45-71",
          "+7 916 123-45-72", "(916) 123-45-67", "7 916 1234568", "9161234569"]  # (`8 (916) 12` is no number)
PHONE_DIGITS = [f"91612345{n}" for n in range(67, 73)]  # the national part of each (+7 / 8 / 7 prefixes)
EMAILS = ["anna.petrova@example.com", "bob@example.com", "carol@example.com", "dave@example.com",
          "frank+p550@example.com", "nobody.here@example.com", "gleb@@example.com", "anna.petrova%40example.com"]


def leaks(text: str) -> list[str]:
    """Phones (any spelling, by their national digits), emails and secrets found in `text`."""
    found = [secret for secret in SECRETS if secret in text]
    found += [email for email in EMAILS if email.lower() in text.lower()]
    digits_only = re.sub(r"[\s\-().]", "", text)
    found += [digits for digits in PHONE_DIGITS if digits in digits_only]
    found += [phone for phone in PHONES if phone in text]
    return found


class Exploding(Channel):
    """A webhook plug-in with a bug: it raises, quoting the provider's answer (every phone spelling,
    an email, its own token).  The worker logs the exception with its traceback."""

    async def send(self, message: Message) -> SendResult:
        raise RuntimeError(f"provider refused {message.customer_id}: numbers {', '.join(PHONES)}; "
                           f"write to {EMAILS[0]}; request token={GATEWAY_TOKEN}")


# --- running the command line in this process ----------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli(config: Path, *args: str) -> Result:
    """`orchestrator ARGS --config CONFIG` through the real entry point (exit code, stdout, stderr)."""
    from orchestrator.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([*args, "--config", str(config)])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    result = Result(code, out.getvalue(), err.getvalue())
    assert "Traceback" not in result.err + result.out, result.err
    return result


@contextlib.contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """The logging of the long-running commands (orchestrator.logs.setup_logging: JSON lines,
    masking formatter on the root logger) at DEBUG, written into a buffer; restored afterwards."""
    from orchestrator.logs import setup_logging

    root = logging.getLogger()
    noisy = ("apscheduler", "pika", "httpx", "httpcore", "aiosmtplib")
    saved = (list(root.handlers), root.level, {name: logging.getLogger(name).level for name in noisy})
    # uvicorn's own logging config (another test may have run uvicorn with it) detaches its loggers
    # from the root; a fresh `serve`/`up` process (log_config=None) leaves them attached.
    uvicorn_loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.access", "uvicorn.error")]
    uvicorn_saved = [(lg.handlers[:], lg.propagate, lg.level, lg.disabled) for lg in uvicorn_loggers]
    for lg in uvicorn_loggers:
        lg.handlers, lg.propagate, lg.level, lg.disabled = [], True, logging.NOTSET, False
    stream = io.StringIO()
    real_stderr = sys.stderr
    sys.stderr = stream
    try:
        setup_logging("DEBUG", as_json=True)
    finally:
        sys.stderr = real_stderr
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
        for lg, (handlers, propagate, level, disabled) in zip(uvicorn_loggers, uvicorn_saved):
            lg.handlers, lg.propagate, lg.level, lg.disabled = handlers, propagate, level, disabled


def log_records(text: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert records, "nothing was logged: the capture is not working"
    return records


# --- a workspace fed with hostile customers -----------------------------------------------------------


def write_csv(path: Path, rows: list[tuple[str, ...]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(["id", "name", "first_name", "email", "phone", "city", "manager", "timezone",
                         "consent_email", "consent_sms", "consent_phone", "note"])
        for cid, name, first, email, phone, city, manager in rows:
            writer.writerow([cid, name, first, email, phone, city, manager, "Europe/Moscow", "yes", "yes", "yes",
                             JINJA + SCRIPT_CITY])


EMAIL_TEMPLATE = """<html><body>
<p>Здравствуйте, {{ customer.name }}!</p>
<p>Город: {{ customer.city|default('—') }}. {{ customer.note|default('') }}</p>
<p><a href="{{ links.unsubscribe }}">Отписаться</a></p>
</body></html>
"""
PHONE_TEMPLATE = ("Позвонить {{ customer.name }} ({{ customer.city|default('') }}): "
                  "{{ customer.first_name|default('') }}")
SMS_TEMPLATE = "{{ customer.first_name|default('') }}, скидка 7%"


def make_hostile_workspace(root: Path, url: str, smtp_port: int, gateway_url: str) -> Path:
    for folder in ("segments", "campaigns", "templates/sms", "templates/email", "templates/phone", "data"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "settings.toml").write_text(f"""
[general]
timezone = "Europe/Moscow"
country = "RU"

[web]
base_url = "https://loyalty.example"

[database]
url = "{url}"

[broker]
url = "memory://"

[channels.email]
backend = "channels.email.Smtp"
host = "127.0.0.1"
port = {smtp_port}
username = "mailer"
sender = "Магазин <news@shop.example>"
timeout = 5
helo = "test.local"

[channels.sms]
backend = "channels.sms.HttpGateway"
url = "{gateway_url}/send"
body = "json"
sender = "Shop"
params = {{ to = "{{{{ phone_digits }}}}", msg = "{{{{ text }}}}", token = "{{{{ token }}}}" }}
timeout = 5

[channels.phone]
backend = "channels.phone.CallTasks"

[channels.webhook]
backend = "tests.test_security.Exploding"

[dispatch]
retry_base = "1h"
""", encoding="utf-8")
    (root / "segments" / "everyone.yaml").write_text("description: all\nwhere:\n  id: {is_null: false}\n",
                                                      encoding="utf-8")
    (root / "templates" / "email" / "hostile.html.j2").write_text(EMAIL_TEMPLATE, encoding="utf-8")
    (root / "templates" / "phone" / "hostile.txt.j2").write_text(PHONE_TEMPLATE, encoding="utf-8")
    (root / "templates" / "sms" / "hostile.txt.j2").write_text(SMS_TEMPLATE, encoding="utf-8")
    (root / "templates" / "webhook").mkdir(exist_ok=True)
    (root / "templates" / "webhook" / "hostile.txt.j2").write_text(SMS_TEMPLATE, encoding="utf-8")
    for name, channel in (("news", "email"), ("calls", "phone"), ("texts", "sms"), ("hooks", "webhook")):
        (root / "campaigns" / f"{name}.yaml").write_text(json.dumps({
            "name": name, "segment": "everyone", "category": "promo", "channels": [channel],
            "template": "hostile", "offer": {"discount": 7},
            "subject": "{{ customer.first_name|default('Клиент') }}: {{ customer.name }}",
        }, ensure_ascii=False), encoding="utf-8")
    write_csv(root / "data" / "customers.csv", HOSTILE + BAD_ROWS)
    return root / "settings.toml"


ENVIRONMENT = {
    "ORCHESTRATOR_GENERAL_SECRET_KEY": SECRET_KEY,
    "ORCHESTRATOR_WEB_HOOK_SECRET": HOOK_SECRET,
    "ORCHESTRATOR_CHANNELS_EMAIL_PASSWORD": SMTP_PASSWORD,
    "ORCHESTRATOR_CHANNELS_SMS_TOKEN": GATEWAY_TOKEN,
}


@dataclass
class Flow:
    """What the hostile pipeline left behind: the workspace, the sink, the gateway, the outputs."""

    root: Path
    config: Path
    settings: Any
    engine: sa.Engine
    sink: SmtpSink
    gateway: FakeGateway
    outputs: list[Result] = field(default_factory=list)
    logs: str = ""

    def rows(self, channel: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(deliveries).where(deliveries.c.channel == channel)
                                     .order_by(deliveries.c.customer_id)))

    def tasks(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(call_tasks).order_by(call_tasks.c.id)))


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    """import customers (CSV) → run four campaigns → pump and workers (SMTP sink; an HTTP gateway
    that refuses every number and echoes it back; call tasks; a webhook plug-in that raises) — all
    of it logged at DEBUG."""
    from orchestrator.runtime import Runtime

    root = tmp_path_factory.mktemp("hostile")
    sink = SmtpSink(auth={"mailer": SMTP_PASSWORD}, auth_require_tls=False)  # loopback: AUTH without TLS
    sink.start()
    gateway = FakeGateway()
    gateway.start()
    # A gateway that refuses and quotes the number back, in its own spellings.
    control(gateway.url, answer={"error": "number +{param:to} (8 {param:to}) is blocked"}, answer_status=400)
    config = make_hostile_workspace(root, f"sqlite:///{root / 'orchestrator.db'}", sink.address[1], gateway.url)
    with pytest.MonkeyPatch.context() as patch, captured_logs() as logs:
        for key, value in ENVIRONMENT.items():
            patch.setenv(key, value)
        settings = load_settings(config)
        outputs = [cli(config, "import", "customers", str(root / "data" / "customers.csv"))]
        for campaign in ("news", "calls", "texts", "hooks"):
            outputs.append(cli(config, "run", campaign, "--now", NOW))
        runtime = Runtime(settings, now=lambda: FIRE.timestamp() + 5)
        runtime.start_delivery(threads=2)
        try:
            for _ in range(2):
                runtime.pump()
                runtime.join(timeout=30)
        finally:
            runtime.stop(timeout=10)
        text = logs.getvalue()
    engine = connect(settings.database_url)
    yield Flow(root, config, settings, engine, sink, gateway, outputs, text)
    engine.dispose()
    sink.stop()
    gateway.stop()


# --- 1. hostile customer data, end to end ---------------------------------------------------------------


def test_hostile_csv_is_imported_with_bad_addresses_dropped(flow: Flow) -> None:
    imported = flow.outputs[0]
    assert imported.code == 3, imported.out  # the row without an id is rejected, the others kept
    with flow.engine.connect() as conn:
        stored = {row.id: row for row in conn.execute(sa.select(customers))}
    assert set(stored) == {"H1", "H2", "H3", "H4", "H5", "H6"}
    assert stored["H1"].name == HOSTILE[0][1] and stored["H1"].first_name == JINJA  # kept as typed
    assert stored["H1"].phone == "+79161234567" and stored["H3"].phone == "+79161234569"
    # An address with a line break or a second recipient is no address: dropped, the row kept.
    assert stored["H2"].email is None and stored["H3"].email is None and stored["H6"].email is None
    assert stored["H6"].phone is None


def test_hostile_fields_reach_each_inbox_without_a_header_or_a_recipient(flow: Flow) -> None:
    messages = flow.sink.messages
    # H1 and H4 get their email; H5's server refuses (550); H2, H3 have no valid address.
    assert sorted(m.rcpt_tos for m in messages) == [("anna.petrova@example.com",), ("dave@example.com",)]
    assert all(m.auth_user == "mailer" for m in messages)
    by_rcpt = {m.rcpt_tos[0]: m for m in messages}
    for message in messages:
        names = [line.split(b":", 1)[0].lower() for line in message.header_lines() if line[:1] not in (b" ", b"\t")]
        assert sorted(names) == sorted([b"from", b"to", b"subject", b"date", b"message-id", b"list-unsubscribe",
                                        b"list-unsubscribe-post", b"mime-version", b"content-type"]), names
        parsed = message.parsed()
        assert parsed.get_all("To") == [message.rcpt_tos[0]] and parsed.get_all("Bcc") is None
        assert parsed.get_all("Cc") is None and "\n" not in str(parsed["Subject"])
    anna = by_rcpt["anna.petrova@example.com"].parsed()
    subject = str(anna["Subject"])
    # The subject template printed the fields: literally, on one line, Jinja syntax not evaluated.
    assert subject.startswith(JINJA + ": Анна Петрова") and "Bcc: spy@evil.example" in subject
    assert "49" not in subject.split(":")[0] and SECRET_KEY not in subject
    html = anna.get_body(("html",)).get_content()
    text = anna.get_body(("plain",)).get_content()
    assert "<script>" not in html and "<img" not in html and "onerror=alert(1)>" not in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in html
    assert "{{ 7*7 }}{% if true %}JINJA{% endif %}" in html and SECRET_KEY not in html + text
    assert SCRIPT_CITY in text  # the text part is plain text: shown, never interpreted
    link = re.fullmatch(r"<https://loyalty\.example/u/([\w.-]+)>", str(anna["List-Unsubscribe"]))
    assert link and verify_unsubscribe(SECRET_KEY, link.group(1)) == ("H1", "email", "news")
    dave = by_rcpt["dave@example.com"].parsed()
    assert str(dave["Subject"]) == "Dave Bcc: spy@evil.example: Dave%0d%0aBcc: spy@evil.example"
    failed = {row.customer_id: row for row in flow.rows("email")}
    assert failed["H5"].status == "failed" and failed["H5"].error.startswith("550")
    assert {failed[c].reason for c in ("H2", "H3")} == {"no_contact"}


def test_hostile_fields_reach_the_gateway_and_the_call_script_as_text(flow: Flow) -> None:
    sent = [json.loads(request["body"]) for request in flow.gateway.requests if request["path"] == "/send"]
    anna = next(body for body in sent if body["to"] == "79161234567")
    assert anna["msg"] == JINJA + ", скидка 7%" and anna["token"] == GATEWAY_TOKEN
    outcomes = {row.customer_id: (row.status, row.reason or row.error) for row in flow.rows("sms")}
    assert outcomes.pop("H6") == ("suppressed", "no_contact")  # its phone was not a phone
    assert all(status == "failed" and "is blocked" in error for status, error in outcomes.values()), outcomes
    tasks = {task.customer_id: task for task in flow.tasks()}
    assert tasks["H1"].script == f"Позвонить {HOSTILE[0][1]} ({SCRIPT_CITY}): {JINJA}"
    assert tasks["H1"].manager == "ivanova" and tasks["H3"].manager == "petrov"


@pytest.fixture(scope="module")
def flow_web(flow: Flow) -> Any:
    """The web app over the hostile workspace, with a marketer and the two managers."""
    for login_, role in (("marta", "marketer"), ("ivanova", "manager"), ("petrov", "manager")):
        add_user(flow.engine, login_, role, PASSWORD)
    return create_app(flow.settings, engine=flow.engine)


def web_login(app: Any, user: str) -> TestClient:
    client = TestClient(app, base_url="https://testserver", follow_redirects=False)
    assert login(client, user).status_code == 303
    return client


UNESCAPED = ("<script>alert", "<img src=x", "onerror=alert(1)>", "<script>alert('note')")


def test_hostile_fields_are_escaped_on_every_page_they_reach(flow: Flow, flow_web: Any) -> None:
    anna_task = next(task.id for task in flow.tasks() if task.customer_id == "H1")
    manager = web_login(flow_web, "ivanova")
    token = csrf_of(manager, "/tasks")
    recorded = manager.post(f"/tasks/{anna_task}/outcome", data={"csrf": token, "outcome": "refused", "note": NOTE,
                                                                  "back": "/tasks"})
    assert recorded.status_code == 303
    marketer = web_login(flow_web, "marta")
    pages = [(manager, "/tasks?show=all"), (manager, f"/tasks/{anna_task}"), (manager, "/customers/H1"),
             (manager, "/control"), (marketer, "/customers/H1"), (marketer, "/customers?q=%D0%90%D0%BD%D0%BD%D0%B0"),
             (marketer, "/campaigns/calls"), (marketer, "/campaigns/news"), (marketer, f"/tasks/{anna_task}"),
             (marketer, "/tasks?manager=ivanova&show=all"), (marketer, "/customers/H2")]
    for client, path in pages:
        page = client.get(path)
        assert page.status_code == 200, path
        assert not [raw for raw in UNESCAPED if raw in page.text], path
        assert SECRET_KEY not in page.text and "49JINJA" not in page.text, path
    card = marketer.get("/customers/H1").text
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in card
    assert "{{ 7*7 }}{% if true %}JINJA{% endif %}" in card  # the custom attribute, shown literally
    report = marketer.get("/campaigns/calls").text
    assert "&lt;script&gt;alert(&#39;note&#39;)&lt;/script&gt; {{ 7*7 }} перезвонить" in report
    task_page = manager.get(f"/tasks/{anna_task}").text
    assert "Позвонить Анна Петрова" in task_page and "&lt;script&gt;alert(2)&lt;/script&gt;" in task_page


# --- 2. template sandbox escapes, as the marketer meets them ------------------------------------------

# (template, what the marketer is told).  Each reaches for Python internals, the settings (the
# secret key sits behind `links`), the file system or unbounded work; each must end as a clear
# template error naming the file and the line — never running, never a traceback.
ESCAPES = [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "not allowed in a template"),
    ("{{ self._TemplateReference__context }}", "not allowed in a template"),
    ("{{ self.__dict__ }}", "not allowed in a template"),
    ("{{ cycler.__init__.__globals__.os.system('touch CANARY') }}", "not allowed in a template"),
    ("{{ joiner.__init__.__globals__ }}", "not allowed in a template"),
    ("{{ namespace.__init__.__globals__.__builtins__ }}", "not allowed in a template"),
    ("{{ lipsum.__globals__['os'].popen('touch CANARY').read() }}", "not allowed in a template"),
    ("{{ customer|attr('__class__') }}", "not allowed in a template"),
    ("{{ customer|attr('\\x5f\\x5fclass\\x5f\\x5f') }}", "not allowed in a template"),
    ("{{ now.tzinfo.__reduce_ex__(2) }}", "not allowed in a template"),
    ("{{ offer.update({'discount': 99}) }}", "not allowed in a template"),
    ("{{ links._settings.general.secret_key }}", "not allowed in a template"),
    ("{{ links['_settings'] }}", "not allowed in a template"),
    ("{{ links|attr('_settings') }}", "not allowed in a template"),
    ("{{ '{0.__class__.__mro__}'.format(customer) }}", "not allowed in a template"),
    ("{{ '{0._settings}'.format(links) }}", "not allowed in a template"),
    ("{{ '{0.__init__.__globals__[os]}'.format(cycler) }}", "not allowed in a template"),
    ("{% set f = '{0.__globals__}'.format %}{{ f(lipsum) }}", "not allowed in a template"),
    ("{{ '{x.__class__}'.format_map({'x': customer}) }}", "not allowed in a template"),
    ("{{ '%s'|format(customer.__class__) }}", "not allowed in a template"),
    ("{{ '%s' % links._settings }}", "not allowed in a template"),
    ("{% for i in range(10**9) %}x{% endfor %}", "range() loops run more than"),
    ("{{ 2 ** (10 ** 10) }}", "too large a number"),
    ("{{ ('x' * 100000) * 100000 }}", "longer than"),
    ("{{ config }}", "config is missing"),
    ("{{ request.environ }}", "request is missing"),
    ("{{ os.system('touch CANARY') }}", "os is missing"),
    ("{{ get_flashed_messages.__globals__ }}", "get_flashed_messages is missing"),
    ("{% include '../settings.toml' %}", "included template not found"),
    ("{% import '/etc/passwd' as p %}", "included template not found"),
    ("{% extends '../../../../etc/passwd' %}", "included template not found"),
]


@pytest.fixture(scope="module")
def sandbox_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.planner_fixtures import customer, insert_customers, make_workspace

    root = tmp_path_factory.mktemp("sandbox")
    config = make_workspace(root, f"sqlite:///{root / 'orchestrator.db'}")
    engine = connect(load_settings(config, environ={}).database_url)
    insert_customers(engine, [customer("C1"), customer("C2", first_name=None)])
    engine.dispose()
    return root


@pytest.mark.parametrize("number", range(len(ESCAPES)), ids=[source[:40] for source, _ in ESCAPES])
def test_template_escapes_end_as_a_marketer_error(sandbox_ws: Path, number: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    source, told = ESCAPES[number]
    canary = sandbox_ws / f"canary-{number}"
    source = source.replace("CANARY", str(canary))
    monkeypatch.setenv("ORCHESTRATOR_GENERAL_SECRET_KEY", SECRET_KEY)
    name = f"attack{number}"
    template = sandbox_ws / "templates" / "sms" / f"{name}.txt.j2"
    template.write_text(source, encoding="utf-8")
    campaign = sandbox_ws / "campaigns" / f"{name}.yaml"
    campaign.write_text(json.dumps({"name": name, "segment": "everyone", "category": "promo", "channels": ["sms"],
                                    "template": name}), encoding="utf-8")
    config = sandbox_ws / "settings.toml"
    try:
        checked = cli(config, "validate", str(campaign), "--now", NOW)
        planned = cli(config, "plan", name, "--now", NOW, "--json")
    finally:
        template.unlink()
        campaign.unlink()
    where = f"templates/sms/{name}.txt.j2"
    assert checked.code == 2 and where in checked.err and told in checked.err, checked
    if "included template" in told:
        # Found when the campaign is prepared: no plan at all.
        assert planned.code == 2 and where in planned.err and told in planned.err
    else:
        # Found when a message is rendered: every recipient is suppressed with the reason, nothing
        # planned (docs/DECISIONS.md: a template error suppresses the recipient, `template_error`).
        decisions = [json.loads(line) for line in planned.out.splitlines()]
        assert planned.code == 0 and decisions[-1]["planned"] == 0
        assert {(d["status"], d["reason"]) for d in decisions[:-1]} == {("suppressed", "template_error")}
        assert all(f"{where}:1" in d["detail"] and told in d["detail"] for d in decisions[:-1])
    everything = checked.out + checked.err + planned.out + planned.err
    assert SECRET_KEY not in everything and "test-secret" not in everything
    assert not re.search(r"<(class|module|function|built-in) |__builtins__|Traceback|File \"", everything)
    assert not canary.exists()


def test_template_escape_in_an_email_subject_and_the_ledger_stays_clean(sandbox_ws: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The subject is a template too (compiled from the campaign file), run for real with `run`."""
    monkeypatch.setenv("ORCHESTRATOR_GENERAL_SECRET_KEY", SECRET_KEY)
    campaign = sandbox_ws / "campaigns" / "subject-attack.yaml"
    campaign.write_text(json.dumps({
        "name": "subject-attack", "segment": "everyone", "category": "promo", "channels": ["email"],
        "template": "hello", "subject": "{{ links._settings.general.secret_key }}{{ ''.__class__ }}",
    }), encoding="utf-8")
    config = sandbox_ws / "settings.toml"
    try:
        checked = cli(config, "validate", str(campaign), "--now", NOW)
        ran = cli(config, "run", "subject-attack", "--now", NOW, "--json")
    finally:
        campaign.unlink()
    assert checked.code == 2 and "subject" in checked.err and "not allowed in a template" in checked.err
    assert ran.code == 0 and json.loads(ran.out)["planned"] == 0
    engine = connect(load_settings(config, environ={}).database_url)
    with engine.connect() as conn:
        rows = list(conn.execute(sa.select(deliveries.c.status, deliveries.c.reason, deliveries.c.detail,
                                           deliveries.c.payload).where(deliveries.c.campaign == "subject-attack")))
    engine.dispose()
    assert rows and {(r.status, r.reason) for r in rows} == {("suppressed", "template_error")}
    assert all(r.payload is None and SECRET_KEY not in r.detail for r in rows)


# --- 3. `sql:` segments: one read-only SELECT over the customer data --------------------------------------

SQL_WRITES = [
    "INSERT INTO customers (id, created_at, updated_at) VALUES ('X', 0, 0)",
    "UPDATE customers SET name = 'pwned'",
    "DELETE FROM customers",
    "DROP TABLE users",
    "CREATE TABLE stolen AS SELECT * FROM customers",
    "WITH gone AS (DELETE FROM purchases RETURNING customer_id) SELECT customer_id FROM gone",
    "SELECT id INTO stolen FROM customers",
    "COPY customers TO '/tmp/stolen.csv'",
    "SELECT id FROM customers FOR UPDATE",
    "ATTACH DATABASE '/tmp/stolen.db' AS stolen",
    "TRUNCATE purchases",
    "PRAGMA writable_schema = 1",
]
SQL_STACKED = [
    "SELECT id FROM customers; DELETE FROM customers",
    "SELECT id FROM customers /* harmless */ ; DROP TABLE users",
    "SELECT id FROM customers -- a comment\n; DELETE FROM customers",
    "SELECT id FROM customers WHERE name = $$;$$; DELETE FROM customers",
    "SELECT id FROM customers WHERE name <> $$'$$; DELETE FROM customers; SELECT '",
]
SQL_OUTSIDE = [
    "SELECT login FROM users",
    "SELECT id FROM customers WHERE EXISTS (SELECT 1 FROM users WHERE password_hash LIKE 'scrypt$%')",
    "SELECT CAST(password_hash AS INTEGER) FROM users",
    'SELECT "login" FROM "users"',
    'SELECT login FROM U&"\\0075sers"',
    "SELECT customer_id FROM deliveries",
    "SELECT customer_id FROM call_tasks",
    "SELECT campaign FROM runs",
    "SELECT name FROM sqlite_master",
    "SELECT name FROM sqlite_schema",
    "SELECT name FROM pragma_table_info('users')",
    "SELECT load_extension('/tmp/evil.so')",
    "SELECT usename FROM pg_shadow",
    "SELECT rolpassword FROM pg_catalog.pg_authid",
    "SELECT table_name FROM information_schema.tables",
    "SELECT CAST(pg_read_file('/etc/passwd') AS INTEGER)",
    "SELECT id FROM customers WHERE pg_read_file('/etc/passwd') LIKE 'root%'",
    "SELECT id FROM customers WHERE $$'$$ <> '' AND pg_read_file('/etc/hostname') IS NOT NULL",
    "SELECT current_setting('data_directory')",
    "SELECT id FROM customers WHERE set_config('role', 'postgres', true) IS NOT NULL",
    "SELECT set_config('statement_timeout', '0', false)",
    "SELECT CAST(query_to_xml('select password_hash from users', true, false, '') AS TEXT)",
    "SELECT h FROM dblink('dbname=test', 'SELECT password_hash FROM users') AS t(h TEXT)",
    "SELECT CAST(lo_import('/etc/passwd') AS TEXT)",
    "SELECT id FROM customers WHERE pg_advisory_lock(4242) IS NOT NULL",
    "SELECT id FROM customers WHERE pg_sleep(30) IS NULL",
]
# What the database layer alone (the text check bypassed) must refuse, per database.
DB_LAYER = {
    "sqlite": ["SELECT login FROM users", 'SELECT "login" FROM "users"', "SELECT login FROM `users`",
               "SELECT login FROM [users]", "SELECT CAST(password_hash AS INTEGER) FROM users",
               "SELECT customer_id FROM deliveries", "SELECT name FROM sqlite_master",
               "SELECT name FROM temp.sqlite_master", "SELECT name FROM pragma_table_info('users')",
               "SELECT load_extension('/tmp/evil.so')", "SELECT id FROM customers; DELETE FROM customers"],
    "postgresql": ["SELECT login FROM users", 'SELECT login FROM U&"\\0075sers"', "SELECT usename FROM pg_shadow",
                   "SELECT table_name FROM information_schema.tables",
                   "SELECT CAST(pg_read_file('/etc/passwd') AS INTEGER)", "SELECT current_setting('data_directory')",
                   "SELECT CAST(query_to_xml('select password_hash from users', true, false, '') AS TEXT)",
                   "SELECT id FROM customers WHERE set_config('role', 'postgres', true) IS NOT NULL",
                   "SELECT CAST(lo_import('/etc/passwd') AS TEXT)", "SELECT CAST(nextval('purchases_id_seq') AS TEXT)",
                   "SELECT id FROM customers WHERE pg_advisory_lock(4242) IS NOT NULL",
                   "SELECT id FROM customers WHERE pg_sleep(30) IS NULL",
                   "SELECT 'x') AS q; DELETE FROM customers; SELECT * FROM (SELECT 'x'"],
}
# Customer data only: these keep working (comments and strings may mention anything).
SQL_LEGIT = [
    "SELECT id FROM customers WHERE id IN (SELECT customer_id FROM purchases WHERE category IN ('мебель')\n"
    "GROUP BY customer_id HAVING COUNT(*) >= 1)",
    "SELECT customer_id FROM customer_stats WHERE purchases_count >= 0",
    "SELECT id FROM customers WHERE coalesce(city, '') <> 'users; pg_read_file(1)' -- not users, nor pg_shadow; DELETE",
    "/* password_hash FROM users */ SELECT id FROM customers WHERE name IS NOT NULL",
]
# What must never appear in a refusal: data from outside (hashes, files, settings, logins).
LEAKED = re.compile(r"scrypt|root:|postgresql/|marta|<row>|/var/lib")


def sql_world(engine: sa.Engine) -> None:
    from tests.planner_fixtures import customer, insert_customers

    insert_customers(engine, [customer("C1", name="Анна"), customer("C2", name="Борис")])
    with write_transaction(engine) as conn:
        conn.execute(sa.text("INSERT INTO purchases (key, customer_id, date, day, month, amount, category) "
                             "VALUES ('p1', 'C1', '2026-01-10', 20463, 1, 100.0, 'мебель')"))
    add_user(engine, "marta", "marketer", PASSWORD)


def snapshot(engine: sa.Engine) -> dict[str, Any]:
    """Every row of every table, and on PostgreSQL what a session could leave behind: large
    objects, advisory locks, settings of pooled connections."""
    state: dict[str, Any] = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            state[table.name] = sorted(tuple(map(str, row)) for row in conn.execute(sa.select(table)))
        if engine.dialect.name == "postgresql":
            for name, query in (("large objects", "SELECT count(*) FROM pg_largeobject_metadata"),
                                ("the attack's advisory lock",
                                 "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242"),
                                ("tables", "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")):
                state[name] = conn.exec_driver_sql(query).scalar()
    if engine.dialect.name == "postgresql":
        for _ in range(3):  # several pooled connections: none was left changed
            with engine.connect() as conn:
                state.setdefault("sessions", set()).add(tuple(conn.exec_driver_sql(
                    "SELECT current_setting('statement_timeout'), current_setting('transaction_read_only'), "
                    "current_user, (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND pid = pg_backend_pid())").one()))
    return state


def sql_segment(root: Path, sql: str) -> Any:
    from orchestrator.segments import load_segment

    path = root / "segments" / "attack.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("description: attack\nsql: |\n" + "".join(f"  {line}\n" for line in sql.splitlines()),
                    encoding="utf-8")
    return load_segment(path)


def show(engine: sa.Engine, segment: Any, timeout: str = "5s") -> int:
    """What `segment show` does: validate (a LIMIT 0 trial), then count."""
    from orchestrator.segments import segment_count, validate_segment

    settings = load_settings(None, environ={"ORCHESTRATOR_SEGMENTS_SQL_TIMEOUT": timeout})
    validate_segment(segment, engine)
    return segment_count(engine, segment, now=FIRE, settings=settings)


def test_sql_segments_that_write_stack_or_read_outside_are_refused(engine: sa.Engine, tmp_path: Path) -> None:
    from orchestrator.errors import SegmentError

    sql_world(engine)
    before = snapshot(engine)
    problems = []
    for sql in SQL_WRITES + SQL_STACKED + SQL_OUTSIDE:
        started = time.monotonic()
        try:
            show(engine, sql_segment(tmp_path, sql))
        except SegmentError as error:
            message = str(error)
            if not (error.field == "sql" and error.line == 2 and error.file.endswith("attack.yaml")):
                problems.append((sql, "no file/line/field", message))
            if not re.search(r"must only read|single query|one SELECT", message) or LEAKED.search(message):
                problems.append((sql, message))
        else:
            problems.append((sql, "accepted"))
        if time.monotonic() - started > 4:  # the time limit is 5 s: a refusal never waits for it
            problems.append((sql, "ran instead of being refused"))
    assert not problems, problems
    assert snapshot(engine) == before
    for sql in SQL_LEGIT:
        assert show(engine, sql_segment(tmp_path, sql)) >= 1, sql


def test_sql_segment_database_layer_refuses_on_its_own(engine: sa.Engine, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With the text check out of the way, SQLite's authorizer / PostgreSQL's read-only transaction,
    single-statement protocol and the plan's list of relations and functions still refuse."""
    from orchestrator import segments as module
    from orchestrator.errors import SegmentError

    sql_world(engine)
    before = snapshot(engine)
    monkeypatch.setattr(module, "check_sql", lambda segment: segment.sql.strip())
    problems = []
    for sql in DB_LAYER[engine.dialect.name]:
        started = time.monotonic()
        try:
            show(engine, sql_segment(tmp_path, sql))
            problems.append((sql, "accepted"))
        except SegmentError as error:
            if LEAKED.search(str(error)):
                problems.append((sql, str(error)))
        if time.monotonic() - started > 4:
            problems.append((sql, "ran instead of being refused"))
    assert not problems, problems
    assert snapshot(engine) == before
    assert show(engine, sql_segment(tmp_path, SQL_LEGIT[0])) == 1


@pytest.mark.postgres
def test_sql_segment_cannot_read_another_schemas_customers(pg_url: str, tmp_path: Path) -> None:
    """Another workspace (tenant) in the same database has a `customers` table too: the name is
    allowed, the relation is not (the plan names its schema)."""
    engine = connect(pg_url)
    other = f"other_{uuid_hex()}"
    try:
        sql_world(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {other}")
            conn.exec_driver_sql(f"CREATE TABLE {other}.customers (id TEXT, secret TEXT)")
            conn.exec_driver_sql(f"INSERT INTO {other}.customers VALUES ('C1', 'scrypt$stolen')")
        from orchestrator.errors import SegmentError

        for sql in (f"SELECT id FROM {other}.customers WHERE secret LIKE 'scrypt%'",
                    f"SELECT c.id FROM customers c JOIN {other}.customers o ON o.id = c.id"):
            with pytest.raises(SegmentError, match="must only read customer data") as caught:
                show(engine, sql_segment(tmp_path, sql))
            assert "customers" in str(caught.value)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {other} CASCADE")
        engine.dispose()


def uuid_hex() -> str:
    import uuid

    return uuid.uuid4().hex[:10]


def test_sql_segment_attack_through_the_command_line(db_url: str, tmp_path: Path) -> None:
    """`segment show` and `validate` as a marketer runs them: exit 2, file:line: sql:, nothing leaked."""
    config = tmp_path / "settings.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n', encoding="utf-8")
    engine = connect(db_url)
    sql_world(engine)
    before = snapshot(engine)
    sql_segment(tmp_path, "SELECT id FROM customers WHERE id IN (\n  SELECT 'C1' FROM users WHERE login = 'marta')")
    shown = cli(config, "segment", "show", "attack")
    checked = cli(config, "validate", str(tmp_path / "segments" / "attack.yaml"))
    for result in (shown, checked):
        assert result.code == 2 and "segments/attack.yaml:2: sql: must only read customer data" in result.err, result
        assert not LEAKED.search(result.out + result.err.replace("marta'", ""))
    assert snapshot(engine) == before
    engine.dispose()


# --- 4. unsubscribe links ------------------------------------------------------------------------------

@pytest.fixture
def web(tmp_path: Path) -> Iterator[Workspace]:
    """tests/test_web.py's workspace: customers of two managers, an email campaign planned, tasks."""
    workspace = Workspace(tmp_path, f"sqlite:///{tmp_path / 'orchestrator.db'}")
    workspace.ids = populate(workspace)  # type: ignore[attr-defined]
    yield workspace
    workspace.engine.dispose()


def state_of(ws: Workspace) -> tuple[Any, ...]:
    """Everything an unsubscribe can change: the customers and the ledger, row by row."""
    with ws.engine.connect() as conn:
        return (tuple(map(tuple, conn.execute(sa.select(customers).order_by(customers.c.id)))),
                tuple(map(tuple, conn.execute(sa.select(deliveries).order_by(deliveries.c.id)))))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_unsubscribe_any_changed_character_or_bit_is_refused(web: Workspace) -> None:
    client = web.client()
    before = state_of(web)
    token = unsubscribe_token(WEB_SECRET, "C1", "email", "news")
    payload, signature = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    forged = set()
    for index, char in enumerate(token):  # every single character changed
        if char != ".":
            forged.add(token[:index] + alphabet[(alphabet.index(char) + 1) % 64] + token[index + 1:])
    raw = unb64(signature)
    for bit in range(len(raw) * 8):  # every bit of the signature flipped
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        forged.add(f"{payload}.{b64(bytes(flipped))}")
    forged |= {token + "A", token[:-1], payload + "." + signature[:-4], payload + "..", "." + signature}
    forged.discard(token)
    refused = {candidate: client.post(f"/u/{candidate}", data={"List-Unsubscribe": "One-Click"}).status_code
               for candidate in forged}
    assert set(refused.values()) == {400}, {k: v for k, v in refused.items() if v != 400}
    assert state_of(web) == before


def test_unsubscribe_payloads_of_another_customer_or_channel_are_refused(web: Workspace) -> None:
    client = web.client()
    before = state_of(web)
    mine = unsubscribe_token(WEB_SECRET, "C1", "email", "news")
    theirs = unsubscribe_token(WEB_SECRET, "C2", "email", "news")
    payload, signature = mine.split(".")
    spliced = [
        f"{theirs.split('.')[0]}.{signature}",                               # C2's payload, C1's signature
        f"{payload}.{theirs.split('.')[1]}",                                # and the other way round
        f"{b64(json.dumps(['C2', 'email', 'news']).encode())}.{signature}",  # C1's token re-aimed at C2
        f"{b64(json.dumps(['C1', 'sms', 'news']).encode())}.{signature}",    # ... at another channel
        f"{b64(json.dumps(['C1', 'email', 'other']).encode())}.{signature}",  # ... at another campaign
        f"{b64(json.dumps(['C1', 'email', 'news', 'x']).encode())}.{signature}",
        unsubscribe_token("", "C2", "email", "news"),                       # signed with an empty key
        unsubscribe_token(WEB_SECRET + " ", "C2", "email", "news"),         # with a near miss of the key
    ]
    for token in spliced:
        for answer in (client.get(f"/u/{token}"), client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})):
            assert answer.status_code == 400 and "This link does not work" in answer.text, token
    assert state_of(web) == before


@pytest.mark.parametrize("signature", ["é", "%C3%A9", "%00", "\u202e", "AAAAAAAAAAAAAAAAAAAAAA%F0%9F%98%80"])
def test_unsubscribe_non_ascii_signature_is_a_refusal_not_a_server_error(web: Workspace, signature: str) -> None:
    client = TestClient(web.app, base_url="https://testserver", raise_server_exceptions=False)
    payload = unsubscribe_token(WEB_SECRET, "C1", "email", "news").split(".")[0]
    for answer in (client.get(f"/u/{payload}.{signature}"),
                   client.post(f"/u/{payload}.{signature}", data={"List-Unsubscribe": "One-Click"})):
        assert answer.status_code == 400 and "This link does not work" in answer.text
    assert web.customer("C1").unsubscribed_email is None


def test_unsubscribe_links_do_not_expire(web: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SPEC gives unsubscribe links no lifetime, and the token carries no time (payload:
    customer, channel, campaign): a link from a message read years later still works (RFC 8058
    expects the link to keep working; a dead link would leave the customer subscribed)."""
    with web.engine.connect() as conn:
        payload = conn.execute(sa.select(deliveries.c.payload).where(deliveries.c.customer_id == "C1",
                                                                     deliveries.c.channel == "email")).scalar_one()
    link = payload["unsubscribe"]
    assert link.startswith("https://loyalty.example/u/")
    token = link.rsplit("/", 1)[1]
    assert json.loads(unb64(token.split(".")[0])) == ["C1", "email", "news"]  # nothing that could expire
    later = time.time() + 5 * 365 * 86400
    monkeypatch.setattr(time, "time", lambda: later)
    answer = web.client().post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200 and "You are unsubscribed" in answer.text
    assert web.customer("C1").unsubscribed_email == int(later)


def test_unsubscribe_replayed_changes_nothing_more(web: Workspace) -> None:
    client = web.client()
    token = unsubscribe_token(WEB_SECRET, "C1", "email", "news")
    first = client.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click",
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert first.status_code == 200
    after_first = state_of(web)
    assert web.customer("C1").unsubscribed_email is not None
    time.sleep(1.1)  # a replay a second later would show in any timestamp it rewrote
    for _ in range(3):
        again = client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
        assert again.status_code == 200 and "You are unsubscribed" in again.text
    assert client.get(f"/u/{token}").status_code == 200
    assert state_of(web) == after_first


# --- 5. CSRF, sessions, managers ----------------------------------------------------------------------

PUBLIC_POSTS = {"/u/{token}", "/hooks/sms/status", "/hooks/sms/inbound"}
PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")


def fill(path: str, values: dict[str, str]) -> str:
    return PARAM.sub(lambda m: values.get(m.group(1), "1"), path)


def effects(ws: Workspace) -> tuple[Any, ...]:
    with ws.engine.connect() as conn:
        return (state_of(ws), tuple(map(tuple, conn.execute(sa.select(call_tasks).order_by(call_tasks.c.id)))))


def test_csrf_every_post_route_refuses_a_missing_or_foreign_token(web: Workspace) -> None:
    ids = web.ids  # type: ignore[attr-defined]
    routes = [route["path"] for route in describe_routes(web.app) if "POST" in route["methods"]]
    private = [path for path in routes if path not in PUBLIC_POSTS]
    assert {"/login", "/logout", "/tasks/{task_id:int}/outcome",
            "/customers/{customer_id:path}/unsubscribe"} <= set(private)
    values = {"task_id": str(ids["own"]), "customer_id": "C1"}
    form = {"outcome": "reached", "note": "csrf", "channel": "email", "login": "marta", "password": PASSWORD}
    victim = logged_in(web, "marta")
    attacker = logged_in(web, "petrov")  # a genuine token, of another session
    foreign = csrf_of(attacker, "/tasks")
    before = effects(web)
    for path in private:
        url = fill(path, values)
        own = csrf_of(victim, "/tasks")
        attempts = {
            "no token": dict(data=form),
            "empty token": dict(data={**form, "csrf": ""}),
            "wrong token": dict(data={**form, "csrf": own[:-1] + ("A" if own[-1] != "A" else "B")}),
            "another session's token": dict(data={**form, "csrf": foreign}),
            "token in a header only": dict(data=form, headers={"X-CSRF-Token": own, "X-CSRFToken": own}),
            "token in the query only": dict(data=form, params={"csrf": own}),
            "JSON body": dict(json={**form, "csrf": own}),
            "text/plain body (a cross-site form)": dict(content=f"csrf={own}&outcome=reached".encode(),
                                                        headers={"Content-Type": "text/plain"}),
        }
        for what, request in attempts.items():
            answer = victim.post(url, **request)
            assert answer.status_code == 403, (path, what, answer.status_code)
        assert effects(web) == before, path
        assert victim.get("/campaigns").status_code == 200  # still logged in: a refused logout did nothing
    # The same forms with the session's own token do act (the checks above refused for the token).
    token = csrf_of(victim, "/tasks")
    done = victim.post(fill("/tasks/{task_id:int}/outcome", values), data={**form, "csrf": token})
    assert done.status_code == 303 and web.task_row(ids["own"]).outcome == "reached"


def sign_session(secret: str, data: dict[str, Any], *, age: int = 0) -> str:
    """A session cookie as Starlette's SessionMiddleware writes it (itsdangerous TimestampSigner)."""
    import itsdangerous

    signer = itsdangerous.TimestampSigner(secret)
    payload = base64.b64encode(json.dumps(data).encode("utf-8"))
    if age:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(signer, "get_timestamp", lambda: int(time.time()) - age)
            return signer.sign(payload).decode("utf-8")
    return signer.sign(payload).decode("utf-8")


def test_session_cookies_forged_expired_or_fixated_are_not_logins(web: Workspace) -> None:
    from orchestrator.users import get_user
    from orchestrator.web.auth import SESSION_COOKIE, session_secret

    derived = session_secret(WEB_SECRET)
    assert derived is not None
    real_key = get_user(web.engine, "marta")["session_key"]  # type: ignore[index]
    session = {"login": "marta", "key": real_key, "csrf": "x" * 43}
    forged = {
        "signed with the raw secret_key": sign_session(WEB_SECRET, session),
        "signed with an empty key": sign_session("", session),
        "right key, no fingerprint": sign_session(derived, {"login": "marta"}),
        "right key, another user's fingerprint": sign_session(derived, {**session, "login": "ivanova"}),
        "right key, older than the session lifetime (2h)": sign_session(derived, session, age=3 * 3600),
        "no signature": base64.b64encode(json.dumps(session).encode()).decode(),
    }
    for what, cookie in forged.items():
        client = web.client()
        client.cookies.set(SESSION_COOKIE, cookie)
        assert client.get("/campaigns").status_code == 303, what
        assert client.post("/customers/C1/unsubscribe", data={"csrf": "x" * 43, "channel": "email"}).status_code == 403
    assert web.customer("C1").unsubscribed_email is None
    # What the real cookie holds: no password hash, no secret (it is signed, not encrypted).
    client = logged_in(web, "marta")
    content = base64.b64decode(client.cookies[SESSION_COOKIE].split(".")[0] + "==").decode("utf-8")
    assert set(json.loads(content)) <= {"login", "key", "csrf", "flash"}
    assert "scrypt" not in content and WEB_SECRET not in content and PASSWORD not in content


def test_session_fixation_a_planted_cookie_stays_anonymous(web: Workspace) -> None:
    from orchestrator.web.auth import SESSION_COOKIE

    browser = web.client()
    planted_token = csrf_of(browser)  # the login form's session, whose cookie the attacker planted here
    planted = browser.cookies[SESSION_COOKIE]
    answer = browser.post("/login", data={"login": "marta", "password": PASSWORD, "csrf": planted_token, "next": "/"})
    assert answer.status_code == 303 and browser.get("/campaigns").status_code == 200
    assert answer.cookies[SESSION_COOKIE] != planted and csrf_of(browser, "/campaigns") != planted_token
    attacker = web.client()
    attacker.cookies.set(SESSION_COOKIE, planted)
    assert attacker.get("/campaigns").status_code == 303  # the planted session did not become a login
    refused = attacker.post("/customers/C1/unsubscribe", data={"csrf": planted_token, "channel": "email"})
    assert refused.status_code == 403
    assert web.customer("C1").unsubscribed_email is None


def test_session_a_copied_cookie_dies_with_the_logout(web: Workspace) -> None:
    """A cookie copied while logged in (a shared computer, a proxy log) must not outlive the logout:
    the cookie is signed, not stored, so the logout ends every session of the user."""
    from orchestrator.web.auth import SESSION_COOKIE

    ids = web.ids  # type: ignore[attr-defined]
    user = logged_in(web, "ivanova")
    token = csrf_of(user, "/tasks")
    copied = user.cookies[SESSION_COOKIE]
    other_browser = logged_in(web, "ivanova")
    assert user.post("/logout", data={"csrf": token}).status_code == 303
    thief = web.client()
    thief.cookies.set(SESSION_COOKIE, copied)
    assert thief.get("/tasks").status_code == 303
    answer = thief.post(f"/tasks/{ids['own']}/outcome", data={"csrf": token, "outcome": "refused"})
    assert answer.status_code == 403 and web.task_row(ids["own"]).outcome is None
    assert other_browser.get("/tasks").status_code == 303  # logging out ends every session of the user
    assert logged_in(web, "ivanova").get("/tasks").status_code == 200  # and a new login works


def test_manager_guessing_ids_reaches_nothing_of_another_manager(web: Workspace) -> None:
    ids = web.ids  # type: ignore[attr-defined]
    client = logged_in(web, "ivanova")
    with web.engine.connect() as conn:
        owner = dict(conn.execute(sa.select(call_tasks.c.id, call_tasks.c.manager)).all())
    token = csrf_of(client, "/tasks")
    before = effects(web)
    missing = client.get("/tasks/999999")
    for task_id in range(1, max(owner) + 4):
        page = client.get(f"/tasks/{task_id}")
        if owner.get(task_id) == "ivanova":
            assert page.status_code == 200
            continue
        # Another manager's task and a task that does not exist look the same: no existence oracle.
        assert (page.status_code, page.text) == (404, missing.text), task_id
        posted = client.post(f"/tasks/{task_id}/outcome", data={"csrf": token, "outcome": "wrong_number",
                                                                 "note": "guess", "back": "/tasks"})
        assert posted.status_code == 404, task_id
    assert effects(web) == before
    for customer_id in ("C2", "NOPE", "C2/unsubscribe", "../C2"):
        assert client.get(f"/customers/{customer_id}").status_code == 404, customer_id
        assert client.post(f"/customers/{customer_id}/unsubscribe",
                           data={"csrf": token, "channel": "email"}).status_code == 404, customer_id
    assert effects(web) == before
    assert web.task_row(ids["other"]).outcome is None and web.task_row(ids["late"]).outcome is None


def test_manager_reaches_no_marketer_page_and_sees_no_other_managers_data(web: Workspace) -> None:
    """Every GET route of the app, with every id the database holds: a manager gets 403 on the
    marketer's pages, 404 on what is not theirs, and no page shows another manager's client."""
    ids = web.ids  # type: ignore[attr-defined]
    client = logged_in(web, "ivanova")
    with web.engine.connect() as conn:
        customer_ids = [row[0] for row in conn.execute(sa.select(customers.c.id))]
    candidates = {"task_id": [str(i) for i in ids.values()], "customer_id": customer_ids, "name": ["news", "nope"],
                  "token": ["x"]}
    seen = 0
    for route in describe_routes(web.app):
        if "GET" not in route["methods"] or route["path"].startswith(("/u/", "/static", "/healthz", "/metrics")):
            continue
        names = [m.group(1) for m in PARAM.finditer(route["path"])]
        choices = [{}] if not names else [{names[0]: value} for value in candidates[names[0]]]
        for values in choices:
            for query in ("", "?manager=petrov&show=all", "?q=C2"):
                url = fill(route["path"], values) + query
                page = client.get(url)
                marketers_only = route["path"].startswith(("/campaigns", "/customers"))
                if marketers_only and route["path"] != "/customers/{customer_id:path}":
                    assert page.status_code == 403, url
                assert page.status_code in (200, 303, 403, 404), url
                if page.status_code == 200:
                    seen += 1
                    assert "Пётр Сидоров" not in page.text and "+79121111111" not in page.text, url
                    assert f"/tasks/{ids['other']}" not in page.text and f"/tasks/{ids['late']}" not in page.text, url
    assert seen >= 5


# --- 6. the SMS gateway's hooks ------------------------------------------------------------------------


def test_hooks_refuse_every_near_miss_of_the_secret_and_compare_in_constant_time(
        web: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret goes in the `X-Hook-Secret` header or the `secret` query parameter (module doc of
    orchestrator/web/public.py; the SPEC says only "a shared secret"); a header present wins."""
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(given: Any, expected: Any) -> bool:
        compared.append((given, expected))
        return original(given, expected)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    client = web.client()
    marketer = logged_in(web, "marta")  # a session is no substitute for the secret
    stop = {"from": "+79121111111", "text": "STOP"}  # C2's phone
    before = state_of(web)
    near_misses = {
        "none": dict(),
        "empty header": dict(headers={"X-Hook-Secret": ""}),
        "upper case": dict(headers={"X-Hook-Secret": WEB_HOOK_SECRET.upper()}),
        "a prefix": dict(headers={"X-Hook-Secret": WEB_HOOK_SECRET[:-1]}),
        "longer": dict(headers={"X-Hook-Secret": WEB_HOOK_SECRET + "x"}),
        "non-ASCII": dict(params={"secret": WEB_HOOK_SECRET[:-1] + "ё"}),
        "query with a trailing space": dict(params={"secret": WEB_HOOK_SECRET + " "}),
        "wrong header, right query": dict(headers={"X-Hook-Secret": "wrong"}, params={"secret": WEB_HOOK_SECRET}),
        "query name in another case": dict(params={"Secret": WEB_HOOK_SECRET}),
        "bearer token": dict(headers={"Authorization": f"Bearer {WEB_HOOK_SECRET}"}),
        "in the body": dict(body_secret=True),
        "in a cookie": dict(headers={"Cookie": f"secret={WEB_HOOK_SECRET}"}),
    }
    for path in ("/hooks/sms/inbound", "/hooks/sms/status"):
        for what, request in near_misses.items():
            body = {**stop, "ref": "1", "status": "failed"}
            if request.pop("body_secret", False):
                body["secret"] = WEB_HOOK_SECRET
            answer = client.post(path, json=body, **request)
            assert answer.status_code == 401, (path, what)
            assert WEB_HOOK_SECRET not in answer.text and WEB_HOOK_SECRET[:-1] not in answer.text
            request.setdefault("headers", {})
        assert marketer.post(path, json=stop).status_code == 401
    assert state_of(web) == before
    expected = WEB_HOOK_SECRET.encode("utf-8")
    assert (WEB_HOOK_SECRET[:-1].encode(), expected) in compared and (b"wrong", expected) in compared
    # Every secret given (6 near misses per hook) went through compare_digest, none through `==`.
    assert len([pair for pair in compared if pair[1] == expected]) == 12
    for request in (dict(headers={"X-Hook-Secret": WEB_HOOK_SECRET}), dict(params={"secret": WEB_HOOK_SECRET}),
                    dict(headers={"X-Hook-Secret": WEB_HOOK_SECRET}, params={"secret": "wrong"})):
        assert client.post("/hooks/sms/inbound", json=stop, **request).status_code == 200
    assert web.customer("C2").unsubscribed_sms is not None


# --- 7. logs and the command line's messages ---------------------------------------------------------------


def test_logs_of_the_pipeline_hold_no_phone_email_or_secret(flow: Flow) -> None:
    records = log_records(flow.logs)
    loggers = {record["logger"] for record in records}
    assert {"orchestrator.pump", "orchestrator.runtime"} <= loggers and any(r["level"] == "debug" for r in records)
    raised = [r for r in records if r["logger"] == "orchestrator.dispatch" and "provider refused" in r.get("error", "")]
    assert raised and "8*******70" in raised[0]["error"] and "token=***" in raised[0]["error"]
    found = [(record["logger"], record["msg"], leaks(record["msg"] + record.get("error", ""))) for record in records]
    assert not [item for item in found if item[2]], [item for item in found if item[2]]
    for output in flow.outputs:  # the import report (bad rows carry addresses) and the runs' summaries
        assert not leaks(output.out + output.err), output


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_logs_of_the_web_app_hold_no_phone_email_or_secret(flow: Flow, flow_web: Any) -> None:
    """A real uvicorn server (as `up` runs it), its access log and the app's own lines at DEBUG,
    while people log in with phones and emails, search customers by them, and the gateway calls."""
    import httpx

    from orchestrator.runtime import WebServer

    port = free_port()
    anna_link = unsubscribe_token(SECRET_KEY, "H1", "email", "news")
    environ = {**ENVIRONMENT, "ORCHESTRATOR_WEB_BASE_URL": f"http://127.0.0.1:{port}"}  # http: cookies not Secure
    settings = load_settings(flow.config, environ=environ)
    with captured_logs() as logs:
        server = WebServer(settings, "127.0.0.1", port)
        server.start()
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=False, timeout=10) as client:
                for _ in range(100):
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.05)
                anonymous = client.get("/customers?q=8+916+123+45+70")
                assert anonymous.status_code == 303
                assert client.get(anonymous.headers["location"]).status_code == 200
                token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
                for name in ("8 916 123 45 70", "anna.petrova@example.com", "+7 916 123-45-67"):
                    failed = client.post("/login", data={"login": name, "password": "x" * 12, "csrf": token})
                    assert failed.status_code == 401
                signed_in = client.post("/login", data={"login": "marta", "password": PASSWORD, "csrf": token})
                assert signed_in.status_code == 303
                for path in ("/customers?q=anna.petrova%40example.com", "/customers?q=%2B7+916+123-45-67",
                             "/customers?q=89161234568", "/customers/H1", "/customers/anna.petrova@example.com",
                             "/customers/8%20916%20123%2045%2070", f"/u/{anna_link}"):
                    assert client.get(path).status_code in (200, 404), path
                hook = client.post(f"/hooks/sms/inbound?secret={HOOK_SECRET}",
                                   data={"from": "+7 916 123-45-72", "text": "STOP"})
                assert hook.status_code == 200 and hook.json()["customers"] == 0
                status = client.post("/hooks/sms/status", headers={"X-Hook-Secret": HOOK_SECRET},
                                     json={"message_id": "gw-1", "status": "DELIVRD", "phone": "89161234568"})
                assert status.json()["matched"] == 0
        finally:
            server.stop()
    records = log_records(logs.getvalue())
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert len(access) >= 12 and any("failed login" in r["msg"] for r in records)
    found = [(record["logger"], record["msg"], leaks(record["msg"] + record.get("error", ""))) for record in records]
    assert not [item for item in found if item[2]], [item for item in found if item[2]]
    assert not any("/u/" + anna_link.split(".")[0] in r["msg"] for r in access)  # the token acts for Anna


def test_cli_errors_do_not_print_the_database_password(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    password = "Db-Pa55w0rd-7q"
    config.write_text(f'[database]\nurl = "postgresql://loyalty:{password}@127.0.0.1:{free_port()}/shop"\n',
                      encoding="utf-8")
    for args in (("deliveries",), ("validate",), ("unsubscribe", "C1", "--channel", "sms")):
        result = cli(config, *args)
        assert result.code == 1 and "cannot open the database" in result.err, result
        assert password not in result.out + result.err and "loyalty:***@127.0.0.1" in result.err
    with pytest.MonkeyPatch.context() as patch:  # the same from the environment
        patch.setenv("ORCHESTRATOR_DATABASE_URL", f"postgresql://loyalty:{password}@127.0.0.1:1/shop")
        result = cli(config, "deliveries")
    assert result.code == 1 and password not in result.err
