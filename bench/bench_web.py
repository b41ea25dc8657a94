"""Benchmark: the web app under concurrent requests from wrk on loopback, against the raw HTTP stack.

    .venv/bin/python bench/bench_web.py [--seconds 10] [--connections 16,64] [--customers 10000] [--json]

Needs wrk (`apt-get install wrk`).  A scratch PostgreSQL schema gets N customers of three managers,
call tasks, an email campaign planned for everyone and an SMS campaign already sent; then
`orchestrator serve` runs as its own process, and wrk drives one scenario at a time for a bounded
time per number of connections: a manager's task board, a customer card, a campaign report,
/healthz, /metrics, the one-click unsubscribe POST (a Lua script cycling through pre-signed links),
and the SMS gateway's status and inbound STOP hooks with the right secret.  Printed per scenario:
requests/s, p50/p90/p99/max latency, socket errors and non-2xx answers, the CPU the server and
PostgreSQL used, and the ratio to the raw stack measured in the same run: a bare Starlette app on
uvicorn with the same server settings, answering "ok" (`raw hello`) or one `SELECT 1` through the
thread pool and a pool of the same size (`raw db`).  After each write scenario the effects are
counted in the database: every request answered 2xx must have landed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import PG, PostgresCpu, children, cpu_seconds, rss_mb, scratch_schema  # noqa: E402

HOOK_SECRET = "bench-hook-secret"
PASSWORD = "bench password 1"
MANAGERS = ("ivanova", "petrov", "sidorova")
MARKETER = "marta"
TASKS_PER_MANAGER = 300
WEB_SETTINGS = f"""
[web]
base_url = "http://127.0.0.1:{{port}}"
hook_secret = "{HOOK_SECRET}"
"""
FORM = "Content-Type: application/x-www-form-urlencoded"
APPLICATION = "bench_web"

# One request per call of request(): `{}` in the path or body is the next item of the thread's
# share of the items file; done() prints the figures of all threads as one JSON line.
WRK_LUA = r"""
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  method, path_t, body_t, items_file, nthreads = args[1], args[2], args[3], args[4], tonumber(args[5])
  items = {}
  if items_file ~= "" then
    for line in io.lines(items_file) do items[#items + 1] = line end
  end
  sent, non2xx = 0, 0
end

function request()
  local item = ""
  if #items > 0 then item = items[((id + sent * nthreads) % #items) + 1] end
  sent = sent + 1
  local fill = function() return item end
  local path = (string.gsub(path_t, "{}", fill))
  local body = nil
  if body_t ~= "" then body = (string.gsub(body_t, "{}", fill)) end
  return wrk.format(method, path, nil, body)
end

function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end

function done(summary, latency, requests)
  local total_sent, bad = 0, 0
  for _, t in ipairs(threads) do
    total_sent = total_sent + t:get("sent")
    bad = bad + t:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"non2xx":%d,"sent":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout, bad, total_sent,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


# --- the raw stack --------------------------------------------------------------------------

def raw_app(db_url: str) -> Any:
    """Starlette alone: `/` answers "ok"; `/db` runs `SELECT 1` in the thread pool, as our pages do,
    with as many threads as the pool keeps connections (as our app does)."""
    from contextlib import asynccontextmanager

    import anyio.to_thread
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from orchestrator.storage.engine import connect

    engine = connect(db_url, migrate=False)

    def select_one() -> int:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT 1")).scalar_one()

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def db(request: Any) -> PlainTextResponse:
        return PlainTextResponse(str(await run_in_threadpool(select_one)))

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        anyio.to_thread.current_default_thread_limiter().total_tokens = engine.pool.size()
        yield

    return Starlette(routes=[Route("/", hello), Route("/db", db)], lifespan=lifespan)


def serve_raw(port: int, db_url: str) -> None:
    """The raw app on the server settings of `orchestrator serve` (cli_web.serve)."""
    import uvicorn

    uvicorn.run(raw_app(db_url), host="127.0.0.1", port=port, log_config=None, proxy_headers=True,
                server_header=False, date_header=True)


# --- the workspace --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Data:
    """What the scenarios cycle through, and the people they act as."""

    own_customers: list[str] = field(default_factory=list)
    unsubscribe_tokens: list[str] = field(default_factory=list)
    provider_ids: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)


def make_workspace(root: Path, url: str, port: int) -> Path:
    from tests.planner_fixtures import make_workspace as planner_workspace

    path = planner_workspace(root, url, batch=5000)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(WEB_SETTINGS.format(port=port))
    return path


def fill(path: Path, count: int) -> Data:
    """Customers, an email campaign planned for all, an SMS campaign sent to all, call tasks, users."""
    from orchestrator.links import unsubscribe_token
    from orchestrator.settings import load_settings
    from orchestrator.storage.engine import connect
    from orchestrator.users import add_user
    from tests.planner_fixtures import customer, insert_customers

    settings = load_settings(path)
    engine = connect(settings.database_url)
    ids = [f"W{i:06d}" for i in range(count)]
    phones = [f"+7916{i:07d}" for i in range(count)]
    for start in range(0, count, 5000):
        insert_customers(engine, [
            customer(cid, phone=phones[i], manager=MANAGERS[i % len(MANAGERS)], name=f"Клиент {i}",
                     abc_group="AB"[i % 2], bonus_balance=float(i % 5000))
            for i, cid in enumerate(ids[start:start + 5000], start)])
    plan(path, settings, engine, "news", ["email"])
    plan(path, settings, engine, "sms-news", ["sms"])
    provider_ids = mark_sent(engine, "sms-news")
    add_tasks(engine, ids)
    for login in MANAGERS:
        add_user(engine, login, "manager", PASSWORD)
    add_user(engine, MARKETER, "marketer", PASSWORD)
    engine.dispose()
    secret = settings.general.secret_key
    tokens = [unsubscribe_token(secret, cid, channel, "news") for cid in ids for channel in ("email", "phone")]
    own = [cid for i, cid in enumerate(ids) if i % len(MANAGERS) == 0]
    return Data(own, tokens, provider_ids, [quote(phone, safe="") for phone in phones])


def plan(path: Path, settings: Any, engine: sa.Engine, name: str, channels: list[str]) -> None:
    from datetime import datetime, timedelta, timezone

    from orchestrator.campaigns import load_campaign
    from orchestrator.planner import plan_run, prepare
    from tests.planner_fixtures import write_campaign

    fire = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(hours=1)
    campaign = write_campaign(path.parent, name, channels=channels, category="content")
    plan_run(engine, engine, prepare(settings, load_campaign(campaign), engine=engine), fire, dry_run=False)


def mark_sent(engine: sa.Engine, campaign: str) -> list[str]:
    """The campaign's rows as the SMS channel leaves them: `sent`, with the gateway's message id."""
    from orchestrator.storage.schema import deliveries

    now = int(time.time())
    with engine.begin() as conn:
        conn.execute(deliveries.update().where(deliveries.c.campaign == campaign).values(
            status="sent", sent_at=deliveries.c.send_at, attempts=1, updated_at=now,
            provider_id=sa.func.concat("gw-", deliveries.c.id)))
        return list(conn.execute(sa.select(deliveries.c.provider_id).where(deliveries.c.campaign == campaign)
                                 .order_by(deliveries.c.id)).scalars())


def add_tasks(engine: sa.Engine, ids: list[str]) -> None:
    """TASKS_PER_MANAGER call tasks per manager on their own clients, a sixth of them done."""
    from orchestrator.storage.schema import call_tasks

    now = int(time.time())
    rows = []
    for index, cid in enumerate(ids[:TASKS_PER_MANAGER * len(MANAGERS)]):
        done = index % 6 == 5
        rows.append({
            "delivery_id": 10_000_000 + index, "campaign": "wake-up", "customer_id": cid,
            "manager": MANAGERS[index % len(MANAGERS)], "status": "done" if done else "open",
            "due_from": now - 3600 + index * 60, "due_until": now + 4 * 3600 + index * 60, "zone": "Europe/Moscow",
            "zone_source": "column", "script": "Предложить скидку 7% на новую коллекцию", "offer": {"discount": 7},
            "card": {}, "attempts": 1 if done else 0, "outcome": "reached" if done else None,
            "history": [], "created_at": now, "updated_at": now,
        })
    with engine.begin() as conn:
        conn.execute(call_tasks.insert(), rows)


# --- the server -----------------------------------------------------------------------------

def start_server(args: list[str], port: int, log: Path) -> subprocess.Popen:
    """A server process; returns once it answers on `port`."""
    import httpx

    with log.open("w") as handle:
        process = subprocess.Popen(args, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                   stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited: {log.read_text()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    sys.exit(f"the server did not start: {log.read_text()[-2000:]}")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def login(base: str, user: str) -> str:
    """The session cookie of a login through the real form (CSRF token included)."""
    import httpx

    with httpx.Client(base_url=base, follow_redirects=False) as client:
        page = client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        answer = client.post("/login", data={"login": user, "password": PASSWORD, "csrf": csrf.group(1) if csrf else "",
                                             "next": "/"})
        if answer.status_code != 303:
            sys.exit(f"login of {user} failed: {answer.status_code}")
        return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


# --- scenarios ------------------------------------------------------------------------------

Counter = Callable[[sa.Engine], int]


@dataclass
class Scenario:
    name: str
    method: str
    path: str
    body: str = ""
    headers: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    landed: Counter | None = None  # for writes: how many effects are in the database now
    raw: bool = False              # served by the raw app, not ours


def _count(query: sa.Select) -> Counter:
    def count(engine: sa.Engine) -> int:
        with engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    return count


def scenarios(data: Data, cookies: dict[str, str]) -> list[Scenario]:
    from orchestrator.storage.schema import customers, deliveries

    manager = f"Cookie: {cookies[MANAGERS[0]]}"
    hook = f"X-Hook-Secret: {HOOK_SECRET}"
    unsubscribed = (sa.func.count(customers.c.unsubscribed_email) + sa.func.count(customers.c.unsubscribed_phone))
    return [
        Scenario("raw hello", "GET", "/", raw=True),
        Scenario("raw db", "GET", "/db", raw=True),
        Scenario("healthz", "GET", "/healthz"),
        Scenario("metrics", "GET", "/metrics"),
        Scenario("task board", "GET", "/tasks", headers=[manager]),
        Scenario("customer card", "GET", "/customers/{}", headers=[manager], items=data.own_customers),
        Scenario("campaign report", "GET", "/campaigns/sms-news", headers=[f"Cookie: {cookies[MARKETER]}"]),
        Scenario("unsubscribe POST", "POST", "/u/{}", body="List-Unsubscribe=One-Click", headers=[FORM],
                 items=data.unsubscribe_tokens, landed=_count(sa.select(unsubscribed))),
        Scenario("sms status hook", "POST", "/hooks/sms/status", body="message_id={}&status=DELIVRD",
                 headers=[FORM, hook], items=data.provider_ids,
                 landed=_count(sa.select(sa.func.count()).where(deliveries.c.detail.like("%delivery report: DELIVRD%")))),
        Scenario("sms STOP hook", "POST", "/hooks/sms/inbound", body="from={}&text=STOP", headers=[FORM, hook],
                 items=data.phones, landed=_count(sa.select(sa.func.count(customers.c.unsubscribed_sms)))),
    ]


def share(items: list[str], index: int, parts: int) -> list[str]:
    """A write scenario's items split between its runs, so that every run acts on fresh ones."""
    size = len(items) // parts
    return items[index * size:(index + 1) * size]


def run_wrk(root: Path, base: str, scenario: Scenario, items: list[str], connections: int, seconds: float,
            postgres: PostgresCpu) -> dict[str, Any]:
    """wrk for `seconds`, PostgreSQL's CPU sampled meanwhile; its figures from the Lua done()."""
    script = root / "bench.lua"
    items_file = root / "items.txt"
    items_file.write_text("\n".join(items) + "\n" if items else "", encoding="ascii")
    threads = 1
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--timeout", "30s",
               "-s", str(script), *sum((["-H", h] for h in scenario.headers), []), base,
               "--", scenario.method, scenario.path, scenario.body, str(items_file) if items else "", str(threads)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while process.poll() is None:
        postgres.sample()
        time.sleep(0.5)
    out, err = process.communicate()
    line = next((x for x in out.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        sys.exit(f"wrk failed: {out}\n{err}")
    figures = json.loads(line[4:])
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    figures["errors"] = sum(figures[k] for k in ("connect", "read", "write", "timeout"))
    return figures


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a server process and its children (`serve --workers N` forks N)."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children(pid))


def wait_idle(pid: int, timeout: float = 120.0) -> None:
    """Until the server has finished what the previous run left in flight (64 reports take seconds),
    so that it does not count against the next scenario."""
    deadline = time.monotonic() + timeout
    last = _tree_cpu(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _tree_cpu(pid)
        if now - last < 0.05:
            return
        last = now


def measure(root: Path, engine: sa.Engine, scenario: Scenario, base: str, server: int, connections: int,
            seconds: float, items: list[str], pg_url: str) -> dict[str, Any]:
    """One wrk run, the CPU and memory it cost, and for writes whether the effects landed."""
    wait_idle(server)
    before = scenario.landed(engine) if scenario.landed else 0
    postgres = PostgresCpu(pg_url, APPLICATION)
    postgres.start()
    server_before, started = _tree_cpu(server), time.monotonic()
    figures = run_wrk(root, base, scenario, items, connections, seconds, postgres)
    elapsed = time.monotonic() - started
    postgres.sample()
    postgres.close()
    figures["server_cpu"] = (_tree_cpu(server) - server_before) / elapsed
    figures["postgres_cpu"] = postgres.total() / elapsed
    figures["sessions_opened"] = postgres.opened()
    figures["server_rss_mb"] = sum(rss_mb(pid) or 0.0 for pid in [server, *children(server)])
    if scenario.landed:
        wait_idle(server)  # requests in flight when wrk stopped still complete on the server
        landed = scenario.landed(engine) - before
        ok = figures["requests"] - figures["non2xx"]
        figures["landed"] = landed
        figures["landed_ok"] = min(ok, len(items)) <= landed <= min(figures["sent"], len(items))
        figures["wrapped"] = figures["sent"] > len(items)
    return figures


# --- reporting -----------------------------------------------------------------------------

def _ms(us: float) -> str:
    return f"{us / 1000:.1f}"


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"wrk 1 thread, {args.seconds:g} s per run, {args.customers:,} customers, PostgreSQL, "
          f"`orchestrator serve` with {args.web_workers} process(es); latency in ms; CPU in cores; "
          f"pg+: PostgreSQL sessions opened during the run; /raw, /rawdb: req/s against raw hello, raw db")
    header = (f"{'scenario':18} {'conns':>5} {'req/s':>8} {'/raw':>5} {'/rawdb':>6} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} "
              f"{'errors':>6} {'non2xx':>6} {'server':>6} {'pg':>5} {'pg+':>4} {'RSS MB':>6}  effects")
    print(header)
    for r in results:
        effects = ""
        if "landed" in r:
            effects = f"{r['landed']:,} landed of {r['requests'] - r['non2xx']:,} ok: {'OK' if r['landed_ok'] else 'MISSING'}"
            effects += " (items reused)" if r["wrapped"] else ""
        print(f"{r['scenario']:18} {r['connections']:>5} {r['rps']:>8,.0f} {r['ratio']:>5.2f} {r['ratio_db']:>6.2f} "
              f"{_ms(r['p50']):>7} "
              f"{_ms(r['p90']):>7} {_ms(r['p99']):>7} {_ms(r['max']):>7} {r['errors']:>6} {r['non2xx']:>6} "
              f"{r['server_cpu']:>6.2f} {r['postgres_cpu']:>5.2f} {r['sessions_opened']:>4} "
              f"{r['server_rss_mb'] or 0:>6.0f}  {effects}")


def run_all(args: argparse.Namespace, root: Path, url: str) -> list[dict[str, Any]]:
    from orchestrator.storage.engine import connect

    port, raw_port = free_port(), free_port()
    path = make_workspace(root / "ws", url, port)
    started = time.perf_counter()
    data = fill(path, args.customers)
    print(f"filled the workspace in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    python = sys.executable
    serve = [python, "-m", "orchestrator", "serve", "--config", str(path), "--port", str(port),
             "--workers", str(args.web_workers)]
    ours = start_server(serve, port, root / "serve.log")
    raw = start_server([python, __file__, "--raw-server", str(raw_port), "--raw-db", url], raw_port, root / "raw.log")
    engine = connect(url, migrate=False)
    results: list[dict[str, Any]] = []
    try:
        cookies = {user: login(f"http://127.0.0.1:{port}", user) for user in (MANAGERS[0], MARKETER)}
        chosen = [s for s in scenarios(data, cookies) if not args.only or s.raw or s.name in args.only]
        raw_rps: dict[tuple[str, int], float] = {}
        for scenario in chosen:
            for index, connections in enumerate(args.connections):
                items = share(scenario.items, index, len(args.connections)) if scenario.landed else scenario.items
                target, process = (raw_port, raw) if scenario.raw else (port, ours)
                figures = measure(root, engine, scenario, f"http://127.0.0.1:{target}", process.pid, connections,
                                  args.seconds, items, args.pg_url)
                if scenario.raw:
                    raw_rps[scenario.name, connections] = figures["rps"]
                figures.update(scenario=scenario.name, connections=connections,
                               ratio=figures["rps"] / raw_rps["raw hello", connections],
                               ratio_db=figures["rps"] / raw_rps.get(("raw db", connections), figures["rps"]))
                results.append(figures)
                print(f"  {scenario.name} c{connections}: {figures['rps']:,.0f} req/s", file=sys.stderr)
    finally:
        engine.dispose()
        stop_server(ours)
        stop_server(raw)
    errors = [line for line in (root / "serve.log").read_text(errors="replace").splitlines() if '"level": "error"' in line]
    if errors:
        print(f"{len(errors)} error line(s) in the server log, the first: {errors[0][:500]}", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    parser.add_argument("--connections", default="16,64", help="comma-separated connection counts")
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--web-workers", type=int, default=1, help="`serve --workers`")
    parser.add_argument("--only", action="append", help="run only this scenario (repeatable); raw ones always run")
    parser.add_argument("--pg-url", default=PG)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--raw-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--raw-db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_server:
        serve_raw(args.raw_server, args.raw_db)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    args.connections = [int(x) for x in args.connections.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp, scratch_schema(args.pg_url, APPLICATION) as url:
        root = Path(tmp)
        (root / "bench.lua").write_text(WRK_LUA, encoding="utf-8")
        results = run_all(args, root, url)
    if args.json:
        for result in results:
            print(json.dumps(result))
    else:
        report(results, args)
    if any(r["errors"] or r["non2xx"] or not r.get("landed_ok", True) for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
