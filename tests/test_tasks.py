"""Managers' call tasks (SPEC 9) on SQLite and PostgreSQL: the board with the live card, each
outcome's rules, rescheduling into the customer's next working window (weekends and Russian
holidays in the customer's zone), managers kept out of each other's tasks, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from orchestrator.errors import InputError, NotFound
from orchestrator.settings import Settings, load_settings
from orchestrator.storage.engine import connect, write_transaction
from orchestrator.storage.schema import call_tasks, customer_stats, customers, deliveries, purchases
from orchestrator.tasks import OUTCOMES, get_task, list_tasks, record_outcome
from tests.planner_fixtures import customer, insert_customers, make_workspace

REPO = Path(__file__).resolve().parent.parent
MSK = ZoneInfo("Europe/Moscow")
VLAT = ZoneInfo("Asia/Vladivostok")
UTC = timezone.utc

EXTRA = """
[broker]
url = "memory://"

[channels.phone]
backend = "channels.phone.CallTasks"

[channels.email]
backend = "channels.outbox.Memory"

[tasks]
marketers = ["boss@example.com", "deputy@example.com"]

[tasks.managers.ivanova]
email = "ivanova@example.com"
name = "Мария Иванова"

[tasks.managers.petrov]
email = "petrov@example.com"
name = "Пётр Петров"
timezone = "Asia/Vladivostok"
"""


# --- fixtures shared with test_control.py and test_digests.py ---------------------------------


class Workspace:
    def __init__(self, root: Path, settings: Settings, engine: sa.Engine) -> None:
        self.root = root
        self.settings = settings
        self.engine = engine
        self._deliveries = 0

    def customers(self, *rows: dict[str, Any]) -> None:
        insert_customers(self.engine, list(rows))

    def task(self, customer_id: str, due_from: datetime, due_until: datetime | None = None, *, manager: str = "ivanova",
             zone: str = "Europe/Moscow", zone_source: str | None = "column", campaign: str = "wake",
             status: str = "open", attempts: int = 0, outcome: str | None = None, note: str | None = None) -> int:
        """A call task as `channels.phone.CallTasks` writes it (its delivery row is not needed)."""
        self._deliveries += 1
        start = int(due_from.timestamp())
        end = int(due_until.timestamp()) if due_until else start + 3600
        with write_transaction(self.engine) as conn:
            return conn.execute(call_tasks.insert().returning(call_tasks.c.id), {
                "delivery_id": 100000 + self._deliveries, "campaign": campaign, "customer_id": customer_id,
                "manager": manager, "status": status, "due_from": start, "due_until": end, "zone": zone,
                "zone_source": zone_source, "script": f"Позвонить {customer_id}", "offer": {"discount": 7},
                "card": {"name": f"snapshot {customer_id}"}, "attempts": attempts, "outcome": outcome, "note": note,
                "created_at": start, "updated_at": start,
            }).scalar_one()

    def delivery(self, customer_id: str, channel: str, status: str = "planned", *, category: str = "promo",
                 sent_at: datetime | None = None, run_id: int = 1, campaign: str = "promo") -> int:
        at = int((sent_at or datetime(2026, 2, 1, tzinfo=UTC)).timestamp())
        with write_transaction(self.engine) as conn:
            return conn.execute(deliveries.insert().returning(deliveries.c.id), {
                "run_id": run_id, "campaign": campaign, "customer_id": customer_id, "channel": channel,
                "category": category, "status": status, "send_at": at, "sent_at": at if status == "sent" else None,
                "created_at": at, "updated_at": at,
            }).scalar_one()

    def purchase(self, customer_id: str, day: date, amount: float, category: str | None = None) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(purchases.insert(), {
                "key": f"{customer_id}-{day}-{amount}", "customer_id": customer_id, "date": day,
                "day": (day - date(1970, 1, 1)).days, "month": day.month, "amount": amount, "category": category,
            })

    def row(self, table: sa.Table, ident: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(table).where(table.c.id == ident)).mappings().one()


@pytest.fixture
def ws(tmp_path: Path, db_url: str) -> Iterator[Workspace]:
    path = make_workspace(tmp_path, db_url)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(EXTRA)
    settings = load_settings(path)
    engine = connect(settings.database_url)
    yield Workspace(tmp_path, settings, engine)
    engine.dispose()


def at(zone: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=zone)


def local(iso_text: str, zone: ZoneInfo) -> datetime:
    return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).astimezone(zone)


# --- the board ---------------------------------------------------------------------------------


def test_a_delivered_phone_campaign_is_a_task_with_the_live_card(ws: Workspace) -> None:
    """Planned and delivered in process (as test_dispatch does), then read through the API."""
    from orchestrator.campaigns import load_campaign
    from orchestrator.derived import refresh_stats, sleep_score_at
    from orchestrator.planner import plan_run, prepare
    from orchestrator.runtime import Runtime
    from tests.planner_fixtures import write_campaign

    fire = at(MSK, 2026, 11, 24, 10, 0)  # a Tuesday
    ws.customers(customer("C1", bonus_balance=150.0), customer("C2", manager="petrov"))
    for day, amount, category in ((date(2026, 3, 1), 100.0, "sofas"), (date(2026, 4, 1), 200.0, "sofas"),
                                  (date(2026, 5, 1), 50.0, "chairs"), (date(2026, 6, 1), 80.0, "sofas")):
        ws.purchase("C1", day, amount, category)
    refresh_stats(ws.engine, ws.settings)
    path = write_campaign(ws.root, "call", channels=["phone"], offer={"discount": 7})
    plan_run(ws.engine, ws.engine, prepare(ws.settings, load_campaign(path), engine=ws.engine), fire, dry_run=False)
    clock = [fire.timestamp() + 5]
    runtime = Runtime(ws.settings, now=lambda: clock[0])
    runtime.start_delivery(threads=2)
    try:
        runtime.pump()
        runtime.join(timeout=30)
    finally:
        runtime.stop(timeout=10)
    with ws.engine.begin() as conn:  # the card is live: a later change shows
        conn.execute(customers.update().where(customers.c.id == "C1").values(bonus_balance=275.5))
    now = at(MSK, 2026, 11, 24, 12, 30)
    mine = list_tasks(ws.engine, ws.settings, manager="ivanova", now=now)
    assert [t["customer_id"] for t in mine] == ["C1"]
    task = mine[0]
    assert task["campaign"] == "call" and task["status"] == "open" and not task["overdue"]
    assert "предложить скидку 7%" in task["script"] and task["offer"] == {"discount": 7}
    assert local(task["due_until"], MSK) == at(MSK, 2026, 11, 24, 19, 0)
    assert task["due_local"].endswith("–19:00 (Europe/Moscow)") and task["zone_note"] == "Europe/Moscow (from the customer's timezone)"
    card = task["card"]
    assert card["name"] == "Клиент C1" and card["phone"] == "+79120000000" and card["bonus_balance"] == 275.5
    assert card["local_time"] == "2026-11-24T12:30+03:00"
    assert card["last_purchase_at"] == "2026-06-01" and card["total_spent"] == 430.0
    assert card["preferred_category"] == "sofas" and card["purchases_count"] == 4
    with ws.engine.connect() as conn:
        stats = conn.execute(sa.select(customer_stats).where(customer_stats.c.customer_id == "C1")).mappings().one()
    expected = sleep_score_at(stats, now, ws.settings.general.timezone)
    assert expected and card["sleep_score"] == round(expected, 2)
    assert [t["customer_id"] for t in list_tasks(ws.engine, ws.settings, now=now)] == ["C1", "C2"]
    assert get_task(ws.engine, ws.settings, task["id"], actor="ivanova", now=now)["id"] == task["id"]


def test_tasks_are_listed_by_due_time_with_status_overdue_and_zone_notes(ws: Workspace) -> None:
    ws.customers(customer("A"), customer("B", zones="", zone_source="default", timezone=None), customer("C"))
    late = ws.task("A", at(MSK, 2026, 11, 23, 10), at(MSK, 2026, 11, 23, 19))
    guessed = ws.task("B", at(MSK, 2026, 11, 24, 10), at(MSK, 2026, 11, 24, 19), zone_source="default")
    later = ws.task("C", at(MSK, 2026, 11, 25, 10), at(MSK, 2026, 11, 25, 19))
    done = ws.task("C", at(MSK, 2026, 11, 20, 10), status="done", outcome="reached")
    now = at(MSK, 2026, 11, 24, 11)
    everything = list_tasks(ws.engine, ws.settings, now=now)
    assert [t["id"] for t in everything] == [done, late, guessed, later]
    open_tasks = list_tasks(ws.engine, ws.settings, status="open", now=now)
    assert [(t["id"], t["overdue"]) for t in open_tasks] == [(late, True), (guessed, False), (later, False)]
    by_id = {t["id"]: t for t in everything}
    assert by_id[guessed]["zone_note"] == "local time unknown, guessed Moscow"
    assert by_id[late]["working_days_overdue"] == 1 and not by_id[late]["escalated"]
    assert not by_id[done]["overdue"]
    with pytest.raises(InputError) as error:
        list_tasks(ws.engine, ws.settings, status="pending")
    assert error.value.field == "status" and "open, done, closed" in str(error.value)


def test_a_customer_gone_from_the_database_shows_the_snapshot_card(ws: Workspace) -> None:
    task = ws.task("GONE", at(MSK, 2026, 11, 24, 10))
    record = get_task(ws.engine, ws.settings, task, now=at(MSK, 2026, 11, 24, 11))
    assert record["card"]["name"] == "snapshot GONE" and record["card"]["customer_found"] is False


# --- outcomes ----------------------------------------------------------------------------------


HOSTILE = 'Клиент сказал: "дорого"\n<script>alert(1)</script> 😀 \'; DROP TABLE call_tasks; --'


@pytest.mark.parametrize("outcome", ["reached", "ordered", "refused"])
def test_talking_outcomes_finish_the_task_and_keep_the_note_as_given(ws: Workspace, outcome: str) -> None:
    ws.customers(customer("C1"))
    task = ws.task("C1", at(MSK, 2026, 11, 24, 10), at(MSK, 2026, 11, 24, 19))
    now = at(MSK, 2026, 11, 24, 11, 15)
    record = record_outcome(ws.engine, ws.settings, task, outcome, note=HOSTILE, actor="ivanova", now=now)
    assert (record["status"], record["outcome"], record["note"]) == ("done", outcome, HOSTILE)
    assert record["history"][-1]["outcome"] == outcome and record["history"][-1]["at"] == "2026-11-24T08:15:00Z"
    assert record["history"][-1]["actor"] == "ivanova"
    row = ws.row(call_tasks, task)
    assert (row["status"], row["outcome"]) == ("done", outcome)
    assert get_task(ws.engine, ws.settings, task)["note"] == HOSTILE
    with pytest.raises(InputError) as error:  # a finished task takes no second outcome
        record_outcome(ws.engine, ws.settings, task, "reached", now=now)
    assert "already done" in str(error.value)


def test_bad_outcomes_and_notes_are_refused_naming_the_field(ws: Workspace) -> None:
    ws.customers(customer("C1"))
    task = ws.task("C1", at(MSK, 2026, 11, 24, 10), at(MSK, 2026, 11, 24, 19))
    now = at(MSK, 2026, 11, 24, 11)
    with pytest.raises(InputError) as error:
        record_outcome(ws.engine, ws.settings, task, "called", now=now)
    assert error.value.field == "outcome" and all(o in str(error.value) for o in OUTCOMES)
    with pytest.raises(InputError) as error:
        record_outcome(ws.engine, ws.settings, task, "reached", note="x" * 2001, now=now)
    assert error.value.field == "note" and "2001" in str(error.value)
    with pytest.raises(InputError) as error:
        record_outcome(ws.engine, ws.settings, task, "reached", due="2026-11-25T12:00", now=now)
    assert error.value.field == "due"
    with pytest.raises(NotFound):
        record_outcome(ws.engine, ws.settings, 999999, "reached", now=now)
    row = ws.row(call_tasks, task)
    assert (row["status"], row["outcome"], row["note"]) == ("open", None, None)
    # NUL cannot be stored by PostgreSQL: replaced, the rest kept.
    record = record_outcome(ws.engine, ws.settings, task, "reached", note="a\x00b", now=now)
    assert record["note"] == "a\ufffdb"


def test_callback_needs_a_future_time_inside_calling_hours(ws: Workspace) -> None:
    ws.customers(customer("C1", timezone="Asia/Vladivostok", zones="Asia/Vladivostok"))
    task = ws.task("C1", at(VLAT, 2026, 11, 24, 10), at(VLAT, 2026, 11, 24, 19), zone="Asia/Vladivostok")
    now = at(VLAT, 2026, 11, 24, 11)
    for due, words in ((None, "needs a due time"), ("2026-11-24T10:00", "not in the future"),
                       ("2026-11-24T20:30", "outside the client's calling hours"),
                       ("2026-11-28T12:00", "outside the client's calling hours"),  # a Saturday
                       ("tomorrow", "not a moment"), ("2028-01-01T12:00", "days ahead")):
        with pytest.raises(InputError) as error:
            record_outcome(ws.engine, ws.settings, task, "callback", due=due, now=now)
        assert error.value.field == "due" and words in str(error.value), (due, str(error.value))
    with pytest.raises(InputError) as error:
        record_outcome(ws.engine, ws.settings, task, "callback", due="2026-11-24T20:30", now=now)
    assert "2026-11-25T10:00+10:00" in str(error.value)  # the next window is named
    # Without an offset: the client's own clock (what they said on the phone).
    record = record_outcome(ws.engine, ws.settings, task, "callback", due="2026-11-25T15:30", note="после обеда", now=now)
    assert record["status"] == "open" and record["outcome"] == "callback" and record["attempts"] == 0
    assert local(record["due_from"], VLAT) == at(VLAT, 2026, 11, 25, 15, 30)
    assert local(record["due_until"], VLAT) == at(VLAT, 2026, 11, 25, 19, 0)
    assert record["due_local"] == "2026-11-25 Wed 15:30–19:00 (Asia/Vladivostok)"
    # An aware time is taken as given; a second callback moves the task again.
    record = record_outcome(ws.engine, ws.settings, task, "callback", due=at(MSK, 2026, 11, 26, 5, 0), now=now)
    assert local(record["due_from"], VLAT) == at(VLAT, 2026, 11, 26, 12, 0)
    assert [e["outcome"] for e in record["history"]] == ["callback", "callback"]


def test_no_answer_moves_to_the_next_working_window_across_a_weekend_and_a_holiday(ws: Workspace) -> None:
    """Friday 20 February 2026 in Vladivostok; Monday 23 February is Defender of the Fatherland Day."""
    ws.customers(customer("C1", timezone="Asia/Vladivostok", zones="Asia/Vladivostok"))
    task = ws.task("C1", at(VLAT, 2026, 2, 20, 10), at(VLAT, 2026, 2, 20, 19), zone="Asia/Vladivostok")
    # 12:00 in Moscow (the settings' zone) is already 19:00 on Friday in Vladivostok.
    record = record_outcome(ws.engine, ws.settings, task, "no_answer", now=at(MSK, 2026, 2, 20, 12, 0))
    assert (record["status"], record["attempts"], record["outcome"]) == ("open", 1, "no_answer")
    assert local(record["due_from"], VLAT) == at(VLAT, 2026, 2, 24, 10, 0)  # Tuesday
    assert local(record["due_until"], VLAT) == at(VLAT, 2026, 2, 24, 19, 0)
    assert not record["overdue"]
    record = record_outcome(ws.engine, ws.settings, task, "no_answer", note="гудки", now=at(VLAT, 2026, 2, 24, 10, 30))
    assert (record["status"], record["attempts"]) == ("open", 2)
    assert local(record["due_from"], VLAT) == at(VLAT, 2026, 2, 25, 10, 0)
    record = record_outcome(ws.engine, ws.settings, task, "no_answer", now=at(VLAT, 2026, 2, 25, 18, 59))
    assert (record["status"], record["attempts"], record["outcome"]) == ("closed", 3, "no_answer")
    assert [e.get("attempts") for e in record["history"]] == [1, 2, 3]
    assert record["history"][1]["note"] == "гудки"


def test_no_answer_recorded_before_the_days_calling_hours_moves_to_that_days_window(ws: Workspace) -> None:
    ws.customers(customer("C1", timezone="Asia/Vladivostok", zones="Asia/Vladivostok"))
    task = ws.task("C1", at(VLAT, 2026, 2, 19, 10), at(VLAT, 2026, 2, 19, 19), zone="Asia/Vladivostok")
    # Thursday's call recorded on Friday at 08:00 in Vladivostok: Friday's calling hours are next.
    record = record_outcome(ws.engine, ws.settings, task, "no_answer", now=at(VLAT, 2026, 2, 20, 8, 0))
    assert local(record["due_from"], VLAT) == at(VLAT, 2026, 2, 20, 10, 0)
    # Recorded on Saturday morning (a day off): the next working day, Tuesday after the holiday.
    record = record_outcome(ws.engine, ws.settings, task, "no_answer", now=at(VLAT, 2026, 2, 21, 8, 0))
    assert local(record["due_from"], VLAT) == at(VLAT, 2026, 2, 24, 10, 0)


def test_no_answer_in_a_kazakh_zone_follows_kazakh_holidays(ws: Workspace) -> None:
    """16 December is Independence Day in Kazakhstan, an ordinary Wednesday in Russia."""
    ws.customers(customer("KZ", timezone="Asia/Almaty", zones="Asia/Almaty"))
    task = ws.task("KZ", at(ZoneInfo("Asia/Almaty"), 2026, 12, 15, 10), zone="Asia/Almaty")
    record = record_outcome(ws.engine, ws.settings, task, "no_answer", now=at(ZoneInfo("Asia/Almaty"), 2026, 12, 15, 12))
    due = local(record["due_from"], ZoneInfo("Asia/Almaty"))
    assert due.date() == date(2026, 12, 17) and due.hour == 10


def test_wrong_number_marks_the_phone_invalid_and_stops_sms_and_calls(ws: Workspace) -> None:
    ws.customers(customer("C1"), customer("C2"))
    task = ws.task("C1", at(MSK, 2026, 11, 24, 10), at(MSK, 2026, 11, 24, 19))
    other = ws.task("C1", at(MSK, 2026, 11, 25, 10), manager="petrov", campaign="other")
    untouched = ws.task("C2", at(MSK, 2026, 11, 25, 10))
    sms = ws.delivery("C1", "sms", "planned")
    queued_phone = ws.delivery("C1", "phone", "queued", run_id=2)
    email = ws.delivery("C1", "email", "planned", run_id=3)
    sent = ws.delivery("C1", "sms", "sent", run_id=4)
    elsewhere = ws.delivery("C2", "sms", "planned")
    record = record_outcome(ws.engine, ws.settings, task, "wrong_number", note="не тот номер",
                            now=at(MSK, 2026, 11, 24, 11))
    assert (record["status"], record["outcome"]) == ("closed", "wrong_number")
    assert record["effects"] == {"suppressed": 2, "closed_tasks": [other]}
    assert record["card"]["phone_invalid"] is True
    assert ws.row(customers, "C1")["phone_invalid"] and not ws.row(customers, "C2")["phone_invalid"]
    states = {i: (ws.row(deliveries, i)["status"], ws.row(deliveries, i)["reason"]) for i in (sms, queued_phone, email, sent, elsewhere)}
    assert states == {sms: ("suppressed", "invalid_contact"), queued_phone: ("suppressed", "invalid_contact"),
                      email: ("planned", None), sent: ("sent", None), elsewhere: ("planned", None)}
    closed = get_task(ws.engine, ws.settings, other)
    assert closed["status"] == "closed" and closed["outcome"] is None
    assert f"(task {task})" in closed["history"][-1]["note"]
    assert get_task(ws.engine, ws.settings, untouched)["status"] == "open"


def test_unsubscribe_withdraws_consent_at_once(ws: Workspace) -> None:
    ws.customers(customer("C1"), customer("C2"))
    task = ws.task("C1", at(MSK, 2026, 11, 24, 10), at(MSK, 2026, 11, 24, 19))
    other = ws.task("C1", at(MSK, 2026, 11, 26, 10), campaign="other")
    rows = {ch: ws.delivery("C1", ch, "planned", run_id=i) for i, ch in enumerate(("sms", "email", "phone"), 1)}
    receipt = ws.delivery("C1", "email", "planned", category="transactional", run_id=9)
    now = at(MSK, 2026, 11, 24, 11)
    record = record_outcome(ws.engine, ws.settings, task, "unsubscribe", note="просил не звонить", now=now)
    assert (record["status"], record["outcome"]) == ("done", "unsubscribe")
    assert record["effects"] == {"unsubscribed": ["phone", "sms", "email"], "withdrawn": 3, "closed_tasks": [other]}
    person = ws.row(customers, "C1")
    assert person["unsubscribed_phone"] == person["unsubscribed_sms"] == person["unsubscribed_email"] == int(now.timestamp())
    assert {ws.row(deliveries, i)["reason"] for i in rows.values()} == {"unsubscribed"}
    assert "manager ivanova" in ws.row(deliveries, rows["sms"])["detail"]
    assert ws.row(deliveries, receipt)["status"] == "planned"  # transactional: not consent-based
    assert record["card"]["phone_consent"] is False
    # Only calls, when asked so.
    single = ws.task("C2", at(MSK, 2026, 11, 24, 10), at(MSK, 2026, 11, 24, 19))
    email = ws.delivery("C2", "email", "planned", run_id=20)
    record = record_outcome(ws.engine, ws.settings, single, "unsubscribe", channels=["phone"], now=now)
    assert record["effects"]["unsubscribed"] == ["phone"]
    person = ws.row(customers, "C2")
    assert person["unsubscribed_phone"] and person["unsubscribed_email"] is None
    assert ws.row(deliveries, email)["status"] == "planned"
    with pytest.raises(InputError) as error:
        record_outcome(ws.engine, ws.settings, single, "reached", channels=["sms"], now=now)
    assert error.value.field == "channels"


def test_a_manager_can_neither_read_nor_change_another_managers_task(ws: Workspace) -> None:
    ws.customers(customer("C1"))
    task = ws.task("C1", at(MSK, 2026, 11, 24, 10), manager="petrov")
    now = at(MSK, 2026, 11, 24, 11)
    with pytest.raises(NotFound) as foreign:
        get_task(ws.engine, ws.settings, task, actor="ivanova", now=now)
    with pytest.raises(NotFound) as missing:
        get_task(ws.engine, ws.settings, task + 1000, actor="ivanova", now=now)
    assert str(foreign.value).replace(str(task), "N") == str(missing.value).replace(str(task + 1000), "N")
    for outcome in ("reached", "wrong_number", "unsubscribe"):
        with pytest.raises(NotFound):
            record_outcome(ws.engine, ws.settings, task, outcome, actor="ivanova", now=now)
    assert ws.row(call_tasks, task)["status"] == "open" and not ws.row(customers, "C1")["phone_invalid"]
    assert ws.row(customers, "C1")["unsubscribed_phone"] is None
    assert list_tasks(ws.engine, ws.settings, manager="ivanova", now=now) == []
    assert record_outcome(ws.engine, ws.settings, task, "reached", actor="petrov", now=now)["status"] == "done"


def test_two_managers_recording_at_once_record_one_outcome(ws: Workspace) -> None:
    ws.customers(customer("C1"))
    task = ws.task("C1", at(MSK, 2026, 11, 24, 10), at(MSK, 2026, 11, 24, 19))
    now = at(MSK, 2026, 11, 24, 11)
    results: list[str] = []
    barrier = threading.Barrier(4)

    def record(outcome: str) -> None:
        barrier.wait()
        try:
            record_outcome(ws.engine, ws.settings, task, outcome, now=now)
            results.append(outcome)
        except InputError:
            results.append("rejected")

    threads = [threading.Thread(target=record, args=(o,)) for o in ("reached", "refused", "ordered", "wrong_number")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4 and results.count("rejected") == 3
    row = ws.row(call_tasks, task)
    assert len([e for e in row["history"] if e.get("outcome")]) == 1


# --- the command line --------------------------------------------------------------------------


def run_cli(ws: Workspace, *args: str) -> tuple[int, str, str]:
    """In process: `main` as the console script runs it (exit code, stdout, stderr)."""
    import contextlib
    import io

    from orchestrator.cli import _state, main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["--config", str(ws.root / "settings.toml"), *args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        finally:
            _state["config"] = None
    return code, out.getvalue(), err.getvalue()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_cli_tasks_lists_and_records_outcomes(ws: Workspace) -> None:
    ws.customers(customer("C1", name="[/bold] <b>Ann</b>"), customer("C2", manager="petrov"))
    mine = ws.task("C1", at(MSK, 2026, 11, 24, 10), at(MSK, 2026, 11, 24, 19))
    theirs = ws.task("C2", at(MSK, 2026, 11, 24, 9), manager="petrov")
    code, out, _ = run_cli(ws, "tasks", "--manager", "ivanova", "--json", "--now", "2026-11-24T11:00")
    assert code == 0
    records = json_lines(out)
    assert [r["id"] for r in records] == [mine] and records[0]["card"]["name"] == "[/bold] <b>Ann</b>"
    code, out, _ = run_cli(ws, "tasks", "--now", "2026-11-24T11:00")
    assert code == 0 and "[/bold] <b>Ann</b>" in out and "ivanova" in out and "petrov" in out
    code, _, err = run_cli(ws, "tasks", "--status", "pending")
    assert code == 2 and "--status" in err
    code, _, err = run_cli(ws, "tasks", "--manager", "nobody")
    assert code == 2 and "no manager 'nobody'" in err
    code, _, err = run_cli(ws, "tasks", "done", str(mine), "--outcome", "called")
    assert code == 2 and "--outcome" in err and "no_answer" in err
    code, _, err = run_cli(ws, "tasks", "done", str(theirs), "--outcome", "reached", "--manager", "ivanova")
    assert code == 2 and f"no task {theirs}" in err
    code, _, err = run_cli(ws, "tasks", "done", str(mine), "--outcome", "callback", "--now", "2026-11-24T11:00")
    assert code == 2 and "--due" in err
    code, out, err = run_cli(ws, "tasks", "done", str(mine), "--outcome", "callback", "--due", "2026-11-25T12:00",
                             "--note", "перезвонить", "--manager", "ivanova", "--now", "2026-11-24T11:00", "--json")
    assert code == 0, err
    (record,) = json_lines(out)
    assert record["status"] == "open" and record["due_from"] == "2026-11-25T09:00:00Z" and record["note"] == "перезвонить"
    code, out, _ = run_cli(ws, "tasks", "done", str(mine), "--outcome", "reached", "--now", "2026-11-25T12:10")
    assert code == 0 and f"task {mine}: reached, now done" in out
    assert ws.row(call_tasks, theirs)["status"] == "open"


def test_cli_exit_codes_in_a_real_process(ws: Workspace) -> None:
    ws.customers(customer("C1"))
    task = ws.task("C1", at(MSK, 2026, 11, 24, 10), at(MSK, 2026, 11, 24, 19))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["PYTHONPATH"] = str(REPO)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator", "--config", str(ws.root / "settings.toml"), *args],
                              capture_output=True, text=True, env=env, timeout=120)

    result = cli("tasks", "done", str(task), "--outcome", "nope")
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = cli("tasks", "done", "abc", "--outcome", "reached")
    assert result.returncode == 2
    result = cli("tasks", "done", str(task), "--outcome", "no_answer", "--now", "2026-11-24T11:00", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["attempts"] == 1


def test_campaign_outcomes_for_the_report(ws: Workspace) -> None:
    from orchestrator.tasks import campaign_outcomes

    ws.customers(customer("C1"), customer("C2"), customer("C3"))
    now = at(MSK, 2026, 11, 24, 11)
    first = ws.task("C1", at(MSK, 2026, 11, 24, 10), at(MSK, 2026, 11, 24, 19))
    second = ws.task("C2", at(MSK, 2026, 11, 24, 10), at(MSK, 2026, 11, 24, 19))
    ws.task("C3", at(MSK, 2026, 11, 24, 10), at(MSK, 2026, 11, 24, 19))
    ws.task("C3", at(MSK, 2026, 11, 24, 10), campaign="another")
    record_outcome(ws.engine, ws.settings, first, "ordered", now=now)
    record_outcome(ws.engine, ws.settings, second, "no_answer", now=now)
    record = campaign_outcomes(ws.engine, "wake")
    assert (record["tasks"], record["open"], record["done"], record["closed"]) == (3, 2, 1, 0)
    assert {k: v for k, v in record["outcomes"].items() if v} == {"ordered": 1, "no_answer": 1}


def test_customer_text_is_not_read_as_markup_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from orchestrator import console
    from orchestrator.cli_tasks import _cells

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    console.table(["client"], _cells([["[/bold] [red]Ann"]]))  # unescaped, rich raises a MarkupError
    assert "[/bold] [red]Ann" in screen.getvalue()
