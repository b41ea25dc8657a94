"""The long-running processes: workers that deliver, the pump, and `up` which runs them together.

`worker` may start several processes; a supervisor restarts one that dies (a SIGKILL leaves its
in-flight rows `sending`; the pump makes them `unknown` after the lease, never a second message).
SIGTERM stops cleanly: dramatiq finishes the messages in hand, unstarted prefetched messages go
back to the broker, channels close their connections.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time as clock
from typing import Any, Callable, Mapping

import dramatiq
from dramatiq.asyncio import EventLoopThread

from channels.base import Channel, load_channel
from orchestrator.broker import Queues
from orchestrator.clock import SharedClock
from orchestrator.gc_tuning import tune_for_bulk_work
from orchestrator.dispatch import Dispatcher
from orchestrator.errors import ConfigError
from orchestrator.pump import PumpPass, pump_once
from orchestrator.ratelimit import RateGate
from orchestrator.settings import Settings
from orchestrator.storage.engine import connect

log = logging.getLogger("orchestrator.runtime")

Clock = Callable[[], float]


def _resolve_paths(settings: Settings, options: Mapping[str, Any]) -> dict[str, Any]:
    """Relative paths in settings are relative to the settings file (SPEC 2)."""
    resolved = dict(options)
    for key, value in options.items():
        if isinstance(value, str) and (key == "path" or key.endswith(("_path", "_file", "_dir"))):
            resolved[key] = str(settings.resolve(value))
    return resolved


def load_channels(settings: Settings) -> dict[str, Channel]:
    return {
        name: load_channel(name, spec.backend, _resolve_paths(settings, spec.options))
        for name, spec in settings.channels.items()
    }


def channel_rates(settings: Settings) -> dict[str, str]:
    return {name: spec.rate for name, spec in settings.channels.items() if spec.rate}


class Runtime:
    """What one process needs to pump and/or deliver: the ledger, the broker, the channels."""

    def __init__(self, settings: Settings, *, now: Clock = clock.time) -> None:
        self.settings = settings
        self.engine = connect(settings.database_url, pre_ping=False)
        self.now = SharedClock(self.engine, now)
        self.channel_names = sorted(settings.channels)
        metrics_dir = str(settings.resolve(settings.web.metrics_dir)) if settings.web.metrics_dir else None
        self.queues = Queues(settings.broker.url, self.channel_names, metrics_dir=metrics_dir)
        self.worker: dramatiq.Worker | None = None
        self.loop: EventLoopThread | None = None
        self.dispatcher: Dispatcher | None = None

    # --- pumping -------------------------------------------------------------------------------

    def pump(self) -> PumpPass:
        return pump_once(self.engine, self.settings, self.queues.enqueue, int(self.now()), self.channel_names)

    # --- delivering ----------------------------------------------------------------------------

    def start_delivery(self, threads: int | None = None, queues: set[str] | None = None) -> None:
        # The event loop that talks to SMTP/HTTP and the threads that talk to the ledger share one
        # GIL; the default 5 ms switch interval leaves sockets idle while a thread computes.
        sys.setswitchinterval(float(os.environ.get("ORCHESTRATOR_SWITCH_INTERVAL", "0.0005")))
        self.loop = EventLoopThread(logging.getLogger("orchestrator.loop"))
        self.loop.start(timeout=10)
        gate = RateGate(channel_rates(self.settings), self.settings.broker.rate_url)
        self.dispatcher = Dispatcher(
            self.settings, self.engine, load_channels(self.settings), self.loop.loop,
            rate_gate=gate, now=self.now,
        )
        self.queues.handler = self.dispatcher.deliver
        self.worker = dramatiq.Worker(
            self.queues.broker, queues=queues, worker_threads=threads or self.settings.dispatch.worker_threads,
            worker_timeout=200,
        )
        self.worker.start()
        log.info("delivering %s with %d threads", ", ".join(sorted(queues or self.channel_names)),
                 threads or self.settings.dispatch.worker_threads)

    def join(self, timeout: float = 60.0) -> None:
        """In-process broker: wait until every enqueued message was handled (tests, `up --for`)."""
        broker = self.queues.broker
        for name in self.channel_names:
            broker.join(name, timeout=int(timeout * 1000))  # type: ignore[attr-defined]

    def stop(self, timeout: float = 600.0) -> None:
        if self.worker is not None:
            self.worker.stop(timeout=int(timeout * 1000))
            self.worker = None
        if self.dispatcher is not None:
            self.dispatcher.close()
            self.dispatcher = None
        if self.loop is not None:
            self.loop.stop()
            self.loop = None
        self.queues.close()
        self.engine.dispose()


def stop_event_on_signals() -> threading.Event:
    """SIGTERM and SIGINT ask for a clean stop."""
    stop = threading.Event()

    def _handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


def require_shared_broker(settings: Settings, command: str) -> None:
    if settings.broker.url.startswith("memory://"):
        raise ConfigError(
            f"the memory:// broker lives inside one process, so `{command}` alone cannot use it: "
            "run `orchestrator up`, or set [broker] url to redis:// or amqp://",
            field="broker.url",
        )


def run_worker(settings: Settings, threads: int | None, queues: set[str] | None, stop: threading.Event) -> None:
    require_shared_broker(settings, "worker")
    runtime = Runtime(settings)
    runtime.start_delivery(threads, queues)
    tune_for_bulk_work()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        runtime.stop()
        log.info("worker stopped")


def supervise(args: list[str], processes: int, stop: threading.Event, env: Mapping[str, str] | None = None) -> None:
    """Run `processes` copies of `orchestrator worker ARGS`; restart one that dies; SIGTERM them on stop."""
    command = [sys.executable, "-m", "orchestrator", "worker", *args, "--processes", "1"]
    environment = dict(env or os.environ)

    def spawn() -> subprocess.Popen:
        return subprocess.Popen(command, env=environment)

    children: list[subprocess.Popen] = [spawn() for _ in range(processes)]
    log.info("started %d worker processes: %s", processes, ", ".join(str(c.pid) for c in children))
    try:
        while not stop.wait(0.5):
            for index, child in enumerate(children):
                code = child.poll()
                if code is not None:
                    log.warning("worker process %d exited with %s: starting another", child.pid, code)
                    children[index] = spawn()
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=600)
            except subprocess.TimeoutExpired:
                child.kill()


def _scheduler(settings: Settings, runtime: Runtime):  # type: ignore[no-untyped-def]
    from datetime import datetime, timezone

    from orchestrator.digests import digest_jobs
    from orchestrator.scheduler import CampaignScheduler

    def utc_now() -> datetime:
        return datetime.fromtimestamp(int(runtime.now()), timezone.utc)

    return CampaignScheduler(
        settings, runtime.engine, clock=utc_now, skew=runtime.now.skew,
        periodic=[("pump", settings.dispatch.pump_interval, runtime.pump),
                  *digest_jobs(settings, runtime.engine, clock=utc_now)],
    )


def run_scheduler(settings: Settings, stop: threading.Event, *, now: Clock = clock.time) -> None:
    """`orchestrator scheduler`: the campaigns' schedules and the pump; workers deliver elsewhere."""
    require_shared_broker(settings, "scheduler")
    runtime = Runtime(settings, now=now)
    try:
        _scheduler(settings, runtime).run_until(stop)
    finally:
        runtime.stop()


class WebServer:
    """The web app (uvicorn) in a thread of this process, for `up` and `demo`."""

    def __init__(self, settings: Settings, host: str, port: int) -> None:
        import uvicorn

        from orchestrator.web import create_app
        from orchestrator.web.app import redact_access_log

        redact_access_log()
        config = uvicorn.Config(create_app(settings), host=host, port=port, log_config=None,
                                server_header=False, proxy_headers=True)
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # ours stop it
        self.thread = threading.Thread(target=self.server.run, name="web", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def run_up(settings: Settings, stop: threading.Event, *, now: Clock = clock.time, threads: int | None = None,
           web: tuple[str, int] | None = None) -> None:
    """`orchestrator up`: schedules, pump, delivery and the web app in one process (the embedded
    default); `web=None` leaves the web app out."""
    runtime = Runtime(settings, now=now)
    runtime.start_delivery(threads)
    server = WebServer(settings, *web) if web else None
    if server is not None:
        server.start()
        log.info("web app on http://%s:%d", *web)
    try:
        _scheduler(settings, runtime).run_until(stop)
    finally:
        if server is not None:
            server.stop()
        runtime.stop()
