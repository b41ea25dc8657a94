"""Reading CRM exports: encoding and delimiter detection, a checking pass, and streaming records.

The whole file is checked (decodes, parses as CSV) *before* the import writes anything, so that an
unusable file has no partial effect (SPEC 12); the check costs one C-speed pass over the file.
Records carry the physical line on which they start: a quoted field may span lines, and the
marketer opens the file in an editor, not in a CSV parser.
"""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from orchestrator.errors import ImportFileError

SAMPLE_BYTES = 256 * 1024
FIELD_LIMIT = 1024 * 1024
DELIMITERS = (",", ";", "\t")
ENCODING_NAMES = {
    "utf-8": "utf-8", "utf8": "utf-8", "utf-8-sig": "utf-8-sig",
    "cp1251": "cp1251", "windows-1251": "cp1251", "win1251": "cp1251", "1251": "cp1251",
}
_CP1251_PLAUSIBLE = frozenset(
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ"
    "№«»–—‘’“”„…•\u00a0°±§©®™€"
    "іІїЇєЄўЎґҐ"
)

csv.field_size_limit(FIELD_LIMIT)


@dataclass(frozen=True)
class CsvSource:
    path: Path
    encoding: str
    delimiter: str
    size: int
    header: tuple[str, ...]
    has_nul: bool = False


def open_csv(path: Path, *, encoding: str | None = None, delimiter: str | None = None) -> CsvSource:
    """Detect (or take) the encoding and delimiter, then check the whole file; nothing is written."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            sample = handle.read(SAMPLE_BYTES)
    except FileNotFoundError:
        raise ImportFileError("file not found", file=path) from None
    except IsADirectoryError:
        raise ImportFileError("is a folder, not a CSV file", file=path) from None
    except OSError as error:
        raise ImportFileError(f"cannot read the file: {error.strerror or error}", file=path) from None
    if not sample.strip(b" \t\r\n\xef\xbb\xbf"):
        raise ImportFileError("the file is empty", file=path)
    codec = _given_encoding(encoding, path) if encoding else detect_encoding(sample, path)
    header_line = _first_line(sample, codec)
    if delimiter is not None:
        delimiter = _given_delimiter(delimiter, path)
    else:
        delimiter = detect_delimiter(header_line)
    header = _check(path, codec, delimiter)
    return CsvSource(path, codec, delimiter, size, header, _has_nul(path, codec))


def _has_nul(path: Path, codec: str) -> bool:
    """Whether any record can hold a NUL (which no database text column takes); rows are checked
    only when the bytes say so, which spares the common file a per-cell scan."""
    if codec.startswith("utf-16"):
        return True
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            if b"\x00" in chunk:
                return True
    return False


def _given_encoding(name: str, path: Path) -> str:
    key = name.strip().lower().replace("_", "-")
    if key in ENCODING_NAMES:
        return ENCODING_NAMES[key]
    try:
        return codecs.lookup(key).name
    except LookupError:
        raise ImportFileError(f"unknown encoding {name!r} (try utf-8 or cp1251)", file=path) from None


def _given_delimiter(text: str, path: Path) -> str:
    aliases = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";"}
    value = aliases.get(text.lower(), text)
    if len(value) != 1 or value in "\"\r\n":
        raise ImportFileError(f"the delimiter must be one character, not {text!r}", file=path)
    return value


def detect_encoding(sample: bytes, path: Path) -> str:
    """UTF-8 (with or without BOM) whenever the bytes are valid UTF-8, else Windows-1251.

    Valid UTF-8 with Cyrillic is never valid-looking cp1251 text and vice versa is rare, but the
    order matters: UTF-8 is tried strictly first, so a UTF-8 file is never misread as cp1251.
    """
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if sample.count(b"\x00") > len(sample) // 10:
        raise ImportFileError(
            "this is not a text CSV file (binary data or UTF-16 without a byte order mark)", file=path
        )
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=len(sample) < SAMPLE_BYTES)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    text = sample.decode("cp1251", errors="replace")
    high = [char for char in text if ord(char) > 127]
    if high and sum(char in _CP1251_PLAUSIBLE for char in high) >= 0.9 * len(high):
        return "cp1251"
    raise ImportFileError(
        "the file is neither UTF-8 nor Windows-1251: give the encoding with --encoding", file=path
    )


def _first_line(sample: bytes, codec: str) -> str:
    try:
        text = sample.decode(codec, errors="replace")
    except UnicodeError:  # utf-16 without a byte order mark fails even with errors="replace"
        return ""
    return text.lstrip("\ufeff").splitlines()[0] if text.strip() else ""


def detect_delimiter(header_line: str) -> str:
    """The candidate that splits the header into the most columns (`,` on a tie; a one-column
    file has no delimiter to find and reads the same with any)."""
    counts = {d: _split_count(header_line, d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: (counts[d], d == ","))
    return best


def _split_count(line: str, delimiter: str) -> int:
    try:
        return len(next(csv.reader([line], delimiter=delimiter)))
    except (csv.Error, StopIteration):
        return 0


def _text(path: Path, codec: str) -> io.TextIOWrapper:
    return io.TextIOWrapper(path.open("rb"), encoding=codec, errors="strict", newline="")


def _check(path: Path, codec: str, delimiter: str) -> tuple[str, ...]:
    """Decode and parse the whole file once; returns the header."""
    header: list[str] | None = None
    reader = None
    try:
        with _text(path, codec) as stream:
            reader = csv.reader(stream, delimiter=delimiter)
            for row in reader:
                if header is None:
                    if row and any(cell.strip() for cell in row):
                        header = row
                    continue
    except UnicodeError as error:  # UnicodeDecodeError, or utf-16 without a byte order mark
        line = _line_of_bad_byte(path, codec)
        reason = getattr(error, "reason", None) or str(error)
        raise ImportFileError(
            f"bytes that are not {codec} ({reason}): give the encoding with --encoding",
            file=path, line=line,
        ) from None
    except csv.Error as error:
        line = reader.line_num if reader is not None else None
        reason = str(error)
        if "field larger than field limit" in reason:
            reason = "a field longer than 1 MB: probably a quote opened here is never closed"
        raise ImportFileError(f"not a readable CSV file: {reason}", file=path, line=line) from None
    if header is None:
        raise ImportFileError("the file has no header line", file=path)
    return tuple(header)


def _line_of_bad_byte(path: Path, codec: str) -> int | None:
    decoder = codecs.getincrementaldecoder(codec)(errors="strict")
    offset = 0
    line = 1
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeError as error:
                position = max(0, getattr(error, "start", 0))
                return line + chunk[:position].count(b"\n")
            line += chunk.count(b"\n")
            offset += len(chunk)
    return None


@dataclass(slots=True)
class Record:
    line: int
    last_line: int
    cells: list[str]


def records(
    source: CsvSource,
    progress: Callable[[int, int], None] | None = None,
    every: int = 4096,
) -> Iterator[Record]:
    """Data records after the header, with their first and last physical line; blank records
    (nothing but delimiters) are skipped."""
    raw = source.path.open("rb")
    with io.TextIOWrapper(raw, encoding=source.encoding, errors="strict", newline="") as stream:
        reader = csv.reader(stream, delimiter=source.delimiter)
        previous_end = 0
        for cells in reader:
            previous_end = reader.line_num
            if not _blank(cells):
                break
        count = 0
        for cells in reader:
            start, previous_end = previous_end + 1, reader.line_num
            first = cells[0] if cells else ""
            if (not first or first.isspace()) and _blank(cells):
                continue
            yield Record(start, previous_end, cells)
            count += 1
            if count == every:
                count = 0
                if progress is not None:
                    progress(raw.tell(), source.size)
    if progress is not None:
        progress(source.size, source.size)


def _blank(cells: list[str]) -> bool:
    """Nothing but delimiters and white space (spreadsheets end exports with such rows)."""
    return not "".join(cells).strip()
