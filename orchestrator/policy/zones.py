"""Candidate time zones of a recipient (SPEC 7): the `timezone` column, else the city, else the phone.

A Russian mobile number says nothing about where its owner lives (+79… maps to every zone of +7,
Kazakhstan included), so the phone gives a *set* of candidates and the planner must find a minute
allowed in all of them.  Everything here is pure and cached: import computes the guess once per
customer, and the planner may call it again per recipient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Mapping
from zoneinfo import available_timezones

import phonenumbers
from phonenumbers import timezone as _phone_tz
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE
from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX


@dataclass(frozen=True)
class ZoneGuess:
    zones: tuple[str, ...]
    source: str  # "column" | "city" | "phone" | "default"

    @cached_property
    def text(self) -> str:
        """The zones space separated, as the customers table keeps them."""
        return " ".join(self.zones)


DEFAULT_GUESS = ZoneGuess((), "default")

# Names that zoneinfo knows but that are not places (they would silently mean UTC or the host zone).
_NOT_PLACES = frozenset({"Factory", "localtime", "posixrules", "Etc/Unknown"})


@lru_cache(maxsize=1)
def _known_zones() -> dict[str, str]:
    """casefolded name → canonical IANA name; `europe/moscow` in a CSV is still Moscow."""
    return {name.casefold(): name for name in available_timezones() if name not in _NOT_PLACES}


def canonical_zone(name: str | None) -> str | None:
    """The IANA name spelled canonically, or None when `name` is not a zone."""
    if not name:
        return None
    return _known_zones().get(name.strip().casefold())


# --- cities ----------------------------------------------------------------------------------

# One line per zone: the zone, then the cities (Russian name, optionally `/`-separated Latin or
# other aliases).  A transliteration of each Russian name is added automatically, so Latin aliases
# are only listed where the usual spelling differs from it (Moscow, Yekaterinburg, ...).
_CITY_TABLE = """
Europe/Kaliningrad: Калининград/Kaliningrad/Koenigsberg; Черняховск; Балтийск; Гусев
Europe/Moscow: Москва/Moscow/Moskva/Msk/Мск; Санкт-Петербург/Saint Petersburg/St Petersburg/Sankt-Peterburg/St-Petersburg/Petersburg/СПб/Питер/Петербург/Ленинград/Leningrad;
 Белгород; Брянск; Владимир; Воронеж; Иваново; Калуга; Кострома; Курск; Липецк; Орёл/Orel/Oryol;
 Рязань/Ryazan; Смоленск; Тамбов; Тверь/Tver; Тула; Ярославль/Yaroslavl; Архангельск; Вологда;
 Мурманск; Великий Новгород/Veliky Novgorod/Novgorod; Псков; Петрозаводск; Сыктывкар; Нарьян-Мар;
 Казань/Kazan; Нижний Новгород/Nizhny Novgorod/Nizhniy Novgorod/Н.Новгород; Йошкар-Ола;
 Саранск; Чебоксары; Пенза; Краснодар; Ростов-на-Дону/Rostov-on-Don/Rostov/Ростов; Элиста;
 Майкоп; Махачкала; Нальчик; Владикавказ; Грозный/Grozny; Магас; Черкесск; Ставрополь;
 Симферополь/Simferopol; Севастополь/Sevastopol; Сочи; Новороссийск; Набережные Челны/Naberezhnye Chelny;
 Череповец; Таганрог; Дзержинск; Шахты; Альметьевск; Нижнекамск; Старый Оскол; Балашиха;
 Подольск; Химки; Мытищи; Королёв/Korolev; Люберцы; Красногорск; Электросталь; Коломна;
 Одинцово; Сергиев Посад; Серпухов; Обнинск; Северодвинск; Пятигорск; Кисловодск; Ессентуки;
 Армавир; Новочеркасск; Волгодонск; Хасавюрт; Дербент; Каспийск; Воркута; Ухта; Великие Луки;
 Рыбинск; Муром; Ковров; Арзамас; Елец; Новомосковск; Евпатория; Керчь; Ялта; Феодосия;
 Зеленоград; Долгопрудный; Реутов; Раменское; Щёлково/Shchelkovo; Пушкино; Жуковский; Домодедово;
 Ногинск; Орехово-Зуево; Батайск; Невинномысск; Новошахтинск; Каменск-Шахтинский; Ейск;
 Геленджик; Анапа; Туапсе; Канаш; Новочебоксарск; Зеленодольск;
 Бугульма; Елабуга; Гатчина; Выборг; Колпино; Кронштадт; Пушкин; Петергоф;
 Кондопога; Котлас; Кингисепп
Europe/Kirov: Киров/Kirov; Кирово-Чепецк
Europe/Volgograd: Волгоград/Volgograd; Волжский/Volzhsky; Камышин
Europe/Astrakhan: Астрахань/Astrakhan
Europe/Saratov: Саратов/Saratov; Энгельс; Балаково
Europe/Ulyanovsk: Ульяновск/Ulyanovsk; Димитровград
Europe/Samara: Самара/Samara; Тольятти/Togliatti/Tolyatti; Сызрань; Новокуйбышевск; Чапаевск;
 Ижевск/Izhevsk; Сарапул; Воткинск; Глазов
Asia/Yekaterinburg: Екатеринбург/Yekaterinburg/Ekaterinburg/Екб; Челябинск/Chelyabinsk; Уфа/Ufa;
 Пермь/Perm; Оренбург; Курган; Тюмень/Tyumen; Ханты-Мансийск/Khanty-Mansiysk; Салехард; Сургут;
 Нижневартовск; Нефтеюганск; Новый Уренгой/Novy Urengoy; Ноябрьск; Магнитогорск; Нижний Тагил/Nizhny Tagil;
 Каменск-Уральский; Первоуральск; Златоуст; Миасс; Копейск; Стерлитамак; Салават; Нефтекамск;
 Орск; Новотроицк; Березники; Соликамск; Тобольск; Когалым; Надым; Нягань; Ишим;
 Серов; Верхняя Пышма; Асбест; Ревда; Шадринск; Туймазы; Бузулук
Asia/Omsk: Омск/Omsk
Asia/Novosibirsk: Новосибирск/Novosibirsk; Бердск; Искитим
Asia/Barnaul: Барнаул/Barnaul; Бийск; Рубцовск; Горно-Алтайск
Asia/Tomsk: Томск/Tomsk; Северск
Asia/Novokuznetsk: Кемерово/Kemerovo; Новокузнецк/Novokuznetsk; Прокопьевск; Междуреченск; Ленинск-Кузнецкий; Белово
Asia/Krasnoyarsk: Красноярск/Krasnoyarsk; Норильск/Norilsk; Абакан; Кызыл; Ачинск; Канск; Минусинск; Саяногорск
Asia/Irkutsk: Иркутск/Irkutsk; Улан-Удэ/Ulan-Ude; Братск; Ангарск; Усолье-Сибирское; Усть-Илимск
Asia/Chita: Чита/Chita; Краснокаменск
Asia/Yakutsk: Якутск/Yakutsk; Благовещенск/Blagoveshchensk; Нерюнгри; Свободный
Asia/Vladivostok: Владивосток/Vladivostok; Хабаровск/Khabarovsk; Комсомольск-на-Амуре/Komsomolsk-on-Amur;
 Уссурийск; Находка; Биробиджан; Артём/Artem; Спасск-Дальний; Амурск
Asia/Sakhalin: Южно-Сахалинск/Yuzhno-Sakhalinsk; Корсаков; Холмск
Asia/Magadan: Магадан/Magadan
Asia/Srednekolymsk: Среднеколымск
Asia/Kamchatka: Петропавловск-Камчатский/Petropavlovsk-Kamchatsky; Елизово
Asia/Anadyr: Анадырь/Anadyr
Asia/Almaty: Алматы/Almaty/Алма-Ата/Alma-Ata; Астана/Astana/Нур-Султан/Nur-Sultan/Целиноград; Шымкент/Shymkent/Чимкент;
 Караганда/Karaganda/Qaraghandy; Тараз/Taraz; Павлодар/Pavlodar; Усть-Каменогорск/Oskemen/Ust-Kamenogorsk/Өскемен;
 Семей/Semey/Семипалатинск; Петропавловск/Petropavl; Темиртау; Туркестан/Turkistan; Кокшетау/Kokshetau;
 Талдыкорган/Taldykorgan; Экибастуз; Жезказган
Asia/Aqtobe: Актобе/Aktobe/Aqtobe
Asia/Atyrau: Атырау/Atyrau
Asia/Qostanay: Костанай/Kostanay/Qostanay; Рудный
Asia/Qyzylorda: Кызылорда/Kyzylorda/Qyzylorda
Asia/Oral: Уральск/Uralsk/Oral
Asia/Aqtau: Актау/Aktau/Aqtau; Жанаозен
Europe/Minsk: Минск/Minsk; Гомель/Gomel/Homel; Могилёв/Mogilev/Mahilyow; Витебск/Vitebsk; Гродно/Grodno/Hrodna;
 Брест/Brest; Бобруйск/Bobruisk; Барановичи; Борисов; Пинск; Орша; Мозырь; Солигорск; Новополоцк; Молодечно; Лида
Asia/Tashkent: Ташкент/Tashkent/Toshkent; Наманган; Андижан/Andijan; Фергана/Fergana; Бухара/Bukhara/Buxoro;
 Нукус/Nukus; Карши/Qarshi; Коканд/Kokand; Маргилан; Навои/Navoi; Джизак/Jizzakh; Термез/Termez; Ургенч/Urgench; Чирчик
Asia/Samarkand: Самарканд/Samarkand/Samarqand
Asia/Bishkek: Бишкек/Bishkek/Фрунзе; Ош/Osh; Джалал-Абад/Jalal-Abad; Каракол/Karakol; Токмок/Tokmok
Asia/Dushanbe: Душанбе/Dushanbe; Худжанд/Khujand/Ленинабад; Куляб/Kulob; Бохтар/Bokhtar/Курган-Тюбе; Истаравшан
Asia/Yerevan: Ереван/Yerevan; Гюмри/Gyumri; Ванадзор/Vanadzor
Asia/Tbilisi: Тбилиси/Tbilisi; Батуми/Batumi; Кутаиси/Kutaisi; Рустави/Rustavi
Asia/Baku: Баку/Baku; Гянджа/Ganja; Сумгаит/Sumgait
Europe/Chisinau: Кишинёв/Chisinau/Kishinev; Бельцы/Balti; Тирасполь/Tiraspol; Бендеры/Bender/Tighina
"""

_TRANSLIT = {
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ж": "zh", "з": "z", "и": "i",
    "й": "y", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r", "с": "s",
    "т": "t", "у": "u", "ф": "f", "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh", "щ": "shch", "ъ": "",
    "ы": "y", "ь": "", "э": "e", "ю": "yu", "я": "ya", "ө": "o", "ү": "u", "қ": "k", "ғ": "g",
    "ң": "n", "һ": "h", "і": "i", "ў": "u",
}

_PREFIX = re.compile(r"^(?:г|гор|город|city|city of|пгт|пос|п|с|ст|станица|село|деревня)\s+")
_SUFFIX = re.compile(r"\s+(?:г|гор|город|city)$")
_SEPARATORS = re.compile(r"[\s\-‐‑‒–—.'’ʼ`\"«»()]+")


def city_key(text: str) -> str:
    """Case-, ё- and punctuation-insensitive key: `г. Орёл`, `Орел г`, `ОРЁЛ` meet here."""
    key = _SEPARATORS.sub(" ", text.casefold().replace("ё", "е")).strip()
    key = _PREFIX.sub("", key)
    return _SUFFIX.sub("", key).strip()


def transliterate(text: str) -> str:
    return "".join(_TRANSLIT.get(char, char) for char in text.casefold().replace("ё", "е"))


def _builtin_cities() -> dict[str, str]:
    table: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", _CITY_TABLE.strip()):
        zone, _, cities = block.partition(":")
        for entry in cities.replace("\n", " ").split(";"):
            names = [name.strip() for name in entry.split("/") if name.strip()]
            if not names:
                continue
            keys = {city_key(name) for name in names} | {city_key(transliterate(names[0]))}
            for key in keys:
                table.setdefault(key, zone.strip())
    return table


BUILTIN_CITIES: Mapping[str, str] = _builtin_cities()


class CityTable:
    """Built-in cities overridden and extended by the workspace's `[cities]` settings."""

    _CACHE_LIMIT = 100_000

    def __init__(self, overrides: Mapping[str, str] | None = None) -> None:
        self._table = dict(BUILTIN_CITIES)
        for name, zone in (overrides or {}).items():
            self._table[city_key(name)] = zone
        self._seen: dict[str, str | None] = {}

    def zone(self, city: str) -> str | None:
        """The zone of `city`; `Россия, г. Москва` and `Свердловская обл., Екатеринбург` work too."""
        try:
            return self._seen[city]
        except KeyError:
            pass
        found = self._lookup(city)
        if len(self._seen) >= self._CACHE_LIMIT:
            self._seen.clear()
        self._seen[city] = found
        return found

    def _lookup(self, city: str) -> str | None:
        key = city_key(city)
        if key in self._table:
            return self._table[key]
        for part in re.split(r"[,;/]", city):
            part_key = city_key(part)
            if part_key in self._table:
                return self._table[part_key]
        return None


# --- phones ----------------------------------------------------------------------------------


_exact_cache: dict[tuple[str, int], tuple[str, ...]] = {}
_prefix_answers: dict[str, tuple[str, ...] | None] = {}
# Every proper prefix of a key of the zone data: a longest-prefix walk stops where none continues.
_PREFIX_STEMS = frozenset(key[:n] for key in TIMEZONE_DATA for n in range(1, len(key)))
# The number type (mobile, fixed line, toll free...) is decided by the leading national digits;
# six of them suffice for every region's patterns as far as tests/test_zones.py samples them.
_TYPE_DIGITS = 6


def _usable(names: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    known = _known_zones()
    return tuple(sorted({name for name in names or () if name.casefold() in known}))


def _data_prefix(digits: str) -> str:
    best = ""
    for length in range(1, min(len(digits), TIMEZONE_LONGEST_PREFIX) + 1):
        head = digits[:length]
        if head in TIMEZONE_DATA:
            best = head
        if head not in _PREFIX_STEMS:
            break
    return best


def _country_length(digits: str) -> int:
    for length in (1, 2, 3):
        if digits[:length].isdigit() and int(digits[:length]) in COUNTRY_CODE_TO_REGION_CODE:
            return length
    return 0


def _type_independent(prefix: str, digits: str) -> tuple[str, ...] | None:
    """The answer for every valid number under `prefix`, when the number type cannot change it.

    phonenumbers answers by the longest data prefix for geographic numbers and by the country
    code for the others; where both give the same list, the (costly) number type is not needed.
    """
    country_length = _country_length(digits)
    if not prefix or not country_length:
        return None
    country_prefix = _data_prefix(digits[:country_length])
    if country_prefix and TIMEZONE_DATA[country_prefix] == TIMEZONE_DATA[prefix]:
        return _usable(TIMEZONE_DATA[prefix])
    return None


def _phone_zones_uncached(phone: str) -> tuple[str, ...]:
    """The reference answer: phonenumbers itself."""
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return ()
    return _usable(_phone_tz.time_zones_for_number(number))


def _phone_zones_typed(digits: str, country_length: int) -> tuple[str, ...]:
    national = digits[country_length:]
    number = phonenumbers.PhoneNumber(
        country_code=int(digits[:country_length]), national_number=int(national)
    )
    return _usable(_phone_tz.time_zones_for_number(number))


_RU_MOBILE = re.compile(
    phonenumbers.PhoneMetadata.metadata_for_region("RU").mobile.national_number_pattern  # type: ignore[union-attr]
)


@lru_cache(maxsize=1)
def _ru_mobile_zones() -> tuple[str, ...]:
    """Russian mobiles are not geographic in phonenumbers: every zone of +7, whatever the digits."""
    return _phone_zones_uncached("+79123456789")


def phone_zones(phone: str) -> tuple[str, ...]:
    """Every zone the phone's prefix may mean, sorted.

    `phone` is a valid E.164 number (as import stores it).  Most answers depend on the data prefix
    alone; the rest (where the number type matters: +79… is mobile, so every zone of +7) are
    cached per (country code + first six national digits, length), which decides the type.
    """
    digits = phone[1:]
    if not phone.startswith("+") or not digits.isdigit():
        return ()
    if len(digits) == 11 and digits[0] == "7" and _RU_MOBILE.fullmatch(digits, 1):
        return _ru_mobile_zones()
    country_length = _country_length(digits)
    if not country_length:
        return ()
    if digits[country_length:country_length + 1] == "0":
        # A national number kept with its leading zero (Italy, some Finnish ranges) is not looked
        # up by its digits as written: only the full parse answers it right.
        return _phone_zones_uncached(phone)
    prefix = _data_prefix(digits)
    try:
        answer = _prefix_answers[prefix]
    except KeyError:
        answer = _prefix_answers[prefix] = _type_independent(prefix, digits)
    if answer is not None:
        return answer
    key = (phone[: 1 + country_length + _TYPE_DIGITS], len(phone))
    zones = _exact_cache.get(key)
    if zones is None:
        if len(_exact_cache) >= 65_536:
            _exact_cache.clear()
        zones = _exact_cache[key] = _phone_zones_typed(digits, country_length)
    return zones


# --- the order of SPEC 7 ---------------------------------------------------------------------


class ZoneResolver:
    """`candidate_zones` bound to one `[cities]` table (import builds one per file)."""

    def __init__(self, cities: Mapping[str, str] | None = None) -> None:
        self.cities = CityTable(cities)

    def guess(self, timezone: str | None, city: str | None, phone: str | None) -> ZoneGuess:
        zone = canonical_zone(timezone)
        if zone:
            return _single(zone, "column")
        if city:
            zone = self.cities.zone(city)
            if zone:
                return _single(zone, "city")
        if phone:
            zones = phone_zones(phone)
            if zones:
                return _guess(zones, "phone")
        return DEFAULT_GUESS


@lru_cache(maxsize=4096)
def _single(zone: str, source: str) -> ZoneGuess:
    return ZoneGuess((zone,), source)


@lru_cache(maxsize=4096)
def _guess(zones: tuple[str, ...], source: str) -> ZoneGuess:
    return ZoneGuess(zones, source)


_resolvers: dict[int, tuple[Mapping[str, str], ZoneResolver]] = {}


def _resolver(cities: Mapping[str, str]) -> ZoneResolver:
    """One resolver per settings mapping object (settings are loaded once and not mutated)."""
    entry = _resolvers.get(id(cities))
    if entry is not None and entry[0] is cities:
        return entry[1]
    if len(_resolvers) >= 16:
        _resolvers.clear()
    resolver = ZoneResolver(cities)
    _resolvers[id(cities)] = (cities, resolver)
    return resolver


_NO_CITIES: Mapping[str, str] = {}


def candidate_zones(
    timezone: str | None,
    city: str | None,
    phone: str | None,
    *,
    cities: Mapping[str, str] = _NO_CITIES,
) -> ZoneGuess:
    """The recipient's candidate zones and how they were found (SPEC 7 order)."""
    return _resolver(cities).guess(timezone, city, phone)
