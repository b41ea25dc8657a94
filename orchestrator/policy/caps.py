"""Frequency caps (SPEC 7): at most N messages in ANY rolling half-open window of length P.

A window [s, s + P) may lie anywhere, so a message planned in the future counts as much as one
sent in the past: a new message at t is allowed only if no window containing t would then hold
more than N messages.  With 1/30d, a message at T allows the next one from T + 30d exactly.

Which messages count (`Sent`) is the caller's business: planned, queued, sending, sent and unknown
deliveries of every campaign — a failed or suppressed one never reached the customer.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from orchestrator.settings import CapSpec

TRANSACTIONAL = "transactional"
DAY = 86400


@dataclass(frozen=True, slots=True)
class Cap:
    """`key` is a channel ("sms") or a channel and a category ("email.promo")."""

    key: str
    limit: int
    period: int


@dataclass(frozen=True, slots=True)
class Sent:
    """A message that counts against caps: planned, queued, sending, sent or unknown."""

    channel: str
    category: str
    at: int


def caps_for(
    channel: str, category: str, caps: Mapping[str, CapSpec], phone_cap_days: int | None
) -> tuple[Cap, ...]:
    """The caps a message of this channel and category must respect.

    A customer's `phone_cap_days` (a frequency agreed with them) replaces the phone channel cap by
    1 call per that many days; 0 means "no channel cap agreed" and removes it.  A category cap
    (`phone.promo`) still applies on top.  Transactional messages are exempt from every cap.
    """
    if category == TRANSACTIONAL:
        return ()
    found: list[Cap] = []
    if channel == "phone" and phone_cap_days is not None:
        if phone_cap_days > 0:
            found.append(Cap(channel, 1, phone_cap_days * DAY))
    elif (spec := caps.get(channel)) is not None:
        found.append(Cap(channel, spec.limit, spec.period_seconds))
    key = f"{channel}.{category}"
    if (spec := caps.get(key)) is not None:
        found.append(Cap(key, spec.limit, spec.period_seconds))
    return tuple(found)


def counts_for(cap: Cap, sent: Sent) -> bool:
    """A channel cap counts every non-transactional message of the channel; a category cap its own."""
    channel, _, category = cap.key.partition(".")
    if sent.channel != channel:
        return False
    return sent.category == category if category else sent.category != TRANSACTIONAL


def _times(cap: Cap, history: Sequence[Sent]) -> list[int]:
    channel, _, category = cap.key.partition(".")
    if category:
        return sorted(s.at for s in history if s.channel == channel and s.category == category)
    return sorted(s.at for s in history if s.channel == channel and s.category != TRANSACTIONAL)


def _fits(times: list[int], limit: int, period: int, t: int) -> bool:
    """Whether adding t to sorted `times` keeps every window of length `period` at <= limit."""
    lo = bisect_left(times, t - period + 1)
    hi = bisect_left(times, t + period)
    if hi - lo < limit:
        return True
    if limit == 1:
        return False
    # Only windows containing t matter; the fullest one starts at t or at a message in (t-P, t].
    starts = [x for x in times[lo:hi] if x <= t]
    starts.append(t)
    for start in starts:
        inside = bisect_left(times, start + period) - bisect_left(times, start)
        if inside + 1 > limit:
            return False
    return True


def cap_allows(caps: Sequence[Cap], history: Sequence[Sent], channel: str, t: int) -> bool:
    """Whether one more message on `channel` at t respects every cap in `caps`."""
    if not history:
        return all(cap.limit >= 1 for cap in caps)
    return all(_fits(_times(cap, history), cap.limit, cap.period, t) for cap in caps)


def next_cap_slot(
    caps: Sequence[Cap], history: Sequence[Sent], channel: str, t: int, until: int
) -> int | None:
    """The earliest t' >= t, t' < until, at which `cap_allows`; None if there is none.

    Going forward in time, a blocked moment can only become allowed when a counted message leaves
    the window, i.e. at x + P: those instants (and t itself) are the only candidates.
    """
    if cap_allows(caps, history, channel, t):
        return t if t < until else None
    candidates = sorted(
        {s.at + cap.period for cap in caps for s in history if counts_for(cap, s) and t < s.at + cap.period < until}
    )
    for candidate in candidates:
        if cap_allows(caps, history, channel, candidate):
            return candidate
    return None


def max_in_window(times: Sequence[int], period: int) -> int:
    """The largest number of `times` inside any half-open window of length `period`."""
    ordered = sorted(times)
    best = 0
    first = 0
    for last, at in enumerate(ordered):
        while at - ordered[first] >= period:
            first += 1
        best = max(best, last - first + 1)
    return best


def longest_window(caps: Mapping[str, CapSpec], phone_cap_days: Iterable[int | None]) -> int:
    """The longest cap window these customers can have (at least a day): how far back the
    messages that count against their caps may lie."""
    periods = [spec.period_seconds for spec in caps.values()]
    days = max((d or 0 for d in phone_cap_days), default=0)
    return max(periods + [days * DAY, DAY])
