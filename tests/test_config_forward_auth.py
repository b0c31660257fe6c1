"""The `forward_auth` section: defaults, the required source, the decision path's place among
the gate's own routes, and `upstream.url` optional only for a decision service."""

from __future__ import annotations

import pytest

from sessiongate.config import (
    ConfigError,
    Settings,
    config_warnings,
    load_settings,
)
from test_cli import run_cli, write_config

ON = {"SESSIONGATE_FORWARD_AUTH__ENABLED": "true", "SESSIONGATE_FORWARD_AUTH__SOURCE": "path"}


def problems(environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ)
    return info.value.problems


def test_off_by_default_with_the_documented_defaults():
    fa = Settings().forward_auth
    assert (fa.enabled, fa.path, fa.source, fa.deny_browsers) == (
        False,
        "/decisions",
        None,
        "redirect",
    )
    assert fa.trusted_callers == ["127.0.0.0/8", "::1"]
    assert Settings().upstream.url == "http://127.0.0.1:8080"


@pytest.mark.parametrize("source", ["forwarded", "original", "path"])
def test_each_source_is_accepted(source):
    s = load_settings(None, {**ON, "SESSIONGATE_FORWARD_AUTH__SOURCE": source})
    assert s.forward_auth.enabled
    assert s.forward_auth.source == source


def test_enabled_without_a_source_is_a_problem_naming_forward_auth_source():
    found = problems({"SESSIONGATE_FORWARD_AUTH__ENABLED": "true"})
    assert len(found) == 1, found
    assert found[0].startswith("forward_auth.source: required when forward_auth.enabled")
    for family in ("forwarded", "original", "path", "X-Forwarded-Method", "X-Original-URL"):
        assert family in found[0]
    # off, no source is needed
    assert load_settings(None, {}).forward_auth.source is None
    wrong = problems({**ON, "SESSIONGATE_FORWARD_AUTH__SOURCE": "x-forwarded"})
    assert wrong[0].startswith("forward_auth.source: "), wrong


def test_check_config_reports_the_missing_source(tmp_path):
    path = write_config(tmp_path / "c.yaml", {"forward_auth": {"enabled": True}})
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "forward_auth.source: required" in result.stderr
    path = write_config(
        tmp_path / "ok.yaml", {"forward_auth": {"enabled": True, "source": "forwarded"}}
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("path", "prefix"),
    [
        ("/sessions", ""),
        ("/sessions/decide", ""),
        ("/self-service", ""),
        ("/admin/decisions", ""),
        ("/health", ""),
        ("/health/decide", ""),
        ("/auth", "/auth"),  # the relay's prefix: its routes would be below the decision path
        ("/auth/sessions", "/auth"),
    ],
)
def test_a_decision_path_over_the_gates_own_routes_is_refused(path, prefix):
    found = problems(
        {
            **ON,
            "SESSIONGATE_FORWARD_AUTH__PATH": path,
            "SESSIONGATE_SESSIONS_API__PREFIX": prefix or '""',
        }
    )
    assert len(found) == 1, found
    assert found[0].startswith(f"forward_auth.path: {path!r} overlaps"), found


@pytest.mark.parametrize(
    "path", ["decisions", "/", "//", "/a/../b", "/a/./b", "/a b", "/a?b", "/déc", "/a%2fb", "/a//b"]
)
def test_a_malformed_decision_path_is_refused(path):
    found = problems({**ON, "SESSIONGATE_FORWARD_AUTH__PATH": f"'{path}'"})
    assert found[0].startswith("forward_auth.path: "), found


@pytest.mark.parametrize(
    ("path", "prefix", "expected"),
    [
        ("/decisions/", "", "/decisions"),
        ("/auth/decisions", "", "/auth/decisions"),
        ("/sessions", "/auth", "/sessions"),  # the relay lives under /auth here
        ("/oathkeeper/decisions", "", "/oathkeeper/decisions"),
        ("/sessionsx", "", "/sessionsx"),
    ],
)
def test_other_decision_paths_are_fine(path, prefix, expected):
    s = load_settings(
        None,
        {
            **ON,
            "SESSIONGATE_FORWARD_AUTH__PATH": path,
            "SESSIONGATE_SESSIONS_API__PREFIX": prefix or '""',
        },
    )
    assert s.forward_auth.path == expected


def test_trusted_callers_and_deny_browsers_are_checked():
    found = problems({**ON, "SESSIONGATE_FORWARD_AUTH__TRUSTED_CALLERS": '["10.0.0.0/8", "x"]'})
    assert found == ["forward_auth.trusted_callers: not an IP network: 'x'"]
    found = problems({**ON, "SESSIONGATE_FORWARD_AUTH__DENY_BROWSERS": "302"})
    assert found[0].startswith("forward_auth.deny_browsers: "), found
    wide = load_settings(None, {**ON, "SESSIONGATE_FORWARD_AUTH__TRUSTED_CALLERS": "[0.0.0.0/0]"})
    assert any(w.startswith("forward_auth.trusted_callers: ") for w in config_warnings(wide))
    assert not any("trusted_callers" in w for w in config_warnings(load_settings(None, ON)))


def test_upstream_url_is_optional_only_for_a_decision_service(tmp_path):
    # forward auth on and no app named: a decision service
    assert load_settings(None, ON).upstream.url is None
    only = Settings.model_validate({"forward_auth": {"enabled": True, "source": "original"}})
    assert only.upstream.url is None
    # an app named: both, the proxy and the decision endpoint
    both = load_settings(None, {**ON, "SESSIONGATE_UPSTREAM__URL": "http://app:8080"})
    assert both.upstream.url == "http://app:8080"
    # off: the default app, and a `null` is a problem at its key path
    assert load_settings(None, {}).upstream.url == "http://127.0.0.1:8080"
    found = problems({"SESSIONGATE_UPSTREAM__URL": "null"})
    assert found == [
        "upstream.url: required: the URL of the protected app (only a decision service, "
        "forward_auth.enabled: true, may go without one)"
    ]
    path = write_config(tmp_path / "c.yaml", {"upstream": {"url": None, "timeout": 5}})
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "upstream.url: required" in result.stderr
