"""The `sessions_page` section: defaults, what its URLs may be, its path among the gate's own
routes, the return URL checked like `return_to`, and SESSIONGATE_SECRET with several workers."""

from __future__ import annotations

import pytest

from sessiongate.config import (
    ConfigError,
    Settings,
    config_warnings,
    load_settings,
    runtime_problems,
)
from test_cli import clean_env, run_cli, write_config

ON = {"SESSIONGATE_SESSIONS_PAGE__ENABLED": "true"}


def problems(environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ)
    return info.value.problems


def test_off_by_default_with_the_documented_defaults():
    page = Settings().sessions_page
    assert (page.enabled, page.path, page.title) == (
        False,
        "/.sessiongate/sessions",
        "Your sessions",
    )
    assert (page.stylesheet, page.return_url, page.max_sessions) == (None, None, 100)


def test_good_values_are_taken():
    page = load_settings(
        None,
        {
            **ON,
            "SESSIONGATE_PUBLIC_URL": "https://app.example.com",
            "SESSIONGATE_SESSIONS_PAGE__PATH": "/account/devices/",
            "SESSIONGATE_SESSIONS_PAGE__TITLE": "Where you're signed in",
            "SESSIONGATE_SESSIONS_PAGE__STYLESHEET": "https://cdn.example.net/app.css",
            "SESSIONGATE_SESSIONS_PAGE__RETURN_URL": "https://app.example.com/settings",
            "SESSIONGATE_SESSIONS_PAGE__MAX_SESSIONS": "20",
        },
    ).sessions_page
    assert page.path == "/account/devices"
    assert page.stylesheet == "https://cdn.example.net/app.css"
    assert page.return_url == "https://app.example.com/settings"
    assert page.max_sessions == 20


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PATH", "sessions"),
        ("PATH", "/a/../b"),
        ("PATH", "/a b"),
        ("TITLE", '""'),
        ("STYLESHEET", "javascript:alert(1)"),
        ("STYLESHEET", "//cdn.example.com/app.css"),
        ("STYLESHEET", '/app.css"><script>'),
        ("STYLESHEET", "https://user:pw@cdn.example.com/app.css"),
        ("RETURN_URL", "/back\\\\evil"),
        ("RETURN_URL", "data:text/html,hi"),
        ("MAX_SESSIONS", "0"),
        ("MAX_SESSIONS", "1001"),
    ],
)
def test_bad_values_are_reported_with_their_key(key, value):
    found = problems({f"SESSIONGATE_SESSIONS_PAGE__{key}": value})
    assert len(found) == 1, found
    assert found[0].startswith(f"sessions_page.{key.lower()}: "), found


@pytest.mark.parametrize("path", ["/sessions", "/sessions/mine", "/health", "/self-service/x"])
def test_the_path_cannot_overlap_the_gates_own_routes(path):
    found = problems({**ON, "SESSIONGATE_SESSIONS_PAGE__PATH": path})
    assert found[0].startswith(f"sessions_page.path: {path!r} overlaps"), found
    # under a relay prefix those paths are free
    settings = load_settings(
        None,
        {**ON, "SESSIONGATE_SESSIONS_PAGE__PATH": path, "SESSIONGATE_SESSIONS_API__PREFIX": "/a"}
        if path != "/health"
        else {**ON, "SESSIONGATE_SESSIONS_API__PREFIX": "/a"},
    )
    assert settings.sessions_page.enabled


def test_the_path_cannot_overlap_the_decision_path():
    found = problems(
        {
            **ON,
            "SESSIONGATE_SESSIONS_PAGE__PATH": "/decisions/page",
            "SESSIONGATE_FORWARD_AUTH__ENABLED": "true",
            "SESSIONGATE_FORWARD_AUTH__SOURCE": "path",
        }
    )
    assert found[0].startswith("sessions_page.path: '/decisions/page' overlaps '/decisions'")


def test_the_path_cannot_be_public():
    """A public path carries no session: a signed-in user would be sent to log in, forever."""
    found = problems({**ON, "SESSIONGATE_ACCESS__PUBLIC_PATHS": '["/.sessiongate/**"]'})
    assert found[0].startswith("sessions_page.path: '/.sessiongate/sessions' is in "), found


def test_the_return_url_is_checked_like_return_to():
    outside = {**ON, "SESSIONGATE_SESSIONS_PAGE__RETURN_URL": "https://evil.example/"}
    found = problems(outside)
    assert found[0].startswith("sessions_page.return_url: 'https://evil.example/' is on none")
    allowed = load_settings(
        None, {**outside, "SESSIONGATE_ACCESS__ALLOWED_RETURN_TO": "[https://evil.example]"}
    )
    assert allowed.sessions_page.return_url == "https://evil.example/"
    own = {"SESSIONGATE_PUBLIC_URL": "https://gate.example"}
    back = "https://gate.example/home"
    settings = load_settings(None, {**ON, **own, "SESSIONGATE_SESSIONS_PAGE__RETURN_URL": back})
    assert settings.sessions_page.return_url == back
    # a path is on the gate's own origin
    path = load_settings(None, {**ON, "SESSIONGATE_SESSIONS_PAGE__RETURN_URL": "/home"})
    assert path.sessions_page.return_url == "/home"


def test_the_secret_with_several_workers():
    two = load_settings(None, {**ON, "SESSIONGATE_LISTEN__WORKERS": "2"})
    found = runtime_problems(two, {})
    assert len(found) == 1
    assert found[0].startswith("sessions_page: with listen.workers > 1")
    assert runtime_problems(two, {"SESSIONGATE_SECRET": "x" * 32}) == []
    short = runtime_problems(two, {"SESSIONGATE_SECRET": "short"})
    assert short[0].startswith("sessions_page: SESSIONGATE_SECRET keys the page's CSRF tokens")
    one = load_settings(None, ON)
    assert runtime_problems(one, {}) == []  # one process: its own random key, and a warning
    off = load_settings(None, {"SESSIONGATE_LISTEN__WORKERS": "2"})
    assert runtime_problems(off, {}) == []


def test_check_config_reports_and_warns(tmp_path):
    path = write_config(
        tmp_path / "c.yaml", {"listen": {"workers": 2}, "sessions_page": {"enabled": True}}
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "sessions_page: with listen.workers > 1" in result.stderr
    single = write_config(tmp_path / "d.yaml", {"sessions_page": {"enabled": True}})
    result = run_cli("check-config", "--config", str(single))
    assert result.returncode == 0, result.stderr
    assert "warning: sessions_page: SESSIONGATE_SECRET is not set" in result.stderr
    result = run_cli(
        "check-config", "--config", str(single), env=clean_env(SESSIONGATE_SECRET="k" * 32)
    )
    assert result.returncode == 0, result.stderr
    assert "sessions_page" not in result.stderr


def test_no_warning_while_the_page_is_off(monkeypatch):
    monkeypatch.delenv("SESSIONGATE_SECRET", raising=False)
    assert not [w for w in config_warnings(Settings()) if w.startswith("sessions_page")]
