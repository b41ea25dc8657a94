"""Quiet hours in the recipient's local time (SPEC 7), to the minute, across DST and all zones.

Everything is computed on UTC instants (int Unix seconds) and converted to local wall time only to
ask "is this instant quiet there?".  Searches jump from one boundary to the next (the end of a
quiet range, the next local midnight, a UTC-offset transition) instead of walking minute by minute,
and results are cached: the planner asks the same question for thousands of recipients of a run.

Rules chosen where the SPEC is silent:
- a range whose start equals its end (`09:00-09:00`) is empty: nothing is quiet;
- a channel without a range (e.g. webhook) is never quiet;
- days off (`weekends`, `holidays`) apply to the phone channel only, on the local calendar date;
  weekends are Saturday and Sunday; holidays are those of the country of the zone (zone.tab),
  else the settings' country; a country the holidays library does not know has no holidays.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo

from orchestrator.settings import QuietHoursSettings

MINUTE = 60
_DAY = timedelta(days=1)


class _Spec(NamedTuple):
    """A channel's quiet rules, hashable so that results can be cached on it."""

    start: int  # seconds of the local day, inclusive
    end: int  # seconds of the local day, exclusive; start > end wraps over midnight
    weekends: bool
    holidays: bool


_NEVER = _Spec(0, 0, False, False)
_compiled: dict[int, tuple[QuietHoursSettings, dict[str, _Spec]]] = {}


def _seconds(value: time) -> int:
    return value.hour * 3600 + value.minute * 60 + value.second


def channel_spec(channel: str, quiet: QuietHoursSettings) -> _Spec:
    """The hashable rules of one channel; compiled once per settings object (keyed by identity)."""
    entry = _compiled.get(id(quiet))
    if entry is None or entry[0] is not quiet:
        specs: dict[str, _Spec] = {}
        for name, rng in quiet.ranges.items():
            specs[name] = _Spec(_seconds(rng.start), _seconds(rng.end), False, False)
        phone = specs.get("phone", _NEVER)
        specs["phone"] = phone._replace(
            weekends="weekends" in quiet.phone_days_off, holidays="holidays" in quiet.phone_days_off
        )
        if len(_compiled) > 64:
            _compiled.clear()
        entry = _compiled[id(quiet)] = (quiet, specs)
    return entry[1].get(channel, _NEVER)


def ceil_minute(t: int) -> int:
    return -(-t // MINUTE) * MINUTE


# --- zones and countries ----------------------------------------------------------------------


@lru_cache(maxsize=None)
def zone_info(zone: str) -> ZoneInfo:
    """ZoneInfo objects are cached by the library too; this skips its key normalisation."""
    return ZoneInfo(zone)


@lru_cache(maxsize=1)
def _zone_tab() -> dict[str, str]:
    text = importlib.resources.files("tzdata.zoneinfo").joinpath("zone.tab").read_text("utf-8")
    table: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            fields = line.split("\t")
            if len(fields) >= 3:
                table[fields[2]] = fields[0]
    return table


def _zone_digest(zone: str) -> str | None:
    parts = zone.split("/")
    package = ".".join(["tzdata", "zoneinfo", *parts[:-1]])
    try:
        data = importlib.resources.files(package).joinpath(parts[-1]).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, OSError, ValueError):
        return None
    return hashlib.sha1(data).hexdigest()


@lru_cache(maxsize=1)
def _countries_by_digest() -> dict[str, str | None]:
    """Zone files of zone.tab by content: a backward link (Europe/Kiev) is a copy of its target."""
    table: dict[str, str | None] = {}
    for zone, country in _zone_tab().items():
        digest = _zone_digest(zone)
        if digest is not None:
            table[digest] = country if table.get(digest, country) == country else None
    return table


@lru_cache(maxsize=None)
def zone_country(zone: str) -> str | None:
    """The country of an IANA zone (Asia/Almaty → KZ); None for UTC, Etc/* and unknown names."""
    country = _zone_tab().get(zone)
    if country is None and not zone.startswith("Etc/"):
        digest = _zone_digest(zone)
        country = _countries_by_digest().get(digest) if digest else None
    return country


@lru_cache(maxsize=None)
def _holidays(country: str, year: int) -> frozenset[date]:
    import holidays  # imported lazily: loading the library costs tenths of a second

    try:
        return frozenset(holidays.country_holidays(country, years=year).keys())
    except NotImplementedError:
        return frozenset()


# --- one zone ---------------------------------------------------------------------------------


def _offset(tz: ZoneInfo, t: int) -> timedelta | None:
    return datetime.fromtimestamp(t, tz).utcoffset()


def _first_transition(tz: ZoneInfo, a: int, b: int) -> int | None:
    """The first instant in (a, b] whose UTC offset differs from a's (one transition assumed)."""
    before = _offset(tz, a)
    if _offset(tz, b) == before:
        return None
    lo, hi = a, b
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(tz, mid) == before:
            lo = mid
        else:
            hi = mid
    return hi


def wall_instant(tz: ZoneInfo, wall: datetime, after: int) -> int | None:
    """The first instant > `after` at which the local clock shows `wall` or, when `wall` falls in a
    DST gap, the first instant after the gap; in an overlap, the earlier occurrence that is > after.
    None when both occurrences are <= after."""
    early = int(wall.replace(tzinfo=tz, fold=0).timestamp())
    late = int(wall.replace(tzinfo=tz, fold=1).timestamp())
    if early > late:  # a gap: fold=0 lands after the transition, fold=1 before it
        transition = _first_transition(tz, late, early)
        candidates = [transition if transition is not None else early]
    else:
        candidates = [early, late]
    for candidate in candidates:
        if candidate > after:
            return candidate
    return None


def _quiet_until(spec: _Spec, local: datetime, country: str) -> datetime | None:
    """None if `local` is allowed; else the naive wall time at which this reason for quiet ends."""
    start, end = spec.start, spec.end
    if start != end:
        sod = local.hour * 3600 + local.minute * 60 + local.second
        day = datetime(local.year, local.month, local.day)
        if start < end and start <= sod < end:
            return day + timedelta(seconds=end)
        if start > end:
            if sod >= start:
                return day + _DAY + timedelta(seconds=end)
            if sod < end:
                return day + timedelta(seconds=end)
    if spec.weekends or spec.holidays:
        today = local.date()
        if (spec.weekends and today.weekday() >= 5) or (
            spec.holidays and today in _holidays(country, today.year)
        ):
            return datetime(local.year, local.month, local.day) + _DAY
    return None


def _country_of(zone: str, default_country: str) -> str:
    return zone_country(zone) or default_country


def is_quiet(channel: str, t: int, zone: str, quiet: QuietHoursSettings, country: str) -> bool:
    """Whether instant `t` is inside the channel's quiet hours (or phone day off) in `zone`."""
    spec = channel_spec(channel, quiet)
    if spec == _NEVER:
        return False
    return _quiet_until(spec, datetime.fromtimestamp(t, zone_info(zone)), country) is not None


def _next_in_zone(spec: _Spec, t: int, zone: str, country: str, until: int) -> int | None:
    """First minute-aligned instant >= t (t is aligned) allowed in one zone, or None before until."""
    tz = zone_info(zone)
    while t < until:
        local = datetime.fromtimestamp(t, tz)
        wall = _quiet_until(spec, local, country)
        if wall is None:
            return t
        end = wall_instant(tz, wall, t) or t + MINUTE
        transition = _first_transition(tz, t, end)
        if transition is not None and transition < end:
            end = transition  # the clock jumps: re-evaluate right after the jump
        t = max(ceil_minute(end), t + MINUTE)
    return None


@lru_cache(maxsize=65536)
def _next_allowed(
    channel: str, t: int, zones: tuple[str, ...], spec: _Spec, default_country: str, until: int
) -> int | None:
    t = ceil_minute(t)
    if spec == _NEVER:
        return t if t < until else None
    countries = [_country_of(zone, default_country) for zone in zones]
    while t < until:
        latest = t
        for zone, country in zip(zones, countries):
            found = _next_in_zone(spec, t, zone, country, until)
            if found is None:
                return None
            latest = max(latest, found)
        if latest == t:
            return t
        t = latest
    return None


def next_allowed(
    channel: str,
    t: int,
    zones: tuple[str, ...],
    quiet: QuietHoursSettings,
    default_country: str,
    until: int,
) -> int | None:
    """The first whole minute >= t allowed in every zone of `zones`, or None if none is < until.

    Each zone's holidays are those of its own country (zone.tab), else `default_country`.  With no
    zones at all the answer is simply the first minute >= t: choosing a zone is the caller's job.
    """
    return _next_allowed(channel, t, tuple(zones), channel_spec(channel, quiet), default_country, until)


def cache_clear() -> None:
    """For tests and long-lived processes whose holiday tables or settings changed."""
    _next_allowed.cache_clear()
    _compiled.clear()
