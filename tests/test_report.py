"""The campaign report (SPEC 10 `report`, SPEC 11 charts) and the seasonal index on the customer's
card, on SQLite and PostgreSQL: a campaign with a 10% holdout planned and delivered in process
with a controlled clock, purchases before, inside and after the 30-day window of recipients and
held-out customers, call outcomes and notes, recipients in Vladivostok and Kaliningrad."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import date, datetime, timedelta
from pathlib import Path
from statistics import NormalDist
from dataclasses import dataclass
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from channels.base import Outcome
from orchestrator import charts
from orchestrator.campaigns import Campaign, load_campaign
from orchestrator.customer_card import customer_card
from orchestrator.derived import MONTH_DAYS, day_number, refresh_stats
from orchestrator.errors import NotFound
from orchestrator.planner import plan_run, prepare
from orchestrator.report import campaign_report
from orchestrator.runtime import Runtime
from orchestrator.settings import load_settings
from orchestrator.storage.engine import connect
from orchestrator.storage.schema import call_tasks, deliveries, purchases, runs
from tests.dispatch_channels import Scripted
from tests.planner_fixtures import customer, insert_customers, make_workspace, write_campaign

REPO = Path(__file__).resolve().parent.parent
MSK = ZoneInfo("Europe/Moscow")
FIRE = datetime(2026, 11, 24, 10, 0, tzinfo=MSK)  # a Tuesday; 07:00 UTC
SEND_DAY = day_number(date(2026, 11, 24))
SVG = "{http://www.w3.org/2000/svg}"

CHANNELS = """
[broker]
url = "memory://"

[channels.sms]
backend = "tests.dispatch_channels.Scripted"
"""

HOLDOUT_CAMPAIGN = Campaign(name="promo", segment="everyone", category="promo", channels=("sms",),
                            template="hello", holdout="10%")


def held(cid: str) -> bool:
    return HOLDOUT_CAMPAIGN.in_holdout(cid)


def not_held(prefix: str, count: int) -> list[str]:
    found, i = [], 0
    while len(found) < count:
        if not held(f"{prefix}{i}"):
            found.append(f"{prefix}{i}")
        i += 1
    return found


MOSCOW = [f"C{i:02d}" for i in range(60)]
VLADIVOSTOK = not_held("V", 2)
KALININGRAD = not_held("K", 1)
NO_CONSENT = not_held("N", 1)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.t = at.timestamp()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def workspace(tmp_path: Path, db_url: str) -> Path:
    path = make_workspace(tmp_path, db_url)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(CHANNELS)
    Scripted.reset()
    return tmp_path


@dataclass
class Delivered:
    root: Path
    engine: sa.Engine
    settings: Any
    run_id: int
    sent: list[str]  # customers with a row `sent`, in id order
    failed: list[str]
    holdout: list[str]
    zone_of: dict[str, str]


@pytest.fixture
def delivered(workspace: Path) -> Iterator[Delivered]:
    """The campaign planned and delivered: every recipient gets the SMS at FIRE + 5 s except one
    whose send fails for good (the gateway's first answer is a permanent refusal)."""
    settings = load_settings(workspace / "settings.toml")
    engine = connect(settings.database_url)
    zone_of = {cid: "Europe/Moscow" for cid in MOSCOW}
    zone_of.update({cid: "Asia/Vladivostok" for cid in VLADIVOSTOK})
    zone_of.update({cid: "Europe/Kaliningrad" for cid in KALININGRAD + NO_CONSENT})
    rows = [customer(cid, timezone=zone, zones=zone, consent_sms=cid not in NO_CONSENT) for cid, zone in zone_of.items()]
    insert_customers(engine, rows)
    path = write_campaign(workspace, "promo", holdout="10%")
    plan_run(engine, engine, prepare(settings, load_campaign(path), engine=engine), FIRE, dry_run=False)
    clock = Clock(FIRE + timedelta(seconds=5))
    Scripted.reset(Outcome.PERMANENT)
    runtime = Runtime(settings, now=clock)
    runtime.start_delivery(threads=2)
    try:
        runtime.pump()
        runtime.join(timeout=30)
    finally:
        runtime.stop(timeout=10)
    with engine.connect() as conn:
        ledger = conn.execute(sa.select(deliveries).order_by(deliveries.c.customer_id)).all()
    run_id = ledger[0].run_id
    yield Delivered(
        root=workspace, engine=engine, settings=settings, run_id=run_id,
        sent=[r.customer_id for r in ledger if r.status == "sent"],
        failed=[r.customer_id for r in ledger if r.status == "failed"],
        holdout=[r.customer_id for r in ledger if r.reason == "holdout"],
        zone_of=zone_of,
    )
    engine.dispose()


def buy(engine: sa.Engine, cid: str, offset_days: int, amount: float) -> None:
    day = SEND_DAY + offset_days
    when = date.fromordinal(date(1970, 1, 1).toordinal() + day)
    with engine.begin() as conn:
        conn.execute(purchases.insert().values(key=f"{cid}/{day}/{amount}", customer_id=cid, date=when, day=day,
                                               month=when.month, amount=amount))


def add_task(engine: sa.Engine, delivery_customer: str, *, outcome: str | None, note: str | None, at: datetime,
             manager: str = "ivanova", status: str = "done") -> int:
    with engine.begin() as conn:
        delivery_id = conn.execute(sa.select(deliveries.c.id).where(deliveries.c.customer_id == delivery_customer)).scalar_one()
        return conn.execute(call_tasks.insert().returning(call_tasks.c.id).values(
            delivery_id=delivery_id, campaign="promo", customer_id=delivery_customer, manager=manager, status=status,
            due_from=0, due_until=0, zone="Europe/Moscow", outcome=outcome, note=note,
            created_at=int(at.timestamp()), updated_at=int(at.timestamp()),
        )).scalar_one()


def test_the_fixture_has_what_the_tests_need(delivered: Delivered) -> None:
    everyone = set(delivered.zone_of)
    assert set(delivered.holdout) == {cid for cid in everyone if held(cid)} and len(delivered.holdout) >= 3
    assert len(delivered.failed) == 1 and len(delivered.sent) >= 10
    assert set(VLADIVOSTOK + KALININGRAD) <= set(delivered.sent) | set(delivered.failed)


# --- funnel ---------------------------------------------------------------------------------------


def test_funnel_counts_each_state_and_reason(delivered: Delivered) -> None:
    report = campaign_report(delivered.engine, delivered.settings, "promo", now=FIRE + timedelta(days=1))
    funnel = report["funnel"]
    assert funnel["targeted"] == len(delivered.zone_of) == report["distinct_customers"]
    assert funnel["suppressed"] == {"holdout": len(delivered.holdout), "no_consent": 1}
    assert funnel["suppressed_total"] == len(delivered.holdout) + 1
    assert (funnel["sent"], funnel["failed"], funnel["planned"], funnel["queued"], funnel["unknown"]) == (
        len(delivered.sent), 1, 0, 0, 0)
    assert funnel["messages"] == funnel["targeted"]  # one channel: one row per customer
    assert report["holdout"] == "10%"
    (run,) = report["runs"]
    assert run["run"] == delivered.run_id and run["status"] == "planned"
    assert run["fire_at"] == "2026-11-24T07:00:00Z" and run["funnel"] == funnel


def test_an_unknown_campaign_is_not_found_and_one_without_runs_is_empty(delivered: Delivered) -> None:
    with pytest.raises(NotFound):
        campaign_report(delivered.engine, delivered.settings, "nope")
    write_campaign(delivered.root, "later")
    empty = campaign_report(delivered.engine, delivered.settings, "later")
    assert empty["runs"] == [] and empty["funnel"]["targeted"] == 0
    assert empty["sends_per_local_hour"] == [0] * 24 and empty["purchases_after"]["contacted"]["customers"] == 0


# --- sends per local hour -------------------------------------------------------------------------


def test_sends_per_local_hour_use_each_recipients_zone(delivered: Delivered) -> None:
    report = campaign_report(delivered.engine, delivered.settings, "promo")
    expected = [0] * 24
    local_hour = {"Europe/Moscow": 10, "Asia/Vladivostok": 17, "Europe/Kaliningrad": 9}  # of 07:00:05 UTC
    for cid in delivered.sent:
        expected[local_hour[delivered.zone_of[cid]]] += 1
    assert report["sends_per_local_hour"] == expected
    assert expected[17] == 2 - len(set(VLADIVOSTOK) & set(delivered.failed)) and expected[17] >= 1
    assert report["pending_per_local_hour"] == [0] * 24


def test_rows_still_waiting_are_counted_apart_by_send_time(delivered: Delivered) -> None:
    with delivered.engine.begin() as conn:  # one recipient's message is still to go, at 12:00 in Vladivostok
        conn.execute(deliveries.update().where(deliveries.c.customer_id == VLADIVOSTOK[0]).values(
            status="planned", sent_at=None, send_at=int(datetime(2026, 11, 25, 12, 0, tzinfo=ZoneInfo("Asia/Vladivostok")).timestamp())))
    report = campaign_report(delivered.engine, delivered.settings, "promo")
    assert report["pending_per_local_hour"][12] == 1 and sum(report["pending_per_local_hour"]) == 1
    assert sum(report["sends_per_local_hour"]) == len(set(delivered.sent) - {VLADIVOSTOK[0]})


# --- purchases after the message ------------------------------------------------------------------


def purchases_scenario(d: Delivered) -> dict[str, Any]:
    """Who buys when, relative to the send day (the 24th of November, the same date in every zone
    of these recipients at 07:00 UTC)."""
    s = [cid for cid in d.sent if cid not in VLADIVOSTOK + KALININGRAD]
    h = d.holdout
    buy(d.engine, s[0], 0, 1000.0)     # the day of the message: counts
    buy(d.engine, s[1], 5, 500.0)      # two purchases: one buyer, both count
    buy(d.engine, s[1], 29, 250.5)     # the last day of the window
    buy(d.engine, s[2], 30, 999.0)     # the day after the window: not counted
    buy(d.engine, s[2], -1, 777.0)     # before the message: not counted
    buy(d.engine, s[3], 10, 100.0)
    buy(d.engine, h[0], 3, 300.0)      # a held-out customer who bought anyway
    buy(d.engine, h[1], 31, 50.0)      # too late
    buy(d.engine, d.failed[0], 2, 40.0)     # not contacted (the send failed), not held out
    buy(d.engine, NO_CONSENT[0], 4, 70.0)   # not contacted (no consent), not held out
    return {"n_sent": len(d.sent), "n_holdout": len(h), "n_not_held": len(d.zone_of) - len(h)}


def test_purchases_within_30_days_against_the_holdout(delivered: Delivered) -> None:
    n = purchases_scenario(delivered)
    report = campaign_report(delivered.engine, delivered.settings, "promo", now=FIRE + timedelta(days=45))
    after = report["purchases_after"]
    assert after["window_days"] == 30 and after["complete"] and after["open_runs"] == []
    assert after["contacted"] == {
        "customers": n["n_sent"], "buyers": 3, "conversion_pct": round(300 / n["n_sent"], 2), "purchases": 4,
        "revenue": 1850.5, "revenue_per_customer": round(1850.5 / n["n_sent"], 2), "open_windows": 0,
    }
    assert after["holdout"] == {
        "customers": n["n_holdout"], "buyers": 1, "conversion_pct": round(100 / n["n_holdout"], 2), "purchases": 1,
        "revenue": 300.0, "revenue_per_customer": round(300 / n["n_holdout"], 2), "open_windows": 0,
    }
    assert after["not_held_out"]["customers"] == n["n_not_held"]
    assert (after["not_held_out"]["buyers"], after["not_held_out"]["revenue"]) == (5, 1960.5)

    rate_c, rate_h = 3 / n["n_sent"], 1 / n["n_holdout"]
    lift = after["uplift"]
    assert lift["conversion_pp"] == round(100 * (rate_c - rate_h), 2)
    assert lift["conversion_relative_pct"] == round(100 * (rate_c / rate_h - 1), 2)
    assert lift["revenue_per_customer"] == round(1850.5 / n["n_sent"] - 300 / n["n_holdout"], 2)
    assert lift["incremental_buyers"] == round((rate_c - rate_h) * n["n_sent"], 1)
    assert lift["incremental_revenue"] == round((1850.5 / n["n_sent"] - 300 / n["n_holdout"]) * n["n_sent"], 2)
    pooled = 4 / (n["n_sent"] + n["n_holdout"])
    z = (rate_c - rate_h) / math.sqrt(pooled * (1 - pooled) * (1 / n["n_sent"] + 1 / n["n_holdout"]))
    assert lift["p_value"] == pytest.approx(2 * (1 - NormalDist().cdf(abs(z))), abs=1e-4)
    assert after["uplift_not_held_out"]["conversion_pp"] == round(100 * (5 / n["n_not_held"] - rate_h), 2)
    (run,) = report["runs"]
    assert {k: v for k, v in run["purchases_after"].items()} == {k: v for k, v in after.items() if k not in ("open_runs", "as_of")}


def test_a_window_still_open_counts_up_to_now_and_says_so(delivered: Delivered) -> None:
    purchases_scenario(delivered)
    now = datetime(2026, 12, 4, 12, 0, tzinfo=MSK)  # ten days after the send: day +10 is today
    report = campaign_report(delivered.engine, delivered.settings, "promo", now=now)
    after = report["purchases_after"]
    assert not after["complete"] and after["open_runs"] == [delivered.run_id]
    assert after["as_of"] == "2026-12-04T09:00:00Z"
    assert (after["contacted"]["buyers"], after["contacted"]["purchases"], after["contacted"]["revenue"]) == (3, 3, 1600.0)
    assert after["contacted"]["open_windows"] == after["contacted"]["customers"]
    assert not report["runs"][0]["purchases_after"]["complete"]
    before = campaign_report(delivered.engine, delivered.settings, "promo", now=FIRE - timedelta(hours=1))
    assert before["purchases_after"]["contacted"]["buyers"] == 0  # nothing is counted before the window opens


def test_without_a_holdout_there_is_no_comparison(workspace: Path) -> None:
    settings = load_settings(workspace / "settings.toml")
    engine = connect(settings.database_url)
    insert_customers(engine, [customer("A1"), customer("A2")])
    path = write_campaign(workspace, "plain")
    plan_run(engine, engine, prepare(settings, load_campaign(path), engine=engine), FIRE, dry_run=False)
    with engine.begin() as conn:
        conn.execute(deliveries.update().values(status="sent", sent_at=int(FIRE.timestamp())))
    buy(engine, "A1", 1, 10.0)
    after = campaign_report(engine, settings, "plain", now=FIRE + timedelta(days=40))["purchases_after"]
    assert after["contacted"]["buyers"] == 1 and after["contacted"]["conversion_pct"] == 50.0
    assert after["holdout"] is None and after["uplift"] is None and after["not_held_out"] is None
    engine.dispose()


# --- calls ----------------------------------------------------------------------------------------


def test_call_outcomes_and_notes(delivered: Delivered) -> None:
    s = delivered.sent
    first = add_task(delivered.engine, s[0], outcome="ordered", note="Купил <шкаф> & стол", at=FIRE + timedelta(hours=2))
    second = add_task(delivered.engine, s[1], outcome="refused", note="дорого,\nпозвонить весной", at=FIRE + timedelta(hours=5),
                      manager="petrov")
    add_task(delivered.engine, s[2], outcome="ordered", note=None, at=FIRE + timedelta(hours=1))
    add_task(delivered.engine, s[3], outcome=None, note="  ", at=FIRE + timedelta(hours=1), status="open")
    report = campaign_report(delivered.engine, delivered.settings, "promo")
    assert report["call_outcomes"] == {"ordered": 2, "refused": 1}
    assert report["call_tasks"] == {"total": 4, "open": 1, "done": 3, "closed": 0, "without_outcome": 1}
    assert report["runs"][0]["call_outcomes"] == {"ordered": 2, "refused": 1}
    assert report["notes_total"] == 2
    assert report["notes"] == [
        {"task_id": second, "run": delivered.run_id, "customer_id": s[1], "manager": "petrov", "outcome": "refused",
         "note": "дорого,\nпозвонить весной", "at": "2026-11-24T12:00:00Z"},
        {"task_id": first, "run": delivered.run_id, "customer_id": s[0], "manager": "ivanova", "outcome": "ordered",
         "note": "Купил <шкаф> & стол", "at": "2026-11-24T09:00:00Z"},
    ]
    newest_only = campaign_report(delivered.engine, delivered.settings, "promo", notes_limit=1)
    assert [n["task_id"] for n in newest_only["notes"]] == [second] and newest_only["notes_total"] == 2


def test_notes_recorded_through_the_task_board_each_appear_with_their_outcome(delivered: Delivered) -> None:
    from orchestrator.tasks import record_outcome

    task = add_task(delivered.engine, delivered.sent[0], outcome=None, note=None, at=FIRE, status="open")
    record_outcome(delivered.engine, delivered.settings, task, "no_answer", note="не взял трубку", now=FIRE + timedelta(hours=1))
    record_outcome(delivered.engine, delivered.settings, task, "ordered", note="заказал <шкаф> & стол",
                   now=FIRE + timedelta(days=1, hours=1))
    report = campaign_report(delivered.engine, delivered.settings, "promo")
    assert report["call_outcomes"] == {"ordered": 1} and report["call_tasks"]["done"] == 1
    assert [(n["outcome"], n["note"], n["at"]) for n in report["notes"]] == [
        ("ordered", "заказал <шкаф> & стол", "2026-11-25T08:00:00Z"),
        ("no_answer", "не взял трубку", "2026-11-24T08:00:00Z"),
    ]
    assert report["notes_total"] == 2 and {n["task_id"] for n in report["notes"]} == {task}


# --- charts ---------------------------------------------------------------------------------------


def parse_svg(markup: str) -> ET.Element:
    root = ET.fromstring(markup)
    assert root.tag == f"{SVG}svg" and root.get("viewBox") and root.get("width") == "100%"
    assert root.get("height") is None  # scales with the page
    assert not list(root.iter(f"{SVG}script"))
    assert "http://" not in markup.replace("http://www.w3.org/", "") and "https://" not in markup
    assert "href" not in markup and "@import" not in markup
    return root


def texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def test_charts_are_inline_svg_with_escaped_labels(delivered: Delivered) -> None:
    with delivered.engine.begin() as conn:  # a run of a campaign whose name and reason need escaping
        run_id = conn.execute(runs.insert().returning(runs.c.id).values(
            campaign="a<&>b", fire_at=int(FIRE.timestamp()), status="planned", started_at=0)).scalar_one()
        conn.execute(deliveries.insert(), [
            {"run_id": run_id, "campaign": "a<&>b", "customer_id": cid, "channel": "sms", "category": "promo",
             "status": status, "reason": reason, "created_at": 0, "updated_at": 0, "zone": "Asia/Vladivostok",
             "sent_at": int(FIRE.timestamp()) if status == "sent" else None}
            for cid, status, reason in (("C01", "suppressed", "<&> odd"), ("C02", "sent", None), ("C03", "sent", None))
        ])
    report = campaign_report(delivered.engine, delivered.settings, "a<&>b")
    funnel = charts.funnel_svg(report)
    root = parse_svg(funnel)
    labels = texts(root)
    assert "suppressed: <&> odd" in labels and "Funnel: a<&>b" in labels
    assert "suppressed: &lt;&amp;&gt; odd" in funnel and "a<&>b" not in funnel
    assert root.get("aria-label") == "Funnel: a<&>b"
    bars = {title.text for title in root.iter(f"{SVG}title")}
    assert "sent 2" in bars and "targeted 3" in bars  # a tooltip for every bar, without script

    hours = parse_svg(charts.hours_svg(report))
    assert "Sends per local hour: a<&>b" in texts(hours)
    assert {t.text for t in hours.iter(f"{SVG}title")} >= {"17 2"}

    whole = campaign_report(delivered.engine, delivered.settings, "promo")
    assert "sent" in texts(parse_svg(charts.funnel_svg(whole)))
    empty = parse_svg(charts.hours_svg({"campaign": "x", "sends_per_local_hour": [0] * 24}))
    assert "No data yet" in texts(empty)


# --- the command line -----------------------------------------------------------------------------


def cli(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-m", "orchestrator", "--config", str(workspace / "settings.toml"), *args],
                            capture_output=True, text=True, cwd=workspace, env=env, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_report_command_prints_json_lines_and_text(delivered: Delivered) -> None:
    purchases_scenario(delivered)
    add_task(delivered.engine, delivered.sent[0], outcome="ordered", note="купил <шкаф>", at=FIRE + timedelta(hours=2))
    result = cli(delivered.root, "report", "promo", "--now", "2027-01-20T10:00", "--json")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(isinstance(r, dict) and r["campaign"] == "promo" for r in records)
    funnels = [r for r in records if r["type"] == "funnel"]
    assert [f["run"] for f in funnels] == [delivered.run_id, "all"]
    assert funnels[-1]["suppressed"] == len(delivered.holdout) + 1
    assert funnels[-1]["suppressed_by_reason"] == {"holdout": len(delivered.holdout), "no_consent": 1}
    (hours,) = [r for r in records if r["type"] == "local_hours"]
    assert len(hours["hours"]) == 24 and sum(hours["hours"]) == len(delivered.sent)
    (calls,) = [r for r in records if r["type"] == "calls"]
    assert calls["outcomes"] == {"ordered": 1}
    assert [r["note"] for r in records if r["type"] == "note"] == ["купил <шкаф>"]
    after = [r for r in records if r["type"] == "purchases_after"]
    assert [r["run"] for r in after] == [delivered.run_id, "all"]
    assert after[-1]["contacted"]["buyers"] == 3 and after[-1]["holdout"]["buyers"] == 1 and after[-1]["complete"]

    text = cli(delivered.root, "report", "promo", "--now", "2027-01-20T10:00")
    assert text.returncode == 0, text.stderr
    for expected in ("holdout 10%", "no_consent 1", "outcomes: ordered 1", "купил <шкаф>",
                     "purchases within 30 days", "uplift, contacted vs holdout", "sent per local hour"):
        assert expected in text.stdout, (expected, text.stdout)

    missing = cli(delivered.root, "report", "nope")
    assert missing.returncode == 2 and "no campaign 'nope'" in missing.stderr


# --- the customer's card: seasonal index beside the sleep score -----------------------------------


def december_buyer(workspace: Path) -> tuple[sa.Engine, Any]:
    settings = load_settings(workspace / "settings.toml")
    engine = connect(settings.database_url)
    insert_customers(engine, [customer("D1", name="Дед <Мороз>"), customer("E1")])
    days = [date(year, 12, day) for year in (2023, 2024, 2025) for day in (3, 12, 20)]
    days += [date(2024, 6, 10), date(2025, 3, 3)]
    with engine.begin() as conn:
        conn.execute(purchases.insert(), [
            {"key": f"D1/{d}", "customer_id": "D1", "date": d, "day": day_number(d), "month": d.month, "amount": 5000.0}
            for d in days])
    refresh_stats(engine, settings)
    return engine, settings


def test_the_card_shows_december_as_the_buying_month(workspace: Path) -> None:
    engine, settings = december_buyer(workspace)
    now = datetime(2026, 12, 10, 12, 0, tzinfo=MSK)
    card = customer_card(engine, settings, "D1", now)
    index = card["seasonal_index"]
    assert [m["month"] for m in index] == list(range(1, 13)) and index[11]["name"] == "Dec"
    values = [m["index"] for m in index]
    assert values.index(max(values)) == 11 and values[11] > 2 * sorted(values)[-2]
    assert sum(v * d for v, d in zip(values, MONTH_DAYS)) == pytest.approx(365, abs=1.0)  # an average month is 1.0
    sleep = card["sleep"]
    assert sleep["score"] == round(card["sleep_score"], 2) and sleep["threshold"] == 2.0
    assert sleep["is_sleeping"] == (card["sleep_score"] >= 2.0)
    assert sleep["seasonal_days_since_last_purchase"] == pytest.approx(sleep["score"] * sleep["usual_gap_seasonal_days"], rel=0.02)
    assert "seasonal days since the last purchase" in sleep["why"]

    root = parse_svg(charts.season_svg(card))
    labels = texts(root)
    assert all(name in labels for name in ("Jan", "Dec")) and f"{values[11]:.1f}" in labels
    december = [t for t in root.iter(f"{SVG}title") if (t.text or "").startswith("Dec")]
    assert december and december[0].text == f"Dec {values[11]:.1f}"

    nobody = customer_card(engine, settings, "E1", now)
    assert nobody["seasonal_index"] is None and nobody["sleep"]["score"] is None and "no purchases" in nobody["sleep"]["why"]
    assert "No data yet" in texts(parse_svg(charts.season_svg(nobody)))
    engine.dispose()


def test_customer_show_prints_the_season_beside_the_sleep_score(workspace: Path) -> None:
    engine, _ = december_buyer(workspace)
    engine.dispose()
    text = cli(workspace, "customer", "show", "D1", "--now", "2026-12-10T12:00")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    months = next(i for i, line in enumerate(lines) if line.split()[:3] == ["Jan", "Feb", "Mar"])
    values = [float(v) for v in lines[months + 1].split()]
    assert len(values) == 12 and values.index(max(values)) == 11
    assert lines[months + 2].split()[-1] == "█"
    assert any(line.startswith("sleep score") for line in lines)
    record = json.loads(cli(workspace, "customer", "show", "D1", "--json").stdout)
    assert len(record["seasonal_index"]) == 12 and record["sleep"]["usual_gap_seasonal_days"] > 0
