"""Sample data for the example workspace: the loyalty story of the chain «Атлас» in two CSV exports.

The files look like what a marketer really gets from 1C or a CRM, so that `demo`, the docs and the
tests exercise the importer and the policies on the awkward cases, not on tidy data: `;` as the
delimiter, CRLF line ends, ISO and Russian dates side by side, decimal commas, phones in every format
people type (and a few that are not phones at all), cities in eleven Russian zones and the CIS with
most `timezone` cells empty, Kazakh letters that Windows-1251 cannot encode, 29 February birthdays.

The purchase history tells the story the example campaigns are written for: retail buyers with a
December peak, wholesale clients ordering every two to four weeks who always pause in July (and must
not be taken for sleeping then), clients who stopped buying months ago, and wholesale clients who
are dozing off right now, so that a simulated December wakes the `sleeping` trigger.

Everything is drawn from one `random.Random(seed)`: the same seed gives the same bytes.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Iterable, Mapping

CUSTOMER_COLUMNS = (
    "id", "name", "first_name", "email", "phone", "timezone", "city", "birthday", "manager",
    "abc_group", "bonus_balance", "discount_percent", "consent_email", "consent_sms",
    "consent_phone", "phone_cap_days", "client_type", "loyalty_level", "store",
)
PURCHASE_COLUMNS = ("id", "customer_id", "date", "amount", "category")

DELIMITER = ";"
HISTORY_DAYS = 3 * 365
MANAGERS = ("ivanova", "petrov", "sidorova", "kuznetsov")


@dataclass(frozen=True)
class City:
    name: str
    zone: str
    country: str
    weight: int


CITIES = (
    City("Москва", "Europe/Moscow", "RU", 30),
    City("Санкт-Петербург", "Europe/Moscow", "RU", 12),
    City("Казань", "Europe/Moscow", "RU", 4),
    City("Нижний Новгород", "Europe/Moscow", "RU", 4),
    City("Калининград", "Europe/Kaliningrad", "RU", 3),
    City("Самара", "Europe/Samara", "RU", 4),
    City("Ижевск", "Europe/Samara", "RU", 2),
    City("Екатеринбург", "Asia/Yekaterinburg", "RU", 6),
    City("Челябинск", "Asia/Yekaterinburg", "RU", 3),
    City("Уфа", "Asia/Yekaterinburg", "RU", 2),
    City("Омск", "Asia/Omsk", "RU", 3),
    City("Новосибирск", "Asia/Novosibirsk", "RU", 5),
    City("Красноярск", "Asia/Krasnoyarsk", "RU", 3),
    City("Иркутск", "Asia/Irkutsk", "RU", 2),
    City("Якутск", "Asia/Yakutsk", "RU", 1),
    City("Владивосток", "Asia/Vladivostok", "RU", 2),
    City("Хабаровск", "Asia/Vladivostok", "RU", 1),
    City("Магадан", "Asia/Magadan", "RU", 1),
    City("Петропавловск-Камчатский", "Asia/Kamchatka", "RU", 1),
    City("Алматы", "Asia/Almaty", "KZ", 3),
    City("Астана", "Asia/Almaty", "KZ", 2),
    City("Ташкент", "Asia/Tashkent", "UZ", 2),
    City("Минск", "Europe/Minsk", "BY", 2),
    City("Бишкек", "Asia/Bishkek", "KG", 1),
)
# Towns no city table knows, and spellings a CRM really holds: the phone has to tell the zone.
ODD_CITIES = ("Усть-Кут", "Нерюнгри", "пгт Листвянка", "г. Москва", "москва", "Екатеринбург ")

# Name pools per country: male and female first names, surnames (male form), patronymic stems.
_NAMES = {
    "RU": (
        ("Александр", "Дмитрий", "Сергей", "Андрей", "Алексей", "Михаил", "Иван", "Николай",
         "Владимир", "Павел", "Артём", "Максим", "Егор", "Олег", "Фёдор", "Рустам", "Ильдар"),
        ("Анна", "Елена", "Мария", "Ольга", "Наталья", "Татьяна", "Ирина", "Екатерина",
         "Светлана", "Юлия", "Дарья", "Ксения", "Алина", "Виктория", "Гульнара", "Софья"),
        ("Иванов", "Петров", "Смирнов", "Кузнецов", "Попов", "Соколов", "Лебедев", "Козлов",
         "Новиков", "Морозов", "Волков", "Соловьёв", "Васильев", "Зайцев", "Павлов", "Семёнов",
         "Голубев", "Виноградов", "Богданов", "Воробьёв", "Фёдоров", "Михайлов", "Беляев",
         "Тарасов", "Белов", "Комаров", "Орлов", "Киселёв", "Макаров", "Андреев", "Галиев",
         "Хабибуллин", "Шевченко", "Высоцкий", "Ковальчук"),
        ("Александро", "Дмитрие", "Сергее", "Андрее", "Алексее", "Михайло", "Ивано", "Николае",
         "Владимиро", "Павло", "Олего", "Юрье", "Викторо", "Петро"),
    ),
    "KZ": (
        ("Нұрлан", "Ерлан", "Данияр", "Асхат", "Әлихан", "Бауыржан", "Арман", "Тимур"),
        ("Айгерім", "Асель", "Айгүл", "Дана", "Жанар", "Мадина", "Әсем", "Камила"),
        ("Сериков", "Абенов", "Жумабаев", "Нурланов", "Ахметов", "Серікбаев", "Қасымов",
         "Омаров", "Искаков", "Тулегенов"),
        ("Ержано", "Серико", "Болато", "Марато", "Кайрато", "Нурлано"),
    ),
    "UZ": (
        ("Алишер", "Шахзод", "Бобур", "Жасур", "Рустам", "Улугбек"),
        ("Дилноза", "Нигора", "Малика", "Шахноза", "Зарина", "Гулноза"),
        ("Каримов", "Юсупов", "Рахимов", "Назаров", "Усманов", "Ташкентов", "Хамидов"),
        ("Бахтиеро", "Фаррухо", "Рустамо", "Анваро"),
    ),
    "BY": (
        ("Алесь", "Тарас", "Дмитрий", "Владислав", "Андрей", "Янка"),
        ("Янина", "Ксения", "Алеся", "Вероника", "Ольга", "Ганна"),
        ("Ковальчук", "Лукашевич", "Шевчук", "Новик", "Мельник", "Кравченко", "Жук", "Бондаренко"),
        ("Александро", "Ивано", "Петро", "Николае"),
    ),
    "KG": (
        ("Айбек", "Нурбек", "Эрлан", "Бакыт", "Азамат"),
        ("Жылдыз", "Айпери", "Бермет", "Нургуль", "Айзада"),
        ("Токтогулов", "Абдыкадыров", "Садыков", "Исаков", "Жээнбеков"),
        ("Бакыто", "Эрлано", "Таланто"),
    ),
}

_TRANSLIT = dict(zip(
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюяәғқңөұүһі",
    ["a", "b", "v", "g", "d", "e", "e", "zh", "z", "i", "y", "k", "l", "m", "n", "o", "p", "r",
     "s", "t", "u", "f", "kh", "ts", "ch", "sh", "sch", "", "y", "", "e", "yu", "ya",
     "a", "g", "k", "n", "o", "u", "u", "h", "i"],
))
_MAIL_DOMAINS = {
    "RU": ("mail.ru", "yandex.ru", "gmail.com", "bk.ru", "list.ru", "inbox.ru", "rambler.ru"),
    "KZ": ("mail.kz", "mail.ru", "gmail.com"),
    "UZ": ("mail.ru", "gmail.com", "umail.uz"),
    "BY": ("tut.by", "gmail.com", "mail.ru"),
    "KG": ("mail.ru", "gmail.com"),
}
_COMPANY_FORMS = {"RU": ("ООО", "АО", "ИП"), "KZ": ("ТОО", "ИП"), "UZ": ("ООО", "ЧП"),
                  "BY": ("ООО", "ОДО", "ЧУП"), "KG": ("ОсОО", "ИП")}
_COMPANY_ROOTS = ("Сталь", "Металл", "Мебель", "Строй", "Урал", "Сиб", "Профиль", "Комплект",
                  "Интерьер", "Прокат", "Торг", "Снаб", "Дом", "Вектор", "Альфа", "Гранит")

RETAIL_CATEGORIES = ("мебель", "диваны", "кухни", "ювелирные украшения", "аксессуары")
_RETAIL_WEIGHTS = (25, 20, 10, 30, 15)
_PRICE = {
    "мебель": (15_000, 120_000), "диваны": (30_000, 180_000), "кухни": (80_000, 450_000),
    "ювелирные украшения": (5_000, 150_000), "аксессуары": (500, 8_000),
}
_WHOLESALE_PRICE = {"металлопрокат": (80_000, 1_500_000), "мебель": (100_000, 800_000)}
# Retail demand per calendar month: New Year gifts and furniture in December, 8 March jewellery.
_SEASON = {1: 0.7, 2: 1.1, 3: 1.3, 4: 0.9, 5: 0.8, 6: 0.8, 7: 0.7, 8: 0.9, 9: 1.0, 10: 1.0,
           11: 1.4, 12: 3.0}
_SEASON_MAX = max(_SEASON.values())


@dataclass
class _Customer:
    number: int
    kind: str
    country: str
    male: bool
    fields: dict[str, str] = field(default_factory=dict)
    purchases: list[tuple[date, float, str]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"C{self.number:06d}"


def write_sample(
    out_dir: Path, *, customers: int = 3000, seed: int = 7, today: date = date(2026, 11, 23)
) -> tuple[Path, Path]:
    """Write `customers.csv` and `purchases.csv` into `out_dir`; returns their paths."""
    rng = random.Random(seed)
    people = [_customer(rng, number, today) for number in range(1, customers + 1)]
    for person in people:
        person.purchases = _history(rng, person, today)
    _rank(people)
    out_dir.mkdir(parents=True, exist_ok=True)
    customers_path = out_dir / "customers.csv"
    purchases_path = out_dir / "purchases.csv"
    _write(customers_path, CUSTOMER_COLUMNS, (p.fields for p in people))
    _write(purchases_path, PURCHASE_COLUMNS, _purchase_rows(rng, people))
    return customers_path, purchases_path


def _write(path: Path, columns: tuple[str, ...], rows: Iterable[Mapping[str, str]]) -> None:
    """CRLF and `;`, as a Windows export has them; the csv module quotes names with quotes."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, columns, delimiter=DELIMITER, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)


# --- customers ----------------------------------------------------------------------------------


def _kind(rng: random.Random) -> str:
    """The behaviour behind the purchase history; proportions of a chain with a B2B branch."""
    roll = rng.random()
    if roll < 0.08:
        return "wholesale"
    if roll < 0.10:
        return "wholesale_sleeping"
    if roll < 0.12:
        return "wholesale_dozing"
    if roll < 0.64:
        return "retail"
    if roll < 0.77:
        return "retail_once"
    if roll < 0.90:
        return "retail_sleeping"
    return "retail_new"


def _customer(rng: random.Random, number: int, today: date) -> _Customer:
    kind = _kind(rng)
    city = rng.choices(CITIES, weights=[c.weight for c in CITIES])[0]
    person = _Customer(number, kind, city.country, rng.random() < 0.45)
    wholesale = kind.startswith("wholesale")
    first, full, surname = _person_name(rng, city.country, person.male)
    f = person.fields
    f["id"] = person.id
    f["name"] = _company(rng, city.country, first, surname) if wholesale else full
    f["first_name"] = "" if rng.random() < 0.05 else first
    f["email"] = _email(rng, city.country, first, surname, f["name"] if wholesale else None)
    f["phone"] = _phone(rng, city.country)
    f["city"] = _city_text(rng, city)
    f["timezone"] = city.zone if rng.random() < 0.12 else ""
    f["birthday"] = _birthday(rng, number, today, wholesale)
    f["manager"] = _manager(rng, number, wholesale)
    f["bonus_balance"] = "" if wholesale else _money(rng, _bonus(rng))
    f["discount_percent"] = str(rng.choice((5, 7, 10, 12, 15)) if wholesale
                                else rng.choice((0, 0, 0, 3, 5, 5, 7, 10)))
    f["consent_email"] = _flag(rng, 0.88)
    f["consent_sms"] = _flag(rng, 0.85)
    f["consent_phone"] = _flag(rng, 0.92 if wholesale else 0.6)
    f["phone_cap_days"] = rng.choice(("14", "60")) if wholesale and rng.random() < 0.1 else ""
    f["client_type"] = "wholesale" if wholesale else "retail"
    f["store"] = (f"Оптовый отдел «Атлас», {city.name}" if wholesale
                  else f"«Атлас» {city.name}" if rng.random() < 0.8 else "Интернет-магазин")
    return person


def _person_name(rng: random.Random, country: str, male: bool) -> tuple[str, str, str]:
    """(first name, `Фамилия Имя Отчество` as 1C writes it, surname) in the right gender."""
    males, females, surnames, roots = _NAMES[country if rng.random() < 0.75 else "RU"]
    first = rng.choice(males if male else females)
    surname = rng.choice(surnames)
    root = rng.choice(roots)
    if not male:
        surname = _feminine(surname)
    patronymic = root + ("вич" if male else "вна")
    return first, f"{surname} {first} {patronymic}", surname


def _feminine(surname: str) -> str:
    if surname.endswith(("ов", "ев", "ёв", "ин", "ын")):
        return surname + "а"
    if surname.endswith("ий"):
        return surname[:-2] + "ая"
    return surname


def _company(rng: random.Random, country: str, first: str, surname: str) -> str:
    """A legal entity in quotes of either kind, or a sole trader under their own name."""
    form = rng.choice(_COMPANY_FORMS[country])
    if form == "ИП":
        return f"ИП {surname} {first[0]}."
    brand = "".join(rng.sample(_COMPANY_ROOTS, 2))
    return f'{form} "{brand}"' if rng.random() < 0.6 else f"{form} «{brand}»"


def _latin(text: str) -> str:
    return "".join(_TRANSLIT.get(ch, ch) for ch in text.lower() if ch.isalnum())


def _email(rng: random.Random, country: str, first: str, surname: str, company: str | None) -> str:
    if rng.random() < 0.15:
        return ""
    if company is not None:
        brand = _latin(company.split(" ", 1)[1])[:16]
        return f"{rng.choice(('zakaz', 'info', 'snab', 'office'))}@{brand}.{country.lower()}"
    local = rng.choice((
        f"{_latin(first)}.{_latin(surname)}",
        f"{_latin(surname)}{rng.randint(1, 99)}",
        f"{_latin(first)[0]}{_latin(surname)}{rng.randint(70, 2005)}",
    ))
    address = f"{local}@{rng.choice(_MAIL_DOMAINS[country])}"
    return address.title() if rng.random() < 0.03 else address


def _phone(rng: random.Random, country: str) -> str:
    """A number in one of the ways people and CRMs write it; a few are not numbers at all."""
    roll = rng.random()
    if roll < 0.04:
        return ""
    if roll < 0.055:
        return rng.choice(("123-45", "8 (912) 345-67", "+7 912 345 67 89 10", "нет", "0"))
    d = [str(rng.randint(0, 9)) for _ in range(7)]
    if country == "KZ":
        code = rng.choice(("701", "702", "705", "707", "747", "771", "775", "777", "778"))
        return rng.choice((
            f"+7 {code} {''.join(d[:3])} {''.join(d[3:5])} {''.join(d[5:])}",
            f"8 ({code}) {''.join(d[:3])}-{''.join(d[3:5])}-{''.join(d[5:])}",
            f"7{code}{''.join(d)}",
        ))
    if country == "UZ":
        return f"+998 {rng.choice(('90', '91', '93', '94', '97', '99'))} {''.join(d[:3])}-{''.join(d[3:5])}-{''.join(d[5:])}"
    if country == "BY":
        return f"+375 ({rng.choice(('29', '33', '44'))}) {''.join(d[:3])}-{''.join(d[3:5])}-{''.join(d[5:])}"
    if country == "KG":
        return f"+996 {rng.choice(('555', '700', '770', '707'))} {''.join(d[:3])} {''.join(d[3:6])}"
    code = rng.choice(("903", "905", "909", "912", "915", "916", "917", "920", "922", "926",
                       "950", "960", "977", "985", "999"))
    a, b, c = "".join(d[:3]), "".join(d[3:5]), "".join(d[5:])
    return rng.choice((
        f"8 ({code}) {a}-{b}-{c}",
        f"+7 {code} {a} {b} {c}",
        f"7{code}{a}{b}{c}",
        f"8{code}{a}{b}{c}",
        f"+7({code}){a}{b}{c}",
        f"8-{code}-{a}-{b}-{c}",
    ))


def _city_text(rng: random.Random, city: City) -> str:
    roll = rng.random()
    if roll < 0.05:
        return ""
    if roll < 0.08 and city.country == "RU":
        return rng.choice(ODD_CITIES)
    return city.name


def _birthday(rng: random.Random, number: int, today: date, wholesale: bool) -> str:
    if number % 500 == 17:
        born = date(rng.choice((1972, 1980, 1984, 1988, 1992, 1996, 2000)), 2, 29)
    elif rng.random() < (0.7 if wholesale else 0.08):
        return ""
    else:
        born = date(today.year - rng.randint(18, 75), 1, 1) + timedelta(days=rng.randint(0, 364))
    return _date_text(rng, born, russian_share=0.5)


def _manager(rng: random.Random, number: int, wholesale: bool) -> str:
    """Wholesale clients have an account manager (a few were never assigned); some VIP buyers too."""
    if wholesale:
        return "" if rng.random() < 0.06 else MANAGERS[number % len(MANAGERS)]
    return rng.choice(MANAGERS[:2]) if rng.random() < 0.02 else ""


def _bonus(rng: random.Random) -> float:
    roll = rng.random()
    if roll < 0.3:
        return 0.0
    if roll < 0.9:
        return round(rng.uniform(50, 5000), rng.choice((0, 2)))
    return round(rng.uniform(5000, 40000), 2)


def _money(rng: random.Random, amount: float) -> str:
    text = f"{amount:.2f}"
    if text.endswith(".00") and rng.random() < 0.5:
        text = text[:-3]
    return text.replace(".", ",") if rng.random() < 0.3 else text


def _flag(rng: random.Random, yes_share: float) -> str:
    yes = rng.random() < yes_share
    return rng.choice(("да", "да", "1", "yes", "true") if yes else ("нет", "нет", "0", "no", "false"))


def _date_text(rng: random.Random, day: date, *, russian_share: float) -> str:
    return day.strftime("%d.%m.%Y") if rng.random() < russian_share else day.isoformat()


# --- purchases ----------------------------------------------------------------------------------


def _history(rng: random.Random, person: _Customer, today: date) -> list[tuple[date, float, str]]:
    first_day = today - timedelta(days=HISTORY_DAYS)
    kind = person.kind
    if kind == "retail_new":
        return []
    if kind.startswith("wholesale"):
        return _wholesale(rng, kind, first_day, today)
    main = rng.choices(RETAIL_CATEGORIES, weights=_RETAIL_WEIGHTS)[0]
    start = first_day + timedelta(days=rng.randint(0, HISTORY_DAYS - 30))
    if kind == "retail_once":
        return [(_seasonal_day(rng, start, today), *_basket(rng, main))]
    if kind == "retail_sleeping":
        start = first_day + timedelta(days=rng.randint(0, 200))
        stop = today - timedelta(days=rng.randint(150, 420))
        count = max(3, round(rng.uniform(4, 8) * (stop - start).days / 365))
    else:
        stop = today
        count = max(2, round(rng.uniform(1.5, 6) * (stop - start).days / 365))
    return sorted((_seasonal_day(rng, start, stop), *_basket(rng, main)) for _ in range(count))


def _seasonal_day(rng: random.Random, start: date, stop: date) -> date:
    """A day in [start, stop] drawn with the retail seasonality (rejection sampling)."""
    span = max((stop - start).days, 0)
    while True:
        day = start + timedelta(days=rng.randint(0, span))
        if span == 0 or rng.random() * _SEASON_MAX < _SEASON[day.month]:
            return day


def _basket(rng: random.Random, main: str) -> tuple[float, str]:
    category = main if rng.random() < 0.7 else rng.choices(RETAIL_CATEGORIES, weights=_RETAIL_WEIGHTS)[0]
    low, high = _PRICE[category]
    return round(rng.uniform(low, high), rng.choice((0, 2))), category


def _wholesale(rng: random.Random, kind: str, first_day: date, today: date) -> list[tuple[date, float, str]]:
    """Orders every 2–4 weeks; most clients close for July; some stopped, some are dozing off now."""
    interval = rng.randint(14, 28)
    july_pause = rng.random() < 0.7
    category = "металлопрокат" if rng.random() < 0.65 else "мебель"
    if kind == "wholesale_sleeping":
        stop = today - timedelta(days=rng.randint(60, 200))
    elif kind == "wholesale_dozing":
        # Quiet for 1–1.4 usual intervals today: awake on 1 December, asleep before the year ends.
        stop = today - timedelta(days=rng.randint(interval, int(interval * 1.4)))
    else:
        stop = today
    day = first_day + timedelta(days=rng.randint(0, 90))
    orders: list[tuple[date, float, str]] = []
    while day <= stop:
        if july_pause and day.month == 7:
            day = date(day.year, 8, 1) + timedelta(days=rng.randint(0, 6))
            continue
        low, high = _WHOLESALE_PRICE[category]
        orders.append((day, round(rng.uniform(low, high), 2), category))
        day += timedelta(days=interval + rng.randint(-3, 3))
    if kind == "wholesale_dozing" and orders:
        orders[-1] = (stop, *orders[-1][1:])
    return orders


def _rank(people: list[_Customer]) -> None:
    """ABC groups and loyalty levels follow the money, as they do in a real CRM."""
    totals = sorted(people, key=lambda p: -sum(amount for _, amount, _ in p.purchases))
    count = len(totals)
    for index, person in enumerate(totals):
        share = index / count
        person.fields["abc_group"] = "A" if share < 0.2 else "B" if share < 0.5 else "C"
        person.fields["loyalty_level"] = ("gold" if share < 0.1 else "silver" if share < 0.4
                                          else "bronze")


def _purchase_rows(rng: random.Random, people: list[_Customer]) -> list[dict[str, str]]:
    flat = sorted(
        (day, person.id, amount, category)
        for person in people for day, amount, category in person.purchases
    )
    return [
        {
            "id": f"P{number:07d}",
            "customer_id": customer_id,
            "date": _date_text(rng, day, russian_share=0.25),
            "amount": _money(rng, amount),
            "category": category,
        }
        for number, (day, customer_id, amount, category) in enumerate(flat, 1)
    ]
