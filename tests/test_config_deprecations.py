"""Renamed settings keep working for a while: the old key is read, with a warning at load."""

from __future__ import annotations

import logging

import pytest

from sessiongate.config import load_settings
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
