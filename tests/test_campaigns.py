"""Campaign files, schedules (cron in the campaign's zone, at, daily triggers) and run identity."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from orchestrator.campaigns import (
    Campaign, fire_times, latest_fire_time, load_campaign, next_fire_time,
)
from orchestrator.errors import CampaignError

UTC = timezone.utc


def campaign(**schedule: str) -> Campaign:
    return Campaign.model_validate({
        "name": "c", "segment": "s", "category": "promo", "channels": ["sms"], "template": "t",
        "schedule": schedule or None,
    })


def test_cron_weekdays_count_from_sunday_like_crontab() -> None:
    # 2026-11-23 is a Monday.  "1" must mean Monday (crontab), not Tuesday (APScheduler 3).
    c = campaign(cron="0 10 * * 1", timezone="Europe/Moscow")
    fire = next_fire_time(c, "UTC", datetime(2026, 11, 22, tzinfo=UTC))
    assert fire == datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
    sunday = campaign(cron="0 10 * * 0")
    assert next_fire_time(sunday, "Europe/Moscow", datetime(2026, 11, 23, tzinfo=UTC)).weekday() == 6
    seven = campaign(cron="0 10 * * 7")
    assert next_fire_time(seven, "Europe/Moscow", datetime(2026, 11, 23, tzinfo=UTC)).weekday() == 6
    workdays = campaign(cron="0 10 * * 1-5")
    fires = list(fire_times(workdays, "Europe/Moscow", datetime(2026, 11, 23, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC)))
    assert [f.weekday() for f in fires] == [0, 1, 2, 3, 4]


def test_cron_is_evaluated_in_the_campaign_zone_across_dst() -> None:
    c = campaign(cron="0 9 * * *", timezone="Europe/Berlin")
    fires = list(fire_times(c, "Europe/Moscow", datetime(2026, 3, 28, tzinfo=UTC), datetime(2026, 3, 31, tzinfo=UTC)))
    # 09:00 Berlin is 08:00 UTC before the switch (29 March 2026) and 07:00 UTC after it.
    assert [f.strftime("%d %H:%M") for f in fires] == ["28 08:00", "29 07:00", "30 07:00"]


def test_manual_run_takes_the_latest_fire_time_so_a_second_run_is_the_same_run() -> None:
    c = campaign(cron="0 10 * * MON")
    first = latest_fire_time(c, "Europe/Moscow", datetime(2026, 11, 25, 12, tzinfo=UTC))
    second = latest_fire_time(c, "Europe/Moscow", datetime(2026, 11, 29, 23, tzinfo=UTC))
    assert first == second == datetime(2026, 11, 23, 7, tzinfo=UTC)


def test_at_and_unscheduled_and_triggers() -> None:
    at = campaign(at="2026-12-30T10:00")
    assert latest_fire_time(at, "Europe/Moscow", datetime(2026, 12, 1, tzinfo=UTC)) is None
    assert next_fire_time(at, "Europe/Moscow", datetime(2026, 12, 1, tzinfo=UTC)) == datetime(2026, 12, 30, 7, tzinfo=UTC)
    unscheduled = campaign()
    assert latest_fire_time(unscheduled, "Europe/Moscow", datetime(2026, 12, 1, 10, 17, 42, tzinfo=UTC)) == datetime(2026, 12, 1, 10, 17, tzinfo=UTC)
    birthday = campaign(trigger="birthday")
    fires = list(fire_times(birthday, "Asia/Vladivostok", datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 4, tzinfo=UTC)))
    assert [f.isoformat() for f in fires] == ["2026-12-01T14:00:00+00:00", "2026-12-02T14:00:00+00:00", "2026-12-03T14:00:00+00:00"]


def test_holdout_is_stable_and_close_to_its_share() -> None:
    c = Campaign.model_validate({"name": "h", "segment": "s", "category": "promo", "channels": ["sms"],
                                 "template": "t", "holdout": "10%"})
    held = [i for i in range(20000) if c.in_holdout(f"C{i}")]
    assert held == [i for i in range(20000) if c.in_holdout(f"C{i}")]
    assert 1800 < len(held) < 2200


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ("name: x\nsegment: s\ncategory: promo\nchannels: [sms]\ntemplate: t\nchanels: [sms]\n", 6, "chanels", "unknown field"),
        ("name: x\nsegment: s\ncategory: spam\nchannels: [sms]\ntemplate: t\n", 3, "category", "promo"),
        ("name: x\nsegment: s\ncategory: promo\nchannels: [sms, fax]\ntemplate: t\n", 4, "channels.1", "sms"),
        ("name: x\nsegment: s\ncategory: promo\nchannels: [sms]\ntemplate: t\nschedule:\n  cron: '0 25 * * *'\n", 7, "schedule.cron", "cron"),
        ("name: x\nsegment: s\ncategory: promo\nchannels: [sms]\ntemplate: t\ndeliver_within: soon\n", 6, "deliver_within", "duration"),
        ("name: x\ncategory: promo\nchannels: [sms]\ntemplate: t\n", 1, None, "segment"),
    ],
)
def test_campaign_errors_name_file_line_and_field(tmp_path: Path, text: str, line: int, field: str | None, message: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CampaignError) as caught:
        load_campaign(path)
    error = caught.value
    assert (error.file, error.line, error.field) == (str(path), line, field)
    assert message in error.message


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nsegment: [s\ncategory: promo\n", encoding="utf-8")
    with pytest.raises(Exception) as caught:
        load_campaign(path)
    assert str(caught.value).startswith(f"{path}:")
    assert "not valid YAML" in str(caught.value)


def test_a_cron_time_in_the_repeated_autumn_hour_fires_once() -> None:
    from datetime import datetime, timezone

    from orchestrator.campaigns import Campaign, fire_times

    c = Campaign.model_validate({"name": "c", "segment": "s", "category": "promo", "channels": ["sms"],
                                 "template": "t", "schedule": {"cron": "30 2 * * *", "timezone": "Europe/Berlin"}})
    fires = list(fire_times(c, "UTC", datetime(2026, 10, 24, tzinfo=timezone.utc), datetime(2026, 10, 27, tzinfo=timezone.utc)))
    assert [f.isoformat() for f in fires] == [
        "2026-10-24T00:30:00+00:00", "2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"]
