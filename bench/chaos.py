"""The chaos run (issue 6): the whole product under faults, then a proof from what really arrived.

Three overlapping campaigns over 10,000 sample customers in every Russian and CIS zone run on
PostgreSQL and Redis with several worker processes and two schedulers, while this script

* SIGKILLs workers and schedulers at random moments and starts them again;
* restarts Redis, which loses every queued message (it keeps nothing on disk);
* cuts the network to PostgreSQL (a partition: silence, then every connection reset) and to Redis
  (connections refused) through TCP proxies it controls (tests/fakes/tcpproxy.py);
* makes the SMS gateway answer 503, time out and drop connections, and the SMTP server answer 421;
* jumps the clock of one scheduler forward and back (libfaketime: `apt-get install faketime`);
* unsubscribes customers who still have messages on the way.

Quiet hours are set from the start time so that, during the run, they end in one group of zones and
begin in another, and hold all along in a third.  When the faults stop, the run settles (every
message delivered, retried out, expired or declared unknown) and the checks read the ledger, the
SMS gateway's request log and the SMTP sink's mailbox:

* every ledger row terminal, every run fully planned (one decision per customer);
* 0 duplicates (a ledger row received twice), 0 cap violations (a customer with two messages of
  a channel: every cap here is days long), 0 messages received in quiet hours in the recipient's
  zone(s), 0 messages claimed after an unsubscribe (nor received later than the send timeout after it),
  nothing lost (every `sent` row received, everything received is `sent` or `unknown` in the ledger).

    .venv/bin/python bench/chaos.py --short          # ~4 minutes: what CI runs (tests/test_chaos.py)
    .venv/bin/python bench/chaos.py                  # the long run: 15 minutes of faults, 60 kills
    .venv/bin/python bench/chaos.py --json           # the figures as one JSON object

Exit code 0 when every check holds, 1 otherwise.  The workspace (settings, logs, mailbox) is kept
with --keep DIR.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator.storage.engine import connect  # noqa: E402
from orchestrator.storage.schema import customers, deliveries, runs  # noqa: E402
from tests.fakes.gateway import GatewayProcess, params_of  # noqa: E402
from tests.fakes.smtp_sink import SinkProcess, read_messages, write_control  # noqa: E402
from tests.fakes.tcpproxy import TcpProxy  # noqa: E402

PG = os.environ.get("ORCHESTRATOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
TERMINAL = ("sent", "failed", "unknown", "suppressed", "cancelled")
SEND_TIMEOUT = {"sms": 2.0, "email": 3.0}
UNSUBSCRIBE_SLACK = 10.0   # a message claimed just before an unsubscribe may still be on the wire
FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/*/faketime/libfaketime.so.1")


@dataclass(frozen=True)
class Plan:
    """How hard and how long: the long run by hand, the short one in CI."""

    seconds: int = 900            # of faults; then the run settles
    customers: int = 10_000
    workers: int = 4
    kills: int = 60
    cut_seconds: int = 30         # each network cut
    jump_minutes: int = 5         # the scheduler's clock jump
    period_minutes: int = 3       # each campaign fires this often
    deliver_within: int = 6       # minutes
    seed: int = 1

    @classmethod
    def short(cls) -> "Plan":
        return cls(seconds=150, kills=14, cut_seconds=10, jump_minutes=2, period_minutes=1, deliver_within=3)


# --- the workspace ---------------------------------------------------------------------------------

SETTINGS = """
[general]
timezone = "Europe/Moscow"
country = "RU"
secret_key = "chaos-secret-key-{token}"

[web]
base_url = "https://loyalty.example.com"

[database]
url = "{db}"

[broker]
url = "{redis}"

[quiet_hours]
sms = "{sms_quiet}"
email = "{email_quiet}"

[channels.sms]
backend = "channels.sms.HttpGateway"
url = "{gateway}/send"
body = "json"
sender = "ATLAS"
timeout = {sms_timeout}
max_connections = 8
rate = "300/s"

[channels.sms.params]
to = "{{{{ phone }}}}"
text = "{{{{ text }}}}"
ref = "{{{{ ref }}}}"
customer = "{{{{ customer_id }}}}"

[channels.email]
backend = "channels.email.Smtp"
host = "127.0.0.1"
port = {smtp_port}
sender = "Атлас <shop@example.com>"
timeout = {email_timeout}
connections = 8

[dispatch]
pump_interval = 0.5
message_batch = 50
retry_base = "2s"
retry_max = "10s"
max_attempts = 8
requeue_after = "10s"
sending_lease = "15s"
worker_threads = 2

[scheduler]
misfire_grace = "5m"
reload_interval = "5s"
"""

SMS_TEMPLATE = "{{ customer.first_name|default('Клиент') }}, для вас скидка {{ offer.discount }}% до конца недели. Атлас"
EMAIL_TEMPLATE = """{% block subject %}{{ customer.first_name|default('Клиент') }}, новости Атласа{% endblock %}
<p>Здравствуйте, {{ customer.name|default('покупатель') }}!</p>
<p>Скидка {{ offer.discount }}% на новую коллекцию.</p>
<p><a href="{{ links.unsubscribe }}">Отписаться</a></p>
"""
CAMPAIGNS = (
    # name, channels, mode, category, first minute offset
    ("chaos-promo", ["sms", "email"], "first", "promo", 1),
    ("chaos-news", ["email"], "first", "content", 1),
    ("chaos-service", ["sms", "email"], "all", "service", 2),
)


def quiet_window(start: datetime, offset_hours: int, ends_after: timedelta, length: timedelta) -> str:
    """Local `HH:MM-HH:MM` quiet hours that, in zones `offset_hours` east of UTC, end `ends_after`
    the start; zones one hour further west see them begin an hour earlier than that end, so one run
    sees quiet hours end in one group of zones, begin in another and hold in a third."""
    end = (start + ends_after).astimezone(timezone(timedelta(hours=offset_hours)))
    begin = end - length
    return f"{begin:%H:%M}-{end:%H:%M}"


def cron_minutes(start: datetime, first: int, period: int, seconds: int) -> str:
    """A cron expression firing every `period` minutes from `first` minutes after the start, within the run."""
    moments = range(first, max(first + 1, seconds // 60 + 1), period)
    minutes = sorted({(start + timedelta(minutes=m)).minute for m in moments})
    return f"{','.join(map(str, minutes))} * * * *"


def write_workspace(root: Path, plan: Plan, start: datetime, db: str, redis: str, gateway: str, smtp_port: int) -> Path:
    import yaml

    for folder in ("segments", "campaigns", "templates/sms", "templates/email", "logs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    settings = SETTINGS.format(
        token=uuid.uuid4().hex, db=db, redis=redis, gateway=gateway, smtp_port=smtp_port,
        sms_timeout=SEND_TIMEOUT["sms"], email_timeout=SEND_TIMEOUT["email"],
        sms_quiet=quiet_window(start, 5, timedelta(seconds=0.6 * plan.seconds), timedelta(hours=2)),
        email_quiet=quiet_window(start, 4, timedelta(seconds=0.8 * plan.seconds), timedelta(hours=1, minutes=30)),
    )
    (root / "settings.toml").write_text(settings, encoding="utf-8")
    (root / "segments" / "everyone.yaml").write_text("description: every customer\nwhere:\n  all:\n    - id: {is_null: false}\n", encoding="utf-8")
    (root / "templates" / "sms" / "chaos.txt.j2").write_text(SMS_TEMPLATE, encoding="utf-8")
    (root / "templates" / "email" / "chaos.html.j2").write_text(EMAIL_TEMPLATE, encoding="utf-8")
    for name, channels, mode, category, first in CAMPAIGNS:
        campaign = {
            "name": name, "segment": "everyone", "category": category, "channels": channels, "channel_mode": mode,
            "template": "chaos", "offer": {"discount": 7},
            "schedule": {"cron": cron_minutes(start, first, plan.period_minutes, plan.seconds), "timezone": "UTC"},
            "deliver_within": f"{plan.deliver_within}m",
        }
        (root / "campaigns" / f"{name}.yaml").write_text(yaml.safe_dump(campaign, allow_unicode=True), encoding="utf-8")
    return root / "settings.toml"


# --- the processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def faketime_library() -> str:
    for pattern in FAKETIME_LIBS:
        found = glob.glob(pattern)
        if found:
            return found[0]
    sys.exit("the chaos run jumps a scheduler's clock with libfaketime: apt-get install faketime")


class Process:
    """One `orchestrator` process the run kills and starts again; its output goes to one log file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.env = {**os.environ, **(env or {})}
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait()

    def terminate(self, timeout: float = 60) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class RedisServer:
    """A Redis of the run's own, so that restarting it (and losing its data) touches nobody else."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.popen is not None:
            self.popen.kill()
            self.popen.wait()


# --- faults ------------------------------------------------------------------------------------------


@dataclass
class Faults:
    kills: Counter = field(default_factory=Counter)
    injected: Counter = field(default_factory=Counter)
    unsubscribes: dict[tuple[str, str], float] = field(default_factory=dict)   # (customer, channel) → done at
    unsubscribe_failures: int = 0


class Chaos:
    def __init__(self, plan: Plan, root: Path, *, quiet: bool = False) -> None:
        self.plan, self.root, self.quiet = plan, root, quiet
        self.random = random.Random(plan.seed)
        self.faults = Faults()
        self.stopping = threading.Event()
        self.stopped = False

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    # --- setting up ------------------------------------------------------------------------------

    def setup(self) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self.schema = f"chaos_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(PG.replace("postgresql://", "postgresql+psycopg://"))
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {self.schema}"))
        admin.dispose()
        pg_port = int(sa.engine.make_url(PG).port or 5432)
        self.direct_url = f"{PG}?options=-csearch_path%3D{self.schema}"
        self.redis = RedisServer(self.root / "logs" / "redis.log")
        self.redis.start()
        self.pg_proxy, self.redis_proxy = TcpProxy(pg_port), TcpProxy(self.redis.port)
        proxied_pg = sa.engine.make_url(PG).set(port=self.pg_proxy.start()).render_as_string(hide_password=False)
        redis_url = f"redis://127.0.0.1:{self.redis_proxy.start()}/0"
        self.gateway = GatewayProcess(log=self.root / "gateway.jsonl")
        gateway_url = self.gateway.start()
        self.smtp_control = self.root / "smtp-control.json"
        self.sink = SinkProcess(self.root / "mailbox.jsonl", extra_args=["--control", str(self.smtp_control)])
        _host, smtp_port = self.sink.start()
        self.start = datetime.now(timezone.utc) + timedelta(seconds=30)
        self.config = write_workspace(self.root, self.plan, self.start, f"{proxied_pg}?options=-csearch_path%3D{self.schema}",
                                      redis_url, gateway_url, smtp_port)
        self.cli("sample-data", str(self.root / "sample"), "--customers", str(self.plan.customers), "--seed", str(self.plan.seed))
        self.cli("import", "customers", str(self.root / "sample" / "customers.csv"), "--config", str(self.config), ok=(0, 3))
        self.engine = connect(self.direct_url)
        with self.engine.connect() as conn:
            self.customer_count = conn.execute(sa.select(sa.func.count()).select_from(customers)).scalar_one()
        self.say(f"{self.customer_count} customers imported; quiet hours: {self.quiet_hours()}")
        self.faketime = self.root / "faketime"
        self.faketime.write_text("+0\n")
        clock_env = {"LD_PRELOAD": faketime_library(), "FAKETIME_TIMESTAMP_FILE": str(self.faketime),
                     "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
        python = [sys.executable, "-m", "orchestrator"]
        self.workers = [Process(f"worker-{i}", [*python, "worker", "--config", str(self.config), "--processes", "1"],
                                self.root / "logs" / f"worker-{i}.log") for i in range(self.plan.workers)]
        self.schedulers = [
            Process("scheduler-a", [*python, "scheduler", "--config", str(self.config)], self.root / "logs" / "scheduler-a.log"),
            Process("scheduler-b", [*python, "scheduler", "--config", str(self.config)], self.root / "logs" / "scheduler-b.log",
                    env=clock_env),
        ]

    def quiet_hours(self) -> dict[str, str]:
        import tomllib

        return tomllib.loads(self.config.read_text(encoding="utf-8"))["quiet_hours"]

    def cli(self, *args: str, ok: tuple[int, ...] = (0,), timeout: float = 300) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode not in ok:
            raise RuntimeError(f"orchestrator {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
        return done

    def processes(self) -> list[Process]:
        return [*self.workers, *self.schedulers]

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> None:
        for process in self.processes():
            process.start()
        self.say(f"{len(self.workers)} workers and 2 schedulers started; faults from {self.start:%H:%M:%S} UTC")
        time.sleep(max(0.0, (self.start - datetime.now(timezone.utc)).total_seconds()))
        unsubscriber = threading.Thread(target=self.unsubscribe_loop, name="unsubscribe", daemon=True)
        unsubscriber.start()
        for at, action in self.timeline():
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            action()
        self.stopping.set()
        unsubscriber.join()
        self.calm()

    def timeline(self) -> list[tuple[float, Callable[[], None]]]:
        begin, span, plan = time.monotonic(), float(self.plan.seconds), self.plan
        events: list[tuple[float, Callable[[], None]]] = []
        for index in range(plan.kills):
            at = begin + span * (0.03 + 0.9 * (index + self.random.random()) / plan.kills)
            events.append((at, self.kill_one))
        cut = float(plan.cut_seconds)
        events += [
            (begin + span * 0.25, lambda: self.partition(self.pg_proxy, "postgresql")),
            (begin + span * 0.25 + cut, lambda: self.heal(self.pg_proxy, "postgresql", reset=True)),
            (begin + span * 0.35, lambda: self.jump_clock(f"+{plan.jump_minutes}m")),
            (begin + span * 0.45, self.restart_redis),
            (begin + span * 0.6, lambda: self.refuse(self.redis_proxy, "redis")),
            (begin + span * 0.6 + cut, lambda: self.heal(self.redis_proxy, "redis", reset=False)),
            (begin + span * 0.75, lambda: self.jump_clock("+0")),
        ]
        for index in range(6):
            at = begin + span * (0.05 + 0.15 * index)
            events += [(at, self.gateway_503), (at + span * 0.05, self.gateway_slow), (at + span * 0.05 + 4, self.gateway_normal),
                       (at + span * 0.08, self.gateway_drops), (at + span * 0.1, self.smtp_421)]
        events.append((begin + span, lambda: None))
        return sorted(events, key=lambda event: event[0])

    def kill_one(self) -> None:
        alive = [p for p in self.processes() if p.alive()]
        if not alive:
            return
        victim = self.random.choice(alive)
        victim.kill()
        self.faults.kills["scheduler" if victim in self.schedulers else "worker"] += 1
        threading.Timer(self.random.uniform(0.5, 3.0), self.revive, args=(victim,)).start()

    def revive(self, process: Process) -> None:
        if not process.alive() and not self.stopping.is_set():
            process.start()

    def partition(self, proxy: TcpProxy, what: str) -> None:
        proxy.pause()
        self.faults.injected[f"{what} network cut"] += 1
        self.say(f"network to {what} cut")

    def refuse(self, proxy: TcpProxy, what: str) -> None:
        proxy.refuse()
        self.faults.injected[f"{what} network cut"] += 1
        self.say(f"network to {what} cut")

    def heal(self, proxy: TcpProxy, what: str, *, reset: bool) -> None:
        if reset:
            proxy.reset()
        proxy.restore()
        self.say(f"network to {what} back")

    def restart_redis(self) -> None:
        self.redis.kill()
        time.sleep(1)
        self.redis.start()
        self.redis_proxy.reset()
        self.faults.injected["redis restart (data lost)"] += 1
        self.say("redis restarted empty")

    def jump_clock(self, offset: str) -> None:
        self.faketime.write_text(offset + "\n")
        self.faults.injected["scheduler clock jump"] += 1
        self.say(f"scheduler-b's clock at {offset}")

    def gateway_503(self) -> None:
        self.gateway.control(fail_for=4, fail_status=503)
        self.faults.injected["gateway 503 burst"] += 1

    def gateway_slow(self) -> None:
        self.gateway.control(delay=SEND_TIMEOUT["sms"] + 1)
        self.faults.injected["gateway timeout burst"] += 1

    def gateway_normal(self) -> None:
        self.gateway.control(delay=0)

    def gateway_drops(self) -> None:
        self.gateway.control(drop_count=20)
        self.faults.injected["gateway dropped connections"] += 1

    def smtp_421(self) -> None:
        write_control(self.smtp_control, code=421, seconds=4)
        self.faults.injected["smtp 421 burst"] += 1

    def unsubscribe_loop(self) -> None:
        """Customers with messages on the way unsubscribe, one every few seconds."""
        while not self.stopping.wait(self.random.uniform(1, 4)):
            with self.engine.connect() as conn:
                pending = conn.execute(
                    sa.select(deliveries.c.customer_id, deliveries.c.channel)
                    .where(deliveries.c.status.in_(("planned", "queued")), deliveries.c.category != "transactional")
                    .limit(200)
                ).all()
            if not pending:
                continue
            customer_id, channel = self.random.choice(pending)
            try:
                self.cli("unsubscribe", customer_id, "--channel", channel, "--config", str(self.config), timeout=90)
            except (RuntimeError, subprocess.TimeoutExpired):
                self.faults.unsubscribe_failures += 1
                continue
            self.faults.unsubscribes.setdefault((customer_id, channel), time.time())

    def calm(self) -> None:
        """Faults off, every process running: what is left must now finish."""
        self.pg_proxy.restore()
        self.redis_proxy.restore()
        self.gateway.control(delay=0, fail_for=0, fail_count=0, drop_count=0)
        write_control(self.smtp_control)
        self.faketime.write_text("+0\n")
        for process in self.processes():
            if not process.alive():
                process.start()
        self.say(f"faults stopped after {sum(self.faults.kills.values())} kills; settling")

    def settle(self) -> float:
        """Wait until no row is pending and no campaign fires any more; the seconds it took."""
        began = time.monotonic()
        last_fire = self.start + timedelta(seconds=self.plan.seconds + 60 * self.plan.jump_minutes)
        deadline = began + 60 * (self.plan.deliver_within + self.plan.jump_minutes) + 240
        while time.monotonic() < deadline:
            pending = self.pending()
            if not pending and datetime.now(timezone.utc) > last_fire:
                return time.monotonic() - began
            time.sleep(2)
        return time.monotonic() - began

    def pending(self) -> int:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(sa.func.count()).select_from(deliveries)
                                .where(deliveries.c.status.notin_(TERMINAL))).scalar_one()
            unfinished = conn.execute(sa.select(sa.func.count()).select_from(runs)
                                      .where(runs.c.status != "planned")).scalar_one()
        return rows + unfinished

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.stopping.set()
        for process in [*getattr(self, "workers", []), *getattr(self, "schedulers", [])]:
            process.terminate()
        for part in ("gateway", "sink", "pg_proxy", "redis_proxy"):
            if hasattr(self, part):
                getattr(self, part).stop()
        if hasattr(self, "redis"):
            self.redis.kill()

    def drop_schema(self) -> None:
        self.engine.dispose()
        admin = sa.create_engine(PG.replace("postgresql://", "postgresql+psycopg://"))
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {self.schema} CASCADE"))
        admin.dispose()


# --- the proof -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Receipt:
    """A message the outside world got (or may have got): the gateway answered 200 or hung up."""

    ref: int
    channel: str
    at: float


def receipts(root: Path) -> list[Receipt]:
    found: list[Receipt] = []
    gateway_log = root / "gateway.jsonl"
    for line in gateway_log.read_text(encoding="utf-8").splitlines() if gateway_log.exists() else []:
        request = json.loads(line)
        if request.get("status") in (200, None) and request.get("path") == "/send":
            found.append(Receipt(int(params_of(request)["ref"]), "sms", float(request["time"])))
    for message in read_messages(root / "mailbox.jsonl") if (root / "mailbox.jsonl").exists() else []:
        ref = (message.message_id or "").strip("<>").split("@")[0].rsplit(".", 1)[-1]  # make_msgid(idstring=ref)
        found.append(Receipt(int(ref), "email", message.received_at))
    return found


def _window(text: str) -> tuple[int, int]:
    begin, end = text.split("-")
    return tuple(int(h) * 60 + int(m) for h, m in (part.split(":") for part in (begin, end)))  # type: ignore[return-value]


def in_quiet_hours(at: float, zone: str, window: tuple[int, int]) -> bool:
    """Written here again, on purpose, from the SPEC's words (local time, half-open ranges)."""
    local = datetime.fromtimestamp(at, ZoneInfo(zone))
    minute, (begin, end) = local.hour * 60 + local.minute, window
    if begin == end:
        return False
    return begin <= minute < end if begin < end else minute >= begin or minute < end


def verify(engine: sa.Engine, root: Path, quiet: dict[str, str], faults: Faults, customer_count: int,
           default_zone: str = "Europe/Moscow") -> dict[str, Any]:
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(
            deliveries.c.id, deliveries.c.run_id, deliveries.c.customer_id, deliveries.c.channel, deliveries.c.status,
            deliveries.c.send_at, deliveries.c.zone, deliveries.c.zone_source, deliveries.c.reason,
            deliveries.c.attempts))}
        people = {r.id: r for r in conn.execute(sa.select(customers.c.id, customers.c.zones))}
        run_rows = conn.execute(sa.select(runs.c.id, runs.c.campaign, runs.c.status, runs.c.fire_at)).all()
    fired = {r.id: r.fire_at for r in run_rows}
    statuses = Counter(row.status for row in rows.values())
    got = receipts(root)
    by_ref: dict[int, list[Receipt]] = defaultdict(list)
    for receipt in got:
        by_ref[receipt.ref].append(receipt)
    per_customer: dict[tuple[str, str], set[int]] = defaultdict(set)
    quiet_sends, after_unsubscribe, phantom = [], [], []
    windows = {channel: _window(text) for channel, text in quiet.items()}
    for ref, seen in by_ref.items():
        row = rows.get(ref)
        if row is None or row.status not in ("sent", "unknown"):
            phantom.append(ref)
            if row is None:
                continue
        per_customer[(row.customer_id, row.channel)].add(ref)
        zones = [row.zone or default_zone] if row.zone_source == "default" else \
            (people[row.customer_id].zones or default_zone).split()
        if any(in_quiet_hours(r.at, zone, windows[row.channel]) for r in seen for zone in zones):
            quiet_sends.append(ref)
        withdrawn = faults.unsubscribes.get((row.customer_id, row.channel))
        if withdrawn is not None and (max(r.at for r in seen) > withdrawn + UNSUBSCRIBE_SLACK or (row.send_at or 0) > withdrawn):
            after_unsubscribe.append(ref)
    ledger_gone = Counter((r.customer_id, r.channel) for r in rows.values() if r.status in ("sent", "unknown"))
    decided: dict[int, set[str]] = defaultdict(set)
    for row in rows.values():
        decided[row.run_id].add(row.customer_id)
    customers_per_run = {run_id: len(people_in_run) for run_id, people_in_run in decided.items()}
    checks = {
        "rows not terminal": sum(count for status, count in statuses.items() if status not in TERMINAL),
        "runs not fully planned": sum(1 for r in run_rows if r.status != "planned" or customers_per_run.get(r.id, 0) != customer_count),
        "duplicates": sum(1 for seen in by_ref.values() if len(seen) > 1),
        "cap violations": sum(1 for refs in per_customer.values() if len(refs) > 1)
                          + sum(1 for count in ledger_gone.values() if count > 1),
        "sent in quiet hours": len(quiet_sends),
        "sent after unsubscribe": len(after_unsubscribe),
        "lost (sent, never received)": sum(1 for ref, row in rows.items() if row.status == "sent" and ref not in by_ref),
        "received but not sent in the ledger": len(phantom),
        "sent before the run's fire time": sum(
            1 for r in rows.values() if r.status in ("sent", "unknown") and (r.send_at or 0) < fired.get(r.run_id, 0)),
    }
    return {
        "checks": checks,
        "ok": not any(checks.values()),
        "ledger": dict(sorted(statuses.items())),
        "suppressed": dict(Counter(r.reason for r in rows.values() if r.status == "suppressed").most_common()),
        "sent after more than one attempt": sum(1 for r in rows.values() if r.status == "sent" and r.attempts > 1),
        "sent a minute or more after the run fired": sum(
            1 for r in rows.values() if r.status == "sent" and (r.send_at or 0) - fired.get(r.run_id, 0) >= 60),
        "runs": len(run_rows),
        "received": dict(Counter(r.channel for r in got)),
        "kills": dict(faults.kills),
        "faults": dict(faults.injected),
        "unsubscribes": len(faults.unsubscribes),
        "unsubscribe attempts that failed during faults": faults.unsubscribe_failures,
        "examples": {"quiet": quiet_sends[:5], "after unsubscribe": after_unsubscribe[:5], "phantom": phantom[:5]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the CI version: 150 s of faults, 14 kills")
    parser.add_argument("--seconds", type=int, help="seconds of faults")
    parser.add_argument("--kills", type=int, help="SIGKILLs of workers and schedulers")
    parser.add_argument("--customers", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--keep", type=Path, help="keep the workspace (settings, logs, mailbox) in this folder, "
                        "and the database schema (named in the figures)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    plan = Plan.short() if args.short else Plan()
    overrides = {k: v for k, v in {"seconds": args.seconds, "kills": args.kills, "customers": args.customers,
                                   "workers": args.workers, "seed": args.seed}.items() if v is not None}
    plan = Plan(**{**asdict(plan), **overrides})
    root = args.keep or Path(tempfile.mkdtemp(prefix="chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    chaos = Chaos(plan, root)
    began = time.monotonic()
    try:
        chaos.setup()
        chaos.run()
        settled = chaos.settle()
        chaos.stop()
        result = verify(chaos.engine, root, chaos.quiet_hours(), chaos.faults, chaos.customer_count)
    finally:
        chaos.stop()
        if hasattr(chaos, "engine") and args.keep is None:
            chaos.drop_schema()
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    result.update(plan=asdict(plan), schema=chaos.schema if args.keep else None, settle_seconds=round(settled, 1), total_seconds=round(time.monotonic() - began, 1))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print_result(result)
    return 0 if result["ok"] else 1


def print_result(result: dict[str, Any]) -> None:
    print(f"chaos run: {result['plan']['seconds']} s of faults over {result['plan']['customers']} customers, "
          f"settled in {result['settle_seconds']} s ({result['total_seconds']} s in all)")
    print(f"  kills: {result['kills']}; faults: {result['faults']}; unsubscribes: {result['unsubscribes']}")
    print(f"  ledger: {result['ledger']}; runs: {result['runs']}; received: {result['received']}")
    print(f"  suppressed: {result['suppressed']}")
    print(f"  sent after more than one attempt: {result['sent after more than one attempt']}; "
          f"a minute or more after the run fired: {result['sent a minute or more after the run fired']}")
    for name, count in result["checks"].items():
        print(f"  {'ok ' if count == 0 else 'FAIL'} {name}: {count}")
    if not result["ok"]:
        print(f"  examples: {result['examples']}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(main())
