"""Settings: documented defaults, durations, env overrides, and problems reported by key path."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sessiongate.config import (
    ConfigError,
    Settings,
    load_settings,
    ory_api_key,
    parse_duration,
)


def write(tmp_path: Path, text: str, name: str = "sessiongate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path | None = None, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ or {})
    assert info.value.problems, "a ConfigError carries at least one problem"
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# --- defaults --------------------------------------------------------------------------------


def test_defaults_are_the_documented_ones():
    s = load_settings(None, {})
    assert s == Settings()
    assert s.listen.host == "127.0.0.1"
    assert s.listen.port == 4455
    assert s.ory.public_url == "http://127.0.0.1:4433"
    assert s.ory.admin_url is None
    assert s.ory.admin_base == "http://127.0.0.1:4433"
    assert s.ory.session_cookies == ["ory_kratos_session", "ory_session_*"]
    assert s.ory.timeout == 5
    assert s.upstream.timeout == 60
    assert s.cache.ttl == 60
    assert s.cache.max_entries == 100_000
    assert s.cache.negative_ttl == 2
    assert s.access.public_paths == ["/health/**"]
    assert s.access.allowed_return_to == []
    assert s.identity_headers == {
        "X-User-Id": "identity.id",
        "X-User-Email": "identity.traits.email",
        "X-Session-Id": "id",
    }
    assert s.session_header is None


def test_upstream_limits_defaults_and_bounds(tmp_path):
    u = Settings().upstream
    assert (u.pool_timeout, u.body_timeout, u.buffer_request_body) == (2, 300, 65_536)
    assert (u.max_connections_per_client, u.max_streaming_uploads, u.max_websockets) == (
        64,
        64,
        1024,
    )
    s = load_settings(None, {"SESSIONGATE_UPSTREAM__BODY_TIMEOUT": "90s"})
    assert s.upstream.body_timeout == 90
    text = (
        "upstream:\n  body_timeout: 0\n  max_connections_per_client: 0\n"
        "  buffer_request_body: -1\n  max_websockets: 0\n"
    )
    problems = problems_of(write(tmp_path, text))
    assert sorted(p.split(":")[0] for p in problems) == [
        "upstream.body_timeout",
        "upstream.buffer_request_body",
        "upstream.max_connections_per_client",
        "upstream.max_websockets",
    ]


def test_admin_base_is_admin_url_when_set(tmp_path):
    path = write(
        tmp_path,
        "ory:\n  public_url: http://kratos:4433/\n  admin_url: http://kratos:4434/\n",
    )
    s = load_settings(path, {})
    assert s.ory.public_url == "http://kratos:4433"  # trailing slash dropped
    assert s.ory.admin_base == "http://kratos:4434"


def test_empty_file_means_defaults(tmp_path):
    assert load_settings(write(tmp_path, ""), {}) == Settings()
    assert load_settings(write(tmp_path, "# only a comment\n", "c.yaml"), {}) == Settings()


def test_settings_are_frozen():
    s = Settings()
    with pytest.raises(ValidationError, match="frozen"):
        s.listen.port = 1  # type: ignore[misc]


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("250ms", 0.25),
        (90, 90.0),
        ("90", 90.0),
        ("1.5s", 1.5),
        (0.5, 0.5),
    ],
)
def test_durations(tmp_path, raw, seconds):
    assert parse_duration(raw) == pytest.approx(seconds)
    value = raw if isinstance(raw, int | float) else f'"{raw}"'
    s = load_settings(
        write(tmp_path, f"cache:\n  ttl: {value}\nupstream:\n  timeout: {value}\n"), {}
    )
    assert s.cache.ttl == pytest.approx(seconds)
    assert s.upstream.timeout == pytest.approx(seconds)


@pytest.mark.parametrize(
    "raw", ['"5 minutes"', "-1", "true", '"1d"', '"abc"', "[1]", ".nan", ".inf"]
)
def test_bad_durations_are_problems_at_the_key_path(tmp_path, raw):
    problems = problems_of(write(tmp_path, f"cache:\n  ttl: {raw}\n"))
    assert len(problems) == 1, problems
    assert problems[0].startswith("cache.ttl: "), problems


def test_bad_duration_messages_are_helpful(tmp_path):
    (problem,) = problems_of(write(tmp_path, 'upstream:\n  timeout: "5 minutes"\n'))
    assert problem.startswith("upstream.timeout: ")
    assert "5 minutes" in problem
    assert "30s" in problem or "5m" in problem
    (problem,) = problems_of(write(tmp_path, "cache:\n  negative_ttl: -1\n", "n.yaml"))
    assert problem.startswith("cache.negative_ttl: ")
    assert "negative" in problem


def test_ory_timeout_must_be_positive(tmp_path):
    (problem,) = problems_of(write(tmp_path, "ory:\n  timeout: 0\n"))
    assert problem.startswith("ory.timeout: ")


# --- environment overrides -------------------------------------------------------------------


def test_env_override_beats_the_file(tmp_path):
    path = write(
        tmp_path,
        "ory:\n  public_url: http://from-file:4433\n  timeout: 3\nlisten:\n  port: 9000\n",
    )
    s = load_settings(path, {"SESSIONGATE_ORY__PUBLIC_URL": "http://from-env:4433"})
    assert s.ory.public_url == "http://from-env:4433"
    assert s.ory.timeout == 3  # siblings from the file survive
    assert s.listen.port == 9000


def test_env_values_are_parsed_as_yaml():
    s = load_settings(
        None,
        {
            "SESSIONGATE_ACCESS__PUBLIC_PATHS": '["/a/*"]',
            "SESSIONGATE_CACHE__TTL": "5m",
            "SESSIONGATE_LISTEN__PORT": "8081",
            "SESSIONGATE_UPSTREAM__STRIP_SESSION_COOKIE": "false",
        },
    )
    assert s.access.public_paths == ["/a/*"]
    assert s.cache.ttl == 300
    assert s.listen.port == 8081
    assert s.upstream.strip_session_cookie is False


def test_env_identity_header_keeps_header_name_case(tmp_path):
    path = write(tmp_path, "identity_headers:\n  X-User-Id: identity.id\n")
    s = load_settings(path, {"SESSIONGATE_IDENTITY_HEADERS__X-User-Role": "identity.traits.role"})
    assert s.identity_headers == {"X-User-Id": "identity.id", "X-User-Role": "identity.traits.role"}


def test_env_unrelated_and_config_variables_are_ignored(tmp_path):
    path = write(tmp_path, "listen:\n  port: 9001\n")
    s = load_settings(
        None, {"SESSIONGATE_CONFIG": str(path), "PATH": "/bin", "OTHER_ORY__PUBLIC_URL": "x"}
    )
    assert s.listen.port == 9001


def test_env_bad_value_is_a_problem_at_the_key_path():
    problems = problems_of(None, {"SESSIONGATE_CACHE__TTL": "5 minutes"})
    assert [p.split(":", 1)[0] for p in problems] == ["cache.ttl"]
    problems = problems_of(None, {"SESSIONGATE_ORY__NOPE": "1"})
    assert problems == ["ory.nope: unknown key"]


def test_sessiongate_config_picks_the_file(tmp_path):
    path = write(tmp_path, "ory:\n  public_url: https://project.oryapis.com\n")
    s = load_settings(None, {"SESSIONGATE_CONFIG": str(path)})
    assert s.ory.public_url == "https://project.oryapis.com"
    # an explicit path wins over the variable
    other = write(tmp_path, "ory:\n  public_url: http://explicit:1\n", "other.yaml")
    assert load_settings(other, {"SESSIONGATE_CONFIG": str(path)}).ory.public_url == (
        "http://explicit:1"
    )


def test_sessiongate_config_defaults_to_process_environment(tmp_path, monkeypatch):
    path = write(tmp_path, "listen:\n  port: 9123\n")
    monkeypatch.setenv("SESSIONGATE_CONFIG", str(path))
    monkeypatch.setenv("SESSIONGATE_LISTEN__HOST", "127.0.0.2")
    s = load_settings()
    assert s.listen.port == 9123
    assert s.listen.host == "127.0.0.2"


# --- problems --------------------------------------------------------------------------------


def test_every_problem_is_reported_at_once_with_its_key_path(tmp_path):
    path = write(
        tmp_path,
        """
ory:
  public_url: ftp://kratos
upstream:
  url: http://app:8080
  foo: 1
cache:
  ttl: 5 minutes
identity_headers:
  Host: identity.id
""",
    )
    problems = problems_of(path)
    assert len(problems) == 4, problems
    keys = sorted(p.split(": ", 1)[0] for p in problems)
    assert keys == ["cache.ttl", "identity_headers", "ory.public_url", "upstream.foo"]
    by_key = {p.split(": ", 1)[0]: p.split(": ", 1)[1] for p in problems}
    assert by_key["upstream.foo"] == "unknown key"
    assert "Host" in by_key["identity_headers"]
    assert "ftp://kratos" in by_key["ory.public_url"]


@pytest.mark.parametrize(
    "reserved", ["Host", "cookie", "Authorization", "X-Session-Token", "Content-Length"]
)
def test_reserved_identity_headers_are_refused(tmp_path, reserved):
    path = write(tmp_path, f"identity_headers:\n  {reserved}: identity.id\n")
    (problem,) = problems_of(path)
    assert problem.startswith("identity_headers: ")


def test_api_key_in_the_file_is_a_problem_naming_the_env_variable(tmp_path):
    path = write(tmp_path, "ory:\n  public_url: https://p.oryapis.com\n  api_key: ory_pat_x\n")
    (problem,) = problems_of(path)
    assert problem.startswith("ory.api_key: ")
    assert "ORY_API_KEY" in problem
    assert "ory_pat_x" not in problem  # the secret is not echoed


def test_allowed_return_to_takes_origins_only(tmp_path):
    path = write(
        tmp_path,
        "access:\n  allowed_return_to:\n    - https://App.Example.com/\n    - http://a.test:8080\n"
        "    - https://b.test:443\n",
    )
    s = load_settings(path, {})
    assert s.access.allowed_return_to == [
        "https://app.example.com",
        "http://a.test:8080",
        "https://b.test",
    ]
    for bad in ("https://app.example.com/welcome", "app.example.com", "https://a.test/?x=1"):
        bad_path = write(tmp_path, f"access:\n  allowed_return_to: ['{bad}']\n", "bad.yaml")
        (problem,) = problems_of(bad_path)
        assert problem.startswith("access.allowed_return_to: "), problem
        assert "origin" in problem


@pytest.mark.parametrize(
    ("first", "second"),
    [("X-User-Id", "x-user-id"), ("X-User-Id", "X_User_Id"), ("X-Team", "x_TEAM")],
)
def test_identity_headers_differing_only_by_case_or_underscore_are_refused(tmp_path, first, second):
    path = write(tmp_path, f"identity_headers:\n  {first}: identity.id\n  {second}: id\n")
    (problem,) = problems_of(path)
    assert problem.startswith("identity_headers: ")
    assert second in problem


def test_bad_identity_header_path_and_name(tmp_path):
    (problem,) = problems_of(write(tmp_path, "identity_headers:\n  X-A: 'identity..id'\n"))
    assert problem.startswith("identity_headers: ")
    (problem,) = problems_of(write(tmp_path, "identity_headers:\n  'X A': id\n", "b.yaml"))
    assert problem.startswith("identity_headers: ")


def test_session_header_must_not_repeat_an_identity_header(tmp_path):
    (problem,) = problems_of(write(tmp_path, "session_header: x_user_id\n"))
    assert "session_header" in problem
    s = load_settings(write(tmp_path, "session_header: X-Session\n", "ok.yaml"), {})
    assert s.session_header == "X-Session"
    assert "x-session" in s.spoofable_headers()


def test_unknown_top_level_key_and_sections(tmp_path):
    problems = problems_of(write(tmp_path, "nope: 1\nlisten:\n  port: 70000\n"))
    keys = sorted(p.split(": ", 1)[0] for p in problems)
    assert keys == ["listen.port", "nope"]


def test_invalid_yaml_is_a_clear_config_error(tmp_path):
    path = write(tmp_path, "ory:\n  public_url: [unclosed\n")
    (problem,) = problems_of(path)
    assert str(path) in problem
    assert "not valid YAML" in problem


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_file_is_a_clear_config_error(tmp_path, text):
    path = write(tmp_path, text)
    (problem,) = problems_of(path)
    assert str(path) in problem
    assert "mapping" in problem


def test_missing_file_is_a_clear_config_error(tmp_path):
    path = tmp_path / "absent.yaml"
    (problem,) = problems_of(path)
    assert "cannot read" in problem
    assert str(path) in problem
    # also through SESSIONGATE_CONFIG
    (problem,) = problems_of(None, {"SESSIONGATE_CONFIG": str(path)})
    assert str(path) in problem


def test_ory_api_key_reads_the_environment(monkeypatch):
    assert ory_api_key({"ORY_API_KEY": "ory_pat_abc"}) == "ory_pat_abc"
    assert ory_api_key({"ORY_API_KEY": ""}) is None
    assert ory_api_key({}) is None
    monkeypatch.setenv("ORY_API_KEY", "ory_pat_env")
    assert ory_api_key() == "ory_pat_env"
    monkeypatch.delenv("ORY_API_KEY")
    assert ory_api_key() is None


def test_api_key_cannot_come_from_a_sessiongate_env_override():
    (problem,) = problems_of(None, {"SESSIONGATE_ORY__API_KEY": "ory_pat_x"})
    assert problem.startswith("ory.api_key: ")
    assert "ORY_API_KEY" in problem


def test_env_null_unsets_an_optional_key(tmp_path) -> None:
    config = tmp_path / "gate.yaml"
    config.write_text("ory: {admin_url: http://127.0.0.1:4434}\n")
    settings = load_settings(config, environ={"SESSIONGATE_ORY__ADMIN_URL": "null"})
    assert settings.ory.admin_url is None


def test_unknown_single_segment_variables_are_not_settings() -> None:
    # e.g. a custom sessions_api.admin.keys_env holding secrets, or another tool's variable
    settings = load_settings(
        None, environ={"SESSIONGATE_MY_ADMIN_KEYS": "k1,k2", "SESSIONGATE_LOG_LEVEL": "debug"}
    )
    assert settings.log_level == "debug"


def test_listen_server_and_workers_are_checked():
    s = load_settings(
        None, {"SESSIONGATE_LISTEN__SERVER": "uvicorn", "SESSIONGATE_LISTEN__WORKERS": "2"}
    )
    assert (s.listen.server, s.listen.workers) == ("uvicorn", 2)
    assert load_settings(None, {}).listen.server == "granian"
    problems = problems_of(
        None, {"SESSIONGATE_LISTEN__SERVER": "gunicorn", "SESSIONGATE_LISTEN__WORKERS": "0"}
    )
    assert sorted(p.split(":", 1)[0] for p in problems) == ["listen.server", "listen.workers"]
    assert any("granian" in p and "uvicorn" in p for p in problems), problems


# --- access.login_url ------------------------------------------------------------------------


def test_login_url_defaults_to_kratos_browser_login():
    assert Settings().access.login_url == "http://127.0.0.1:4433/self-service/login/browser"
    s = load_settings(None, {"SESSIONGATE_ORY__PUBLIC_URL": "https://proj.oryapis.com/"})
    assert s.access.login_url == "https://proj.oryapis.com/self-service/login/browser"
    # set explicitly, it stays; `null` brings the default back
    s = Settings.model_validate({"access": {"login_url": "https://auth.example.com/login"}})
    assert s.access.login_url == "https://auth.example.com/login"
    s = load_settings(None, {"SESSIONGATE_ACCESS__LOGIN_URL": "null"})
    assert s.access.login_url == "http://127.0.0.1:4433/self-service/login/browser"


ANY_ADDRESS = "0.0.0.0"  # noqa: S104 - a listen setting under test (containers use it)

# A login URL the gate itself would answer, behind a session: a redirect loop. Each is refused
# unless its path is public.
LOOPING_LOGINS = [
    ({}, "/login"),
    ({}, "/self-service/login/browser"),
    ({}, "http://127.0.0.1:4455/self-service/login/browser"),  # the old default
    ({}, "http://LOCALHOST:4455/x"),
    ({"listen": {"host": "localhost"}}, "http://localhost:4455/x"),
    ({"listen": {"host": ANY_ADDRESS, "port": 8000}}, "http://127.0.0.1:8000/login"),
    ({"listen": {"host": ANY_ADDRESS, "port": 8000}}, "http://localhost:8000/login"),
    ({"listen": {"host": "::1", "port": 80}}, "http://[::1]/login"),
    ({"public_url": "https://app.example.com"}, "https://app.example.com/login"),
    ({"public_url": "https://app.example.com"}, "https://APP.example.com:443/login?x=1"),
    ({"public_url": "https://app.example.com/"}, "https://app.example.com"),
    ({"public_url": "https://app.example.com:8443"}, "https://app.example.com:8443/a/b"),
]


@pytest.mark.parametrize(("extra", "login"), LOOPING_LOGINS)
def test_a_login_url_behind_the_gate_is_refused(extra, login):
    with pytest.raises(ValidationError, match="log in again"):
        Settings.model_validate({**extra, "access": {"login_url": login}})
    problems = problems_of(None, {"SESSIONGATE_ACCESS__LOGIN_URL": login, **_env_of(extra)})
    assert any("access.login_url" in p and "forever" in p for p in problems), problems
    # the same URL with its path public is fine
    path = urlsplit(login).path or "/"
    public = ["/health/**", path if path != "/" else "/"]
    Settings.model_validate({**extra, "access": {"login_url": login, "public_paths": public}})


@pytest.mark.parametrize(
    ("extra", "login"),
    [
        ({}, "http://127.0.0.1:4433/self-service/login/browser"),
        ({}, "http://127.0.0.1:4456/login"),  # another port, another origin
        ({"public_url": "https://app.example.com"}, "https://auth.example.com/login"),
        ({"public_url": "https://app.example.com"}, "http://app.example.com/login"),  # scheme
        ({"public_url": "https://app.example.com"}, "https://app.example.com.evil/login"),
        ({"listen": {"host": ANY_ADDRESS, "port": 8000}}, "http://127.0.0.1:4433/login"),
    ],
)
def test_a_login_url_elsewhere_is_fine(extra, login):
    s = Settings.model_validate({**extra, "access": {"login_url": login}})
    assert s.access.login_url == login


def _env_of(extra: dict) -> dict[str, str]:
    env = {}
    for key, value in extra.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                env[f"SESSIONGATE_{key.upper()}__{sub.upper()}"] = str(v)
        else:
            env[f"SESSIONGATE_{key.upper()}"] = value
    return env


# --- cors.allowed_origin_regex ----------------------------------------------------------------

# Templates around a domain D (its regex-escaped form E): each bad one admits a host an attacker
# can register that is neither D nor a subdomain of D.
BAD_ORIGIN_REGEXES = [
    "https://.*{E}",  # evil-D, evilD
    "https://.+{E}",
    "https?://.*{E}",
    "https://[a-z0-9-]*{E}",
    "https://[^/]*{E}",
    r"https://\w*{E}",
    "https://(.*){E}(:443)?",
    "https://{E}.*",  # D.evil.invalid
    "https://{E}.+",
    "https://(.*\\.)?{E}.*",
    "https://{D}",  # unescaped dots: DxTLD
    "https://[a-z]+\\.(.*){E}",  # label.evilD
    "https://.*{E}:8443",
    "https://app\\.{E}|https://.*{E}",  # one bad alternative is enough
    "https://.*",  # anything at all
]
GOOD_ORIGIN_REGEXES = [
    "https://{E}",
    "https://([a-z0-9-]+\\.)*{E}",
    "https://[a-z0-9-]+\\.{E}",
    "https://(app|admin)\\.{E}",
    "https://{E}(:\\d+)?",
    "https?://([a-z0-9-]+\\.)?{E}",
    "https://.*\\.{E}",
    "https://[^/]*\\.{E}",
]


def _cors(regex: str) -> Settings:
    return Settings.model_validate({"cors": {"allowed_origin_regex": regex}})


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(
        st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]", fullmatch=True), min_size=1, max_size=3
    ),
    tld=st.sampled_from(["com", "org", "io", "co.uk", "example"]),
)
def test_origin_regexes_that_admit_other_domains_are_refused(labels: list[str], tld: str) -> None:
    domain = ".".join([*labels, tld])
    fill = {"E": re.escape(domain), "D": domain}
    for template in BAD_ORIGIN_REGEXES:
        regex = template.format(**fill)
        with pytest.raises(ValidationError, match=r"any origin|outside the domains"):
            _cors(regex)
        # without credentials a broad regex is merely public
        Settings.model_validate(
            {"cors": {"allowed_origin_regex": regex, "allow_credentials": False}}
        )
    for template in GOOD_ORIGIN_REGEXES:
        s = _cors(template.format(**fill))
        assert s.cors.allows(f"https://{domain}") or s.cors.allows(f"https://app.{domain}")
        for evil in (
            f"https://evil{domain}",
            f"https://{domain}.evil.invalid",
            "https://x.invalid",
        ):
            assert not s.cors.allows(evil), (template, evil)


def test_origin_regex_refusal_names_the_origin_it_admits() -> None:
    with pytest.raises(ValidationError, match=r"admits https://evilexample\.com"):
        _cors(r"https://.*example\.com")
    problems = problems_of(
        None, {"SESSIONGATE_CORS__ALLOWED_ORIGIN_REGEX": r"https://app.example.com"}
    )
    assert any("appxexample.com" in p for p in problems), problems


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_defaults_overrides_and_bounds():
    s = load_settings(None, {})
    assert (s.metrics.enabled, s.metrics.host, s.metrics.port) == (True, "127.0.0.1", 9464)
    s = load_settings(
        None, {"SESSIONGATE_METRICS__ENABLED": "false", "SESSIONGATE_METRICS__PORT": "0"}
    )
    assert (s.metrics.enabled, s.metrics.port) == (False, 0)
    problems = problems_of(
        None, {"SESSIONGATE_METRICS__PORT": "70000", "SESSIONGATE_METRICS__ENABLED": "maybe"}
    )
    assert sorted(p.split(":", 1)[0] for p in problems) == ["metrics.enabled", "metrics.port"]
    assert problems_of(None, {"SESSIONGATE_METRICS__PATH": "/m"}) == ["metrics.path: unknown key"]


@pytest.mark.parametrize(
    ("listen", "metrics"),
    [
        ({"port": 9000}, {"port": 9000}),
        ({"host": "0.0.0.0", "port": 9000}, {"port": 9000}),  # noqa: S104
        ({"port": 9000}, {"host": "::", "port": 9000}),
    ],
)
def test_metrics_cannot_share_the_gates_own_port(tmp_path, listen, metrics):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"listen": listen, "metrics": metrics}))
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith("metrics.port: 9000 is the gate's own port (listen.port)")


@pytest.mark.parametrize(
    ("listen", "metrics"),
    [
        ({"port": 9000}, {"port": 0}),  # any free port
        ({"port": 9000}, {"enabled": False, "port": 9000}),  # no listener at all
        ({"host": "127.0.0.1", "port": 9000}, {"host": "10.1.2.3", "port": 9000}),
    ],
)
def test_metrics_port_that_does_not_collide(tmp_path, listen, metrics):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"listen": listen, "metrics": metrics}))
    assert load_settings(path, {}).metrics.port == metrics["port"]
