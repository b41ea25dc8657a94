"""Call tasks for account managers (SPEC 9): the phone channel delivers into our own database.

A task is created in the transaction that marks its ledger row `sent`, keyed by the row: exactly
one task per delivery, whatever crashes or duplicate broker messages happen around it.

The manager is the customer's own (`manager` column); a customer without one goes to the `pool`
option in turn (round robin by the number of pool tasks so far).  The task is due from the moment
the worker creates it (the policy has just checked it is inside calling hours) until the calling
hours of that local day end.
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Any, Sequence

import sqlalchemy as sa

from channels.base import LedgerChannel, Message, SendResult
from orchestrator.policy.quiet_hours import channel_spec, wall_instant, zone_info
from orchestrator.storage.schema import call_tasks, customer_stats, customers

CARD_FIELDS = ("name", "first_name", "phone", "city", "timezone", "bonus_balance", "discount_percent", "abc_group")
STATS_FIELDS = ("purchases_count", "total_spent", "last_purchase_at", "avg_purchase_interval_days", "preferred_category")


class CallTasks(LedgerChannel):
    parallel = 64

    def __init__(self, name: str, pool: Sequence[str] = ()) -> None:
        super().__init__(name)
        self.pool = tuple(pool)

    def deliver_in(self, conn: Any, message: Message, now: int, policy: Any) -> SendResult:
        manager = message.content.get("manager") or self._from_pool(conn)
        if not manager:
            return SendResult.permanent("the customer has no manager and [channels.phone] pool is empty")
        existing = conn.execute(
            sa.select(call_tasks.c.id).where(call_tasks.c.delivery_id == int(message.ref))
        ).scalar()
        if existing is not None:
            return SendResult.sent(provider_id=f"task-{existing}")
        zone = message.zone or policy.default_zone
        task_id = conn.execute(
            call_tasks.insert().returning(call_tasks.c.id),
            {
                "delivery_id": int(message.ref), "campaign": message.campaign, "customer_id": message.customer_id,
                "manager": manager, "status": "open", "due_from": now, "due_until": _calling_day_end(now, zone, policy),
                "zone": zone, "zone_source": message.zone_source or None, "script": message.content.get("text"),
                "offer": message.content.get("offer") or {}, "card": _card(conn, message.customer_id),
                "attempts": 0, "created_at": now, "updated_at": now,
            },
        ).scalar_one()
        return SendResult.sent(provider_id=f"task-{task_id}")

    def _from_pool(self, conn: Any) -> str | None:
        if not self.pool:
            return None
        taken = conn.execute(
            sa.select(sa.func.count()).select_from(call_tasks).where(call_tasks.c.manager.in_(self.pool))
        ).scalar_one()
        return self.pool[taken % len(self.pool)]


def _calling_day_end(now: int, zone: str, policy: Any) -> int:
    """When the calling hours of the local day that contains `now` end (quiet hours start)."""
    spec = channel_spec("phone", policy.quiet)
    if spec.start == spec.end:
        return now + 86400
    tz = zone_info(zone)
    start = time(spec.start // 3600, spec.start % 3600 // 60)
    day = datetime.fromtimestamp(now, tz).date()
    found = wall_instant(tz, datetime.combine(day, start), now)
    return found if found is not None else now + 86400


def _card(conn: Any, customer_id: str) -> dict[str, Any]:
    """The customer as the manager should see them when the task was made."""
    row = conn.execute(
        sa.select(*(customers.c[f] for f in CARD_FIELDS), *(customer_stats.c[f] for f in STATS_FIELDS))
        .select_from(customers.outerjoin(customer_stats, customer_stats.c.customer_id == customers.c.id))
        .where(customers.c.id == customer_id)
    ).mappings().first()
    if row is None:
        return {}
    return {key: (value.isoformat() if hasattr(value, "isoformat") else value) for key, value in row.items()}
