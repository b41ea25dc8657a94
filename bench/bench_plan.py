"""Benchmark: `plan` and `run` of one campaign over N customers (default 1,000,000).

    .venv/bin/python bench/bench_plan.py [--rows N] [--db sqlite|postgresql] [--pg-url URL]

Builds a scratch workspace (settings, a segment, an SMS template, a campaign), fills the database
directly, then runs `orchestrator plan` and `orchestrator run` as child processes and prints
recipients per second and the child's peak memory, beside the raw Jinja2 render rate and the raw
batched insert rate of the same database measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator.storage.engine import connect, refresh_statistics, write_transaction  # noqa: E402
from orchestrator.storage.schema import customer_stats, customers  # noqa: E402

# Two SMS of two parts (UCS-2, up to 134 units): variables only, and with babel's money and date filters.
TEMPLATES = {
    "plain": (
        "{{ customer.first_name|default('Покупатель') }}, скидка {{ offer.discount }}% до {{ offer.valid_until }} "
        "в магазине {{ customer.city|default('вашего города') }}. Карта {{ customer.id }}"
    ),
    "filters": (
        "{{ customer.first_name|default('Покупатель') }}, ваш бонусный баланс {{ customer.bonus_balance|money }}. "
        "Скидка {{ offer.discount }}% до {{ offer.valid_until|date('d MMMM') }}. {{ customer.city|default('') }}"
    ),
}
FIRES = {"plain": "2026-12-01T10:00", "filters": "2027-02-01T10:00"}  # two cap windows apart
CITIES = ["Москва", "Самара", "Екатеринбург", "Омск", "Новосибирск", "Красноярск", "Иркутск", "Якутск",
          "Владивосток", "Магадан", "Калининград", "Алматы", "Ташкент", "Минск"]
ZONES = {"Москва": "Europe/Moscow", "Самара": "Europe/Samara", "Екатеринбург": "Asia/Yekaterinburg",
         "Омск": "Asia/Omsk", "Новосибирск": "Asia/Novosibirsk", "Красноярск": "Asia/Krasnoyarsk",
         "Иркутск": "Asia/Irkutsk", "Якутск": "Asia/Yakutsk", "Владивосток": "Asia/Vladivostok",
         "Магадан": "Asia/Magadan", "Калининград": "Europe/Kaliningrad", "Алматы": "Asia/Almaty",
         "Ташкент": "Asia/Tashkent", "Минск": "Europe/Minsk"}


def workspace(root: Path, url: str) -> Path:
    (root / "segments").mkdir(parents=True)
    (root / "templates" / "sms").mkdir(parents=True)
    (root / "campaigns").mkdir(parents=True)
    (root / "settings.toml").write_text(
        f'[database]\nurl = "{url}"\n[planner]\nbatch_size = 5000\n', encoding="utf-8")
    (root / "segments" / "bench.yaml").write_text(
        "description: bench\nwhere:\n  all:\n    - consent_sms: true\n    - abc_group: {in: [A, B]}\n", encoding="utf-8")
    for name, text in TEMPLATES.items():
        (root / "templates" / "sms" / f"{name}.txt.j2").write_text(text, encoding="utf-8")
        (root / "campaigns" / f"{name}.yaml").write_text(
            f"name: {name}\nsegment: bench\ncategory: service\nchannels: [sms]\ntemplate: {name}\n"
            f"offer: {{discount: 7, valid_until: 2026-12-15}}\nschedule:\n  at: {FIRES[name]}\n", encoding="utf-8")
    return root / "settings.toml"


def fill(engine: sa.Engine, rows: int) -> None:
    rng = random.Random(1)
    now = int(time.time())
    batch: list[dict] = []
    stats: list[dict] = []
    for i in range(rows):
        city = rng.choice(CITIES)
        cid = f"C{i:07d}"
        batch.append({
            "id": cid, "name": f"Клиент {i}", "first_name": rng.choice(["Анна", "Иван", None, "Мария"]),
            "email": f"c{i}@example.com", "phone": f"+7912{i:07d}", "city": city,
            "timezone": ZONES[city] if rng.random() < 0.3 else None, "abc_group": rng.choice("ABBC"),
            "bonus_balance": rng.randint(0, 5000) + 0.5, "consent_sms": rng.random() < 0.9,
            "consent_email": True, "consent_phone": False, "zones": ZONES[city], "zone_source": "city",
            "created_at": now, "updated_at": now, "attrs": {"client_type": "retail"},
        })
        stats.append({"customer_id": cid, "purchases_count": 3, "total_spent": 1000.0, "first_purchase_day": 20000,
                      "last_purchase_day": 20300, "avg_purchase_interval_days": 30.0, "updated_at": now})
        if len(batch) == 10000:
            _write(engine, batch, stats)
            batch, stats = [], []
    _write(engine, batch, stats)
    refresh_statistics(engine, "customers", "customer_stats")  # as `orchestrator import` does


def _write(engine: sa.Engine, batch: list[dict], stats: list[dict]) -> None:
    if batch:
        with write_transaction(engine) as conn:
            conn.execute(customers.insert(), batch)
            conn.execute(customer_stats.insert(), stats)


def raw_render_rate(text: str, seconds: float = 2.0) -> float:
    """The same template in a bare sandboxed Jinja2 environment, filters straight from babel."""
    from datetime import date

    from babel.dates import format_date
    from babel.numbers import format_currency
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=StrictUndefined)
    env.filters["money"] = lambda v: format_currency(v, "RUB", locale="ru_RU")
    env.filters["date"] = lambda v, f: format_date(date.fromisoformat(v), f, locale="ru_RU")
    template = env.from_string(text)
    context = {"customer": {"first_name": "Анна", "bonus_balance": 1234.5, "city": "Омск", "id": "C0000042"},
               "offer": {"discount": 7, "valid_until": "2026-12-15"},
               "links": {"cabinet": "http://127.0.0.1:8000/cabinet"}}
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(1000):
            template.render(context)
        count += 1000
    return count / (time.perf_counter() - started)


def raw_insert_rate(engine: sa.Engine, rows: int = 200_000) -> float:
    scratch = sa.Table("bench_raw", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                       sa.Column("run_id", sa.Integer), sa.Column("customer_id", sa.String(64)),
                       sa.Column("channel", sa.String(16)), sa.Column("status", sa.String(16)),
                       sa.Column("send_at", sa.BigInteger), sa.Column("payload", sa.Text),
                       sa.UniqueConstraint("run_id", "customer_id", "channel"))
    scratch.drop(engine, checkfirst=True)
    scratch.create(engine)
    payload = json.dumps({"address": "+79120000000", "text": "x" * 120})
    started = time.perf_counter()
    for start in range(0, rows, 10000):
        with write_transaction(engine) as conn:
            conn.execute(scratch.insert(), [
                {"run_id": 1, "customer_id": f"C{i:07d}", "channel": "sms", "status": "planned",
                 "send_at": 1, "payload": payload} for i in range(start, start + 10000)])
    rate = rows / (time.perf_counter() - started)
    scratch.drop(engine)
    return rate


def timed_child(settings: Path, *args: str) -> tuple[float, dict, float]:
    """Run one command in a child process: wall time, its summary, and its own peak RSS (MB)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "--config", str(settings), *args, "--json"],
                                stdout=out, stderr=err, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"{args[0]} failed: {err.read()}")
        summary = [json.loads(line) for line in out if '"summary"' in line][-1]
    return elapsed, summary, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it (SQLite), for profiling")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        root = args.keep or Path(tmp)
        schema = None
        if args.db == "sqlite":
            url = f"sqlite:///{root / 'bench.db'}"
        else:
            schema = f"bench_{os.getpid()}"
            admin = sa.create_engine(args.pg_url.replace("postgresql://", "postgresql+psycopg://"))
            with admin.begin() as conn:
                conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
            url = f"{args.pg_url}?options=-csearch_path%3D{schema}"
        try:
            settings = workspace(root / "ws", url)
            engine = connect(url)
            started = time.perf_counter()
            fill(engine, args.rows)
            print(f"filled {args.rows:,} customers in {time.perf_counter() - started:.1f} s")
            insert = raw_insert_rate(engine)
            engine.dispose()
            print(f"raw batched ledger insert:    {insert:12,.0f} rows/s ({args.db})")
            for name, text in TEMPLATES.items():
                render = raw_render_rate(text)
                print(f"template {name}: raw Jinja2 render {render:,.0f} /s")
                for command in ("plan", "run"):
                    elapsed, summary, peak = timed_child(settings, command, name, "--now", FIRES[name])
                    targeted = summary["targeted"]
                    rate = targeted / elapsed
                    print(f"  {command:4} {targeted:,} recipients in {elapsed:.1f} s: {rate:8,.0f} recipients/s "
                          f"(ratio to raw render {rate / render:.2f}, to raw insert {rate / insert:.2f}), "
                          f"peak RSS {peak:.0f} MB, planned {summary['planned']:,}, suppressed {summary['suppressed']:,}")
        finally:
            if schema:
                with admin.begin() as conn:
                    conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))


if __name__ == "__main__":
    main()
