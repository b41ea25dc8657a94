"""Settings: defaults, file/line/key errors, environment overrides, relative paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.settings import load_settings

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_example_settings_load_with_the_spec_defaults() -> None:
    settings = load_settings(REPO / "settings.toml", environ={})
    assert settings.general.timezone == "Europe/Moscow"
    assert str(settings.caps["email.promo"]) == "1/14d"
    assert settings.caps["sms"].period_seconds == 30 * 86400
    assert str(settings.quiet_hours.ranges["phone"]) == "19:00-10:00"
    assert settings.quiet_hours.phone_days_off == ("weekends", "holidays")
    assert settings.channel("sms").backend == "channels.outbox.Outbox"


def test_unknown_key_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[general]\ntimezone = "Europe/Moscow"\n\n[web]\nbase_url = "http://x"\nbase_ulr = "typo"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert str(caught.value) == f"{path}:6: web.base_ulr: unknown setting"
    assert caught.value.exit_code == 2


def test_bad_value_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[caps]\nsms = "1/30d"\n"email.promo" = "one per fortnight"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.line == 3
    assert caught.value.field == "caps.email.promo"
    assert "1/30d" in caught.value.message


def test_bad_zone_and_quiet_range(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r":2: general.timezone: 'Moscow' is not a time zone"):
        load_settings(write(tmp_path, '[general]\ntimezone = "Moscow"\n'), environ={})
    with pytest.raises(ConfigError, match=r":3: quiet_hours.sms: '21-9' is not a range"):
        load_settings(write(tmp_path, '[quiet_hours]\nemail = "22:00-08:00"\nsms = "21-9"\n'), environ={})


def test_toml_syntax_error_has_a_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"settings.toml:2: not valid TOML"):
        load_settings(write(tmp_path, '[general]\ntimezone = \n'), environ={})


def test_environment_overrides_win_and_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, '[general]\ntimezone = "Europe/Moscow"\n')
    settings = load_settings(path, environ={
        "ORCHESTRATOR_GENERAL_TIMEZONE": "Asia/Novosibirsk",
        "ORCHESTRATOR_GENERAL_SECRET_KEY": "s3cret",
        "ORCHESTRATOR_CHANNELS_SMS_BACKEND": "channels.outbox.Memory",
        "ORCHESTRATOR_PLANNER_BATCH_SIZE": "500",
    })
    assert settings.general.timezone == "Asia/Novosibirsk"
    assert settings.general.secret_key == "s3cret"
    assert settings.channel("sms").backend == "channels.outbox.Memory"
    assert settings.planner.batch_size == 500
    with pytest.raises(ConfigError, match="environment ORCHESTRATOR_PLANNER_BATCH_SIZE: planner.batch_size"):
        load_settings(path, environ={"ORCHESTRATOR_PLANNER_BATCH_SIZE": "lots"})


def test_sqlite_path_is_relative_to_the_settings_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\nurl = "sqlite:///var/x.db"\n')
    assert load_settings(path, environ={}).database_url == f"sqlite:///{tmp_path}/var/x.db"


def test_missing_explicit_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="settings file not found"):
        load_settings(tmp_path / "nope.toml", environ={})
