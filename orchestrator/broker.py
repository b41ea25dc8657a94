"""The dramatiq broker of `[broker] url` and one actor per channel, each on its own queue.

A broker message carries the ids of up to `message_batch` ledger rows of one channel: the ledger
row, not the message, is the unit of delivery and idempotency (dispatch.py), so batching costs no
guarantee and saves the broker's per-message overhead.  Messages are never delayed in the broker:
deferrals wait in the ledger (pump.py).  dramatiq's Retries middleware is left out for the same
reason: a transient failure goes back to the ledger with its backoff.
"""

from __future__ import annotations

from typing import Callable, Iterable

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, ShutdownNotifications, TimeLimit

from orchestrator.errors import ConfigError

ACTOR_PREFIX = "deliver_"
# A batch whose sends hang is cut off by each channel's own timeouts; the broker's time limit only
# guards against a stuck thread and must never interrupt a send that is in flight.
TIME_LIMIT_MS = 60 * 60 * 1000

Handler = Callable[[str, list[int]], object]


def _middleware() -> list:
    return [AgeLimit(), TimeLimit(time_limit=TIME_LIMIT_MS), ShutdownNotifications(), Callbacks(), Pipelines()]


def make_broker(url: str) -> dramatiq.Broker:
    if url.startswith("memory://"):
        return StubBroker(middleware=_middleware())
    if url.startswith(("redis://", "rediss://")):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=url, middleware=_middleware())
    if url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url, middleware=_middleware(), confirm_delivery=True)
    raise ConfigError(f"'{url}' is not a broker url (memory://, redis://, amqp://)", field="broker.url")


class Queues:
    """The broker and its delivery actors; `handler` runs the actor's work in worker processes."""

    def __init__(self, url: str, channels: Iterable[str]) -> None:
        self.url = url
        self.broker = make_broker(url)
        self.handler: Handler | None = None
        self.actors = {name: self._declare(name) for name in sorted(channels)}

    @property
    def in_process(self) -> bool:
        return self.url.startswith("memory://")

    def _declare(self, channel: str) -> dramatiq.Actor:
        def deliver(ids: list[int]) -> None:
            if self.handler is None:
                raise RuntimeError("this process does not deliver (no dispatcher)")
            self.handler(channel, ids)

        return dramatiq.actor(
            deliver, broker=self.broker, actor_name=f"{ACTOR_PREFIX}{channel}", queue_name=channel,
            time_limit=TIME_LIMIT_MS,
        )

    def enqueue(self, channel: str, ids: list[int]) -> None:
        self.actors[channel].send(ids)

    def close(self) -> None:
        self.broker.close()
