"""Hostile input for every loader (SPEC 12, issue 6): settings TOML, campaign and segment YAML,
CSV import and templates.  Whatever the bytes, the result is a correct load or an
`OrchestratorError` with exit code 2 naming the file (and a line where one exists) -- never another
exception, never a hang, and a CSV file refused with exit 2 writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, example, given, settings as hsettings, strategies as st

from orchestrator.campaigns import load_campaign
from orchestrator.errors import OrchestratorError
from orchestrator.importer import import_customers, import_purchases
from orchestrator.rendering import Renderer
from orchestrator.segments import load_segment, validate_segment
from orchestrator.settings import Settings, SettingsModel, load_settings
from orchestrator.storage import schema
from orchestrator.storage.engine import connect
from orchestrator.yamlfile import parse_yaml

REPO = Path(__file__).resolve().parent.parent
FUZZ = hsettings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
FEW = hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@contextmanager
def folder() -> Iterator[Path]:
    """A fresh folder per example (pytest's tmp_path is shared by all examples of a test)."""
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def outcome(load: Callable[[], Any], path: Path | str, *, line_expected: bool = False) -> Any:
    """Run a loader: a value, or an exit-2 OrchestratorError naming the file; anything else fails."""
    try:
        return load()
    except OrchestratorError as error:
        assert error.exit_code == 2, (type(error), str(error))
        text = str(error)
        assert error.file is not None and str(Path(path).name) in text, text
        assert "Traceback" not in text and "\n" not in text.strip(), text
        if line_expected:
            assert error.line is not None, text
        if error.line is not None:
            assert error.line >= 1 and f":{error.line}" in text, text
        return error


# --- strategies ------------------------------------------------------------------------------

BOMS = st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"])
NASTY_CHARS = st.sampled_from(
    ["\x00", "\ufeff", "\u2028", "\r", "\n", "\t", "\"", "'", "\\", "#", ":", "-", "[", "]", "{",
     "}", "&", "*", "!", "|", ">", "%", "@", "`", "=", ";", ",", "\x1b", "\ud800"[:0], "😀", "ё", "{{",
     "{%", "%}", "}}", "{#", "#}"]
)
nasty_text = st.lists(st.one_of(NASTY_CHARS, st.text(max_size=8)), max_size=40).map("".join)


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


raw_bytes = st.one_of(
    st.binary(max_size=400),
    st.builds(lambda bom, text: bom + encode(text), BOMS, nasty_text),
    st.builds(lambda text, n: encode(text) * n, st.text(min_size=1, max_size=5), st.integers(1, 20_000)),
)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    nasty_text, st.sampled_from(["", "24h", "1/30d", "21:00-09:00", "Europe/Moscow", "0 10 * * *",
                                 "sms", "promo", "10%", "yes", "no", "2026-13-45", "x" * 5000]),
)
json_like = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=20,
)


# --- settings TOML ---------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"


SECTIONS = ["general", "web", "database", "broker", "caps", "quiet_hours", "channels", "channels.sms",
            "import", "import.customers", "sleeping", "planner", "segments", "templates", "dispatch",
            "scheduler", "tasks", "tasks.managers", "cities", "nonsense"]
KEYS = ["timezone", "country", "url", "sms", "email", "email.promo", "backend", "rate", "threshold",
        "batch_size", "sql_timeout", "max_output_kb", "pump_interval", "managers", "marketers",
        "digest_time", "phone_days_off", "columns", "Москва", "unknown_key", "x y"]
toml_docs = st.lists(
    st.tuples(st.sampled_from(SECTIONS), st.lists(st.tuples(st.sampled_from(KEYS), json_like), max_size=4)),
    max_size=4,
).map(lambda tables: "".join(
    f"[{name}]\n" + "".join(f"{toml_value(k)} = {toml_value(v)}\n" for k, v in items) for name, items in tables
))


def check_settings(data: bytes, environ: dict[str, str] | None = None) -> None:
    with folder() as root:
        path = root / "settings.toml"
        path.write_bytes(data)
        result = outcome(lambda: load_settings(path, environ=environ or {}), path)
        if isinstance(result, Settings):  # a correct load is usable
            result.caps, result.quiet_hours, result.database_url


@FUZZ
@given(raw_bytes)
@example(b"a = " + b"[" * 5000 + b"]" * 5000)  # RecursionError in tomllib
@example(b"\x00\x00")
@example(b"\xef\xbb\xbf[general]\ntimezone = 'UTC'\n")
def test_settings_random_bytes(data: bytes) -> None:
    check_settings(data)


@FUZZ
@given(toml_docs)
@example('[general]\ntimezone = "Nowhere/City"\n')
@example("[[general]]\n")
def test_settings_valid_toml_wrong_types(text: str) -> None:
    check_settings(encode(text))


@FEW
@given(st.sampled_from(["general = 5\n", "[general]\n", "caps = []\n", ""]),
       st.dictionaries(st.sampled_from(["ORCHESTRATOR_GENERAL_TIMEZONE", "ORCHESTRATOR_CAPS_SMS",
                                         "ORCHESTRATOR_DISPATCH_PUMP_BATCH", "ORCHESTRATOR_CHANNELS_SMS_BACKEND"]),
                       st.one_of(nasty_text, st.just("[" * 3000)), max_size=3))
@example("general = 5\n", {"ORCHESTRATOR_GENERAL_TIMEZONE": "UTC"})  # was a TypeError
def test_settings_environment_overrides(text: str, environ: dict[str, str]) -> None:
    environ = {k: v.replace("\x00", "") for k, v in environ.items()}
    with folder() as root:
        path = root / "settings.toml"
        path.write_text(text)
        try:
            load_settings(path, environ=environ)
        except OrchestratorError as error:
            assert error.exit_code == 2 and error.file, str(error)


# --- YAML: campaigns and segments --------------------------------------------------------------


def yaml_scalar(value: Any) -> str:
    import json

    if isinstance(value, float) and value != value:
        return ".nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return ".inf" if value > 0 else "-.inf"
    return json.dumps(value, ensure_ascii=False)  # JSON is YAML


CAMPAIGN_KEYS = ["name", "description", "segment", "where", "category", "channels", "channel_mode",
                 "template", "subject", "offer", "schedule", "deliver_within", "sms_max_parts",
                 "holdout", "when_capped", "bogus"]
SEGMENT_KEYS = ["description", "where", "sql", "bogus"]
WHERE_VALUES = st.recursive(
    st.one_of(scalars, st.fixed_dictionaries({}, optional={
        "gte": scalars, "in": st.lists(scalars, max_size=3), "between": st.lists(scalars, max_size=3),
        "contains": scalars, "is_null": scalars, "bogus_op": scalars})),
    lambda inner: st.one_of(
        st.dictionaries(st.sampled_from(["all", "any", "not", "city", "bonus_balance", "birthday",
                                         "consent_sms", "days_since_last_purchase", "local_time",
                                         "x'y", "1"]), inner, max_size=3),
        st.lists(inner, max_size=3)),
    max_leaves=12,
)


def yaml_docs(keys: list[str]) -> st.SearchStrategy[str]:
    def dump(items: list[tuple[str, Any]]) -> str:
        return "".join(f"{k}: {yaml_scalar(v)}\n" for k, v in items)
    return st.lists(st.tuples(st.sampled_from(keys), st.one_of(json_like, WHERE_VALUES)), max_size=8).map(dump)


def alias_bomb(levels: int, width: int) -> str:
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


YAML_SPECIAL = st.sampled_from([
    alias_bomb(9, 9),                       # billion laughs: 9^9 values
    "a: &x [*x]\n",                         # an alias inside itself
    "a: &x {b: *x}\n",
    "[" * 3000 + "]" * 3000,                # stack depth
    "{a: " * 2000 + "1" + "}" * 2000,
    "a: !!timestamp 2026-13-45\n",          # a tag the value cannot satisfy
    "a: !!python/object/apply:os.system [ls]\n",
    "a: " + "9" * 5000 + "\n",              # int longer than Python converts
    "a: \x00\n",                            # control character refused by the reader
    "? [a, b]\n: 1\n",                      # a non-scalar key
    "a: 1\na: 2\n",                         # duplicate key
    "a: &x {b: 1}\nc: {<<: *x}\n",          # merge key
    "--- 1\n--- 2\n",                       # two documents
    "\ufeffname: x\n",
    "name: [unclosed\n",
    "\t- x\n",
])


def yaml_inputs(keys: list[str]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        raw_bytes,
        yaml_docs(keys).map(encode),
        YAML_SPECIAL.map(encode),
        st.tuples(yaml_docs(keys), YAML_SPECIAL).map(lambda pair: encode(pair[0] + pair[1])),
    )


def check_yaml_file(data: bytes, name: str, load: Callable[[Path], Any]) -> Any:
    with folder() as root:
        path = root / name
        path.write_bytes(data)
        return outcome(lambda: load(path), path)


@FUZZ
@given(yaml_inputs(CAMPAIGN_KEYS))
def test_campaign_yaml(data: bytes) -> None:
    check_yaml_file(data, "promo.yaml", load_campaign)


@FUZZ
@given(yaml_inputs(SEGMENT_KEYS))
def test_segment_yaml(data: bytes) -> None:
    def load(path: Path) -> Any:
        segment = load_segment(path)
        validate_segment(segment)  # compiling the `where` is part of loading a segment
        return segment

    check_yaml_file(data, "buyers.yaml", load)


@pytest.mark.parametrize("text", [alias_bomb(9, 9), alias_bomb(30, 2), "a: &x [*x]\n", "[" * 3000 + "]" * 3000])
def test_yaml_bombs_are_refused_quickly(text: str) -> None:
    import time

    started = time.monotonic()
    result = outcome(lambda: parse_yaml(text, file="campaigns/bomb.yaml"), "bomb.yaml")
    assert isinstance(result, OrchestratorError)
    assert time.monotonic() - started < 5


def test_yaml_errors_have_lines() -> None:
    for text, line in [("a: 1\nb: &x [*x]\n", 2), ("a: 1\nb: !!timestamp 2026-13-45\n", 2),
                       ("a: 1\n\nb: \x00\n", 3), ("a: 1\nb: " + "9" * 5000 + "\n", 2)]:
        error = outcome(lambda: parse_yaml(text, file="c.yaml"), "c.yaml", line_expected=True)
        assert isinstance(error, OrchestratorError) and error.line == line, (text[:20], str(error))


# --- CSV import ------------------------------------------------------------------------------


def count_rows(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (conn.execute(sa.select(sa.func.count()).select_from(schema.customers)).scalar_one(),
                conn.execute(sa.select(sa.func.count()).select_from(schema.purchases)).scalar_one())


SEED_CUSTOMERS = "id;name;phone\nS1;Seed One;+79123456789\nS2;Seed Two;\n"

cells = st.one_of(nasty_text, st.sampled_from(["id", "customer_id", "date", "amount", "name", "phone",
                                               "email", "1", "2026-01-31", "31.12.2026", "1 234,50",
                                               "-5", "nan", "inf", "да", "x" * 3000]))
csv_text = st.builds(
    lambda rows, sep, quote_all: "\n".join(
        sep.join(('"' + c.replace('"', '""') + '"') if quote_all else c for c in row) for row in rows),
    st.lists(st.lists(cells, min_size=0, max_size=6), min_size=0, max_size=8),
    st.sampled_from([",", ";", "\t", "|", " "]),
    st.booleans(),
)
csv_bytes = st.one_of(
    raw_bytes,
    st.builds(lambda bom, text, enc: bom + text.encode(enc, "replace"),
              BOMS, csv_text, st.sampled_from(["utf-8", "cp1251", "utf-16-le", "latin-1"])),
    st.builds(lambda text, prefix: prefix + encode(text), csv_text,
              st.sampled_from([b"id,name\n", b"customer_id;date;amount\n", b"id\n\"unclosed\n", b""])),
)


@pytest.fixture(scope="module")
def seeded() -> Iterator[tuple[sa.Engine, Settings, Path]]:
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        engine = connect(f"sqlite:///{root / 'db.sqlite'}")
        settings = Settings(SettingsModel(), None)
        seed = root / "seed.csv"
        seed.write_text(SEED_CUSTOMERS)
        import_customers(engine, seed, settings)
        yield engine, settings, root
        engine.dispose()


@FUZZ
@given(data=csv_bytes, kind=st.sampled_from(["customers", "purchases"]),
       encoding=st.sampled_from([None, None, "utf-8", "cp1251", "utf-16", "no-such-codec"]),
       delimiter=st.sampled_from([None, None, ";", "tab", "", "ab", '"']))
@example(data=b"\xef\xbb\xbf", kind="customers", encoding=None, delimiter=None)
@example(data=b"id\n1\n\"never closed\n" + b"x" * 100, kind="customers", encoding=None, delimiter=None)
@example(data=b"\xff\xfe" + "id\n1\n".encode("utf-16-le"), kind="customers", encoding=None, delimiter=None)
def test_csv_import_loads_or_refuses_without_writing(seeded, data: bytes, kind: str, encoding: str | None,
                                                       delimiter: str | None) -> None:
    engine, settings, _ = seeded
    run = import_customers if kind == "customers" else import_purchases
    with folder() as root:
        path = root / f"{kind}.csv"
        path.write_bytes(data)
        before = count_rows(engine)
        result = outcome(lambda: run(engine, path, settings, encoding=encoding, delimiter=delimiter), path)
        after = count_rows(engine)
    if isinstance(result, OrchestratorError):
        assert after == before, f"refused with exit 2 but wrote rows: {before} -> {after}"
    else:
        assert result.exit_code in (0, 3)
        assert after[0] >= before[0] and after[1] >= before[1]
        assert result.inserted <= result.rows_read and result.rejected <= result.rows_read


def test_csv_bad_row_late_in_file_writes_nothing(seeded) -> None:
    """A UTF-8 file (as its first 256 KB say) whose undecodable byte sits after 20 000 good rows
    is refused whole, at the bad line."""
    engine, settings, _ = seeded
    with folder() as root:
        path = root / "late.csv"
        good = "".join(f"L{i};Имя {i}\n" for i in range(20_000)).encode()
        path.write_bytes(b"id;name\n" + good + b"L-bad;\xff\xfe\xfd\n")
        before = count_rows(engine)
        error = outcome(lambda: import_customers(engine, path, settings), path, line_expected=True)
        assert isinstance(error, OrchestratorError) and error.line == 20_002, error
        assert count_rows(engine) == before


# --- templates -------------------------------------------------------------------------------

TEMPLATE_PIECES = st.sampled_from([
    "{{ customer.first_name }}", "{{ customer.name|upper }}", "{{ ", " }}", "{% if customer.city %}",
    "{% endif %}", "{% for i in range(10**9) %}x{% endfor %}", "{% for i in range(3) %}", "{% endfor %}",
    "{{ 'a' * 10**9 }}", "{{ customer.__class__ }}", "{{ ().__class__.__bases__ }}", "{% include 'nope' %}",
    "{% extends 'sms/t.txt.j2' %}", "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "{{ 1/0 }}",
    "{{ customer.missing }}", "{{ offer.discount|money }}", "{{ now|date('dd.MM') }}", "{% raw %}",
    "{% endraw %}", "{#", "#}", "{{ customer.bonus_balance + 'x' }}", "{% set x = x %}", "{{ x }}",
    "{{ lipsum(10**6) }}", "{% block subject %}Hi{% endblock %}", "{{ links.unsubscribe }}",
    "{% filter upper %}", "{% endfilter %}", "\x00", "\ufeff", "\n", "Привет, ",
])
template_sources = st.one_of(
    st.lists(st.one_of(TEMPLATE_PIECES, nasty_text), max_size=12).map("".join),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


def render_context() -> dict[str, Any]:
    import datetime as dt
    from zoneinfo import ZoneInfo

    return {
        "customer": {"id": "C-1", "first_name": "Анна", "name": "Анна \"Петрова\"\n<b>", "bonus_balance": 1234,
                     "city": None, "birthday": None},
        "offer": {"discount": 7},
        "campaign": {"name": "promo"},
        "links": {"unsubscribe": "https://l.example.ru/u/abc"},
        "now": dt.datetime(2026, 11, 20, 12, 0, tzinfo=ZoneInfo("Europe/Moscow")),
    }


@FUZZ
@given(source=template_sources, raw=st.one_of(st.none(), st.binary(max_size=50)),
       channel=st.sampled_from(["sms", "email", "phone", "webhook"]))
@example(source="{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", raw=None, channel="sms")
@example(source="{% for i in range(10**9) %}x{% endfor %}", raw=None, channel="sms")
@example(source="", raw=b"\xff\xfe\x00", channel="email")
def test_templates_compile_and_render_or_fail_cleanly(source: str, raw: bytes | None, channel: str) -> None:
    relative = {"sms": "sms/t.txt.j2", "phone": "phone/t.txt.j2", "webhook": "webhook/t.txt.j2",
                "email": "email/t.html.j2"}[channel]
    with folder() as root:
        path = root / "templates" / relative
        path.parent.mkdir(parents=True)
        path.write_bytes(raw if raw is not None else encode(source))
        renderer = Renderer(root / "templates", max_output_bytes=16 * 1024)

        def load() -> Any:
            renderer.check(channel, "t", subject="Hi" if channel == "email" else None)
            return renderer.render(channel, "t", render_context(), subject="Hi {{ customer.first_name }}",
                                   sms_max_parts=10)

        try:
            load()
        except OrchestratorError as error:
            assert error.exit_code == 2, str(error)
            assert "Traceback" not in str(error)
            # a compile error names the template file; render errors name it or the subject
            assert error.file is not None or error.field == "subject", str(error)


@FEW
@given(subject=st.lists(st.one_of(TEMPLATE_PIECES, nasty_text), max_size=8).map("".join))
def test_subjects_compile_and_render_or_fail_cleanly(subject: str) -> None:
    with folder() as root:
        path = root / "templates" / "email" / "t.html.j2"
        path.parent.mkdir(parents=True)
        path.write_text("<p>Hello</p>")
        renderer = Renderer(root / "templates", max_output_bytes=16 * 1024)
        try:
            renderer.check("email", "t", subject=subject)
            renderer.render("email", "t", render_context(), subject=subject)
        except OrchestratorError as error:
            assert error.exit_code == 2 and (error.file or error.field == "subject"), str(error)


# --- the real command line -------------------------------------------------------------------


def cli(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "orchestrator", "--config", str(workspace / "settings.toml"), *args],
                          capture_output=True, text=True, cwd=workspace, env=env, timeout=120)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzzcli")
    for name in ("segments", "campaigns", "templates"):
        (root / name).mkdir()
    (root / "settings.toml").write_text('[database]\nurl = "sqlite:///db.sqlite"\n')
    (root / "seed.csv").write_text(SEED_CUSTOMERS)
    assert cli(root, "import", "customers", "seed.csv").returncode == 0
    return root


CLI_CASES = [
    ("settings.toml", b"a = " + b"[" * 3000 + b"]" * 3000, ["segment", "list"]),
    ("settings.toml", b"\xff\xfe\x00garbage", ["segment", "list"]),
    ("segments/bomb.yaml", encode(alias_bomb(9, 9)), ["segment", "show", "bomb"]),
    ("segments/loop.yaml", b"description: x\nwhere: &w {all: [*w]}\n", ["segment", "show", "loop"]),
    ("segments/nul.yaml", b"description: x\x00\n", ["segment", "show", "nul"]),
    ("campaigns/deep.yaml", encode("[" * 3000 + "]" * 3000), ["validate", "campaigns/deep.yaml"]),
    ("bad.csv", b"id;name\n" + b"G1;ok\n" * 50 + b"G2;\xff\xfe\n",
     ["import", "customers", "bad.csv", "--encoding", "utf-8"]),
    ("ragged.csv", b"id;name\nG1;\"never closed\n" + b"x" * (1 << 20) + b"\n",
     ["import", "customers", "ragged.csv"]),
    ("binary.csv", bytes(range(256)) * 20, ["import", "purchases", "binary.csv"]),
]


@pytest.mark.parametrize(("name", "data", "args"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_exit_2_one_line_no_traceback(workspace: Path, tmp_path: Path, name: str, data: bytes,
                                           args: list[str]) -> None:
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    (ws / name).write_bytes(data)
    engine = sa.create_engine(f"sqlite:///{ws / 'db.sqlite'}")
    before = count_rows(engine)
    result = cli(ws, *args)
    after = count_rows(engine)
    engine.dispose()
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr, result.stdout)
    assert Path(name).name in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert after == before
