"""Campaign definitions (SPEC 6): the model of a campaign file, its schedule and its run identity.

A run is identified by the campaign name and the *scheduled* fire time, so that a run fired twice
(two schedulers, a restart, a marketer typing `run` twice in one cron period) plans nothing new.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.errors import CampaignError, NotFound
from orchestrator.settings import check_zone, parse_duration
from orchestrator.yamlfile import LineMap, load_yaml, pydantic_error

UTC = timezone.utc
TRIGGERS = ("birthday", "sleeping")
_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    cron: str | None = None
    at: datetime | None = None
    trigger: Literal["birthday", "sleeping"] | None = None
    time: str | None = Field(None, description="daily fire time of a trigger, HH:MM (default 00:00)")
    timezone: str | None = None
    local_time: str | None = None

    _zone = field_validator("timezone")(lambda v: v if v is None else check_zone(v))

    @field_validator("local_time", "time")
    @classmethod
    def _clock(cls, value: str | None) -> str | None:
        if value is not None:
            parse_clock(value)
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            cron_trigger(value, "UTC")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> "Schedule":
        kinds = [k for k in ("cron", "at", "trigger") if getattr(self, k) is not None]
        if len(kinds) > 1:
            raise ValueError(f"give one of cron, at or trigger, not {' and '.join(kinds)}")
        if self.time is not None and self.trigger is None:
            raise ValueError("'time' is the daily fire time of a trigger; use cron for other schedules")
        return self


class Campaign(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    description: str = ""
    segment: str | None = None
    where: Any = None
    category: Literal["promo", "content", "service", "transactional"]
    channels: tuple[Literal["sms", "email", "phone", "webhook"], ...]
    channel_mode: Literal["first", "all"] = "first"
    template: str
    subject: str | None = None
    offer: dict[str, Any] = Field(default_factory=dict)
    schedule: Schedule | None = None
    deliver_within: str = "24h"
    sms_max_parts: int = Field(2, ge=1, le=10)
    holdout: str | None = None
    when_capped: Literal["suppress", "defer"] = "suppress"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", value):
            raise ValueError("a campaign name is letters, digits, '-', '_' or '.' (up to 128)")
        return value

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one channel")
        if len(set(value)) != len(value):
            raise ValueError("a channel is listed twice")
        return value

    @field_validator("deliver_within")
    @classmethod
    def _within(cls, value: Any) -> str:
        seconds = parse_duration(str(value))
        if seconds < 60:
            raise ValueError("deliver_within must be at least a minute")
        return str(value)

    @field_validator("holdout")
    @classmethod
    def _holdout(cls, value: Any) -> str | None:
        if value is None:
            return None
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", str(value))
        if not match or not 0 <= float(match.group(1)) < 100:
            raise ValueError(f"'{value}' is not a share like 10%")
        return str(value)

    @model_validator(mode="after")
    def _segment(self) -> "Campaign":
        if (self.segment is None) == (self.where is None):
            raise ValueError("give either segment (a name) or an inline where: block")
        return self

    # --- derived values ------------------------------------------------------------------

    @property
    def deliver_within_seconds(self) -> int:
        return parse_duration(self.deliver_within)

    @property
    def holdout_share(self) -> float:
        if not self.holdout:
            return 0.0
        return float(self.holdout.strip().rstrip("%")) / 100

    @property
    def local_time(self) -> time | None:
        return parse_clock(self.schedule.local_time) if self.schedule and self.schedule.local_time else None

    @property
    def trigger(self) -> str | None:
        return self.schedule.trigger if self.schedule else None

    def zone(self, default: str) -> ZoneInfo:
        return ZoneInfo(self.schedule.timezone if self.schedule and self.schedule.timezone else default)

    def in_holdout(self, customer_id: str) -> bool:
        """A stable share of the segment, the same in every run of this campaign."""
        share = self.holdout_share
        if share <= 0:
            return False
        digest = hashlib.sha256(f"{self.name}\x00{customer_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < share


@dataclass(frozen=True)
class CampaignFile:
    campaign: Campaign
    file: Path
    lines: LineMap


def parse_clock(text: str) -> time:
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", str(text))
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ValueError(f"'{text}' is not a time like 11:00")
    return time(int(match.group(1)), int(match.group(2)))


def load_campaign(path: Path) -> CampaignFile:
    data, lines = load_yaml(path)
    if not isinstance(data, dict):
        raise CampaignError("a campaign file is a mapping of fields (name, segment, ...)", file=path, line=1)
    try:
        campaign = Campaign.model_validate(data)
    except ValidationError as error:
        raise pydantic_error(error, file=path, lines=lines, kind=CampaignError) from None
    if campaign.name != path.stem:
        raise CampaignError(
            f"the campaign is named '{campaign.name}' but its file is '{path.name}'; "
            "keep them equal so that runs can be found by name",
            file=path, line=lines.line(("name",)), field="name",
        )
    return CampaignFile(campaign, path, lines)


def campaign_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))


def find_campaign(directory: Path, name_or_path: str) -> CampaignFile:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return load_campaign(path)
    for candidate in (directory / f"{name_or_path}.yaml", directory / f"{name_or_path}.yml"):
        if candidate.exists():
            return load_campaign(candidate)
    known = ", ".join(p.stem for p in campaign_files(directory)) or "none"
    raise NotFound(f"no campaign '{name_or_path}' in {directory} (known: {known})")


# --- schedules --------------------------------------------------------------------------------


def _expand_cron_numbers(part: str) -> list[int]:
    step = 1
    if "/" in part:
        part, step_text = part.split("/", 1)
        step = int(step_text)
    if part == "*":
        low, high = 0, 6
    elif "-" in part:
        low, high = (int(x) for x in part.split("-", 1))
    else:
        low = high = int(part)
        if step != 1:
            high = 6
    return list(range(low, high + 1, step))


def _standard_dow(field: str) -> str:
    """Crontab weekdays count from Sunday = 0 (7 too); APScheduler 3 counts from Monday = 0.

    Numbers are translated to names, which both read the same way.
    """
    if not re.search(r"\d", field):
        return field
    names: list[str] = []
    for part in field.split(","):
        if re.search(r"[a-zA-Z]", part):
            names.append(part)
            continue
        for number in _expand_cron_numbers(part):
            if not 0 <= number <= 7:
                raise ValueError(f"day of week {number} is out of range 0-7")
            name = _DOW_NAMES[number % 7]
            if name not in names:
                names.append(name)
    return ",".join(names)


def cron_trigger(expr: str, zone: str):  # type: ignore[no-untyped-def]
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"'{expr}' is not a cron expression (minute hour day month weekday)")
    try:
        fields[4] = _standard_dow(fields[4])
        return CronTrigger(
            minute=fields[0], hour=fields[1], day=fields[2], month=fields[3],
            day_of_week=fields[4], timezone=ZoneInfo(zone),
        )
    except ValueError as error:
        raise ValueError(f"'{expr}' is not a valid cron expression: {error}") from None


def _daily_trigger(clock: time, zone: str):  # type: ignore[no-untyped-def]
    from apscheduler.triggers.cron import CronTrigger

    return CronTrigger(hour=clock.hour, minute=clock.minute, timezone=ZoneInfo(zone))


def schedule_trigger(campaign: Campaign, default_zone: str):  # type: ignore[no-untyped-def]
    """An APScheduler trigger for cron and daily triggers; None for `at` and unscheduled."""
    schedule = campaign.schedule
    if schedule is None or schedule.at is not None:
        return None
    zone = schedule.timezone or default_zone
    if schedule.cron:
        return cron_trigger(schedule.cron, zone)
    return _daily_trigger(parse_clock(schedule.time or "00:00"), zone)


def at_instant(campaign: Campaign, default_zone: str) -> datetime | None:
    schedule = campaign.schedule
    if schedule is None or schedule.at is None:
        return None
    at = schedule.at
    if at.tzinfo is None:
        at = at.replace(tzinfo=campaign.zone(default_zone))
    return at.astimezone(UTC)


def fire_times(campaign: Campaign, default_zone: str, start: datetime, end: datetime) -> Iterator[datetime]:
    """Every scheduled fire time in [start, end), UTC."""
    at = at_instant(campaign, default_zone)
    if at is not None:
        if start <= at < end:
            yield at
        return
    trigger = schedule_trigger(campaign, default_zone)
    if trigger is None:
        return
    previous = None
    cursor = start
    last_wall = None
    while True:
        local = trigger.get_next_fire_time(previous, cursor)
        if local is None or local >= end:
            return
        # The trigger is given back its own zoned value: converted to UTC inside the hour that
        # repeats when clocks go back, it would answer the same instant forever.
        previous = cursor = local
        wall = local.replace(tzinfo=None)
        if wall == last_wall:
            continue  # the repeated hour shows 02:30 twice: the campaign fires once, as cron does
        last_wall = wall
        fire = local.astimezone(UTC)
        if fire >= start:
            yield fire


def latest_fire_time(campaign: Campaign, default_zone: str, now: datetime) -> datetime | None:
    """The run a manual `run` means: the latest fire time at or before now (None if none yet)."""
    at = at_instant(campaign, default_zone)
    if at is not None:
        return at if at <= now else None
    if schedule_trigger(campaign, default_zone) is None:
        return now.replace(second=0, microsecond=0)
    end = now + timedelta(microseconds=1)
    for lookback in (timedelta(hours=2), timedelta(days=2), timedelta(days=32), timedelta(days=400), timedelta(days=3000)):
        fires = list(fire_times(campaign, default_zone, now - lookback, end))
        if fires:
            return fires[-1]
    return None


def next_fire_time(campaign: Campaign, default_zone: str, now: datetime) -> datetime | None:
    for fire in fire_times(campaign, default_zone, now, now + timedelta(days=3000)):
        return fire
    return None
