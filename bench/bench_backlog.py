"""Benchmark: a backlog of N due ledger rows (default 1,000,000) drained by the real pump and workers.

    .venv/bin/python bench/bench_backlog.py [--rows N] [--workers N] [--json]

A scratch PostgreSQL schema gets N customers and N `planned` email rows due now (COPY); then
`orchestrator scheduler` (the pump, every `[dispatch] pump_interval`) and `orchestrator worker
--processes N` run against a Redis broker until every row is terminal.  The channel is
tests/fakes/reflog.py, which only notes each message's ref and time in a file per process, so
the figures are those of the machinery (pump, broker, claims, ledger), and what the channel
received can be counted afterwards.  Printed: insert time, the pump's rate (planned → queued →
broker), time to the first send, drain time and deliveries/s end to end, the peak length of the
Redis queue, memory of the pump and the workers over the run, CPU seconds per program, and the
raw speed of the transport (dramatiq + Redis through the project's Queues, a no-op handler)
measured in the same run.  Verified: every row terminal, every sent row received exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import PG, PostgresCpu, children, cpu_by_program, cpu_seconds, rss_mb, scratch_schema  # noqa: E402
from orchestrator.broker import Queues  # noqa: E402
from orchestrator.storage.engine import connect, write_transaction  # noqa: E402
from orchestrator.storage.schema import customers, deliveries, runs  # noqa: E402
from tests.fakes.reflog import read_refs  # noqa: E402

REDIS = "redis://127.0.0.1:6379/10"
APPLICATION = "backlog"
CHANNEL = "email"
OPEN_STATES = ("planned", "queued", "sending")
TEXT = "Анна, новая коллекция уже в магазине: для вас скидка 7% до 15 декабря. Ваш «Атлас»."

SETTINGS = """
[general]
secret_key = "bench-backlog"
[database]
url = "{db}"
[broker]
url = "{redis}"
[quiet_hours]
email = "00:00-00:00"
[dispatch]
pump_batch = {pump_batch}
message_batch = {message_batch}
requeue_after = "{requeue_after}"
[channels.email]
backend = "tests.fakes.reflog.RefLog"
path = "{refs}"
parallel = {parallel}
{rate}
"""


# --- the backlog ------------------------------------------------------------------------------

def _copy(conn: Any, table: sa.Table, columns: list[str], rows: Any) -> None:
    """COPY through psycopg: the fastest way in, against the project's own table and columns."""
    with conn.cursor() as cursor:
        with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def fill(url: str, rows: int) -> float:
    """N customers with email consent and N due `planned` email rows, one each; seconds taken."""
    engine = connect(url)
    now = int(time.time())
    started = time.perf_counter()
    with write_transaction(engine) as conn:
        run_id = conn.execute(runs.insert().returning(runs.c.id), {
            "campaign": "backlog", "fire_at": now, "status": "planned", "started_at": now}).scalar_one()
    raw = engine.raw_connection()
    try:
        driver = raw.driver_connection
        _copy(driver, customers, ["id", "name", "email", "consent_email", "zones", "zone_source", "created_at",
                                  "updated_at"],
              ((f"B{i:07d}", "Анна", f"b{i:07d}@example.com", True, "Europe/Moscow", "column", now, now)
               for i in range(rows)))
        _copy(driver, deliveries, ["run_id", "campaign", "customer_id", "channel", "category", "status", "send_at",
                                   "expires_at", "attempts", "zone", "zone_source", "payload", "created_at",
                                   "updated_at"],
              ((run_id, "backlog", f"B{i:07d}", CHANNEL, "content", "planned", now - 60, now + 86400, 0,
                "Europe/Moscow", "column",
                json.dumps({"address": f"b{i:07d}@example.com", "subject": "Новая коллекция", "text": TEXT},
                           ensure_ascii=False), now, now)
               for i in range(rows)))
        driver.commit()
        driver.autocommit = True
        driver.execute("ANALYZE customers")
        driver.execute("ANALYZE deliveries")
    finally:
        raw.close()
    engine.dispose()
    return time.perf_counter() - started


# --- the raw transport ----------------------------------------------------------------------

def raw_broker(messages: int, batch: int, threads: int = 2) -> dict[str, float]:
    """dramatiq + Redis alone, through the project's Queues: enqueue, then one worker process
    (`threads` threads) running a no-op handler; messages/s each way, in rows/s at `batch` rows."""
    import dramatiq

    queues = Queues(REDIS, [CHANNEL])
    handled: list[int] = []
    queues.handler = lambda channel, ids: handled.append(len(ids))
    ids = list(range(batch))
    started = time.perf_counter()
    for _ in range(messages):
        queues.enqueue(CHANNEL, ids)
    enqueue = messages / (time.perf_counter() - started)
    worker = dramatiq.Worker(queues.broker, worker_threads=threads)
    worker.start()
    while not handled:
        time.sleep(0.001)
    started, first = time.perf_counter(), len(handled)
    while len(handled) < messages:
        time.sleep(0.005)
    consume = (messages - first) / (time.perf_counter() - started)
    worker.stop()
    queues.close()
    return {"enqueue_msgs": enqueue, "enqueue_rows": enqueue * batch,
            "consume_msgs": consume, "consume_rows": consume * batch}


def raw_channel(path: Path, count: int = 200_000) -> float:
    """The channel's own cost: messages/s through RefLog.send alone."""
    import asyncio

    from channels.base import Message
    from tests.fakes.reflog import RefLog

    async def run() -> float:
        channel = RefLog(CHANNEL, path=str(path))
        await channel.open()
        message = Message(ref="0", channel=CHANNEL, customer_id="B0", address="b@example.com", content={"text": TEXT})
        started = time.perf_counter()
        for _ in range(count):
            await channel.send(message)
        elapsed = time.perf_counter() - started
        await channel.close()
        return count / elapsed

    rate = asyncio.run(run())
    for file in path.glob("*.refs"):
        file.unlink()
    return rate


def time_pump_pass(path: Path, url: str) -> tuple[float, int]:
    """One pass of the real pump, in this process, on the full backlog and into Redis: seconds and
    rows moved.  Its rows go back to `planned` and Redis is emptied, so the run starts untouched."""
    from orchestrator.pump import pump_once
    from orchestrator.settings import load_settings

    settings = load_settings(path)
    engine = connect(url, pre_ping=False)
    queues = Queues(REDIS, [CHANNEL])
    taken: list[int] = []

    def enqueue(channel: str, ids: list[int]) -> None:
        queues.enqueue(channel, ids)
        taken.extend(ids)

    started = time.perf_counter()
    pump_once(engine, settings, enqueue, int(time.time()), [CHANNEL])
    elapsed = time.perf_counter() - started
    with write_transaction(engine) as conn:
        conn.execute(deliveries.update().where(deliveries.c.id.in_(taken)).values(status="planned"))
    queues.close()
    engine.dispose()
    flush_redis()
    return elapsed, len(taken)


# --- watching the run -----------------------------------------------------------------------

@dataclass
class Watch:
    """Samples taken while the backlog drains: the broker's queue, Redis memory, the processes' RSS."""

    redis: Any
    processes: dict[str, int]
    peak_queue_messages: int = 0
    peak_broker_messages: int = 0
    peak_redis_mb: float = 0.0
    rss: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def sample(self) -> None:
        queue = self.redis.llen(f"dramatiq:{CHANNEL}")
        held = self.redis.hlen(f"dramatiq:{CHANNEL}.msgs")
        self.peak_queue_messages = max(self.peak_queue_messages, queue)
        self.peak_broker_messages = max(self.peak_broker_messages, held)
        self.peak_redis_mb = max(self.peak_redis_mb, self.redis.info("memory")["used_memory"] / 2**20)
        at = time.time() - self.started
        for name, pid in self.pids().items():
            value = rss_mb(pid)
            if value is not None:
                self.rss.setdefault(name, []).append((at, value))

    def pids(self) -> dict[str, int]:
        """The pump, the worker supervisor and its worker processes, by name."""
        pids = dict(self.processes)
        for index, child in enumerate(children(self.processes["worker supervisor"]), 1):
            pids[f"worker {index}"] = child
        if len(pids) == 2:  # --processes 1: the supervisor is the worker itself
            pids["worker 1"] = pids.pop("worker supervisor")
        return pids

    def memory(self) -> dict[str, dict[str, float]]:
        """Per process: RSS at the first sample, the peak, and at 10 % / 50 % / 90 % of the run."""
        summary = {}
        for name, series in self.rss.items():
            values = [value for _, value in series]
            share = {f"p{int(p * 100)}": values[min(len(values) - 1, int(len(values) * p))] for p in (0.1, 0.5, 0.9)}
            summary[name] = {"start": values[0], **share, "peak": max(values), "end": values[-1]}
        return summary


def any_open(engine: sa.Engine) -> bool:
    """Whether a row is still on its way (an EXISTS: counting a million rows every few seconds would
    load the database more than the workers' claims do)."""
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.exists().where(deliveries.c.status.in_(OPEN_STATES)))).scalar_one()


def pump_passes(log: Path) -> list[tuple[float, int, int]]:
    """(time, rows moved, rows re-enqueued) of every pump pass that did something, from its log."""
    from datetime import datetime, timezone

    passes = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("logger") != "orchestrator.pump" or not entry["msg"].startswith("pump: "):
            continue
        words = entry["msg"].split()
        at = datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
        passes.append((at, int(words[1]), int(words[3])))
    return passes


def drain(root: Path, path: Path, url: str, pg_url: str, workers: int, timeout: float) -> dict[str, Any]:
    """Start the pump and the workers together; wait until no row is open; stop them."""
    import redis

    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "orchestrator"]
    postgres = PostgresCpu(pg_url, APPLICATION)
    postgres.start()
    before = cpu_by_program(("redis-server",))
    started = time.time()
    with (root / "pump.log").open("w") as pump_log, (root / "worker.log").open("w") as worker_log:
        pump = subprocess.Popen([*command, "scheduler", "--config", str(path)], cwd=REPO, env=environment,
                                stderr=pump_log)
        worker = subprocess.Popen([*command, "worker", "--config", str(path), "--processes", str(workers)], cwd=REPO,
                                  env=environment, stderr=worker_log)
    engine = connect(url)
    client = redis.Redis.from_url(REDIS)
    watch = Watch(client, {"pump": pump.pid, "worker supervisor": worker.pid}, started=started)
    cpu: dict[str, float] = {}
    try:
        next_check = 0.0
        while time.time() - started < timeout:
            watch.sample()
            postgres.sample()
            for name, pid in watch.pids().items():
                cpu[name] = max(cpu.get(name, 0.0), cpu_seconds(pid))
            if time.time() >= next_check:
                if not any_open(engine):
                    break
                next_check = time.time() + 1.0
            time.sleep(0.5)
        finished = time.time()
        postgres.sample()  # before the workers go: their database sessions end with them
        after = cpu_by_program(("redis-server",))
    finally:
        for process in (pump, worker):
            process.send_signal(signal.SIGTERM)
        for process in (pump, worker):
            process.wait(timeout=120)
        engine.dispose()
        postgres.close()
    return {"started": started, "finished": finished, "watch": watch,
            "cpu": {**cpu, "postgres (our sessions)": postgres.total(),
                    "redis-server (whole server)": after["redis-server"] - before["redis-server"]},
            "passes": pump_passes(root / "pump.log")}


# --- checking and reporting -----------------------------------------------------------------

def verify(url: str, refs: Path, rows: int) -> dict[str, Any]:
    """Every row terminal; the channel received each `sent` row exactly once and nothing else."""
    engine = connect(url)
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.select(deliveries.c.status, sa.func.count()).group_by(deliveries.c.status)).all())
        sent_ids = {str(row_id) for row_id in conn.execute(sa.select(deliveries.c.id).where(deliveries.c.status == "sent")).scalars()}
    engine.dispose()
    received, times = read_refs(refs)
    twice = sum(1 for count in received.values() if count > 1)
    return {
        "statuses": statuses, "open": sum(statuses.get(s, 0) for s in OPEN_STATES), "received": sum(received.values()),
        "distinct_received": len(received), "received_twice": twice, "sent_rows": len(sent_ids),
        "sent_not_received": len(sent_ids - received.keys()), "received_not_sent": len(received.keys() - sent_ids),
        "ok": (statuses.get("sent", 0) == rows and twice == 0 and sent_ids == received.keys()),
        "times": sorted(times),
    }


def figures(rows: int, run: dict[str, Any], check: dict[str, Any], batch: int) -> dict[str, Any]:
    times = check.pop("times")
    started = run["started"]
    passes = run["passes"]
    moving = [p for p in passes if p[1]]
    moved = sum(p[1] for p in passes)
    requeued = sum(p[2] for p in passes)
    pump_span = (moving[-1][0] - moving[0][0]) if len(moving) > 1 else 0.0
    watch: Watch = run["watch"]
    return {
        "first_send_s": times[0] - started if times else None,
        "last_send_s": times[-1] - started if times else None,
        "drain_s": run["finished"] - started,
        "deliveries_per_s": len(times) / (times[-1] - started) if times else 0.0,
        "steady_per_s": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0,
        "pump_passes": len(passes), "pump_moved": moved, "pump_requeued": requeued,
        "pump_rows_per_s": (moved - moving[-1][1]) / pump_span if pump_span else None,
        "pump_done_s": moving[-1][0] - started if moving else None,
        "peak_queue_messages": watch.peak_queue_messages, "peak_queue_rows": watch.peak_queue_messages * batch,
        "peak_broker_messages": watch.peak_broker_messages, "peak_redis_mb": watch.peak_redis_mb,
        "memory_mb": watch.memory(), "cpu_s": run["cpu"], "verify": check,
    }


def report(args: argparse.Namespace, f: dict[str, Any]) -> None:
    raw, check = f["raw"], f["verify"]
    print(f"{args.rows:,} due rows, PostgreSQL ledger, Redis broker, {args.workers} worker process(es) "
          f"x {args.threads} threads; pump_batch {args.pump_batch}, message_batch {args.message_batch}, "
          f"claim chunk {args.parallel}" + (f", rate {args.rate}" if args.rate else ""))
    print(f"insert (COPY customers + ledger rows, ANALYZE): {f['insert_s']:.1f} s ({args.rows / f['insert_s']:,.0f} rows/s)")
    print(f"raw transport (dramatiq + Redis through Queues, no-op handler): enqueue {raw['enqueue_rows']:,.0f} rows/s "
          f"({raw['enqueue_msgs']:,.0f} msg/s); one process consumes {raw['consume_rows']:,.0f} rows/s "
          f"({raw['consume_msgs']:,.0f} msg/s); raw channel {f['raw_channel']:,.0f} msg/s")
    print(f"pump: one pass on the full backlog {f['pump_pass_s']:.3f} s for {f['pump_pass_rows']:,} rows "
          f"({f['pump_pass_rows'] / f['pump_pass_s']:,.0f} rows/s back to back); in the run {f['pump_moved']:,} rows "
          f"in {f['pump_passes']} passes, {f['pump_rows_per_s'] or 0:,.0f} rows/s while the backlog lasted "
          f"(planned → queued → broker), the last at {f['pump_done_s'] or 0:.0f} s; re-enqueued {f['pump_requeued']:,}")
    print(f"first send after {f['first_send_s']:.2f} s; last at {f['last_send_s']:.1f} s; every row terminal "
          f"at {f['drain_s']:.1f} s")
    ratio = f["steady_per_s"] / (raw["consume_rows"] * args.workers)
    print(f"end to end {f['deliveries_per_s']:,.0f} deliveries/s; steady {f['steady_per_s']:,.0f}/s "
          f"= {ratio:.0%} of {args.workers} x the raw transport's consume rate")
    print(f"peak Redis queue: {f['peak_queue_messages']:,} messages waiting (~{f['peak_queue_rows']:,} rows), "
          f"{f['peak_broker_messages']:,} held; Redis used memory peak {f['peak_redis_mb']:.0f} MB")
    for name, m in f["memory_mb"].items():
        print(f"RSS {name:18} start {m['start']:5.0f} MB  10% {m['p10']:5.0f}  50% {m['p50']:5.0f}  "
              f"90% {m['p90']:5.0f}  peak {m['peak']:5.0f}  end {m['end']:5.0f}")
    print("CPU seconds during the drain: " + ", ".join(f"{k} {v:.0f}" for k, v in f["cpu_s"].items()))
    print(f"verify: {check['statuses']}; received {check['received']:,} ({check['distinct_received']:,} distinct), "
          f"twice {check['received_twice']}, sent but not received {check['sent_not_received']}, "
          f"received but not sent {check['received_not_sent']}: {'OK' if check['ok'] else 'FAILED'}")


def redis_is_free() -> None:
    import redis

    if redis.Redis.from_url(REDIS).dbsize():
        sys.exit(f"{REDIS} is not empty: this benchmark flushes it, so it wants it to itself")


def flush_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS).flushdb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=2, help="threads per worker process (the default)")
    parser.add_argument("--pump-batch", type=int, default=5000, help="[dispatch] pump_batch (the default)")
    parser.add_argument("--message-batch", type=int, default=50, help="[dispatch] message_batch (the default)")
    parser.add_argument("--parallel", type=int, default=16, help="rows claimed per chunk (a channel's default)")
    parser.add_argument("--rate", help='the channel\'s rate limit, e.g. "300/s" (default: none)')
    parser.add_argument("--requeue-after", default="5m", help="[dispatch] requeue_after (the default)")
    parser.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    parser.add_argument("--pg-url", default=PG)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    redis_is_free()
    with tempfile.TemporaryDirectory(prefix="bench-backlog-") as tmp, scratch_schema(args.pg_url, APPLICATION) as url:
        root = Path(tmp)
        try:
            raw = raw_broker(messages=3000, batch=args.message_batch)
            flush_redis()
            channel_rate = raw_channel(root / "raw")
            path = root / "settings.toml"
            path.write_text(SETTINGS.format(db=url, redis=REDIS, refs=root / "refs", pump_batch=args.pump_batch,
                                            message_batch=args.message_batch, parallel=args.parallel,
                                            requeue_after=args.requeue_after,
                                            rate=f'rate = "{args.rate}"' if args.rate else ""),
                            encoding="utf-8")
            insert_s = fill(url, args.rows)
            pump_pass = time_pump_pass(path, url)
            run = drain(root, path, url, args.pg_url, args.workers, args.timeout)
            result = figures(args.rows, run, verify(url, root / "refs", args.rows), args.message_batch)
        finally:
            flush_redis()
    result.update(rows=args.rows, workers=args.workers, insert_s=insert_s, raw=raw, raw_channel=channel_rate,
                  pump_pass_s=pump_pass[0], pump_pass_rows=pump_pass[1])
    if args.json:
        print(json.dumps(result, default=str))
    else:
        report(args, result)
    if not result["verify"]["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
