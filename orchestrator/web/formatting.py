"""Jinja2 environment and filters of the web pages: dates in a zone, numbers, labels, clipping.

Every template is autoescaped (customer data is hostile: names with quotes, `<script>`, 10 KB
strings); nothing here marks text as safe except the charts, which are SVG built by our own code.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2

UTC = timezone.utc
TEMPLATES = Path(__file__).parent / "templates"

LABELS = {
    # ledger states and reasons
    "planned": "Planned", "queued": "Queued", "sending": "Sending", "sent": "Sent", "failed": "Failed",
    "unknown": "Unknown", "suppressed": "Suppressed", "cancelled": "Cancelled",
    "no_consent": "No consent", "no_contact": "No contact", "invalid_contact": "Invalid contact",
    "capped": "Frequency cap", "expired": "Expired", "template_error": "Template error",
    "unsubscribed": "Unsubscribed", "holdout": "Holdout",
    # call outcomes and task states
    "reached": "Reached", "ordered": "Ordered", "callback": "Call back", "no_answer": "No answer",
    "refused": "Refused", "wrong_number": "Wrong number", "unsubscribe": "Unsubscribe",
    "open": "Open", "done": "Done", "closed": "Closed",
    # channels and roles
    "sms": "SMS", "email": "Email", "phone": "Call", "webhook": "Webhook",
    "marketer": "Marketer", "manager": "Manager",
}


def label(value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    return LABELS.get(text, text.replace("_", " ").capitalize())


@lru_cache(maxsize=256)
def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def to_datetime(value: Any) -> datetime | None:
    """Epoch seconds, ISO text (`...Z` too) or a datetime → an aware datetime; None if unusable."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def when(value: Any, zone: str | None = None, *, with_zone: bool = False) -> str:
    """`Tue 24 Nov 2026, 10:00` in `zone`; text that is not a moment is shown as it is."""
    moment = to_datetime(value)
    if moment is None:
        return "" if value is None else str(value)
    local = moment.astimezone(_zone(zone))
    text = f"{local:%a} {local.day} {local:%b %Y, %H:%M}"
    if with_zone:
        text += f" {local.tzname() or ''}".rstrip()
    return text


def clock(value: Any, zone: str | None = None) -> str:
    """`10:00` (with the day when it is not today in that zone)."""
    moment = to_datetime(value)
    if moment is None:
        return "" if value is None else str(value)
    local = moment.astimezone(_zone(zone))
    return f"{local:%H:%M}"


def day(value: Any) -> str:
    moment = value if isinstance(value, date) and not isinstance(value, datetime) else None
    if moment is None:
        parsed = to_datetime(value)
        if parsed is None:
            return "" if value is None else str(value)
        moment = parsed.date()
    return f"{moment.day} {moment:%b %Y}"


def number(value: Any, digits: int = 0) -> str:
    if value is None or value == "":
        return ""
    try:
        amount = float(value)
    except (TypeError, ValueError):
        return str(value)
    text = f"{amount:,.{digits}f}".replace(",", "\u202f")
    return text


def clip(value: Any, limit: int = 80) -> str:
    """At most `limit` characters (customer data may be 10 KB long); the rest becomes `…`."""
    if value is None:
        return ""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def percent(part: Any, whole: Any) -> str:
    try:
        if not whole:
            return "–"
        return f"{100.0 * float(part) / float(whole):.1f}%"
    except (TypeError, ValueError):
        return "–"


def make_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(label=label, when=when, clock=clock, day=day, number=number, clip=clip)
    env.globals.update(percent=percent, label=label)
    return env
