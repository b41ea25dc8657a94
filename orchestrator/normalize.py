"""Cell values of CRM exports → typed values (SPEC 3).  Pure functions; bad values raise ValueError.

The import runs these a million times per file, so the common shapes (a Russian mobile number, a
plain ASCII email, a date seen before) take a fast path that a property test holds equal to the
reference libraries (phonenumbers, email-validator); anything unusual goes to the library itself.
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache
from typing import Callable

import phonenumbers
from email_validator import EmailNotValidError, validate_email

# --- booleans --------------------------------------------------------------------------------

TRUE_WORDS = frozenset({"yes", "true", "1", "да", "y", "д", "истина"})
FALSE_WORDS = frozenset({"no", "false", "0", "нет", "n", "н", "ложь"})


def parse_bool(text: str) -> bool:
    """yes/no/1/0/true/false/да/нет, any case; empty means no (consent is opt-in)."""
    try:
        return BOOL_CELLS[text]
    except KeyError:
        pass
    word = text.strip().casefold()
    if not word or word in FALSE_WORDS:
        return False
    if word in TRUE_WORDS:
        return True
    raise ValueError(f"{_show(text)} is not yes/no (yes, no, 1, 0, true, false, да, нет)")


BOOL_CELLS = {
    variant: value
    for words, value in ((TRUE_WORDS, True), (FALSE_WORDS, False))
    for word in words
    for variant in (word, word.upper(), word.capitalize())
} | {"": False}


# --- numbers ---------------------------------------------------------------------------------

_PLAIN_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
# Either plain digits or groups of three separated by one kind of (no-break) space, apostrophe,
# dot or comma; then an optional decimal part after a dot or comma that is not the grouping mark.
_GROUPED_NUMBER = re.compile(
    r"([+-]?)(\d+|\d{1,3}([ \u00a0\u202f\u2009'.,])\d{3}(?:\3\d{3})*)(?:([.,])(\d+))?"
)


def _clean_number(text: str) -> str | None:
    """`1 234,50` / `1.234,50` / `1,234.50` → `1234.50`; None when it is not a number.

    A lone comma or dot is the decimal mark (`1,234` is 1.234, as a Russian reader means it).
    """
    match = _GROUPED_NUMBER.fullmatch(text.strip().replace("\u2212", "-"))
    if not match:
        return None
    sign, integer, grouping, decimal_mark, fraction = match.groups()
    if grouping and grouping == decimal_mark:
        return None
    if grouping:
        integer = integer.replace(grouping, "")
    return f"{sign}{integer}.{fraction}" if fraction else f"{sign}{integer}"


_SIMPLE_DECIMAL = re.compile(r"[+-]?\d+(?:[.,]\d+)?")


def parse_decimal(text: str) -> float:
    """A finite number; decimal comma and (no-break) space grouping accepted."""
    if _SIMPLE_DECIMAL.fullmatch(text):
        return float(text.replace(",", "."))
    s = text.strip()
    if not _PLAIN_NUMBER.fullmatch(s):
        cleaned = _clean_number(s)
        if cleaned is None:
            raise ValueError(f"{_show(text)} is not a number")
        s = cleaned
    return float(s)


def parse_positive_int(text: str) -> int:
    s = text.strip()
    if not s.isdigit() or int(s) < 1:
        raise ValueError(f"{_show(text)} is not a positive whole number")
    return int(s)


# --- dates -----------------------------------------------------------------------------------

_TIME = r"(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
_ISO_DATE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})" + _TIME)
_RU_DATE = re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{4})" + _TIME)
_RU_SHORT_YEAR = re.compile(r"\d{1,2}\.\d{1,2}\.\d{2}" + _TIME)
_DAY_MONTH = re.compile(r"(\d{1,2})\.(\d{1,2})|--(\d{1,2})-(\d{1,2})")
MIN_YEAR, MAX_YEAR = 1900, 2100


@lru_cache(maxsize=65_536)
def parse_date(text: str) -> date:
    """ISO `2026-11-22` or Russian `22.11.2026` (a time part, as 1C writes it, is ignored).

    Two-digit years (`22.11.26`) are refused: for a birthday `56` is 1956 or 2056, and a guess
    that is wrong by a century is worse than a reported problem.
    """
    s = text.strip()
    match = _ISO_DATE.fullmatch(s)
    if match:
        year, month, day = (int(g) for g in match.groups())
    else:
        match = _RU_DATE.fullmatch(s)
        if not match:
            if _RU_SHORT_YEAR.fullmatch(s):
                raise ValueError(f"{_show(text)}: write the year in full (22.11.2026)")
            raise ValueError(f"{_show(text)} is not a date (2026-11-22 or 22.11.2026)")
        day, month, year = (int(g) for g in match.groups())
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise ValueError(f"{_show(text)}: the year is out of range")
    try:
        return date(year, month, day)
    except ValueError:
        raise ValueError(f"{_show(text)} is not a calendar date") from None


def parse_birthday(text: str, today: date | None = None) -> tuple[date | None, int, int]:
    """(birthday, month, day); `22.11` or `--11-22` gives a birthday without a year."""
    value, month, day = _birthday(text)
    if value is not None and value > (today or date.today()):
        raise ValueError(f"{_show(text)} is in the future")
    return value, month, day


@lru_cache(maxsize=65_536)
def _birthday(text: str) -> tuple[date | None, int, int]:
    match = _DAY_MONTH.fullmatch(text.strip())
    if match:
        day = int(match.group(1) or match.group(4))
        month = int(match.group(2) or match.group(3))
        try:
            date(2000, month, day)
        except ValueError:
            raise ValueError(f"{_show(text)} is not a calendar date") from None
        return None, month, day
    value = parse_date(text)
    return value, value.month, value.day


# --- phones ----------------------------------------------------------------------------------

_PHONE_JUNK = str.maketrans("", "", " \u00a0\u202f\t()-.")


def _type_patterns(region: str) -> tuple[re.Pattern[str], tuple[re.Pattern[str], ...]]:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    assert metadata is not None and metadata.general_desc is not None
    descs = (  # validity only: any type will do, so the common ones first
        metadata.mobile, metadata.fixed_line, metadata.premium_rate, metadata.toll_free,
        metadata.shared_cost, metadata.voip, metadata.personal_number, metadata.pager,
        metadata.uan, metadata.voicemail,
    )
    return (
        re.compile(metadata.general_desc.national_number_pattern or "(?!)"),
        tuple(re.compile(d.national_number_pattern) for d in descs if d and d.national_number_pattern),
    )


_RU_GENERAL, _RU_TYPES = _type_patterns("RU")
# The same test in one match: the general pattern as a lookahead over the whole number, then any
# type (fullmatch backtracks through the alternatives as `any` would try them).
_RU_VALID = re.compile(
    rf"(?=(?:{_RU_GENERAL.pattern})\Z)(?:{'|'.join(f'(?:{p.pattern})' for p in _RU_TYPES)})"
)


def _ru_fast(raw: str) -> str | None:
    """E.164 for the everyday shapes of a Russian number (`8 (912) 345-67-89`, `+7 343 …`,
    `9123456789`), or None to ask phonenumbers.  A ten-digit national number that matches one of
    Russia's number types is valid and Russian: +7 is shared with Kazakhstan, but Russia is the
    first region phonenumbers tries, so only numbers Russia does not claim are left to it.
    """
    s = raw.translate(_PHONE_JUNK)
    if s.startswith("+7"):
        national = s[2:]
    elif len(s) == 11 and s[0] in "78":
        national = s[1:]
    elif len(s) == 10 and s[0] != "8":
        national = s
    else:
        return None
    if len(national) == 10 and national.isdigit() and national.isascii():
        if _RU_VALID.fullmatch(national):
            return "+7" + national
    return None


_SHORT_DIGITS = re.compile(r"\d{0,9}")


class PhoneNormalizer:
    """Raw phone text → E.164, with the settings' country as the default region."""

    def __init__(self, region: str) -> None:
        self.region = region.upper()
        self._fast: Callable[[str], str | None] | None = _ru_fast if self.region == "RU" else None

    def __call__(self, raw: str) -> str:
        if self._fast is not None:
            fast = self._fast(raw)
            if fast is not None:
                return fast
            if _SHORT_DIGITS.fullmatch(raw.translate(_PHONE_JUNK)):
                # Fewer than ten digits and no `+`: too short for any Russian number, and without
                # the international prefix it cannot name another country either.
                raise ValueError("not a valid phone number")
        return self.slow(raw)

    def slow(self, raw: str) -> str:
        """The reference: phonenumbers.parse + is_valid_number."""
        try:
            number = phonenumbers.parse(raw, self.region)
        except phonenumbers.NumberParseException:
            raise ValueError("not a phone number") from None
        if not phonenumbers.is_valid_number(number):
            raise ValueError("not a valid phone number")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# --- emails ----------------------------------------------------------------------------------

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_FAST_EMAIL = re.compile(
    rf"({_ATEXT}+(?:\.{_ATEXT}+)*)@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?\.)+[A-Za-z]{{2,63}})"
)
_SPECIAL_TLDS = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})


def _email_fast(text: str) -> str | None:
    """The normalized address for plain ASCII addresses email-validator accepts, else None."""
    match = _FAST_EMAIL.fullmatch(text)
    if not match:
        return None
    local, domain = match.groups()
    if len(local) > 64 or len(domain) > 253 or len(text) > 254 or "--" in domain:
        return None
    domain = domain.lower()
    if domain.rsplit(".", 1)[1] in _SPECIAL_TLDS:
        return None
    return f"{local}@{domain}"


def normalize_email(text: str) -> str:
    """A syntactically valid address, domain lower-cased (no DNS lookups: imports must be fast)."""
    s = text.strip()
    fast = _email_fast(s)
    if fast is not None:
        return fast
    try:
        return validate_email(s, check_deliverability=False).normalized
    except EmailNotValidError as error:
        raise ValueError(f"not a valid email address ({error})") from None


# --- custom attributes ------------------------------------------------------------------------

_INTEGER = re.compile(r"[+-]?(?:0|[1-9]\d{0,14})")
_DATE_SHAPE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}.*|\d{1,2}\.\d{1,2}\.\d{4}.*")


def typed_attribute(text: str, limit: int) -> tuple[object, bool]:
    """(JSON value, truncated?) of a custom attribute cell; None means "absent".

    Attribute columns repeat their values (levels, regions, dates), so short cells are cached.
    """
    if len(text) <= 64:
        return _typed_short(text, limit)
    return _typed(text, limit)


@lru_cache(maxsize=65_536)
def _typed_short(text: str, limit: int) -> tuple[object, bool]:
    return _typed(text, limit)


def _typed(text: str, limit: int) -> tuple[object, bool]:
    """Whole numbers with a leading zero (`007`, codes) or of more than 15 digits (INN, cards) stay
    text: turning them into numbers would lose digits.
    """
    s = text.strip()
    if not s:
        return None, False
    word = s.casefold()
    if word in _ATTR_TRUE:
        return True, False
    if word in _ATTR_FALSE:
        return False, False
    if _INTEGER.fullmatch(s):
        return int(s), False
    if s[0] != "0" or s[:2] in ("0,", "0."):
        cleaned = _clean_number(s)
        if cleaned is not None and len(cleaned.lstrip("+-").replace(".", "")) <= 15:
            return (float(cleaned) if "." in cleaned else int(cleaned)), False
    if _DATE_SHAPE.fullmatch(s):
        try:
            return parse_date(s).isoformat(), False
        except ValueError:
            pass
    if len(s) > limit:
        return s[:limit], True
    return s, False


_ATTR_TRUE = frozenset({"yes", "true", "да"})
_ATTR_FALSE = frozenset({"no", "false", "нет"})


def _show(text: str, limit: int = 40) -> str:
    """A bad value quoted for a report line, cut to a readable length."""
    s = text.strip()
    return repr(s if len(s) <= limit else s[:limit] + "…")
