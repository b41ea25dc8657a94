"""A month replayed through the real pipeline on a virtual clock: every scheduled run fires once,
what is due is delivered into the outbox, quiet hours hold, and a second replay adds nothing."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from orchestrator.replay import replay
from orchestrator.settings import load_settings
from orchestrator.storage.engine import connect
from orchestrator.storage.schema import deliveries, runs
from tests.planner_fixtures import customer, insert_customers, make_workspace, write_campaign


def test_a_week_of_a_daily_campaign_is_delivered_once_and_never_at_night(tmp_path: Path) -> None:
    path = make_workspace(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f'\n[channels.sms]\nbackend = "channels.outbox.Outbox"\npath = "{tmp_path / "outbox"}"\n'
                     '[caps]\nsms = "1/1d"\n')
    settings = load_settings(path)
    engine = connect(settings.database_url)
    insert_customers(engine, [customer("C1"), customer("C2", timezone="Asia/Vladivostok", zones="Asia/Vladivostok")])
    write_campaign(tmp_path, "daily", schedule={"cron": "0 20 * * *", "timezone": "Europe/Moscow"})
    start = datetime(2026, 12, 1, tzinfo=timezone.utc)

    first = replay(settings, start, 7)
    again = replay(settings, start, 7)

    assert first.runs == 7 and again.runs == 0
    with engine.connect() as conn:
        rows = list(conn.execute(sa.select(deliveries)))
        assert conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar() == 7
    sent = [r for r in rows if r.status == "sent"]
    assert {f.stem for f in (tmp_path / "outbox").glob("*.txt")} == {str(r.id) for r in sent}
    for row in sent:  # 20:00 in Moscow is 03:00 in Vladivostok: those wait for 09:00 there
        local = datetime.fromtimestamp(row.send_at, ZoneInfo(row.zone))
        assert 9 <= local.hour < 21
    assert len({(r.customer_id, datetime.fromtimestamp(r.send_at, ZoneInfo(r.zone)).date()) for r in sent}) == len(sent)
