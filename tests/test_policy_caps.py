"""Frequency caps: rolling half-open windows anywhere in time, past and future messages alike."""

from __future__ import annotations

from datetime import datetime, time

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.policy.caps import Cap, Sent, cap_allows, caps_for, max_in_window, next_cap_slot
from orchestrator.policy.consent import Recipient
from orchestrator.policy.decide import PolicyContext, Rules, decide
from orchestrator.settings import DEFAULT_CAPS, DEFAULT_QUIET, CapSpec, QuietHoursSettings, QuietRange

DAY = 86400
CAPS = {key: CapSpec.parse(text) for key, text in DEFAULT_CAPS.items()}
QUIET = QuietHoursSettings(ranges={c: QuietRange.parse(t) for c, t in DEFAULT_QUIET.items()})


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


def counted(cap: Cap, history: list[Sent]) -> list[int]:
    channel, _, category = cap.key.partition(".")
    return [
        s.at
        for s in history
        if s.channel == channel and (s.category == category if category else s.category != "transactional")
    ]


# --- the user's examples ------------------------------------------------------------------------


def test_one_sms_a_month_window_is_half_open() -> None:
    caps = caps_for("sms", "promo", CAPS, None)
    history = [Sent("sms", "promo", at("2026-03-01T10:00+03:00"))]
    assert cap_allows(caps, history, "sms", at("2026-03-31T10:00+03:00"))
    assert not cap_allows(caps, history, "sms", at("2026-03-31T09:59+03:00"))
    assert not cap_allows(caps, history, "sms", at("2026-03-31T09:59:59+03:00"))
    assert next_cap_slot(caps, history, "sms", at("2026-03-05T12:00+03:00"), at("2026-05-01T00:00+03:00")) == at(
        "2026-03-31T10:00+03:00"
    )


def test_a_message_planned_in_the_future_blocks_an_earlier_one() -> None:
    caps = caps_for("sms", "promo", CAPS, None)
    planned = [Sent("sms", "content", at("2026-03-20T10:00+03:00"))]
    assert not cap_allows(caps, planned, "sms", at("2026-03-01T10:00+03:00"))
    assert not cap_allows(caps, planned, "sms", at("2026-02-18T10:00:01+03:00"))
    assert cap_allows(caps, planned, "sms", at("2026-02-18T10:00+03:00"))  # exactly 30 days before


def test_transactional_messages_are_exempt_and_do_not_count() -> None:
    assert caps_for("sms", "transactional", CAPS, None) == ()
    caps = caps_for("sms", "promo", CAPS, None)
    receipts = [Sent("sms", "transactional", at("2026-03-01T10:00+03:00"))]
    assert cap_allows(caps, receipts, "sms", at("2026-03-01T11:00+03:00"))


def test_other_channels_do_not_count() -> None:
    caps = caps_for("sms", "promo", CAPS, None)
    assert cap_allows(caps, [Sent("email", "promo", at("2026-03-01T10:00+03:00"))], "sms", at("2026-03-01T11:00+03:00"))


def test_phone_cap_days_replaces_the_phone_cap() -> None:
    assert caps_for("phone", "promo", CAPS, None) == (Cap("phone", 1, 30 * DAY),)
    assert caps_for("phone", "promo", CAPS, 7) == (Cap("phone", 1, 7 * DAY),)
    history = [Sent("phone", "promo", at("2026-03-01T12:00+03:00"))]
    eight_days_later = at("2026-03-09T12:00+03:00")
    assert cap_allows(caps_for("phone", "promo", CAPS, 7), history, "phone", eight_days_later)
    assert not cap_allows(caps_for("phone", "promo", CAPS, None), history, "phone", eight_days_later)
    assert not cap_allows(caps_for("phone", "promo", CAPS, 60), history, "phone", at("2026-04-15T12:00+03:00"))


def test_category_cap_applies_on_top_of_the_channel_cap() -> None:
    promo = caps_for("email", "promo", CAPS, None)
    content = caps_for("email", "content", CAPS, None)
    assert promo == (Cap("email", 1, 7 * DAY), Cap("email.promo", 1, 14 * DAY))
    assert content == (Cap("email", 1, 7 * DAY),)
    ten_days_ago = [Sent("email", "promo", at("2026-03-01T10:00+03:00"))]
    now = at("2026-03-11T10:00+03:00")
    assert cap_allows(content, ten_days_ago, "email", now)
    assert not cap_allows(promo, ten_days_ago, "email", now)
    three_days_ago = [Sent("email", "content", at("2026-03-08T10:00+03:00"))]
    assert not cap_allows(promo, three_days_ago, "email", now)  # the channel cap still holds
    assert next_cap_slot(promo, ten_days_ago, "email", now, now + 30 * DAY) == at("2026-03-15T10:00+03:00")


def test_n_per_period() -> None:
    caps = (Cap("sms", 2, 10 * DAY),)
    history = [Sent("sms", "promo", 0), Sent("sms", "promo", 5 * DAY)]
    assert not cap_allows(caps, history, "sms", 9 * DAY)
    assert cap_allows(caps, history, "sms", 10 * DAY)  # the first left the window [1d, 11d)
    assert not cap_allows(caps, history, "sms", -4 * DAY)  # [-4d, 6d) would hold three
    assert cap_allows(caps, history, "sms", -5 * DAY)
    assert next_cap_slot(caps, history, "sms", DAY, 100 * DAY) == 10 * DAY
    assert next_cap_slot(caps, history, "sms", DAY, 10 * DAY) is None


def test_max_in_window() -> None:
    assert max_in_window([], DAY) == 0
    assert max_in_window([0, DAY], DAY) == 1
    assert max_in_window([0, DAY - 1], DAY) == 2
    assert max_in_window([5, 0, 3, 100, 101, 102, 103], 4) == 4


# --- properties ---------------------------------------------------------------------------------

PERIOD = 10


@settings(deadline=None, max_examples=300)
@given(
    st.integers(1, 3),
    st.lists(st.integers(0, 60), max_size=12),
    st.integers(-15, 75),
)
def test_cap_allows_matches_brute_force(limit: int, attempts: list[int], t: int) -> None:
    """Small integer clocks: allowed iff adding t keeps every window of the period at <= limit."""
    caps = (Cap("sms", limit, PERIOD),)
    history: list[Sent] = []
    for x in attempts:  # history built by the policy itself, so it is valid
        if cap_allows(caps, history, "sms", x):
            history.append(Sent("sms", "promo", x))
    times = [s.at for s in history]
    assert max_in_window(times, PERIOD) <= limit
    assert cap_allows(caps, history, "sms", t) == (max_in_window([*times, t], PERIOD) <= limit)
    slot = next_cap_slot(caps, history, "sms", t, t + 5 * PERIOD)
    brute = next((u for u in range(t, t + 5 * PERIOD) if max_in_window([*times, u], PERIOD) <= limit), None)
    assert slot == brute


cap_specs = st.builds(
    lambda n, days: CapSpec(limit=n, period_seconds=days * DAY), st.integers(1, 3), st.integers(1, 30)
)
CHANNELS = ("sms", "email", "phone")
CATEGORIES = ("promo", "content", "service", "transactional")


@settings(deadline=None, max_examples=60)
@given(
    st.dictionaries(
        st.sampled_from(["sms", "email", "phone", "email.promo", "sms.content", "phone.service"]),
        cap_specs,
        min_size=1,
    ),
    st.lists(
        st.tuples(
            st.integers(0, 120 * DAY),
            st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=3, unique=True),
            st.sampled_from(CATEGORIES),
            st.sampled_from(["first", "all"]),
            st.sampled_from(["suppress", "defer"]),
            st.sampled_from([DAY, 3 * DAY, 20 * DAY]),
            st.sampled_from([None, time(11)]),
        ),
        max_size=25,
    ),
    st.sampled_from([None, 3, 45]),
)
def test_no_window_ever_holds_more_than_the_cap(
    caps: dict[str, CapSpec], attempts: list[tuple], phone_cap_days: int | None
) -> None:
    """Campaigns in any order (earlier fire times after later ones): planned messages never break a cap."""
    ctx = PolicyContext(caps=caps, quiet=QUIET, default_zone="Europe/Moscow", default_country="RU")
    r = Recipient(
        "c1", "c1@example.com", "+79123456789", False, "ivanov", frozenset(CHANNELS), frozenset(),
        ("Asia/Yekaterinburg",), "column", phone_cap_days,
    )
    start = at("2026-01-01T00:00+03:00")
    history: list[Sent] = []
    for offset, channels, category, mode, when_capped, within, local_time in attempts:
        rules = Rules("c", category, tuple(channels), mode, local_time, within, when_capped)
        for decision in decide(r, rules, start + offset, history, ctx):
            if decision.status == "planned":
                assert decision.send_at is not None
                assert start + offset <= decision.send_at < decision.expires_at
                history.append(Sent(decision.channel, category, decision.send_at))
            else:
                assert decision.reason in ("capped", "expired")
    for channel in CHANNELS:
        for category in CATEGORIES:
            for cap in caps_for(channel, category, caps, phone_cap_days):
                assert max_in_window(counted(cap, history), cap.period) <= cap.limit, cap
