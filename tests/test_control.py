"""Management control (SPEC 9) on SQLite and PostgreSQL: per-manager task figures, orders that
followed a call within 30 days, clients without contact on any channel, escalation after N
working days of the customer's calendar, each manager's own view, and the `control` command."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from orchestrator.control import control_report
from orchestrator.settings import load_settings
from orchestrator.tasks import record_outcome
from tests.planner_fixtures import customer
from tests.test_tasks import MSK, Workspace, at, json_lines, run_cli, ws  # noqa: F401 - ws is a fixture

NOW = at(MSK, 2026, 2, 26, 12, 0)  # Thursday; Monday 23 February was a public holiday


@pytest.fixture
def scene(ws: Workspace) -> dict[str, Any]:  # noqa: F811
    ws.customers(customer("A"), customer("B"), customer("C"), customer("D"), customer("E"), customer("F"),
                 customer("P", manager="petrov"), customer("X", manager=None))
    ids: dict[str, Any] = {}
    ids["escalated"] = ws.task("A", at(MSK, 2026, 2, 20, 10), at(MSK, 2026, 2, 20, 19))   # Friday before the holiday
    ids["overdue"] = ws.task("B", at(MSK, 2026, 2, 24, 10), at(MSK, 2026, 2, 24, 19))     # Tuesday
    ids["today"] = ws.task("C", at(MSK, 2026, 2, 26, 10), at(MSK, 2026, 2, 26, 19))
    ids["reached"] = ws.task("D", at(MSK, 2026, 1, 9, 10), at(MSK, 2026, 1, 9, 19))
    record_outcome(ws.engine, ws.settings, ids["reached"], "reached", now=at(MSK, 2026, 1, 10, 11))
    ids["reached_again"] = ws.task("D", at(MSK, 2026, 1, 12, 10), at(MSK, 2026, 1, 12, 19), campaign="again")
    record_outcome(ws.engine, ws.settings, ids["reached_again"], "reached", now=at(MSK, 2026, 1, 12, 11))
    ids["no_answer"] = ws.task("E", at(MSK, 2026, 2, 2, 10), at(MSK, 2026, 2, 2, 19))
    for day in (2, 3, 4):
        record_outcome(ws.engine, ws.settings, ids["no_answer"], "no_answer", now=at(MSK, 2026, 2, day, 12))
    ids["petrov_p"] = ws.task("P", at(MSK, 2026, 2, 1, 10), manager="petrov")
    record_outcome(ws.engine, ws.settings, ids["petrov_p"], "ordered", now=at(MSK, 2026, 2, 2, 11))
    ids["petrov_f"] = ws.task("F", at(MSK, 2026, 2, 15, 10), manager="petrov")
    record_outcome(ws.engine, ws.settings, ids["petrov_f"], "callback", due="2026-03-02T12:00", now=at(MSK, 2026, 2, 16, 11))
    # Purchases: D after both calls (once), too late, before; P after petrov's call.
    ws.purchase("D", date(2026, 1, 15), 500.0)
    ws.purchase("D", date(2026, 2, 20), 70.0)    # 41 days after the first call, 39 after the second
    ws.purchase("D", date(2026, 1, 5), 30.0)
    ws.purchase("P", date(2026, 2, 10), 1200.0)
    ws.purchase("A", date(2026, 2, 25), 99.0)    # no call to A: not an order after a call
    # Contacts: A had an email recently, B an SMS long ago, E only a phone delivery (= a task, not a contact).
    ws.delivery("A", "email", "sent", sent_at=at(MSK, 2026, 2, 1, 12), run_id=1)
    ws.delivery("B", "sms", "sent", sent_at=at(MSK, 2025, 10, 1, 12), run_id=2)
    ws.delivery("B", "email", "failed", sent_at=at(MSK, 2026, 2, 1, 12), run_id=3)
    ws.delivery("E", "phone", "sent", sent_at=at(MSK, 2026, 2, 1, 12), run_id=4)
    ids["ws"] = ws
    return ids


def by_manager(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["manager"]: m for m in report["managers"]}


def test_task_figures_outcomes_and_orders_after_calls(scene: dict[str, Any]) -> None:
    ws: Workspace = scene["ws"]
    report = control_report(ws.engine, ws.settings, now=NOW)
    assert report["settings"] == {"orders_window_days": 30, "no_contact_days": 90, "escalate_after_working_days": 2}
    figures = by_manager(report)
    assert set(figures) == {"ivanova", "petrov"}
    mine = figures["ivanova"]
    assert (mine["open"], mine["overdue"], mine["escalated"], mine["done"], mine["closed"]) == (3, 2, 1, 2, 1)
    assert {k: v for k, v in mine["outcomes"].items() if v} == {"reached": 2, "no_answer": 1}
    assert mine["name"] == "Мария Иванова" and mine["clients"] == 6
    # Two calls to D, one purchase within 30 days after both: counted once in orders and amount.
    assert (mine["calls"], mine["calls_followed_by_order"], mine["orders_after_calls"], mine["orders_amount"]) == (2, 2, 1, 500.0)
    theirs = figures["petrov"]
    assert (theirs["open"], theirs["done"], theirs["calls"], theirs["orders_after_calls"], theirs["orders_amount"]) == (1, 1, 2, 1, 1200.0)
    assert report["totals"]["orders_amount"] == 1700.0 and report["totals"]["open"] == 4


def test_escalation_counts_working_days_of_the_customers_calendar(scene: dict[str, Any]) -> None:
    ws: Workspace = scene["ws"]
    mine = by_manager(control_report(ws.engine, ws.settings, now=NOW))["ivanova"]
    overdue = {t["id"]: t for t in mine["overdue_tasks"]}
    # Due Friday 20th; Monday 23rd a holiday: Tuesday, Wednesday, Thursday are three working days.
    assert overdue[scene["escalated"]]["working_days_overdue"] == 3 and overdue[scene["escalated"]]["escalated"]
    assert overdue[scene["overdue"]]["working_days_overdue"] == 2 and not overdue[scene["overdue"]]["escalated"]
    assert [t["id"] for t in mine["escalated_tasks"]] == [scene["escalated"]]
    assert mine["escalated_tasks"][0]["customer_name"] == "Клиент A"
    # On Wednesday the first was only two working days late.
    wednesday = by_manager(control_report(ws.engine, ws.settings, now=at(MSK, 2026, 2, 25, 12)))["ivanova"]
    assert wednesday["escalated"] == 0 and wednesday["overdue"] == 2
    # On Friday the second is escalated too; with N = 3 only the first.
    friday = at(MSK, 2026, 2, 27, 12)
    assert by_manager(control_report(ws.engine, ws.settings, now=friday))["ivanova"]["escalated"] == 2
    lenient = load_settings(ws.root / "settings.toml", environ={"ORCHESTRATOR_TASKS_ESCALATE_AFTER_WORKING_DAYS": "3"})
    assert by_manager(control_report(ws.engine, lenient, now=friday))["ivanova"]["escalated"] == 1
    # A task done is never overdue.
    record_outcome(ws.engine, ws.settings, scene["escalated"], "refused", now=NOW)
    assert by_manager(control_report(ws.engine, ws.settings, now=NOW))["ivanova"]["escalated"] == 0


def test_clients_without_contact_on_any_channel(scene: dict[str, Any]) -> None:
    ws: Workspace = scene["ws"]
    mine = by_manager(control_report(ws.engine, ws.settings, now=NOW))["ivanova"]
    # A: email 25 days ago; D: reached in January; F: spoken to by petrov (a callback).
    # B: only an SMS in October; C and E: never (E's phone delivery only created a task).
    assert mine["no_contact_count"] == 3
    assert [(c["customer_id"], c["last_contact"], c["last_contact_channel"]) for c in mine["no_contact"]] == [
        ("C", None, None), ("E", None, None), ("B", "2025-10-01T09:00:00Z", "sms")]
    assert mine["no_contact"][2]["days_since_contact"] == 148 and mine["no_contact"][0]["name"] == "Клиент C"
    assert by_manager(control_report(ws.engine, ws.settings, now=NOW))["petrov"]["no_contact_count"] == 0
    short = load_settings(ws.root / "settings.toml", environ={"ORCHESTRATOR_TASKS_NO_CONTACT_DAYS": "20",
                                                              "ORCHESTRATOR_TASKS_NO_CONTACT_LIMIT": "2"})
    mine = by_manager(control_report(ws.engine, short, now=NOW))["ivanova"]
    # Within 20 days only F (spoken to on the 16th) had a contact; two listed, all counted.
    assert mine["no_contact_count"] == 5 and [c["customer_id"] for c in mine["no_contact"]] == ["C", "E"]


def test_a_manager_sees_only_their_own_figures(scene: dict[str, Any]) -> None:
    ws: Workspace = scene["ws"]
    everyone = by_manager(control_report(ws.engine, ws.settings, now=NOW))
    own = control_report(ws.engine, ws.settings, manager="ivanova", now=NOW)
    assert [m["manager"] for m in own["managers"]] == ["ivanova"] and own["manager"] == "ivanova"
    assert own["managers"][0] == everyone["ivanova"]
    assert all(t["id"] not in (scene["petrov_p"], scene["petrov_f"]) for t in own["managers"][0]["overdue_tasks"])


def test_control_command(scene: dict[str, Any]) -> None:
    ws: Workspace = scene["ws"]
    code, out, err = run_cli(ws, "control", "--json", "--now", "2026-02-26T12:00")
    assert code == 0, err
    lines = json_lines(out)
    assert [(r["type"], r.get("manager")) for r in lines] == [("manager", "ivanova"), ("manager", "petrov"), ("totals", None)]
    assert lines[0]["escalated"] == 1 and lines[0]["no_contact_days"] == 90
    code, out, _ = run_cli(ws, "control", "--manager", "petrov", "--json", "--now", "2026-02-26T12:00")
    assert code == 0 and [r["manager"] for r in json_lines(out)] == ["petrov"]
    code, out, _ = run_cli(ws, "control", "--now", "2026-02-26T12:00")
    assert code == 0 and "ESCALATED" in out and "without contact for more than 90 days" in out
    code, _, err = run_cli(ws, "control", "--manager", "nobody")
    assert code == 2 and "no manager 'nobody'" in err
    code, _, err = run_cli(ws, "control", "--now", "yesterday")
    assert code == 2 and "--now" in err
