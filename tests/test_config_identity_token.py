"""identity_token settings: defaults, and every refusal names its key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sessiongate.config import ConfigError, Settings, load_settings


def problems(data: dict[str, Any], tmp_path: Path) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    return err.value.problems


def test_defaults() -> None:
    settings = Settings.model_validate(
        {
            "public_url": "https://gate.example.test",
            "upstream": {"url": "http://app.internal:8080/base"},
            "cache": {"ttl": "90s"},
            "identity_token": {"enabled": True, "keys_file": "k.json"},
        }
    )
    token = settings.identity_token
    assert token.header == "Authorization"
    assert token.source == "gate"
    assert token.jwks_path == "/.well-known/jwks.json"
    assert settings.token_issuer == "https://gate.example.test"
    assert settings.token_audience == "http://app.internal:8080"
    assert settings.token_ttl == 90.0
    assert set(token.claims) == {"sub", "sid", "email", "aal", "amr"}
    assert "authorization" in settings.spoofable_headers()
    assert "authorization" not in Settings().spoofable_headers()  # off: nothing changes


@pytest.mark.parametrize(
    ("token", "more", "expected"),
    [
        ({}, {}, "identity_token.issuer: required unless public_url is set"),
        (
            {"issuer": "https://i", "header": "X-User-Id"},
            {},
            "identity_token.header: 'X-User-Id' is already one of the gate's headers",
        ),
        ({"issuer": "https://i", "header": "Cookie"}, {}, "identity_token.header: 'Cookie'"),
        (
            {"issuer": "https://i", "jwks_path": "/health/jwks"},
            {},
            "identity_token.jwks_path: '/health/jwks' is under '/health'",
        ),
        ({"issuer": "https://i", "jwks_path": "jwks"}, {}, "identity_token.jwks_path: a path"),
        (
            {"issuer": "https://i", "claims": {"sub": "identity..id"}},
            {},
            "identity_token.claims: invalid session path",
        ),
        ({"issuer": "https://i", "claims": {"iss": "id"}}, {}, "identity_token.claims: 'iss'"),
        ({"issuer": "https://i", "ttl": "500ms"}, {}, "identity_token.ttl: at least 1s"),
        # the default lifetime is cache.ttl: below 1 s a token would be expired when signed
        ({"issuer": "https://i"}, {"cache": {"ttl": 0}}, "identity_token.ttl: the token's"),
        ({"issuer": "https://i"}, {"cache": {"ttl": "500ms"}}, "identity_token.ttl: the token's"),
        # the gate's own headers, in any spelling
        (
            {"issuer": "https://i", "header": "x_user_id"},
            {},
            "identity_token.header: 'x_user_id' is already one of the gate's headers",
        ),
        (
            {"issuer": "https://i", "header": "X-Kratos-Authenticated-Identity_Id"},
            {},
            "identity_token.header: 'X-Kratos-Authenticated-Identity_Id' is already",
        ),
        ({"issuer": "https://i", "header": "X_Session_Token"}, {}, "identity_token.header:"),
        # hop-by-hop headers never reach the app; proxy addressing is trusted proxies' only
        ({"issuer": "https://i", "header": "Proxy-Authorization"}, {}, "identity_token.header:"),
        ({"issuer": "https://i", "header": "Keep_Alive"}, {}, "identity_token.header:"),
        ({"issuer": "https://i", "header": "X-Forwarded-For"}, {}, "identity_token.header:"),
        ({"issuer": "https://i", "header": "x_real_ip"}, {}, "identity_token.header:"),
        ({"issuer": "https://i", "header": "Forwarded"}, {}, "identity_token.header:"),
        ({"issuer": "https://i", "header": "X-Original-URL"}, {}, "identity_token.header:"),
        (
            {"issuer": "https://i", "tokenize_as": "jwt"},
            {},
            "identity_token.tokenize_as: only with source: kratos",
        ),
        (
            {"issuer": "https://i"},
            {"upstream": {"url": None}, "forward_auth": {"enabled": True, "source": "path"}},
            "identity_token.audience: required when there is no upstream.url",
        ),
    ],
)
def test_refusals_name_the_key(
    tmp_path: Path, token: dict[str, Any], more: dict[str, Any], expected: str
) -> None:
    data = {"identity_token": {"enabled": True, "keys_file": "k.json", **token}, **more}
    found = problems(data, tmp_path)
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize("key", ["issuer", "audience", "ttl", "claims", "keys_file", "signing_kid"])
def test_source_kratos_refuses_what_the_template_decides(tmp_path: Path, key: str) -> None:
    value = {"ttl": "1m", "claims": {"a": "id"}}.get(key, "x")
    data = {"identity_token": {"enabled": True, "source": "kratos", "tokenize_as": "t", key: value}}
    (problem,) = problems(data, tmp_path)
    assert problem.startswith(f"identity_token.{key}: only with source: gate")


def test_an_explicit_ttl_lifts_a_short_cache_ttl() -> None:
    settings = Settings.model_validate(
        {
            "public_url": "https://gate.example.test",
            "upstream": {"url": "http://app.internal:8080"},
            "cache": {"ttl": 0},
            "identity_token": {"enabled": True, "keys_file": "k.json", "ttl": "30s"},
        }
    )
    assert settings.token_ttl == 30.0


def test_source_kratos_needs_no_keys_nor_issuer() -> None:
    settings = Settings.model_validate(
        {"identity_token": {"enabled": True, "source": "kratos", "tokenize_as": "jwt"}}
    )
    assert settings.identity_token.tokenize_as == "jwt"


def test_forward_auth_through_envoy_is_warned_about_a_token_in_authorization() -> None:
    from sessiongate.config import config_warnings

    def settings(source: str, header: str) -> Settings:
        return Settings.model_validate(
            {
                "public_url": "https://gate.example.test",
                "forward_auth": {"enabled": True, "source": source},
                "identity_token": {
                    "enabled": True,
                    "keys_file": "k.json",
                    "audience": "urn:app",
                    "header": header,
                },
            }
        )

    def warned(s: Settings) -> bool:
        return any(w.startswith("identity_token.header: ") for w in config_warnings(s))

    assert warned(settings("path", "Authorization"))
    assert not warned(settings("path", "X-Identity-Token"))
    assert not warned(settings("forwarded", "Authorization"))  # nginx, Traefik, Caddy


def test_reading_settings_loads_no_crypto() -> None:
    """Every CLI command reads the settings: the signing keys' crypto loads only to sign."""
    import subprocess
    import sys

    code = (
        "import sys; import sessiongate.config as c; c.Settings(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cryptography', 'jwt') "
        "or m == 'sessiongate.signing_keys'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
