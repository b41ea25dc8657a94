"""Consent and contact (SPEC 7): may this channel carry this category to this customer at all?

Order of the checks, so that the reason recorded is the one a marketer should act on first:
1. `unsubscribed` — the customer said no (link, STOP, manager, CLI); it outranks everything.
2. `no_consent` — promo/content/service need the channel's consent.
3. `no_contact` / `invalid_contact` — no usable address.

Choices where the SPEC is silent:
- transactional messages are exempt from consent AND from unsubscription (unsubscribing withdraws
  consent, which transactional messages do not need — the usual ESP rule); they still need a valid
  address.
- webhook delivers to the business's own systems (personal cabinet, CRM) keyed by the customer id: it
  needs no address and no consent, but a customer who unsubscribed from "webhook" gets nothing.
- a phone marked `wrong_number` is invalid for both SMS and calls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

TRANSACTIONAL = "transactional"
CONSENT_FREE_CHANNELS = frozenset({"webhook"})
CHANNELS = ("sms", "email", "phone", "webhook")
_E164 = re.compile(r"\+[1-9]\d{6,14}")


@dataclass(frozen=True, slots=True)
class Recipient:
    customer_id: str
    email: str | None
    phone: str | None  # E.164 or None
    phone_invalid: bool  # marked wrong_number
    manager: str | None
    consent: frozenset[str]  # channels with consent
    unsubscribed: frozenset[str]  # channels withdrawn by the customer
    zones: tuple[str, ...]  # candidate zones (may be empty)
    zone_source: str  # column | city | phone | default
    phone_cap_days: int | None


def contact_reason(channel: str, r: Recipient) -> str | None:
    if channel == "email":
        if not r.email:
            return "no_contact"
        return None if "@" in r.email.strip("@") else "invalid_contact"
    if channel in ("sms", "phone"):
        if not r.phone:
            return "no_contact"
        if r.phone_invalid or not _E164.fullmatch(r.phone):
            return "invalid_contact"
        if channel == "phone" and not r.manager:
            return "no_contact"
        return None
    return None


def blocked_reason(channel: str, category: str, r: Recipient) -> str | None:
    """None if `channel` may carry a `category` message to `r`; else the suppression reason."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel '{channel}'")
    if category != TRANSACTIONAL:
        if channel in r.unsubscribed:
            return "unsubscribed"
        if channel not in r.consent and channel not in CONSENT_FREE_CHANNELS:
            return "no_consent"
    return contact_reason(channel, r)


_CHANNEL_SETS = {
    (sms, email, phone): frozenset(ch for ch, on in (("sms", sms), ("email", email), ("phone", phone)) if on)
    for sms in (False, True) for email in (False, True) for phone in (False, True)
}


def _channel_set(sms: bool, email: bool, phone: bool) -> frozenset[str]:
    return _CHANNEL_SETS[sms, email, phone]


@lru_cache(maxsize=4096)
def _zone_tuple(zones: str | None) -> tuple[str, ...]:
    return tuple(zones.split()) if zones else ()


def recipient_of(row: Mapping[str, Any]) -> Recipient:
    """What the policy needs to know of a customer (consent, addresses, zones), from a page row."""
    get = row.get
    consent = _channel_set(bool(get("consent_sms")), bool(get("consent_email")), bool(get("consent_phone")))
    unsubscribed = _channel_set(bool(get("unsubscribed_sms")), bool(get("unsubscribed_email")), bool(get("unsubscribed_phone")))
    return Recipient(
        customer_id=row["id"],
        email=get("email"),
        phone=get("phone"),
        phone_invalid=bool(get("phone_invalid")),
        manager=get("manager"),
        consent=consent,
        unsubscribed=unsubscribed,
        zones=_zone_tuple(get("zones")),
        zone_source=get("zone_source") or "default",
        phone_cap_days=get("phone_cap_days"),
    )
