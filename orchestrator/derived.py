"""Per-customer statistics (SPEC 3, end) and the season-corrected sleep score.

`refresh_stats` rebuilds `customer_stats` from the purchases.  `derived_columns` turns those rows
into SQL expressions for one `now`, so that segments filter on derived fields inside the database
and never in Python.  docs/SLEEP_SCORE.md explains the sleep score to marketers and engineers.

The sleep score in one paragraph: every client has a seasonal activity index per calendar month
(`season_01..season_12`, 1.0 = an ordinary month, 0.1 = the client practically never buys then).
A "seasonal clock" advances by the month's index every day; a year of the clock is always 365.
The usual gap between visits is measured on that clock, and so is the time since the last visit:
`sleep_score(now) = (clock(now) - clock_last) / usual_gap`.  A client who always pauses in July
has a July index near 0.1, so July barely moves the clock and July silence is not sleep.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from itertools import accumulate
from operator import mul, sub
from typing import Any, Callable, Mapping, Sequence
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from orchestrator.settings import Settings
from orchestrator.storage.engine import write_transaction
from orchestrator.storage.schema import SEASON_COLUMNS, customer_stats, customers, purchases

EPOCH = date(1970, 1, 1)
EPOCH_ORDINAL = EPOCH.toordinal()
# The seasonal clock ignores 29 February (it is the same clock reading as 1 March), so every
# year of the clock is 365 days long and the twelve month lengths are constants.
MONTH_DAYS: tuple[int, ...] = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
YEAR_DAYS = 365
# Imaginary "average" visits added to each month before a client's own visits speak: half a
# visit per month, six a year.  Few visits → the index stays near the shop-wide pattern.
PRIOR_VISITS_PER_MONTH = 0.5
SEASON_FLOOR = 0.1  # no month is ever fully "off": a client silent there for years still ages
MIN_USUAL_GAP = 1.0  # seasonal days; guards clients whose visits all fall on 29 Feb / 1 Mar

DERIVED_FIELDS: tuple[str, ...] = (
    "purchases_count",
    "total_spent",
    "last_purchase_at",
    "days_since_last_purchase",
    "avg_purchase_interval_days",
    "preferred_category",
    "is_sleeping",
    "sleep_score",
    "birthday_in_days",
)
# Listed by SPEC 3 among the derived fields, but it depends on the recipient's zone at render
# time: templates get it, segments cannot filter on it.
TEMPLATE_ONLY_FIELDS: tuple[str, ...] = ("local_time",)


# --- calendar helpers -------------------------------------------------------------------------


def day_number(value: date) -> int:
    return value.toordinal() - EPOCH_ORDINAL


def local_date(now: datetime, zone: str | tzinfo | None) -> date:
    """`now`'s calendar date in `zone`; a naive `now` is taken as UTC."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    if zone is None:
        return now.date()
    return now.astimezone(ZoneInfo(zone) if isinstance(zone, str) else zone).date()


@lru_cache(maxsize=65536)
def _ymd(day: int) -> tuple[int, int, int]:
    """(year, month index 0-11, day of month) of a day number; purchases repeat their days."""
    value = date.fromordinal(day + EPOCH_ORDINAL)
    return value.year, value.month - 1, value.day


@lru_cache(maxsize=65536)
def _exposure_before(day: int) -> tuple[int, ...]:
    """Days of each calendar month from 1970-01-01 up to (excluding) `day`, 29 Feb excluded."""
    year, month, dom = _ymd(day)
    years = year - 1970
    return tuple(
        years * length + (length if k < month else (min(dom - 1, length) if k == month else 0))
        for k, length in enumerate(MONTH_DAYS)
    )


def month_exposure(first_day: int, last_day: int) -> list[int]:
    """Days of each calendar month inside [first_day, last_day]: how often the client could buy."""
    end, start = _exposure_before(last_day + 1), _exposure_before(first_day)
    return list(map(sub, end, start))


@lru_cache(maxsize=65536)
def _date_of(day: int) -> date:
    return EPOCH + timedelta(days=day)


@lru_cache(maxsize=65536)
def _clock_parts(day: int) -> tuple[float, int, int]:
    year, month, dom = _ymd(day)
    return float(YEAR_DAYS * (year - 1970)), month, dom - 1


def season_clock(day: int, season: Sequence[float]) -> float:
    """The seasonal clock at the start of `day`: 365 per year, `season[m]` per day of month m."""
    base, month, elapsed = _clock_parts(day)
    return base + sum(map(mul, season[:month], MONTH_DAYS[:month])) + season[month] * elapsed


# --- the seasonal index -----------------------------------------------------------------------


def seasonal_index(
    visits: Sequence[float], exposure: Sequence[int], prior: Sequence[float], floor: float = 0.0
) -> list[float]:
    """Each month's visit rate relative to the client's own average rate, shrunk towards `prior`.

    index_m = (n_m + κ·prior_m) / (N·E_m/L + κ): the visits seen in month m over the visits
    expected there without any seasonality (N visits spread over L observed days, E_m of them in
    month m), with κ imaginary visits that follow `prior`.  A month never observed keeps the prior;
    a month observed for years follows the client.  Then floored and scaled so that a year of
    the clock is 365 days.
    """
    observed = sum(exposure)
    rate = sum(visits) / observed if observed else 0.0
    kappa = PRIOR_VISITS_PER_MONTH
    raw = [max((n + kappa * p) / (rate * e + kappa), floor) for n, e, p in zip(visits, exposure, prior)]
    scale = YEAR_DAYS / sum(map(mul, raw, MONTH_DAYS))
    return [value * scale for value in raw]


def shop_season(month_counts: Mapping[int, int], first_day: int | None, last_day: int | None) -> list[float]:
    """The shop-wide seasonal index (the prior of every client), from all purchases."""
    if first_day is None or last_day is None:
        return [1.0] * 12
    visits = [float(month_counts.get(m, 0)) for m in range(1, 13)]
    return seasonal_index(visits, month_exposure(first_day, last_day), [1.0] * 12)


def preferred(categories: Sequence[tuple[str, int, float]]) -> str | None:
    """Most bought category: most purchases, then most money, then the first name."""
    if not categories:
        return None
    return min(categories, key=lambda c: (-c[1], -c[2], c[0]))[0]


STATS_COLUMNS: tuple[str, ...] = (
    "customer_id", "purchases_count", "total_spent", "first_purchase_day", "last_purchase_day",
    "last_purchase_at", "avg_purchase_interval_days", "preferred_category", *SEASON_COLUMNS,
    "clock_last", "usual_gap", "updated_at",
)


def stats_row(
    customer_id: str,
    count: int,
    total: float,
    first_day: int,
    last_day: int,
    month_visits: Sequence[int],
    categories: Sequence[tuple[str, int, float]],
    prior: Sequence[float],
    min_purchases: int,
    updated_at: int,
) -> tuple[Any, ...]:
    """One customer_stats row, in STATS_COLUMNS order (tuples: a million of them are written).

    `month_visits` are distinct purchase days per calendar month (January first): ten receipt
    lines on one day are one visit, so an export with a row per item does not shrink the gap.
    """
    n_visits = sum(month_visits)
    season = seasonal_index(month_visits, month_exposure(first_day, last_day), prior, SEASON_FLOOR)
    elapsed = [0.0, *accumulate(map(mul, season, MONTH_DAYS))]
    base, month, days = _clock_parts(last_day)
    clock_last = base + elapsed[month] + season[month] * days
    usual_gap = avg_interval = None
    if n_visits >= 2:
        avg_interval = (last_day - first_day) / (n_visits - 1)
        if n_visits >= min_purchases:
            base, month, days = _clock_parts(first_day)
            gap = (clock_last - base - elapsed[month] - season[month] * days) / (n_visits - 1)
            usual_gap = gap if gap > MIN_USUAL_GAP else MIN_USUAL_GAP
    return (
        customer_id, count, round(total, 2), first_day, last_day, _date_of(last_day),
        avg_interval, preferred(categories), *season, clock_last, usual_gap, updated_at,
    )


# --- refresh ----------------------------------------------------------------------------------

# Purchases read per batch: bounds memory whatever the number of customers.
BATCH_PURCHASES = 50_000


def _in_range(column: Any, lo: str | None, hi: str | None) -> ColumnElement[bool]:
    conditions = []
    if lo is not None:
        conditions.append(column > lo)
    if hi is not None:
        conditions.append(column <= hi)
    return sa.and_(sa.true(), *conditions)


@dataclass
class _Batch:
    lo: str | None
    hi: str | None  # None: to the end
    months: list[Any]  # (customer, month, purchases, visits, amount, first day, last day)
    categories: list[Any]  # (customer, category, purchases, amount)


def _read_batch(engine: Engine, lo: str | None) -> _Batch:
    """The customers in (lo, hi] where hi is about BATCH_PURCHASES purchases further: two
    GROUP BY queries, per (customer, month) and per (customer, category), in customer order."""
    cid, p = purchases.c.customer_id, purchases.c
    with engine.connect() as conn:
        boundary = sa.select(cid).where(_in_range(cid, lo, None)).order_by(cid)
        hi = conn.execute(boundary.offset(BATCH_PURCHASES).limit(1)).scalar()
        where = _in_range(cid, lo, hi)
        months = conn.execute(
            sa.select(cid, p.month, sa.func.count(), sa.func.count(sa.distinct(p.day)),
                      sa.func.sum(p.amount), sa.func.min(p.day), sa.func.max(p.day))
            .where(where).group_by(cid, p.month).order_by(cid)
        ).all()
        categories = conn.execute(
            sa.select(cid, p.category, sa.func.count(), sa.func.sum(p.amount))
            .where(where, p.category.is_not(None)).group_by(cid, p.category).order_by(cid)
        ).all()
    return _Batch(lo, hi, months, categories)


def _batch_rows(batch: _Batch, prior: Sequence[float], min_purchases: int, updated_at: int) -> list[tuple[Any, ...]]:
    """Merge the two sorted result lists customer by customer."""
    rows = []
    months, cats = batch.months, batch.categories
    mi, ci, n_months, n_cats = 0, 0, len(months), len(cats)
    while mi < n_months:
        customer_id = months[mi][0]
        month_visits = [0] * 12
        count, total, first_day, last_day = 0, 0.0, months[mi][5], months[mi][6]
        while mi < n_months and months[mi][0] == customer_id:
            _, month, purchases_n, visits, amount, low, high = months[mi]
            month_visits[month - 1] = visits
            count += purchases_n
            total += amount or 0.0
            first_day = low if low < first_day else first_day
            last_day = high if high > last_day else last_day
            mi += 1
        categories = []
        while ci < n_cats and cats[ci][0] == customer_id:
            categories.append((cats[ci][1], cats[ci][2], float(cats[ci][3] or 0.0)))
            ci += 1
        rows.append(stats_row(customer_id, count, total, first_day, last_day, month_visits, categories,
                              prior, min_purchases, updated_at))
    return rows


def _shop_prior(conn: Connection) -> list[float]:
    rows = conn.execute(
        sa.select(purchases.c.month, sa.func.count(), sa.func.min(purchases.c.day), sa.func.max(purchases.c.day))
        .group_by(purchases.c.month)
    ).all()
    if not rows:
        return [1.0] * 12
    return shop_season(
        {month: count for month, count, _, _ in rows},
        min(r[2] for r in rows), max(r[3] for r in rows),
    )


def _customers_with_purchases(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count(sa.distinct(purchases.c.customer_id)))).scalar() or 0)


_INSERT_SQLITE = (
    f"INSERT INTO customer_stats ({', '.join(STATS_COLUMNS)}) VALUES ({', '.join('?' * len(STATS_COLUMNS))})"
)
_LAST_AT = STATS_COLUMNS.index("last_purchase_at")


def _write_batch(engine: Engine, lo: str | None, hi: str | None, rows: list[tuple[Any, ...]]) -> None:
    """Replace the stats of the customers in (lo, hi]: customers who lost their purchases go too.

    Written with the driver directly (executemany on SQLite, COPY on PostgreSQL): the generic
    path costs more per row than computing the row.
    """
    with write_transaction(engine) as conn:
        conn.execute(customer_stats.delete().where(_in_range(customer_stats.c.customer_id, lo, hi)))
        if not rows:
            return
        if conn.dialect.name == "postgresql":
            cursor = conn.connection.driver_connection.cursor()
            with cursor.copy(f"COPY customer_stats ({', '.join(STATS_COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            text_rows = [row[:_LAST_AT] + (row[_LAST_AT].isoformat(),) + row[_LAST_AT + 1:] for row in rows]
            conn.exec_driver_sql(_INSERT_SQLITE, text_rows)


def refresh_stats(
    engine: Engine, settings: Settings, progress: Callable[[int, int], None] | None = None
) -> int:
    """Recompute customer_stats for every customer with purchases; returns how many.

    Works in batches of customer-id ranges (about BATCH_PURCHASES purchases each): every batch is
    two short GROUP BY queries and one short write transaction, so memory stays bounded and
    other writers (the planner, the importer) are never blocked for long.  The next batch is
    read while the current one is computed and written.
    """
    min_purchases = settings.sleeping.min_purchases
    updated_at = int(time.time())
    with engine.connect() as conn:
        prior = _shop_prior(conn)
        total = _customers_with_purchases(conn) if progress else 0
    done = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stats-reader") as reader:
        pending = reader.submit(_read_batch, engine, None)
        while True:
            batch = pending.result()
            if batch.hi is not None:
                pending = reader.submit(_read_batch, engine, batch.hi)
            rows = _batch_rows(batch, prior, min_purchases, updated_at)
            _write_batch(engine, batch.lo, batch.hi, rows)
            done += len(rows)
            if progress:
                progress(done, total)
            if batch.hi is None:
                return done


# --- SQL for one `now` ------------------------------------------------------------------------


def _float(value: float) -> ColumnElement[float]:
    return sa.literal(float(value), sa.Float)


def _int(value: int) -> ColumnElement[int]:
    return sa.literal(int(value), sa.Integer)


def _clock_coefficients(today: date) -> tuple[float, list[float]]:
    """clock(today) = constant + Σ coefficient_m · season_m, for the client's own season."""
    day = day_number(today)
    year, month, dom = _ymd(day)
    coefficients = [float(MONTH_DAYS[k]) if k < month else 0.0 for k in range(12)]
    coefficients[month] = float(dom - 1)
    return float(YEAR_DAYS * (year - 1970)), coefficients


def _sleep_score_sql(today: date) -> ColumnElement[float]:
    constant, coefficients = _clock_coefficients(today)
    clock_now: ColumnElement[Any] = _float(constant)
    for name, coefficient in zip(SEASON_COLUMNS, coefficients):
        if coefficient:
            clock_now = clock_now + customer_stats.c[name] * _float(coefficient)
    elapsed = clock_now - customer_stats.c.clock_last
    score = sa.case(
        (customer_stats.c.usual_gap.is_(None), sa.null()),
        (elapsed <= _float(0.0), _float(0.0)),
        else_=elapsed / customer_stats.c.usual_gap,
    )
    return sa.type_coerce(score, sa.Float)


def _birthday_in_days_sql(today: date) -> ColumnElement[int]:
    """Days to the next birthday (0 on the day); 29 February → 28 February in common years."""
    month, day = customers.c.birth_month, customers.c.birth_day
    base = day_number(today)

    def occurrence(year: int) -> ColumnElement[int]:
        starts = sa.case(
            {m: _int(day_number(date(year, m, 1)) - base) for m in range(1, 13)}, value=month
        )
        effective = day if _is_leap(year) else sa.case(
            (sa.and_(month == 2, day == 29), _int(28)), else_=day
        )
        return starts + effective - _int(1)

    this_year, next_year = occurrence(today.year), occurrence(today.year + 1)
    return sa.type_coerce(sa.case((this_year >= _int(0), this_year), else_=next_year), sa.Integer)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


@lru_cache(maxsize=64)
def _derived(today: date, threshold: float) -> dict[str, ColumnElement[Any]]:
    stats = customer_stats.c
    score = _sleep_score_sql(today)
    return {
        "purchases_count": sa.func.coalesce(stats.purchases_count, _int(0)),
        "total_spent": sa.func.coalesce(stats.total_spent, _float(0.0)),
        "last_purchase_at": stats.last_purchase_at,
        "days_since_last_purchase": sa.type_coerce(_int(day_number(today)) - stats.last_purchase_day, sa.Integer),
        "avg_purchase_interval_days": stats.avg_purchase_interval_days,
        "preferred_category": stats.preferred_category,
        "sleep_score": score,
        "is_sleeping": sa.type_coerce(
            sa.case((score >= _float(threshold), sa.true()), else_=sa.false()), sa.Boolean
        ),
        "birthday_in_days": _birthday_in_days_sql(today),
    }


def derived_columns(now: datetime, settings: Settings) -> dict[str, ColumnElement[Any]]:
    """SQL expressions of the derived fields for `now`, over customers LEFT JOIN customer_stats.

    Every time-dependent value is a constant computed here for `now`'s date in the default zone,
    so the expressions are plain arithmetic and CASE: the same SQL on SQLite and PostgreSQL.
    """
    today = local_date(now, settings.general.timezone)
    return dict(_derived(today, float(settings.sleeping.threshold)))


def stats_join() -> Any:
    """customers LEFT JOIN customer_stats: the FROM clause the derived expressions need."""
    return customers.outerjoin(customer_stats, customer_stats.c.customer_id == customers.c.id)


def sleep_score_at(stats_row: Mapping[str, Any], now: datetime | date, timezone: str | tzinfo | None = None) -> float | None:
    """The sleep score of a customer_stats row at `now`, exactly as the SQL of `derived_columns`.

    `now` may be a date, or a datetime read in `timezone` (pass settings.general.timezone to
    match the segments; without it, the datetime's own date).
    """
    gap = stats_row.get("usual_gap")
    if gap is None:
        return None
    today = now if not isinstance(now, datetime) else local_date(now, timezone)
    constant, coefficients = _clock_coefficients(today)
    clock_now = constant
    for name, coefficient in zip(SEASON_COLUMNS, coefficients):
        if coefficient:
            clock_now = clock_now + stats_row[name] * coefficient
    elapsed = clock_now - stats_row["clock_last"]
    return 0.0 if elapsed <= 0.0 else elapsed / gap
