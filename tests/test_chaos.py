"""The chaos run (bench/chaos.py) in its short version, and proof that its checks can fail.

The short run takes about five minutes: real PostgreSQL, a Redis of its own (restarted), four
worker processes and two schedulers killed at random, network cuts through TCP proxies, gateway and
SMTP failures, a scheduler's clock jump, unsubscribes.  The verifier tests below feed it a small
ledger and made-up receipts with one violation each, so a green chaos run means something.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bench.chaos import Faults, in_quiet_hours, verify
from orchestrator.storage.engine import connect, write_transaction
from orchestrator.storage.schema import customers, deliveries, runs
from tests.conftest import REPO

QUIET = {"sms": "21:00-09:00", "email": "22:00-08:00"}
NOON_MOSCOW = 1_795_424_400          # 2026-11-23 12:00 Europe/Moscow (09:00 UTC)
NIGHT_MOSCOW = NOON_MOSCOW + 11 * 3600


@pytest.mark.slow
@pytest.mark.postgres
def test_the_short_chaos_run_keeps_every_promise(pg_server: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "chaos.py"), "--short", "--json", "--keep", str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=1200,
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    _drop_schema(pg_server, result["schema"])     # kept with the workspace (--keep) until read
    assert result["checks"] == {name: 0 for name in result["checks"]}, result
    assert done.returncode == 0
    assert sum(result["kills"].values()) >= 10 and result["kills"].get("scheduler", 0) >= 1
    assert set(result["faults"]) >= {
        "postgresql network cut", "redis network cut", "redis restart (data lost)", "scheduler clock jump",
        "gateway 503 burst", "gateway timeout burst", "gateway dropped connections", "smtp 421 burst"}
    assert result["received"].get("sms", 0) > 1000 and result["received"].get("email", 0) > 1000
    assert result["unsubscribes"] >= 5
    assert result["ledger"].get("unknown", 0) > 0, "the faults never left a message in doubt"
    assert result["suppressed"].get("capped", 0) > 0 and result["suppressed"].get("unsubscribed", 0) > 0


def _drop_schema(pg_server: str, schema: str) -> None:
    admin = sa.create_engine(pg_server.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    admin.dispose()


# --- the verifier catches what it claims to catch -------------------------------------------------


class Ledger:
    """A small ledger on SQLite and the files the gateway and the SMTP sink would have written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.engine = connect(f"sqlite:///{root / 'ledger.db'}")
        self.receipts: list[tuple[str, int, float]] = []
        with write_transaction(self.engine) as conn:
            conn.execute(runs.insert(), [{"id": run, "campaign": "c", "fire_at": NOON_MOSCOW - 60 * run, "status": "planned",
                                          "started_at": NOON_MOSCOW} for run in (1, 2)])
            conn.execute(customers.insert(), [
                {"id": cid, "zones": zones, "zone_source": "column", "created_at": 0, "updated_at": 0}
                for cid, zones in (("A", "Europe/Moscow"), ("B", "Asia/Vladivostok"), ("C", "Europe/Moscow Asia/Omsk"))])

    def row(self, row_id: int, customer: str, channel: str, status: str, send_at: int = NOON_MOSCOW,
            zone_source: str = "column", run: int = 1) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(deliveries.insert(), {
                "id": row_id, "run_id": run, "campaign": "c", "customer_id": customer, "channel": channel,
                "category": "promo", "status": status, "send_at": send_at, "zone": "Europe/Moscow",
                "zone_source": zone_source, "created_at": NOON_MOSCOW, "updated_at": NOON_MOSCOW})

    def received(self, channel: str, ref: int, at: float = NOON_MOSCOW + 5) -> None:
        self.receipts.append((channel, ref, at))

    def verify(self, faults: Faults | None = None, customers_count: int = 3) -> dict[str, Any]:
        with (self.root / "gateway.jsonl").open("w") as gateway, (self.root / "mailbox.jsonl").open("w") as mailbox:
            for channel, ref, at in self.receipts:
                if channel == "sms":
                    gateway.write(json.dumps({"path": "/send", "status": 200, "time": at, "query": "",
                                              "headers": {"content-type": "application/json"},
                                              "body": json.dumps({"ref": str(ref)})}) + "\n")
                else:
                    mailbox.write(json.dumps({"mail_from": "s@x", "rcpt_tos": ["a@x"], "raw": "",
                                              "message_id": f"<1.2.3.{ref}@x>", "received_at": at}) + "\n")
        return verify(self.engine, self.root, QUIET, faults or Faults(), customers_count)["checks"]


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(tmp_path)
    for row_id, customer in ((1, "A"), (2, "B"), (3, "C")):
        ledger.row(row_id, customer, "sms", "sent")
        ledger.row(10 + row_id, customer, "email", "suppressed")
        ledger.row(20 + row_id, customer, "sms", "suppressed", run=2)
    return ledger


def failing(checks: dict[str, int]) -> dict[str, int]:
    return {name: count for name, count in checks.items() if count}


def test_a_clean_ledger_passes(ledger: Ledger) -> None:
    for ref in (1, 2, 3):
        ledger.received("sms", ref)
    assert failing(ledger.verify()) == {}


def test_a_message_received_twice_is_a_duplicate(ledger: Ledger) -> None:
    for ref in (1, 2, 3, 1):
        ledger.received("sms", ref)
    assert failing(ledger.verify()) == {"duplicates": 1}


def test_two_messages_of_a_channel_to_one_customer_break_the_cap(ledger: Ledger) -> None:
    with write_transaction(ledger.engine) as conn:
        conn.execute(deliveries.update().where(deliveries.c.id == 21).values(status="unknown"))
    for ref in (1, 2, 3, 21):
        ledger.received("sms", ref)
    assert failing(ledger.verify()) == {"cap violations": 2}   # seen at the gateway and in the ledger


def test_a_message_at_night_in_any_candidate_zone_is_caught(ledger: Ledger) -> None:
    ledger.received("sms", 1)
    ledger.received("sms", 2)
    ledger.received("sms", 3, at=NOON_MOSCOW + 8 * 3600)    # 20:00 in Moscow, but 23:00 in Omsk
    assert failing(ledger.verify()) == {"sent in quiet hours": 1}


def test_the_default_zone_is_the_only_one_checked_when_the_policy_fell_back_to_it(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.row(1, "C", "sms", "sent", zone_source="default")
    ledger.row(2, "C", "sms", "suppressed", run=2)
    ledger.received("sms", 1, at=NOON_MOSCOW + 8 * 3600)
    assert failing(ledger.verify(customers_count=1)) == {}


def test_a_message_after_an_unsubscribe_is_caught_by_claim_time_and_by_arrival(ledger: Ledger) -> None:
    for ref in (1, 2, 3):
        ledger.received("sms", ref, at=NOON_MOSCOW + 60)
    faults = Faults()
    faults.unsubscribes[("A", "sms")] = NOON_MOSCOW - 1.0           # claimed after it
    faults.unsubscribes[("B", "sms")] = NOON_MOSCOW + 60 - 10.5      # arrived later than the slack
    assert failing(ledger.verify(faults)) == {"sent after unsubscribe": 2}


def test_a_sent_row_nobody_received_is_lost_and_a_received_unsent_row_is_a_phantom(ledger: Ledger) -> None:
    ledger.received("sms", 1)
    ledger.received("sms", 2)
    ledger.received("email", 11)                                   # the ledger says suppressed
    assert failing(ledger.verify()) == {"lost (sent, never received)": 1, "received but not sent in the ledger": 1}


def test_a_message_sent_before_its_runs_fire_time_is_caught(ledger: Ledger) -> None:
    for ref in (1, 2, 3):
        ledger.received("sms", ref)
    with write_transaction(ledger.engine) as conn:
        conn.execute(deliveries.update().where(deliveries.c.id == 2).values(send_at=NOON_MOSCOW - 300))
    assert failing(ledger.verify()) == {"sent before the run's fire time": 1}


def test_rows_left_pending_and_customers_left_unplanned_are_caught(ledger: Ledger) -> None:
    for ref in (1, 2, 3):
        ledger.received("sms", ref)
    with write_transaction(ledger.engine) as conn:
        conn.execute(deliveries.update().where(deliveries.c.id == 11).values(status="queued"))
    assert failing(ledger.verify(customers_count=4)) == {"rows not terminal": 1, "runs not fully planned": 2}


@pytest.mark.parametrize(("local", "quiet"), [("20:59", False), ("21:00", True), ("08:59", True), ("09:00", False)])
def test_the_verifiers_own_quiet_hours_are_half_open(local: str, quiet: bool) -> None:
    hour, minute = map(int, local.split(":"))
    at = NOON_MOSCOW + (hour - 12) * 3600 + minute * 60
    assert in_quiet_hours(at, "Europe/Moscow", (21 * 60, 9 * 60)) is quiet
