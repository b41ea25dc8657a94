"""The policy again, just before sending (SPEC 7 and 8): the world may have changed since planning.

Between the plan and the send, a customer may unsubscribe, a retry may slip into the night, the
message may outlive `deliver_within`, and another campaign's message may have gone out first.  The
worker asks `recheck` for every row it claims, inside the claim's transaction, and does what it says.

Choices where the SPEC is silent:
- A message must not only start outside quiet hours but stay outside them while it is in flight:
  `FLIGHT` seconds after the claim must be allowed too, so a send claimed at 20:59:59 is deferred
  to the morning instead of reaching the phone at 21:00:01.
- Caps are checked against the messages that have already gone out (sending, sent, unknown), at
  the moment of sending.  Sends of one customer are serialized by the claim, so every window holds
  at most N gone messages whatever the delays, retries and deferrals did to the plan.  A message a
  cap now refuses waits for its slot within `deliver_within`, else is suppressed `capped`.
- The zones are those the planner used: the customer's candidate zones, or the single default zone
  when the planner fell back to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from orchestrator.policy.caps import Sent, cap_allows, caps_for, next_cap_slot
from orchestrator.policy.consent import TRANSACTIONAL, Recipient, blocked_reason
from orchestrator.policy.decide import TRANSACTIONAL_QUIET_CHANNELS, PolicyContext, local_text
from orchestrator.policy.quiet_hours import is_quiet, next_allowed, zone_country

FLIGHT = 60  # seconds a message may take from the claim to the customer

SEND = "send"
DEFER = "defer"
SUPPRESS = "suppress"


@dataclass(frozen=True, slots=True)
class Due:
    """What the ledger row says about the message about to be sent."""

    channel: str
    category: str
    expires_at: int
    zone: str
    zone_source: str


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str  # send | defer | suppress
    at: int | None = None  # defer: when to try again
    reason: str | None = None  # suppress: the ledger reason
    detail: str = ""


def zones_for(due: Due, r: Recipient | None) -> tuple[str, ...]:
    if due.zone_source == "default" or r is None or not r.zones:
        return (due.zone,)
    return r.zones


def _quiet_channel(due: Due) -> str:
    if due.category == TRANSACTIONAL and due.channel not in TRANSACTIONAL_QUIET_CHANNELS:
        return "-"
    return due.channel


def _quiet_anywhere(channel: str, t: int, zones: Sequence[str], ctx: PolicyContext) -> bool:
    return any(
        is_quiet(channel, t, zone, ctx.quiet, zone_country(zone) or ctx.default_country) for zone in zones
    )


def recheck(due: Due, r: Recipient | None, gone: Sequence[Sent], now: int, ctx: PolicyContext) -> Verdict:
    """Send now, wait until `at`, or suppress; `gone` is the customer's messages already sent."""
    if now >= due.expires_at:
        return Verdict(SUPPRESS, reason="expired", detail=f"not sent by {local_text(due.expires_at, due.zone)}")
    if r is None:
        return Verdict(SUPPRESS, reason="no_contact", detail="the customer no longer exists")
    reason = blocked_reason(due.channel, due.category, r)
    if reason is not None:
        return Verdict(SUPPRESS, reason=reason, detail=f"{reason} at the time of sending")
    zones = zones_for(due, r)
    channel = _quiet_channel(due)
    if _quiet_anywhere(channel, now, zones, ctx) or _quiet_anywhere(channel, now + FLIGHT, zones, ctx):
        later = next_allowed(channel, now + FLIGHT, zones, ctx.quiet, ctx.default_country, due.expires_at)
        if later is None:
            until = local_text(due.expires_at, due.zone)
            return Verdict(SUPPRESS, reason="expired", detail=f"quiet hours until after {until}")
        return Verdict(DEFER, at=later, detail=f"quiet hours at sending time, deferred to {local_text(later, due.zone)}")
    caps = caps_for(due.channel, due.category, ctx.caps, r.phone_cap_days)
    if caps and not cap_allows(caps, gone, due.channel, now):
        slot = next_cap_slot(caps, gone, due.channel, now, due.expires_at)
        if slot is None:
            return Verdict(SUPPRESS, reason="capped", detail="another message went out first")
        return Verdict(DEFER, at=slot, detail=f"capped at sending time until {local_text(slot, due.zone)}")
    return Verdict(SEND)
