"""The pump (SPEC 8): moves due ledger rows to the broker, and tidies what crashes left behind.

Deferred messages (quiet hours, caps, retry backoff) wait in the ledger as `planned` with their
`send_at`; the broker only ever holds messages that are due now.  One pass:
1. `sending` rows older than the lease: the worker died mid-send; the outcome is `unknown`.
2. `planned` rows past `expires_at`: suppressed `expired`.
3. `queued` rows not claimed within `requeue_after`: enqueued again (the broker may hold a killed
   worker's messages for minutes; a second message for a row is harmless, the claim drops it).
4. due `planned` rows → `queued`, then one broker message per `message_batch` rows and channel.

On PostgreSQL, rows are taken with `FOR UPDATE SKIP LOCKED`, so several pumps never move the same
row twice; on SQLite the write transaction is exclusive.  Rows are marked before they are enqueued:
a pump killed in between leaves `queued` rows that step 3 enqueues later.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Collection, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from orchestrator.settings import Settings
from orchestrator.storage.engine import write_transaction
from orchestrator.storage.schema import deliveries

log = logging.getLogger("orchestrator.pump")

Enqueue = Callable[[str, list[int]], None]


@dataclass
class PumpPass:
    moved: int = 0
    requeued: int = 0
    expired: int = 0
    lost: int = 0
    messages: int = 0

    @property
    def idle(self) -> bool:
        return not (self.moved or self.requeued or self.expired or self.lost)


def _take(conn: Connection, where: Sequence[sa.ColumnElement[bool]], limit: int, order: sa.ColumnElement) -> list[tuple[int, str]]:
    query = sa.select(deliveries.c.id, deliveries.c.channel).where(*where).order_by(order).limit(limit)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [(row.id, row.channel) for row in conn.execute(query)]


def _mark(conn: Connection, taken: list[tuple[int, str]], now: int) -> None:
    ids = [row_id for row_id, _ in taken]
    for start in range(0, len(ids), 5000):
        conn.execute(
            deliveries.update().where(deliveries.c.id.in_(ids[start:start + 5000])).values(status="queued", updated_at=now)
        )


def _expire_and_reap(conn: Connection, now: int, lease: int, result: PumpPass) -> None:
    lost = conn.execute(
        deliveries.update()
        .where(deliveries.c.status == "sending", deliveries.c.updated_at < now - lease)
        .values(status="unknown", error="the worker stopped while sending: the outcome is unknown", updated_at=now)
    )
    result.lost += lost.rowcount or 0
    expired = conn.execute(
        deliveries.update()
        .where(deliveries.c.status == "planned", deliveries.c.expires_at <= now)
        .values(status="suppressed", reason="expired", detail="not sent within deliver_within", updated_at=now)
    )
    result.expired += expired.rowcount or 0


def pump_once(engine: Engine, settings: Settings, enqueue: Enqueue, now: int, channels: Collection[str]) -> PumpPass:
    """One pass; `channels` are those with a backend (rows of others stay planned, and expire)."""
    d = settings.dispatch
    result = PumpPass()
    known = sorted(channels)
    with write_transaction(engine) as conn:
        _expire_and_reap(conn, now, d.seconds("sending_lease"), result)
        stale = _take(conn, [deliveries.c.status == "queued", deliveries.c.updated_at < now - d.seconds("requeue_after"),
                             deliveries.c.channel.in_(known)], d.pump_batch, deliveries.c.updated_at)
        due = _take(conn, [deliveries.c.status == "planned", deliveries.c.send_at <= now,
                           deliveries.c.channel.in_(known)], d.pump_batch, deliveries.c.send_at)
        _mark(conn, stale + due, now)
    result.requeued, result.moved = len(stale), len(due)
    result.messages = _enqueue(enqueue, stale + due, d.message_batch)
    if not result.idle:
        log.info("pump: %d due, %d re-enqueued, %d expired, %d unknown after a lost worker",
                 result.moved, result.requeued, result.expired, result.lost)
    return result


def _enqueue(enqueue: Enqueue, taken: list[tuple[int, str]], batch: int) -> int:
    by_channel: dict[str, list[int]] = defaultdict(list)
    for row_id, channel in taken:
        by_channel[channel].append(row_id)
    messages = 0
    for channel, ids in by_channel.items():
        for start in range(0, len(ids), batch):
            enqueue(channel, ids[start:start + batch])
            messages += 1
    return messages


def pump_until_drained(engine: Engine, settings: Settings, enqueue: Enqueue, now: int, channels: Collection[str]) -> PumpPass:
    """Passes until nothing is due (a backlog larger than `pump_batch`)."""
    total = PumpPass()
    while True:
        one = pump_once(engine, settings, enqueue, now, channels)
        for name in ("moved", "requeued", "expired", "lost", "messages"):
            setattr(total, name, getattr(total, name) + getattr(one, name))
        if one.moved < settings.dispatch.pump_batch:
            return total
