"""The README's configs for the proxies that cannot run here (Traefik, ingress-nginx, Envoy).

Their header sets are tested against the endpoint in tests/gate/test_forward_auth.py; these
tests hold the configs to the lines that keep a client's identity headers and the Ory
credential away from the app, and to the gate settings printed beside them.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from proxy_servers import readme_config, readme_gate
from sessiongate.config import Settings

CREDENTIALS = ("cookie", "x-session-token", "authorization")


def gate(name: str) -> Settings:
    return Settings.model_validate(readme_gate(name))


def identity_names(settings: Settings) -> list[str]:
    names = [n.lower() for n in settings.identity_headers]
    return [*names, *([settings.session_header.lower()] if settings.session_header else [])]


def spellings(name: str) -> set[str]:
    """What a client may send for one header name: any case, `_` for `-`."""
    underscored = name.replace("-", "_")
    return {name, name.upper(), name.title(), underscored, underscored.title()}


def test_every_proxy_has_a_config_and_gate_settings_that_load():
    for name in ("nginx", "caddy", "traefik", "ingress-nginx", "envoy"):
        readme_config(name)
        assert gate(name).forward_auth.enabled


# -- Traefik ------------------------------------------------------------------------------------


def traefik_middleware() -> dict[str, Any]:
    config = yaml.safe_load(readme_config("traefik"))
    return config["http"]["middlewares"]["sessiongate"]["forwardAuth"]


def test_traefik_deletes_every_spelling_of_identity_and_credential_headers():
    settings = gate("traefik")
    assert settings.forward_auth.source == "forwarded"
    middleware = traefik_middleware()
    assert middleware["trustForwardHeader"] is False  # Traefik then sets X-Forwarded-* itself
    assert middleware["address"].endswith(settings.forward_auth.path)
    # RE2 and Python's re agree on this subset: (?i), ^, $, classes, alternation
    regex = re.compile(middleware["authResponseHeadersRegex"])
    for name in [*identity_names(settings), *CREDENTIALS]:
        for spelling in spellings(name):
            assert regex.search(spelling), spelling
    for other in ("accept", "x-user-agent", "x-request-id", "set-cookie", "x-user-idx"):
        assert not regex.search(other), other  # the app's own headers pass untouched
    # `authResponseHeaders` deletes only the spelling it lists: the regex must do the work
    assert "authResponseHeaders" not in middleware


# -- ingress-nginx ------------------------------------------------------------------------------


def ingress_annotations() -> dict[str, str]:
    config = yaml.safe_load(readme_config("ingress-nginx"))
    prefix = "nginx.ingress.kubernetes.io/"
    return {
        k.removeprefix(prefix): v
        for k, v in config["metadata"]["annotations"].items()
        if k.startswith(prefix)
    }


def test_ingress_nginx_replaces_identity_and_credential_headers():
    settings = gate("ingress-nginx")
    assert settings.forward_auth.source == "original"  # X-Original-URL/-Method
    # nginx auth_request turns a 3xx into 500: browsers are told by a 401 and auth-signin
    assert settings.forward_auth.deny_browsers == "header"
    notes = ingress_annotations()
    assert notes["auth-url"].endswith(settings.forward_auth.path)
    replaced = {h.strip().lower() for h in notes["auth-response-headers"].split(",")}
    assert {*identity_names(settings), *CREDENTIALS} <= replaced
    assert notes["auth-signin-redirect-param"] == "return_to"  # what Kratos reads
    assert "auth-cache-key" not in notes  # a cache there would outlive a revocation


# -- Envoy ----------------------------------------------------------------------------------------


def envoy_filters() -> tuple[dict[str, Any], dict[str, Any]]:
    config = yaml.safe_load(readme_config("envoy"))
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    ext_authz = next(
        f["typed_config"]
        for f in manager["http_filters"]
        if f["name"] == "envoy.filters.http.ext_authz"
    )
    return manager, ext_authz


def exact(patterns: list[dict[str, str]]) -> set[str]:
    return {p["exact"] for p in patterns}


def test_envoy_sends_the_cookie_waits_for_kratos_and_replaces_identity():
    settings = gate("envoy")
    assert settings.forward_auth.source == "path"
    manager, authz = envoy_filters()
    assert manager["common_http_protocol_options"]["headers_with_underscores_action"] == (
        "DROP_HEADER"
    )
    service = authz["http_service"]
    assert service["path_prefix"] == settings.forward_auth.path
    # Envoy's default 200 ms is shorter than a cold whoami: at least ory.timeout
    timeout = service["server_uri"]["timeout"]
    assert re.fullmatch(r"\d+(\.\d+)?s", timeout)
    assert float(timeout.removesuffix("s")) >= settings.ory.timeout
    sent = exact(service["authorization_request"]["allowed_headers"]["patterns"])
    assert {"cookie", "x-session-token", "accept"} <= sent  # Authorization always goes
    response = service["authorization_response"]
    assert {*identity_names(settings), "cookie"} <= exact(
        response["allowed_upstream_headers"]["patterns"]
    )
    assert "allowed_upstream_headers_to_append" not in response  # appending lets spoofs through
    assert {"location", "retry-after"} <= exact(response["allowed_client_headers"]["patterns"])
    assert authz["failure_mode_allow"] is False  # fail closed
