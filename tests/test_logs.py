"""Phones, emails and secrets never reach the logs (SPEC 12), whichever library logged them."""

from __future__ import annotations

import io
import json
import logging

from hypothesis import given, strategies as st

from orchestrator.logs import MaskingFormatter, mask


def test_addresses_and_secrets_are_masked() -> None:
    line = mask("to +79161234567 and ivan.petrov@mail.ru via https://smsc.ru/send?login=a&psw=s3cret&phones=79161234567")
    assert "9161234567" not in line and "ivan.petrov" not in line and "s3cret" not in line
    assert "+7*******67" in line and "i***@mail.ru" in line


def test_times_ids_and_counts_are_left_alone() -> None:
    text = "run 17 of promo at 2026-11-23 10:00:00: 5000 due, ref 1763890000"
    assert mask(text) == text


@given(st.from_regex(r"\+7\d{10}", fullmatch=True), st.text(alphabet="abc xyz:,", max_size=20))
def test_any_russian_mobile_is_masked_wherever_it_appears(phone: str, around: str) -> None:
    assert phone[2:] not in mask(f"{around} {phone} {around}")


def test_json_lines_carry_the_masked_message_and_the_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(MaskingFormatter(as_json=True))
    logger = logging.getLogger("test.logs")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("refused anna@example.com")
        except ValueError:
            logger.exception("sending to %s failed", "+79161234567")
    finally:
        logger.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert entry["level"] == "error" and entry["logger"] == "test.logs"
    assert entry["msg"] == "sending to +7*******67 failed"
    assert "anna@" not in entry["error"] and "ValueError" in entry["error"]
