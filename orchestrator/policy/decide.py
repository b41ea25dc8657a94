"""One recipient, one campaign run → the decisions of the contact policy (SPEC 6 and 7).

`decide` is pure: the planner gives it the recipient, the campaign's rules, the run's fire time, the
customer's counted messages of every campaign (`Sent`) and the settings, and writes what it returns.

Choices where the SPEC is silent (each one is what an ESP user would expect, and is tested):
- Several candidate zones with `local_time`: the desired moment is the LATEST of the per-zone
  occurrences, so nobody gets the message before their own local_time.
- Quiet hours then need a minute allowed in every candidate zone before `expires_at`; failing that
  (or with no candidate at all) the settings' default zone is used, zone_source "default" and a
  detail "local time unknown/uncertain, guessed <zone>".  A single known zone is never replaced: no
  allowed minute before expiry means `expired`.
- Transactional messages skip consent, unsubscription and caps but keep the quiet hours of SMS and
  phone (a night-time buzz annoys whatever the category); email and webhook go at once.
- `first` mode: a channel failing consent, contact, caps OR expiry is skipped for the next.  With
  `when_capped: defer`, the next channels are tried first; only when none can go without waiting is
  the first capped channel (in preference order) that can wait within `deliver_within` deferred.
- A cap deferral that cannot end before expiry is suppressed `capped` (the cause the marketer can act
  on), with "capped until <local time>" in the detail.
- `all` mode: each planned decision joins the history used for the next channel's caps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from functools import lru_cache
from typing import Any, Mapping, Sequence

from orchestrator.policy.caps import Cap, Sent, cap_allows, caps_for, next_cap_slot
from orchestrator.policy.consent import TRANSACTIONAL, Recipient, blocked_reason, contact_reason
from orchestrator.policy.quiet_hours import next_allowed, wall_instant, zone_info
from orchestrator.settings import CapSpec, QuietHoursSettings

PLANNED = "planned"
SUPPRESSED = "suppressed"
TRANSACTIONAL_QUIET_CHANNELS = frozenset({"sms", "phone"})
_FAR = 10 * 366 * 86400


@dataclass(frozen=True, slots=True)
class Rules:
    """What the campaign asks for."""

    campaign: str
    category: str
    channels: tuple[str, ...]
    channel_mode: str  # "first" | "all"
    local_time: time | None
    deliver_within: int  # seconds
    when_capped: str  # "suppress" | "defer"

    def __post_init__(self) -> None:
        """Campaign validation reports these to the marketer; here they are programming errors."""
        if not self.channels:
            raise ValueError(f"campaign {self.campaign}: no channel")
        if self.channel_mode not in ("first", "all"):
            raise ValueError(f"campaign {self.campaign}: channel_mode '{self.channel_mode}'")
        if self.when_capped not in ("suppress", "defer"):
            raise ValueError(f"campaign {self.campaign}: when_capped '{self.when_capped}'")


@dataclass(frozen=True)
class PolicyContext:
    caps: Mapping[str, CapSpec]
    quiet: QuietHoursSettings
    default_zone: str
    default_country: str

    @classmethod
    def from_settings(cls, settings: Any) -> "PolicyContext":
        return cls(
            caps=settings.caps,
            quiet=settings.quiet_hours,
            default_zone=settings.general.timezone,
            default_country=settings.general.country,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    channel: str
    status: str  # "planned" | "suppressed"
    reason: str | None
    send_at: int | None
    expires_at: int
    zone: str  # the zone used
    zone_source: str  # column | city | phone | default
    detail: str


# --- cached pieces ----------------------------------------------------------------------------

_caps_cache: dict[int, tuple[PolicyContext, dict[tuple[str, str, int | None], tuple[Cap, ...]]]] = {}


def _caps(ctx: PolicyContext, channel: str, category: str, phone_cap_days: int | None) -> tuple[Cap, ...]:
    entry = _caps_cache.get(id(ctx))
    if entry is None or entry[0] is not ctx:
        if len(_caps_cache) > 64:
            _caps_cache.clear()
        entry = _caps_cache[id(ctx)] = (ctx, {})
    key = (channel, category, phone_cap_days if channel == "phone" else None)
    found = entry[1].get(key)
    if found is None:
        found = entry[1][key] = caps_for(channel, category, ctx.caps, phone_cap_days)
    return found


@lru_cache(maxsize=65536)
def local_occurrence(at: time, zone: str, t: int) -> int:
    """The first instant >= t at which the clock in `zone` shows `at`; inside a DST gap, the first
    instant after the gap; inside an overlap, the first occurrence (if it is still >= t)."""
    tz = zone_info(zone)
    day = datetime.fromtimestamp(t, tz).date()
    for shift in range(4):
        found = wall_instant(tz, datetime.combine(day + timedelta(days=shift), at), t - 1)
        if found is not None:
            return found
    raise ValueError(f"{zone} never shows {at} after {t}")  # pragma: no cover - impossible in tzdb


def local_text(t: int, zone: str) -> str:
    """`2026-12-01 10:00` in the zone: how a marketer or a manager reads an instant."""
    return datetime.fromtimestamp(t, zone_info(zone)).strftime("%Y-%m-%d %H:%M")


# --- one channel ------------------------------------------------------------------------------


class _Evaluation:
    """The policy for one channel; holds the zone choice, which may fall back to the default."""

    __slots__ = (
        "r", "rules", "fire_at", "expires_at", "ctx", "channel", "zones", "zone", "source", "notes", "why"
    )

    def __init__(
        self, r: Recipient, rules: Rules, fire_at: int, expires_at: int, ctx: PolicyContext, channel: str
    ) -> None:
        self.r, self.rules, self.fire_at, self.expires_at, self.ctx = r, rules, fire_at, expires_at, ctx
        self.channel = channel
        self.notes: list[str] = []
        self.why = ""
        if r.zones:
            self.zones = r.zones
            self.zone = _representative(r.zones, ctx.default_zone)
            self.source = r.zone_source
            if r.zone_source == "default":
                self.notes.append(f"local time unknown, guessed {self.zone}")
            elif len(r.zones) > 1:
                self.notes.append(
                    f"{len(r.zones)} candidate zones ({r.zone_source}): a minute allowed in all of them"
                )
        else:
            self._guess("local time unknown")

    def _guess(self, why: str) -> None:
        self.notes = [note for note in self.notes if "candidate zones" not in note]
        self.zones = (self.ctx.default_zone,)
        self.zone = self.ctx.default_zone
        self.source = "default"
        self.notes.append(f"{why}, guessed {self.ctx.default_zone}")

    def decision(self, status: str, reason: str | None, send_at: int | None, why: str = "") -> Decision:
        """`why` explains the outcome for this channel; the zone notes are kept apart from it."""
        self.why = why
        detail = "; ".join([*self.notes, why] if why else self.notes)
        return Decision(
            self.channel, status, reason, send_at, self.expires_at, self.zone, self.source, detail
        )

    def _desired(self, base: int) -> int:
        """`base`, or with local_time its next occurrence (the latest over the candidate zones)."""
        at = self.rules.local_time
        if at is None:
            return base
        return max(local_occurrence(at, zone, base) for zone in self.zones)

    def _timed(self, base: int) -> int | None:
        """First allowed minute from the desired moment; may switch uncertain zones to the default."""
        if self.rules.category == TRANSACTIONAL and self.channel not in TRANSACTIONAL_QUIET_CHANNELS:
            quiet_channel = "-"  # no quiet hours for this channel
        else:
            quiet_channel = self.channel
        ctx = self.ctx
        found = next_allowed(
            quiet_channel, self._desired(base), self.zones, ctx.quiet, ctx.default_country, self.expires_at
        )
        if found is None and len(self.zones) > 1:
            count = len(self.zones)
            self._guess(f"local time uncertain ({count} candidate zones, no common allowed minute)")
            found = next_allowed(
                quiet_channel, self._desired(base), self.zones, ctx.quiet, ctx.default_country, self.expires_at
            )
        return found

    def run(self, history: Sequence[Sent], defer: bool) -> Decision:
        r, rules = self.r, self.rules
        reason = blocked_reason(self.channel, rules.category, r)
        if reason is not None:
            return self.decision(SUPPRESSED, reason, None)
        send = self._timed(self.fire_at)
        if send is None:
            until = local_text(self.expires_at, self.zone)
            return self.decision(SUPPRESSED, "expired", None, f"no minute outside quiet hours before {until}")
        caps = _caps(self.ctx, self.channel, rules.category, r.phone_cap_days)
        if not caps or cap_allows(caps, history, self.channel, send):
            return self.decision(PLANNED, None, send)
        if not defer:
            return self._capped(caps, history, send)
        while True:
            slot = next_cap_slot(caps, history, self.channel, send, self.expires_at)
            if slot is None:
                return self._capped(caps, history, send, past_expiry=True)
            later = self._timed(slot)
            if later is None:
                return self._capped(caps, history, send, past_expiry=True)
            if cap_allows(caps, history, self.channel, later):
                return self.decision(PLANNED, None, later, f"capped until {local_text(slot, self.zone)}, deferred")
            send = later

    def _capped(self, caps: Sequence[Cap], history: Sequence[Sent], t: int, past_expiry: bool = False) -> Decision:
        slot = next_cap_slot(caps, history, self.channel, t, t + _FAR)
        text = f"capped until {local_text(slot, self.zone)}" if slot is not None else "capped"
        if past_expiry:
            text += f", after expiry ({local_text(self.expires_at, self.zone)})"
        return self.decision(SUPPRESSED, "capped", None, text)


def _representative(zones: tuple[str, ...], default_zone: str) -> str:
    """The zone shown for a candidate set: the default zone when it is a candidate, else the first."""
    return default_zone if default_zone in zones else zones[0]


# --- the decision -----------------------------------------------------------------------------


def decide(
    r: Recipient, rules: Rules, fire_at: int, history: Sequence[Sent], ctx: PolicyContext
) -> list[Decision]:
    """The decisions for one recipient: one in `first` mode, one per channel in `all` mode."""
    expires_at = fire_at + rules.deliver_within
    defer = rules.when_capped == "defer"
    if rules.channel_mode == "all":
        decisions = []
        counted = list(history)
        for channel in rules.channels:
            decision = _Evaluation(r, rules, fire_at, expires_at, ctx, channel).run(counted, defer)
            decisions.append(decision)
            if decision.status == PLANNED and decision.send_at is not None:
                counted.append(Sent(channel, rules.category, decision.send_at))
        return decisions
    refused: list[tuple[_Evaluation, Decision]] = []
    for channel in rules.channels:
        evaluation = _Evaluation(r, rules, fire_at, expires_at, ctx, channel)
        decision = evaluation.run(history, False)
        if decision.status == PLANNED:
            return [_after_skipping(decision, refused)]
        refused.append((evaluation, decision))
    if defer:
        for index, (_, decision) in enumerate(refused):
            if decision.reason == "capped":
                evaluation = _Evaluation(r, rules, fire_at, expires_at, ctx, decision.channel)
                waited = evaluation.run(history, True)
                if waited.status == PLANNED:
                    return [_after_skipping(waited, refused[:index])]
                refused[index] = (evaluation, waited)
    return [_summary(refused)]


def _after_skipping(decision: Decision, refused: list[tuple[_Evaluation, Decision]]) -> Decision:
    """A message on a later channel says why the earlier ones were passed over."""
    if not refused:
        return decision
    skipped = ", ".join(f"{d.channel}: {d.reason}" for _, d in refused)
    detail = f"skipped {skipped}" + (f"; {decision.detail}" if decision.detail else "")
    return replace(decision, detail=detail)


def _reason_text(reason: str, why: str) -> str:
    if not why or why.startswith(reason):
        return why or reason
    return f"{reason} ({why})"


def _summary(refused: list[tuple[_Evaluation, Decision]]) -> Decision:
    """One suppressed decision on the first channel, with its reason, and every channel's reason."""
    evaluation, first = refused[0]
    parts = [f"{d.channel}: {_reason_text(d.reason or '', e.why)}" for e, d in refused]
    notes = list(dict.fromkeys(note for e, _ in refused for note in e.notes))
    return Decision(
        first.channel,
        SUPPRESSED,
        first.reason,
        None,
        first.expires_at,
        first.zone,
        first.zone_source,
        "; ".join(parts + notes),
    )


def policy_key(r: Recipient, channels: Sequence[str]) -> tuple[object, ...]:
    """Everything `decide` reads of a recipient.  Two recipients with equal keys and the same
    contact history get the same decisions, whoever they are."""
    return (
        r.consent, r.unsubscribed, tuple(contact_reason(channel, r) for channel in channels),
        r.zones, r.zone_source, r.phone_cap_days,
    )


class DecisionCache:
    """`decide` for one run: recipients without history share decisions by `policy_key`.

    Most recipients of a campaign have no message in the cap windows, and the decision for them
    depends on a handful of facts (consent, contact validity, candidate zones): computing it once
    per combination instead of once per recipient is what lets the planner keep up.
    """

    MAX_ENTRIES = 100_000

    def __init__(self, rules: Rules, fire_at: int, ctx: PolicyContext) -> None:
        self.rules = rules
        self.fire_at = fire_at
        self.ctx = ctx
        self._decisions: dict[tuple[object, ...], list[Decision]] = {}

    def decide(self, r: Recipient, history: Sequence[Sent]) -> list[Decision]:
        if history:
            return decide(r, self.rules, self.fire_at, history, self.ctx)
        key = policy_key(r, self.rules.channels)
        decisions = self._decisions.get(key)
        if decisions is None:
            if len(self._decisions) >= self.MAX_ENTRIES:
                self._decisions.clear()
            decisions = self._decisions[key] = decide(r, self.rules, self.fire_at, (), self.ctx)
        return decisions
