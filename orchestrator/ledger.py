"""Reading the ledger, and the changes to it that come from the customer (unsubscribe)."""

from __future__ import annotations

import time as clock
from datetime import datetime, timezone
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from orchestrator.errors import InputError, NotFound
from orchestrator.storage.engine import write_transaction
from orchestrator.storage.locks import lock_customers
from orchestrator.storage.schema import customers, deliveries, runs

UTC = timezone.utc
UNSUBSCRIBABLE = ("sms", "email", "phone")
PENDING_STATES = ("planned", "queued")


def _iso(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def delivery_record(row: Any) -> dict[str, Any]:
    """The public shape of a ledger row (SPEC 10 `deliveries`)."""
    return {
        "id": row.id,
        "run": row.run_id,
        "campaign": row.campaign,
        "customer_id": row.customer_id,
        "channel": row.channel,
        "category": row.category,
        "status": row.status,
        "reason": row.reason,
        "detail": row.detail,
        "send_at": _iso(row.send_at),
        "expires_at": _iso(row.expires_at),
        "sent_at": _iso(row.sent_at),
        "attempts": row.attempts,
        "error": row.error,
        "provider_id": row.provider_id,
        "zone": row.zone,
        "zone_source": row.zone_source,
    }


def list_deliveries(
    engine: Engine,
    *,
    campaign: str | None = None,
    customer: str | None = None,
    status: str | None = None,
    run: int | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    columns = [c for c in deliveries.c if c.name != "payload"]
    query = sa.select(*columns).order_by(deliveries.c.id)
    if campaign:
        query = query.where(deliveries.c.run_id.in_(sa.select(runs.c.id).where(runs.c.campaign == campaign)))
    if customer:
        query = query.where(deliveries.c.customer_id == customer)
    if status:
        query = query.where(deliveries.c.status == status)
    if run is not None:
        query = query.where(deliveries.c.run_id == run)
    if limit:
        query = query.limit(limit)
    with engine.connect() as conn:
        for row in conn.execute(query.execution_options(yield_per=5000)):
            yield delivery_record(row)


def unsubscribe(engine: Engine, customer_id: str, channel: str, *, source: str = "cli") -> int:
    """Withdraw consent at once: pending messages of that channel become suppressed `unsubscribed`.

    Transactional messages are not consent-based and stay.  Returns how many rows were withdrawn.
    """
    if channel not in UNSUBSCRIBABLE:
        raise InputError(f"'{channel}' is not a channel one can unsubscribe from ({', '.join(UNSUBSCRIBABLE)})", field="--channel")
    now = int(clock.time())
    with write_transaction(engine) as conn:
        lock_customers(conn, [customer_id])
        found = conn.execute(sa.select(customers.c.id).where(customers.c.id == customer_id)).first()
        if found is None:
            raise NotFound(f"no customer with id '{customer_id}'")
        return unsubscribe_in(conn, customer_id, channel, now, f"unsubscribed ({source})")


def unsubscribe_in(conn: Connection, customer_id: str, channel: str, now: int, detail: str) -> int:
    """The withdrawal inside the caller's transaction (which holds the customer's lock)."""
    column = customers.c[f"unsubscribed_{channel}"]
    conn.execute(
        customers.update().where(customers.c.id == customer_id, column.is_(None)).values({column: now, "updated_at": now})
    )
    result = conn.execute(
        deliveries.update()
        .where(
            deliveries.c.customer_id == customer_id,
            deliveries.c.channel == channel,
            deliveries.c.status.in_(PENDING_STATES),
            deliveries.c.category != "transactional",
        )
        .values(status="suppressed", reason="unsubscribed", detail=detail, updated_at=now)
    )
    return result.rowcount or 0


def runs_of(engine: Engine, campaign: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(runs).where(runs.c.campaign == campaign).order_by(runs.c.fire_at)).all()
    return [
        {"run": r.id, "fire_at": _iso(r.fire_at), "status": r.status, "started_at": _iso(r.started_at),
         "finished_at": _iso(r.finished_at)}
        for r in rows
    ]
