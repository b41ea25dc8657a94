"""Quiet hours to the minute: half-open ranges, midnight, DST, leap day, days off, all zones."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, available_timezones

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.policy.decide import local_occurrence
from orchestrator.policy.quiet_hours import is_quiet, next_allowed, zone_country
from orchestrator.settings import DEFAULT_QUIET, QuietHoursSettings, QuietRange

QUIET = QuietHoursSettings(
    ranges={channel: QuietRange.parse(text) for channel, text in DEFAULT_QUIET.items()},
    phone_days_off=("weekends", "holidays"),
)
ZONES = sorted(available_timezones() - {"Factory", "localtime"})
RUSSIA = (
    "Europe/Kaliningrad", "Europe/Moscow", "Europe/Samara", "Asia/Yekaterinburg", "Asia/Omsk",
    "Asia/Novosibirsk", "Asia/Irkutsk", "Asia/Yakutsk", "Asia/Vladivostok", "Asia/Magadan",
    "Asia/Kamchatka",
)
HOUR, DAY = 3600, 86400


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


def local(t: int, zone: str) -> datetime:
    return datetime.fromtimestamp(t, ZoneInfo(zone))


# --- an independent oracle: plain zoneinfo + holidays, minute by minute ------------------------

_HOLIDAYS: dict[tuple[str, int], set[date]] = {}


def _holiday(country: str, day: date) -> bool:
    key = (country, day.year)
    if key not in _HOLIDAYS:
        try:
            _HOLIDAYS[key] = set(holidays.country_holidays(country, years=day.year))
        except NotImplementedError:
            _HOLIDAYS[key] = set()
    return day in _HOLIDAYS[key]


def oracle_quiet(channel: str, t: int, zone: str, quiet: QuietHoursSettings, country: str) -> bool:
    clock = local(t, zone)
    rng = quiet.ranges.get(channel)
    if rng is not None and rng.start != rng.end:
        now, start, end = clock.time().replace(tzinfo=None), rng.start, rng.end
        inside = start <= now < end if start < end else (now >= start or now < end)
        if inside:
            return True
    if channel == "phone":
        if "weekends" in quiet.phone_days_off and clock.weekday() >= 5:
            return True
        if "holidays" in quiet.phone_days_off and _holiday(country, clock.date()):
            return True
    return False


def oracle_next(
    channel: str, t: int, zones: tuple[str, ...], until: int, quiet: QuietHoursSettings = QUIET
) -> int | None:
    m = -(-t // 60) * 60
    while m < until:
        if not any(oracle_quiet(channel, m, z, quiet, zone_country(z) or "RU") for z in zones):
            return m
        m += 60
    return None


# --- strategies ---------------------------------------------------------------------------------

LOW, HIGH = at("1995-01-01T00:00+00:00"), at("2040-01-01T00:00+00:00")


def _transitions(zone: str, start: int) -> list[int]:
    """UTC-offset changes of `zone` in the year after `start` (found by day steps and bisection)."""
    tz = ZoneInfo(zone)
    found = []
    previous = datetime.fromtimestamp(start, tz).utcoffset()
    for day in range(1, 367):
        t = start + day * DAY
        offset = datetime.fromtimestamp(t, tz).utcoffset()
        if offset != previous:
            lo, hi = t - DAY, t
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if datetime.fromtimestamp(mid, tz).utcoffset() == previous:
                    lo = mid
                else:
                    hi = mid
            found.append(hi)
            previous = offset
    return found


@st.composite
def instant_in(draw: st.DrawFn, zone: str) -> int:
    """Arbitrary instants, biased towards the dangerous ones of `zone`."""
    kind = draw(st.sampled_from(["any", "transition", "midnight", "leap", "new_year", "boundary"]))
    jitter = draw(st.sampled_from([0, 1, -1, 30, -30, 59, -59, 60, -60, 3599, -3600, 90 * 60]))
    tz = ZoneInfo(zone)
    if kind == "transition":
        changes = _transitions(zone, draw(st.integers(LOW, HIGH)))
        if changes:
            return draw(st.sampled_from(changes)) + jitter
    if kind == "midnight":
        day = date(2026, 1, 1) + timedelta(days=draw(st.integers(0, 800)))
        return int(datetime.combine(day, time(0), tz).timestamp()) + jitter
    if kind == "leap":
        clock = draw(st.sampled_from([time(0), time(8, 59), time(9), time(20, 59), time(21), time(23, 59)]))
        return int(datetime.combine(date(2028, 2, 29), clock, tz).timestamp()) + jitter
    if kind == "new_year":
        clock = draw(st.sampled_from([time(18), time(21), time(23, 59), time(12)]))
        return int(datetime.combine(date(2027, 12, 31), clock, tz).timestamp()) + jitter
    if kind == "boundary":
        clock = draw(st.sampled_from([time(8), time(9), time(10), time(19), time(21), time(22)]))
        day = date(2026, 1, 1) + timedelta(days=draw(st.integers(0, 800)))
        return int(datetime.combine(day, clock, tz).timestamp()) + jitter
    return draw(st.integers(LOW, HIGH))


clock_times = st.one_of(
    st.sampled_from([time(0), time(1), time(1, 30), time(2), time(2, 30), time(3), time(9), time(21)]),
    st.builds(time, st.integers(0, 23), st.integers(0, 59)),
)


@st.composite
def quiet_settings(draw: st.DrawFn) -> QuietHoursSettings:
    """The defaults, or ranges anywhere in the day (so that DST jumps cross their edges)."""
    if draw(st.booleans()):
        return QUIET
    ranges = {
        channel: QuietRange(start=draw(clock_times), end=draw(clock_times))
        for channel in ("sms", "email", "phone")
    }
    days_off = tuple(draw(st.sets(st.sampled_from(["weekends", "holidays"]))))
    return QuietHoursSettings(ranges=ranges, phone_days_off=days_off)


@st.composite
def question(draw: st.DrawFn) -> tuple[str, int, tuple[str, ...], int, QuietHoursSettings]:
    zones = tuple(draw(st.lists(st.sampled_from(ZONES), min_size=1, max_size=3, unique=True)))
    t = draw(instant_in(zones[0]))
    within = draw(st.sampled_from([HOUR, 6 * HOUR, DAY, 2 * DAY]))
    channel = draw(st.sampled_from(["sms", "email", "phone"]))
    return channel, t, zones, t + within, draw(quiet_settings())


# --- properties ---------------------------------------------------------------------------------


@settings(deadline=None, max_examples=250)
@given(question())
def test_next_allowed_is_the_first_allowed_minute_in_every_zone(
    q: tuple[str, int, tuple[str, ...], int, QuietHoursSettings]
) -> None:
    channel, t, zones, until, quiet = q
    found = next_allowed(channel, t, zones, quiet, "RU", until)
    assert found == oracle_next(channel, t, zones, until, quiet)
    if found is not None:
        assert t <= found < until and found % 60 == 0
        for zone in zones:
            assert not is_quiet(channel, found, zone, quiet, zone_country(zone) or "RU")
        previous = found - 60
        assert previous < t or any(
            is_quiet(channel, previous, z, quiet, zone_country(z) or "RU") for z in zones
        )


@settings(deadline=None, max_examples=150)
@given(st.sampled_from(ZONES).flatmap(lambda z: st.tuples(st.just(z), instant_in(z))),
       st.sampled_from([time(0), time(2, 30), time(3), time(9), time(11), time(23, 59)]))
def test_local_time_is_its_first_occurrence_or_the_minute_after_a_gap(
    zone_and_t: tuple[str, int], clock: time
) -> None:
    zone, t = zone_and_t
    found = local_occurrence(clock, zone, t)
    assert found >= t
    shown = local(found, zone)
    if shown.time() != clock:
        # Only possible right after a DST gap that swallowed `clock`.
        assert local(found - 1, zone).utcoffset() != shown.utcoffset()
    m = t + (-t) % 60
    while m < found:
        assert local(m, zone).time() != clock, "an earlier occurrence was skipped"
        m += 60


# --- examples a user would check ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("clock", "expected"),
    [
        ("20:59", "20:59"),
        ("21:00", "09:00+1"),
        ("23:59", "09:00+1"),
        ("00:00", "09:00"),
        ("08:59", "09:00"),
        ("08:59:30", "09:00"),
        ("09:00", "09:00"),
        ("09:00:01", "09:01"),
    ],
)
def test_sms_range_is_half_open(clock: str, expected: str) -> None:
    t = at(f"2026-11-25T{clock}+03:00")
    day = "2026-11-26" if expected.endswith("+1") else "2026-11-25"
    want = at(f"{day}T{expected.removesuffix('+1')}+03:00")
    assert next_allowed("sms", t, ("Europe/Moscow",), QUIET, "RU", t + 2 * DAY) == want


def test_email_at_midnight_of_new_year_eve_waits_for_eight() -> None:
    t = at("2027-12-31T23:30+05:00")
    assert next_allowed("email", t, ("Asia/Yekaterinburg",), QUIET, "RU", t + DAY) == at("2028-01-01T08:00+05:00")


def test_leap_day_is_an_ordinary_working_day_for_calls() -> None:
    t = at("2028-02-29T07:00+03:00")  # a Tuesday
    assert next_allowed("phone", t, ("Europe/Moscow",), QUIET, "RU", t + DAY) == at("2028-02-29T10:00+03:00")


def test_no_minute_before_until_gives_none() -> None:
    t = at("2026-11-25T21:00+03:00")
    assert next_allowed("sms", t, ("Europe/Moscow",), QUIET, "RU", at("2026-11-26T09:00+03:00")) is None
    assert next_allowed("sms", t, ("Europe/Moscow",), QUIET, "RU", at("2026-11-26T09:01+03:00")) is not None


def test_channel_without_quiet_hours_goes_at_the_next_minute() -> None:
    t = at("2026-11-25T03:00:10+03:00")
    assert next_allowed("webhook", t, ("Europe/Moscow",), QUIET, "RU", t + DAY) == t + 50


def test_calls_wait_for_the_weekend_to_end() -> None:
    t = at("2026-11-28T12:00+03:00")  # Saturday
    assert next_allowed("phone", t, ("Europe/Moscow",), QUIET, "RU", t + 3 * DAY) == at("2026-11-30T10:00+03:00")


def test_calls_skip_the_russian_new_year_holidays() -> None:
    t = at("2026-12-31T18:00+03:00")
    # 1-8 January 2027 are holidays, 9-10 January a weekend.
    assert next_allowed("phone", t, ("Europe/Moscow",), QUIET, "RU", t + 20 * DAY) == at("2027-01-11T10:00+03:00")


def test_victory_day_is_a_day_off_for_calls() -> None:
    t = at("2028-05-09T11:00+03:00")  # Tuesday
    assert is_quiet("phone", t, "Europe/Moscow", QUIET, "RU")
    assert next_allowed("phone", t, ("Europe/Moscow",), QUIET, "RU", t + 3 * DAY) == at("2028-05-10T10:00+03:00")


def test_kazakh_holidays_apply_in_almaty_and_not_in_moscow() -> None:
    t = at("2026-03-23T13:00+05:00")  # Monday: Nowruz in Kazakhstan, a working day in Russia
    assert zone_country("Asia/Almaty") == "KZ"
    assert next_allowed("phone", t, ("Asia/Almaty",), QUIET, "RU", t + 7 * DAY) == at("2026-03-26T10:00+05:00")
    assert next_allowed("phone", t, ("Europe/Moscow",), QUIET, "RU", t + 7 * DAY) == t


def test_days_off_can_be_switched_off() -> None:
    workdays = QuietHoursSettings(ranges=QUIET.ranges, phone_days_off=())
    saturday = at("2026-11-28T12:00+03:00")
    assert not is_quiet("phone", saturday, "Europe/Moscow", workdays, "RU")
    assert next_allowed("phone", saturday, ("Europe/Moscow",), workdays, "RU", saturday + DAY) == saturday


def test_eleven_russian_zones_share_sms_minutes_but_no_calling_minute() -> None:
    t = at("2026-11-25T10:00+03:00")
    sms = next_allowed("sms", t, RUSSIA, QUIET, "RU", t + DAY)
    assert sms is not None
    assert local(sms, "Europe/Kaliningrad").hour in (9, 10)
    assert local(sms, "Asia/Kamchatka").hour in (19, 20)
    assert next_allowed("phone", t, RUSSIA, QUIET, "RU", t + 7 * DAY) is None


def test_zone_country() -> None:
    assert zone_country("Europe/Moscow") == "RU"
    assert zone_country("Asia/Almaty") == "KZ"
    assert zone_country("Europe/Kiev") == "UA"  # a backward link, not in zone.tab
    assert zone_country("UTC") is None
    assert zone_country("Etc/GMT-3") is None


def test_dst_gap_ends_quiet_at_the_first_minute_after_it() -> None:
    gap_quiet = QuietHoursSettings(ranges={"sms": QuietRange.parse("01:00-02:30")}, phone_days_off=())
    t = at("2026-03-08T01:30-05:00")  # New York jumps from 02:00 EST to 03:00 EDT
    assert next_allowed("sms", t, ("America/New_York",), gap_quiet, "US", t + DAY) == at("2026-03-08T03:00-04:00")


def test_dst_overlap_is_quiet_again_on_the_second_pass() -> None:
    overlap_quiet = QuietHoursSettings(ranges={"sms": QuietRange.parse("00:00-01:30")}, phone_days_off=())
    zone = ("America/New_York",)
    first_pass = at("2026-11-01T00:30-04:00")
    assert next_allowed("sms", first_pass, zone, overlap_quiet, "US", first_pass + DAY) == at("2026-11-01T01:30-04:00")
    second_pass = at("2026-11-01T01:00-05:00")  # the clock shows 01:00 again, inside the range
    assert is_quiet("sms", second_pass, "America/New_York", overlap_quiet, "US")
    assert next_allowed("sms", second_pass, zone, overlap_quiet, "US", second_pass + DAY) == at("2026-11-01T01:30-05:00")


def test_dst_overlap_can_end_quiet_hours_by_turning_the_clock_back() -> None:
    evening = QuietHoursSettings(ranges={"sms": QuietRange.parse("01:30-03:00")}, phone_days_off=())
    t = at("2026-11-01T01:40-04:00")  # at 02:00 EDT the clock goes back to 01:00 EST: not quiet
    assert next_allowed("sms", t, ("America/New_York",), evening, "US", t + DAY) == at("2026-11-01T01:00-05:00")


def test_local_time_in_a_gap_and_in_an_overlap() -> None:
    before_gap = at("2026-03-08T00:00-05:00")
    assert local_occurrence(time(2, 30), "America/New_York", before_gap) == at("2026-03-08T03:00-04:00")
    before_overlap = at("2026-11-01T00:00-04:00")
    assert local_occurrence(time(1, 30), "America/New_York", before_overlap) == at("2026-11-01T01:30-04:00")


def test_results_do_not_depend_on_the_cache() -> None:
    t = at("2026-11-25T22:00+03:00")
    first = next_allowed("sms", t, ("Europe/Moscow", "Asia/Omsk"), QUIET, "RU", t + DAY)
    again = next_allowed("sms", t, ("Europe/Moscow", "Asia/Omsk"), QUIET, "RU", t + DAY)
    assert first == again == at("2026-11-26T09:00+03:00")
    assert datetime.fromtimestamp(first, timezone.utc).minute == 0
