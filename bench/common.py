"""What the load benchmarks (bench_web.py, bench_backlog.py) share: a scratch PostgreSQL schema, and
the memory and CPU time of processes read from /proc (Linux), so that no extra package is needed."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

PG = "postgresql://postgres@127.0.0.1:5432/test"
_TICKS = os.sysconf("SC_CLK_TCK")


@contextmanager
def scratch_schema(pg_url: str, prefix: str) -> Iterator[str]:
    """A schema of its own in `pg_url`'s database, dropped afterwards: the database url to use.
    Its sessions carry `prefix` as their application_name, so `PostgresCpu` can find them."""
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{pg_url}?options=-csearch_path%3D{schema}&application_name={prefix}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process now (None when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class PostgresCpu:
    """CPU seconds of the PostgreSQL sessions of one application_name since `start()`, from /proc.

    Sampled: a session that ends loses what it used since the last sample, and the total is that of
    this benchmark's own sessions only (the machine's other users of the server are not counted)."""

    def __init__(self, pg_url: str, application: str) -> None:
        self.admin = sa.create_engine(pg_url.split("?")[0].replace("postgresql://", "postgresql+psycopg://"))
        self.application = application
        self.base: dict[int, float] = {}
        self.last: dict[int, float] = {}

    def _pids(self) -> list[int]:
        with self.admin.connect() as conn:
            return list(conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :app"),
                                     {"app": self.application}).scalars())

    def start(self) -> None:
        self.last = {pid: cpu_seconds(pid) for pid in self._pids()}
        self.base = dict(self.last)

    def sample(self) -> None:
        for pid in self._pids():
            self.last[pid] = max(self.last.get(pid, 0.0), cpu_seconds(pid))

    def total(self) -> float:
        return sum(value - self.base.get(pid, 0.0) for pid, value in self.last.items())

    def opened(self) -> int:
        """Sessions seen that were not there at `start()` (one that lived between two samples is missed)."""
        return len(self.last.keys() - self.base.keys())

    def close(self) -> None:
        self.admin.dispose()


def cpu_by_program(names: tuple[str, ...] = ("postgres", "redis-server")) -> dict[str, float]:
    """CPU seconds used so far by every process of these programs (the servers the benchmark loads)."""
    totals = dict.fromkeys(names, 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        for name in names:
            if comm.startswith(name):
                totals[name] += cpu_seconds(int(entry.name))
    return totals
