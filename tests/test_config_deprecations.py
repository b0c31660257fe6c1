"""Renamed settings keep working for a while: the old key is read, with a warning at load."""

from __future__ import annotations

import logging

import pytest

from sessiongate.config import ConfigError, load_settings
from test_cli import run_cli, write_config

DEPRECATED = "upstream.strip_session_cookie is deprecated"


def load(tmp_path, upstream: dict[str, object], environ: dict[str, str] | None = None):
    path = write_config(tmp_path / "c.yaml", {"upstream": upstream})
    return load_settings(path, environ or {})


@pytest.mark.parametrize("old", [True, False])
def test_the_old_strip_session_cookie_is_honoured_with_a_warning(tmp_path, caplog, old) -> None:
    with caplog.at_level(logging.WARNING, logger="sessiongate.config"):
        settings = load(tmp_path, {"strip_session_cookie": old})
    assert settings.upstream.strip_credentials is old
    assert settings.upstream.strip_session_cookie is old  # code reading the old name
    assert DEPRECATED in caplog.text
    assert "strip_credentials" in caplog.text


def test_the_new_key_wins_over_the_old_one(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="sessiongate.config"):
        settings = load(tmp_path, {"strip_session_cookie": False, "strip_credentials": True})
    assert settings.upstream.strip_credentials is True
    assert "ignored" in caplog.text


def test_the_old_key_works_as_an_environment_override(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="sessiongate.config"):
        settings = load(tmp_path, {}, {"SESSIONGATE_UPSTREAM__STRIP_SESSION_COOKIE": "false"})
    assert settings.upstream.strip_credentials is False
    assert DEPRECATED in caplog.text


def test_no_warning_without_the_old_key(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="sessiongate.config"):
        assert load(tmp_path, {"strip_credentials": False}).upstream.strip_credentials is False
        assert load(tmp_path, {}).upstream.strip_credentials is True
    assert caplog.text == ""


def test_check_config_shows_the_deprecation(tmp_path) -> None:
    path = write_config(tmp_path / "old.yaml", {"upstream": {"strip_session_cookie": False}})
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert DEPRECATED in result.stderr


# -- log_level → log.level ----------------------------------------------------------------------
LOG_LEVEL_DEPRECATED = "log_level is deprecated"


def load_top(tmp_path, data: dict[str, object], environ: dict[str, str] | None = None):
    return load_settings(write_config(tmp_path / "c.yaml", data), environ or {})


def test_the_old_log_level_is_honoured_with_a_warning(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="sessiongate.config"):
        settings = load_top(tmp_path, {"log_level": "warning", "log": {"format": "json"}})
    assert settings.log.level == "warning"
    assert settings.log_level == "warning"  # code reading the old name
    assert settings.log.format == "json"  # the rest of the section stays
    assert LOG_LEVEL_DEPRECATED in caplog.text
    assert "log.level" in caplog.text


def test_log_level_loses_to_log_level_s_new_key(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="sessiongate.config"):
        settings = load_top(tmp_path, {"log_level": "debug", "log": {"level": "error"}})
    assert settings.log.level == "error"
    assert "ignored" in caplog.text


def test_the_old_log_level_as_an_environment_override(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="sessiongate.config"):
        settings = load_top(tmp_path, {}, {"SESSIONGATE_LOG_LEVEL": "DEBUG"})
    assert settings.log.level == "debug"
    assert LOG_LEVEL_DEPRECATED in caplog.text
    with caplog.at_level(logging.WARNING, logger="sessiongate.config"):
        caplog.clear()
        settings = load_top(tmp_path, {}, {"SESSIONGATE_LOG__LEVEL": "error"})
    assert settings.log.level == "error"
    assert caplog.text == ""


def test_an_invalid_old_log_level_names_the_new_key(tmp_path) -> None:
    with pytest.raises(ConfigError) as err:
        load_top(tmp_path, {"log_level": "loud"})
    assert err.value.problems == [
        "log.level: log.level is one of critical, error, warning, info, debug"
    ]


def test_check_config_knows_the_log_section(tmp_path) -> None:
    good = {"log": {"level": "debug", "access": False, "format": "json", "identity": True}}
    result = run_cli("check-config", "--config", str(write_config(tmp_path / "g.yaml", good)))
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    bad = {"log": {"format": "xml", "acess": True}, "log_level": "info"}
    result = run_cli("check-config", "--config", str(write_config(tmp_path / "b.yaml", bad)))
    assert result.returncode == 2
    assert "log.format: Input should be 'text' or 'json'" in result.stderr
    assert "log.acess: unknown key" in result.stderr
    assert LOG_LEVEL_DEPRECATED in result.stderr
