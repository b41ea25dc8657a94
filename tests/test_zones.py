"""Candidate time zones of a recipient: timezone column, then city, then phone (SPEC 7)."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
from hypothesis import assume, example, given, settings as hsettings, strategies as st
from phonenumbers.phonenumberutil import SUPPORTED_REGIONS

from orchestrator.policy.zones import (
    BUILTIN_CITIES,
    ZoneGuess,
    _phone_zones_uncached,
    candidate_zones,
    phone_zones,
)


def test_the_timezone_column_wins_and_is_spelled_canonically() -> None:
    guess = candidate_zones("europe/moscow", "Владивосток", "+79123456789")
    assert guess == ZoneGuess(("Europe/Moscow",), "column")


def test_a_bad_timezone_falls_back_to_the_city() -> None:
    assert candidate_zones("Mars/Olympus", "Омск", None) == ZoneGuess(("Asia/Omsk",), "city")
    assert candidate_zones("Factory", "Омск", None).source == "city"


@pytest.mark.parametrize(
    "city, zone",
    [
        ("Москва", "Europe/Moscow"),
        ("г. Москва", "Europe/Moscow"),
        ("г Москва", "Europe/Moscow"),
        ("г.Москва", "Europe/Moscow"),
        ("Москва г.", "Europe/Moscow"),
        ("  МОСКВА ", "Europe/Moscow"),
        ("Moscow", "Europe/Moscow"),
        ("Орёл", "Europe/Moscow"),
        ("орел", "Europe/Moscow"),
        ("Ростов на Дону", "Europe/Moscow"),
        ("St. Petersburg", "Europe/Moscow"),
        ("Калининград", "Europe/Kaliningrad"),
        ("Самара", "Europe/Samara"),
        ("Yekaterinburg", "Asia/Yekaterinburg"),
        ("Ekaterinburg", "Asia/Yekaterinburg"),
        ("Россия, Свердловская обл., г. Екатеринбург", "Asia/Yekaterinburg"),
        ("Новосибирск", "Asia/Novosibirsk"),
        ("Chelyabinsk", "Asia/Yekaterinburg"),
        ("Иркутск", "Asia/Irkutsk"),
        ("Якутск", "Asia/Yakutsk"),
        ("Хабаровск", "Asia/Vladivostok"),
        ("Магадан", "Asia/Magadan"),
        ("Петропавловск-Камчатский", "Asia/Kamchatka"),
        ("Алматы", "Asia/Almaty"),
        ("Алма-Ата", "Asia/Almaty"),
        ("Минск", "Europe/Minsk"),
        ("Ташкент", "Asia/Tashkent"),
        ("Бишкек", "Asia/Bishkek"),
        ("Душанбе", "Asia/Dushanbe"),
        ("Ереван", "Asia/Yerevan"),
        ("Тбилиси", "Asia/Tbilisi"),
        ("Баку", "Asia/Baku"),
        ("Кишинёв", "Europe/Chisinau"),
        ("Chisinau", "Europe/Chisinau"),
    ],
)
def test_cities_in_their_usual_spellings(city: str, zone: str) -> None:
    assert candidate_zones(None, city, "+79123456789") == ZoneGuess((zone,), "city")


def test_the_built_in_cities_cover_the_eleven_russian_offsets() -> None:
    instant = datetime(2026, 1, 15, tzinfo=timezone.utc)
    zones = set(BUILTIN_CITIES.values())
    assert all(ZoneInfo(zone) for zone in zones)
    russian = {z for z in zones if z.startswith(("Europe/", "Asia/")) and z not in {
        "Europe/Minsk", "Europe/Chisinau", "Asia/Almaty", "Asia/Aqtobe", "Asia/Atyrau",
        "Asia/Qostanay", "Asia/Qyzylorda", "Asia/Oral", "Asia/Aqtau", "Asia/Tashkent",
        "Asia/Samarkand", "Asia/Bishkek", "Asia/Dushanbe", "Asia/Yerevan", "Asia/Tbilisi",
        "Asia/Baku"}}
    hours = {instant.astimezone(ZoneInfo(z)).utcoffset().total_seconds() / 3600 for z in russian}
    assert hours == set(range(2, 13))


def test_settings_cities_extend_and_override_the_table() -> None:
    cities = {"Урюпинск": "Europe/Volgograd", "Москва": "Europe/Kaliningrad"}
    assert candidate_zones(None, "г. Урюпинск", None, cities=cities).zones == ("Europe/Volgograd",)
    assert candidate_zones(None, "МОСКВА", None, cities=cities).zones == ("Europe/Kaliningrad",)
    assert candidate_zones(None, "Урюпинск", None).source == "default"


def test_a_russian_mobile_keeps_every_zone_of_plus_7() -> None:
    guess = candidate_zones(None, "Неизвестноград", "+79123456789")
    assert guess.source == "phone"
    assert guess.zones == tuple(sorted(guess.zones))
    assert {"Europe/Moscow", "Asia/Kamchatka", "Europe/Kaliningrad"} - set(guess.zones) == {
        "Europe/Kaliningrad"}
    assert "Asia/Almaty" in guess.zones and len(guess.zones) > 10
    assert "Etc/Unknown" not in guess.zones


def test_a_moscow_landline_is_moscow_and_an_unknown_is_the_default() -> None:
    assert candidate_zones(None, None, "+74951234567") == ZoneGuess(("Europe/Moscow",), "phone")
    assert candidate_zones(None, "", "") == ZoneGuess((), "default")
    assert candidate_zones(None, None, "not a phone") == ZoneGuess((), "default")


def _valid_numbers() -> st.SearchStrategy[str]:
    """Example numbers of every region and type, their trailing digits replaced at random."""
    examples = []
    for region in sorted(SUPPORTED_REGIONS):
        for kind in range(11):
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                examples.append(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))

    @st.composite
    def build(draw: st.DrawFn) -> str:
        base = draw(st.sampled_from(examples))
        keep = draw(st.integers(min_value=3, max_value=len(base)))
        tail = draw(st.text("0123456789", min_size=len(base) - keep, max_size=len(base) - keep))
        return base[:keep] + tail

    return build()


@hsettings(max_examples=400, deadline=None)
@given(_valid_numbers())
@example("+358021000000")  # a leading national zero: once answered from the prefix cache, wrongly
def test_cached_phone_zones_agree_with_phonenumbers(phone: str) -> None:
    try:
        number = phonenumbers.parse(phone)
    except phonenumbers.NumberParseException:
        assume(False)
    assume(phonenumbers.is_valid_number(number))
    assert phone_zones(phone) == _phone_zones_uncached(phone)
