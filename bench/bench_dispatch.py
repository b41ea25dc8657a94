"""Benchmark: delivery by worker processes through the Redis broker into a local SMTP sink and a local
HTTP SMS gateway, against the raw rate of aiosmtplib and httpx alone on the same servers.

    .venv/bin/python bench/bench_dispatch.py [--rows N] [--db postgresql|sqlite] [--channel email|sms|both] [--rounds 3]

For each channel: the fake server runs as its own process; the raw client sends prebuilt requests
to it for a while; then, for one and for two worker processes, N due ledger rows are pumped into
Redis and `orchestrator worker` delivers them.  Rates come from the server's receive times (first
to last message), so process start-up is not counted.  Also printed: the broker's own cost per
message (dramatiq + Redis, a no-op actor, in this process).  The three phases are repeated
`--rounds` times; each round's ratios are printed, then the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import statistics
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import children, cpu_by_program, cpu_seconds  # noqa: E402
from orchestrator.runtime import Runtime  # noqa: E402
from orchestrator.settings import load_settings  # noqa: E402
from orchestrator.storage.engine import connect, write_transaction  # noqa: E402
from orchestrator.storage.schema import customers, deliveries, runs  # noqa: E402
from tests.fakes.gateway import GatewayProcess  # noqa: E402
from tests.fakes.smtp_sink import SinkProcess, read_messages  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/9"
HTML = "<html><body>" + "".join(
    f"<p>Абзац {i}: новая коллекция, скидки для постоянных клиентов, бонусы &amp; подарки.</p>" for i in range(40)
) + "</body></html>"
TEXT = "Здравствуйте! Новая коллекция уже в магазине, для вас скидка 7% до 15 декабря. " * 6
SMS = "Анна, для вас скидка 7% на новую коллекцию до 15 декабря! Ваш магазин «Атлас». Отписка: STOP"

SETTINGS = """
[database]
url = "{db}"
[broker]
url = "{redis}"
[quiet_hours]
sms = "00:00-00:00"
email = "00:00-00:00"
[dispatch]
message_batch = {batch}
worker_threads = {threads}
{channel}
"""
EMAIL_CHANNEL = """[channels.email]
backend = "channels.email.Smtp"
host = "127.0.0.1"
port = {port}
sender = "Магазин Атлас <shop@example.com>"
connections = {connections}
"""
SMS_CHANNEL = """[channels.sms]
backend = "channels.sms.HttpGateway"
max_connections = {connections}
url = "{url}/send"
body = "json"
sender = "ATLAS"
[channels.sms.params]
to = "{{{{ phone }}}}"
text = "{{{{ text }}}}"
ref = "{{{{ ref }}}}"
"""


def fresh_db(kind: str, root: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{root / f'bench-{uuid.uuid4().hex[:8]}.db'}"
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    admin.dispose()
    return f"{PG}?options=-csearch_path%3D{schema}"


def fill(url: str, channel: str, rows: int) -> None:
    engine = connect(url)
    now = int(time.time())
    payload = ({"address": None, "subject": "Новая коллекция для вас", "text": TEXT, "html": HTML,
                "unsubscribe": "https://loyalty.example.com/u/" + "x" * 120}
               if channel == "email" else {"address": None, "text": SMS})
    with write_transaction(engine) as conn:
        run_id = conn.execute(runs.insert().returning(runs.c.id), {"campaign": "bench", "fire_at": now,
                              "status": "planned", "started_at": now}).scalar_one()
        for start in range(0, rows, 5000):
            ids = [f"B{i:07d}" for i in range(start, min(rows, start + 5000))]
            conn.execute(customers.insert(), [
                {"id": cid, "name": "Анна", "email": f"{cid.lower()}@example.com", "phone": f"+7916{i:07d}",
                 "consent_email": True, "consent_sms": True, "zones": "Europe/Moscow", "zone_source": "column",
                 "created_at": now, "updated_at": now} for i, cid in enumerate(ids, start)])
            conn.execute(deliveries.insert(), [
                {"run_id": run_id, "campaign": "bench", "customer_id": cid, "channel": channel, "category": "content",
                 "status": "planned", "send_at": now - 60, "expires_at": now + 86400, "attempts": 0,
                 "zone": "Europe/Moscow", "zone_source": "column", "created_at": now, "updated_at": now,
                 "payload": {**payload, "address": f"{cid.lower()}@example.com" if channel == "email" else f"+7916{i:07d}"}}
                for i, cid in enumerate(ids, start)])
    engine.dispose()


def flush_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS).flushdb()


# --- raw transports ---------------------------------------------------------------------------

def raw_smtp(port: int, count: int, connections: int) -> float:
    import aiosmtplib
    from email.message import EmailMessage

    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "shop@example.com", "raw@example.com", "raw"
    message.set_content(TEXT)
    message.add_alternative(HTML, subtype="html")
    data = message.as_bytes()

    async def main() -> float:
        clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port) for _ in range(connections)]
        await asyncio.gather(*(c.connect() for c in clients))
        started = time.perf_counter()

        async def loop(client: Any, n: int) -> None:
            for _ in range(n):
                await client.sendmail("shop@example.com", ["raw@example.com"], data)

        await asyncio.gather(*(loop(c, count // connections) for c in clients))
        elapsed = time.perf_counter() - started
        await asyncio.gather(*(c.quit() for c in clients))
        return (count // connections * connections) / elapsed

    return asyncio.run(main())


def raw_http(url: str, count: int, connections: int) -> float:
    """httpx alone at its best here: `connections` one-connection clients, each sending in turn."""
    import httpx

    async def main() -> float:
        clients = [httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) for _ in range(connections)]
        await asyncio.gather(*(c.post(url + "/send", json={"to": "+79160000000", "text": SMS, "ref": "0"}) for c in clients))
        started = time.perf_counter()

        async def loop(client: Any, n: int) -> None:
            for i in range(n):
                await client.post(url + "/send", json={"to": "+79160000000", "text": SMS, "ref": str(i)})

        await asyncio.gather(*(loop(c, count // connections) for c in clients))
        elapsed = time.perf_counter() - started
        await asyncio.gather(*(c.aclose() for c in clients))
        return (count // connections * connections) / elapsed

    return asyncio.run(main())


def raw_twice(function: Any, *args: Any) -> float:
    """The raw client in two processes at once: what the server itself can take (its ceiling)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as pool:
        return sum(pool.map(function, *([arg, arg] for arg in args)))


# --- the orchestrator -------------------------------------------------------------------------

class LineCounter:
    """Lines appended to a server's record file so far, read incrementally: polling must cost the
    benchmark process next to nothing while the workers run."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.lines = path, 0, 0

    def __call__(self) -> int:
        try:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                chunk = file.read()
        except FileNotFoundError:
            return 0
        complete = chunk.rfind(b"\n") + 1
        self.offset += complete
        self.lines += chunk.count(b"\n", 0, complete)
        return self.lines


class CpuMeter:
    """CPU seconds used by each party to a delivery phase, between two samples taken while messages
    arrive: the worker processes, the fake server, Redis and PostgreSQL (all of the machine's
    `postgres` processes), so that a rate can be set against what the two cores can give."""

    def __init__(self, worker_pid: int, server_pid: int) -> None:
        self.worker_pid, self.server_pid = worker_pid, server_pid

    def sample(self) -> dict[str, float]:
        workers = sum(cpu_seconds(pid) for pid in [self.worker_pid, *children(self.worker_pid)])
        servers = cpu_by_program()
        return {"workers": workers, "server": cpu_seconds(self.server_pid),
                "redis": servers["redis-server"], "postgres": servers["postgres"]}


def cpu_per_message(first: dict[str, float], last: dict[str, float], messages: int) -> dict[str, float]:
    """µs of CPU per message for each party, and the rate two cores would allow if all were busy."""
    used = {key: (last[key] - first[key]) / max(messages, 1) * 1e6 for key in first}
    used["total"] = sum(used.values())
    used["two_core_ceiling"] = 2e6 / used["total"] if used["total"] else 0.0
    return used


def deliver(root: Path, db: str, channel: str, channel_settings: str, rows: int, processes: int,
            received_times: Any, count_received: Callable[[], int], threads: int, batch: int,
            server_pid: int) -> tuple[float, dict[str, int], dict[str, float]]:
    url = fresh_db(db, root)
    path = root / f"settings-{channel}-{processes}.toml"
    path.write_text(SETTINGS.format(db=url, redis=REDIS, channel=channel_settings, threads=threads, batch=batch),
                    encoding="utf-8")
    fill(url, channel, rows)
    flush_redis()
    runtime = Runtime(load_settings(path))
    while runtime.pump().moved:
        pass
    before = len(received_times())
    counted_before = count_received()
    worker = subprocess.Popen([sys.executable, "-m", "orchestrator", "worker", "--config", str(path),
                               "--processes", str(processes)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.DEVNULL)
    engine = connect(url)
    meter = CpuMeter(worker.pid, server_pid)
    first: tuple[int, dict[str, float]] | None = None
    last: tuple[int, dict[str, float]] | None = None
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                left = conn.execute(sa.select(sa.func.count()).where(deliveries.c.status.in_(("queued", "sending")))).scalar()
            received = count_received() - counted_before
            if received and left:
                last = (received, meter.sample())
                first = first or last
            if not left:
                break
            time.sleep(0.2)
        with engine.connect() as conn:
            counts = dict(conn.execute(sa.select(deliveries.c.status, sa.func.count()).group_by(deliveries.c.status)).all())
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)
        runtime.stop()
        engine.dispose()
    times = sorted(received_times()[before:])
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    cpu = cpu_per_message(first[1], last[1], last[0] - first[0]) if first and last and last[0] > first[0] else {}
    return rate, counts, cpu


def broker_overhead(messages: int = 3000) -> float:
    """µs of dramatiq + Redis per broker message: enqueue, fetch, run a no-op, ack."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    flush_redis()
    broker = RedisBroker(url=REDIS)
    done = []

    @dramatiq.actor(broker=broker, queue_name="noop", max_retries=0)
    def noop(ids: list[int]) -> None:
        done.append(1)

    started = time.perf_counter()
    for _ in range(messages):
        noop.send(list(range(50)))
    worker = dramatiq.Worker(broker, worker_threads=8)
    worker.start()
    while len(done) < messages:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    worker.stop()
    broker.close()
    return elapsed / messages * 1e6


def rounds(args: argparse.Namespace, measure: Callable[[], tuple[float, float, tuple, tuple]]) -> dict[str, Any]:
    """Raw client, one worker and two workers measured one after the other, `--rounds` times: on a
    shared machine the noise between two phases moves a ratio by ±10 %, so the ratios are taken
    within each round and the median round is reported."""
    measured = []
    for _ in range(args.rounds):
        raw, raw2, (one, c1, cpu1), (two, c2, cpu2) = measure()
        measured.append({"raw": raw, "raw_two_clients": raw2, "one": one, "two": two, "one/raw": one / raw,
                         "two/one": two / one, "statuses_one": c1, "statuses_two": c2,
                         "cpu_us_one": cpu1, "cpu_us_two": cpu2})
    summary: dict[str, Any] = {key: statistics.median(r[key] for r in measured)
                               for key in ("raw", "raw_two_clients", "one", "two", "one/raw", "two/one")}
    summary["statuses_one"] = measured[-1]["statuses_one"]
    summary["statuses_two"] = measured[-1]["statuses_two"]
    for phase in ("cpu_us_one", "cpu_us_two"):
        keys = set.intersection(*(set(r[phase]) for r in measured))
        summary[phase] = {key: statistics.median(r[phase][key] for r in measured) for key in sorted(keys)}
    summary["rounds"] = measured
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--channel", choices=["email", "sms", "both"], default="both")
    parser.add_argument("--threads", type=int, default=2, help="worker threads per process")
    parser.add_argument("--batch", type=int, default=100, help="deliveries per broker message")
    parser.add_argument("--smtp-connections", type=int, default=32, help="SMTP connections per worker process (and raw)")
    parser.add_argument("--http-connections", type=int, default=32, help="HTTP connections per worker process (and raw)")
    parser.add_argument("--rounds", type=int, default=3, help="measure this many times; medians are reported")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"rows": args.rows, "db": args.db, "batch": args.batch}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.channel in ("email", "both"):
            with SinkProcess(out=root / "sink.jsonl") as sink:
                port = sink.address[1]
                settings = EMAIL_CHANNEL.format(port=port, connections=args.smtp_connections)
                times = lambda: [m.received_at for m in read_messages(root / "sink.jsonl")]  # noqa: E731
                count, pid = LineCounter(root / "sink.jsonl"), sink.process.pid
                results["email"] = rounds(args, lambda: (
                    raw_smtp(port, min(args.rows, 20000), args.smtp_connections),
                    raw_twice(raw_smtp, port, min(args.rows, 20000) // 2, args.smtp_connections),
                    deliver(root, args.db, "email", settings, args.rows, 1, times, count, args.threads, args.batch, pid),
                    deliver(root, args.db, "email", settings, args.rows, 2, times, count, args.threads, args.batch, pid),
                ))
        if args.channel in ("sms", "both"):
            with GatewayProcess(log=root / "gateway.jsonl") as gateway:
                settings = SMS_CHANNEL.format(url=gateway.url, connections=args.http_connections)
                times = lambda: [r["time"] for r in gateway.requests if r["path"] == "/send"]  # noqa: E731
                count, pid = LineCounter(root / "gateway.jsonl"), gateway.process.pid
                results["sms"] = rounds(args, lambda: (
                    raw_http(gateway.url, min(args.rows, 20000), args.http_connections),
                    raw_twice(raw_http, gateway.url, min(args.rows, 20000) // 2, args.http_connections),
                    deliver(root, args.db, "sms", settings, args.rows, 1, times, count, args.threads, args.batch, pid),
                    deliver(root, args.db, "sms", settings, args.rows, 2, times, count, args.threads, args.batch, pid),
                ))
    overhead = broker_overhead()
    results["broker_us_per_message"] = overhead
    results["broker_us_per_delivery"] = overhead / args.batch
    if args.json:
        print(json.dumps(results))
        return
    print(f"{args.rows} deliveries per round, ledger {args.db}, Redis broker, {args.batch} deliveries per broker message")
    for channel in ("email", "sms"):
        if channel in results:
            for index, r in enumerate([*results[channel]["rounds"], results[channel]]):
                label = f"round {index + 1}" if index < len(results[channel]["rounds"]) else "median "
                print(f"{channel:5} {label}  raw {r['raw']:7.0f}/s (two raw clients {r['raw_two_clients']:7.0f}/s)"
                      f"   1 worker {r['one']:7.0f}/s ({r['one/raw']:.0%} of raw)"
                      f"   2 workers {r['two']:7.0f}/s ({r['two/one']:.2f}x one)   {r['statuses_one']}")
    for channel in ("email", "sms"):
        for phase, label in (("cpu_us_one", "1 worker "), ("cpu_us_two", "2 workers")):
            cpu = results.get(channel, {}).get(phase)
            if cpu:
                print(f"{channel:5} {label} CPU per message (median): workers {cpu['workers']:4.0f} µs, "
                      f"server {cpu['server']:4.0f} µs, Redis {cpu['redis']:3.0f} µs, PostgreSQL {cpu['postgres']:3.0f} µs; "
                      f"total {cpu['total']:4.0f} µs -> two cores allow {cpu['two_core_ceiling']:5.0f}/s")
    print(f"broker: {overhead:.0f} µs per broker message, {overhead / args.batch:.1f} µs per delivery")


if __name__ == "__main__":
    main()
