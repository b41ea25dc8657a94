"""Channel choice, suppression reasons, local_time, expiry, deferral and guessed zones."""

from __future__ import annotations

import dataclasses
from datetime import datetime, time
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from orchestrator.policy.caps import Sent
from orchestrator.policy.consent import Recipient, blocked_reason
from orchestrator.policy.decide import DecisionCache, PolicyContext, Rules, decide
from orchestrator.settings import DEFAULT_CAPS, DEFAULT_QUIET, CapSpec, QuietHoursSettings, QuietRange

HOUR, DAY = 3600, 86400
CTX = PolicyContext(
    caps={key: CapSpec.parse(text) for key, text in DEFAULT_CAPS.items()},
    quiet=QuietHoursSettings(ranges={c: QuietRange.parse(t) for c, t in DEFAULT_QUIET.items()}),
    default_zone="Europe/Moscow",
    default_country="RU",
)
PLUS7 = (
    "Asia/Almaty", "Asia/Anadyr", "Asia/Aqtobe", "Asia/Irkutsk", "Asia/Kamchatka", "Asia/Krasnoyarsk",
    "Asia/Magadan", "Asia/Novosibirsk", "Asia/Omsk", "Asia/Sakhalin", "Asia/Vladivostok", "Asia/Yakutsk",
    "Asia/Yekaterinburg", "Europe/Bucharest", "Europe/Moscow", "Europe/Samara",
)
ANNA = Recipient(
    customer_id="c1",
    email="anna@example.com",
    phone="+79123456789",
    phone_invalid=False,
    manager="ivanov",
    consent=frozenset({"sms", "email", "phone"}),
    unsubscribed=frozenset(),
    zones=("Europe/Moscow",),
    zone_source="column",
    phone_cap_days=None,
)
WEDNESDAY_10 = "2026-11-25T10:00+03:00"


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


def rules(channels: tuple[str, ...] = ("sms",), **changes: object) -> Rules:
    base = Rules("autumn", "promo", channels, "first", None, DAY, "suppress")
    return dataclasses.replace(base, **changes)


def recipient(**changes: object) -> Recipient:
    return dataclasses.replace(ANNA, **changes)


def one(r: Recipient, rl: Rules, fire: str = WEDNESDAY_10, history: list[Sent] | None = None):
    decisions = decide(r, rl, at(fire), history or [], CTX)
    assert len(decisions) == 1
    return decisions[0]


# --- consent and contact ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "channel", "reason"),
    [
        ({}, "sms", None),
        ({"consent": frozenset({"email"})}, "sms", "no_consent"),
        ({"unsubscribed": frozenset({"sms"})}, "sms", "unsubscribed"),
        ({"consent": frozenset(), "unsubscribed": frozenset({"sms"})}, "sms", "unsubscribed"),
        ({"phone": None}, "sms", "no_contact"),
        ({"phone_invalid": True}, "sms", "invalid_contact"),
        ({"phone": "89123456789"}, "sms", "invalid_contact"),
        ({"email": None}, "email", "no_contact"),
        ({"manager": None}, "phone", "no_contact"),
        ({"phone_invalid": True}, "phone", "invalid_contact"),
        ({"consent": frozenset()}, "webhook", None),
        ({"unsubscribed": frozenset({"webhook"})}, "webhook", "unsubscribed"),
    ],
)
def test_blocked_reason(changes: dict, channel: str, reason: str | None) -> None:
    assert blocked_reason(channel, "promo", recipient(**changes)) == reason


def test_transactional_needs_a_valid_address_but_no_consent() -> None:
    stranger = recipient(consent=frozenset(), unsubscribed=frozenset({"sms", "email"}))
    assert blocked_reason("sms", "transactional", stranger) is None
    assert blocked_reason("email", "transactional", stranger) is None
    assert blocked_reason("sms", "transactional", recipient(phone_invalid=True)) == "invalid_contact"
    assert blocked_reason("email", "transactional", recipient(email=None)) == "no_contact"


def test_unknown_channel_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        blocked_reason("pigeon", "promo", ANNA)


# --- first and all ------------------------------------------------------------------------------


def test_first_mode_skips_a_channel_without_consent() -> None:
    d = one(recipient(consent=frozenset({"email"})), rules(("sms", "email")))
    assert (d.channel, d.status, d.send_at) == ("email", "planned", at(WEDNESDAY_10))
    assert d.expires_at == at(WEDNESDAY_10) + DAY
    assert (d.zone, d.zone_source, d.detail) == ("Europe/Moscow", "column", "skipped sms: no_consent")


def test_first_mode_without_any_channel_is_one_suppression_listing_every_reason() -> None:
    history = [Sent("email", "content", at("2026-11-24T10:00+03:00"))]
    d = one(recipient(consent=frozenset({"email"})), rules(("sms", "email")), history=history)
    assert (d.channel, d.status, d.reason, d.send_at) == ("sms", "suppressed", "no_consent", None)
    assert d.detail == "sms: no_consent; email: capped until 2026-12-01 10:00"


def test_first_mode_skips_a_capped_channel() -> None:
    history = [Sent("sms", "promo", at("2026-11-20T10:00+03:00"))]
    d = one(ANNA, rules(("sms", "email")), history=history)
    assert (d.channel, d.status, d.detail) == ("email", "planned", "skipped sms: capped")


def test_first_mode_skips_a_channel_that_would_expire() -> None:
    saturday = "2026-11-28T12:00+03:00"
    d = one(ANNA, rules(("phone", "sms")), fire=saturday)
    assert (d.channel, d.status, d.send_at) == ("sms", "planned", at(saturday))


def test_all_mode_decides_every_channel() -> None:
    r = recipient(consent=frozenset({"sms", "phone"}), manager=None)
    decisions = decide(r, rules(("sms", "email", "phone"), channel_mode="all"), at(WEDNESDAY_10), [], CTX)
    assert [(d.channel, d.status, d.reason) for d in decisions] == [
        ("sms", "planned", None),
        ("email", "suppressed", "no_consent"),
        ("phone", "suppressed", "no_contact"),
    ]


def test_all_mode_counts_its_own_planned_messages() -> None:
    twice = rules(("sms", "sms"), channel_mode="all")
    decisions = decide(ANNA, twice, at(WEDNESDAY_10), [], CTX)
    assert [(d.status, d.reason) for d in decisions] == [("planned", None), ("suppressed", "capped")]


def test_unsubscribed_outranks_no_consent_in_the_summary() -> None:
    r = recipient(unsubscribed=frozenset({"sms"}), consent=frozenset())
    d = one(r, rules(("sms", "email")))
    assert (d.reason, d.detail) == ("unsubscribed", "sms: unsubscribed; email: no_consent")


# --- time ---------------------------------------------------------------------------------------


def test_quiet_hours_defer_to_the_first_allowed_minute_of_the_recipient() -> None:
    vladivostok = recipient(zones=("Asia/Vladivostok",))  # 10:00 Moscow is 17:00 there
    d = one(vladivostok, rules(("sms",)), fire="2026-11-25T14:30:20+03:00")  # 21:30:20 there
    assert d.send_at == at("2026-11-26T09:00+10:00")
    assert d.zone == "Asia/Vladivostok"


def test_send_time_is_rounded_up_to_the_minute() -> None:
    d = one(ANNA, rules(("email",)), fire="2026-11-25T10:00:01+03:00")
    assert d.send_at == at("2026-11-25T10:01+03:00")


def test_local_time_already_passed_goes_next_day() -> None:
    d = one(ANNA, rules(("sms",), local_time=time(9)))
    assert d.send_at == at("2026-11-26T09:00+03:00")


def test_local_time_still_ahead_goes_today() -> None:
    kaliningrad = recipient(zones=("Europe/Kaliningrad",))  # 10:00 Moscow is 09:00 there
    d = one(kaliningrad, rules(("sms",), local_time=time(11)))
    assert d.send_at == at("2026-11-25T11:00+02:00")


def test_local_time_beyond_deliver_within_expires() -> None:
    d = one(ANNA, rules(("sms",), local_time=time(9), deliver_within=12 * HOUR))
    assert (d.status, d.reason, d.send_at) == ("suppressed", "expired", None)
    assert "no minute outside quiet hours" in d.detail or "expired" in d.detail


def test_quiet_hours_beyond_deliver_within_expire_for_a_known_zone() -> None:
    d = one(ANNA, rules(("sms",), deliver_within=2 * HOUR), fire="2026-11-25T21:30+03:00")
    assert (d.status, d.reason, d.zone, d.zone_source) == ("suppressed", "expired", "Europe/Moscow", "column")


def test_local_time_with_several_candidate_zones_waits_for_the_latest() -> None:
    r = recipient(zones=("Europe/Moscow", "Asia/Yekaterinburg"), zone_source="city")
    d = one(r, rules(("email",), local_time=time(11)), fire="2026-11-25T08:00+03:00")
    assert d.send_at == at("2026-11-25T11:00+03:00")  # 13:00 in Yekaterinburg, nobody before 11:00
    assert (d.zone, d.zone_source) == ("Europe/Moscow", "city")


# --- guessed zones ------------------------------------------------------------------------------


def test_unknown_zone_uses_the_default_and_says_so() -> None:
    d = one(recipient(zones=(), zone_source="default"), rules(("sms",)), fire="2026-11-25T07:00+03:00")
    assert (d.zone, d.zone_source) == ("Europe/Moscow", "default")
    assert d.detail == "local time unknown, guessed Europe/Moscow"
    assert d.send_at == at("2026-11-25T09:00+03:00")


def test_plus7_mobile_has_no_common_calling_minute_and_falls_back_to_moscow() -> None:
    r = recipient(zones=PLUS7, zone_source="phone")
    d = one(r, rules(("phone",), deliver_within=2 * DAY))
    assert (d.status, d.send_at, d.zone, d.zone_source) == ("planned", at(WEDNESDAY_10), "Europe/Moscow", "default")
    assert d.detail == "local time uncertain (16 candidate zones, no common allowed minute), guessed Europe/Moscow"


def test_plus7_mobile_gets_an_sms_in_a_minute_allowed_everywhere() -> None:
    r = recipient(zones=PLUS7, zone_source="phone")
    d = one(r, rules(("sms",)), fire="2026-11-25T06:00+03:00")
    assert d.zone_source == "phone"
    assert d.send_at is not None
    assert d.detail == "16 candidate zones (phone): a minute allowed in all of them"
    for zone in PLUS7:
        hour = datetime.fromtimestamp(d.send_at, ZoneInfo(zone)).hour
        assert 9 <= hour < 21, zone


# --- caps and deferral --------------------------------------------------------------------------


def test_capped_detail_says_until_when() -> None:
    history = [Sent("sms", "content", at("2026-11-10T10:00+03:00"))]
    d = one(ANNA, rules(("sms",)), history=history)
    assert (d.status, d.reason) == ("suppressed", "capped")
    assert d.detail == "sms: capped until 2026-12-10 10:00"


def test_when_capped_defer_waits_for_the_cap_then_quiet_hours() -> None:
    history = [Sent("sms", "content", at("2026-11-10T06:30+03:00"))]
    d = one(ANNA, rules(("sms",), when_capped="defer", deliver_within=30 * DAY), history=history)
    assert (d.status, d.send_at) == ("planned", at("2026-12-10T09:00+03:00"))
    assert "capped until 2026-12-10 06:30" in d.detail


def test_when_capped_defer_keeps_local_time() -> None:
    history = [Sent("sms", "content", at("2026-11-10T10:00+03:00"))]
    d = one(ANNA, rules(("sms",), when_capped="defer", local_time=time(11), deliver_within=30 * DAY), history=history)
    assert d.send_at == at("2026-12-10T11:00+03:00")


def test_when_capped_defer_past_expiry_is_capped() -> None:
    history = [Sent("sms", "content", at("2026-11-10T10:00+03:00"))]
    d = one(ANNA, rules(("sms",), when_capped="defer", deliver_within=5 * DAY), history=history)
    assert (d.status, d.reason) == ("suppressed", "capped")
    assert d.detail == "sms: capped until 2026-12-10 10:00, after expiry (2026-11-30 10:00)"


def test_when_capped_defer_prefers_the_next_channel_that_can_go_now() -> None:
    history = [Sent("sms", "content", at("2026-11-10T10:00+03:00"))]
    now = one(ANNA, rules(("sms", "email"), when_capped="defer", deliver_within=30 * DAY), history=history)
    assert (now.channel, now.send_at) == ("email", at(WEDNESDAY_10))
    no_email = recipient(email=None)
    later = one(no_email, rules(("sms", "email"), when_capped="defer", deliver_within=30 * DAY), history=history)
    assert (later.channel, later.send_at) == ("sms", at("2026-12-10T10:00+03:00"))
    assert later.detail == "capped until 2026-12-10 10:00, deferred"


def test_transactional_ignores_caps_and_consent_but_not_sms_quiet_hours() -> None:
    history = [Sent("sms", "promo", at("2026-11-25T09:00+03:00"))]
    receipt = rules(("sms", "email"), category="transactional", channel_mode="all")
    night = "2026-11-25T23:00+03:00"
    sms, email = decide(recipient(consent=frozenset()), receipt, at(night), history, CTX)
    assert (sms.status, sms.send_at) == ("planned", at("2026-11-26T09:00+03:00"))
    assert (email.status, email.send_at) == ("planned", at(night))


def test_phone_cap_days_agreed_with_the_client() -> None:
    history = [Sent("phone", "promo", at("2026-11-16T12:00+03:00"))]
    assert one(ANNA, rules(("phone",)), history=history).reason == "capped"
    weekly = recipient(phone_cap_days=7)
    assert one(weekly, rules(("phone",)), history=history).status == "planned"


# --- the planner's decision cache -------------------------------------------------------------

CHANNEL_SETS = st.frozensets(st.sampled_from(["sms", "email", "phone"]))
RECIPIENTS = st.builds(
    Recipient,
    customer_id=st.text(min_size=1, max_size=8),
    email=st.sampled_from([None, "", "a@example.com", "b@example.org", "broken", "@"]),
    phone=st.sampled_from([None, "+79123456789", "+77012345678", "89123456789", "+7912"]),
    phone_invalid=st.booleans(),
    manager=st.sampled_from([None, "ivanova", "petrov"]),
    consent=CHANNEL_SETS,
    unsubscribed=CHANNEL_SETS,
    zones=st.sampled_from([(), ("Europe/Moscow",), ("Asia/Vladivostok",), PLUS7]),
    zone_source=st.sampled_from(["column", "city", "phone", "default"]),
    phone_cap_days=st.sampled_from([None, 0, 7, 60]),
)
RULES = st.builds(
    Rules, campaign=st.just("c"), category=st.sampled_from(["promo", "service", "transactional"]),
    channels=st.sampled_from([("sms",), ("phone", "email"), ("email", "sms", "phone")]),
    channel_mode=st.sampled_from(["first", "all"]), local_time=st.sampled_from([None, time(11, 0)]),
    deliver_within=st.sampled_from([HOUR, DAY, 3 * DAY]), when_capped=st.sampled_from(["suppress", "defer"]),
)


@hsettings(deadline=None, max_examples=300)
@given(rl=RULES, people=st.lists(RECIPIENTS, min_size=1, max_size=12), fire=st.integers(at("2026-01-01T00:00+00:00"), at("2028-12-31T00:00+00:00")))
def test_the_decision_cache_decides_like_decide(rl: Rules, people: list[Recipient], fire: int) -> None:
    """Recipients sharing consent, contact validity and zones share decisions; no one else does."""
    cache = DecisionCache(rl, fire, CTX)
    for person in people:
        assert cache.decide(person, ()) == decide(person, rl, fire, (), CTX)
    history = [Sent("sms", "promo", fire - DAY)]
    assert cache.decide(people[0], history) == decide(people[0], rl, fire, history, CTX)
