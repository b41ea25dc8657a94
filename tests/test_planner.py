"""The planner end to end on SQLite and PostgreSQL: decisions, ledger rows, run identity, caps
across campaigns, holdout, template errors, unsubscribe, and concurrent planner processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator.campaigns import load_campaign
from orchestrator.ledger import unsubscribe
from orchestrator.planner import plan_run, prepare
from orchestrator.settings import load_settings
from orchestrator.storage.engine import connect
from orchestrator.storage.schema import deliveries, runs
from tests.planner_fixtures import customer, insert_customers, make_workspace, write_campaign

UTC = timezone.utc
REPO = Path(__file__).resolve().parent.parent
FIRE = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)  # 10:00 Moscow, a Tuesday


def setup(tmp_path: Path, db_url: str, rows: list[dict], **campaign_fields):  # type: ignore[no-untyped-def]
    settings_path = make_workspace(tmp_path / "ws", db_url)
    write_campaign(tmp_path / "ws", "promo", **campaign_fields)
    settings = load_settings(settings_path, environ={})
    engine = connect(db_url)
    insert_customers(engine, rows)
    prepared = prepare(settings, load_campaign(tmp_path / "ws" / "campaigns" / "promo.yaml"), engine=engine)
    return settings, engine, prepared


def ledger(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(sa.select(deliveries).order_by(deliveries.c.customer_id, deliveries.c.channel)).all()


def test_plan_changes_nothing_and_run_writes_the_same_decisions(tmp_path: Path, db_url: str) -> None:
    rows = [customer(f"C{i}") for i in range(5)] + [customer("C9", consent_sms=False)]
    _, engine, prepared = setup(tmp_path, db_url, rows)
    seen: list[dict] = []
    summary = plan_run(engine, engine, prepared, FIRE, dry_run=True, on_rows=seen.extend)
    assert ledger(engine) == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar_one() == 0
    assert (summary.targeted, summary.planned, dict(summary.suppressed)) == (6, 5, {"no_consent": 1})

    summary = plan_run(engine, engine, prepared, FIRE, dry_run=False)
    rows_written = ledger(engine)
    assert [(r.customer_id, r.status, r.reason) for r in rows_written] == [
        (d["customer_id"], d["status"], d["reason"]) for d in sorted(seen, key=lambda d: d["customer_id"])]
    planned = [r for r in rows_written if r.status == "planned"]
    assert all(r.send_at == int(FIRE.timestamp()) for r in planned)
    assert planned[0].payload["text"] == "Анна, скидка 7% & подарок"   # not HTML-escaped in an SMS
    assert planned[0].payload["sms"]["encoding"] == "UCS-2"


def test_the_same_run_twice_plans_nothing_new(tmp_path: Path, db_url: str) -> None:
    _, engine, prepared = setup(tmp_path, db_url, [customer(f"C{i}") for i in range(3)])
    first = plan_run(engine, engine, prepared, FIRE, dry_run=False)
    second = plan_run(engine, engine, prepared, FIRE, dry_run=False)
    assert second.existed and second.run_id == first.run_id and second.planned == 3
    assert len(ledger(engine)) == 3


def test_caps_count_messages_of_other_campaigns(tmp_path: Path, db_url: str) -> None:
    settings, engine, prepared = setup(tmp_path, db_url, [customer("C1"), customer("C2")])
    plan_run(engine, engine, prepared, FIRE, dry_run=False)
    write_campaign(tmp_path / "ws", "second", channels=["sms", "email"])
    second = prepare(settings, load_campaign(tmp_path / "ws" / "campaigns" / "second.yaml"), engine=engine)
    later = datetime(2026, 12, 20, 7, tzinfo=UTC)  # 19 days later: inside the SMS cap of 1/30d
    summary = plan_run(engine, engine, second, later, dry_run=False)
    assert dict(summary.by_channel) == {"email": 2}       # first mode: capped SMS → email
    rows = [r for r in ledger(engine) if r.campaign == "second"]
    assert {(r.channel, r.status) for r in rows} == {("email", "planned")}


def test_holdout_and_template_errors_are_suppressed_with_their_reason(tmp_path: Path, db_url: str) -> None:
    rows = [customer(f"C{i:03d}") for i in range(200)]
    _, engine, prepared = setup(tmp_path, db_url, rows, holdout="20%")
    summary = plan_run(engine, engine, prepared, FIRE, dry_run=False)
    held = summary.suppressed["holdout"]
    assert 20 < held < 65 and summary.planned == 200 - held
    assert {r.customer_id for r in ledger(engine) if r.reason == "holdout"} == {
        r["id"] for r in rows if prepared.campaign.in_holdout(r["id"])}



def test_missing_field_in_a_template_suppresses_that_recipient(tmp_path: Path, db_url: str) -> None:
    rows = [customer("C1"), customer("C2", first_name=None)]
    settings_path = make_workspace(tmp_path / "ws", db_url)
    (tmp_path / "ws" / "templates" / "sms" / "strict.txt.j2").write_text("Здравствуйте, {{ customer.first_name }}!", encoding="utf-8")
    write_campaign(tmp_path / "ws", "strict", template="strict")
    settings = load_settings(settings_path, environ={})
    engine = connect(db_url)
    insert_customers(engine, rows)
    prepared = prepare(settings, load_campaign(tmp_path / "ws" / "campaigns" / "strict.yaml"), engine=engine)
    plan_run(engine, engine, prepared, FIRE, dry_run=False)
    by_id = {r.customer_id: r for r in ledger(engine)}
    assert by_id["C1"].status == "planned"
    assert (by_id["C2"].status, by_id["C2"].reason) == ("suppressed", "template_error")
    assert "strict.txt.j2" in by_id["C2"].detail and "first_name" in by_id["C2"].detail


def test_local_time_and_quiet_hours_follow_the_recipient_zone(tmp_path: Path, db_url: str) -> None:
    rows = [customer("VL", timezone="Asia/Vladivostok", zones="Asia/Vladivostok"),
            customer("KG", timezone="Europe/Kaliningrad", zones="Europe/Kaliningrad")]
    _, engine, prepared = setup(tmp_path, db_url, rows, schedule={"at": "2026-12-01T10:00", "local_time": "11:00"},
                                deliver_within="48h")
    plan_run(engine, engine, prepared, FIRE, dry_run=False)
    by_id = {r.customer_id: r for r in ledger(engine)}
    # Vladivostok is 7 h ahead of Moscow: 11:00 local had passed at 17:00 local → next day.
    assert datetime.fromtimestamp(by_id["VL"].send_at, UTC) == datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
    assert datetime.fromtimestamp(by_id["KG"].send_at, UTC) == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    assert by_id["VL"].zone == "Asia/Vladivostok"


def test_unsubscribe_withdraws_planned_messages_at_once(tmp_path: Path, db_url: str) -> None:
    _, engine, prepared = setup(tmp_path, db_url, [customer("C1"), customer("C2")])
    plan_run(engine, engine, prepared, FIRE, dry_run=False)
    assert unsubscribe(engine, "C1", "sms") == 1
    by_id = {r.customer_id: r for r in ledger(engine)}
    assert (by_id["C1"].status, by_id["C1"].reason) == ("suppressed", "unsubscribed")
    assert by_id["C2"].status == "planned"


CONCURRENT_CUSTOMERS = 600


@pytest.mark.slow
def test_two_concurrent_planner_processes_never_exceed_a_cap(tmp_path: Path, db_url: str) -> None:
    """Two `run` processes of different campaigns over the same customers at the same moment."""
    settings_path = make_workspace(tmp_path / "ws", db_url, batch=25)
    for name in ("alpha", "beta"):
        write_campaign(tmp_path / "ws", name, schedule={"at": "2026-12-01T10:00"})
    engine = connect(db_url)
    insert_customers(engine, [customer(f"C{i:04d}") for i in range(CONCURRENT_CUSTOMERS)])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "orchestrator", "--config", str(settings_path), "run"]
    procs = [subprocess.Popen(command + [name, "--now", "2026-12-01T12:00", "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=REPO) for name in ("alpha", "beta")]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    rows = ledger(engine)
    planned = Counter(r.customer_id for r in rows if r.status == "planned")
    capped = Counter(r.customer_id for r in rows if r.reason == "capped")
    assert max(planned.values()) == 1                      # the cap: one SMS per 30 days
    assert len(planned) == CONCURRENT_CUSTOMERS            # and everyone got exactly one
    assert sum(capped.values()) == CONCURRENT_CUSTOMERS    # the other campaign was refused


def test_only_the_fields_templates_read_are_fetched_and_they_render(tmp_path: Path, db_url: str) -> None:
    rows = [customer("C1", attrs={"client_type": "wholesale", "store": "Тверская"}, bonus_balance=1234.5)]
    settings_path = make_workspace(tmp_path / "ws", db_url)
    (tmp_path / "ws" / "templates" / "sms" / "fields.txt.j2").write_text(
        "{{ customer.store }}: {{ customer.bonus_balance|money }}, {{ customer.purchases_count }}", encoding="utf-8")
    write_campaign(tmp_path / "ws", "fields", template="fields")
    settings = load_settings(settings_path, environ={})
    engine = connect(db_url)
    insert_customers(engine, rows)
    prepared = prepare(settings, load_campaign(tmp_path / "ws" / "campaigns" / "fields.yaml"), engine=engine)
    assert prepared.fields is not None and {"store", "bonus_balance", "purchases_count"} <= prepared.fields
    assert "name" not in prepared.fields
    plan_run(engine, engine, prepared, FIRE, dry_run=False)
    (row,) = ledger(engine)
    assert row.payload["text"] == "Тверская: 1\u00a0234,50\u00a0₽, 0"


def test_a_resumed_run_leaves_customers_it_already_decided(tmp_path: Path, db_url: str) -> None:
    """A run that crashed half-way (status `planning`) is finished by the next `run` of the same
    fire time; a customer it had decided keeps that one decision, even if the policy would now
    choose another channel (no second message from one run)."""
    _, engine, prepared = setup(tmp_path, db_url, [customer("C1"), customer("C2")], channels=["sms", "email"])
    from orchestrator.planner import open_run

    run_id, done = open_run(engine, "promo", int(FIRE.timestamp()))
    assert not done
    with engine.begin() as conn:
        conn.execute(deliveries.insert().values(
            run_id=run_id, campaign="promo", customer_id="C1", channel="email", category="promo", status="planned",
            send_at=int(FIRE.timestamp()), expires_at=int(FIRE.timestamp()) + 86400, attempts=0, created_at=0, updated_at=0))
    summary = plan_run(engine, engine, prepared, FIRE, dry_run=False)
    rows = {(r.customer_id, r.channel) for r in ledger(engine)}
    assert rows == {("C1", "email"), ("C2", "sms")}
    assert summary.planned == 2 and summary.targeted == 2


@pytest.mark.postgres
def test_cap_locks_of_a_large_page_stay_bounded_on_postgresql(pg_url: str) -> None:
    """A page of 20,000 customers takes at most 256 advisory locks: concurrent planners cannot
    exhaust PostgreSQL's shared lock table (64 × max_connections entries by default)."""
    from orchestrator.storage.engine import write_transaction
    from orchestrator.storage.locks import CAP_LOCK_BUCKETS, lock_customers

    engine = connect(pg_url)
    with write_transaction(engine) as conn:
        lock_customers(conn, [f"C{i:06d}" for i in range(20000)])
        held = conn.execute(sa.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")).scalar_one()
    assert 0 < held <= CAP_LOCK_BUCKETS
    engine.dispose()


def test_the_birthday_trigger_greets_on_the_birthday_and_29_february_on_28_in_common_years(tmp_path: Path, db_url: str) -> None:
    from datetime import date

    rows = [
        customer("TODAY", birthday=date(1990, 2, 28), birth_month=2, birth_day=28),
        customer("LEAP", birthday=date(1988, 2, 29), birth_month=2, birth_day=29),
        customer("TOMORROW", birthday=date(1985, 3, 1), birth_month=3, birth_day=1),
        customer("NONE"),
    ]
    _, engine, prepared = setup(tmp_path, db_url, rows, schedule={"trigger": "birthday"})
    fire = datetime(2027, 2, 27, 21, 0, tzinfo=UTC)  # 00:00 Moscow on 28 February 2027
    summary = plan_run(engine, engine, prepared, fire, dry_run=False)
    assert {r.customer_id for r in ledger(engine)} == {"TODAY", "LEAP"}
    assert summary.planned == 2


def test_a_page_that_fails_to_write_stops_the_run_and_the_next_run_finishes_it(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a page is written and committed while the next one is decided: a page whose
    write fails must stop the run with its error, keep the pages before it, and leave nothing of
    its own; the next `run` of the same fire time plans the rest, one row per customer."""
    import orchestrator.planner as planner

    settings_path = make_workspace(tmp_path / "ws", db_url, batch=10)
    write_campaign(tmp_path / "ws", "promo")
    settings = load_settings(settings_path, environ={})
    engine = connect(db_url)
    insert_customers(engine, [customer(f"C{i:03d}") for i in range(45)])
    prepared = prepare(settings, load_campaign(tmp_path / "ws" / "campaigns" / "promo.yaml"), engine=engine)
    real_write, calls = planner.write_rows, []

    def failing_third_page(conn: sa.Connection, rows: list[dict]) -> None:
        calls.append(len(rows))
        if len(calls) == 3:
            raise RuntimeError("disk full")
        real_write(conn, rows)

    monkeypatch.setattr(planner, "write_rows", failing_third_page)
    with pytest.raises(RuntimeError, match="disk full"):
        plan_run(engine, engine, prepared, FIRE, dry_run=False)
    kept = {r.customer_id for r in ledger(engine)}
    assert kept == {f"C{i:03d}" for i in range(20)}         # the two pages before, nothing after
    monkeypatch.setattr(planner, "write_rows", real_write)
    summary = plan_run(engine, engine, prepared, FIRE, dry_run=False)
    rows = ledger(engine)
    assert Counter(r.customer_id for r in rows) == Counter({f"C{i:03d}": 1 for i in range(45)})
    assert summary.planned == 45 and not summary.existed
