"""The `shared` section: Redis settings, secrets from the environment only, errors by key path."""

from __future__ import annotations

import pytest

from sessiongate.config import (
    ConfigError,
    Settings,
    load_settings,
    redact_url,
    runtime_problems,
)
from test_cli import clean_env, run_cli, write_config

SECRET = "s" * 32


def _problems(tmp_path, data, environ=None) -> list[str]:
    path = write_config(tmp_path / "c.yaml", data)
    try:
        settings = load_settings(path, environ=environ or {})
    except ConfigError as err:
        return err.problems
    problems = runtime_problems(settings, environ or {})
    assert problems, "expected configuration problems"
    return problems


def test_off_by_default_with_the_documented_defaults():
    shared = Settings().shared
    assert not shared.enabled
    assert (shared.redis_url, shared.sentinel, shared.prefix) == (None, None, "sessiongate")
    assert (shared.cache_sessions, shared.degraded_ttl, shared.timeout) == (True, 5.0, 0.25)
    assert shared.consistency == "eventual"


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://redis.example.com:6380", "unix:///run/r.sock"]
)
def test_redis_urls_accepted(tmp_path, url):
    path = write_config(tmp_path / "c.yaml", {"shared": {"redis_url": url}})
    settings = load_settings(path, environ={})
    assert settings.shared.enabled
    assert runtime_problems(settings, {"SESSIONGATE_SECRET": SECRET}) == []


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379", "redis://", "redis://host:99999", "redis://h/abc", "unix://"]
)
def test_malformed_redis_url_is_a_problem_at_the_key_path(tmp_path, url):
    problems = _problems(tmp_path, {"shared": {"redis_url": url}})
    assert len(problems) == 1
    assert problems[0].startswith("shared.redis_url: "), problems


def test_password_in_the_file_is_refused_and_never_echoed(tmp_path):
    url = "redis://user:hunter2-secret@127.0.0.1:6379/0"
    path = write_config(tmp_path / "c.yaml", {"shared": {"redis_url": url}})
    result = run_cli(
        "check-config", "--config", str(path), env=clean_env(SESSIONGATE_SECRET=SECRET)
    )
    assert result.returncode == 2
    assert "shared.redis_url" in result.stderr
    assert "SESSIONGATE_REDIS_PASSWORD" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert "user:" not in result.stderr


def test_malformed_url_with_userinfo_is_not_echoed(tmp_path):
    path = write_config(tmp_path / "c.yaml", {})
    env = clean_env(
        SESSIONGATE_SECRET=SECRET, SESSIONGATE_SHARED__REDIS_URL="http://u:hunter2@h:1/"
    )
    result = run_cli("check-config", "--config", str(path), env=env)
    assert result.returncode == 2
    assert "shared.redis_url" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_the_whole_url_may_come_from_the_environment(tmp_path):
    path = write_config(tmp_path / "c.yaml", {"shared": {"prefix": "app1"}})
    env = {
        "SESSIONGATE_SHARED__REDIS_URL": "redis://:pw@127.0.0.1:6379/2",
        "SESSIONGATE_SECRET": SECRET,
    }
    settings = load_settings(path, environ=env)
    assert settings.shared.redis_url == "redis://:pw@127.0.0.1:6379/2"
    assert runtime_problems(settings, env) == []


def test_shared_mode_needs_a_long_secret(tmp_path):
    data = {"shared": {"redis_url": "redis://127.0.0.1:6379"}}
    assert _problems(tmp_path, data)[0].startswith("shared: ")
    short = _problems(tmp_path, data, {"SESSIONGATE_SECRET": "x" * 31})
    assert "SESSIONGATE_SECRET" in short[0]
    assert "31" in short[0]
    path = write_config(tmp_path / "c.yaml", data)
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "SESSIONGATE_SECRET" in result.stderr
    ok = run_cli("check-config", "--config", str(path), env=clean_env(SESSIONGATE_SECRET=SECRET))
    assert ok.returncode == 0, ok.stderr


def test_secret_is_not_a_settings_override():
    settings = load_settings(environ={"SESSIONGATE_SECRET": SECRET})
    assert settings == Settings()


def test_sentinel_block(tmp_path):
    data = {
        "shared": {
            "sentinel": {"master": "mymaster", "nodes": ["10.0.0.1:26379", "[::1]:26380"]},
        }
    }
    settings = load_settings(write_config(tmp_path / "c.yaml", data), environ={})
    assert settings.shared.enabled
    assert settings.shared.sentinel is not None
    assert settings.shared.sentinel.addresses() == [("10.0.0.1", 26379), ("::1", 26380)]
    assert settings.shared.sentinel.tls is False


@pytest.mark.parametrize(
    ("sentinel", "where"),
    [
        ({"master": "m", "nodes": ["host-without-port"]}, "shared.sentinel.nodes"),
        ({"master": "m", "nodes": []}, "shared.sentinel.nodes"),
        ({"nodes": ["h:26379"]}, "shared.sentinel.master"),
        ({"master": "m", "nodes": ["h:26379"], "password": "x"}, "shared.sentinel.password"),
        ("h:26379", "shared.sentinel"),
    ],
)
def test_malformed_sentinel_block_is_a_problem_at_the_key_path(tmp_path, sentinel, where):
    problems = _problems(tmp_path, {"shared": {"sentinel": sentinel}})
    assert any(p.startswith(where) for p in problems), problems


def test_url_and_sentinel_together_and_strict_without_redis(tmp_path):
    both = {
        "redis_url": "redis://127.0.0.1:6379",
        "sentinel": {"master": "m", "nodes": ["h:1"]},
    }
    assert _problems(tmp_path, {"shared": both})[0].startswith("shared: ")
    strict = _problems(tmp_path, {"shared": {"consistency": "strict"}})
    assert "strict" in strict[0]
    bad = _problems(tmp_path, {"shared": {"consistency": "sometimes"}})
    assert bad[0].startswith("shared.consistency: ")


@pytest.mark.parametrize(
    ("key", "value"), [("prefix", "has space"), ("timeout", "0"), ("degraded_ttl", "soon")]
)
def test_bad_values_are_problems_at_the_key_path(tmp_path, key, value):
    problems = _problems(tmp_path, {"shared": {"redis_url": "redis://h:1", key: value}})
    assert problems[0].startswith(f"shared.{key}: "), problems


def test_redact_url():
    assert redact_url("redis://u:p@h:1/0") == "redis://***@h:1/0"
    assert redact_url("redis://:p@h:1") == "redis://***@h:1"
    assert redact_url("redis://h:1") == "redis://h:1"


def test_without_the_shared_mode_no_redis_client_is_loaded():
    """redis-py (with what it imports: OpenTelemetry's SDK, when installed) is ~9 MB in every
    worker; a gate or middleware without `shared.*` never loads it (bench/README.md, Memory)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from sessiongate.config import Settings\n"
        "from sessiongate.gate import Gate\n"
        "from sessiongate.middleware import SessionGateMiddleware\n"
        "s = Settings(upstream={'url': 'http://127.0.0.1:9'})\n"
        "gate, middleware = Gate(s), SessionGateMiddleware(None, s)\n"
        "assert gate.revocations is None and middleware.revocations is None\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'redis', 'opentelemetry'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
