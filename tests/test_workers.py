"""Workers as separate processes against the real services: PostgreSQL ledger, Redis and RabbitMQ
brokers, and a local HTTP SMS gateway that fails on demand.  Processes are killed for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from orchestrator.runtime import Runtime
from orchestrator.settings import load_settings
from orchestrator.storage.schema import deliveries
from tests.conftest import REPO
from tests.fakes.gateway import FakeGateway, params_of
from tests.test_dispatch import plan

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

TERMINAL = {"sent", "failed", "unknown", "suppressed", "cancelled"}

SETTINGS = """
[broker]
url = "{broker}"

[quiet_hours]
sms = "00:00-00:00"

[channels.sms]
backend = "channels.sms.HttpGateway"
url = "{gateway}/send"
body = "json"
sender = "SHOP"
timeout = 2
{rate}

[channels.sms.params]
to = "{{{{ phone }}}}"
text = "{{{{ text }}}}"
ref = "{{{{ ref }}}}"

[dispatch]
retry_base = "1s"
retry_max = "2s"
max_attempts = 20
requeue_after = "3s"
sending_lease = "4s"
pump_interval = 0.2
message_batch = 20
"""


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    with FakeGateway() as server:
        yield server


def workspace(root: Path, pg_url: str, broker: str, gateway: FakeGateway, rate: str = "") -> Path:
    from tests.planner_fixtures import make_workspace

    path = make_workspace(root, pg_url)
    rate_line = f'rate = "{rate}"' if rate else ""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(SETTINGS.format(broker=broker, gateway=gateway.url, rate=rate_line))
    return path


def plan_now(root: Path, count: int) -> sa.Engine:
    fire = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=1)
    return plan(root, "promo", [f"C{i:04d}" for i in range(count)], fire=fire)


def start_worker(path: Path, *extra: str) -> subprocess.Popen:
    log = open(path.parent / f"worker-{time.monotonic_ns()}.log", "wb")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "worker", "--config", str(path), *extra],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )


def statuses(engine: sa.Engine) -> Counter:
    with engine.connect() as conn:
        return Counter(dict(conn.execute(sa.select(deliveries.c.status, sa.func.count()).group_by(deliveries.c.status)).all()))


def pump_until_terminal(path: Path, engine: sa.Engine, timeout: float) -> Counter:
    runtime = Runtime(load_settings(path))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runtime.pump()
            found = statuses(engine)
            if set(found) <= TERMINAL:
                return found
            time.sleep(0.2)
        return statuses(engine)
    finally:
        runtime.stop()


def refs_received(gateway: FakeGateway) -> Counter:
    """Messages the gateway accepted (answered 200), by ledger reference."""
    return Counter(params_of(r)["ref"] for r in gateway.requests if r.get("status") == 200 and r["path"] == "/send")


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout=60)


@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_workers_deliver_through_a_real_broker(tmp_path: Path, pg_url: str, gateway: FakeGateway,
                                               request: pytest.FixtureRequest, broker: str) -> None:
    url = request.getfixturevalue(f"{broker}_url")
    path = workspace(tmp_path, pg_url, url, gateway)
    engine = plan_now(tmp_path, 120)
    worker = start_worker(path, "--threads", "4")
    try:
        found = pump_until_terminal(path, engine, 60)
    finally:
        assert stop(worker) == 0
    assert found == Counter({"sent": 120})
    received = refs_received(gateway)
    assert len(received) == 120 and set(received.values()) == {1}
    assert params_of(gateway.requests[0])["text"].endswith("скидка 7% & подарок")


def test_kill_9_of_a_worker_mid_campaign_sends_nothing_twice(tmp_path: Path, pg_url: str, redis_url: str,
                                                             gateway: FakeGateway) -> None:
    path = workspace(tmp_path, pg_url, redis_url, gateway)
    gateway.control(delay=0.05)
    engine = plan_now(tmp_path, 400)
    first = start_worker(path, "--threads", "4")
    runtime = Runtime(load_settings(path))
    try:
        deadline = time.monotonic() + 60
        while len(gateway.requests) < 60 and time.monotonic() < deadline:
            runtime.pump()
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        time.sleep(1)  # a COMMIT the worker wrote just before it died still lands: let it
        in_flight = statuses(engine)["sending"]
    finally:
        runtime.stop()
    second = start_worker(path, "--threads", "4")
    try:
        found = pump_until_terminal(path, engine, 120)
    finally:
        assert stop(second) == 0
    assert set(found) <= {"sent", "unknown"}, found
    assert sum(found.values()) == 400
    received = refs_received(gateway)
    assert max(received.values()) == 1, "a message reached the gateway twice"
    with engine.connect() as conn:
        sent = {str(r.id) for r in conn.execute(sa.select(deliveries.c.id).where(deliveries.c.status == "sent"))}
    assert sent <= set(received)
    # Only what was in flight when the worker died is unknown (at most threads x two chunks of
    # the channel's parallel sends); everything else went out, once.
    assert found["unknown"] == in_flight <= 4 * 2 * 20
    assert found["sent"] == 400 - in_flight


def test_a_gateway_failing_for_a_while_is_retried_until_sent(tmp_path: Path, pg_url: str, redis_url: str,
                                                              gateway: FakeGateway) -> None:
    path = workspace(tmp_path, pg_url, redis_url, gateway)
    gateway.control(fail_status=503, fail_for=3)
    engine = plan_now(tmp_path, 50)
    worker = start_worker(path, "--threads", "2")
    try:
        found = pump_until_terminal(path, engine, 90)
    finally:
        assert stop(worker) == 0
    assert found == Counter({"sent": 50})
    answered = Counter(r.get("status") for r in gateway.requests if r["path"] == "/send")
    assert answered[503] >= 50 and answered[200] == 50
    with engine.connect() as conn:
        attempts = [r.attempts for r in conn.execute(sa.select(deliveries.c.attempts))]
    assert max(attempts) >= 2


def test_the_rate_limit_holds_across_two_worker_processes(tmp_path: Path, pg_url: str, redis_url: str,
                                                          gateway: FakeGateway) -> None:
    path = workspace(tmp_path, pg_url, redis_url, gateway, rate="20/s")
    engine = plan_now(tmp_path, 80)
    supervisor = start_worker(path, "--processes", "2", "--threads", "4")
    try:
        found = pump_until_terminal(path, engine, 90)
    finally:
        assert stop(supervisor) == 0
    assert found == Counter({"sent": 80})
    times = sorted(r["time"] for r in gateway.requests if r["path"] == "/send")
    assert times[-1] - times[0] >= 80 / 20 - 1.2  # without the limit: well under a second
    busiest = max(sum(1 for t in times if start <= t < start + 1) for start in times)
    # The limiter grants at most 2 sends per 100 ms bucket; the gateway sees them after a claim and
    # a network hop whose jitter can push a bucket or two into the next second.
    assert busiest <= 20 * 1.5


def test_sigterm_lets_messages_in_flight_finish(tmp_path: Path, pg_url: str, redis_url: str,
                                                gateway: FakeGateway) -> None:
    path = workspace(tmp_path, pg_url, redis_url, gateway)
    gateway.control(delay=1.0)
    engine = plan_now(tmp_path, 40)
    worker = start_worker(path, "--threads", "2")
    runtime = Runtime(load_settings(path))
    try:
        deadline = time.monotonic() + 30
        while not gateway.requests and time.monotonic() < deadline:
            runtime.pump()
            time.sleep(0.05)
        assert stop(worker) == 0
    finally:
        runtime.stop()
    found = statuses(engine)
    assert found["sending"] == 0 and found["unknown"] == 0
    assert found["sent"] == len(refs_received(gateway)) > 0
    assert found["sent"] + found["queued"] + found["planned"] == 40
