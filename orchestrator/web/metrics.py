"""Prometheus `/metrics`: the ledger and the call tasks as gauges, plus the workers' dramatiq metrics.

The ledger figures are read from the database at scrape time (one grouped query each, cached for
`CACHE_SECONDS` so that several scrapers cost one query), so every web process answers the same
numbers, whichever process or machine did the work:

* `orchestrator_deliveries{channel,status}` — ledger rows per channel and state;
* `orchestrator_deliveries_due{channel}` — rows `planned` whose send time has come (pump backlog);
* `orchestrator_call_tasks{status}`, `orchestrator_call_tasks_overdue{manager}` — call tasks, and
  the open ones whose due window has ended, per manager;
* `orchestrator_runs{status}` — campaign runs;
* `orchestrator_database_up` — 1 when the last scrape could read the database.

The workers' metrics come from dramatiq's Prometheus middleware (enabled in orchestrator/broker.py
when a metrics directory is configured): each worker process writes prometheus_client's
multiprocess files (`dramatiq_messages_total`, `dramatiq_message_errors_total`,
`dramatiq_messages_inprogress`, `dramatiq_message_duration_milliseconds`, ...) into that directory,
and a `MultiProcessCollector` here sums them across processes at scrape time.  The directory is
`[web] metrics_dir`, else `$PROMETHEUS_MULTIPROC_DIR`, else `$dramatiq_prom_db`; it must be the same
path for the workers and the web app (one machine, or a shared volume).
"""

from __future__ import annotations

import logging
import os
import threading
import time as clock
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from orchestrator.settings import Settings
from orchestrator.storage.schema import call_tasks, deliveries, runs

log = logging.getLogger("orchestrator.web")
CACHE_SECONDS = 5.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def metrics_dir(settings: Settings) -> Path | None:
    """Where the workers' multiprocess metric files are, if configured."""
    configured = settings.web.metrics_dir
    if configured:
        return settings.resolve(configured)
    for variable in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "dramatiq_prom_db"):
        if os.environ.get(variable):
            return Path(os.environ[variable])
    return None


class LedgerCollector(Collector):
    def __init__(self, engine: Engine, now: Any = clock.time) -> None:
        self.engine = engine
        self.now = now
        self._cache: tuple[float, list[GaugeMetricFamily]] | None = None
        self._lock = threading.Lock()

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # collected at scrape time; nothing to describe at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if self._cache is None or clock.monotonic() - self._cache[0] > CACHE_SECONDS:
                self._cache = (clock.monotonic(), self._read())
            families = self._cache[1]
        yield from families

    def _read(self) -> list[GaugeMetricFamily]:
        up = GaugeMetricFamily("orchestrator_database_up", "1 when the database answered the last scrape")
        try:
            families = self._query(int(self.now()))
        except Exception as error:  # noqa: BLE001 - a scrape reports the database down, never fails
            log.warning("metrics: the database did not answer: %s", type(error).__name__)
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *families]

    def _query(self, now: int) -> list[GaugeMetricFamily]:
        by_state = GaugeMetricFamily(
            "orchestrator_deliveries", "Ledger rows per channel and state", labels=["channel", "status"]
        )
        due = GaugeMetricFamily(
            "orchestrator_deliveries_due", "Planned rows whose send time has come (pump backlog)", labels=["channel"]
        )
        tasks = GaugeMetricFamily("orchestrator_call_tasks", "Call tasks per state", labels=["status"])
        overdue = GaugeMetricFamily(
            "orchestrator_call_tasks_overdue", "Open call tasks whose due window has ended", labels=["manager"]
        )
        run_states = GaugeMetricFamily("orchestrator_runs", "Campaign runs per state", labels=["status"])
        with self.engine.connect() as conn:
            for channel, status, count in conn.execute(
                sa.select(deliveries.c.channel, deliveries.c.status, sa.func.count())
                .group_by(deliveries.c.channel, deliveries.c.status)
            ):
                by_state.add_metric([channel, status], count)
            for channel, count in conn.execute(
                sa.select(deliveries.c.channel, sa.func.count())
                .where(deliveries.c.status == "planned", deliveries.c.send_at <= now)
                .group_by(deliveries.c.channel)
            ):
                due.add_metric([channel], count)
            for status, count in conn.execute(
                sa.select(call_tasks.c.status, sa.func.count()).group_by(call_tasks.c.status)
            ):
                tasks.add_metric([status], count)
            overdue_total = 0
            for manager, count in conn.execute(
                sa.select(call_tasks.c.manager, sa.func.count())
                .where(call_tasks.c.status == "open", call_tasks.c.due_until < now)
                .group_by(call_tasks.c.manager)
            ):
                overdue.add_metric([manager], count)
                overdue_total += count
            for status, count in conn.execute(sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status)):
                run_states.add_metric([status], count)
        seen_tasks = {sample.labels["status"] for sample in tasks.samples}
        for status in ("open", "done"):
            if status not in seen_tasks:
                tasks.add_metric([status], 0)
        return [by_state, due, tasks, overdue, run_states]


class Metrics:
    """The registry of one web app: ledger gauges, and the workers' files when configured."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(LedgerCollector(engine))
        self.directory = metrics_dir(settings)
        if self.directory is not None:
            from prometheus_client.multiprocess import MultiProcessCollector

            self.directory.mkdir(parents=True, exist_ok=True)
            MultiProcessCollector(self.registry, path=str(self.directory))

    def render(self) -> bytes:
        return generate_latest(self.registry)
