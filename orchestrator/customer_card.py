"""The customer card (`customer show`): who they are, what they got, when the next message may go."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orchestrator.errors import NotFound
from orchestrator.ledger import delivery_record
from orchestrator.policy.caps import Sent, caps_for, next_cap_slot
from orchestrator.policy.quiet_hours import next_allowed
from orchestrator.settings import Settings
from orchestrator.storage.schema import CAP_COUNTED_STATES, customer_stats, customers, deliveries

UTC = timezone.utc
HORIZON = 400 * 86400


def customer_card(engine: Engine, settings: Settings, customer_id: str, now: datetime) -> dict[str, Any]:
    from orchestrator.derived import derived_columns
    from orchestrator.planner import customer_view, recipient_of
    from orchestrator.policy.consent import blocked_reason

    derived = derived_columns(now, settings)
    query = (
        sa.select(customers, *(expr.label(name) for name, expr in derived.items() if name not in customers.c))
        .select_from(customers.outerjoin(customer_stats, customer_stats.c.customer_id == customers.c.id))
        .where(customers.c.id == customer_id)
    )
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound(f"no customer with id '{customer_id}'")
        history_rows = conn.execute(
            sa.select(deliveries).where(deliveries.c.customer_id == customer_id).order_by(deliveries.c.id)
        ).all()
    card = customer_view(row)
    recipient = recipient_of(row)
    history = [
        Sent(channel=r.channel, category=r.category, at=int(r.sent_at or r.send_at))
        for r in history_rows if r.status in CAP_COUNTED_STATES and (r.sent_at or r.send_at)
    ]
    zone = recipient.zones[0] if len(recipient.zones) == 1 else settings.general.timezone
    card["zone_used"] = zone
    card["zone_note"] = _zone_note(recipient.zones, recipient.zone_source, settings.general.timezone)
    card["local_time"] = now.astimezone(ZoneInfo(zone)).isoformat(timespec="minutes")
    card["history"] = [delivery_record(r) for r in history_rows]
    card["next_allowed"] = {
        channel: _next_allowed(settings, recipient, history, channel, int(now.timestamp()), blocked_reason)
        for channel in ("sms", "email", "phone")
    }
    return card


def _zone_note(zones: tuple[str, ...], source: str, default: str) -> str:
    if len(zones) == 1:
        return f"{zones[0]} (from {source})"
    if zones:
        return f"several candidate zones ({len(zones)}, from {source}); guessed {default} when no minute suits all"
    return f"local time unknown, guessed {default}"


def _next_allowed(settings: Settings, recipient: Any, history: list[Sent], channel: str, now: int, blocked_reason: Any) -> dict[str, Any]:
    """For a promo message: the reason it cannot go, or the first minute caps and quiet hours allow."""
    reason = blocked_reason(channel, "promo", recipient)
    if reason:
        return {"allowed": False, "reason": reason}
    caps = caps_for(channel, "promo", settings.caps, recipient.phone_cap_days)
    slot = next_cap_slot(caps, history, channel, now, now + HORIZON)
    if slot is None:
        return {"allowed": False, "reason": "capped"}
    zones = recipient.zones or (settings.general.timezone,)
    moment = next_allowed(channel, slot, zones, settings.quiet_hours, settings.general.country, slot + 30 * 86400)
    if moment is None and len(zones) > 1:
        moment = next_allowed(channel, slot, (settings.general.timezone,), settings.quiet_hours, settings.general.country, slot + 30 * 86400)
    at = datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None
    return {"allowed": True, "from": at, "capped_until": datetime.fromtimestamp(slot, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if slot > now else None}
