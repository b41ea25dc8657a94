"""The dramatiq broker of `[broker] url` and one actor per channel, each on its own queue.

A broker message carries the ids of up to `message_batch` ledger rows of one channel: the ledger
row, not the message, is the unit of delivery and idempotency (dispatch.py), so batching costs no
guarantee and saves the broker's per-message overhead.  Messages are never delayed in the broker:
deferrals wait in the ledger (pump.py).  dramatiq's Retries middleware is left out for the same
reason: a transient failure goes back to the ledger with its backoff.
"""

from __future__ import annotations

import os
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


METRICS_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "dramatiq_prom_db")


def metrics_directory(configured: str | os.PathLike[str] | None = None) -> str | None:
    """Where worker metrics go: the setting (`[web] metrics_dir`), else the environment, else off."""
    if configured:
        return str(configured)
    for variable in METRICS_ENV:
        if os.environ.get(variable):
            return os.environ[variable]
    return None


def worker_metrics(directory: str) -> dramatiq.Middleware:
    """dramatiq's Prometheus middleware, writing prometheus_client multiprocess files into `directory`.

    The web app's `/metrics` collects those files (orchestrator/web/metrics.py), so the middleware's own
    exposition server (port 9191, started only by dramatiq's command line) is not used.  Our workers run
    `dramatiq.Worker` in process, which emits `worker_boot` but not `process_boot`: the metrics are set
    up at `worker_boot` then.
    """
    os.makedirs(directory, exist_ok=True)
    os.environ["dramatiq_prom_db"] = directory
    from dramatiq.middleware import prometheus as dramatiq_prometheus

    dramatiq_prometheus.DB_PATH = directory  # read by the middleware at boot and at shutdown

    class WorkerMetrics(dramatiq_prometheus.Prometheus):
        @property
        def forks(self) -> list:  # no exposition server: /metrics of the web app serves these
            return []

        def after_process_boot(self, broker: dramatiq.Broker) -> None:
            if hasattr(self, "total_messages"):
                return
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
            from prometheus_client import values

            if not getattr(values.ValueClass, "_multiprocess", False):
                # prometheus_client was imported before the variable was set: switch to files.
                values.ValueClass = values.MultiProcessValue()
            super().after_process_boot(broker)

        def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
            self.after_process_boot(broker)

    return WorkerMetrics()


def _middleware(metrics_dir: str | None = None) -> list:
    middleware = [AgeLimit(), TimeLimit(time_limit=TIME_LIMIT_MS), ShutdownNotifications(), Callbacks(), Pipelines()]
    if metrics_dir:
        middleware.append(worker_metrics(metrics_dir))
    return middleware


def make_broker(url: str, *, metrics_dir: str | None = None) -> dramatiq.Broker:
    """`metrics_dir`: where dramatiq's Prometheus metrics go (default: `metrics_directory()`)."""
    middleware = _middleware(metrics_directory(metrics_dir))
    if url.startswith("memory://"):
        return StubBroker(middleware=middleware)
    if url.startswith(("redis://", "rediss://")):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=url, middleware=middleware)
    if url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url, middleware=middleware, confirm_delivery=True)
    raise ConfigError(f"'{url}' is not a broker url (memory://, redis://, amqp://)", field="broker.url")


class Queues:
    """The broker and its delivery actors; `handler` runs the actor's work in worker processes."""

    def __init__(self, url: str, channels: Iterable[str], *, metrics_dir: str | None = None) -> None:
        self.url = url
        self.broker = make_broker(url, metrics_dir=metrics_dir)
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
