"""The worker's side of delivery (SPEC 8): claim ledger rows, check the policy again, send, record.

At most once towards the customer rests on three rules:
- a row is claimed (`queued` → `sending`, attempts + 1) in a transaction before any byte leaves;
  a broker message whose rows are no longer `queued` (a redelivery, a duplicate from the pump's
  re-enqueue) finds nothing to claim and is dropped;
- rows are claimed a channel's `parallel` at a time, right before they are sent together, so a
  worker killed mid-send leaves only messages that were really in flight as `sending`; the pump
  turns those into `unknown` after the lease (never a second message);
- a transient failure goes back to the ledger as `planned` with a backoff, and the pump brings it
  back: retries survive the loss of the broker's data and go through the same re-check (a retry
  that slipped into the night waits for the morning).

The result of one chunk is recorded in the same transaction that claims the next one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time as clock
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from channels.base import Channel, LedgerChannel, Message, Outcome, SendResult
from orchestrator.policy.caps import Sent, longest_window
from orchestrator.policy.consent import recipient_of
from orchestrator.policy.decide import PolicyContext
from orchestrator.policy.recheck import DEFER, SEND, Due, Verdict, recheck
from orchestrator.ratelimit import RateGate
from orchestrator.settings import Settings
from orchestrator.storage.engine import write_transaction
from orchestrator.storage.locks import lock_customers
from orchestrator.storage.schema import customers, deliveries

log = logging.getLogger("orchestrator.dispatch")

GONE_STATES = ("sending", "sent", "unknown")
_CUSTOMER_COLUMNS = (
    "id", "email", "phone", "phone_invalid", "manager", "consent_sms", "consent_email", "consent_phone",
    "unsubscribed_sms", "unsubscribed_email", "unsubscribed_phone", "zones", "zone_source", "phone_cap_days",
)
# The worker finds its rows by id, and the customers' history by customer, never through the status
# index: statistics taken while a fresh backlog was all `planned` (autovacuum behind, or off) make
# PostgreSQL expect no `queued` or `sent` row and walk ix_deliveries_due over every one of them
# instead, for every chunk (0.5 s with 500,000 rows queued, docs/LOAD.md).  `status || ''` is the
# same value with no index on it.
_STATUS = deliveries.c.status.concat("")
# Built once: the claim runs for every few messages, and building a statement costs as much as
# running it on a warm database.
_CLAIM_COLUMNS = ("id", "campaign", "customer_id", "channel", "category", "expires_at", "attempts", "zone",
                  "zone_source", "payload")
_QUEUED = (
    sa.select(*(deliveries.c[name] for name in _CLAIM_COLUMNS))
    .where(deliveries.c.id.in_(sa.bindparam("ids", expanding=True)), _STATUS == "queued")
    .order_by(deliveries.c.id)
)
_QUEUED_LOCKED = _QUEUED.with_for_update(skip_locked=True)
_PEOPLE = sa.select(*(customers.c[name] for name in _CUSTOMER_COLUMNS)).where(
    customers.c.id.in_(sa.bindparam("ids", expanding=True))
)
_GONE = sa.select(deliveries.c.customer_id, deliveries.c.channel, deliveries.c.category, deliveries.c.send_at).where(
    deliveries.c.customer_id.in_(sa.bindparam("ids", expanding=True)),
    deliveries.c.channel.in_(sa.bindparam("channels", expanding=True)),
    _STATUS.in_(GONE_STATES),
    deliveries.c.send_at > sa.bindparam("since"),
)
_PG_TYPES = {
    "status": "text", "send_at": "bigint", "attempts": "integer", "updated_at": "bigint", "detail": "text",
    "reason": "text", "sent_at": "bigint", "provider_id": "text", "error": "text",
}


@dataclass(frozen=True)
class RetryPolicy:
    base: int
    ceiling: int
    max_attempts: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "RetryPolicy":
        d = settings.dispatch
        return cls(d.seconds("retry_base"), d.seconds("retry_max"), d.max_attempts)

    def delay(self, attempts: int) -> int:
        """Exponential backoff with jitter: concurrent failures do not come back in one wave."""
        step = min(self.ceiling, self.base * 2 ** max(0, attempts - 1))
        return max(1, round(step * random.uniform(0.5, 1.5)))


@dataclass
class Claimed:
    """A row this worker now owns and is about to send."""

    id: int
    attempts: int
    expires_at: int
    message: Message


@dataclass
class Tally:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    unknown: int = 0
    deferred: int = 0
    suppressed: int = 0
    dropped: int = 0


class Dispatcher:
    """Delivers the rows of broker messages through the channels; one per worker process."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        channels: Mapping[str, Channel],
        loop: asyncio.AbstractEventLoop,
        *,
        rate_gate: "RateGate | None" = None,
        now: Callable[[], float] = clock.time,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.channels = dict(channels)
        self.loop = loop
        self.rate_gate = rate_gate
        self.now = now
        self.ctx = PolicyContext.from_settings(settings)
        self.retry = RetryPolicy.from_settings(settings)
        self.opened: set[str] = set()

    # --- the unit of work: one broker message ---------------------------------------------------

    def deliver(self, channel_name: str, ids: Sequence[int]) -> Tally:
        """Claim, send and record the rows in chunks, the ledger work of one chunk overlapping the
        sending of the previous one: the channel's connections stay busy while the thread waits on
        the database, and at most two chunks per thread are claimed and not yet recorded."""
        channel = self.channels.get(channel_name)
        tally = Tally()
        if channel is None:
            log.error("no channel %r is configured: %d rows left queued", channel_name, len(ids))
            return tally
        self._open(channel)
        step = max(1, channel.parallel)
        burst = self.rate_gate.burst(channel_name) if self.rate_gate is not None else None
        if burst is not None:
            step = min(step, burst)
        done: list[tuple[Claimed, SendResult]] = []
        in_flight: tuple[list[Claimed], Future] | None = None
        for start in range(0, len(ids), step):
            chunk = list(ids[start:start + step])
            if self.rate_gate is not None and not isinstance(channel, LedgerChannel):
                self.rate_gate(channel_name, len(chunk))
            claimed = self._record_and_claim(channel, done, chunk, tally)
            done = _collect(in_flight)
            in_flight = self._submit(channel, claimed) if claimed else None
        done += _collect(in_flight)
        if done:
            self._record_and_claim(channel, done, [], tally)
        return tally

    def run_async(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def _open(self, channel: Channel) -> None:
        if channel.name not in self.opened:
            self.run_async(channel.open())
            self.opened.add(channel.name)

    def close(self) -> None:
        for name in list(self.opened):
            try:
                self.run_async(self.channels[name].close())
            except Exception:  # noqa: BLE001 - closing must not hide the shutdown
                log.exception("closing channel %s failed", name)
        self.opened.clear()

    # --- sending -------------------------------------------------------------------------------

    def _submit(self, channel: Channel, claimed: list[Claimed]) -> tuple[list[Claimed], Future]:
        return claimed, asyncio.run_coroutine_threadsafe(_send_all(channel, [c.message for c in claimed]), self.loop)

    # --- the ledger ----------------------------------------------------------------------------

    def _record_and_claim(
        self, channel: Channel, results: list[tuple[Claimed, SendResult]], ids: list[int], tally: Tally
    ) -> list[Claimed]:
        now = int(self.now())
        with write_transaction(self.engine) as conn:
            if results:
                self._record(conn, results, now, tally)
            if not ids:
                return []
            return self._claim(conn, channel, ids, now, tally)

    def _claim(self, conn: Connection, channel: Channel, ids: list[int], now: int, tally: Tally) -> list[Claimed]:
        query = _QUEUED_LOCKED if conn.dialect.name == "postgresql" else _QUEUED
        rows = list(conn.execute(query, {"ids": ids}).mappings())
        tally.dropped += len(ids) - len(rows)
        if not rows:
            return []
        customer_ids = sorted({row["customer_id"] for row in rows})
        lock_customers(conn, customer_ids)
        people = {row["id"]: row for row in conn.execute(_PEOPLE, {"ids": customer_ids}).mappings()}
        gone = self._gone(conn, customer_ids, {row["channel"] for row in rows}, now, list(people.values()))
        claimed: list[Claimed] = []
        updates: list[dict[str, Any]] = []
        for row in rows:
            person = people.get(row["customer_id"])
            recipient = recipient_of(person) if person is not None else None
            expires_at = row["expires_at"] if row["expires_at"] is not None else now + 86400
            due = Due(row["channel"], row["category"], expires_at, row["zone"] or self.ctx.default_zone,
                      row["zone_source"] or "default")
            history = gone.setdefault(row["customer_id"], [])
            verdict = recheck(due, recipient, history, now, self.ctx)
            if verdict.action == SEND:
                history.append(Sent(row["channel"], row["category"], now))
                message = _message(row)
                if isinstance(channel, LedgerChannel):
                    result = channel.deliver_in(conn, message, now, self.ctx)
                    updates.append(self._outcome_values(row["id"], row["attempts"] + 1, row["expires_at"], result, now, tally))
                    continue
                updates.append({"_id": row["id"], "status": "sending", "send_at": now,
                                "attempts": row["attempts"] + 1, "updated_at": now})
                claimed.append(Claimed(row["id"], row["attempts"] + 1, expires_at, message))
            else:
                updates.append(self._verdict_values(row["id"], verdict, now, tally))
        tally.claimed += len(claimed)
        _apply(conn, updates, ("queued",))
        return claimed

    def _gone(
        self, conn: Connection, customer_ids: list[str], channel_names: set[str], now: int,
        people: list[Mapping[str, Any]],
    ) -> dict[str, list[Sent]]:
        """The customers' messages that already went out within the longest cap window."""
        since = now - longest_window(self.ctx.caps, (person.get("phone_cap_days") for person in people))
        params = {"ids": customer_ids, "channels": sorted(channel_names), "since": since}
        gone: dict[str, list[Sent]] = {}
        for customer_id, channel, category, send_at in conn.execute(_GONE, params):
            gone.setdefault(customer_id, []).append(Sent(channel, category, send_at))
        return gone

    def _verdict_values(self, row_id: int, verdict: Verdict, now: int, tally: Tally) -> dict[str, Any]:
        if verdict.action == DEFER:
            tally.deferred += 1
            return {"_id": row_id, "status": "planned", "send_at": verdict.at, "detail": verdict.detail,
                    "updated_at": now}
        tally.suppressed += 1
        return {"_id": row_id, "status": "suppressed", "reason": verdict.reason, "detail": verdict.detail,
                "updated_at": now}

    def _record(self, conn: Connection, results: list[tuple[Claimed, SendResult]], now: int, tally: Tally) -> None:
        updates = [
            self._outcome_values(claimed.id, claimed.attempts, claimed.expires_at, result, now, tally)
            for claimed, result in results
        ]
        # A row the pump declared `unknown` (lease over) still gets the outcome we now know.
        _apply(conn, updates, ("sending", "unknown"))

    def _outcome_values(
        self, row_id: int, attempts: int, expires_at: int | None, result: SendResult, now: int, tally: Tally
    ) -> dict[str, Any]:
        values: dict[str, Any] = {"_id": row_id, "updated_at": now, "attempts": attempts}
        if result.outcome is Outcome.SENT:
            tally.sent += 1
            values.update(status="sent", sent_at=now, provider_id=result.provider_id, error=None)
        elif result.outcome is Outcome.PERMANENT:
            tally.failed += 1
            values.update(status="failed", error=result.reason)
        elif result.outcome is Outcome.UNKNOWN:
            tally.unknown += 1
            values.update(status="unknown", error=result.reason)
        else:
            retry_at = now + self.retry.delay(attempts)
            if attempts >= self.retry.max_attempts or (expires_at is not None and retry_at >= expires_at):
                tally.failed += 1
                why = "attempts" if attempts >= self.retry.max_attempts else "time to deliver"
                values.update(status="failed", error=f"gave up (out of {why}) after {attempts}: {result.reason}")
            else:
                tally.retried += 1
                values.update(status="planned", send_at=retry_at, error=result.reason)
        return values


def _apply(conn: Connection, updates: list[dict[str, Any]], from_states: tuple[str, ...]) -> None:
    """Grouped by the set of columns, one statement each; only rows still in `from_states`."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for values in updates:
        groups.setdefault(tuple(sorted(values)), []).append(values)
    for keys, batch in groups.items():
        if conn.dialect.name == "postgresql":
            _apply_unnest(conn, keys, batch, from_states)
            continue
        columns = {key: sa.bindparam(f"v_{key}") for key in keys if key != "_id"}
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id == sa.bindparam("v__id"), sa.or_(*(deliveries.c.status == s for s in from_states)))
            .values(columns),
            [{f"v_{key}": value for key, value in values.items()} for values in batch],
        )


def _apply_unnest(conn: Connection, keys: tuple[str, ...], batch: list[dict[str, Any]], from_states: tuple[str, ...]) -> None:
    """PostgreSQL: one UPDATE for the whole group, its values passed as arrays (one round trip)."""
    columns = [key for key in keys if key != "_id"]
    arrays = ", ".join(["CAST(:v__id AS bigint[])", *(f"CAST(:v_{c} AS {_PG_TYPES[c]}[])" for c in columns)])
    states = ", ".join(f"'{state}'" for state in from_states)
    sql = (
        f"UPDATE deliveries AS d SET {', '.join(f'{c} = v.{c}' for c in columns)} "
        f"FROM unnest({arrays}) AS v(id, {', '.join(columns)}) WHERE d.id = v.id AND (d.status || '') IN ({states})"
    )
    params = {f"v_{key}": [values[key] for values in batch] for key in keys}
    conn.execute(sa.text(sql), params)


def _message(row: Mapping[str, Any]) -> Message:
    payload = row["payload"] or {}
    return Message(
        ref=str(row["id"]),
        channel=row["channel"],
        customer_id=row["customer_id"],
        address=str(payload.get("address") or row["customer_id"]),
        content=payload,
        campaign=row["campaign"],
        zone=row["zone"] or "",
        zone_source=row["zone_source"] or "",
    )


def _collect(in_flight: tuple[list[Claimed], Future] | None) -> list[tuple[Claimed, SendResult]]:
    if in_flight is None:
        return []
    claimed, future = in_flight
    return list(zip(claimed, future.result()))


async def _send_one(channel: Channel, message: Message) -> SendResult:
    try:
        return await channel.send(message)
    except Exception as error:  # noqa: BLE001 - a broken channel must not lose track of the row
        log.exception("channel %s raised while sending %s", channel.name, message.ref)
        return SendResult.unknown(f"the channel failed unexpectedly: {type(error).__name__}: {error}")


async def _send_all(channel: Channel, messages: list[Message]) -> list[SendResult]:
    return list(await asyncio.gather(*(_send_one(channel, m) for m in messages)))
