"""`orchestrator import customers|purchases FILE` (SPEC 3): CRM exports into the database.

The file is checked as a whole first (csvreader: encoding, CSV structure, header), so an unusable
file raises ImportFileError with nothing written.  Rows are then streamed and written in batches,
one write transaction per batch, so a million-row export imports in bounded memory.  A bad row is
reported (`line N: column: reason`, N the physical line where the record starts) and skipped; a bad
optional value (an invalid phone or email, an unknown time zone) is reported and dropped while the
customer is kept.

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
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from orchestrator.csvreader import CsvSource, Record, open_csv, records
from orchestrator.errors import ImportFileError
from orchestrator.gc_tuning import bulk_work
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
from orchestrator.policy.zones import ZoneResolver, canonical_zone
from orchestrator.settings import Settings
from orchestrator.storage import schema
from orchestrator.storage.engine import is_sqlite, write_transaction

BATCH_ROWS = 5_000
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


def _customer_handlers(settings: Settings) -> dict[str, tuple[Callable[[str], object], object]]:
    """column → (parse, value when the cell is bad)."""
    phone = PhoneNormalizer(settings.general.country)
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


def _row_problem(record: Record, width: int, report: ImportReport, has_nul: bool) -> bool:
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


class _CustomerImport:
    def __init__(
        self, engine: Engine, settings: Settings, layout: Layout, report: ImportReport, has_nul: bool
    ) -> None:
        self.engine = engine
        self.layout = layout
        self.report = report
        self.zones = ZoneResolver(settings.cities)
        handlers = _customer_handlers(settings)
        self.fields = [
            (name, index, *handlers[name], layout.labels[name])
            for name, index in layout.columns.items() if name != "id"
        ]
        # Plain text columns are checked inline (the common case, and a call each is measurable);
        # anything unusual sends the row to the careful path, which reports it.
        self.texts = [(name, layout.columns[name], TEXT_LIMITS[name])
                      for name in TEXT_LIMITS if name in layout.columns]
        self.parsers = [(name, index, parse) for name, index, parse, _, _ in self.fields
                        if name not in TEXT_LIMITS]
        self.id_index = layout.columns["id"]
        self.id_label = layout.labels["id"]
        present = set(layout.columns)
        self.zone_inputs_missing = not {"timezone", "city", "phone"} <= present
        self.has_birthday = "birthday" in present
        self.has_nul = has_nul
        self.batch: list[dict[str, Any]] = []
        self.batch_ids: set[str] = set()
        self.registered = False
        self.writer = _BatchWriter(engine, self._statement(present))

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

    def add(self, record: Record) -> None:
        cells = record.cells
        if len(cells) != self.layout.width or self.has_nul:
            if _row_problem(record, self.layout.width, self.report, self.has_nul):
                self.report.rejected += 1
                return
        customer_id = cells[self.id_index].strip()
        if not customer_id or len(customer_id) > 64:
            reason = "empty id" if not customer_id else "id longer than 64 characters"
            self.report.add(record.line, self.id_label, reason)
            self.report.rejected += 1
            return
        row: dict[str, Any] = {"id": customer_id}
        try:
            for name, index, limit in self.texts:
                value = cells[index].strip()
                if len(value) > limit:
                    raise ValueError(name)
                row[name] = value or None
            for name, index, parse in self.parsers:
                row[name] = parse(cells[index])
        except (ValueError, Kept):
            row = self._careful(record.line, cells, customer_id)
        if self.has_birthday:
            row["birthday"], row["birth_month"], row["birth_day"] = row["birthday"]
        if self.layout.extras:
            attrs: dict[str, Any] = {}
            for name, index in self.layout.extras:
                value, cut = typed_attribute(cells[index], ATTRIBUTE_LIMIT)
                if cut:
                    self.report.add(record.line, name,
                                    f"longer than {ATTRIBUTE_LIMIT} characters: cut", rejected=False)
                attrs[name] = value
            row["attrs"] = attrs
        if customer_id in self.batch_ids:
            self.flush()
        self.batch.append(row)
        self.batch_ids.add(customer_id)
        if len(self.batch) >= BATCH_ROWS:
            self.flush()

    def _careful(self, line: int, cells: list[str], customer_id: str) -> dict[str, Any]:
        """The row again, one value at a time, reporting each bad one (rare: the slow path)."""
        row: dict[str, Any] = {"id": customer_id}
        for name, index, parse, fallback, label in self.fields:
            try:
                value = parse(cells[index])
            except Kept as kept:
                value = kept.value
                self.report.add(line, label, str(kept), rejected=False)
            except ValueError as error:
                value = fallback
                self.report.add(line, label, str(error), rejected=False)
            row[name] = value
        return row

    def flush(self) -> None:
        if not self.batch:
            return
        batch, ids = self.batch, self.batch_ids
        self.batch, self.batch_ids = [], set()
        table = schema.customers
        wanted = [table.c.id]
        if self.zone_inputs_missing:
            wanted += [table.c.timezone, table.c.city, table.c.phone]
        if self.layout.extras:
            wanted.append(table.c.attrs)
        now = int(time.time())
        with write_transaction(self.engine) as conn:
            if not self.registered and self.layout.extras:
                self._register(conn)
            existing = {row[0]: row for row in _existing(conn, wanted, table.c.id, ids)}
            for row in batch:
                self._complete(row, existing.get(row["id"]) if existing else None, now)
            self.writer.write(conn, batch)
        self.report.updated += len(existing)
        self.report.inserted += len(batch) - len(existing)

    def _register(self, conn: sa.Connection) -> None:
        stmt = _dialect_insert(self.engine, schema.custom_attributes).on_conflict_do_nothing()
        conn.execute(stmt, [{"name": name} for name, _ in self.layout.extras])
        self.registered = True

    def _complete(self, row: dict[str, Any], old: Any, now: int) -> None:
        """What needs the stored row: zones from columns the file lacks, merged attributes."""
        if self.zone_inputs_missing and old is not None:
            stored = dict(zip(("timezone", "city", "phone"), old[1:4]))
            guess = self.zones.guess(
                row.get("timezone", stored["timezone"]), row.get("city", stored["city"]),
                row.get("phone", stored["phone"]),
            )
        else:
            guess = self.zones.guess(row.get("timezone"), row.get("city"), row.get("phone"))
        row["zones"] = guess.text or None
        row["zone_source"] = guess.source
        row["created_at"] = now
        row["updated_at"] = now
        writer = self.writer
        if self.has_birthday and row["birthday"] is not None:
            row["birthday"] = writer.date_value(row["birthday"])
        if "attrs" in row:
            attrs = row["attrs"]
            if old is None:
                merged = {name: value for name, value in attrs.items() if value is not None}
            else:
                stored_attrs = old[-1]
                if isinstance(stored_attrs, str):
                    stored_attrs = json.loads(stored_attrs)
                merged = dict(stored_attrs) if isinstance(stored_attrs, dict) else {}
                for name, value in attrs.items():
                    if value is None:
                        merged.pop(name, None)
                    else:
                        merged[name] = value
            row["attrs"] = writer.json_value(merged)


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
    source = _open(path, encoding, delimiter)
    report = ImportReport("customers", file=str(path))
    layout = build_layout(
        source.header, known=CUSTOMER_COLUMNS, required=("id",),
        settings_map=settings.import_settings.customers.columns, column_map=column_map,
        extras_allowed=True, path=source.path, report=report,
    )
    job = _CustomerImport(engine, settings, layout, report, source.has_nul)
    with bulk_work():
        for record in records(source, progress):
            report.rows_read += 1
            job.add(record)
        job.flush()
    report.problems.sort(key=lambda problem: problem.line)
    return report


# --- purchases -------------------------------------------------------------------------------


def purchase_key(customer_id: str, day: date, amount: float, category: str | None) -> str:
    """The identity of a purchase without an id in the export: same facts, same key."""
    text = f"{customer_id}\x1f{day.isoformat()}\x1f{amount!r}\x1f{category or ''}"
    return "sha:" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class _PurchaseImport:
    def __init__(self, engine: Engine, layout: Layout, report: ImportReport, has_nul: bool) -> None:
        self.engine = engine
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
        self.batch: list[tuple[int, dict[str, Any]]] = []
        self.writer = _BatchWriter(
            engine,
            _dialect_insert(engine, schema.purchases).on_conflict_do_nothing(
                index_elements=[schema.purchases.c.key]
            ),
        )

    def add(self, record: Record) -> None:
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
        ordinal = day.toordinal()
        self.batch.append((record.line, {
            "key": key, "customer_id": customer_id, "date": day, "day": ordinal - EPOCH,
            "month": day.month, "amount": amount, "category": category,
        }))
        if len(self.batch) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        purchases, customers = schema.purchases, schema.customers
        customer_ids = {row["customer_id"] for _, row in batch}
        keys = {row["key"] for _, row in batch}
        with write_transaction(self.engine) as conn:
            known = {row[0] for row in _existing(conn, [customers.c.id], customers.c.id, customer_ids)}
            seen = {row[0] for row in _existing(conn, [purchases.c.key], purchases.c.key, keys)}
            fresh = []
            for line, row in batch:
                if row["customer_id"] not in known:
                    self.report.add(line, self.labels["customer_id"], "no such customer")
                    self.report.rejected += 1
                elif row["key"] in seen:
                    self.report.duplicates += 1
                else:
                    seen.add(row["key"])
                    row["date"] = self.writer.date_value(row["date"])
                    fresh.append(row)
            self.writer.write(conn, fresh)
        self.report.inserted += len(fresh)


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
    job = _PurchaseImport(engine, layout, report, source.has_nul)
    with bulk_work():
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
