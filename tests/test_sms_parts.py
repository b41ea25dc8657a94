"""SMS encoding and parts, as a gateway bills them (GSM 03.38, 160/153 and 70/67)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.sms_parts import GSM_BASIC, GSM_EXTENSION, SmsInfo, sms_info, split_parts

BASIC = sorted(GSM_BASIC)
EXTENSION = sorted(GSM_EXTENSION)
gsm_text = st.text(alphabet=st.sampled_from(BASIC + EXTENSION), max_size=700)
ucs2_text = st.text(
    alphabet=st.sampled_from(["я", "Ж", "a", " ", "😀", "€", "{", "👍"]), min_size=1, max_size=400
).filter(lambda text: any(char in text for char in "яЖ😀👍"))
any_text = st.one_of(gsm_text, ucs2_text, st.text(max_size=400))


@pytest.mark.parametrize(
    ("length", "parts"),
    [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)],
)
def test_gsm_boundaries(length: int, parts: int) -> None:
    assert sms_info("a" * length) == SmsInfo("GSM-7", length, parts)


@pytest.mark.parametrize(
    ("length", "parts"),
    [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)],
)
def test_ucs2_boundaries(length: int, parts: int) -> None:
    assert sms_info("ж" * length) == SmsInfo("UCS-2", length, parts)


def test_the_whole_basic_table_is_gsm() -> None:
    table = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
    assert sms_info(table) == SmsInfo("GSM-7", len(table), 1)


@pytest.mark.parametrize("char", list("^{}\\[~]|€\f"))
def test_extension_characters_count_twice(char: str) -> None:
    assert sms_info(f"a{char}b") == SmsInfo("GSM-7", 4, 1)
    assert sms_info(char * 80) == SmsInfo("GSM-7", 160, 1)
    assert sms_info(char * 81).parts == 2


@pytest.mark.parametrize("char", ["ж", "`", "ç", "\t", "«", "’"])
def test_one_character_outside_gsm_switches_to_ucs2(char: str) -> None:
    text = "a" * 100 + char
    assert sms_info(text) == SmsInfo("UCS-2", 101, 2)


def test_emoji_counts_two_units() -> None:
    assert sms_info("😀") == SmsInfo("UCS-2", 2, 1)
    assert sms_info("😀" * 35) == SmsInfo("UCS-2", 70, 1)
    assert sms_info("😀" * 35 + "a").parts == 2


def test_escape_pair_is_not_split_across_parts() -> None:
    # 152 septets then an escape pair: the pair does not fit in the first part's last septet.
    text = "a" * 152 + "€" + "a" * 152
    assert sms_info(text).units == 306  # ceil(306 / 153) would say 2
    assert sms_info(text).parts == 3
    assert split_parts(text)[0] == "a" * 152


def test_surrogate_pair_is_not_split_across_parts() -> None:
    text = "я" * 66 + "😀" + "я" * 66
    assert sms_info(text).units == 134  # ceil(134 / 67) would say 2
    assert sms_info(text).parts == 3
    assert split_parts(text)[0] == "я" * 66


def test_empty_text_is_one_part() -> None:
    assert sms_info("") == SmsInfo("GSM-7", 0, 1)


@given(any_text)
def test_parts_match_the_carrier_cut(text: str) -> None:
    info = sms_info(text)
    pieces = split_parts(text)
    assert "".join(pieces) == text
    assert len(pieces) == info.parts
    if info.parts > 1:
        capacity = 153 if info.encoding == "GSM-7" else 67
        for piece in pieces:
            assert _units(piece, info.encoding) <= capacity


def _units(text: str, encoding: str) -> int:
    if encoding == "GSM-7":
        return len(text) + sum(char in GSM_EXTENSION for char in text)
    return len(text.encode("utf-16-le")) // 2


@given(any_text)
def test_units_and_at_least_one_part(text: str) -> None:
    info = sms_info(text)
    assert info.parts >= 1
    if info.encoding == "GSM-7":
        assert info.units == len(text) + sum(char in GSM_EXTENSION for char in text)
        single, multi = 160, 153
    else:
        assert info.units == len(text.encode("utf-16-le")) // 2
        single, multi = 70, 67
    if info.units <= single:
        assert info.parts == 1
    else:
        assert info.parts >= math.ceil(info.units / multi)
        assert info.parts <= math.ceil(info.units / (multi - 1))


@given(any_text, st.sampled_from(BASIC + EXTENSION + ["ж", "😀"]))
def test_appending_never_needs_fewer_parts(text: str, char: str) -> None:
    assert sms_info(text + char).parts >= sms_info(text).parts


@given(gsm_text)
def test_gsm_text_stays_gsm(text: str) -> None:
    assert sms_info(text).encoding == "GSM-7"
