"""How an SMS text is encoded and how many parts a gateway bills for it.

GSM 03.38: a text made only of the basic table (and the extension table, whose characters are sent
as an escape plus the character, two septets) goes as GSM-7, 160 septets in one part, 153 per part
of a concatenated message (the user data header takes the rest).  One character outside both tables
switches the whole message to UCS-2: 70 UTF-16 code units in one part, 67 per part; characters
outside the Basic Multilingual Plane (most emoji) are surrogate pairs, two units.

Parts are counted by packing, not by dividing: carriers never split an escape pair (GSM-7) or a
surrogate pair (UCS-2) across two parts, so a part may hold one unit less than its capacity and the
message may need one part more than ``ceil(units / 153)``.

An empty text is one part: an empty SMS is still a message that the gateway accepts and bills.

This runs once per recipient, so the character sets are frozensets built once and the common cases
(ASCII, single part, no escapes or surrogates) never loop in Python.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

GSM7 = "GSM-7"
UCS2 = "UCS-2"

GSM_SINGLE = 160
GSM_MULTI = 153
UCS2_SINGLE = 70
UCS2_MULTI = 67

_GSM_BASIC_TABLE = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
# The escape character itself (0x1B) is not text a template can meaningfully send.
GSM_BASIC: frozenset[str] = frozenset(_GSM_BASIC_TABLE) - {"\x1b"}
GSM_EXTENSION: frozenset[str] = frozenset("\f^{}\\[~]|€")
GSM_ALL: frozenset[str] = GSM_BASIC | GSM_EXTENSION

# A negated character class scans in C and stops at the first offending character, several times
# faster than frozenset.issuperset(text), which first builds a set from the text.
_OUTSIDE_BASIC = re.compile("[^" + re.escape("".join(sorted(GSM_BASIC))) + "]")
_OUTSIDE_GSM = re.compile("[^" + re.escape("".join(sorted(GSM_ALL))) + "]")


@dataclass(frozen=True)
class SmsInfo:
    encoding: str  # "GSM-7" | "UCS-2"
    units: int  # GSM-7 septets or UTF-16 code units
    parts: int


def sms_info(text: str) -> SmsInfo:
    """Encoding, length in billed units and number of parts of one SMS text."""
    if _OUTSIDE_BASIC.search(text) is None:
        units = len(text)
        return _info(GSM7, units, _parts_uniform(units, GSM_SINGLE, GSM_MULTI))
    if _OUTSIDE_GSM.search(text) is None:
        return _gsm_with_escapes(text)
    return _ucs2(text)


_INFOS: dict[tuple[str, int, int], SmsInfo] = {}


def _info(encoding: str, units: int, parts: int) -> SmsInfo:
    """Shared immutable results: building a frozen dataclass costs more than the counting."""
    key = (encoding, units, parts)
    info = _INFOS.get(key)
    if info is None:
        if len(_INFOS) > 100_000:
            _INFOS.clear()
        info = _INFOS[key] = SmsInfo(encoding, units, parts)
    return info


def _parts_uniform(units: int, single: int, multi: int) -> int:
    if units <= single:
        return 1
    return -(-units // multi)


def _gsm_with_escapes(text: str) -> SmsInfo:
    escapes = sum(1 for char in text if char in GSM_EXTENSION)
    units = len(text) + escapes
    if units <= GSM_SINGLE:
        return _info(GSM7, units, 1)
    costs = (2 if char in GSM_EXTENSION else 1 for char in text)
    return _info(GSM7, units, _pack(costs, GSM_MULTI))


def _ucs2(text: str) -> SmsInfo:
    units = len(text.encode("utf-16-le")) // 2
    if units == len(text) or units <= UCS2_SINGLE:
        return _info(UCS2, units, _parts_uniform(units, UCS2_SINGLE, UCS2_MULTI))
    costs = (2 if ord(char) > 0xFFFF else 1 for char in text)
    return _info(UCS2, units, _pack(costs, UCS2_MULTI))


def _pack(costs: Iterable[int], capacity: int) -> int:
    """Parts needed when no character (of cost 1 or 2) may straddle two parts."""
    parts, used = 1, 0
    for cost in costs:
        if used + cost > capacity:
            parts += 1
            used = 0
        used += cost
    return parts


def split_parts(text: str) -> list[str]:
    """The text cut the way a carrier cuts it (for previews and for checking the packing rule)."""
    info = sms_info(text)
    if info.parts == 1:
        return [text]
    if info.encoding == GSM7:
        capacity, cost_of = GSM_MULTI, (lambda char: 2 if char in GSM_EXTENSION else 1)
    else:
        capacity, cost_of = UCS2_MULTI, (lambda char: 2 if ord(char) > 0xFFFF else 1)
    pieces: list[str] = []
    start, used = 0, 0
    for index, char in enumerate(text):
        cost = cost_of(char)
        if used + cost > capacity:
            pieces.append(text[start:index])
            start, used = index, 0
        used += cost
    pieces.append(text[start:])
    return pieces
