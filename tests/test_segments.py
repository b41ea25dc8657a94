"""Segments compiled to SQL: operators, combinators, attributes, derived fields, errors, sql:, paging."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.derived import day_number, derived_columns, refresh_stats
from orchestrator.errors import SegmentError
from orchestrator.segments import (
    Segment,
    inline_segment,
    iter_segment_pages,
    load_segment,
    load_segments,
    segment_count,
    segment_sample,
    validate_segment,
)
from orchestrator.settings import load_settings
from orchestrator.storage.schema import custom_attributes, customers, purchases
from orchestrator.yamlfile import LineMap, parse_yaml

MSK = timezone(timedelta(hours=3))
NOW = datetime(2026, 6, 10, 12, 0, tzinfo=MSK)

PEOPLE: list[dict[str, Any]] = [
    dict(id="c1", name="Иван Петров", first_name="Иван", city="Москва", abc_group="A", bonus_balance=100.0,
         consent_phone=True, consent_email=True, birthday=date(1990, 5, 1), birth_month=5, birth_day=1,
         email="ivan@example.com", attrs={"tier": 3, "region": "north", "vip": True, "since": "2020-01-01"}),
    dict(id="c2", name="Maria 50% off", first_name="Maria", city="Kazan", abc_group="B", bonus_balance=20.5,
         consent_email=True, birthday=date(1985, 12, 31), birth_month=12, birth_day=31,
         attrs={"tier": 1, "region": "south", "vip": False, "since": "2024-06-01"}),
    dict(id="c3", name="under_score", city=None, abc_group=None, bonus_balance=None,
         attrs={"tier": "gold", "region": 7}),
    dict(id="c4", name="ПЁТР", city="москва", abc_group="C", bonus_balance=0.0, consent_phone=True,
         birthday=date(2000, 6, 10), birth_month=6, birth_day=10, attrs=None),
    dict(id="c5", name="100%_real", city="Omsk", abc_group="A", bonus_balance=5.0,
         attrs={"tier": 2.5, "region": "north", "vip": None}),
]


@pytest.fixture
def settings() -> Any:
    return load_settings(None, environ={})


@pytest.fixture
def shop(engine: sa.Engine, settings: Any) -> sa.Engine:
    with engine.begin() as conn:
        conn.execute(customers.insert(), [
            {"consent_phone": False, "consent_email": False, "consent_sms": False, "email": None,
             "first_name": None, "birthday": None, "birth_month": None, "birth_day": None,
             **person, "created_at": 0, "updated_at": 0}
            for person in PEOPLE
        ])
        conn.execute(custom_attributes.insert(), [{"name": n} for n in ("tier", "region", "vip", "since")])

        def buy(cid: str, days_ago: list[int]) -> None:
            for n, ago in enumerate(days_ago):
                d = date(2026, 6, 10) - timedelta(days=ago)
                conn.execute(purchases.insert().values(key=f"{cid}/{n}", customer_id=cid, date=d, day=day_number(d),
                                                       month=d.month, amount=100.0, category="sofas"))

        buy("c1", [200, 190, 180, 170, 160])  # regular, silent for 160 days: sleeping
        buy("c2", [30, 20, 10])  # regular and recent
        buy("c3", [5])
    refresh_stats(engine, settings)
    return engine


def seg(where: Any) -> Segment:
    return inline_segment(where, name="test", file=Path("campaigns/t.yaml"), lines=LineMap(), loc=("where",))


def members(engine: sa.Engine, settings: Any, where: Any, page_size: int = 100) -> list[str]:
    segment = seg(where)
    ids = [row["id"] for page in iter_segment_pages(engine, segment, now=NOW, settings=settings, page_size=page_size)
           for row in page]
    assert segment_count(engine, segment, now=NOW, settings=settings) == len(ids)
    return ids


OPERATOR_CASES: list[tuple[Any, list[str]]] = [
    ({"abc_group": "A"}, ["c1", "c5"]),
    ({"abc_group": {"eq": "A"}}, ["c1", "c5"]),
    ({"abc_group": {"ne": "A"}}, ["c2", "c3", "c4"]),  # a missing group is "not A"
    ({"bonus_balance": {"gt": 5}}, ["c1", "c2"]),
    ({"bonus_balance": {"gte": 5}}, ["c1", "c2", "c5"]),
    ({"bonus_balance": {"lt": 20.5}}, ["c4", "c5"]),
    ({"bonus_balance": {"lte": 20.5}}, ["c2", "c4", "c5"]),
    ({"bonus_balance": {"gte": 1, "lt": 100}}, ["c2", "c5"]),
    ({"abc_group": {"in": ["A", "B"]}}, ["c1", "c2", "c5"]),
    ({"abc_group": {"not_in": ["A", "B"]}}, ["c3", "c4"]),
    ({"bonus_balance": {"between": [5, 20.5]}}, ["c2", "c5"]),
    ({"city": {"is_null": True}}, ["c3"]),
    ({"city": {"is_null": False}}, ["c1", "c2", "c4", "c5"]),
    ({"city": None}, ["c3"]),
    ({"city": {"contains": "оскв"}}, ["c1", "c4"]),
    ({"city": {"contains": "МОСКВА"}}, ["c1", "c4"]),  # case-insensitive, Cyrillic too
    ({"name": {"starts_with": "пё"}}, ["c4"]),
    ({"name": {"starts_with": "иван"}}, ["c1"]),
    ({"consent_phone": True}, ["c1", "c4"]),
    ({"consent_phone": False}, ["c2", "c3", "c5"]),
    ({"birthday": {"gte": "1990-01-01"}}, ["c1", "c4"]),
    ({"birthday": {"lt": "31.12.1985"}}, []),
    ({"birthday": {"lte": "31.12.1985"}}, ["c2"]),
    ({"birthday": {"between": ["1985-01-01", "1995-01-01"]}}, ["c1", "c2"]),
    ({"birth_month": {"in": [5, 6]}}, ["c1", "c4"]),
    ({"all": [{"abc_group": "A"}, {"consent_phone": True}]}, ["c1"]),
    ({"any": [{"abc_group": "B"}, {"city": "Omsk"}]}, ["c2", "c5"]),
    ({"not": {"city": "Kazan"}}, ["c1", "c3", "c4", "c5"]),  # missing city is "not Kazan"
    ({"not": {"bonus_balance": {"gt": 10}}}, ["c3", "c4", "c5"]),
    ({"not": [{"abc_group": "A"}, {"consent_phone": True}]}, ["c2", "c3", "c4", "c5"]),
    ({"any": [{"all": [{"abc_group": "A"}, {"not": {"city": "Omsk"}}]}, {"city": {"is_null": True}}]}, ["c1", "c3"]),
    ([{"abc_group": {"in": ["A", "C"]}}, {"consent_phone": True}], ["c1", "c4"]),
    ({"abc_group": "A", "consent_phone": True}, ["c1"]),
    ({"id": {"in": ["c2", 5]}}, ["c2"]),
]


def test_every_operator_and_combinator(shop: sa.Engine, settings: Any) -> None:
    failures = []
    for where, expected in OPERATOR_CASES:
        got = members(shop, settings, where)
        if got != expected:
            failures.append(f"{where}: got {got}, expected {expected}")
    assert not failures, "\n".join(failures)


ATTRIBUTE_CASES: list[tuple[Any, list[str]]] = [
    ({"tier": 3}, ["c1"]),
    ({"tier": {"gte": 2}}, ["c1", "c5"]),  # "gold" is text: not compared with numbers, never an error
    ({"tier": {"lt": 2}}, ["c2"]),
    ({"tier": {"between": [1, 2.5]}}, ["c2", "c5"]),
    ({"tier": "gold"}, ["c3"]),
    ({"tier": {"ne": 3}}, ["c2", "c3", "c4", "c5"]),
    ({"tier": {"in": [1, "gold"]}}, ["c2", "c3"]),
    ({"tier": {"not_in": [1, 2.5]}}, ["c1", "c3", "c4"]),
    ({"region": "north"}, ["c1", "c5"]),
    ({"region": 7}, ["c3"]),
    ({"region": {"starts_with": "NO"}}, ["c1", "c5"]),
    ({"region": {"contains": "out"}}, ["c2"]),
    ({"vip": True}, ["c1"]),
    ({"vip": False}, ["c2"]),
    ({"vip": {"ne": True}}, ["c2", "c3", "c4", "c5"]),
    ({"vip": {"is_null": True}}, ["c3", "c4", "c5"]),  # missing key, NULL attrs, JSON null
    ({"vip": {"is_null": False}}, ["c1", "c2"]),
    ({"since": {"gte": "2021-01-01"}}, ["c2"]),
]


def test_custom_attributes(shop: sa.Engine, settings: Any) -> None:
    failures = []
    for where, expected in ATTRIBUTE_CASES:
        got = members(shop, settings, where)
        if got != expected:
            failures.append(f"{where}: got {got}, expected {expected}")
    assert not failures, "\n".join(failures)


def test_derived_fields(shop: sa.Engine, settings: Any) -> None:
    assert members(shop, settings, {"is_sleeping": True}) == ["c1"]
    assert members(shop, settings, {"is_sleeping": False}) == ["c2", "c3", "c4", "c5"]
    assert members(shop, settings, {"purchases_count": {"gte": 3}}) == ["c1", "c2"]
    assert members(shop, settings, {"purchases_count": 0}) == ["c4", "c5"]
    assert members(shop, settings, {"days_since_last_purchase": {"lte": 10}}) == ["c2", "c3"]
    assert members(shop, settings, {"sleep_score": {"is_null": True}}) == ["c3", "c4", "c5"]
    assert members(shop, settings, {"birthday_in_days": 0}) == ["c4"]
    assert members(shop, settings, {"last_purchase_at": {"gte": "2026-05-31"}}) == ["c2", "c3"]
    assert members(shop, settings, {"last_purchase_at": {"gt": "31.05.2026"}}) == ["c3"]
    assert members(shop, settings, {"preferred_category": "sofas", "total_spent": {"gt": 400}}) == ["c1"]
    sample = segment_sample(shop, seg({"is_sleeping": True}), now=NOW, settings=settings)
    assert sample[0]["id"] == "c1" and sample[0]["sleep_score"] > 2 and sample[0]["attrs"]["tier"] == 3
    assert sample[0]["days_since_last_purchase"] == 160 and sample[0]["last_purchase_at"] == date(2026, 1, 1)


def test_like_wildcards_are_literal(shop: sa.Engine, settings: Any) -> None:
    assert members(shop, settings, {"name": {"contains": "%"}}) == ["c2", "c5"]
    assert members(shop, settings, {"name": {"contains": "0% "}}) == ["c2"]
    assert members(shop, settings, {"name": {"contains": "_"}}) == ["c3", "c5"]
    assert members(shop, settings, {"name": {"starts_with": "100%_"}}) == ["c5"]
    assert members(shop, settings, {"name": {"starts_with": "100__"}}) == []
    assert members(shop, settings, {"name": {"contains": "\\"}}) == []


def test_keyset_paging_returns_every_member_once(engine: sa.Engine, settings: Any) -> None:
    with engine.begin() as conn:
        conn.execute(customers.insert(), [
            {"id": f"p{n:03d}", "abc_group": "A" if n % 3 else "B", "created_at": 0, "updated_at": 0}
            for n in range(47)
        ])
    expected = [f"p{n:03d}" for n in range(47) if n % 3]
    for size in (1, 5, 31, 100):
        pages = list(iter_segment_pages(engine, seg({"abc_group": "A"}), now=NOW, settings=settings, page_size=size))
        assert all(0 < len(page) <= size for page in pages)
        assert [row["id"] for page in pages for row in page] == expected
    extra = customers.c.id < "p020"
    pages = iter_segment_pages(engine, seg({"abc_group": "A"}), now=NOW, settings=settings, page_size=4,
                               extra_where=extra)
    assert [row["id"] for page in pages for row in page] == [i for i in expected if i < "p020"]
    sql = Segment("s", "", None, "SELECT id FROM customers WHERE abc_group = 'A'", Path("segments/s.yaml"),
                  LineMap(), ("sql",))
    pages = list(iter_segment_pages(engine, sql, now=NOW, settings=settings, page_size=7))
    assert [len(p) for p in pages[:-1]] == [7] * (len(pages) - 1)
    assert [row["id"] for page in pages for row in page] == expected


def test_trigger_condition_from_derived_columns(shop: sa.Engine, settings: Any) -> None:
    birthday_today = derived_columns(NOW, settings)["birthday_in_days"] == 0
    pages = iter_segment_pages(shop, seg({"city": {"is_null": False}}), now=NOW, settings=settings, page_size=10,
                               extra_where=birthday_today)
    assert [row["id"] for page in pages for row in page] == ["c4"]


# --- sql: segments -------------------------------------------------------------------------


def sql_segment(tmp_path: Path, sql: str) -> Segment:
    path = tmp_path / "by_sql.yaml"
    path.write_text("description: by sql\nsql: |\n" + "".join(f"  {line}\n" for line in sql.splitlines()),
                    encoding="utf-8")
    return load_segment(path)


def test_sql_segment_returns_members(shop: sa.Engine, settings: Any, tmp_path: Path) -> None:
    segment = sql_segment(tmp_path, "-- regulars; with a comment\nSELECT customer_id FROM purchases\n"
                                    "GROUP BY customer_id HAVING count(*) >= 3;")
    validate_segment(segment, shop)
    assert segment_count(shop, segment, now=NOW, settings=settings) == 2
    rows = segment_sample(shop, segment, now=NOW, settings=settings)
    assert [r["id"] for r in rows] == ["c1", "c2"] and rows[0]["is_sleeping"] is True
    percent = sql_segment(tmp_path, "SELECT id FROM customers WHERE name LIKE '%50%'")
    assert segment_count(shop, percent, now=NOW, settings=settings) == 1
    # The connection went back to the pool writable.
    with shop.begin() as conn:
        conn.execute(customers.update().where(customers.c.id == "c1").values(city="Tver"))


@pytest.mark.parametrize("sql", [
    "DELETE FROM customers",
    "SELECT id FROM customers; DROP TABLE customers",
    "SELECT id FROM customers;\nDELETE FROM customers",
    "WITH gone AS (DELETE FROM customers RETURNING id) SELECT id FROM gone",
    "SELECT id INTO copy FROM customers",
    "PRAGMA query_only=0",
    "SELECT E'\\'' ; DELETE FROM customers; SELECT ''",
])
def test_sql_segment_rejects_writes_and_several_statements(tmp_path: Path, sql: str) -> None:
    segment = sql_segment(tmp_path, sql)
    with pytest.raises(SegmentError) as caught:
        validate_segment(segment)
    assert caught.value.field == "sql" and caught.value.line == 2
    assert "read" in caught.value.message or "single" in caught.value.message or "SELECT" in caught.value.message


def test_sql_segment_strings_may_hold_semicolons(tmp_path: Path) -> None:
    validate_segment(sql_segment(tmp_path, "SELECT id FROM customers WHERE name = 'a; DELETE' -- ; drop"))


def test_sql_segment_error_from_the_database(shop: sa.Engine, tmp_path: Path) -> None:
    with pytest.raises(SegmentError) as caught:
        validate_segment(sql_segment(tmp_path, "SELECT id FROM no_such_table"), shop)
    assert "no_such_table" in caught.value.message and caught.value.field == "sql"


def test_sql_segment_database_guards(shop: sa.Engine, settings: Any, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a query that slipped past the text check can neither write nor run a second statement."""
    from orchestrator import segments as module

    injected = "SELECT 'x') AS q; DELETE FROM customers; SELECT * FROM (SELECT 'x'"
    monkeypatch.setattr(module, "check_sql", lambda segment: injected)
    with pytest.raises(SegmentError) as caught:
        segment_count(shop, sql_segment(tmp_path, "SELECT 1"), now=NOW, settings=settings)
    assert caught.value.field == "sql"
    if shop.dialect.name == "postgresql":
        monkeypatch.setattr(module, "check_sql", lambda segment: "SELECT CAST(nextval('purchases_id_seq') AS TEXT)")
        with pytest.raises(SegmentError, match="must only read data"):
            segment_count(shop, sql_segment(tmp_path, "SELECT 1"), now=NOW, settings=settings)
    monkeypatch.undo()
    with shop.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(customers)).scalar() == 5


def test_sql_segment_time_limit(shop: sa.Engine, tmp_path: Path) -> None:
    quick = load_settings(None, environ={"ORCHESTRATOR_SEGMENTS_SQL_TIMEOUT": "1s"})
    segment = sql_segment(tmp_path, "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r)\n"
                                    "SELECT CAST(max(n) AS TEXT) FROM r")
    started = datetime.now()
    with pytest.raises(SegmentError, match="took longer than 1s") as caught:
        segment_count(shop, segment, now=NOW, settings=quick)
    assert (datetime.now() - started).total_seconds() < 10
    assert caught.value.field == "sql"
    assert segment_count(shop, sql_segment(tmp_path, "SELECT id FROM customers"), now=NOW, settings=quick) == 5


# --- errors name the file, the line and the field -------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


SEGMENT = """\
description: Regular wholesale buyers
where:
  all:
    - purchases_count: {{gte: 3}}
    - {field}
    - abc_group: {{in: [A, B]}}
"""


@pytest.mark.parametrize(("condition", "field", "message"), [
    ("purchase_count: {gte: 3}", "purchase_count", "unknown field 'purchase_count' (did you mean 'purchases_count'?)"),
    ("city: {like: Mos}", "city", "unknown operator 'like'"),
    ("bonus_balance: {gtee: 3}", "bonus_balance", "did you mean 'gte'"),
    ("bonus_balance: {between: [1]}", "bonus_balance", "between needs two values"),
    ("bonus_balance: {between: [5, 1]}", "bonus_balance", "greater than the second"),
    ("abc_group: {in: A}", "abc_group", "in needs a list"),
    ("city: {is_null: maybe}", "city", "is_null: 'maybe' is not true or false"),
    ("bonus_balance: {gt: lots}", "bonus_balance", "is not a number"),
    ("consent_sms: {gt: true}", "consent_sms", "does not apply"),
    ("consent_sms: 'yes'", "consent_sms", "is not true or false"),
    ("abc_group: yes", "abc_group", "write it in quotes"),
    ("birthday: {gte: 1990-13-01}", "birthday", "is not a date"),
    ("purchases_count: {contains: 3}", "purchases_count", "text fields only"),
    ("local_time: {gte: '10:00'}", "local_time", "templates only"),
    ("city: [Moscow, Kazan]", "city", "write {in: [...]}"),
    ("tier: 3", "tier", "custom attributes are known once"),
])
def test_errors_name_file_line_and_field(tmp_path: Path, condition: str, field: str, message: str) -> None:
    path = write(tmp_path, "wholesale.yaml", SEGMENT.format(field=condition))
    segment = load_segment(path)
    with pytest.raises(SegmentError) as caught:
        validate_segment(segment)
    error = caught.value
    assert error.file == str(path) and error.line == 5 and error.field == field
    assert message in error.message, error.message
    assert str(error).startswith(f"{path}:5: {field}: ")


def test_custom_attribute_known_from_the_database(shop: sa.Engine, tmp_path: Path) -> None:
    segment = load_segment(write(tmp_path, "tiers.yaml", "where:\n  tier: {gte: 2}\n"))
    validate_segment(segment, shop)
    with pytest.raises(SegmentError, match="unknown field 'tear'"):
        validate_segment(load_segment(write(tmp_path, "t2.yaml", "where:\n  tear: 2\n")), shop)


@pytest.mark.parametrize(("text", "line", "field", "message"), [
    ("description: x\nwhere: {city: Moscow}\nsql: SELECT 1\n", 3, "sql", "exactly one"),
    ("description: x\n", 1, "where", "exactly one"),
    ("description: x\nwhere: {city: Moscow}\nlimit: 3\n", 3, "limit", "unknown field"),
    ("- city: Moscow\n", 1, None, "a segment is a mapping"),
    ("where:\n  all: []\n", 2, "all", "at least one"),
    ("where:\n  any: {city: Moscow}\n", 2, "any", "needs a list"),
])
def test_segment_file_structure_errors(tmp_path: Path, text: str, line: int, field: str | None, message: str) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(SegmentError) as caught:
        validate_segment(load_segment(path))
    assert (caught.value.line, caught.value.field) == (line, field)
    assert message in caught.value.message


def test_load_segments_by_name(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", "description: B\nwhere: {city: Kazan}\n")
    write(tmp_path, "a.yaml", "description: A\nsql: SELECT id FROM customers\n")
    found = load_segments(tmp_path)
    assert list(found) == ["a", "b"]
    assert found["a"].sql and found["b"].where == {"city": "Kazan"} and found["b"].description == "B"
    assert load_segments(tmp_path / "missing") == {}


def test_inline_segment_errors_point_at_the_campaign_file(tmp_path: Path) -> None:
    text = (
        "name: wake\n"
        "category: promo\n"
        "where:\n"
        "  all:\n"
        "    - is_sleeping: true\n"
        "    - any:\n"
        "        - consent_phone: true\n"
        "        - consent_emial: true\n"
    )
    path = tmp_path / "campaigns" / "wake.yaml"
    data, lines = parse_yaml(text, file=path)
    segment = inline_segment(data["where"], name="wake (inline)", file=path, lines=lines, loc=("where",))
    with pytest.raises(SegmentError) as caught:
        validate_segment(segment)
    assert (caught.value.file, caught.value.line, caught.value.field) == (str(path), 8, "consent_emial")
    assert "did you mean 'consent_email'" in caught.value.message


@pytest.mark.postgres
def test_pages_are_read_in_id_order_right_after_an_import_on_postgresql(pg_url: str, settings: Any, tmp_path: Path) -> None:
    """Right after a bulk import PostgreSQL must read a segment's pages along the primary key.
    Without statistics on the new rows (autovacuum has not been by yet) it guessed the segment
    held a few hundred customers and sorted all of them for every page: a run over a million
    customers took minutes in page queries alone.  The import refreshes the statistics."""
    from orchestrator.importer import import_customers
    from orchestrator.storage.engine import connect

    path = tmp_path / "customers.csv"
    lines = ["id,phone,consent_sms,abc_group"]
    lines += [f"C{n:06d},+7912{n:07d},{'да' if n % 10 else 'нет'},{'ABBC'[n % 4]}" for n in range(20_000)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    engine = connect(pg_url)
    assert import_customers(engine, path, settings).exit_code == 0
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if "FROM customers" in statement and "LIMIT" in statement:
            statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    segment = seg({"all": [{"consent_sms": True}, {"abc_group": {"in": ["A", "B"]}}]})
    pages = iter_segment_pages(engine, segment, now=NOW, settings=settings, page_size=1000)
    next(pages)
    next(pages)
    sa.event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = statements[-1]
    with engine.connect() as conn:
        plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
    engine.dispose()
    assert "Index Scan using customers_pkey" in plan and "Sort" not in plan, plan
