"""The pump (SPEC 8): moves due ledger rows to the broker, and tidies what crashes left behind.

Deferred messages (quiet hours, caps, retry backoff) wait in the ledger as `planned` with their
`send_at`; the broker only ever holds messages that are due now.  One pass:
1. `sending` rows older than the lease: the worker died mid-send; the outcome is `unknown`.
2. `planned` rows past `expires_at`: suppressed `expired`.
3. `queued` rows not claimed within `requeue_after`: enqueued again (the broker may hold a killed
   worker's messages for minutes; a second message for a row is harmless, the claim drops it).
4. due `planned` rows → `queued`, then one broker message per `message_batch` rows and channel:
   up to `pump_batch` rows per channel and pass, and only while the channel has fewer than its
   limit of rows waiting in the broker (`_limits`).  A backlog waits in the ledger, so that a row
   never waits in the broker's queue long enough to be enqueued a second time by step 3.

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

from orchestrator.ratelimit import parse_rate
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


def _limits(settings: Settings, channels: Collection[str]) -> dict[str, int]:
    """Rows of each channel that may wait in the broker: `max_queued`, and for a channel with a
    `rate`, no more than the rate sends in half of `requeue_after`.

    A row waiting in the broker's queue longer than `requeue_after` is enqueued again, and the
    duplicate takes rate slots from real sends before its claim finds nothing: with every due row
    of a large rate-limited campaign queued at once, the channel fell to 60 % of its rate, with
    more duplicates than rows (docs/LOAD.md)."""
    d = settings.dispatch
    limits = {}
    for name in channels:
        spec = settings.channels.get(name)
        limit = d.max_queued
        if spec is not None and spec.rate:
            sends, seconds = parse_rate(spec.rate)
            limit = min(limit, max(d.message_batch, sends * d.seconds("requeue_after") // (2 * seconds)))
        limits[name] = limit
    return limits


def _room(conn: Connection, limits: dict[str, int]) -> dict[str, int]:
    """How many more rows each channel may have waiting in the broker now."""
    waiting = dict(conn.execute(
        sa.select(deliveries.c.channel, sa.func.count())
        .where(deliveries.c.status == "queued", deliveries.c.channel.in_(sorted(limits)))
        .group_by(deliveries.c.channel)
    ).all())
    return {name: limit - waiting.get(name, 0) for name, limit in limits.items()}


def pump_once(engine: Engine, settings: Settings, enqueue: Enqueue, now: int, channels: Collection[str]) -> PumpPass:
    """One pass; `channels` are those with a backend (rows of others stay planned, and expire)."""
    d = settings.dispatch
    result = PumpPass()
    known = sorted(channels)
    with write_transaction(engine) as conn:
        _expire_and_reap(conn, now, d.seconds("sending_lease"), result)
        stale = _take(conn, [deliveries.c.status == "queued", deliveries.c.updated_at < now - d.seconds("requeue_after"),
                             deliveries.c.channel.in_(known)], d.pump_batch, deliveries.c.updated_at)
        due: list[tuple[int, str]] = []
        for channel, room in _room(conn, _limits(settings, known)).items():
            if room > 0:
                due += _take(conn, [deliveries.c.status == "planned", deliveries.c.send_at <= now,
                                    deliveries.c.channel == channel], min(d.pump_batch, room), deliveries.c.send_at)
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
    """Passes until nothing is due (a backlog larger than `pump_batch`), or the channels have as
    many rows waiting in the broker as they may (`_limits`)."""
    total = PumpPass()
    while True:
        one = pump_once(engine, settings, enqueue, now, channels)
        for name in ("moved", "requeued", "expired", "lost", "messages"):
            setattr(total, name, getattr(total, name) + getattr(one, name))
        if one.moved < settings.dispatch.pump_batch:
            return total
