"""Structured logs for the long-running commands, with customers' phones and emails masked.

One JSON object per line when not on a terminal (for log collectors), readable lines on one.
Masking is applied to the final text of every record, whatever code logged it (ours, dramatiq's,
APScheduler's, a channel's error message quoting an address): SPEC 12 says phone numbers and
emails never reach the logs.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

# Internationalized domains too (`anna@пример.рф`): `\w` is Unicode-aware.
_EMAIL = re.compile(r"([\w.%+\-])[\w.%+\-]*@((?:[\w\-]+\.)+[^\W\d_]{2,})")
_PHONE = re.compile(
    r"(?<![\w+])(\+\d|\d)(?:\d{8,13}|(?<=\+\d)[\d\s\-()]{8,18}|(?<=8)\s?\(\d{3}\)[\d\s\-]{5,10})(\d{2})(?![\w])"
)
# How people write Russian numbers by hand, which `_PHONE` misses: a trunk 8 or 7 with separators
# (`8 916 123 45 67`, `8-916-123-45-67`, `7 916 1234567`), and a mobile number without it
# (`(916) 123-45-67`, `916 123 45 67`, `9161234567`).  Ten digits starting with 9 are taken for a
# phone: Unix times (1.7e9) and our ids do not look like that.
_SEP = r"[\s\-.]?"
_PHONE_TRUNK = re.compile(rf"(?<![\w+])([78]){_SEP}\(?\d{{3}}\)?{_SEP}\d{{3}}{_SEP}\d{{2}}{_SEP}(\d{{2}})(?!\w)")
_PHONE_MOBILE = re.compile(rf"(?<![\w+(])\(?(9)\d{{2}}\)?{_SEP}\d{{3}}{_SEP}\d{{2}}{_SEP}(\d{{2}})(?!\w)")
_SECRET = re.compile(r"(?i)((?:password|passwd|psw|token|api_key|apikey|secret|api_id)[\"']?\s*[=:]\s*[\"']?)[^\s&\"',}]+")


def mask(text: str) -> str:
    """`+79161234567` → `+7*******67`; `ivan.petrov@mail.ru` → `i***@mail.ru`; `token=abc` → `token=***`."""
    text = _EMAIL.sub(r"\1***@\2", text)
    text = _PHONE.sub(lambda m: m.group(1) + "*" * 7 + m.group(2), text)
    for pattern in (_PHONE_TRUNK, _PHONE_MOBILE):
        text = pattern.sub(lambda m: m.group(1) + "*" * 7 + m.group(2), text)
    return _SECRET.sub(r"\1***", text)


class MaskingFormatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        if not self.as_json:
            return mask(super().format(record))
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask(record.getMessage()),
        }
        if record.exc_info:
            entry["error"] = mask(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "INFO", as_json: bool | None = None) -> None:
    """Configure the root logger once for a long-running command."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MaskingFormatter(as_json if as_json is not None else not sys.stderr.isatty()))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that log every request or job at INFO: a line per message costs more than the send.
    for noisy in ("apscheduler", "pika", "httpx", "httpcore", "aiosmtplib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
