"""`orchestrator import customers|purchases FILE` (SPEC 3): CRM exports into the database.

The file is checked as a whole first (csvreader: encoding, CSV structure, header), so an unusable
file raises ImportFileError with nothing written.  Rows are then streamed and written in batches
(a write transaction spans several, TRANSACTION_ROWS), so a million-row export imports in bounded
memory; a large customer file is parsed in a worker process while this one writes (_ParseWorker).
A bad row is reported (`line N: column: reason`, N the physical line where the record starts) and
skipped; a bad optional value (an invalid phone or email, an unknown time zone) is reported and
dropped while the customer is kept.

Choices where SPEC is silent:
- Exit code 3 only when rows were *rejected*.  Values dropped from kept rows are listed as problems
  (`rejected` false) but the row counts as imported, so the exit code stays 0.
- Re-import updates only the columns present in the file; unsubscribed_* are never touched, and
  phone_invalid (set by a gateway) is cleared only when the phone number itself changes.  Custom
  attributes of the file's extra columns are merged into the stored ones; an empty cell removes
  that attribute.
- Purchases without an `id` are keyed by a digest of (customer_id, date, amount, category): two
  identical purchases on one day without ids count once.  Re-imported purchases are counted as
  `duplicates` (never as updated: a purchase is a fact, not a record to edit).
- Rows made only of delimiters are skipped silently (spreadsheets end exports with them).
- At most MAX_PROBLEMS problems are kept; beyond that only their number (`problems_omitted`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import operator
import os
import pickle
import re
import struct
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from orchestrator.csvreader import CsvSource, Record, open_csv, records
from orchestrator.errors import ImportFileError
from orchestrator.gc_tuning import bulk_work, tune_for_bulk_work
from orchestrator.normalize import (
    BOOL_CELLS,
    PhoneNormalizer,
    normalize_email,
    parse_birthday,
    parse_bool,
    parse_date,
    parse_decimal,
    parse_positive_int,
    typed_attribute,
)
from orchestrator.policy.zones import ZoneGuess, ZoneResolver, canonical_zone
from orchestrator.settings import Settings
from orchestrator.storage import schema
from orchestrator.storage.engine import is_sqlite, refresh_statistics, write_transaction

BATCH_ROWS = 5_000
# Rows written per transaction.  A purchase batch inserts keys and customer ids at random places
# in their indexes, dirtying a page per row; a commit writes every dirty page to the WAL, so at a
# million purchases 5,000 rows per commit spent 66 ms a commit, most of the import.  Ten batches
# share a page far more often (bench/bench_import.py at 1,000,000 rows: 35,000 → 60,000 rows/s),
# and hold the write lock for about a second.
TRANSACTION_ROWS = 50_000
MAX_PROBLEMS = 10_000
ATTRIBUTE_LIMIT = 1_000
ATTRIBUTE_NAME_LIMIT = 128
EPOCH = date(1970, 1, 1).toordinal()

CUSTOMER_COLUMNS = (
    "id", "name", "first_name", "email", "phone", "timezone", "city", "birthday", "manager",
    "abc_group", "bonus_balance", "discount_percent", "consent_email", "consent_sms",
    "consent_phone", "phone_cap_days",
)
PURCHASE_COLUMNS = ("customer_id", "date", "amount", "category", "id")
DERIVED_FIELDS = (
    "purchases_count", "total_spent", "last_purchase_at", "days_since_last_purchase",
    "avg_purchase_interval_days", "preferred_category", "is_sleeping", "sleep_score",
    "birthday_in_days", "local_time",
)
# Names a custom attribute may not take: segments and templates would not know which one is meant.
RESERVED_NAMES = frozenset(
    [c.name for c in schema.customers.columns] + list(DERIVED_FIELDS) + ["attrs", "customer"]
)


# --- the report ------------------------------------------------------------------------------


@dataclass
class Problem:
    line: int
    column: str
    reason: str
    rejected: bool = True

    def __str__(self) -> str:
        where = f"line {self.line}: {self.column}" if self.column else f"line {self.line}"
        return f"{where}: {self.reason}"


@dataclass
class ImportReport:
    kind: str
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    rejected: int = 0
    problems: list[Problem] = field(default_factory=list)
    duplicates: int = 0
    problems_omitted: int = 0
    file: str = ""

    @property
    def exit_code(self) -> int:
        return 3 if self.rejected else 0

    def add(self, line: int, column: str, reason: str, *, rejected: bool = True) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(line, column, reason, rejected))
        else:
            self.problems_omitted += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "file": self.file,
            "rows_read": self.rows_read,
            "inserted": self.inserted,
            "updated": self.updated,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "problems": [asdict(problem) for problem in self.problems],
            "problems_omitted": self.problems_omitted,
            "exit_code": self.exit_code,
        }

    def write_errors_csv(self, path: Path) -> None:
        """The problems as a spreadsheet-friendly CSV (UTF-8 with BOM, so Excel reads Cyrillic)."""
        with Path(path).open("w", encoding="utf-8-sig", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["line", "column", "reason", "action"])
            for problem in self.problems:
                writer.writerow([
                    problem.line, _cell(problem.column), _cell(problem.reason),
                    "row rejected" if problem.rejected else "value dropped, row imported",
                ])


def _cell(text: str) -> str:
    """Spreadsheets run cells that start with = + - @ as formulas; a header name may."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


# --- the header ------------------------------------------------------------------------------


@dataclass
class Layout:
    columns: dict[str, int]  # our column name → cell index
    labels: dict[str, str]  # our column name → header text, for problem lines
    extras: list[tuple[str, int]]  # custom attribute name → cell index
    width: int


def _mapping(*maps: Mapping[str, str] | None) -> dict[str, str]:
    merged: dict[str, str] = {}
    for mapping in maps:
        for source, target in (mapping or {}).items():
            merged[source.strip().casefold()] = target.strip()
    return merged


def build_layout(
    header: Iterable[str],
    *,
    known: tuple[str, ...],
    required: tuple[str, ...],
    settings_map: Mapping[str, str] | None,
    column_map: Mapping[str, str] | None,
    extras_allowed: bool,
    path: Path,
    report: ImportReport,
) -> Layout:
    """Rename (settings map, then --map which wins), classify and check the header."""
    mapping = _mapping(settings_map, column_map)
    header = list(header)
    columns: dict[str, int] = {}
    labels: dict[str, str] = {}
    extras: list[tuple[str, int]] = []
    seen: dict[str, str] = {}
    for index, raw in enumerate(header):
        label = raw.strip().lstrip("\ufeff").strip()
        if not label:
            continue
        target = mapping.get(label.casefold(), label)
        key = target.casefold()
        if key in seen:
            raise ImportFileError(
                f"two columns mean {target!r}: {seen[key]!r} and {label!r}", file=path, line=1,
                field=label,
            )
        seen[key] = label
        if key in known:
            columns[key] = index
            labels[key] = label
        elif not extras_allowed:
            report.add(1, label, "not a purchase column: ignored", rejected=False)
        elif key in RESERVED_NAMES:
            report.add(1, label, f"{target!r} is a reserved field name: column ignored", rejected=False)
        elif len(target) > ATTRIBUTE_NAME_LIMIT:
            report.add(1, label[:60] + "…", "column name longer than 128 characters: ignored",
                       rejected=False)
        else:
            extras.append((target, index))
    missing = [name for name in required if name not in columns]
    if missing:
        found = ", ".join(repr(h.strip()) for h in header if h.strip()) or "nothing"
        raise ImportFileError(
            f"no {' / '.join(missing)} column (the header has {_shorten(found, 300)}); rename "
            f"columns with --map \"Код=id\" or the [import.*.columns] settings",
            file=path, line=1,
        )
    for source in (column_map or {}):
        if source.strip().casefold() not in {h.strip().casefold() for h in header}:
            report.add(1, source, "--map names a column the file does not have", rejected=False)
    return Layout(columns, labels, extras, len(header))


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


# --- values ----------------------------------------------------------------------------------


class Kept(Exception):
    """A value kept in a changed form (cut to length); the row is imported, the change reported."""

    def __init__(self, value: object, reason: str) -> None:
        super().__init__(reason)
        self.value = value


def _text(limit: int, *, cut: bool = True) -> Callable[[str], str | None]:
    def handle(cell: str) -> str | None:
        value = cell.strip()
        if len(value) > limit:
            if cut:
                raise Kept(value[:limit], f"longer than {limit} characters: cut")
            raise ValueError(f"longer than {limit} characters")
        return value or None

    return handle


def _optional(parse: Callable[[str], object]) -> Callable[[str], object]:
    def handle(cell: str) -> object:
        return parse(cell) if cell.strip() else None

    handle.optional = parse  # type: ignore[attr-defined]  # for _Column: one call less per cell
    return handle


def _timezone(cell: str) -> str | None:
    if not cell.strip():
        return None
    zone = canonical_zone(cell)
    if zone is None:
        raise ValueError(f"{cell.strip()[:64]!r} is not a time zone name (like Europe/Moscow)")
    return zone


def _percent(cell: str) -> float | None:
    if not cell.strip():
        return None
    value = parse_decimal(cell)
    if not 0 <= value <= 100:
        raise ValueError(f"{value:g} is not a percentage between 0 and 100")
    return value


def _consent(cell: str) -> bool:
    value = BOOL_CELLS.get(cell)
    if value is not None:
        return value
    try:
        return parse_bool(cell)
    except ValueError as error:
        raise ValueError(f"{error}: taken as no") from None


def _finite(cell: str) -> float | None:
    return parse_decimal(cell) if cell.strip() else None


_NO_BIRTHDAY = (None, None, None)
TEXT_LIMITS = {"name": 500, "first_name": 500, "city": 200, "manager": 64, "abc_group": 16}


def _customer_handlers(country: str) -> dict[str, tuple[Callable[[str], object], object]]:
    """column → (parse, value when the cell is bad)."""
    phone = PhoneNormalizer(country)
    today = date.today()

    def birthday(cell: str) -> object:
        return parse_birthday(cell, today) if cell.strip() else _NO_BIRTHDAY

    return {
        "name": (_text(TEXT_LIMITS["name"]), None),
        "first_name": (_text(TEXT_LIMITS["first_name"]), None),
        "email": (_optional(normalize_email), None),
        "phone": (_optional(phone), None),
        "timezone": (_timezone, None),
        "city": (_text(TEXT_LIMITS["city"]), None),
        "birthday": (birthday, _NO_BIRTHDAY),
        "manager": (_text(TEXT_LIMITS["manager"], cut=False), None),
        "abc_group": (_text(TEXT_LIMITS["abc_group"], cut=False), None),
        "bonus_balance": (_finite, None),
        "discount_percent": (_percent, None),
        "consent_email": (_consent, False),
        "consent_sms": (_consent, False),
        "consent_phone": (_consent, False),
        "phone_cap_days": (_optional(parse_positive_int), None),
    }


# --- shared driving --------------------------------------------------------------------------


def _dialect_insert(engine: Engine, table: sa.Table) -> Any:
    return (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(table)


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class _BatchWriter:
    """executemany of one statement.  On SQLite the rows go straight to the driver: SQLAlchemy's
    per-row parameter processing costs more than SQLite's insert itself (bench/bench_import.py
    measures both), so the rows carry driver values already (`date_value`, `json_value`)."""

    def __init__(self, engine: Engine, statement: Any) -> None:
        self.engine = engine
        self.statement = statement
        self.sqlite = is_sqlite(engine)
        self.sql: str | None = None
        self.getter: Callable[[dict[str, Any]], tuple[Any, ...]] | None = None
        self.order: list[str] = []

    def date_value(self, value: date | None) -> Any:
        return value.isoformat() if self.sqlite and value is not None else value

    def json_value(self, value: dict[str, Any]) -> Any:
        return _JSON.encode(value) if self.sqlite else value

    def write(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if not self.sqlite:
            conn.execute(self.statement, rows)
            return
        if self.sql is None or self.getter is None:
            compiled = self.statement.compile(dialect=self.engine.dialect, column_keys=list(rows[0]))
            self.sql = str(compiled)
            self.getter = operator.itemgetter(*compiled.positiontup)
        getter = self.getter
        conn.exec_driver_sql(self.sql, [getter(row) for row in rows])

    def write_tuples(self, conn: sa.Connection, keys: list[str], rows: list[tuple[Any, ...]]) -> int:
        """Rows as tuples in `keys` order; the number of rows the database took (SQLite counts an
        insert its conflict clause skipped as none)."""
        if not rows:
            return 0
        if not self.sqlite:
            conn.execute(self.statement, [dict(zip(keys, row)) for row in rows])
            return len(rows)
        if self.sql is None:
            compiled = self.statement.compile(dialect=self.engine.dialect, column_keys=keys)
            self.sql = str(compiled)
            self.order = list(compiled.positiontup)
        if self.order != keys:
            reorder = operator.itemgetter(*map(keys.index, self.order))
            rows = list(map(reorder, rows))
        return int(conn.exec_driver_sql(self.sql, rows).rowcount)

    def write_columns(self, conn: sa.Connection, keys: list[str], columns: dict[str, list[Any]]) -> None:
        """The rows given column by column (`keys` names them all): on SQLite zipped straight into
        the driver's parameter tuples, with no row dict built at all."""
        if not self.sqlite:
            conn.execute(self.statement, [dict(zip(keys, row)) for row in zip(*map(columns.get, keys))])
            return
        if self.sql is None:
            compiled = self.statement.compile(dialect=self.engine.dialect, column_keys=keys)
            self.sql = str(compiled)
            self.order = list(compiled.positiontup)
        conn.exec_driver_sql(self.sql, list(zip(*map(columns.__getitem__, self.order))))


class _Transactions:
    """Write transactions spanning several batches (see TRANSACTION_ROWS): each batch still looks
    up and writes inside one transaction, as when it had its own.  Leaving the block commits the
    open one, or rolls it back on an exception."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.limit = TRANSACTION_ROWS
        self.rows = 0
        self.open: ExitStack | None = None
        self.conn: sa.Connection | None = None

    def connection(self) -> sa.Connection:
        if self.open is None or self.conn is None:
            self.open = ExitStack()
            self.conn = self.open.enter_context(write_transaction(self.engine))
        return self.conn

    def written(self, rows: int) -> None:
        """Rows just written; commits once the transaction holds enough."""
        self.rows += rows
        if self.rows >= self.limit:
            self.commit()

    def commit(self) -> None:
        if self.open is not None:
            open_, self.open, self.conn, self.rows = self.open, None, None, 0
            open_.close()

    def __enter__(self) -> _Transactions:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.open is not None:
            open_, self.open, self.conn, self.rows = self.open, None, None, 0
            open_.__exit__(*exc)


def _existing(conn: sa.Connection, columns: list[sa.Column[Any]], key: sa.Column[Any],
              values: Iterable[str]) -> list[Any]:
    """Rows whose `key` is among `values` (a batch: thousands of values, one statement)."""
    values = list(values)
    if is_sqlite(conn):
        names = ", ".join(f'"{column.name}"' for column in columns)
        marks = ",".join("?" * len(values))
        sql = f'SELECT {names} FROM "{key.table.name}" WHERE "{key.name}" IN ({marks})'
        return list(conn.exec_driver_sql(sql, tuple(values)).fetchall())
    return list(conn.execute(sa.select(*columns).where(key.in_(values))).fetchall())


def _row_problem(record: Record, width: int, report: ImportReport | _Deferred, has_nul: bool) -> bool:
    """Structural trouble with a record as a whole; True when it is rejected."""
    cells = record.cells
    if len(cells) > width and not any(cell.strip() for cell in cells[width:]):
        del cells[width:]
    if len(cells) != width:
        reason = f"{len(cells)} fields where the header has {width}"
        if record.last_line > record.line:
            reason += f" (the record runs to line {record.last_line}: an unclosed quote?)"
        report.add(record.line, "", reason)
        return True
    if has_nul and any("\x00" in cell for cell in cells):
        report.add(record.line, "", "contains a NUL character")
        return True
    return False


def _open(path: Path, encoding: str | None, delimiter: str | None) -> CsvSource:
    return open_csv(Path(path), encoding=encoding, delimiter=delimiter)


# --- customers -------------------------------------------------------------------------------


class _Deferred:
    """Problems of the rows of a batch.  The batch is checked column by column, so its problems
    are found out of line order; they reach the report sorted by line, in the order the row-by-row
    import added them (which decides the ones kept past MAX_PROBLEMS)."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str, str, bool]] = []

    def add(self, line: int, column: str, reason: str, *, rejected: bool = True) -> None:
        self.items.append((line, column, reason, rejected))

    def release(self) -> list[tuple[int, str, str, bool]]:
        """The problems so far, in line order (a stable sort: a line's own order stays)."""
        items, self.items = self.items, []
        items.sort(key=operator.itemgetter(0))
        return items


class _Bad:
    """The value of a cell the careful path must look at again (and report)."""

    def __repr__(self) -> str:
        return "<bad cell>"


_BAD = _Bad()
MEMO_LIMIT = 20_000


class _Memo(dict):  # type: ignore[type-arg]
    """cell → value: a repeated cell (a city, a flag, a level, a birthday) costs one C-level dict
    lookup instead of Python calls.  Bad cells are not kept, so each one is converted (and
    flagged) wherever it occurs."""

    __slots__ = ("convert",)

    def __init__(self, convert: Callable[[str], object]) -> None:
        super().__init__()
        self.convert = convert

    def __missing__(self, cell: str) -> object:
        value = self.convert(cell)
        if value is not _BAD:
            self[cell] = value
        return value


class _Column:
    """One column of a batch converted at once by the same function the careful path uses; a cell
    it refuses (ValueError, or Kept: a value changed with a report) comes out as _BAD.

    Values that repeat are remembered; a column whose values hardly repeat (emails, phones) stops
    remembering once the memo is full, so memory stays bounded and unique values pay no more."""

    def __init__(self, parse: Callable[[str], object]) -> None:
        self.failed: list[str] = []
        inner = getattr(parse, "optional", None)
        convert = self._checked(parse) if inner is None else self._checked_optional(inner)
        self.convert = convert
        self.memo: _Memo | None = _Memo(convert)
        self.lookups = 0

    def _checked(self, parse: Callable[[str], object]) -> Callable[[str], object]:
        failed = self.failed

        def convert(cell: str) -> object:
            try:
                return parse(cell)
            except (ValueError, Kept):
                failed.append(cell)
                return _BAD

        return convert

    def _checked_optional(self, parse: Callable[[str], object]) -> Callable[[str], object]:
        """`_optional(parse)` checked, with its blank test inlined: one Python call less a cell."""
        failed = self.failed

        def convert(cell: str) -> object:
            try:
                return parse(cell) if cell.strip() else None
            except (ValueError, Kept):
                failed.append(cell)
                return _BAD

        return convert

    def values(self, cells: tuple[str, ...], bad: set[int]) -> list[object]:
        """The converted cells; the indexes of refused ones are added to `bad`."""
        memo = self.memo
        if memo is None:
            values = list(map(self.convert, cells))
        else:
            if len(memo) >= MEMO_LIMIT:
                memo.clear()
                if self.lookups < 2 * MEMO_LIMIT:
                    self.memo = None
                self.lookups = 0
            self.lookups += len(cells)
            values = list(map(memo.__getitem__, cells))
        if self.failed:
            self.failed.clear()
            bad.update(index for index, value in enumerate(values) if value is _BAD)
        return values


def _text_values(cells: tuple[str, ...], limit: int, bad: set[int]) -> list[str | None]:
    """A plain text column: stripped, empty as NULL; a cell over `limit` goes to the careful path
    (which cuts or drops it, with a report)."""
    stripped = list(map(str.strip, cells))
    if max(map(len, stripped)) > limit:
        bad.update(index for index, value in enumerate(stripped) if len(value) > limit)
    return [value or None for value in stripped]


class _Places(dict):  # type: ignore[type-arg]
    """(timezone, city) → the zone guess they decide, or None when the phone must (neither is
    known).  Time zones and cities repeat, so most rows cost a dict lookup."""

    def __init__(self, resolver: ZoneResolver) -> None:
        super().__init__()
        self.resolver = resolver

    def __missing__(self, place: tuple[str | None, str | None]) -> ZoneGuess | None:
        guess = self.resolver.guess(place[0], place[1], None)
        decided = None if guess.source == "default" else guess
        if len(self) >= MEMO_LIMIT:
            self.clear()
        self[place] = decided
        return decided

    def guesses(self, timezones: list[Any], cities: list[Any], phones: list[Any]) -> list[ZoneGuess]:
        """ZoneResolver.guess of each row: the phone is looked at only where it would be."""
        guesses = list(map(self.__getitem__, zip(timezones, cities)))
        if None in guesses:
            guess = self.resolver.guess
            for index, decided in enumerate(guesses):
                if decided is None:
                    guesses[index] = guess(timezones[index], cities[index], phones[index])
        return guesses  # type: ignore[return-value]


def _attribute_fragment(name: str) -> Callable[[str], str]:
    """cell → `,"name":value` as the JSON encoder writes that pair inside the attrs object, or ""
    when the cell is empty (no attribute).  A new customer's attrs text is then the fragments
    joined, the same text `_JSON.encode` gives for the merged dict."""

    def fragment(cell: str) -> str:
        value, cut = typed_attribute(cell, ATTRIBUTE_LIMIT)
        if cut:
            raise Kept(value, f"longer than {ATTRIBUTE_LIMIT} characters: cut")
        return "" if value is None else "," + _JSON.encode({name: value})[1:-1]

    return fragment


@dataclass(frozen=True)
class _CustomerJob:
    """What the parse side needs; picklable, as it may run in a worker process."""
    source: CsvSource
    layout: Layout
    country: str
    cities: dict[str, str]
    sqlite: bool


@dataclass
class _CustomerBatch:
    """Rows read since the previous batch: the accepted ones converted column by column (driver
    values; zones from the file's own columns), and the problems of all of them in line order."""
    ids: list[str]
    values: dict[str, list[Any]]
    fragments: list[str] | None  # a new customer's attrs text (SQLite), row by row
    careful: dict[int, dict[str, Any]]  # custom attributes of the rows the careful path redid
    extras: list[tuple[str, ...]]  # the cells of each custom attribute column
    problems: list[tuple[int, str, str, bool]]
    rows_read: int
    rejected: int


def _date_value(sqlite: bool) -> Callable[[date | None], Any]:
    """A date as the driver takes it: ISO text for SQLite, the date itself otherwise."""
    if not sqlite:
        return lambda value: value
    return lambda value: value.isoformat() if value is not None else None


class _CustomerRows:
    """The parse side.  Rows are collected per batch and converted column by column (one C-level
    pass per column for the common cells); a row with any unusual cell is redone by the careful
    row-by-row path, which reports each problem.  Both run the same parse functions, so they give
    the same values."""

    def __init__(self, job: _CustomerJob) -> None:
        self.job = job
        layout = job.layout
        self.width = layout.width
        self.problems = _Deferred()
        self.places = _Places(ZoneResolver(job.cities))
        self.date_value = _date_value(job.sqlite)
        handlers = _customer_handlers(job.country)
        self.fields = [
            (name, index, *handlers[name], layout.labels[name])
            for name, index in layout.columns.items() if name != "id"
        ]
        self.id_index = layout.columns["id"]
        self.id_label = layout.labels["id"]
        self.has_birthday = "birthday" in layout.columns
        self.has_nul = job.source.has_nul
        self.texts = [(name, index, TEXT_LIMITS[name]) for name, index, *_ in self.fields
                      if name in TEXT_LIMITS]
        self.parsers = [(name, index, _Column(self._fast_parse(name, parse)))
                        for name, index, parse, *_ in self.fields if name not in TEXT_LIMITS]
        self.extras = [(name, index, _Column(_attribute_fragment(name)))
                       for name, index in layout.extras]
        self.rejected = 0

    def _fast_parse(self, name: str, parse: Callable[[str], object]) -> Callable[[str], object]:
        """The column's parse function; a birthday comes out with its date in the driver's form."""
        if name != "birthday":
            return parse
        date_value = self.date_value

        def birthday(cell: str) -> object:
            value, month, day = parse(cell)  # type: ignore[misc]
            return date_value(value), month, day

        return birthday

    def batches(self, progress: Callable[[int, int], None] | None = None) -> Iterator[_CustomerBatch]:
        """The file's batches (a batch never holds one id twice: the later row wins, as its
        batch is written later); the last one may hold no rows, only problems."""
        width, id_index, has_nul = self.width, self.id_index, self.has_nul
        lines: list[int] = []
        rows: list[list[str]] = []
        ids: list[str] = []
        seen: set[str] = set()
        read = 0
        for record in records(self.job.source, progress):
            read += 1
            cells = record.cells
            if len(cells) != width or has_nul:
                if _row_problem(record, width, self.problems, has_nul):
                    self.rejected += 1
                    continue
            customer_id = cells[id_index].strip()
            if not customer_id or len(customer_id) > 64:
                self._reject_id(record.line, customer_id)
                continue
            if customer_id in seen or len(ids) >= BATCH_ROWS:
                yield self._take(lines, rows, ids, read - 1)
                lines, rows, ids, seen, read = [], [], [], set(), 1
            lines.append(record.line)
            rows.append(cells)
            ids.append(customer_id)
            seen.add(customer_id)
        yield self._take(lines, rows, ids, read)

    def _reject_id(self, line: int, customer_id: str) -> None:
        reason = "empty id" if not customer_id else "id longer than 64 characters"
        self.problems.add(line, self.id_label, reason)
        self.rejected += 1

    def _take(self, lines: list[int], rows: list[list[str]], ids: list[str], read: int) -> _CustomerBatch:
        columns = list(zip(*rows))
        values, fragments, careful = self._convert(lines, rows, ids, columns) if ids else ({}, None, {})
        extras = [columns[index] for _, index in self.job.layout.extras] if ids else []
        batch = _CustomerBatch(ids, values, fragments, careful, extras, self.problems.release(),
                               read, self.rejected)
        self.rejected = 0
        return batch

    def _convert(
        self, lines: list[int], rows: list[list[str]], ids: list[str], columns: list[tuple[str, ...]]
    ) -> tuple[dict[str, list[Any]], list[str] | None, dict[int, dict[str, Any]]]:
        bad: set[int] = set()
        values: dict[str, list[Any]] = {"id": ids}
        for name, index, limit in self.texts:
            values[name] = _text_values(columns[index], limit, bad)
        for name, index, column in self.parsers:
            values[name] = column.values(columns[index], bad)
        fragments = None
        if self.extras:
            pieces = [column.values(columns[index], bad) for _, index, column in self.extras]
            fragments = list(map("".join, zip(*pieces))) if not bad else [
                "" if index in bad else "".join(row)  # type: ignore[arg-type]
                for index, row in enumerate(zip(*pieces))
            ]
        careful: dict[int, dict[str, Any]] = {}
        for index in sorted(bad):
            careful[index] = self._careful(lines[index], rows[index], values, index)
        if self.has_birthday:
            values["birthday"], values["birth_month"], values["birth_day"] = (
                list(part) for part in zip(*values["birthday"])
            )
        count = len(ids)
        guesses = self.places.guesses(*(values.get(name) or [None] * count
                                        for name in ("timezone", "city", "phone")))
        values["zones"] = [guess.text or None for guess in guesses]
        values["zone_source"] = [guess.source for guess in guesses]
        return values, fragments, careful

    def _careful(self, line: int, cells: list[str], values: dict[str, list[Any]],
                 at: int) -> dict[str, Any]:
        """The row again, one value at a time, reporting each bad one (rare: the slow path); its
        values replace the batch's at `at`.  Returns its custom attributes."""
        for name, index, parse, fallback, label in self.fields:
            try:
                value = parse(cells[index])
            except Kept as kept:
                value = kept.value
                self.problems.add(line, label, str(kept), rejected=False)
            except ValueError as error:
                value = fallback
                self.problems.add(line, label, str(error), rejected=False)
            if name == "birthday":
                value = (self.date_value(value[0]), value[1], value[2])
            values[name][at] = value
        attrs: dict[str, Any] = {}
        for name, index in self.job.layout.extras:
            value, cut = typed_attribute(cells[index], ATTRIBUTE_LIMIT)
            if cut:
                self.problems.add(line, name, f"longer than {ATTRIBUTE_LIMIT} characters: cut",
                                  rejected=False)
            attrs[name] = value
        return attrs


class _CustomerStore:
    """The database side: one write transaction per batch, on the caller's engine.  What needs
    the stored customer is done here: zones from columns the file lacks, attributes merged into
    the stored ones, and the count of inserted and updated rows."""

    def __init__(self, engine: Engine, settings: Settings, layout: Layout, report: ImportReport,
                 transactions: _Transactions) -> None:
        self.engine = engine
        self.transactions = transactions
        self.layout = layout
        self.report = report
        self.zones = ZoneResolver(settings.cities)
        present = set(layout.columns)
        self.zone_inputs_missing = not {"timezone", "city", "phone"} <= present
        self.registered = False
        self.writer = _BatchWriter(engine, self._statement(present))
        self.keys = ["id", *(name for name in layout.columns if name != "id")]
        if "birthday" in present:
            self.keys += ["birth_month", "birth_day"]
        self.keys += ["zones", "zone_source", "created_at", "updated_at"]
        if layout.extras:
            self.keys.append("attrs")

    def _statement(self, present: set[str]) -> Any:
        table = schema.customers
        stmt = _dialect_insert(self.engine, table)
        updated = [name for name in present if name != "id"]
        if "birthday" in present:
            updated += ["birth_month", "birth_day"]
        updated += ["zones", "zone_source", "updated_at"]
        if self.layout.extras:
            updated.append("attrs")
        set_: dict[str, Any] = {name: stmt.excluded[name] for name in updated}
        if "phone" in present:
            set_["phone_invalid"] = sa.case(
                (table.c.phone.is_not_distinct_from(stmt.excluded.phone), table.c.phone_invalid),
                else_=sa.false(),
            )
        return stmt.on_conflict_do_update(index_elements=[table.c.id], set_=set_)

    def store(self, batch: _CustomerBatch) -> None:
        report = self.report
        report.rows_read += batch.rows_read
        report.rejected += batch.rejected
        if batch.ids:
            self._write(batch)
        for line, column, reason, rejected in batch.problems:
            report.add(line, column, reason, rejected=rejected)

    def _write(self, batch: _CustomerBatch) -> None:
        ids, values = batch.ids, batch.values
        table = schema.customers
        wanted = [table.c.id]
        if self.zone_inputs_missing:
            wanted += [table.c.timezone, table.c.city, table.c.phone]
        if self.layout.extras:
            wanted.append(table.c.attrs)
        now = int(time.time())
        conn = self.transactions.connection()
        if not self.registered and self.layout.extras:
            self._register(conn)
        existing = {row[0]: row for row in _existing(conn, wanted, table.c.id, ids)}
        olds = [existing.get(customer_id) for customer_id in ids] if existing else None
        if self.zone_inputs_missing and olds is not None:
            self._restore_zones(values, olds)
        values["created_at"] = values["updated_at"] = [now] * len(ids)
        if self.layout.extras:
            values["attrs"] = self._attrs(batch, olds)
        self.writer.write_columns(conn, self.keys, values)
        self.transactions.written(len(ids))
        self.report.updated += len(existing)
        self.report.inserted += len(ids) - len(existing)

    def _register(self, conn: sa.Connection) -> None:
        stmt = _dialect_insert(self.engine, schema.custom_attributes).on_conflict_do_nothing()
        conn.execute(stmt, [{"name": name} for name, _ in self.layout.extras])
        self.registered = True

    def _restore_zones(self, values: dict[str, list[Any]], olds: list[Any]) -> None:
        """A stored customer's zones, where the file lacks a column they come from, are guessed
        with the stored value of that column."""
        for index, old in enumerate(olds):
            if old is not None:
                stored = dict(zip(("timezone", "city", "phone"), old[1:4]))
                guess = self.zones.guess(*(
                    values[name][index] if name in values else stored[name]
                    for name in ("timezone", "city", "phone")
                ))
                values["zones"][index] = guess.text or None
                values["zone_source"][index] = guess.source

    def _attrs(self, batch: _CustomerBatch, olds: list[Any] | None) -> list[Any]:
        """The attrs column: a new customer's from the fragments (SQLite), any other merged into
        the stored attributes (an empty cell removes one)."""
        assert batch.fragments is not None
        sqlite = self.writer.sqlite
        texts: list[Any] = (["{" + text[1:] + "}" for text in batch.fragments] if sqlite
                            else [None] * len(batch.ids))
        names = [name for name, _ in self.layout.extras]
        for index in range(len(batch.ids)):
            old = olds[index] if olds is not None else None
            if old is None and sqlite and index not in batch.careful:
                continue
            attrs = batch.careful.get(index)
            if attrs is None:
                attrs = {name: typed_attribute(cells[index], ATTRIBUTE_LIMIT)[0]
                         for name, cells in zip(names, batch.extras)}
            texts[index] = self.writer.json_value(_merged(attrs, old))
        return texts


def _merged(attrs: dict[str, Any], old: Any) -> dict[str, Any]:
    """The file's attributes over the stored ones (`old[-1]`); None removes an attribute."""
    if old is None:
        return {name: value for name, value in attrs.items() if value is not None}
    stored_attrs = old[-1]
    if isinstance(stored_attrs, str):
        stored_attrs = json.loads(stored_attrs)
    merged = dict(stored_attrs) if isinstance(stored_attrs, dict) else {}
    for name, value in attrs.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


# --- the parse process -----------------------------------------------------------------------

# A file this large is parsed in a worker process while this one writes (two cores: parsing and
# writing each take about half of a batch's time).  Below it the worker's start-up (a fresh
# interpreter importing the parsers: ~0.5 s) would cost more than it saves.
WORKER_MIN_BYTES = 16 * 1024 * 1024
_FRAME = struct.Struct("<Q")


def _worker_wanted(path: Path) -> bool:
    try:
        size = Path(path).stat().st_size
    except OSError:
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return size >= WORKER_MIN_BYTES and (cores or 1) > 1


def _send(stream: BinaryIO, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: BinaryIO) -> Any:
    """The next message; EOFError when the other side is gone."""
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise EOFError
    (size,) = _FRAME.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


class _ParseWorker:
    """A child interpreter running `_CustomerRows.batches` and sending each batch back through a
    pipe (pickled: the pipe joins two processes of this same program and nothing else).  A full
    pipe blocks the child, so at most about one batch is in flight and memory stays bounded.

    The child is a fresh `python -c` rather than a multiprocessing process: it imports only the
    importer, never the caller's main module.  It is started before the file is checked, so its
    start-up overlaps the check; it gets the job only once the check passed, and leaves without
    one otherwise.  Every database access stays in this process, on the caller's engine."""

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [root, *filter(None, [os.environ.get("PYTHONPATH")])]))
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from orchestrator.importer import _parse_in_worker; "
                 f"_parse_in_worker({write_fd})"],
                stdin=subprocess.PIPE, pass_fds=(write_fd,), env=env,
            )
        finally:
            os.close(write_fd)
        self.results = os.fdopen(read_fd, "rb")

    def batches(self, job: _CustomerJob,
                progress: Callable[[int, int], None] | None) -> Iterator[_CustomerBatch]:
        assert self.process.stdin is not None
        _send(self.process.stdin, job)  # type: ignore[arg-type]
        self.process.stdin.close()
        while True:
            try:
                kind, payload = _receive(self.results)
            except EOFError:
                code = self.process.wait()
                raise RuntimeError(
                    f"the import's parse process ended unexpectedly (exit code {code})"
                ) from None
            if kind == "batch":
                yield payload
            elif kind == "progress":
                if progress is not None:
                    progress(*payload)
            elif kind == "error":
                raise payload
            else:
                return

    def close(self) -> None:
        """Wait for the child (it ends once its job is sent, or at once without one)."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        self.results.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _parse_in_worker(fd: int) -> None:
    """The parse process: one job from stdin, its batches to `fd`, then ("end", None)."""
    tune_for_bulk_work()
    results = os.fdopen(fd, "wb")
    try:
        _serve(results)
    except (BrokenPipeError, KeyboardInterrupt):
        pass  # the importing process stopped (an error, Ctrl-C): no one is left to tell
    finally:
        try:
            results.close()
        except BrokenPipeError:
            pass


def _serve(results: BinaryIO) -> None:
    try:
        job = _receive(sys.stdin.buffer)
    except EOFError:
        return  # the file was refused before the job was sent
    try:
        rows = _CustomerRows(job)
        for batch in rows.batches(lambda done, total: _send(results, ("progress", (done, total)))):
            _send(results, ("batch", batch))
    except (BrokenPipeError, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 - handed to the caller, which raises it
        try:
            _send(results, ("error", error))
        except (pickle.PicklingError, TypeError, AttributeError):
            _send(results, ("error", RuntimeError(f"{type(error).__name__}: {error}")))
        return
    _send(results, ("end", None))


def _start_worker(path: Path) -> _ParseWorker | None:
    """A parse process for a large file, or None to parse here (small file, one core, or no
    interpreter to start)."""
    if not _worker_wanted(path):
        return None
    try:
        return _ParseWorker()
    except OSError:
        return None


def import_customers(
    engine: Engine,
    path: Path,
    settings: Settings,
    *,
    encoding: str | None = None,
    delimiter: str | None = None,
    column_map: Mapping[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    worker = _start_worker(path)
    try:
        source = _open(path, encoding, delimiter)
        report = ImportReport("customers", file=str(path))
        layout = build_layout(
            source.header, known=CUSTOMER_COLUMNS, required=("id",),
            settings_map=settings.import_settings.customers.columns, column_map=column_map,
            extras_allowed=True, path=source.path, report=report,
        )
        job = _CustomerJob(source, layout, settings.general.country, dict(settings.cities),
                           is_sqlite(engine))
        with bulk_work(), _Transactions(engine) as transactions:
            store = _CustomerStore(engine, settings, layout, report, transactions)
            batches = (worker.batches(job, progress) if worker is not None
                       else _CustomerRows(job).batches(progress))
            for batch in batches:
                store.store(batch)
    finally:
        if worker is not None:
            worker.close()
    report.problems.sort(key=lambda problem: problem.line)
    if report.rows_read:
        refresh_statistics(engine, "customers")
    return report


# --- purchases -------------------------------------------------------------------------------


def purchase_key(customer_id: str, day: date, amount: float, category: str | None) -> str:
    """The identity of a purchase without an id in the export: same facts, same key."""
    text = f"{customer_id}\x1f{day.isoformat()}\x1f{amount!r}\x1f{category or ''}"
    return "sha:" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


PURCHASE_KEYS = ["key", "customer_id", "date", "day", "month", "amount", "category"]
_SIMPLE_AMOUNT = re.compile(r"\+?\d+(?:[.,]\d+)?")


class _PurchaseImport:
    """Row by row: the common row takes a short path (cells checked inline, dates remembered);
    anything else, and every row with a problem, the careful one that reports it."""

    def __init__(self, engine: Engine, layout: Layout, report: ImportReport, has_nul: bool,
                 transactions: _Transactions) -> None:
        self.engine = engine
        self.transactions = transactions
        self.has_nul = has_nul
        self.layout = layout
        self.report = report
        columns = layout.columns
        self.customer_index = columns["customer_id"]
        self.date_index = columns["date"]
        self.amount_index = columns["amount"]
        self.category_index = columns.get("category")
        self.id_index = columns.get("id")
        self.labels = layout.labels
        self.batch: list[tuple[Any, ...]] = []  # (line, *PURCHASE_KEYS values)
        self.days: dict[str, tuple[Any, int, int]] = {}  # date cell → (driver value, day, month)
        self.writer = _BatchWriter(
            engine,
            _dialect_insert(engine, schema.purchases).on_conflict_do_nothing(
                index_elements=[schema.purchases.c.key]
            ),
        )

    def add(self, record: Record) -> None:
        cells = record.cells
        if len(cells) == self.layout.width and not self.has_nul:
            row = self._common(cells)
            if row is not None:
                self.batch.append((record.line, *row))
                if len(self.batch) >= BATCH_ROWS:
                    self.flush()
                return
        self._careful(record)

    def _common(self, cells: list[str]) -> tuple[Any, ...] | None:
        """The row when every cell has its everyday shape, else None (the careful path decides)."""
        customer_id = cells[self.customer_index].strip()
        if not customer_id or len(customer_id) > 64:
            return None
        day = self._day(cells[self.date_index])
        amount_text = cells[self.amount_index]
        if day is None or not _SIMPLE_AMOUNT.fullmatch(amount_text):
            return None
        amount = float(amount_text.replace(",", "."))
        category = None
        if self.category_index is not None:
            category = cells[self.category_index].strip() or None
            if category and len(category) > 200:
                return None
        external = cells[self.id_index].strip() if self.id_index is not None else ""
        if len(external) > 120:
            return None
        key = external or purchase_key(customer_id, day[0], amount, category)
        return key, customer_id, day[1], day[2], day[3], amount, category

    def _day(self, text: str) -> tuple[date, Any, int, int] | None:
        """(date, driver value, days since 1970, month) of a date cell; None when it is not one."""
        facts = self.days.get(text)
        if facts is None:
            try:
                day = parse_date(text)
            except ValueError:
                return None
            if len(self.days) >= MEMO_LIMIT:
                self.days.clear()
            facts = self.days[text] = (day, self.writer.date_value(day), day.toordinal() - EPOCH,
                                       day.month)
        return facts

    def _careful(self, record: Record) -> None:
        report = self.report
        if _row_problem(record, self.layout.width, report, self.has_nul):
            report.rejected += 1
            return
        cells = record.cells
        problems: list[tuple[str, str]] = []
        customer_id = cells[self.customer_index].strip()
        if not customer_id:
            problems.append(("customer_id", "empty"))
        elif len(customer_id) > 64:
            problems.append(("customer_id", "longer than 64 characters"))
        day = amount = None
        text = cells[self.date_index]
        if not text.strip():
            problems.append(("date", "empty"))
        else:
            try:
                day = parse_date(text)
            except ValueError as error:
                problems.append(("date", str(error)))
        text = cells[self.amount_index]
        if not text.strip():
            problems.append(("amount", "empty"))
        else:
            try:
                amount = parse_decimal(text)
                if amount < 0:
                    problems.append(("amount", "negative: a refund is not a purchase"))
            except ValueError as error:
                problems.append(("amount", str(error)))
        category = None
        if self.category_index is not None:
            category = cells[self.category_index].strip() or None
            if category and len(category) > 200:
                report.add(record.line, self.labels["category"], "longer than 200 characters: cut",
                           rejected=False)
                category = category[:200]
        external = cells[self.id_index].strip() if self.id_index is not None else ""
        if len(external) > 120:
            problems.append(("id", "longer than 120 characters"))
        if problems:
            for column, reason in problems:
                report.add(record.line, self.labels[column], reason)
            report.rejected += 1
            return
        assert day is not None and amount is not None
        key = external or purchase_key(customer_id, day, amount, category)
        self.batch.append((
            record.line, key, customer_id, self.writer.date_value(day), day.toordinal() - EPOCH,
            day.month, amount, category,
        ))
        if len(self.batch) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        customers = schema.customers
        customer_ids = {row[2] for row in batch}
        conn = self.transactions.connection()
        known = {row[0] for row in _existing(conn, [customers.c.id], customers.c.id, customer_ids)}
        fresh = []
        for row in batch:
            if row[2] not in known:
                self.report.add(row[0], self.labels["customer_id"], "no such customer")
                self.report.rejected += 1
            else:
                fresh.append(row[1:])
        if self.writer.sqlite:
            inserted = self.writer.write_tuples(conn, PURCHASE_KEYS, fresh)
        else:
            inserted = self._write_new(conn, fresh)
        self.transactions.written(len(fresh))
        self.report.duplicates += len(fresh) - inserted
        self.report.inserted += inserted

    def _write_new(self, conn: sa.Connection, rows: list[tuple[Any, ...]]) -> int:
        """The rows whose key is neither stored nor earlier in the batch (PostgreSQL: its driver's
        row count of an executemany is not to be relied on, so the keys are looked up)."""
        purchases = schema.purchases
        keys = {row[0] for row in rows}
        seen = {row[0] for row in _existing(conn, [purchases.c.key], purchases.c.key, keys)}
        fresh = []
        for row in rows:
            if row[0] not in seen:
                seen.add(row[0])
                fresh.append(row)
        self.writer.write_tuples(conn, PURCHASE_KEYS, fresh)
        return len(fresh)


def import_purchases(
    engine: Engine,
    path: Path,
    settings: Settings,
    *,
    encoding: str | None = None,
    delimiter: str | None = None,
    column_map: Mapping[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Purchases, then the derived customer fields (orchestrator.derived) when anything was new."""
    source = _open(path, encoding, delimiter)
    report = ImportReport("purchases", file=str(path))
    layout = build_layout(
        source.header, known=PURCHASE_COLUMNS, required=("customer_id", "date", "amount"),
        settings_map=settings.import_settings.purchases.columns, column_map=column_map,
        extras_allowed=False, path=source.path, report=report,
    )
    with bulk_work(), _Transactions(engine) as transactions:
        job = _PurchaseImport(engine, layout, report, source.has_nul, transactions)
        for record in records(source, progress):
            report.rows_read += 1
            job.add(record)
        job.flush()
    report.problems.sort(key=lambda problem: problem.line)
    if report.inserted:
        _refresh_stats(engine, settings)
    return report


def _refresh_stats(engine: Engine, settings: Settings) -> None:
    try:
        from orchestrator.derived import refresh_stats
    except ModuleNotFoundError as error:
        if error.name != "orchestrator.derived":
            raise
        return
    refresh_stats(engine, settings)
    refresh_statistics(engine, "purchases", "customer_stats", "customers")
