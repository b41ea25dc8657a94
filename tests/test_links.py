"""Signed unsubscribe links: they work for the customer and cannot be forged or altered."""

from __future__ import annotations

import re
from email.message import EmailMessage
from email.policy import SMTP

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.errors import InputError
from orchestrator.links import cabinet_link, unsubscribe_link, verify_unsubscribe

SECRET = "s3cret-key"
BASE = "https://loyalty.example.ru"


def token_of(link: str) -> str:
    prefix = f"{BASE}/u/"
    assert link.startswith(prefix)
    return link[len(prefix):]


def test_round_trip() -> None:
    link = unsubscribe_link(BASE, SECRET, "C-001", "email", "wake-sleeping-wholesale")
    assert verify_unsubscribe(SECRET, token_of(link)) == ("C-001", "email", "wake-sleeping-wholesale")


def test_trailing_slash_of_base_url_is_ignored() -> None:
    assert unsubscribe_link(BASE + "/", SECRET, "1", "sms", "c") == unsubscribe_link(
        BASE, SECRET, "1", "sms", "c"
    )


@given(
    st.text(min_size=1, max_size=300),
    st.sampled_from(["sms", "email", "phone", "webhook"]),
    st.text(max_size=80),
)
def test_any_id_survives_and_the_token_is_url_safe(customer_id: str, channel: str, campaign: str) -> None:
    link = unsubscribe_link(BASE, SECRET, customer_id, channel, campaign)
    token = token_of(link)
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)
    assert verify_unsubscribe(SECRET, token) == (customer_id, channel, campaign)


def test_token_is_compact() -> None:
    token = token_of(unsubscribe_link(BASE, SECRET, "100234", "email", "birthday"))
    assert len(token) < 70


def test_survives_an_email_header_unfolded() -> None:
    link = unsubscribe_link(BASE, SECRET, "x" * 400 + " ; <>\r\n", "email", "new-year")
    message = EmailMessage(policy=SMTP.clone(max_line_length=998))
    message["List-Unsubscribe"] = f"<{link}>"
    message.set_content("hi")
    assert f"List-Unsubscribe: <{link}>\r\n".encode() in message.as_bytes()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # signature changed
        lambda t: ("A" if t[0] != "A" else "B") + t[1:],  # payload changed
        lambda t: t.split(".")[0],  # signature removed
        lambda t: t + ".x",
        lambda t: "",
        lambda t: "%%%.%%%",
        lambda t: "ж" + t,
    ],
)
def test_tampered_token_is_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    token = token_of(unsubscribe_link(BASE, SECRET, "C-1", "sms", "promo"))
    with pytest.raises(InputError, match="invalid"):
        verify_unsubscribe(SECRET, mutate(token))


def test_another_customers_payload_with_my_signature_is_refused() -> None:
    mine = token_of(unsubscribe_link(BASE, SECRET, "C-1", "email", "promo"))
    theirs = token_of(unsubscribe_link(BASE, SECRET, "C-2", "email", "promo"))
    forged = theirs.split(".")[0] + "." + mine.split(".")[1]
    with pytest.raises(InputError):
        verify_unsubscribe(SECRET, forged)


def test_other_secret_is_refused() -> None:
    token = token_of(unsubscribe_link(BASE, SECRET, "C-1", "email", "promo"))
    with pytest.raises(InputError):
        verify_unsubscribe("another-secret", token)


def test_empty_secret_makes_links_but_refuses_them() -> None:
    token = token_of(unsubscribe_link(BASE, "", "C-1", "email", "promo"))
    with pytest.raises(InputError, match="secret_key"):
        verify_unsubscribe("", token)


def test_cabinet_link() -> None:
    assert cabinet_link(BASE + "/", "C-1") == f"{BASE}/cabinet"
