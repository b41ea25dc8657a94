"""The workspace settings (`settings.toml`, SPEC 2), validated on load.

Unknown keys and bad values are errors naming the file, the line and the key; any key can be
overridden by `ORCHESTRATOR_<SECTION>_<KEY>`; relative paths are relative to the settings file.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import time
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.errors import ConfigError

ENV_PREFIX = "ORCHESTRATOR_"
SETTINGS_ENV = "ORCHESTRATOR_SETTINGS"
CHANNEL_NAMES = ("sms", "email", "phone", "webhook")
CATEGORIES = ("promo", "content", "service", "transactional")

_CAP = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*([smhdw])\s*$")
_RANGE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_duration(text: str) -> int:
    """`48h`, `30d`, `90m`, `2w`, `15s` → seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", str(text))
    if not match:
        raise ValueError(f"'{text}' is not a duration like 24h, 30d or 90m")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def check_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file
        raise ValueError(f"'{name}' is not a time zone name (like Europe/Moscow)") from None
    return name


class General(_Section):
    timezone: str = "Europe/Moscow"
    country: str = "RU"
    secret_key: str = ""

    _zone = field_validator("timezone")(check_zone)

    @field_validator("country")
    @classmethod
    def _country(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Z]{2}", value):
            raise ValueError(f"'{value}' is not a two-letter country code (like RU)")
        return value


class Web(_Section):
    base_url: str = "http://127.0.0.1:8000"
    # Shared secret of the SMS gateway's status/inbound hooks; from ORCHESTRATOR_WEB_HOOK_SECRET.
    # Empty: the hooks refuse every call.
    hook_secret: str = ""
    session_lifetime: str = "12h"  # a login lasts this long without activity
    # Where worker processes write dramatiq's Prometheus metrics (prometheus_client multiprocess
    # files) for /metrics to collect; empty: $PROMETHEUS_MULTIPROC_DIR or $dramatiq_prom_db if set.
    metrics_dir: str = ""

    @field_validator("session_lifetime")
    @classmethod
    def _lifetime(cls, value: str) -> str:
        parse_duration(value)
        return value


class Database(_Section):
    url: str = "sqlite:///var/orchestrator.db"


class Broker(_Section):
    url: str = "memory://"
    # Where worker processes share per-channel rate limits: the Redis broker itself by default;
    # with RabbitMQ, a Redis url here (else each worker process keeps the rate on its own).
    rate_limit_url: str | None = None

    @property
    def rate_url(self) -> str | None:
        return self.rate_limit_url or (self.url if self.url.startswith(("redis://", "rediss://")) else None)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("memory://", "redis://", "rediss://", "amqp://", "amqps://")):
            raise ValueError("must start with memory://, redis:// or amqp://")
        return value


class CapSpec(BaseModel):
    """`N/period`: at most N messages in any rolling window of that length."""

    model_config = ConfigDict(frozen=True)
    limit: int
    period_seconds: int

    @classmethod
    def parse(cls, text: str) -> "CapSpec":
        match = _CAP.match(str(text))
        if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
            raise ValueError(f"'{text}' is not a cap like 1/30d (N messages per period)")
        limit, amount, unit = match.groups()
        return cls(limit=int(limit), period_seconds=int(amount) * _UNIT_SECONDS[unit])

    def __str__(self) -> str:
        days, rest = divmod(self.period_seconds, 86400)
        return f"{self.limit}/{days}d" if not rest else f"{self.limit}/{self.period_seconds}s"


DEFAULT_CAPS = {"sms": "1/30d", "email": "1/7d", "email.promo": "1/14d", "phone": "1/30d"}
DEFAULT_QUIET = {"sms": "21:00-09:00", "email": "22:00-08:00", "phone": "19:00-10:00"}


class QuietRange(BaseModel):
    """A half-open local-time range `start-end`; it may wrap over midnight."""

    model_config = ConfigDict(frozen=True)
    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> "QuietRange":
        match = _RANGE.match(str(text))
        if not match:
            raise ValueError(f"'{text}' is not a range like 21:00-09:00")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
            raise ValueError(f"'{text}' has an impossible time")
        return cls(start=time(h1, m1), end=time(0, 0) if h2 == 24 else time(h2, m2))

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def _check_cap(text: str) -> str:
    CapSpec.parse(text)
    return text


class QuietHoursSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    ranges: dict[str, QuietRange]
    phone_days_off: tuple[Literal["weekends", "holidays"], ...] = ("weekends", "holidays")


class ChannelSettings(BaseModel):
    """One `[channels.<name>]` table: a dotted-path backend and the backend's own options."""

    model_config = ConfigDict(extra="allow", frozen=True)
    backend: str
    rate: str | None = None

    @field_validator("backend")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", value):
            raise ValueError(f"'{value}' is not a dotted path like channels.outbox.Outbox")
        return value

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None and not _RATE.match(value):
            raise ValueError(f"'{value}' is not a rate like 30/s")
        return value

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ImportColumns(_Section):
    columns: dict[str, str] = Field(default_factory=dict)


class ImportSettings(_Section):
    customers: ImportColumns = ImportColumns()
    purchases: ImportColumns = ImportColumns()


class SleepingSettings(_Section):
    """How `sleep_score` turns into `is_sleeping` (docs/SLEEP_SCORE.md explains the formula)."""

    threshold: float = Field(2.0, gt=0)
    min_purchases: int = Field(2, ge=2)


class PlannerSettings(_Section):
    batch_size: int = Field(2000, ge=1, le=100_000)


class SegmentSettings(_Section):
    sql_timeout: str = "10s"

    @property
    def sql_timeout_seconds(self) -> int:
        return parse_duration(self.sql_timeout)

    @field_validator("sql_timeout")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value


class TemplateSettings(_Section):
    max_output_kb: int = Field(256, ge=1, le=10_000)


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


Duration = Annotated[str, AfterValidator(_check_duration)]


class DispatchSettings(_Section):
    """The pump and the workers (SPEC 8).  Retries and deferrals wait in the ledger, not the broker."""

    pump_interval: float = Field(1.0, gt=0, le=60, description="seconds between pump passes")
    pump_batch: int = Field(5000, ge=1, le=100_000, description="due rows moved per pump pass and channel")
    message_batch: int = Field(50, ge=1, le=1000, description="deliveries per broker message")
    max_queued: int = Field(20_000, ge=1, le=10_000_000,
                            description="rows of a channel waiting in the broker at most; more due rows wait in the ledger")
    requeue_after: Duration = "5m"    # queued but not claimed by then: enqueued again
    sending_lease: Duration = "10m"   # still `sending` after this: the worker died, outcome unknown
    retry_base: Duration = "30s"      # first retry of a transient error; doubles, with jitter
    retry_max: Duration = "1h"
    max_attempts: int = Field(6, ge=1, le=100)
    worker_threads: int = Field(2, ge=1, le=256)  # two overlap ledger and network best (docs/PERFORMANCE.md)
    processes: int = Field(1, ge=1, le=64, description="worker processes started by `worker`")

    def seconds(self, name: str) -> int:
        return parse_duration(getattr(self, name))


class SchedulerSettings(_Section):
    misfire_grace: Duration = "1h"    # a fire time missed while down is run late within this, else skipped
    reload_interval: Duration = "10s" # how often campaign files are checked for changes

    def seconds(self, name: str) -> int:
        return parse_duration(getattr(self, name))


class TasksSettings(_Section):
    """`[tasks]`: managers' call tasks, their digests and management control (SPEC 9).

    `managers` is a table login → {email, name, timezone}: the morning digest goes to `email` at
    `digest_time` in `timezone` (default: [general] timezone) on the manager's working days;
    `marketers` are the emails of the weekly digest of escalated tasks.
    """

    max_attempts: int = Field(3, ge=1, le=20)                 # no_answer tries, then the task is closed
    note_max_chars: int = Field(2000, ge=1, le=100_000)       # a longer outcome note is refused
    unsubscribe_channels: tuple[Literal["phone", "sms", "email"], ...] = ("phone", "sms", "email")
    orders_window_days: int = Field(30, ge=1, le=366)         # purchases this long after a call count for it
    no_contact_days: int = Field(90, ge=1, le=3650)           # a manager's client silent longer is listed
    no_contact_limit: int = Field(100, ge=0, le=100_000)      # clients listed per manager (all are counted)
    escalate_after_working_days: int = Field(2, ge=0, le=365)
    digest_time: str = "08:00"                                # morning digest, the manager's local time
    escalation_digest_day: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = "mon"
    escalation_digest_time: str = "09:00"                     # in [general] timezone
    digest_grace: Duration = "4h"                             # a digest not sent by then is skipped
    managers: dict[str, dict[str, str]] = Field(default_factory=dict)
    marketers: tuple[str, ...] = ()

    @field_validator("digest_time", "escalation_digest_time")
    @classmethod
    def _clock_time(cls, value: str) -> str:
        match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", str(value))
        if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
            raise ValueError(f"'{value}' is not a time like 08:00")
        return f"{int(match.group(1)):02d}:{match.group(2)}"

    @field_validator("escalation_digest_day", mode="before")
    @classmethod
    def _day(cls, value: Any) -> Any:
        return value.strip().lower()[:3] if isinstance(value, str) else value

    @field_validator("managers")
    @classmethod
    def _managers(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for login, entry in value.items():
            unknown = sorted(set(entry) - {"email", "name", "timezone"})
            if unknown:
                raise ValueError(f"'{login}': unknown key '{unknown[0]}' (email, name, timezone)")
            if entry.get("email") and not re.fullmatch(r"[^@\s<>,]+@[^@\s<>,]+\.[^@\s<>,]+", entry["email"]):
                raise ValueError(f"'{login}': '{entry['email']}' is not an email address")
            if entry.get("timezone"):
                try:
                    check_zone(entry["timezone"])
                except ValueError as error:
                    raise ValueError(f"'{login}': {error}") from None
        return value

    @field_validator("marketers")
    @classmethod
    def _marketers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for email in value:
            if not re.fullmatch(r"[^@\s<>,]+@[^@\s<>,]+\.[^@\s<>,]+", email):
                raise ValueError(f"'{email}' is not an email address")
        return value

    def seconds(self, name: str) -> int:
        return parse_duration(getattr(self, name))


class SettingsModel(_Section):
    general: General = General()
    web: Web = Web()
    database: Database = Database()
    broker: Broker = Broker()
    caps: dict[str, Annotated[str, AfterValidator(_check_cap)]] = Field(
        default_factory=lambda: dict(DEFAULT_CAPS)
    )
    quiet_hours: dict[str, Any] = Field(default_factory=dict)
    channels: dict[str, ChannelSettings] = Field(default_factory=dict)
    import_: ImportSettings = Field(ImportSettings(), alias="import")
    sleeping: SleepingSettings = SleepingSettings()
    planner: PlannerSettings = PlannerSettings()
    segments: SegmentSettings = SegmentSettings()
    templates: TemplateSettings = TemplateSettings()
    dispatch: DispatchSettings = DispatchSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    tasks: TasksSettings = TasksSettings()
    cities: dict[str, str] = Field(default_factory=dict)

    @field_validator("caps")
    @classmethod
    def _caps(cls, value: dict[str, str]) -> dict[str, str]:
        for key, spec in value.items():
            channel, _, category = key.partition(".")
            if channel not in CHANNEL_NAMES:
                raise ValueError(f"'{key}': unknown channel '{channel}'")
            if category and category not in CATEGORIES:
                raise ValueError(f"'{key}': unknown category '{category}'")
        return {**DEFAULT_CAPS, **value}

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, spec in value.items():
            if key == "phone_days_off":
                if not isinstance(spec, list) or any(d not in ("weekends", "holidays") for d in spec):
                    raise ValueError("phone_days_off: a list of 'weekends' and 'holidays'")
            elif key not in CHANNEL_NAMES:
                raise ValueError(f"'{key}': unknown channel")
            else:
                try:
                    QuietRange.parse(spec)
                except ValueError as error:
                    raise ValueError(f"'{key}': {error}") from None
        return value

    @field_validator("cities")
    @classmethod
    def _cities(cls, value: dict[str, str]) -> dict[str, str]:
        for city, zone in value.items():
            try:
                check_zone(zone)
            except ValueError as error:
                raise ValueError(f"'{city}': {error}") from None
        return value


class Settings:
    """Validated settings plus the workspace folder they belong to."""

    def __init__(self, model: SettingsModel, path: Path | None) -> None:
        self.model = model
        self.path = path
        self.root = path.parent if path else Path.cwd()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    @property
    def import_settings(self) -> ImportSettings:
        """`[import]`: `import` is a Python keyword, so the model calls it `import_`."""
        return self.model.import_

    def resolve(self, relative: str | Path) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else self.root / path

    @property
    def database_url(self) -> str:
        """SQLite paths are relative to the settings file, like every other path."""
        url = self.model.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str(self.resolve(url[len(prefix):]))
        return url

    @cached_property
    def caps(self) -> dict[str, CapSpec]:
        return {key: CapSpec.parse(spec) for key, spec in self.model.caps.items()}

    @cached_property
    def quiet_hours(self) -> QuietHoursSettings:
        raw = {**DEFAULT_QUIET, **self.model.quiet_hours}
        days_off = tuple(raw.pop("phone_days_off", ("weekends", "holidays")))
        return QuietHoursSettings(
            ranges={k: QuietRange.parse(v) for k, v in raw.items()}, phone_days_off=days_off
        )

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def segments_dir(self) -> Path:
        return self.root / "segments"

    @property
    def campaigns_dir(self) -> Path:
        return self.root / "campaigns"

    def channel(self, name: str) -> ChannelSettings | None:
        return self.model.channels.get(name)


# --- loading --------------------------------------------------------------------------------


def _key_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """Line of `loc` (section path + key) in TOML text; settings are small, a scan is enough."""
    lines = text.splitlines()
    names = [str(part) for part in loc]
    if not names:
        return None
    # Try "[a.b]\nkey" first, then dotted keys inside a parent table.
    for split in range(len(names) - 1, -1, -1):
        table, keys = names[:split], names[split:]
        current: list[str] = []
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            header = re.match(r"^\[\s*([^\]]+?)\s*\]$", line)
            if header:
                current = [p.strip().strip('"') for p in re.split(r"\.(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", header.group(1))]
                continue
            if current != table:
                continue
            key = re.match(r'^("([^"]+)"|[\w\-]+)\s*=', line)
            if key and (key.group(2) or key.group(1)) == keys[0]:
                return number
        if split < len(names) - 1 and table:
            pass
    for number, raw in enumerate(lines, 1):
        if re.match(r"^\[\s*" + re.escape(".".join(names)) + r"\s*\]$", raw.strip()):
            return number
    return None


def _env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> list[tuple[str, tuple[str, ...]]]:
    """Apply ORCHESTRATOR_<SECTION>_<KEY> variables; returns (variable, loc) for error messages."""
    sections: set[tuple[str, ...]] = set()
    for name, value in SettingsModel.model_fields.items():
        sections.add((value.alias or name,))
    for name, table in data.items():
        if isinstance(table, dict):
            sections.add((name,))
            for sub, inner in table.items():
                if isinstance(inner, dict):
                    sections.add((name, sub))
    for channel in CHANNEL_NAMES:
        sections.add(("channels", channel))
    applied = []
    ordered = sorted(sections, key=lambda s: -len("_".join(s)))
    for variable, value in environ.items():
        if not variable.startswith(ENV_PREFIX) or variable == SETTINGS_ENV:
            continue
        rest = variable[len(ENV_PREFIX):].lower()
        for section in ordered:
            prefix = "_".join(section) + "_"
            if rest.startswith(prefix) and len(rest) > len(prefix):
                key = rest[len(prefix):]
                target = data
                for part in section:
                    target = target.setdefault(part, {}) if isinstance(target, dict) else None
                if not isinstance(target, dict):
                    break  # the file has a value where a table belongs: its own error follows
                target[key] = _env_value(value)
                applied.append((variable, section + (key,)))
                break
    return applied


def _env_value(text: str) -> Any:
    """Environment values are text; TOML syntax (numbers, booleans, lists) is honoured when valid."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return text


def find_settings_path(config: str | Path | None) -> Path | None:
    if config:
        return Path(config)
    if os.environ.get(SETTINGS_ENV):
        return Path(os.environ[SETTINGS_ENV])
    default = Path("settings.toml")
    return default if default.exists() else None


def load_settings(config: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load, override from the environment, validate.  A missing default file means defaults."""
    environ = os.environ if environ is None else environ
    path = find_settings_path(config)
    text = ""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("settings file not found", file=path) from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read the settings file: {error}", file=path) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            match = re.search(r"\(at line (\d+), column \d+\)", str(error))
            message = re.sub(r"\s*\(at line.*\)", "", str(error))
            raise ConfigError(
                f"not valid TOML: {message}", file=path, line=int(match.group(1)) if match else None
            ) from None
        except RecursionError:
            raise ConfigError("not valid TOML: nested too deeply", file=path) from None
    applied = _env_overrides(data, environ)
    try:
        model = SettingsModel.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        loc = tuple("import" if p == "import_" else p for p in loc)
        message = first["msg"].removeprefix("Value error, ")
        named_key = re.match(r"^'([^']+)': ", message)
        if named_key and len(loc) == 1:
            loc = loc + (named_key.group(1),)
            message = message[named_key.end():]
        if first["type"] == "extra_forbidden":
            message = "unknown setting"
        for variable, env_loc in applied:
            if tuple(str(p) for p in env_loc[: len(loc)]) == tuple(str(p) for p in loc):
                raise ConfigError(message, file=f"environment {variable}", field=".".join(map(str, loc))) from None
        raise ConfigError(
            message, file=path or "settings", line=_key_line(text, loc), field=".".join(map(str, loc))
        ) from None
    return Settings(model, path.resolve() if path else None)
