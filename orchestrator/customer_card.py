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
from orchestrator.storage.schema import CAP_COUNTED_STATES, SEASON_COLUMNS, customer_stats, customers, deliveries

UTC = timezone.utc
HORIZON = 400 * 86400
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


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
        stats = conn.execute(
            sa.select(*(customer_stats.c[name] for name in SEASON_COLUMNS), customer_stats.c.usual_gap)
            .where(customer_stats.c.customer_id == customer_id)
        ).mappings().first()
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
    card["seasonal_index"] = seasonal_index(stats)
    card["sleep"] = sleep_explained(card, stats, settings)
    card["history"] = [delivery_record(r) for r in history_rows]
    card["next_allowed"] = {
        channel: _next_allowed(settings, recipient, history, channel, int(now.timestamp()), blocked_reason)
        for channel in ("sms", "email", "phone")
    }
    return card


def seasonal_index(stats: Any) -> list[dict[str, Any]] | None:
    """The client's activity per calendar month, 1.0 = an average month (None without history).

    These are the stored `season_01..12` of docs/SLEEP_SCORE.md, already scaled so that the
    month-length-weighted average is exactly 1.0 (a year of the seasonal clock is 365 days): a
    month at 2.0 sees twice the usual visits, one at 0.1 (the floor) practically none.  With few
    visits the index follows the shop-wide pattern more than the client's own.
    """
    if stats is None or any(stats[name] is None for name in SEASON_COLUMNS):
        return None
    return [{"month": month, "name": MONTHS[month - 1], "index": round(float(stats[name]), 2)}
            for month, name in enumerate(SEASON_COLUMNS, start=1)]


def sleep_explained(card: dict[str, Any], stats: Any, settings: Settings) -> dict[str, Any]:
    """Why the client is or is not sleeping: the two sides of the score, in seasonal days.

    score = seasonal days since the last purchase / usual gap (seasonal days); a seasonal day is a
    calendar day weighted by its month's index, so quiet months age the client slowly.
    """
    score = card.get("sleep_score")
    gap = stats["usual_gap"] if stats is not None else None
    threshold = float(settings.sleeping.threshold)
    record: dict[str, Any] = {
        "score": round(score, 2) if score is not None else None,
        "threshold": threshold,
        "is_sleeping": bool(card.get("is_sleeping")),
        "days_since_last_purchase": card.get("days_since_last_purchase"),
        "seasonal_days_since_last_purchase": round(score * gap, 1) if score is not None and gap else None,
        "usual_gap_seasonal_days": round(gap, 1) if gap else None,
    }
    if score is None:
        record["why"] = (f"no score: fewer than {settings.sleeping.min_purchases} purchase days"
                         if card.get("purchases_count") else "no score: no purchases")
    else:
        verdict = "sleeping" if score >= threshold else "not sleeping"
        record["why"] = (f"{verdict}: {record['seasonal_days_since_last_purchase']} seasonal days since the last "
                         f"purchase ({record['days_since_last_purchase']} calendar days) against a usual gap of "
                         f"{record['usual_gap_seasonal_days']}; sleeping from {threshold:g} times the usual gap")
    return record


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
