"""Per-channel send rates (`rate = "30/s"`, SPEC 8) shared by every worker process.

dramatiq's bucket limiter over Redis does the counting, with short buckets (about a tenth of a
second) so that sends are spread evenly instead of bursting at the start of each second; each
send takes one slot before its row is claimed, so a worker waiting for the rate holds no row.  The limiter lives where the
processes meet: the Redis broker itself, else `[broker] rate_limit_url`; with the in-process
broker (one process) a local counter is exact.  These limits are about the provider's throughput,
never about customers: frequency caps live in the ledger.
"""

from __future__ import annotations

import time
from fractions import Fraction
from typing import Mapping

import math

from dramatiq.rate_limits import BucketRateLimiter
from dramatiq.rate_limits.backends import StubBackend

from orchestrator.errors import ConfigError

_UNIT = {"s": 1, "m": 60, "h": 3600}
KEY_PREFIX = "orchestrator-rate-"


def parse_rate(text: str) -> tuple[int, int]:
    """`30/s` → (30 sends, per 1 s); `1.5/s` → (3, 2); `100/m` → (100, 60)."""
    number, _, unit = text.replace(" ", "").partition("/")
    if unit not in _UNIT:
        raise ConfigError(f"'{text}' is not a rate like 30/s, 100/m or 1000/h")
    try:
        per_unit = Fraction(number).limit_denominator(3600)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"'{text}' is not a rate like 30/s, 100/m or 1000/h") from None
    if per_unit <= 0:
        raise ConfigError(f"'{text}': a rate must be positive")
    return per_unit.numerator, per_unit.denominator * _UNIT[unit]


def _backend(url: str | None):  # type: ignore[no-untyped-def]
    if url and url.startswith(("redis://", "rediss://")):
        from dramatiq.rate_limits.backends import RedisBackend

        return RedisBackend(url=url)
    return StubBackend()


def buckets(limit: int, window: int) -> tuple[int, int]:
    """(slots per bucket, bucket in ms) for `limit` sends per `window` seconds, never faster."""
    per_second = limit / window
    slots = max(1, math.floor(per_second / 10))
    return slots, math.ceil(1000 * slots / per_second)


class RateGate:
    """`take(channel, n)` blocks until n sends of that channel fit its rate."""

    def __init__(self, rates: Mapping[str, str], url: str | None) -> None:
        backend = _backend(url) if rates else None
        self.limiters: dict[str, BucketRateLimiter] = {}
        self.pause: dict[str, float] = {}
        self.slots: dict[str, int] = {}
        for channel, text in rates.items():
            slots, bucket_ms = buckets(*parse_rate(text))
            self.limiters[channel] = BucketRateLimiter(backend, KEY_PREFIX + channel, limit=slots, bucket=bucket_ms)
            self.pause[channel] = min(0.02, bucket_ms / 4000)
            self.slots[channel] = slots

    def burst(self, channel: str) -> int | None:
        """How many sends may leave together: one bucket's worth (None: no limit).  The worker
        claims and sends no more than this at once, so slots taken are slots used right away."""
        return self.slots.get(channel)

    def __call__(self, channel: str, n: int) -> None:
        limiter = self.limiters.get(channel)
        if limiter is None:
            return
        for _ in range(n):
            while True:
                with limiter.acquire(raise_on_failure=False) as acquired:
                    if acquired:
                        break
                time.sleep(self.pause[channel])
