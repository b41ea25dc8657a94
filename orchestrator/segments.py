"""Segments (SPEC 4): YAML conditions compiled to SQL, or one read-only SQL query.

A `where:` tree is parsed into conditions first (every mistake is a SegmentError naming the
file, the line and the field), then compiled to one SQLAlchemy expression over
customers LEFT JOIN customer_stats, evaluated by the database.  Nothing is filtered in Python.

Semantics a marketer can rely on:

- A condition on a missing value is false, and its negation is true: `city: {ne: Moscow}` and
  `not: {city: Moscow}` both include customers without a city; `{not_in: [A, B]}` includes
  customers without the field.  (Two-valued logic: no SQL NULL surprises.)
- `contains` and `starts_with` ignore case (also for Cyrillic) and take `%` and `_` literally.
- Dates are written `2026-01-31` or `31.01.2026` and compared as dates.
- Custom attributes keep their JSON type: a number operand compares numerically with numeric
  values only, a text operand with text values only, a boolean with booleans.  A value of
  another type never matches (and never raises).
- `local_time` is a template field (the recipient's clock when the message is rendered): it
  cannot be used in a segment; use the campaign's `schedule.local_time`.
- Without a database (validate_segment without an engine) custom attribute names are unknown,
  so using one is an error: the names come from the `custom_attributes` table of the database.
"""

from __future__ import annotations

import difflib
import re
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Collection, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from orchestrator.derived import DERIVED_FIELDS, TEMPLATE_ONLY_FIELDS, derived_columns, stats_join
from orchestrator.errors import SegmentError
from orchestrator.settings import Settings
from orchestrator.storage.schema import custom_attributes, customer_stats, customers, metadata
from orchestrator.yamlfile import LineMap, Loc, load_yaml

# --- fields -------------------------------------------------------------------------------

TEXT, NUMBER, DATE, BOOL, ATTR = "text", "number", "date", "bool", "attribute"

CUSTOMER_FIELDS: dict[str, str] = {
    "id": TEXT, "name": TEXT, "first_name": TEXT, "email": TEXT, "phone": TEXT,
    "timezone": TEXT, "city": TEXT, "birthday": DATE, "birth_month": NUMBER, "birth_day": NUMBER,
    "manager": TEXT, "abc_group": TEXT, "bonus_balance": NUMBER, "discount_percent": NUMBER,
    "consent_email": BOOL, "consent_sms": BOOL, "consent_phone": BOOL, "phone_cap_days": NUMBER,
}
DERIVED_KINDS: dict[str, str] = {
    "purchases_count": NUMBER, "total_spent": NUMBER, "last_purchase_at": DATE,
    "days_since_last_purchase": NUMBER, "avg_purchase_interval_days": NUMBER,
    "preferred_category": TEXT, "is_sleeping": BOOL, "sleep_score": NUMBER,
    "birthday_in_days": NUMBER,
}
assert set(DERIVED_KINDS) == set(DERIVED_FIELDS)

COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte")
OPERATORS = (*COMPARISONS, "in", "not_in", "between", "is_null", "contains", "starts_with")
COMBINATORS = ("all", "any", "not")
ALLOWED_KEYS = ("description", "where", "sql")
# `validate` tries a `sql:` query with LIMIT 0: the database plans it and reports its errors.
TRIAL_TIMEOUT_SECONDS = 10
# Pages of a `sql:` segment are read with `id IN (...)` lists no longer than this.
ID_CHUNK = 5000


@dataclass
class Segment:
    name: str
    description: str
    where: Any | None
    sql: str | None
    file: Path
    lines: LineMap
    loc: tuple = ()  # where the `where:` (or `sql:`) value sits in `file`, for line numbers


# --- loading ------------------------------------------------------------------------------


def _error(segment: Segment, message: str, path: Loc = (), field_name: str | None = None) -> SegmentError:
    return SegmentError(message, file=segment.file, line=segment.lines.line(segment.loc + tuple(path)),
                        field=field_name)


def load_segment(path: Path) -> Segment:
    """Read segments/<name>.yaml: `description` and exactly one of `where` and `sql`."""
    data, lines = load_yaml(path)
    name = path.stem

    def fail(message: str, loc: Loc = (), field_name: str | None = None) -> SegmentError:
        return SegmentError(message, file=path, line=lines.line(loc) or 1, field=field_name)

    if not isinstance(data, dict):
        raise fail("a segment is a mapping with `description` and `where` (or `sql`)")
    for key in data:
        if key not in ALLOWED_KEYS:
            raise fail(f"unknown field (a segment has {', '.join(ALLOWED_KEYS)})", (key,), str(key))
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise fail("must be text", ("description",), "description")
    has_where, has_sql = data.get("where") is not None, data.get("sql") is not None
    if has_where == has_sql:
        raise fail("a segment needs exactly one of `where` and `sql`",
                   ("sql",) if has_sql else (), "where" if not has_sql else "sql")
    if has_sql:
        if not isinstance(data["sql"], str) or not data["sql"].strip():
            raise fail("must be the text of one SELECT query", ("sql",), "sql")
        return Segment(name, description, None, data["sql"], path, lines, ("sql",))
    return Segment(name, description, data["where"], None, path, lines, ("where",))


def load_segments(directory: Path) -> dict[str, Segment]:
    """Every segments/*.yaml (and *.yml), by name."""
    if not directory.is_dir():
        return {}
    found: dict[str, Segment] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        if path.stem in found:
            raise SegmentError(f"segment '{path.stem}' is defined twice ({found[path.stem].file.name})",
                               file=path)
        found[path.stem] = load_segment(path)
    return found


def inline_segment(where: Any, *, name: str, file: Path, lines: LineMap, loc: tuple) -> Segment:
    """A campaign's inline `where:`; its errors point at the campaign file's lines."""
    return Segment(name, "", where, None, Path(file), lines, tuple(loc))


# --- parsing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cond:
    field: str
    source: str  # "column" | "derived" | "attribute"
    kind: str  # TEXT | NUMBER | DATE | BOOL | ATTR
    op: str
    value: Any


@dataclass(frozen=True)
class Node:
    op: str  # "all" | "any" | "not"
    children: tuple[Any, ...] = field(default_factory=tuple)


def _resolve(segment: Segment, name: Any, path: Loc, attributes: set[str]) -> tuple[str, str]:
    if not isinstance(name, str):
        raise _error(segment, "a field name must be a word", path, str(name))
    if name in CUSTOMER_FIELDS:
        return "column", CUSTOMER_FIELDS[name]
    if name in DERIVED_KINDS:
        return "derived", DERIVED_KINDS[name]
    if name in TEMPLATE_ONLY_FIELDS:
        raise _error(segment, "local_time is the recipient's clock at sending time, known to templates only; "
                     "a segment cannot filter on it (use the campaign's schedule.local_time)", path, name)
    if name in attributes:
        if '"' in name or "\\" in name:
            raise _error(segment, "this custom attribute's name has a quote or backslash and cannot be "
                         "used in a segment", path, name)
        return "attribute", ATTR
    known = [*CUSTOMER_FIELDS, *DERIVED_KINDS, *attributes]
    hint = difflib.get_close_matches(name, known, n=1)
    message = f"unknown field '{name}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
    if not attributes:
        message += "; custom attributes are known once customers with that column are imported"
    raise _error(segment, message, path, name)


def _kind_name(value: Any) -> str:
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return f"'{str(value).lower()}' (yes/no)"
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "a mapping"
    return f"'{value}'"


_DATE_FORMATS = (re.compile(r"^(\d{4})-(\d{2})-(\d{2})$"), re.compile(r"^(\d{2})\.(\d{2})\.(\d{4})$"))


def _as_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    for index, pattern in enumerate(_DATE_FORMATS):
        match = pattern.match(text)
        if match:
            parts = [int(g) for g in match.groups()]
            year, month, day = parts if index == 0 else parts[::-1]
            try:
                return date(year, month, day)
            except ValueError:
                return None
    return None


def _operand(segment: Segment, kind: str, op: str, value: Any, path: Loc, name: str) -> Any:
    """One scalar operand checked and converted for a field of `kind`."""
    def bad(expected: str) -> SegmentError:
        return _error(segment, f"{op}: {_kind_name(value)} is not {expected}", path, name)

    if isinstance(value, (list, dict)) or value is None:
        raise bad("a single value")
    if kind == NUMBER:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return value
    if kind == BOOL:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == DATE:
        parsed = _as_date(value)
        if parsed is None:
            raise bad("a date like 2026-01-31")
        return parsed
    if kind == TEXT:
        if isinstance(value, bool):
            raise bad("text (write it in quotes: YAML reads yes/no/on/off as true/false)")
        if isinstance(value, (date, datetime)):
            return value.isoformat()
        return str(value)
    if isinstance(value, (date, datetime)):  # custom attribute: YAML dates arrive as text anyway
        return value.isoformat()
    return value


def _parse_operator(segment: Segment, name: str, source: str, kind: str, op: Any, value: Any,
                    path: Loc) -> Cond:
    if op not in OPERATORS:
        hint = difflib.get_close_matches(str(op), OPERATORS, n=1)
        raise _error(segment, f"unknown operator '{op}'" + (f" (did you mean '{hint[0]}'?)" if hint else
                     f"; use one of {', '.join(OPERATORS)}"), path, name)
    if op == "is_null":
        if not isinstance(value, bool):
            raise _error(segment, f"is_null: {_kind_name(value)} is not true or false", path, name)
        return Cond(name, source, kind, op, value)
    if op in ("eq", "ne") and value is None:
        return Cond(name, source, kind, "is_null", op == "eq")
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise _error(segment, f"{op} needs a list of values, like [A, B]", path, name)
        items = tuple(_operand(segment, kind, op, item, path + (index,), name)
                      for index, item in enumerate(value))
        return Cond(name, source, kind, op, items)
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise _error(segment, "between needs two values, like [10, 20]", path, name)
        low, high = (_operand(segment, kind, op, item, path + (i,), name) for i, item in enumerate(value))
        if type(low) is not type(high) and not all(isinstance(x, (int, float)) for x in (low, high)):
            raise _error(segment, "between needs two values of the same kind", path, name)
        if low > high:
            raise _error(segment, f"between: the first value ({value[0]}) is greater than the second "
                         f"({value[1]})", path, name)
        return Cond(name, source, kind, op, (low, high))
    if op in ("contains", "starts_with"):
        if kind not in (TEXT, ATTR):
            raise _error(segment, f"{op} works on text fields only", path, name)
        operand = _operand(segment, TEXT, op, value, path, name)
        return Cond(name, source, kind, op, operand)
    if kind == BOOL and op in ("gt", "gte", "lt", "lte"):
        raise _error(segment, f"{op} does not apply to a yes/no field", path, name)
    if kind == ATTR and op in ("gt", "gte", "lt", "lte") and isinstance(value, bool):
        raise _error(segment, f"{op} does not apply to true/false", path, name)
    return Cond(name, source, kind, op, _operand(segment, kind, op, value, path, name))


def _parse_field(segment: Segment, name: Any, value: Any, path: Loc, attributes: set[str]) -> list[Any]:
    source, kind = _resolve(segment, name, path, attributes)
    if isinstance(value, list):
        raise _error(segment, "a list needs an operator: write {in: [...]}", path, name)
    if not isinstance(value, dict):
        return [_parse_operator(segment, name, source, kind, "eq", value, path)]
    if not value:
        raise _error(segment, "an empty condition: give an operator like {gte: 3}", path, name)
    return [_parse_operator(segment, name, source, kind, op, operand, path + (op,))
            for op, operand in value.items()]


def _parse(segment: Segment, node: Any, path: Loc, attributes: set[str]) -> Any:
    if isinstance(node, list):
        return _parse_list(segment, "all", node, path, attributes)
    if not isinstance(node, dict) or not node:
        raise _error(segment, "a condition is a mapping like `city: Moscow`, or all/any/not", path)
    parts: list[Any] = []
    for key, value in node.items():
        here = path + (key,)
        if key in ("all", "any"):
            if not isinstance(value, list):
                raise _error(segment, f"{key} needs a list of conditions", here, key)
            parts.append(_parse_list(segment, key, value, here, attributes))
        elif key == "not":
            parts.append(Node("not", (_parse(segment, value, here, attributes),)))
        else:
            parts.extend(_parse_field(segment, key, value, here, attributes))
    return parts[0] if len(parts) == 1 else Node("all", tuple(parts))


def _parse_list(segment: Segment, op: str, items: list[Any], path: Loc, attributes: set[str]) -> Node:
    if not items:
        raise _error(segment, f"{op} needs at least one condition", path, op)
    return Node(op, tuple(_parse(segment, item, path + (index,), attributes)
                          for index, item in enumerate(items)))


def parse_where(segment: Segment, attributes: set[str]) -> Any:
    """The segment's condition tree; raises SegmentError for the first mistake."""
    if segment.where is None:
        raise _error(segment, "this segment has no `where`")
    return _parse(segment, segment.where, (), attributes)


# --- read-only SQL ------------------------------------------------------------------------

_WRITE_WORDS = frozenset((
    "insert", "update", "delete", "merge", "upsert", "drop", "alter", "create", "truncate", "grant",
    "revoke", "attach", "detach", "pragma", "vacuum", "reindex", "copy", "call", "lock", "into",
    "commit", "rollback", "begin", "savepoint", "release", "execute", "prepare", "listen", "notify",
))
# What a `sql:` segment may read: the customer data.  The rest of the database (web users and their
# password hashes, the ledger, runs, call tasks and managers' notes) and the database server itself
# (its catalogs, settings, files, locks, large objects) are not the marketer's to read, even in a
# read-only transaction: a query's error message or a yes/no per customer would carry them out.
SQL_TABLES = frozenset({"customers", "customer_stats", "purchases", "custom_attributes"})
_OTHER_TABLES = frozenset(metadata.tables) - SQL_TABLES
# Names outside the customer data: catalogs (`pg_*`, `sqlite_*`, `pragma_*`, `information_schema`)
# and the functions that read the server, change the session or run SQL given as text (which would
# escape every check of the query's own text).
_FOREIGN_PREFIXES = ("pg_", "sqlite_", "pragma_", "lo_", "dblink", "query_to_", "table_to_",
                     "schema_to_", "database_to_", "cursor_to_")
_FOREIGN_NAMES = _OTHER_TABLES | frozenset({
    "information_schema", "current_setting", "set_config", "ts_stat", "ts_rewrite", "load_extension",
    "readfile", "writefile", "edit", "fts3_tokenizer",
})
_DOLLAR_QUOTE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def _code_words(sql: str) -> tuple[list[str], list[str], bool]:
    """Words outside string literals, quoted names and comments; the quoted names (`"users"`);
    and whether a `;` is among the code.

    Anything this scanner cannot classify stays "code", so an odd construct is rejected rather
    than let through; the database's read-only transaction is the second line of defence.
    PostgreSQL's dollar-quoted strings (`$$...$$`, `$tag$...$tag$`) are strings: a quote inside one
    must not make the scanner take the code after it for a string.  A `U&"..."` name (whose
    escapes could spell any name) is reported as the name `u&`.
    """
    words: list[str] = []
    names: list[str] = []
    semicolon = False
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif ch == "/" and sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif ch == "$" and (i == 0 or not (sql[i - 1].isalnum() or sql[i - 1] in "_$")) and (
                quote := _DOLLAR_QUOTE.match(sql, i)):
            end = sql.find(quote.group(0), quote.end())
            i = n if end < 0 else end + len(quote.group(0))
        elif ch in "'\"`":
            escapes = ch == "'" and i > 0 and sql[i - 1] in "eE" and (i < 2 or not sql[i - 2].isalnum())
            j = i + 1
            while j < n:
                if escapes and sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            if ch != "'":
                unicode_escapes = i >= 2 and sql[i - 1] == "&" and sql[i - 2] in "uU"
                names.append("u&" if unicode_escapes else sql[i + 1:j].replace(ch * 2, ch).lower())
            i = j + 1
        elif ch == ";":
            semicolon = True
            i += 1
        elif ch.isalpha() or ch == "_":
            j = i
            while j < n and (sql[j].isalnum() or sql[j] in "_$"):
                j += 1
            words.append(sql[i:j].lower())
            i = j
        else:
            i += 1
    return words, names, semicolon


def _foreign(names: Collection[str]) -> str | None:
    """The first name that reaches outside the customer data, if any."""
    for name in names:
        if name in _FOREIGN_NAMES or name.startswith(_FOREIGN_PREFIXES) or name == "u&":
            return name
    return None


class _OutsideCustomerData(Exception):
    """The database says the query reads something that is not customer data."""


def _outside_message(name: str) -> str:
    what = "a name written with unicode escapes" if name == "u&" else f"'{name}'"
    return f"must only read customer data ({', '.join(sorted(SQL_TABLES))}): {what} is not allowed"


def check_sql(segment: Segment) -> str:
    """The query without a trailing `;`, if it is one read-only SELECT over the customer data;
    else a SegmentError."""
    sql = (segment.sql or "").strip()
    while sql.endswith(";"):
        sql = sql[:-1].rstrip()
    words, names, semicolon = _code_words(sql)
    if not words or words[0] not in ("select", "with"):
        raise _error(segment, "must be one SELECT (or WITH ... SELECT) query returning customer ids",
                     field_name="sql")
    if semicolon:
        raise _error(segment, "must be a single query: no `;` inside", field_name="sql")
    writes = sorted(set(words) & _WRITE_WORDS)
    if writes:
        raise _error(segment, f"must only read data: '{writes[0].upper()}' is not allowed", field_name="sql")
    outside = _foreign([*words, *names])
    if outside is not None:
        raise _error(segment, _outside_message(outside), field_name="sql")
    return sql


def _db_message(error: sa.exc.DBAPIError) -> str:
    return str(error.orig).strip().splitlines()[0] if error.orig is not None else str(error)


def _run_sqlite(conn: Connection, sql: str, timeout: int) -> list[Any]:
    """The authorizer lets the query read the customer tables and nothing else (not even
    `sqlite_master`), call functions except those outside the customer data (`load_extension`),
    and do nothing but select."""
    raw = conn.connection.driver_connection
    deadline = time.monotonic() + timeout
    refused: list[str] = []

    def over_time() -> int:
        return 1 if time.monotonic() > deadline else 0

    def authorize(action: int, first: str | None, second: str | None, database: str | None, *_: Any) -> int:
        if action == sqlite3.SQLITE_READ:
            if first in SQL_TABLES and database == "main":
                return sqlite3.SQLITE_OK
            refused.append(str(first))
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_FUNCTION:
            if _foreign([str(second).lower()]) is None:
                return sqlite3.SQLITE_OK
            refused.append(str(second))
            return sqlite3.SQLITE_DENY
        allowed = (sqlite3.SQLITE_SELECT, getattr(sqlite3, "SQLITE_RECURSIVE", 33))
        return sqlite3.SQLITE_OK if action in allowed else sqlite3.SQLITE_DENY

    raw.execute("PRAGMA query_only=1")
    raw.set_authorizer(authorize)
    raw.set_progress_handler(over_time, 10_000)
    try:
        try:
            cursor = raw.execute(f"SELECT * FROM (\n{sql}\n) AS segment_query")
            return [row[0] for row in cursor.fetchall()]
        except sqlite3.DatabaseError:
            if refused:
                raise _OutsideCustomerData(refused[0]) from None
            raise
    finally:
        raw.set_progress_handler(None, 0)
        raw.set_authorizer(None)
        raw.execute("PRAGMA query_only=0")


def _plan_outside(node: Any, schema: str) -> str | None:
    """What a PostgreSQL plan (EXPLAIN VERBOSE, JSON) reads outside the customer data: a relation
    other than the customer tables of our schema, or a foreign name in any expression."""
    if isinstance(node, dict):
        relation = node.get("Relation Name")
        if relation is not None and (relation not in SQL_TABLES or node.get("Schema") != schema):
            return str(relation)
        for key, value in node.items():
            if key == "Schema":  # of a relation: checked above; of a function scan: `pg_catalog`
                continue
            found = _plan_outside(value, schema)
            if found is not None:
                return found
    elif isinstance(node, list):
        for value in node:
            found = _plan_outside(value, schema)
            if found is not None:
                return found
    elif isinstance(node, str):
        words, names, _ = _code_words(node)
        return _foreign([*words, *names])
    return None


def _run_postgres(conn: Connection, sql: str, timeout: int) -> list[Any]:
    conn.exec_driver_sql("SET TRANSACTION READ ONLY")
    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout * 1000)}")
    # A bound parameter makes psycopg use the extended protocol: the server then refuses more
    # than one statement, whatever the text hides.
    wrapped = "SELECT segment_query.* FROM (\n" + sql.replace("%", "%%") + "\n) AS segment_query OFFSET %s"
    # The plan names every table and function as the server resolved them, whatever spelling,
    # quoting or escaping the text used: nothing runs unless all of it is customer data.
    plan = conn.exec_driver_sql("EXPLAIN (VERBOSE, FORMAT JSON) " + wrapped, (0,)).scalar()
    schema = conn.exec_driver_sql("SELECT current_schema()").scalar()
    outside = _plan_outside(plan, str(schema))
    if outside is not None:
        raise _OutsideCustomerData(outside)
    return [row[0] for row in conn.exec_driver_sql(wrapped, (0,)).all()]


def _query_ids(engine: Engine, sql: str, timeout: int) -> list[Any]:
    with engine.connect() as conn:
        try:
            with conn.begin() as transaction:
                if conn.dialect.name == "sqlite":
                    return _run_sqlite(conn, sql, timeout)
                values = _run_postgres(conn, sql, timeout)
                transaction.rollback()
                return values
        except (sa.exc.DBAPIError, sqlite3.Error):
            conn.invalidate()  # an interrupted connection is not worth returning to the pool
            raise


def _failure(segment: Segment, error: Exception, timeout: int, elapsed: float) -> SegmentError:
    message = _db_message(error) if isinstance(error, sa.exc.DBAPIError) else str(error)
    lowered = message.lower()
    if "interrupted" in lowered or "statement timeout" in lowered or elapsed >= timeout:
        return _error(segment, f"the query took longer than {timeout}s", field_name="sql")
    if "read-only" in lowered or "not authorized" in lowered or "readonly" in lowered:
        return _error(segment, f"must only read data: {message}", field_name="sql")
    return _error(segment, f"the query failed: {message}", field_name="sql")


def run_sql_segment(engine: Engine, segment: Segment, timeout: int) -> list[str]:
    """The ids the segment's query returns, read-only, customer data only, time-limited, sorted
    and unique."""
    sql = check_sql(segment)
    started = time.monotonic()
    try:
        values = _query_ids(engine, sql, timeout)
    except _OutsideCustomerData as outside:
        raise _error(segment, _outside_message(str(outside).lower()), field_name="sql") from None
    except (sa.exc.DBAPIError, sqlite3.Error) as error:
        raise _failure(segment, error, timeout, time.monotonic() - started) from None
    return sorted({str(value) for value in values if value is not None})


# --- compiling ----------------------------------------------------------------------------


class unicode_lower(FunctionElement[str]):
    """lower() that folds Cyrillic too: SQLite's own lower() knows ASCII only."""

    type = sa.Text()
    inherit_cache = True
    name = "unicode_lower"


@compiles(unicode_lower)
def _lower_default(element: unicode_lower, compiler: Any, **kw: Any) -> str:
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(unicode_lower, "sqlite")
def _lower_sqlite(element: unicode_lower, compiler: Any, **kw: Any) -> str:
    return f"orchestrator_lower({compiler.process(element.clauses, **kw)})"


def _py_lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


@sa.event.listens_for(sa.pool.Pool, "checkout")
def _sqlite_functions(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Every SQLite connection gets orchestrator_lower, whoever opened it."""
    if isinstance(dbapi_connection, sqlite3.Connection) and not record.info.get("orchestrator_lower"):
        dbapi_connection.create_function("orchestrator_lower", 1, _py_lower, deterministic=True)
        record.info["orchestrator_lower"] = True


class _attr(FunctionElement[Any]):
    """A custom attribute from the `attrs` JSON, typed: values of another JSON type read NULL."""

    inherit_cache = True
    kind = ""

    def __init__(self, name: str) -> None:
        super().__init__(customers.c.attrs, sa.literal(name, sa.Text))


class attr_number(_attr):
    inherit_cache = True
    type = sa.Float()
    kind = "number"
    name = "attr_number"


class attr_text(_attr):
    inherit_cache = True
    type = sa.Text()
    kind = "text"
    name = "attr_text"


class attr_bool(_attr):
    inherit_cache = True
    type = sa.Boolean()
    kind = "bool"
    name = "attr_bool"


class attr_type(_attr):
    """The JSON type name, 'null' when the attribute is missing."""

    inherit_cache = True
    type = sa.Text()
    kind = "type"
    name = "attr_type"


_SQLITE_ATTR = {
    "number": "CASE WHEN json_type({c}, {p}) IN ('integer', 'real') THEN json_extract({c}, {p}) END",
    "text": "CASE WHEN json_type({c}, {p}) = 'text' THEN json_extract({c}, {p}) END",
    "bool": "CASE json_type({c}, {p}) WHEN 'true' THEN 1 WHEN 'false' THEN 0 END",
    "type": "COALESCE(json_type({c}, {p}), 'null')",
}
_PG_ATTR = {
    "number": "CASE WHEN json_typeof({c} -> {k}) = 'number' THEN CAST({c} ->> {k} AS DOUBLE PRECISION) END",
    "text": "CASE WHEN json_typeof({c} -> {k}) = 'string' THEN {c} ->> {k} END",
    "bool": "CASE WHEN json_typeof({c} -> {k}) = 'boolean' THEN CAST({c} ->> {k} AS BOOLEAN) END",
    "type": "COALESCE(json_typeof({c} -> {k}), 'null')",
}


@compiles(_attr, "sqlite")
def _attr_sqlite(element: _attr, compiler: Any, **kw: Any) -> str:
    column, key = (compiler.process(clause, **kw) for clause in element.clauses)
    return "(" + _SQLITE_ATTR[element.kind].format(c=column, p=f"('$.\"' || {key} || '\"')") + ")"


@compiles(_attr, "postgresql")
def _attr_postgres(element: _attr, compiler: Any, **kw: Any) -> str:
    column, key = (compiler.process(clause, **kw) for clause in element.clauses)
    return "(" + _PG_ATTR[element.kind].format(c=column, k=f"CAST({key} AS TEXT)") + ")"


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _value_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "text"


_ATTR_CLASSES = {"number": attr_number, "text": attr_text, "bool": attr_bool}


def _bind(value: Any) -> Any:
    """A typed bind: psycopg casts binds to the compared column's type, and 2.5::INTEGER is 3."""
    if isinstance(value, bool):
        return sa.literal(value, sa.Boolean)
    if isinstance(value, float):
        return sa.literal(value, sa.Float)
    if isinstance(value, int):
        return sa.literal(value, sa.BigInteger)
    if isinstance(value, date):
        return sa.literal(value, sa.Date)
    return sa.literal(value, sa.Text)


def _leaf(expr: Any, op: str, value: Any) -> ColumnElement[bool]:
    """The comparison itself; NULL where the value is missing (made false by the caller)."""
    if op == "in":
        return expr.in_([_bind(item) for item in value])
    if op == "between":
        return expr.between(_bind(value[0]), _bind(value[1]))
    if op in ("contains", "starts_with"):
        pattern = _escape_like(value.lower())
        pattern = f"%{pattern}%" if op == "contains" else f"{pattern}%"
        return unicode_lower(expr).like(pattern, escape="\\")
    operand = _bind(value)
    if op == "eq":
        return expr == operand
    if op == "gt":
        return expr > operand
    if op == "gte":
        return expr >= operand
    if op == "lt":
        return expr < operand
    return expr <= operand


def _definitely(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """Two-valued logic: a comparison with a missing value is false, not NULL.  `IS TRUE`
    rather than `coalesce(…, false)`: PostgreSQL estimates the rows of the comparison inside it
    from the column's statistics, where a coalesce is opaque to it (estimated 2 % of the
    customers, it sorted the whole segment for every page instead of reading it in id order)."""
    return condition.is_(sa.true())


def _compile_cond(cond: Cond, derived: dict[str, ColumnElement[Any]]) -> ColumnElement[bool]:
    negate = cond.op in ("ne", "not_in")
    op = {"ne": "eq", "not_in": "in"}.get(cond.op, cond.op)
    if cond.source == "attribute":
        if op == "is_null":
            present = attr_type(cond.field) == "null"
            return present if cond.value else sa.not_(present)
        values = cond.value if op in ("in",) else (cond.value,)
        kinds = sorted({_value_kind(v) for v in values}) if op != "between" else [_value_kind(cond.value[0])]
        if op in ("contains", "starts_with"):
            kinds = ["text"]
        parts = []
        for kind in kinds:
            expr = _ATTR_CLASSES[kind](cond.field)
            operand = tuple(v for v in cond.value if _value_kind(v) == kind) if op == "in" else cond.value
            parts.append(_leaf(expr, op, operand))
        condition = _definitely(sa.or_(*parts) if len(parts) > 1 else parts[0])
    else:
        expr = customers.c[cond.field] if cond.source == "column" else derived[cond.field]
        if op == "is_null":
            return expr.is_(None) if cond.value else expr.is_not(None)
        condition = _definitely(_leaf(expr, op, cond.value))
    return sa.not_(condition) if negate else condition


def _compile_node(node: Any, derived: dict[str, ColumnElement[Any]]) -> ColumnElement[bool]:
    if isinstance(node, Cond):
        return _compile_cond(node, derived)
    children = [_compile_node(child, derived) for child in node.children]
    if node.op == "all":
        return sa.and_(*children)
    if node.op == "any":
        return sa.or_(*children)
    return sa.not_(children[0])


def compile_where(segment: Segment, *, now: datetime, settings: Settings, attributes: set[str]) -> ColumnElement[bool]:
    """The segment's condition as SQL over customers LEFT JOIN customer_stats (see stats_join)."""
    tree = parse_where(segment, attributes)
    return _compile_node(tree, derived_columns(now, settings))


# --- validating, counting, paging ---------------------------------------------------------


def custom_attribute_names(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(custom_attributes.c.name)).scalars())


def validate_segment(segment: Segment, engine: Engine | None = None) -> None:
    """Raise SegmentError(file, line, field) for the first mistake.

    Without an engine custom attributes are unknown (an error if used), and a `sql:` query is
    only checked for being one read-only SELECT; with one, the query is also tried (LIMIT 0).
    """
    if segment.sql is not None:
        sql = check_sql(segment)
        if engine is not None:
            trial = Segment(segment.name, segment.description, None,
                            f"SELECT * FROM (\n{sql}\n) AS segment_trial LIMIT 0",
                            segment.file, segment.lines, segment.loc)
            run_sql_segment(engine, trial, TRIAL_TIMEOUT_SECONDS)
        return
    attributes = custom_attribute_names(engine) if engine is not None else set()
    parse_where(segment, attributes)


def _member_columns(derived: dict[str, ColumnElement[Any]], fields: Collection[str] | None = None) -> list[Any]:
    """Every column and derived field, or only `fields` (custom attributes come with `attrs`)."""
    if fields is None:
        return [*customers.c, *(expr.label(name) for name, expr in derived.items())]
    wanted = set(fields) | {"id"}
    if wanted - set(customers.c.keys()) - set(derived):
        wanted.add("attrs")
    return [*(c for c in customers.c if c.name in wanted),
            *(expr.label(name) for name, expr in derived.items() if name in wanted)]


def _page_query(derived: dict[str, ColumnElement[Any]], condition: ColumnElement[bool] | None,
                extra_where: ColumnElement[bool] | None, after: str | None = None,
                fields: Collection[str] | None = None) -> sa.Select[Any]:
    """Members in id order, after `after`.  The bound is given to both sides of the join:
    PostgreSQL does not carry an inequality across a join, and a merge join would otherwise read
    customer_stats from its start for every page."""
    joined = stats_join()
    if after is not None:
        joined = customers.outerjoin(customer_stats, sa.and_(
            customer_stats.c.customer_id == customers.c.id, customer_stats.c.customer_id > after))
    query = sa.select(*_member_columns(derived, fields)).select_from(joined).order_by(customers.c.id)
    for clause in (condition, extra_where, customers.c.id > after if after is not None else None):
        if clause is not None:
            query = query.where(clause)
    return query


def _fetch(engine: Engine, query: sa.Select[Any]) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        result = conn.execute(query)
        keys = tuple(result.keys())
        return [dict(zip(keys, row)) for row in result.fetchall()]


def iter_segment_pages(
    engine: Engine, segment: Segment, *, now: datetime, settings: Settings, page_size: int,
    extra_where: ColumnElement[bool] | None = None, fields: Collection[str] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Pages of members (every customers column, attrs, every derived field — or only `fields`),
    by customer id.

    Keyset pagination: each page is its own short query (`id > last ORDER BY id LIMIT n`), so a
    long segment never holds a read transaction that would block writers.
    """
    derived = derived_columns(now, settings)
    if segment.sql is not None:
        yield from _sql_pages(engine, segment, derived, settings, page_size, extra_where, fields)
        return
    condition = compile_where(segment, now=now, settings=settings, attributes=custom_attribute_names(engine))
    last: str | None = None
    while True:
        page = _fetch(engine, _page_query(derived, condition, extra_where, last, fields).limit(page_size))
        if page:
            yield page
        if len(page) < page_size:
            return
        last = page[-1]["id"]


def _sql_pages(engine: Engine, segment: Segment, derived: dict[str, ColumnElement[Any]], settings: Settings,
               page_size: int, extra_where: ColumnElement[bool] | None,
               fields: Collection[str] | None = None) -> Iterator[list[dict[str, Any]]]:
    ids = run_sql_segment(engine, segment, settings.segments.sql_timeout_seconds)
    buffer: list[dict[str, Any]] = []
    chunk = max(1, min(page_size, ID_CHUNK))
    for start in range(0, len(ids), chunk):
        query = _page_query(derived, customers.c.id.in_(ids[start:start + chunk]), extra_where, fields=fields)
        buffer.extend(_fetch(engine, query))
        while len(buffer) >= page_size:
            yield buffer[:page_size]
            buffer = buffer[page_size:]
    if buffer:
        yield buffer


def segment_count(engine: Engine, segment: Segment, *, now: datetime, settings: Settings) -> int:
    if segment.sql is not None:
        ids = run_sql_segment(engine, segment, settings.segments.sql_timeout_seconds)
        total = 0
        with engine.connect() as conn:
            for start in range(0, len(ids), ID_CHUNK):
                total += conn.execute(sa.select(sa.func.count()).select_from(customers)
                                      .where(customers.c.id.in_(ids[start:start + ID_CHUNK]))).scalar() or 0
        return total
    condition = compile_where(segment, now=now, settings=settings, attributes=custom_attribute_names(engine))
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(stats_join()).where(condition)).scalar() or 0)


def segment_sample(engine: Engine, segment: Segment, *, now: datetime, settings: Settings,
                   limit: int = 10) -> list[dict[str, Any]]:
    """The first `limit` members by id, for `segment show`."""
    if limit <= 0:
        return []
    for page in iter_segment_pages(engine, segment, now=now, settings=settings, page_size=limit):
        return page
    return []


__all__: Sequence[str] = (
    "Segment", "load_segment", "load_segments", "inline_segment", "validate_segment", "compile_where",
    "iter_segment_pages", "segment_count", "segment_sample", "custom_attribute_names", "check_sql",
)
