"""Digest emails (SPEC 9) on SQLite and PostgreSQL: the manager's morning list of the day's calls,
the marketers' weekly list of escalated tasks, hostile customer data escaped, and the scheduled
job that sends each digest once at its moment whatever the number of passes and schedulers."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from channels.base import Outcome
from channels.outbox import Memory
from orchestrator.digests import (
    _ref, digest_jobs, escalation_digests, morning_digest, run_due_digests, send_message, weekly_escalation_digest,
)
from orchestrator.settings import load_settings
from orchestrator.storage.schema import runs
from orchestrator.tasks import record_outcome
from tests.dispatch_channels import Scripted
from tests.planner_fixtures import customer
from tests.test_tasks import MSK, VLAT, Workspace, at, run_cli, ws  # noqa: F401 - ws is a fixture

EVIL = "<script>alert(1)</script>\nSubject: fake & co"
TUESDAY = at(MSK, 2026, 11, 24, 8, 5)


@pytest.fixture
def scene(ws: Workspace) -> dict[str, Any]:  # noqa: F811
    Memory.outboxes.clear()
    ws.customers(customer("EVIL", name=EVIL, bonus_balance=1500.0), customer("B"),
                 customer("V", timezone="Asia/Vladivostok", zones="Asia/Vladivostok"), customer("W"), customer("P", manager="petrov"))
    ids: dict[str, Any] = {"ws": ws}
    ids["overdue"] = ws.task("EVIL", at(MSK, 2026, 11, 23, 10), at(MSK, 2026, 11, 23, 19), campaign="wake<b>")
    ids["today"] = ws.task("B", at(MSK, 2026, 11, 24, 10), at(MSK, 2026, 11, 24, 19))
    ids["far_east"] = ws.task("V", at(VLAT, 2026, 11, 24, 10), at(VLAT, 2026, 11, 24, 19), zone="Asia/Vladivostok")
    ids["tomorrow"] = ws.task("W", at(MSK, 2026, 11, 25, 10), at(MSK, 2026, 11, 25, 19))
    ids["done"] = ws.task("W", at(MSK, 2026, 11, 24, 10), campaign="done")
    record_outcome(ws.engine, ws.settings, ids["done"], "reached", now=at(MSK, 2026, 11, 24, 7))
    ids["petrov"] = ws.task("P", at(VLAT, 2026, 11, 24, 10), at(VLAT, 2026, 11, 24, 19), manager="petrov",
                            zone="Asia/Vladivostok")
    return ids


def test_the_morning_digest_lists_the_days_calls_escaped(scene: dict[str, Any]) -> None:
    ws: Workspace = scene["ws"]
    message = morning_digest(ws.engine, ws.settings, "ivanova", now=TUESDAY)
    assert message is not None
    assert message.channel == "email" and message.address == "ivanova@example.com" and message.campaign == "digest:morning"
    assert message.content["subject"] == "Calls for 24.11.2026: 3 task(s), 1 overdue"
    html, text = message.content["html"], message.content["text"]
    for task in ("overdue", "today", "far_east"):
        assert f">{scene[task]}<" in html and f"#{scene[task]} " in text
    assert f"#{scene['tomorrow']} " not in text and f"#{scene['petrov']} " not in text and f"#{scene['done']} " not in text
    # Hostile customer data: escaped in HTML, one line in the text part.
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "fake &amp; co" in html
    assert "wake&lt;b&gt;" in html and "<b>" not in html.replace("<b>overdue", "")
    assert "\nSubject: fake" not in text and "<script>alert(1)</script> Subject: fake & co" in text
    assert text.index(f"#{scene['overdue']} ") < text.index(f"#{scene['today']} ")  # overdue first
    assert "2026-11-24 Tue 10:00–19:00 (Asia/Vladivostok)" in text and "1 500.00" in text
    assert "Мария Иванова" in text and "http://127.0.0.1:8000/tasks" in html
    # Petrov's day is Vladivostok's: at 08:05 there it is still Monday evening in Moscow.
    theirs = morning_digest(ws.engine, ws.settings, "petrov", now=at(VLAT, 2026, 11, 24, 8, 5))
    assert theirs is not None and theirs.content["subject"] == "Calls for 24.11.2026: 1 task(s)"


def test_no_digest_without_calls_or_without_an_address(scene: dict[str, Any]) -> None:
    ws: Workspace = scene["ws"]
    assert morning_digest(ws.engine, ws.settings, "sidorov", now=TUESDAY) is None  # no email configured
    for task in ("overdue", "today", "far_east", "tomorrow"):
        record_outcome(ws.engine, ws.settings, scene[task], "refused", now=TUESDAY)
    assert morning_digest(ws.engine, ws.settings, "ivanova", now=TUESDAY) is None
    assert weekly_escalation_digest(ws.engine, ws.settings, now=at(MSK, 2026, 11, 24, 9)) is None


def test_the_weekly_digest_lists_escalated_tasks_per_manager(scene: dict[str, Any]) -> None:
    ws: Workspace = scene["ws"]
    monday = at(MSK, 2026, 11, 30, 9, 0)
    messages = escalation_digests(ws.engine, ws.settings, now=monday)
    assert [m.address for m in messages] == ["boss@example.com", "deputy@example.com"]
    assert len({m.ref for m in messages}) == 2
    message = messages[0]
    html, text = message.content["html"], message.content["text"]
    # Due 23rd..25th; by Monday 30th: more than two working days late, all of them.
    assert message.content["subject"] == "Escalated call tasks: 5 overdue by more than 2 working day(s)"
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "Мария Иванова (ivanova)" in text and "Пётр Петров (petrov)" in text
    assert f"#{scene['overdue']} " in text and f"#{scene['done']} " not in text
    # On Wednesday only Monday's task is more than two working days late.
    wednesday = weekly_escalation_digest(ws.engine, ws.settings, now=at(MSK, 2026, 11, 26, 12))
    assert wednesday is not None and wednesday.content["subject"].startswith("Escalated call tasks: 1 overdue")


def test_refs_are_safe_file_names() -> None:
    from datetime import date

    ref = _ref("morning", "../../etc/passwd\x00", date(2026, 11, 24))
    assert "/" not in ref and ".." not in ref and "\x00" not in ref and ref.startswith("digest-morning-etc-passwd-20261124-")
    assert _ref("morning", "a/b", date(2026, 11, 24)) != _ref("morning", "a.b", date(2026, 11, 24))


def sent(ws: Workspace) -> list[Any]:
    return list(Memory.outboxes.get("email", []))


def test_each_digest_goes_once_at_its_moment(scene: dict[str, Any]) -> None:
    ws: Workspace = scene["ws"]
    monday = lambda h, m: at(MSK, 2026, 11, 30, h, m)  # noqa: E731
    assert [r for r in run_due_digests(ws.engine, ws.settings, now=monday(7, 59)) if r["to"] == "ivanova"] == []
    assert sent(ws) == []
    done = run_due_digests(ws.engine, ws.settings, now=monday(8, 5))
    assert [(r["digest"], r["to"], r["result"]) for r in done] == [("morning", "ivanova", "sent")]
    assert [m.address for m in sent(ws)] == ["ivanova@example.com"]
    again = run_due_digests(ws.engine, ws.settings, now=monday(8, 6))
    assert [r["result"] for r in again] == ["already sent"] and len(sent(ws)) == 1
    weekly = run_due_digests(ws.engine, ws.settings, now=monday(9, 1))
    assert [(r["digest"], r["to"], r["result"]) for r in weekly] == [
        ("morning", "ivanova", "already sent"), ("escalation", "boss@example.com", "sent"),
        ("escalation", "deputy@example.com", "sent")]
    assert [m.address for m in sent(ws)] == ["ivanova@example.com", "boss@example.com", "deputy@example.com"]
    assert run_due_digests(ws.engine, ws.settings, now=monday(13, 30)) == []  # past the 4h grace: nothing
    # Petrov's morning is 08:00 in Vladivostok: 01:00 in Moscow.
    far = run_due_digests(ws.engine, ws.settings, now=at(VLAT, 2026, 12, 1, 8, 0))
    assert [(r["to"], r["result"]) for r in far] == [("petrov", "sent")]
    # Saturday is not a working day: no digest.
    assert run_due_digests(ws.engine, ws.settings, now=at(MSK, 2026, 11, 28, 8, 30)) == []
    with ws.engine.connect() as conn:
        claims = conn.execute(sa.select(runs.c.campaign, runs.c.status).where(runs.c.campaign.like("digest:%"))
                              .order_by(runs.c.id)).all()
    assert [c.status for c in claims] == ["planned"] * 4
    assert claims[0].campaign == "digest:morning:ivanova"


def test_two_schedulers_send_one_digest(scene: dict[str, Any]) -> None:
    ws: Workspace = scene["ws"]
    barrier = threading.Barrier(4)
    results: list[list[dict[str, Any]]] = []

    def scheduler() -> None:
        barrier.wait()
        results.append(run_due_digests(ws.engine, ws.settings, now=at(MSK, 2026, 11, 30, 9, 30)))

    threads = [threading.Thread(target=scheduler) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    outcomes = sorted(r["result"] for done in results for r in done)
    assert outcomes == ["already sent"] * 9 + ["sent"] * 3
    assert sorted(m.address for m in sent(ws)) == ["boss@example.com", "deputy@example.com", "ivanova@example.com"]


def test_a_transient_failure_is_tried_again_and_a_permanent_one_is_not(scene: dict[str, Any]) -> None:
    ws: Workspace = scene["ws"]
    settings = load_settings(ws.root / "settings.toml", environ={
        "ORCHESTRATOR_CHANNELS_EMAIL_BACKEND": "tests.dispatch_channels.Scripted",
        "ORCHESTRATOR_TASKS_MARKETERS": "[]"})
    Scripted.reset(Outcome.TRANSIENT)
    first = run_due_digests(ws.engine, settings, now=at(MSK, 2026, 11, 30, 8, 1))
    assert [r["result"] for r in first] == ["retry: HTTP 503: try later"]
    second = run_due_digests(ws.engine, settings, now=at(MSK, 2026, 11, 30, 8, 2))
    assert [r["result"] for r in second] == ["sent"] and len(Scripted.attempts) == 2
    Scripted.reset(Outcome.PERMANENT)
    third = run_due_digests(ws.engine, settings, now=at(MSK, 2026, 12, 1, 8, 1))
    fourth = run_due_digests(ws.engine, settings, now=at(MSK, 2026, 12, 1, 8, 2))
    assert [r["result"] for r in third] == ["permanent: HTTP 400: invalid number"]
    assert [r["result"] for r in fourth] == ["already sent"] and len(Scripted.attempts) == 1  # never re-sent


def test_digest_jobs_have_the_scheduler_shape(scene: dict[str, Any], tmp_path: Path) -> None:
    ws: Workspace = scene["ws"]
    from datetime import timezone

    jobs = digest_jobs(ws.settings, ws.engine, clock=lambda: at(MSK, 2026, 11, 30, 8, 3).astimezone(timezone.utc))
    assert [(name, interval) for name, interval, _ in jobs] == [("digests", 60.0)]
    assert [r["to"] for r in jobs[0][2]()] == ["ivanova"] and len(sent(ws)) == 1
    bare = tmp_path / "bare.toml"
    bare.write_text('[database]\nurl = "sqlite:///x.db"\n', encoding="utf-8")
    assert digest_jobs(load_settings(bare), ws.engine) == []
    bare.write_text('[tasks]\nmarketers = ["a@example.com"]\n', encoding="utf-8")
    assert digest_jobs(load_settings(bare), ws.engine) == []  # no email channel to send through


def test_send_message_goes_through_the_email_channel_outbox(scene: dict[str, Any], tmp_path: Path) -> None:
    ws: Workspace = scene["ws"]
    settings = load_settings(ws.root / "settings.toml", environ={
        "ORCHESTRATOR_CHANNELS_EMAIL_BACKEND": "channels.outbox.Outbox", "ORCHESTRATOR_CHANNELS_EMAIL_PATH": "var/mail"})
    message = morning_digest(ws.engine, settings, "ivanova", now=TUESDAY)
    assert message is not None
    result = send_message(settings, message)
    assert result.outcome is Outcome.SENT
    (written,) = (ws.root / "var" / "mail").glob("*.eml")
    import email
    from email.policy import default

    parsed = email.message_from_bytes(written.read_bytes(), policy=default)
    assert parsed["Subject"] == "Calls for 24.11.2026: 3 task(s), 1 overdue" and parsed["To"] == "ivanova@example.com"
    html = parsed.get_body(("html",)).get_content()
    plain = parsed.get_body(("plain",)).get_content()
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert "<script>alert(1)</script> Subject: fake & co" in plain  # plain text: shown as typed, on one line


def test_digest_command(scene: dict[str, Any]) -> None:
    ws: Workspace = scene["ws"]
    code, out, err = run_cli(ws, "tasks", "digest", "--manager", "ivanova", "--now", "2026-11-24T08:05")
    assert code == 0, err
    assert "Subject: Calls for 24.11.2026: 3 task(s), 1 overdue" in out
    code, out, _ = run_cli(ws, "tasks", "digest", "--weekly", "--send", "--now", "2026-11-30T09:00")
    assert code == 0 and out.count("-> sent") == 2 and len(sent(ws)) == 2
    code, _, err = run_cli(ws, "tasks", "digest")
    assert code == 2 and "--weekly" in err
    code, _, err = run_cli(ws, "tasks", "digest", "--manager", "nobody")
    assert code == 2
