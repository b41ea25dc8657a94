"""CSV import of customers and purchases (SPEC 3), on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings as hsettings, strategies as st

from orchestrator import importer
from orchestrator.csvreader import detect_delimiter, detect_encoding
from orchestrator.errors import ImportFileError
from orchestrator.importer import import_customers, import_purchases
from orchestrator.normalize import PhoneNormalizer, _email_fast, normalize_email, parse_decimal
from orchestrator.settings import Settings, SettingsModel, load_settings
from orchestrator.storage import schema
from orchestrator.storage.engine import connect

DATA = Path(__file__).parent / "data"


@pytest.fixture
def settings() -> Settings:
    return Settings(SettingsModel(), None)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> sa.Engine:
    engine = connect(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield engine
    engine.dispose()


def write(folder: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = folder / name
    path.write_bytes(text.encode(encoding))
    return path


def customers(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {row.id: row for row in conn.execute(sa.select(schema.customers))}


def count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


CUSTOMERS = (
    "id;name;first_name;email;phone;city;birthday;bonus_balance;discount_percent;"
    "consent_email;consent_sms;consent_phone;phone_cap_days;level;first_order;vip;spent\n"
    "1;Иванов Иван;Иван;Ivan.Petrov@Example.RU;8 (912) 345-67-89;г. Екатеринбург;29.02.2000;"
    "1 234,50;7;да;YES;0;14;gold;22.11.2020;нет;1 500,25\n"
    "2;Петрова Анна;Анна;;+7 495 123-45-67;;1990-05-01;;;нет;;true;;;;;\n"
)


# --- customers -------------------------------------------------------------------------------


def test_customers_import_with_russian_formats(engine: sa.Engine, settings: Settings, tmp_path: Path) -> None:
    report = import_customers(engine, write(tmp_path, "c.csv", CUSTOMERS), settings)
    assert (report.rows_read, report.inserted, report.updated, report.rejected) == (2, 2, 0, 0)
    assert report.exit_code == 0 and report.problems == []
    rows = customers(engine)
    ivan = rows["1"]
    assert ivan.phone == "+79123456789"
    assert ivan.email == "Ivan.Petrov@example.ru"
    assert ivan.birthday == date(2000, 2, 29) and (ivan.birth_month, ivan.birth_day) == (2, 29)
    assert ivan.bonus_balance == 1234.5 and ivan.discount_percent == 7
    assert (ivan.consent_email, ivan.consent_sms, ivan.consent_phone) == (True, True, False)
    assert ivan.phone_cap_days == 14
    assert ivan.zones == "Asia/Yekaterinburg" and ivan.zone_source == "city"
    assert ivan.attrs == {"level": "gold", "first_order": "2020-11-22", "vip": False, "spent": 1500.25}
    anna = rows["2"]
    assert anna.phone == "+74951234567" and anna.email is None
    assert (anna.consent_email, anna.consent_sms, anna.consent_phone) == (False, False, True)
    assert anna.zones == "Europe/Moscow" and anna.zone_source == "phone"
    assert anna.attrs == {}
    with engine.connect() as conn:
        names = set(conn.scalars(sa.select(schema.custom_attributes.c.name)))
    assert names == {"level", "first_order", "vip", "spent"}
    assert report.to_dict()["inserted"] == 2


def test_cp1251_file_with_cyrillic_names(engine: sa.Engine, settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", "id;name;city\n1;Щукин Ёжик;Омск\n", encoding="cp1251")
    report = import_customers(engine, path, settings)
    assert report.inserted == 1
    row = customers(engine)["1"]
    assert row.name == "Щукин Ёжик" and row.zones == "Asia/Omsk"


def test_shipped_fixtures_in_windows_1251_and_utf8_with_bom(sqlite_engine: sa.Engine, settings: Settings) -> None:
    for name in ("customers_cp1251.csv", "customers_bom.csv"):
        report = import_customers(sqlite_engine, DATA / name, settings)
        assert report.exit_code == 0, report.problems
    rows = customers(sqlite_engine)
    assert rows["w1"].name == "Ёлкина Татьяна" and rows["w1"].phone == "+79123456780"
    assert rows["b1"].name == "Жуков Пётр" and rows["b1"].city == "Казань"


def test_utf8_is_never_taken_for_cp1251() -> None:
    sample = "id;name\n1;Пётр Щукин — «ёлка»\n".encode()
    assert detect_encoding(sample, Path("x.csv")) == "utf-8"
    assert detect_encoding(b"\xef\xbb\xbf" + sample, Path("x.csv")) == "utf-8-sig"
    assert detect_encoding("id;name\n1;Пётр\n".encode("cp1251"), Path("x.csv")) == "cp1251"


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_delimiters_are_detected(sqlite_engine: sa.Engine, settings: Settings, tmp_path: Path,
                                 delimiter: str) -> None:
    text = delimiter.join(["id", "name", "bonus_balance"]) + "\n" + delimiter.join(
        ["7", "Ольга", '"1 000,5"']) + "\n"
    assert detect_delimiter(text.splitlines()[0]) == delimiter
    import_customers(sqlite_engine, write(tmp_path, "c.csv", text), settings)
    assert customers(sqlite_engine)["7"].bonus_balance == 1000.5


def test_given_encoding_and_delimiter_win(sqlite_engine: sa.Engine, settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", "id|name\n1|Пётр\n", encoding="cp1251")
    import_customers(sqlite_engine, path, settings, encoding="windows-1251", delimiter="|")
    assert customers(sqlite_engine)["1"].name == "Пётр"


@pytest.mark.parametrize(
    "raw, e164",
    [
        ("8 (912) 345-67-89", "+79123456789"),
        ("+7 912 345 67 89", "+79123456789"),
        ("79123456789", "+79123456789"),
        ("9123456789", "+79123456789"),
        ("8-343-212-34-56", "+73432123456"),
        ("+375 29 123-45-67", "+375291234567"),
        ("8 800 555-35-35", "+78005553535"),
    ],
)
def test_phone_normalization(raw: str, e164: str) -> None:
    assert PhoneNormalizer("RU")(raw) == e164


def test_invalid_email_and_phone_keep_the_customer(engine: sa.Engine, settings: Settings, tmp_path: Path) -> None:
    text = "id,name,email,phone,timezone\n1,Иван,ivan@@mail,12-34,Mars/Base\n"
    report = import_customers(engine, write(tmp_path, "c.csv", text), settings)
    assert (report.inserted, report.rejected, report.exit_code) == (1, 0, 0)
    assert [(p.line, p.column, p.rejected) for p in report.problems] == [
        (2, "email", False), (2, "phone", False), (2, "timezone", False)]
    row = customers(engine)["1"]
    assert row.name == "Иван" and row.email is None and row.phone is None and row.timezone is None


def test_reimport_upserts_and_keeps_unsubscribes(engine: sa.Engine, settings: Settings, tmp_path: Path) -> None:
    first = write(tmp_path, "a.csv", "id;name;phone;level\n1;Иван;89123456789;gold\n2;Анна;;silver\n")
    import_customers(engine, first, settings)
    with engine.begin() as conn:
        conn.execute(schema.customers.update().values(unsubscribed_sms=1700000000, phone_invalid=True))
    second = write(tmp_path, "b.csv",
                   "id;name;phone;level\n1;Иван Петрович;89123456789;\n2;Анна;89001112233;silver\n3;Олег;;\n")
    report = import_customers(engine, second, settings)
    assert (report.inserted, report.updated, report.rejected) == (1, 2, 0)
    rows = customers(engine)
    assert rows["1"].name == "Иван Петрович"
    assert rows["1"].unsubscribed_sms == 1700000000 and rows["2"].unsubscribed_sms == 1700000000
    assert rows["1"].phone_invalid is True  # the same number: the gateway's verdict stands
    assert rows["2"].phone_invalid is False  # a new number is not known to be invalid
    assert rows["1"].attrs == {} and rows["2"].attrs == {"level": "silver"}
    assert rows["3"].unsubscribed_sms is None


def test_reimport_of_some_columns_leaves_the_others(sqlite_engine: sa.Engine, settings: Settings,
                                                    tmp_path: Path) -> None:
    import_customers(sqlite_engine, write(tmp_path, "a.csv", "id;name;city;level\n1;Иван;Омск;gold\n"), settings)
    import_customers(sqlite_engine, write(tmp_path, "b.csv", "id;bonus_balance;region\n1;50;Сибирь\n"), settings)
    row = customers(sqlite_engine)["1"]
    assert (row.name, row.city, row.bonus_balance) == ("Иван", "Омск", 50)
    assert row.zones == "Asia/Omsk" and row.zone_source == "city"
    assert row.attrs == {"level": "gold", "region": "Сибирь"}


def test_rejected_rows_name_their_physical_lines(engine: sa.Engine, settings: Settings, tmp_path: Path) -> None:
    text = (
        "id,name,email\n"
        '1,"Иван\nс переносом ""в кавычках""",a@b.ru\n'
        ",без id,\n"
        "3,Анна\n"
        "4,Олег,o@b.ru\n"
    )
    path = write(tmp_path, "c.csv", text)
    report = import_customers(engine, path, settings)
    assert (report.rows_read, report.inserted, report.rejected, report.exit_code) == (4, 2, 2, 3)
    assert [(p.line, p.column) for p in report.problems] == [(4, "id"), (5, "")]
    assert str(report.problems[0]) == "line 4: id: empty id"
    assert customers(engine)["1"].name == 'Иван\nс переносом "в кавычках"'
    errors = tmp_path / "errors.csv"
    report.write_errors_csv(errors)
    with errors.open(encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["line", "column", "reason", "action"]
    assert rows[1][:2] == ["4", "id"] and rows[1][3] == "row rejected"


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "file not found"),
        ("", "the file is empty"),
        ("name;email\nИван;a@b.ru\n", "no id column"),
        ("id;name;ID\n1;a;2\n", "two columns mean"),
        ("Код;id\n1;2\n", "two columns mean"),
    ],
)
def test_unusable_files_raise_before_writing(engine: sa.Engine, settings: Settings, tmp_path: Path,
                                             text: str | None, message: str) -> None:
    path = tmp_path / "bad.csv"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    custom = load_settings(write(tmp_path, "s.toml", '[import.customers.columns]\n"Код" = "id"\n'), environ={})
    with pytest.raises(ImportFileError) as caught:
        import_customers(engine, path, custom)
    assert message in str(caught.value) and "bad.csv" in str(caught.value)
    assert caught.value.exit_code == 2
    assert count(engine, schema.customers) == 0


def test_undecodable_bytes_late_in_the_file_write_nothing(sqlite_engine: sa.Engine, settings: Settings,
                                                          tmp_path: Path) -> None:
    good = "".join(f"{n};Имя {n}\n" for n in range(20_000))
    path = tmp_path / "c.csv"
    path.write_bytes(("id;name\n" + good).encode() + b"20001;\xff\xfe\n")
    with pytest.raises(ImportFileError) as caught:
        import_customers(sqlite_engine, path, settings)
    assert caught.value.line == 20_002 and "utf-8" in str(caught.value)
    assert count(sqlite_engine, schema.customers) == 0


def test_bytes_that_are_neither_utf8_nor_cp1251(sqlite_engine: sa.Engine, settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(b"id;name\n1;\x80\x81\x83\x8a\x8c\x8d\x8e\x8f\n")
    with pytest.raises(ImportFileError, match="neither UTF-8 nor Windows-1251"):
        import_customers(sqlite_engine, path, settings)


def test_hostile_values_import_or_are_rejected_cleanly(engine: sa.Engine, settings: Settings,
                                                       tmp_path: Path) -> None:
    long_name = "Я" * 10_000
    text = (
        "id;name;manager;note\n"
        f"1;{long_name};m;{'x' * 5000}\n"
        '2;"Robert\'); DROP TABLE customers;--  😀 ""Бобби""";m;ok\n'
        "3;Nul\x00Byte;m;x\n"
        f"{'9' * 100};too long id;m;x\n"
        f"5;Олег;{'m' * 100};x\n"
    )
    report = import_customers(engine, write(tmp_path, "c.csv", text), settings)
    assert (report.inserted, report.rejected) == (3, 2)
    rows = customers(engine)
    assert rows["1"].name == "Я" * 500 and len(rows["1"].attrs["note"]) == 1000
    assert rows["2"].name == "Robert'); DROP TABLE customers;--  😀 \"Бобби\""
    assert rows["5"].manager is None
    reasons = {(p.line, p.column): p.reason for p in report.problems}
    assert "cut" in reasons[(2, "name")] and "NUL" in reasons[(4, "")]
    assert "longer than 64" in reasons[(5, "id")] and "longer than 64" in reasons[(6, "manager")]


def test_an_unclosed_quote_is_reported_not_a_traceback(sqlite_engine: sa.Engine, settings: Settings,
                                                       tmp_path: Path) -> None:
    text = 'id;name;city\n1;Иван;Омск\n2;"Пётр;Тула\n3;Анна;Уфа\n'
    report = import_customers(sqlite_engine, write(tmp_path, "c.csv", text), settings)
    assert report.inserted == 1 and report.rejected == 1
    assert report.problems[0].line == 3 and "unclosed quote" in report.problems[0].reason


def test_column_mapping_from_settings_and_from_the_command_line(sqlite_engine: sa.Engine, tmp_path: Path) -> None:
    custom = load_settings(write(tmp_path, "s.toml", (
        '[import.customers.columns]\n"Код" = "id"\n"Наименование" = "name"\n"Телефон" = "phone"\n'
    )), environ={})
    path = write(tmp_path, "c.csv", " КОД ;Наименование;Телефон;Город\nК-1;ООО Ромашка;8 912 345 67 89;Тюмень\n",
                 encoding="cp1251")
    report = import_customers(sqlite_engine, path, custom, column_map={"Город": "city", "Наименование": "first_name"})
    assert report.exit_code == 0
    row = customers(sqlite_engine)["К-1"]
    assert (row.first_name, row.name, row.phone, row.city) == ("ООО Ромашка", None, "+79123456789", "Тюмень")
    assert row.zones == "Asia/Yekaterinburg"


def test_reserved_attribute_names_and_unknown_map_keys_are_reported(sqlite_engine: sa.Engine,
                                                                    settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", "id;sleep_score;level\n1;5;A\n")
    report = import_customers(sqlite_engine, path, settings, column_map={"Нет такой": "city"})
    assert report.exit_code == 0
    assert {p.column for p in report.problems} == {"sleep_score", "Нет такой"}
    assert customers(sqlite_engine)["1"].attrs == {"level": "A"}


def test_problems_beyond_the_limit_are_counted(sqlite_engine: sa.Engine, settings: Settings, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importer, "MAX_PROBLEMS", 3)
    text = "id;name\n" + "".join(";x\n" for _ in range(10))
    report = import_customers(sqlite_engine, write(tmp_path, "c.csv", text), settings)
    assert report.rejected == 10 and len(report.problems) == 3 and report.problems_omitted == 7


def test_progress_reaches_the_file_size(sqlite_engine: sa.Engine, settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", "id;name\n" + "".join(f"{n};x\n" for n in range(10_000)))
    calls: list[tuple[int, int]] = []
    import_customers(sqlite_engine, path, settings, progress=lambda done, total: calls.append((done, total)))
    assert len(calls) > 1 and calls[-1] == (path.stat().st_size,) * 2
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


# --- purchases -------------------------------------------------------------------------------


def test_purchases_are_idempotent_and_check_customers(engine: sa.Engine, settings: Settings, tmp_path: Path) -> None:
    import_customers(engine, write(tmp_path, "c.csv", "id\n1\n2\n"), settings)
    text = (
        "customer_id;date;amount;category;id\n"
        "1;22.11.2026;1 234,50;мебель;\n"
        "1;2026-11-22;1234.5;мебель;\n"
        "2;01.03.2025;100;;P-7\n"
        "9;01.03.2025;100;;\n"
        "2;31.02.2025;x;;\n"
    )
    path = write(tmp_path, "p.csv", text)
    report = import_purchases(engine, path, settings)
    assert (report.rows_read, report.inserted, report.duplicates, report.rejected) == (5, 2, 1, 2)
    assert report.exit_code == 3
    assert [(p.line, p.column) for p in report.problems] == [(5, "customer_id"), (6, "date"), (6, "amount")]
    assert report.problems[0].reason == "no such customer"
    with engine.connect() as conn:
        rows = {row.key: row for row in conn.execute(sa.select(schema.purchases))}
    assert rows["P-7"].date == date(2025, 3, 1) and rows["P-7"].month == 3
    assert rows["P-7"].day == (date(2025, 3, 1) - date(1970, 1, 1)).days
    again = import_purchases(engine, path, settings)
    assert (again.inserted, again.duplicates) == (0, 3)
    assert count(engine, schema.purchases) == 2


def test_purchases_need_their_columns(sqlite_engine: sa.Engine, settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="amount"):
        import_purchases(sqlite_engine, write(tmp_path, "p.csv", "customer_id;date\n1;2026-01-01\n"), settings)


def test_1c_purchase_headers_via_settings(sqlite_engine: sa.Engine, tmp_path: Path) -> None:
    custom = load_settings(write(tmp_path, "s.toml", (
        '[import.purchases.columns]\n"Контрагент" = "customer_id"\n"Дата" = "date"\n"Сумма" = "amount"\n'
    )), environ={})
    import_customers(sqlite_engine, write(tmp_path, "c.csv", "id\nК-1\n"), custom)
    path = write(tmp_path, "p.csv", "Контрагент;Дата;Сумма;Номенклатура\nК-1;22.11.2026 0:00:00;99,9;Стул\n",
                 encoding="cp1251")
    report = import_purchases(sqlite_engine, path, custom)
    assert report.inserted == 1 and report.exit_code == 0
    assert [p.column for p in report.problems] == ["Номенклатура"]


# --- fast paths agree with the reference libraries -------------------------------------------

_separators = st.sampled_from(["", " ", "-", "(", ")", "\u00a0", "."])


@st.composite
def russian_phone_text(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(["+7", "8", "7", "", "+8", "+7 (", "8 ("]))
    digits = draw(st.text("0123456789", min_size=0, max_size=12))
    if draw(st.booleans()):
        digits = draw(st.sampled_from("9348")) + digits[1:]
    parts = [prefix]
    for digit in digits:
        parts.append(draw(_separators) if draw(st.integers(0, 3)) == 0 else "")
        parts.append(digit)
    return "".join(parts)


def _reference_phone(raw: str) -> str | None:
    try:
        number = phonenumbers.parse(raw, "RU")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@hsettings(max_examples=300, deadline=None)
@given(russian_phone_text())
def test_phone_fast_path_agrees_with_phonenumbers(raw: str) -> None:
    try:
        ours: str | None = PhoneNormalizer("RU")(raw)
    except ValueError:
        ours = None
    assert ours == _reference_phone(raw)


_local = st.text("abcXYZ019._+-!#'", min_size=0, max_size=70)
_domain = st.text("abcz09.-", min_size=0, max_size=30)
_tld = st.sampled_from(["ru", "com", "RU", "test", "local", "x", "xn--p1ai", "рф", "1", "co.uk", ""])


@hsettings(max_examples=300, deadline=None)
@given(_local, _domain, _tld)
def test_email_fast_path_agrees_with_email_validator(local: str, domain: str, tld: str) -> None:
    address = f"{local}@{domain}.{tld}"
    fast = _email_fast(address)
    try:
        reference: str | None = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        reference = None
    if fast is not None:
        assert fast == reference
    try:
        ours: str | None = normalize_email(address)
    except ValueError:
        ours = None
    assert ours == reference


@pytest.mark.parametrize("text, value", [("1 234,50", 1234.5), ("1.234,50", 1234.5), ("1,234.50", 1234.5),
                                         ("0,5", 0.5), ("-7", -7.0), ("1\u00a0000", 1000.0)])
def test_decimal_commas_and_grouping(text: str, value: float) -> None:
    assert parse_decimal(text) == value


@pytest.mark.parametrize("text", ["1.2.3", "12 34", "abc", "1e5", "nan"])
def test_not_numbers(text: str) -> None:
    with pytest.raises(ValueError):
        parse_decimal(text)


# --- the column-wise, worker and batched-transaction paths agree with the row-by-row one -------

_CUSTOMER_VALUES: dict[str, list[str]] = {
    "id": ["1", "2", "3", " 4 ", "", "x" * 65, "Код-5", "2"],
    "name": ["Иванов Иван", "", "  ", "Я" * 501, 'a "b"', "Nul\x01", "x"],
    "email": ["a@b.ru", "Ivan@Example.RU", "ivan@@mail", "", " a@b.ru ", "я@почта.рф"],
    "phone": ["8 (912) 345-67-89", "+79123456789", "12-34", "", "+375 29 123-45-67",
                              "8 800 555-35-35", "9123456789"],
    "timezone": ["", "Europe/Moscow", "asia/omsk", "Mars/Base"],
    "city": ["", "Москва", "г. Екатеринбург", "Урюпинск", "Омск" + "!" * 200],
    "birthday": ["", "29.02.2000", "2000-02-30", "22.11", "--11-22", "01.01.2100",
                                 "22.11.56", "1980-05-01"],
    "manager": ["", "m1", "m" * 65],
    "abc_group": ["A", "", "AB" * 9],
    "bonus_balance": ["", "1 234,50", "0", "abc", "-7", "1e5"],
    "discount_percent": ["", "5", "101", "7,5", "x"],
    "consent_email": ["да", "нет", "", "YES", "maybe", " 1 "],
    "consent_sms": ["1", "0", "Да", "?"],
    "phone_cap_days": ["", "14", "0", "x"],
    "level": ["", "gold", "007", "1,5", "да", "22.11.2020", "y" * 1001],
    "score": ["", "12", "12345678901234567", "нет", "-3"],
}


_CUSTOMER_CELLS = {name: st.sampled_from(values) for name, values in _CUSTOMER_VALUES.items()}


@st.composite
def customer_files(draw: st.DrawFn) -> str:
    names = ["id", *draw(st.lists(st.sampled_from(list(_CUSTOMER_CELLS)[1:]), unique=True, max_size=9))]
    lines = [";".join(names)]
    for _ in range(draw(st.integers(1, 25))):
        cells = [draw(_CUSTOMER_CELLS[name]) for name in names]
        if draw(st.integers(0, 15)) == 0:
            cells = cells[:-1] if len(cells) > 1 else cells + ["extra"]
        lines.append(";".join('"' + cell.replace('"', '""') + '"' for cell in cells))
    return "\n".join(lines) + "\n"


def _outcome(engine: sa.Engine, run: Any) -> tuple[Any, ...]:
    """The report and the stored rows, without the clock's columns."""
    report = run().to_dict()
    report["file"] = Path(report["file"]).name
    with engine.connect() as conn:
        stored = [row._asdict() for row in conn.execute(sa.select(schema.customers).order_by("id"))]
        purchases = list(conn.execute(sa.select(
            schema.purchases.c.key, schema.purchases.c.customer_id, schema.purchases.c.date,
            schema.purchases.c.day, schema.purchases.c.month, schema.purchases.c.amount,
            schema.purchases.c.category).order_by(schema.purchases.c.key)))
    for row in stored:
        del row["created_at"], row["updated_at"]
    return report, stored, purchases


def _import_twice(folder: Path, first: str, second: str, settings: Settings) -> list[tuple[Any, ...]]:
    engine = connect(f"sqlite:///{folder / 'db.sqlite'}")
    try:
        return [_outcome(engine, lambda text=text, name=name: import_customers(
                    engine, write(folder, name, text), settings))
                for name, text in (("a.csv", first), ("b.csv", second))]
    finally:
        engine.dispose()


@hsettings(max_examples=60, deadline=None)
@given(first=customer_files(), second=customer_files())
def test_column_wise_customers_agree_with_the_careful_path(first: str, second: str) -> None:
    """Every row forced through the careful path (the row-by-row import that reports each value)
    gives the same report and rows as the column-wise conversion with its memos and fragments."""
    import tempfile
    settings = Settings(SettingsModel(), None)
    with tempfile.TemporaryDirectory() as fast_dir, tempfile.TemporaryDirectory() as careful_dir:
        fast = _import_twice(Path(fast_dir), first, second, settings)
        original = importer._Column.values

        def all_careful(self: Any, cells: tuple[str, ...], bad: set[int]) -> list[object]:
            values = original(self, cells, bad)
            bad.update(range(len(cells)))
            return values

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(importer._Column, "values", all_careful)
            careful = _import_twice(Path(careful_dir), first, second, settings)
    assert fast == careful


_PURCHASE_CELLS = st.tuples(
    st.sampled_from(["1", "2", "9", "", " 1 ", "x" * 65]),
    st.sampled_from(["22.11.2026", "2026-11-22", " 01.03.2025 ", "31.02.2025", "", "22.11.26",
                     "22.11.2026 0:00:00"]),
    st.sampled_from(["100", "1 234,50", "-5", "0", "+7", "x", "", "99,9", "-0"]),
    st.sampled_from(["", "мебель", " стул ", "к" * 201]),
    st.sampled_from(["", "", "P-1", "P-2", "i" * 121]),
)


@hsettings(max_examples=60, deadline=None)
@given(rows=st.lists(_PURCHASE_CELLS, min_size=1, max_size=30))
def test_purchases_short_path_agrees_with_the_careful_path(rows: list[tuple[str, ...]]) -> None:
    import tempfile
    settings = Settings(SettingsModel(), None)
    text = "customer_id;date;amount;category;id\n" + "".join(";".join(row) + "\n" for row in rows)
    outcomes = []
    for careful in (False, True):
        with tempfile.TemporaryDirectory() as name, pytest.MonkeyPatch.context() as patch:
            folder = Path(name)
            if careful:
                patch.setattr(importer._PurchaseImport, "_common", lambda self, cells: None)
            engine = connect(f"sqlite:///{folder / 'db.sqlite'}")
            try:
                import_customers(engine, write(folder, "c.csv", "id\n1\n2\n"), settings)
                path = write(folder, "p.csv", text)
                outcomes.append([_outcome(engine, lambda: import_purchases(engine, path, settings))
                                 for _ in range(2)])
            finally:
                engine.dispose()
    assert outcomes[0] == outcomes[1]


def _mixed_customers(rows: int, seed: int) -> str:
    import random
    rng = random.Random(seed)
    names = list(_CUSTOMER_VALUES)
    lines = [";".join(names)]
    for n in range(rows):
        cells = [rng.choice(_CUSTOMER_VALUES[name]) for name in names]
        cells[0] = rng.choice([f"C{n}", f"C{rng.randrange(rows)}", "", "x" * 65])
        lines.append(";".join('"' + cell.replace('"', '""') + '"' for cell in cells))
    return "\n".join(lines) + "\n"


def test_the_parse_process_gives_the_same_import(settings: Settings, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsing in a worker process (large files) stores and reports exactly what parsing here
    does, with the same progress; the second import of each pair updates what the first stored."""
    first, second = _mixed_customers(12_000, 1), _mixed_customers(12_000, 2)
    (tmp_path / "here").mkdir()
    here = _import_twice(tmp_path / "here", first, second, settings)
    started: list[int] = []
    original = importer._ParseWorker.__init__

    def counted(self: Any) -> None:
        original(self)
        started.append(self.process.pid)

    monkeypatch.setattr(importer, "WORKER_MIN_BYTES", 0)
    monkeypatch.setattr(importer._ParseWorker, "__init__", counted)
    (tmp_path / "worker").mkdir()
    there = _import_twice(tmp_path / "worker", first, second, settings)
    assert len(started) == 2
    assert there == here
    assert here[0][0]["rejected"] > 0 and here[1][0]["updated"] > 0

    engine = connect(f"sqlite:///{tmp_path / 'worker' / 'db.sqlite'}")
    calls: list[tuple[int, int]] = []
    path = tmp_path / "worker" / "a.csv"
    import_customers(engine, path, settings, progress=lambda done, total: calls.append((done, total)))
    engine.dispose()
    assert len(calls) > 1 and calls[-1] == (path.stat().st_size,) * 2
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_past_the_problem_limit_both_ways_keep_the_same_first_problems(settings: Settings, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A file with more problems than the report keeps: the parse process and parsing here keep
    the same ones, the first in line order, and count the rest alike."""
    text = _mixed_customers(3_000, 3)
    (tmp_path / "all").mkdir()
    everything = _import_twice(tmp_path / "all", text, text, settings)[0][0]["problems"]
    monkeypatch.setattr(importer, "MAX_PROBLEMS", 40)
    (tmp_path / "here").mkdir()
    here = _import_twice(tmp_path / "here", text, text, settings)
    monkeypatch.setattr(importer, "WORKER_MIN_BYTES", 0)
    (tmp_path / "worker").mkdir()
    there = _import_twice(tmp_path / "worker", text, text, settings)
    report = here[0][0]
    assert report["problems_omitted"] > 100 and len(report["problems"]) == 40
    assert [problem["line"] for problem in everything] == sorted(problem["line"] for problem in everything)
    assert report["problems"] == everything[:40]
    assert report["problems_omitted"] == len(everything) - 40
    assert there == here


def test_an_unusable_file_with_the_parse_process_writes_nothing(sqlite_engine: sa.Engine, settings: Settings,
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importer, "WORKER_MIN_BYTES", 0)
    workers: list[Any] = []
    original = importer._ParseWorker.__init__

    def kept(self: Any) -> None:
        original(self)
        workers.append(self)

    monkeypatch.setattr(importer._ParseWorker, "__init__", kept)
    path = tmp_path / "c.csv"
    path.write_bytes(b"id;name\n" + "".join(f"{n};Имя {n}\n" for n in range(20_000)).encode() + b"7;\xff\n")
    with pytest.raises(ImportFileError) as caught:
        import_customers(sqlite_engine, path, settings)
    assert caught.value.line == 20_002 and caught.value.exit_code == 2
    assert count(sqlite_engine, schema.customers) == 0
    assert workers and workers[0].process.poll() is not None  # the worker ended with the import


def test_a_failing_write_rolls_back_its_transaction(sqlite_engine: sa.Engine, settings: Settings,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several batches share a write transaction; a failure rolls back the open one (the earlier,
    committed ones stay, as earlier batches did) and reaches the caller."""
    monkeypatch.setattr(importer, "BATCH_ROWS", 10)
    monkeypatch.setattr(importer, "TRANSACTION_ROWS", 30)
    original = importer._BatchWriter.write_columns
    writes: list[int] = []

    def failing(self: Any, conn: Any, keys: list[str], columns: dict[str, list[Any]]) -> None:
        writes.append(len(columns["id"]))
        if len(writes) == 5:
            raise RuntimeError("disk full")
        original(self, conn, keys, columns)

    monkeypatch.setattr(importer._BatchWriter, "write_columns", failing)
    path = write(tmp_path, "c.csv", "id;name\n" + "".join(f"{n};x\n" for n in range(100)))
    with pytest.raises(RuntimeError, match="disk full"):
        import_customers(sqlite_engine, path, settings)
    assert count(sqlite_engine, schema.customers) == 30


def test_records_skip_blank_rows_and_keep_physical_lines(tmp_path: Path) -> None:
    from orchestrator.csvreader import open_csv, records
    path = write(tmp_path, "c.csv", ";;\n\nid;name;city\n ; ;\n1;\"a\nb\";x\n\n;\t;\n2;b;\n ;c;\n")
    found = [(record.line, record.last_line, record.cells) for record in records(open_csv(path))]
    assert found == [(5, 6, ["1", "a\nb", "x"]), (9, 9, ["2", "b", ""]), (10, 10, [" ", "c", ""])]
