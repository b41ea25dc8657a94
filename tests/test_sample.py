"""The sample data and the example workspace: the story the demo and the docs tell must be in them.

The sample files are checked the way a marketer would look at an export (headers, formats, the
awkward rows) and for the behaviours the example campaigns need (July pauses, sleeping clients,
December birthdays).  The workspace check is structural: every YAML parses, names match, and every
campaign points at segments and templates that exist (the full `validate` lives elsewhere).
"""

from __future__ import annotations

import csv
import re
import statistics
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
from apscheduler.triggers.cron import CronTrigger
from jinja2.sandbox import SandboxedEnvironment

from orchestrator.sample import CITIES, CUSTOMER_COLUMNS, PURCHASE_COLUMNS, write_sample
from orchestrator.yamlfile import load_yaml

REPO = Path(__file__).resolve().parent.parent
TODAY = date(2026, 11, 23)
RUSSIAN_ZONES = {
    "Europe/Kaliningrad", "Europe/Moscow", "Europe/Samara", "Asia/Yekaterinburg", "Asia/Omsk",
    "Asia/Novosibirsk", "Asia/Krasnoyarsk", "Asia/Irkutsk", "Asia/Yakutsk", "Asia/Vladivostok",
    "Asia/Magadan", "Asia/Kamchatka",
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_sample(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="module")
def customers(sample: tuple[Path, Path]) -> list[dict[str, str]]:
    return _rows(sample[0])


@pytest.fixture(scope="module")
def purchases(sample: tuple[Path, Path]) -> list[dict[str, str]]:
    return _rows(sample[1])


@pytest.fixture(scope="module")
def history(purchases: list[dict[str, str]]) -> dict[str, list[date]]:
    days: dict[str, list[date]] = defaultdict(list)
    for row in purchases:
        days[row["customer_id"]].append(_day(row["date"]))
    return {key: sorted(value) for key, value in days.items()}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


def _day(text: str) -> date:
    if re.fullmatch(r"\d{2}\.\d{2}\.\d{4}", text):
        return datetime.strptime(text, "%d.%m.%Y").date()
    return date.fromisoformat(text)


def _median_gap(days: list[date]) -> float:
    return statistics.median((b - a).days for a, b in zip(days, days[1:]))


# --- the sample files ---------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_data(sample: tuple[Path, Path], tmp_path: Path) -> None:
    again = write_sample(tmp_path / "again")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in sample]
    other = write_sample(tmp_path / "other", customers=200, seed=8)
    small = write_sample(tmp_path / "small", customers=200, seed=7)
    assert other[0].read_bytes() != small[0].read_bytes()


def test_headers_delimiter_and_size(sample: tuple[Path, Path], customers: list, purchases: list) -> None:
    first_lines = [p.read_bytes().split(b"\r\n", 1)[0].decode("utf-8") for p in sample]
    assert first_lines == [";".join(CUSTOMER_COLUMNS), ";".join(PURCHASE_COLUMNS)]
    assert "customer_id" in PURCHASE_COLUMNS and {"client_type", "loyalty_level", "store"} <= set(CUSTOMER_COLUMNS)
    assert len(customers) == 3000
    assert 20_000 <= len(purchases) <= 80_000


def test_utf8_that_windows_1251_cannot_hold(sample: tuple[Path, Path]) -> None:
    """Kazakh letters make a wrong guess of cp1251 visible instead of silently garbling names."""
    text = sample[0].read_bytes().decode("utf-8")
    assert not text.startswith("\ufeff")
    with pytest.raises(UnicodeEncodeError):
        text.encode("cp1251")
    assert re.search(r"[әғқңөұүі]", text, re.IGNORECASE)


def test_ids_are_unique_and_purchases_belong_to_customers(customers: list, purchases: list) -> None:
    ids = [row["id"] for row in customers]
    assert all(re.fullmatch(r"C\d{6}", i) for i in ids) and len(set(ids)) == len(ids)
    purchase_ids = [row["id"] for row in purchases]
    assert all(re.fullmatch(r"P\d{7}", i) for i in purchase_ids)
    assert len(set(purchase_ids)) == len(purchase_ids)
    assert {row["customer_id"] for row in purchases} <= set(ids)


def test_dates_and_amounts_in_both_russian_and_iso_forms(purchases: list, customers: list) -> None:
    dates = [row["date"] for row in purchases]
    russian = [d for d in dates if re.fullmatch(r"\d{2}\.\d{2}\.\d{4}", d)]
    iso = [d for d in dates if re.fullmatch(r"\d{4}-\d{2}-\d{2}", d)]
    assert russian and iso and len(russian) + len(iso) == len(dates)
    days = [_day(d) for d in dates]
    assert min(days) >= TODAY - timedelta(days=3 * 365) and max(days) == TODAY
    amounts = [row["amount"] for row in purchases]
    assert any("," in a for a in amounts) and any("." in a for a in amounts)
    assert all(float(a.replace(",", ".")) > 0 for a in amounts)
    balances = [row["bonus_balance"] for row in customers if row["bonus_balance"]]
    assert any("," in b for b in balances)
    assert {_day(row["birthday"]) for row in customers if row["birthday"]}  # all parse


def test_birthdays_include_leap_day_and_december(customers: list) -> None:
    born = [_day(row["birthday"]) for row in customers if row["birthday"]]
    assert sum(1 for d in born if (d.month, d.day) == (2, 29)) >= 3
    assert sum(1 for d in born if d.month == 12) >= 50
    assert any(not row["birthday"] for row in customers)


def test_phones_in_real_world_shapes(customers: list) -> None:
    phones = [row["phone"] for row in customers if row["phone"]]
    shapes = {
        "8 (xxx)": r"8 \(\d{3}\) \d{3}-\d{2}-\d{2}",
        "+7 spaced": r"\+7 \d{3} \d{3} \d{2} \d{2}",
        "digits": r"7\d{10}",
    }
    for name, pattern in shapes.items():
        assert any(re.fullmatch(pattern, p) for p in phones), name
    parsed = []
    for text in phones:
        try:
            parsed.append(phonenumbers.parse(text, "RU"))
        except phonenumbers.NumberParseException:
            parsed.append(None)
    valid = [n for n in parsed if n is not None and phonenumbers.is_valid_number(n)]
    assert 0.9 < len(valid) / len(phones) < 1
    regions = Counter(phonenumbers.region_code_for_number(n) for n in valid)
    assert regions["RU"] > regions["KZ"] > 0 and regions["UZ"] and regions["BY"] and regions["KG"]
    assert any(not row["phone"] for row in customers)


def test_cities_span_eleven_russian_zones_and_the_cis(customers: list) -> None:
    zone_of = {city.name: city.zone for city in CITIES}
    zones = {zone_of[row["city"]] for row in customers if row["city"] in zone_of}
    assert RUSSIAN_ZONES <= zones
    assert {"Asia/Almaty", "Asia/Tashkent", "Europe/Minsk", "Asia/Bishkek"} <= zones
    assert any(row["city"] and row["city"] not in zone_of for row in customers)
    filled = [row["timezone"] for row in customers if row["timezone"]]
    assert 0.03 < len(filled) / len(customers) < 0.3
    for name in filled:
        ZoneInfo(name)


def test_customer_fields_a_crm_would_hold(customers: list) -> None:
    wholesale = [row for row in customers if row["client_type"] == "wholesale"]
    retail = [row for row in customers if row["client_type"] == "retail"]
    assert len(wholesale) + len(retail) == len(customers) and len(wholesale) > 100
    assert {row["manager"] for row in wholesale} >= {"ivanova", "petrov", "sidorova"}
    assert any(not row["manager"] for row in wholesale)
    assert {row["abc_group"] for row in customers} == {"A", "B", "C"}
    assert {row["loyalty_level"] for row in customers} == {"bronze", "silver", "gold"}
    assert all(row["store"] for row in customers)
    assert any(row["phone_cap_days"] for row in customers)
    assert any(not row["first_name"] for row in customers)
    assert any(not row["email"] for row in customers)
    assert any('"' in row["name"] for row in wholesale)
    flags = Counter(row["consent_sms"] for row in customers)
    yes = sum(flags[v] for v in ("да", "1", "yes", "true"))
    assert 0.7 < yes / len(customers) < 0.98 and flags["нет"] and flags["да"]


def test_wholesale_clients_order_every_few_weeks_and_pause_in_july(
    customers: list, history: dict[str, list[date]]
) -> None:
    wholesale = [row["id"] for row in customers if row["client_type"] == "wholesale"]
    regular = [history[i] for i in wholesale if len(history.get(i, [])) >= 20]
    assert regular and all(11 <= _median_gap(days) <= 31 for days in regular)
    paused = [
        days for days in regular
        if days[-1] >= TODAY - timedelta(days=60)
        and all(d.month != 7 for d in days)
        and {(d.year, d.month) for d in days} >= {(2025, 6), (2025, 8), (2026, 6), (2026, 8)}
    ]
    assert len(paused) >= 20


def test_some_clients_are_sleeping_and_some_doze_off_in_december(
    customers: list, history: dict[str, list[date]]
) -> None:
    def ratio(days: list[date], on: date) -> float:
        return (on - days[-1]).days / max(_median_gap(days), 1)

    with_history = {row["id"]: history[row["id"]] for row in customers if len(history.get(row["id"], [])) >= 3}
    sleeping = [i for i, days in with_history.items() if ratio(days, TODAY) >= 3 and (TODAY - days[-1]).days >= 60]
    assert len(sleeping) >= 100
    wholesale = {row["id"] for row in customers if row["client_type"] == "wholesale"}
    dozing = [
        i for i in wholesale & with_history.keys()
        if ratio(with_history[i], date(2026, 12, 1)) < 2 <= ratio(with_history[i], date(2026, 12, 31))
    ]
    assert len(dozing) >= 10


def test_retail_buys_most_in_december(customers: list, purchases: list) -> None:
    retail = {row["id"] for row in customers if row["client_type"] == "retail"}
    months = Counter(_day(row["date"]).month for row in purchases if row["customer_id"] in retail)
    others = statistics.mean(months[m] for m in range(1, 12))
    assert months[12] > 2 * others


# --- the example workspace ----------------------------------------------------------------------

CAMPAIGNS = sorted((REPO / "campaigns").glob("*.yaml"))
SEGMENTS = sorted((REPO / "segments").glob("*.yaml"))
CHANNEL_FILES = {"sms": ("sms", ".txt.j2"), "email": ("email", ".html.j2"), "phone": ("phone", ".txt.j2")}
CAMPAIGN_KEYS = {
    "name", "description", "segment", "where", "category", "channels", "channel_mode", "template",
    "subject", "offer", "schedule", "deliver_within", "sms_max_parts", "holdout", "when_capped",
}


def _campaign(path: Path) -> dict:
    data, _ = load_yaml(path)
    assert isinstance(data, dict), path
    return data


def test_the_workspace_has_the_eight_story_campaigns() -> None:
    assert {p.stem for p in CAMPAIGNS} >= {
        "birthday-greeting", "monthly-bonus-balance", "wake-sleeping-wholesale", "new-collection",
        "discount-status", "discount-warning", "preferred-category-offer", "new-year-offer",
    }


@pytest.mark.parametrize("path", SEGMENTS, ids=lambda p: p.stem)
def test_segment_files_parse(path: Path) -> None:
    data, _ = load_yaml(path)
    assert isinstance(data, dict) and data.get("description")
    assert set(data) - {"description"} in ({"where"}, {"sql"})
    if "sql" in data:
        assert re.match(r"\s*SELECT\s+id\s+FROM\s+customers\b", data["sql"], re.IGNORECASE)


@pytest.mark.parametrize("path", CAMPAIGNS, ids=lambda p: p.stem)
def test_campaign_files_reference_what_exists(path: Path) -> None:
    data = _campaign(path)
    assert set(data) <= CAMPAIGN_KEYS and data["name"] == path.stem
    assert ("segment" in data) != ("where" in data)
    if "segment" in data:
        assert (REPO / "segments" / f"{data['segment']}.yaml").is_file()
    assert data["category"] in ("promo", "content", "service", "transactional")
    assert data.get("channel_mode", "first") in ("first", "all")
    assert data["channels"] and set(data["channels"]) <= set(CHANNEL_FILES)
    for channel in data["channels"]:
        folder, suffix = CHANNEL_FILES[channel]
        template = REPO / "templates" / folder / f"{data['template']}{suffix}"
        assert template.is_file(), template
        if channel == "email":
            has_block = "{% block subject %}" in template.read_text(encoding="utf-8")
            assert has_block != ("subject" in data), "the subject comes from exactly one place"
            if data["category"] in ("promo", "content"):
                assert "links.unsubscribe" in template.read_text(encoding="utf-8")
    assert sum(key in data["schedule"] for key in ("cron", "at", "trigger")) == 1


@pytest.mark.parametrize("path", CAMPAIGNS, ids=lambda p: p.stem)
def test_every_campaign_fires_in_december_2026(path: Path, customers: list) -> None:
    """`simulate --start 2026-12-01 --days 31` shows every example campaign at work."""
    schedule = _campaign(path)["schedule"]
    zone = ZoneInfo(schedule.get("timezone", "Europe/Moscow"))
    start, end = datetime(2026, 12, 1, tzinfo=zone), datetime(2027, 1, 1, tzinfo=zone)
    if "cron" in schedule:
        fire = CronTrigger.from_crontab(schedule["cron"], timezone=zone).get_next_fire_time(None, start)
        assert fire is not None and fire < end
    elif "at" in schedule:
        assert start <= datetime.fromisoformat(schedule["at"]).replace(tzinfo=zone) < end
    elif schedule["trigger"] == "birthday":
        assert any(_day(row["birthday"]).month == 12 for row in customers if row["birthday"])
    else:
        assert schedule["trigger"] == "sleeping"


def test_every_template_compiles_and_is_used() -> None:
    env = SandboxedEnvironment()
    used = set()
    for path in CAMPAIGNS:
        data = _campaign(path)
        for channel in data["channels"]:
            folder, suffix = CHANNEL_FILES[channel]
            used.add(f"{folder}/{data['template']}{suffix}")
            if channel == "email":
                used.add(f"{folder}/{data['template']}.txt.j2")
        if "subject" in data:
            env.parse(data["subject"])
    templates = sorted((REPO / "templates").rglob("*.j2"))
    assert templates
    for template in templates:
        env.parse(template.read_text(encoding="utf-8"))
        assert template.relative_to(REPO / "templates").as_posix() in used, template
