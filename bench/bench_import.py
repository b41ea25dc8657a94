"""Import throughput: customers and purchases CSV → database, against the raw batched insert rate.

    .venv/bin/python bench/bench_import.py [--rows N] [--db sqlite|postgresql]

Generates an N-row customers CSV (Russian formats: `8 (912) …` phones, `22.11.1980` birthdays,
decimal commas, cities, custom attributes) and an N-row purchases CSV in a temp dir, imports both,
and prints rows/s, the CPU time and peak RSS of the process (and of the import's parse process), and — measured in the same run — the rate of a bare
executemany of the same rows into a scratch table, so the import's overhead is a ratio, not a guess.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator import importer  # noqa: E402
from orchestrator.settings import Settings, SettingsModel  # noqa: E402
from orchestrator.storage import schema  # noqa: E402
from orchestrator.storage.engine import connect, write_transaction  # noqa: E402

PG_URL = os.environ.get("ORCHESTRATOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
CITIES = ["Москва", "г. Санкт-Петербург", "Екатеринбург", "Новосибирск", "Казань", "Омск",
          "Красноярск", "Владивосток", "Алматы", "Минск", "", "", "Урюпинск"]
FIRST = ["Иван", "Пётр", "Анна", "Мария", "Олег", "Елена", "Сергей", "Ольга"]
LAST = ["Иванов", "Петров", "Сидоров", "Смирнов", "Кузнецов", "Попов"]
CATEGORIES = ["мебель", "металл", "ювелирка", "аксессуары"]


def _phone(rng: random.Random) -> str:
    digits = f"9{rng.randrange(10**9):09d}"
    shape = rng.random()
    if shape < 0.4:
        return f"8 ({digits[:3]}) {digits[3:6]}-{digits[6:8]}-{digits[8:]}"
    if shape < 0.7:
        return f"+7{digits}"
    if shape < 0.85:
        return f"+7 {digits[:3]} {digits[3:6]} {digits[6:8]} {digits[8:]}"
    if shape < 0.93:
        return f"8 (343) {rng.randrange(100, 999)}-{rng.randrange(10, 99)}-{rng.randrange(10, 99)}"
    if shape < 0.97:
        return ""
    return "12-34"


def write_customers(path: Path, rows: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow([
            "id", "name", "first_name", "email", "phone", "city", "birthday", "manager",
            "abc_group", "bonus_balance", "discount_percent", "consent_email", "consent_sms",
            "consent_phone", "loyalty_level", "first_order",
        ])
        for n in range(rows):
            first = rng.choice(FIRST)
            writer.writerow([
                f"C{n:07d}", f"{rng.choice(LAST)} {first}", first,
                f"client{n}@example.ru" if rng.random() < 0.8 else "",
                _phone(rng), rng.choice(CITIES),
                f"{rng.randrange(1, 29):02d}.{rng.randrange(1, 13):02d}.{rng.randrange(1950, 2005)}",
                f"manager{n % 20}", rng.choice("ABC"),
                f"{rng.randrange(0, 50000)},{rng.randrange(0, 100):02d}", rng.choice(["5", "7", "10"]),
                rng.choice(["да", "нет"]), rng.choice(["1", "0"]), rng.choice(["yes", "no"]),
                rng.choice(["silver", "gold", "platinum"]),
                f"{rng.randrange(1, 29)}.{rng.randrange(1, 13)}.{rng.randrange(2015, 2026)}",
            ])


def write_purchases(path: Path, rows: int, customers: int, seed: int = 2) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["customer_id", "date", "amount", "category"])
        for _ in range(rows):
            writer.writerow([
                f"C{rng.randrange(customers):07d}",
                f"{rng.randrange(1, 29):02d}.{rng.randrange(1, 13):02d}.{rng.randrange(2022, 2026)}",
                f"{rng.randrange(100, 200000)},{rng.randrange(0, 100):02d}",
                rng.choice(CATEGORIES),
            ])


def children_cpu() -> float:
    """CPU seconds of the finished child processes (the import's parse process)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def raw_insert_rate(engine: sa.Engine, rows: int) -> float:
    """A bare executemany of customer-shaped rows, batch for batch as the import writes them, by
    the same route (the driver itself on SQLite, SQLAlchemy on PostgreSQL): the floor under the
    import's cost, so that `import / raw` is the share left to parsing and checking."""
    scratch = schema.customers.to_metadata(sa.MetaData(), name="bench_scratch_customers")
    for index in scratch.indexes:  # index names are per schema: the real table's are taken
        index.name = f"bench_scratch_{index.name}"
    scratch.drop(engine, checkfirst=True)
    scratch.create(engine)
    now = int(time.time())
    rng = random.Random(3)
    writer = importer._BatchWriter(engine, scratch.insert())
    started = time.perf_counter()
    for start in range(0, rows, importer.BATCH_ROWS):
        batch = [
            {
                "id": f"C{n:07d}", "name": "Иванов Иван", "first_name": "Иван",
                "email": f"client{n}@example.ru", "phone": f"+79{rng.randrange(10**9):09d}",
                "city": "Москва", "birthday": writer.date_value(date(1980, 11, 22)),
                "birth_month": 11, "birth_day": 22,
                "manager": "manager1", "abc_group": "A", "bonus_balance": 1234.5,
                "discount_percent": 5.0, "consent_email": True, "consent_sms": False,
                "consent_phone": True,
                "attrs": writer.json_value({"loyalty_level": "gold", "first_order": "2020-01-01"}),
                "zones": "Europe/Moscow", "zone_source": "city", "created_at": now, "updated_at": now,
            }
            for n in range(start, min(rows, start + importer.BATCH_ROWS))
        ]
        with write_transaction(engine) as conn:
            writer.write(conn, batch)
    elapsed = time.perf_counter() - started
    scratch.drop(engine)
    return rows / elapsed


def database(kind: str, folder: Path) -> tuple[str, sa.Engine | None, str | None]:
    if kind == "sqlite":
        return f"sqlite:///{folder / 'bench.db'}", None, None
    schema_name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema_name}"))
    separator = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{separator}options=-csearch_path%3D{schema_name}", admin, schema_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    settings = Settings(SettingsModel(), None)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        customers_csv, purchases_csv = folder / "customers.csv", folder / "purchases.csv"
        started = time.perf_counter()
        write_customers(customers_csv, args.rows)
        write_purchases(purchases_csv, args.rows, args.rows)
        print(f"generated {args.rows:,} customers ({customers_csv.stat().st_size / 1e6:.0f} MB) and "
              f"{args.rows:,} purchases in {time.perf_counter() - started:.1f} s")
        url, admin, schema_name = database(args.db, folder)
        engine = connect(url)
        try:
            started, cpu, worker_cpu = time.perf_counter(), time.process_time(), children_cpu()
            report = importer.import_customers(engine, customers_csv, settings)
            elapsed = time.perf_counter() - started
            cpu, worker_cpu = time.process_time() - cpu, children_cpu() - worker_cpu
            rate = report.rows_read / elapsed
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            worker_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            print(f"customers: {report.rows_read:,} rows in {elapsed:.1f} s = {rate:,.0f} rows/s "
                  f"({report.rows_read / (cpu + worker_cpu):,.0f} rows per CPU second of both "
                  f"processes: {cpu:.1f} s here, {worker_cpu:.1f} s in the parse process; inserted "
                  f"{report.inserted:,}, problems {len(report.problems) + report.problems_omitted:,})")
            print(f"peak RSS after the customer import: {rss_mb:.0f} MB "
                  f"(the parse process: {worker_rss_mb:.0f} MB)")

            started = time.perf_counter()
            again = importer.import_customers(engine, customers_csv, settings)
            elapsed = time.perf_counter() - started
            print(f"customers re-import (all updates): {again.rows_read / elapsed:,.0f} rows/s "
                  f"(updated {again.updated:,})")

            refresh = {"seconds": 0.0}
            original = importer._refresh_stats

            def timed_refresh(engine_: sa.Engine, settings_: Settings) -> None:
                begun = time.perf_counter()
                original(engine_, settings_)
                refresh["seconds"] = time.perf_counter() - begun

            importer._refresh_stats = timed_refresh
            started = time.perf_counter()
            purchases = importer.import_purchases(engine, purchases_csv, settings)
            elapsed = time.perf_counter() - started - refresh["seconds"]
            print(f"purchases: {purchases.rows_read:,} rows in {elapsed:.1f} s = "
                  f"{purchases.rows_read / elapsed:,.0f} rows/s (inserted {purchases.inserted:,}); "
                  f"derived-stats refresh {refresh['seconds']:.1f} s")

            raw = raw_insert_rate(engine, args.rows)
            print(f"raw batched executemany into a scratch table: {raw:,.0f} rows/s; "
                  f"import / raw = {rate / raw:.2f}")
            print(f"peak RSS overall: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        finally:
            engine.dispose()
            if admin is not None:
                with admin.begin() as conn:
                    conn.execute(sa.text(f"DROP SCHEMA {schema_name} CASCADE"))
                admin.dispose()


if __name__ == "__main__":
    main()
