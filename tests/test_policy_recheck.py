"""The policy at sending time: never a send in quiet hours (nor one that would land in them while
in flight), never over a cap counted on what already went out, never after an unsubscribe."""

from __future__ import annotations

import zoneinfo
from datetime import datetime, time

from hypothesis import given, settings as hsettings, strategies as st

from orchestrator.policy.caps import Sent, caps_for, max_in_window
from orchestrator.policy.consent import Recipient
from orchestrator.policy.decide import PolicyContext
from orchestrator.policy.quiet_hours import is_quiet, zone_country
from orchestrator.policy.recheck import DEFER, FLIGHT, SEND, SUPPRESS, Due, recheck
from orchestrator.settings import CapSpec, QuietHoursSettings, QuietRange

ZONES = sorted(zoneinfo.available_timezones() - {"Factory", "localtime"})
RU_ZONES = [z for z in ZONES if zone_country(z) == "RU"]
QUIET = QuietHoursSettings(
    ranges={"sms": QuietRange.parse("21:00-09:00"), "email": QuietRange.parse("22:00-08:00"),
            "phone": QuietRange.parse("19:00-10:00")},
    phone_days_off=("weekends", "holidays"),
)
CTX = PolicyContext(caps={"sms": CapSpec.parse("1/30d"), "email": CapSpec.parse("2/7d")}, quiet=QUIET,
                    default_zone="Europe/Moscow", default_country="RU")
T0 = int(datetime(2024, 1, 1).timestamp())
T1 = int(datetime(2030, 1, 1).timestamp())


def person(zones: tuple[str, ...], **changes: object) -> Recipient:
    base = dict(customer_id="C1", email="a@example.com", phone="+79161234567", phone_invalid=False,
                manager="ivanova", consent=frozenset({"sms", "email", "phone"}), unsubscribed=frozenset(),
                zones=zones, zone_source="phone" if len(zones) > 1 else "column", phone_cap_days=None)
    base.update(changes)
    return Recipient(**base)  # type: ignore[arg-type]


@hsettings(max_examples=400, deadline=None)
@given(
    zones=st.lists(st.sampled_from(ZONES), min_size=1, max_size=3, unique=True).map(tuple),
    channel=st.sampled_from(["sms", "email", "phone"]),
    now=st.integers(T0, T1),
)
def test_a_send_is_never_in_quiet_hours_nor_lands_in_them(zones: tuple[str, ...], channel: str, now: int) -> None:
    due = Due(channel, "promo", now + 3 * 86400, zones[0], "phone")
    verdict = recheck(due, person(zones), (), now, CTX)
    for zone in zones:
        country = zone_country(zone) or "RU"
        if verdict.action == SEND:
            assert not is_quiet(channel, now, zone, QUIET, country)
            assert not is_quiet(channel, now + FLIGHT, zone, QUIET, country)
        elif verdict.action == DEFER:
            assert verdict.at is not None and verdict.at > now
            assert not is_quiet(channel, verdict.at, zone, QUIET, country)
    if verdict.action == SUPPRESS:
        assert verdict.reason == "expired"


@hsettings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(RU_ZONES),
    gaps=st.lists(st.integers(0, 20 * 86400), min_size=1, max_size=12),
    start=st.integers(T0, T1),
)
def test_sends_in_order_never_exceed_a_cap(zone: str, gaps: list[int], start: int) -> None:
    """Whatever the moments workers get to a customer's messages, the gone ones respect 2/7d."""
    gone: list[Sent] = []
    now = start
    for gap in gaps:
        now += gap
        due = Due("email", "content", now + 10 * 86400, zone, "column")
        verdict = recheck(due, person((zone,)), gone, now, CTX)
        if verdict.action == SEND:
            gone.append(Sent("email", "content", now))
        elif verdict.action == DEFER:
            assert verdict.at is not None and verdict.at > now
    caps = caps_for("email", "content", CTX.caps, None)
    assert max_in_window([s.at for s in gone], caps[0].period) <= caps[0].limit


def test_unsubscribed_or_consent_withdrawn_is_suppressed() -> None:
    noon = int(datetime(2026, 11, 24, 12, tzinfo=zoneinfo.ZoneInfo("Europe/Moscow")).timestamp())
    due = Due("sms", "promo", noon + 86400, "Europe/Moscow", "column")
    assert recheck(due, person(("Europe/Moscow",), unsubscribed=frozenset({"sms"})), (), noon, CTX).reason == "unsubscribed"
    assert recheck(due, person(("Europe/Moscow",), consent=frozenset()), (), noon, CTX).reason == "no_consent"
    assert recheck(due, person(("Europe/Moscow",), phone_invalid=True), (), noon, CTX).reason == "invalid_contact"
    assert recheck(due, None, (), noon, CTX).action == SUPPRESS
    assert recheck(due, person(("Europe/Moscow",)), (), noon, CTX).action == SEND


def test_transactional_email_ignores_quiet_hours_but_not_unsubscribe_free_contact() -> None:
    night = int(datetime(2026, 11, 24, 3, tzinfo=zoneinfo.ZoneInfo("Europe/Moscow")).timestamp())
    email = Due("email", "transactional", night + 86400, "Europe/Moscow", "column")
    sms = Due("sms", "transactional", night + 86400, "Europe/Moscow", "column")
    r = person(("Europe/Moscow",), unsubscribed=frozenset({"email", "sms"}))
    assert recheck(email, r, (), night, CTX).action == SEND
    deferred = recheck(sms, r, (), night, CTX)
    assert deferred.action == DEFER
    assert datetime.fromtimestamp(deferred.at, zoneinfo.ZoneInfo("Europe/Moscow")).time() == time(9, 0)


def test_past_expiry_is_expired() -> None:
    noon = int(datetime(2026, 11, 24, 12, tzinfo=zoneinfo.ZoneInfo("Europe/Moscow")).timestamp())
    due = Due("sms", "promo", noon, "Europe/Moscow", "column")
    assert recheck(due, person(("Europe/Moscow",)), (), noon, CTX).reason == "expired"


def test_a_quiet_night_longer_than_the_window_is_expired() -> None:
    evening = int(datetime(2026, 11, 24, 21, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Moscow")).timestamp())
    due = Due("sms", "promo", evening + 3600, "Europe/Moscow", "column")
    verdict = recheck(due, person(("Europe/Moscow",)), (), evening, CTX)
    assert (verdict.action, verdict.reason) == (SUPPRESS, "expired")
