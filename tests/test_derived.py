"""Derived per-customer statistics and the season-corrected sleep score, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from orchestrator.derived import (
    MONTH_DAYS,
    day_number,
    derived_columns,
    refresh_stats,
    season_clock,
    sleep_score_at,
    stats_join,
)
from orchestrator.settings import load_settings
from orchestrator.storage.schema import SEASON_COLUMNS, customer_stats, customers, purchases

MSK = timezone(timedelta(hours=3))


@pytest.fixture
def settings() -> Any:
    return load_settings(None, environ={})


def add_customer(engine: sa.Engine, cid: str, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(customers.insert().values(id=cid, created_at=0, updated_at=0, **values))


def add_purchases(engine: sa.Engine, cid: str, items: Iterable[tuple[date, float, str | None]]) -> None:
    rows = [
        {"key": f"{cid}/{i}", "customer_id": cid, "date": d, "day": day_number(d), "month": d.month,
         "amount": amount, "category": category}
        for i, (d, amount, category) in enumerate(items)
    ]
    if rows:
        with engine.begin() as conn:
            conn.execute(purchases.insert(), rows)


def derived_of(engine: sa.Engine, settings: Any, now: datetime) -> dict[str, dict[str, Any]]:
    columns = derived_columns(now, settings)
    query = sa.select(customers.c.id, *(expr.label(name) for name, expr in columns.items())).select_from(stats_join())
    with engine.connect() as conn:
        return {row["id"]: dict(row) for row in conn.execute(query).mappings()}


def test_counts_totals_and_preferred_category(engine: sa.Engine, settings: Any) -> None:
    add_customer(engine, "A")
    add_customer(engine, "B")  # never bought
    add_purchases(engine, "A", [
        (date(2026, 3, 1), 100.0, "chairs"),
        (date(2026, 3, 1), 50.5, "tables"),  # same day: one visit
        (date(2026, 3, 11), 20.0, "chairs"),
        (date(2026, 3, 21), 999.0, "tables"),
        (date(2026, 3, 31), 1.0, None),
    ])
    assert refresh_stats(engine, settings) == 1
    now = datetime(2026, 4, 10, 9, 0, tzinfo=MSK)
    got = derived_of(engine, settings, now)
    a, b = got["A"], got["B"]
    assert a["purchases_count"] == 5
    assert a["total_spent"] == pytest.approx(1170.5)
    # chairs and tables both twice: the money decides.
    assert a["preferred_category"] == "tables"
    assert a["last_purchase_at"] == date(2026, 3, 31)
    assert a["days_since_last_purchase"] == 10
    assert a["avg_purchase_interval_days"] == pytest.approx(10.0)  # 4 visits over 30 days
    assert a["sleep_score"] is not None and a["is_sleeping"] in (True, False)
    assert b == {**b, "purchases_count": 0, "total_spent": 0, "last_purchase_at": None,
                 "days_since_last_purchase": None, "sleep_score": None, "is_sleeping": False,
                 "preferred_category": None}


def test_days_since_uses_the_default_zone_date(engine: sa.Engine, settings: Any) -> None:
    add_customer(engine, "A")
    add_purchases(engine, "A", [(date(2026, 5, 1), 10.0, None)])
    refresh_stats(engine, settings)
    # 22:30 UTC on 1 May is already 2 May in Moscow.
    late = datetime(2026, 5, 1, 22, 30, tzinfo=timezone.utc)
    assert derived_of(engine, settings, late)["A"]["days_since_last_purchase"] == 1
    assert derived_of(engine, settings, late - timedelta(hours=2))["A"]["days_since_last_purchase"] == 0


def test_refresh_replaces_rows_and_drops_customers_without_purchases(engine: sa.Engine, settings: Any) -> None:
    for cid in ("A", "B"):
        add_customer(engine, cid)
        add_purchases(engine, cid, [(date(2026, 1, 5), 10.0, "x"), (date(2026, 2, 5), 30.0, "y")])
    assert refresh_stats(engine, settings) == 2
    with engine.begin() as conn:
        conn.execute(purchases.delete().where(purchases.c.customer_id == "A"))
        conn.execute(purchases.insert().values(key="B/new", customer_id="B", date=date(2026, 3, 5),
                                               day=day_number(date(2026, 3, 5)), month=3, amount=5.0, category="y"))
    progress: list[tuple[int, int]] = []
    assert refresh_stats(engine, settings, progress=lambda done, total: progress.append((done, total))) == 1
    assert progress[-1] == (1, 1)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(customer_stats)).mappings().all()
    assert [(r["customer_id"], r["purchases_count"], r["preferred_category"]) for r in rows] == [("B", 3, "y")]


def test_refresh_in_several_batches(engine: sa.Engine, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.derived as derived

    monkeypatch.setattr(derived, "BATCH_PURCHASES", 7)
    for n in range(30):
        cid = f"c{n:02d}"
        add_customer(engine, cid)
        add_purchases(engine, cid, [(date(2026, 1, 1) + timedelta(days=5 * k), 1.0, None) for k in range(n % 4 + 1)])
    assert refresh_stats(engine, settings) == 30
    with engine.connect() as conn:
        counts = dict(conn.execute(sa.select(customer_stats.c.customer_id, customer_stats.c.purchases_count)).all())
    assert counts == {f"c{n:02d}": n % 4 + 1 for n in range(30)}


@pytest.mark.parametrize(
    ("today", "birthday", "expected"),
    [
        (date(2027, 12, 31), (1, 1), 1),
        (date(2027, 12, 31), (12, 31), 0),
        (date(2027, 12, 31), (12, 30), 365),  # next is 30 Dec 2028; 2028 is leap → 365 days
        (date(2028, 1, 1), (12, 31), 365),  # 2028 is a leap year: 366 days in it
        (date(2027, 2, 28), (2, 29), 0),  # common year: greeted on 28 February
        (date(2027, 2, 27), (2, 29), 1),
        (date(2027, 3, 1), (2, 29), 365),  # next: 29 Feb 2028
        (date(2028, 2, 28), (2, 29), 1),  # leap year: the real day
        (date(2028, 2, 29), (2, 29), 0),
        (date(2028, 3, 1), (2, 29), 364),  # next: 28 Feb 2029
        (date(2028, 2, 29), (2, 28), 365),
        (date(2026, 6, 15), (6, 14), 364),
    ],
)
def test_birthday_in_days(engine: sa.Engine, settings: Any, today: date, birthday: tuple[int, int], expected: int) -> None:
    month, day = birthday
    add_customer(engine, "A", birth_month=month, birth_day=day, birthday=date(1980, month, day))
    add_customer(engine, "B")
    # 23:30 in Moscow is still `today` there; in UTC it is 20:30 of the same day.
    now = datetime(today.year, today.month, today.day, 23, 30, tzinfo=MSK)
    got = derived_of(engine, settings, now)
    assert got["A"]["birthday_in_days"] == expected
    assert got["B"]["birthday_in_days"] is None


# --- the seasonal scenario of the SPEC ---------------------------------------------------------


def fortnightly(start: date, end: date, seed: int, skip: Any = lambda d: False) -> list[tuple[date, float, str]]:
    """A purchase every 12-16 days from start to end, except on days `skip` says."""
    rnd = random.Random(seed)
    out = []
    current = start
    while current < end:
        if skip(current):
            current += timedelta(days=1)
            continue
        out.append((current, 1000.0, "metal"))
        current += timedelta(days=14 + rnd.randint(-2, 2))
    return out


def summer_pause(d: date) -> bool:
    return d.month == 7 or (d.month == 8 and d.day < 10)


@pytest.fixture
def seasonal_shop(engine: sa.Engine, settings: Any) -> sa.Engine:
    """Three years of fortnightly buyers: one always pauses in July and early August, one never."""
    add_customer(engine, "july")
    add_customer(engine, "steady")
    add_purchases(engine, "july", fortnightly(date(2023, 6, 1), date(2026, 7, 1), 1, summer_pause))
    add_purchases(engine, "steady", fortnightly(date(2023, 6, 1), date(2026, 7, 1), 2))
    for n in range(5):  # the rest of the shop buys all year round
        add_customer(engine, f"other{n}")
        add_purchases(engine, f"other{n}", fortnightly(date(2023, 6, 1), date(2026, 10, 1), 10 + n))
    refresh_stats(engine, settings)
    return engine


def test_usual_july_pause_is_not_sleep_but_stopping_in_june_is(seasonal_shop: sa.Engine, settings: Any) -> None:
    now = datetime(2026, 8, 10, 10, 0, tzinfo=MSK)
    got = derived_of(seasonal_shop, settings, now)
    july, steady = got["july"], got["steady"]
    # Both have been silent about as long (since late June) ...
    assert 40 <= july["days_since_last_purchase"] <= 50
    assert 40 <= steady["days_since_last_purchase"] <= 50
    # ... but only the one without a summer habit is asleep.
    assert july["is_sleeping"] is False and july["sleep_score"] < 1.5
    assert steady["is_sleeping"] is True and steady["sleep_score"] > 2.5


def test_seasonal_client_who_also_skips_september_is_sleeping(seasonal_shop: sa.Engine, settings: Any) -> None:
    got = derived_of(seasonal_shop, settings, datetime(2026, 9, 30, 10, 0, tzinfo=MSK))
    assert got["july"]["is_sleeping"] is True
    assert got["july"]["sleep_score"] > 3


def test_sleep_score_needs_min_purchases(engine: sa.Engine) -> None:
    strict = load_settings(None, environ={"ORCHESTRATOR_SLEEPING_MIN_PURCHASES": "4"})
    add_customer(engine, "few")
    add_purchases(engine, "few", [(date(2026, 1, d), 1.0, None) for d in (1, 11, 21)])
    refresh_stats(engine, strict)
    got = derived_of(engine, strict, datetime(2027, 1, 1, tzinfo=MSK))["few"]
    assert got["sleep_score"] is None and got["is_sleeping"] is False
    assert got["days_since_last_purchase"] > 300


def test_python_and_sql_sleep_scores_agree(seasonal_shop: sa.Engine, settings: Any) -> None:
    with seasonal_shop.connect() as conn:
        stats = {r["customer_id"]: r for r in conn.execute(sa.select(customer_stats)).mappings()}
    for now in (datetime(2026, 2, 28, 12, tzinfo=MSK), datetime(2026, 8, 10, tzinfo=MSK),
                datetime(2028, 2, 29, 23, 59, tzinfo=MSK), datetime(2026, 12, 31, 22, tzinfo=timezone.utc)):
        got = derived_of(seasonal_shop, settings, now)
        for cid, row in stats.items():
            assert got[cid]["sleep_score"] == pytest.approx(sleep_score_at(row, now, "Europe/Moscow"), rel=1e-9)


def test_seasonal_clock_runs_365_days_a_year_and_skips_29_february() -> None:
    season = [0.5, 1.5, 0.1, 1, 1, 1, 2, 1, 1, 1, 1, 1]
    scale = 365 / sum(s * d for s, d in zip(season, MONTH_DAYS))
    season = [s * scale for s in season]
    assert season_clock(day_number(date(2027, 1, 1)), season) - season_clock(day_number(date(2026, 1, 1)), season) \
        == pytest.approx(365)
    assert season_clock(day_number(date(2028, 2, 29)), season) == pytest.approx(
        season_clock(day_number(date(2028, 3, 1)), season))
    march = season_clock(day_number(date(2026, 3, 11)), season) - season_clock(day_number(date(2026, 3, 1)), season)
    assert march == pytest.approx(10 * season[2])


history_strategy = st.lists(
    st.lists(st.integers(min_value=0, max_value=1500), min_size=0, max_size=25),
    min_size=1, max_size=6,
)


@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(histories=history_strategy, offsets=st.lists(st.integers(-30, 900), min_size=1, max_size=3))
def test_sql_matches_python_over_random_histories(
    engine: sa.Engine, settings: Any, histories: list[list[int]], offsets: list[int]
) -> None:
    with engine.begin() as conn:
        conn.execute(purchases.delete())
        conn.execute(customers.delete())
        conn.execute(customer_stats.delete())
    start = date(2022, 1, 1)
    for n, days in enumerate(histories):
        add_customer(engine, f"h{n}")
        add_purchases(engine, f"h{n}", [(start + timedelta(days=d), 1.0, None) for d in days])
    refresh_stats(engine, settings)
    with engine.connect() as conn:
        stats = {r["customer_id"]: r for r in conn.execute(sa.select(customer_stats)).mappings()}
    for row in stats.values():
        assert sum(row[c] * d for c, d in zip(SEASON_COLUMNS, MONTH_DAYS)) == pytest.approx(365)
        assert min(row[c] for c in SEASON_COLUMNS) > 0
    last = max((d for days in histories for d in days), default=0)
    for offset in offsets:
        now = datetime.combine(start + timedelta(days=last + offset), datetime.min.time(), MSK) + timedelta(hours=13)
        got = derived_of(engine, settings, now)
        for cid, row in stats.items():
            expected = sleep_score_at(row, now, "Europe/Moscow")
            if expected is None:
                assert got[cid]["sleep_score"] is None
            else:
                assert got[cid]["sleep_score"] == pytest.approx(expected, rel=1e-9, abs=1e-9)
                assert got[cid]["is_sleeping"] is (expected >= settings.sleeping.threshold)
