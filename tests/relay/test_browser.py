"""CORS for the session relay, in a real browser (Debian's chromium, driven by Playwright).

Everything runs on 127.0.0.1 under uvicorn: the Kratos fake (port A, with its login page), the
gate (B), a page on an allowed CORS origin (C) and one on an origin the gate does not allow (D).
Cookies ignore ports, so the fake's session cookie for host 127.0.0.1 also goes to the gate, and
C and D are same-site with the gate (the SameSite=Lax cookie rides along with
`credentials: 'include'`) but different *origins*: only CORS decides who may read the answers.

The httpx tests below pin down the CORS details the browser relies on (preflights, `Vary`,
`apply_to`, the config checks).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from browsers import TIMEOUT_MS, launch_options
from sessiongate.config import Settings
from sessiongate.gate import Gate
from sessiongate.testing import FakeKratosServer, UvicornThread

SCREENSHOT = "/tmp/sessiongate-browser.png"  # noqa: S108 - a fixed place CI uploads
ALICE = "alice@example.com"
PASSWORD = "correct horse battery staple"

# The page's helper: one fetch, reduced to what a script on that page can actually read.
PAGE_JS = """
window.call = async function (url, init) {
  try {
    const r = await fetch(url, init || {});
    const text = await r.text();
    const headers = {};
    for (const name of ["content-type", "x-total-count", "link",
                        "x-kratos-authenticated-identity-id", "ory-error-id"]) {
      headers[name] = r.headers.get(name);
    }
    return {ok: true, status: r.status, type: r.type, headers: headers, body: text};
  } catch (e) {
    return {ok: false, error: e.name + ": " + e.message};
  }
};
window.report = function (label, result) {
  const pre = document.getElementById("log");
  pre.textContent += label + " -> " + JSON.stringify(result).slice(0, 300) + "\\n";
  return result;
};
"""


class StaticPage:
    """A one-page site: GET / is an HTML page with `PAGE_JS`; everything else is 404."""

    def __init__(self, title: str) -> None:
        self.html = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<script>{PAGE_JS}</script></head><body><h1>{title}</h1>"
            "<pre id='log' style='white-space:pre-wrap;font-size:11px'></pre></body></html>"
        ).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/":
            status, body, ctype = 200, self.html, b"text/html; charset=utf-8"
        else:
            status, body, ctype = 404, b"not found", b"text/plain"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})


class CorsUpstream:
    """The protected app for the `apply_to` tests: `/own-cors` sends its own CORS headers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        body = b'{"app":"ok"}'
        if scope["method"] == "OPTIONS":  # what reached the app, and who it was told it served
            users = [v.decode() for k, v in scope["headers"] if k == b"x-user-id"]
            body = json.dumps({"app": "ok", "method": "OPTIONS", "user": users}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
        ]
        if scope["path"] == "/own-cors":
            headers += [
                (b"access-control-allow-origin", b"*"),
                (b"access-control-expose-headers", b"X-Upstream"),
            ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _started(stack: ExitStack, server: UvicornThread) -> UvicornThread:
    server.start()
    stack.callback(server.stop)
    return server


@pytest.fixture
def pages() -> Iterator[tuple[UvicornThread, UvicornThread]]:
    """(allowed, disallowed): the two page origins, started before the gate that names them."""
    with ExitStack() as stack:
        allowed = _started(stack, UvicornThread(StaticPage("Allowed origin")))
        disallowed = _started(stack, UvicornThread(StaticPage("Disallowed origin")))
        yield allowed, disallowed


# -- the browser test -------------------------------------------------------------------------
async def test_browser_cors_allowed_and_disallowed_origins(
    make_relay: Callable[..., Any], pages: tuple[UvicornThread, UvicornThread]
) -> None:
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:  # pragma: no cover - CI installs the test extras
        pytest.fail(f"playwright is not installed ({exc}); pip install -e '.[test]'")
    launch = launch_options()
    allowed, disallowed = pages
    ok_origin, bad_origin = allowed.url, disallowed.url
    relay = make_relay(
        fake_options={"cookie_secure": False, "allowed_return_urls": [ok_origin + "/"]},
        cors={"allowed_origins": [ok_origin]},
    )
    fake, gate = relay.fake, relay.server.url
    alice = fake.create_identity(email=ALICE)
    fake.set_password(alice, PASSWORD)
    other1 = fake.create_session(alice)
    other2 = fake.create_session(alice)
    bob = fake.login("bob@example.com")
    # what reached the gate's CORS layer, preflights included (the browser hides those)
    seen: list[tuple[str, str]] = []
    cors_layer = relay.gate.cors

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope["method"], scope["path"]))
        await cors_layer(scope, receive, send)

    relay.gate.cors = recording

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(**launch)
        try:
            context = await browser.new_context(viewport={"width": 1000, "height": 800})
            context.set_default_timeout(TIMEOUT_MS)
            context.set_default_navigation_timeout(TIMEOUT_MS)
            page = await context.new_page()

            # -- log in through the fake's login page; it sends us back to the allowed page
            return_to = quote(ok_origin + "/")
            await page.goto(f"{fake.public_url}/self-service/login/browser?return_to={return_to}")
            await page.fill("input[name=identifier]", ALICE)
            await page.fill("input[name=password]", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url(ok_origin + "/")
            cookies = {c["name"]: c for c in await context.cookies(gate)}
            assert "ory_kratos_session" in cookies, cookies
            session_cookie = cookies["ory_kratos_session"]["value"]

            async def call(target: Any, label: str, url: str, init: dict[str, Any]) -> Any:
                return await target.evaluate(
                    "([label, url, init]) => window.call(url, init)"
                    ".then(r => window.report(label, r))",
                    [label, url, init],
                )

            include = {"credentials": "include"}

            # -- the allowed origin reads the relay's answers
            me = await call(page, "whoami", gate + "/sessions/whoami", include)
            assert (me["ok"], me["status"]) == (True, 200), me
            whoami = json.loads(me["body"])
            assert whoami["identity"]["id"] == alice
            assert whoami["identity"]["traits"]["email"] == ALICE
            current = whoami["id"]
            assert current not in (other1.id, other2.id)
            # an exposed header: readable by the script only because the gate exposes it
            assert me["headers"]["x-kratos-authenticated-identity-id"] == alice

            listed = await call(page, "list", gate + "/sessions", include)
            assert (listed["ok"], listed["status"]) == (True, 200), listed
            assert {s["id"] for s in json.loads(listed["body"])} == {other1.id, other2.id}
            assert listed["headers"]["x-total-count"] == "2"
            link = listed["headers"]["link"]
            assert (link or "").startswith("<" + gate + "/sessions?"), link
            assert 'rel="first"' in link

            # DELETE is not a simple method: the browser preflights, then sends it
            deleted = await call(
                page, "revoke", f"{gate}/sessions/{other1.id}", {**include, "method": "DELETE"}
            )
            assert deleted == {**deleted, "ok": True, "status": 204}, deleted
            revoke_path = f"/sessions/{other1.id}"
            assert seen.index(("OPTIONS", revoke_path)) < seen.index(("DELETE", revoke_path))
            assert fake.is_session_active(other1.id) is False
            assert fake.is_session_active(other2.id) is True
            assert fake.is_session_active(current) is True

            after = await call(page, "list again", gate + "/sessions", include)
            assert (after["ok"], after["status"]) == (True, 200), after
            assert [s["id"] for s in json.loads(after["body"])] == [other2.id]
            assert after["headers"]["x-total-count"] == "1"

            # the gate's own 401 on an app path is readable too
            bogus = await call(page, "no session", gate + "/app/private", {"credentials": "omit"})
            assert (bogus["ok"], bogus["status"]) == (True, 401), bogus
            error = json.loads(bogus["body"])["error"]
            assert (error["code"], error["status"]) == (401, "Unauthorized"), error
            assert bogus["headers"]["content-type"].startswith("application/json")

            # a preflighted call to an app route: the preflight is the app's to answer (this
            # echo app sends no CORS headers, so the browser stops there)
            app_calls = len(relay.app.requests)
            custom = await call(
                page, "app preflight", gate + "/app/custom", {**include, "headers": {"X-Foo": "1"}}
            )
            assert custom["ok"] is False, custom
            assert custom["error"].startswith("TypeError"), custom
            assert [r["method"] for r in relay.app.requests[app_calls:]] == ["OPTIONS"]

            # apply_to "sessions": the app's own answers get no CORS headers, so even the
            # allowed origin cannot read them (the request itself did reach the app)
            app_calls = len(relay.app.requests)
            app_read = await call(page, "app (no CORS)", gate + "/app/data", include)
            assert app_read == {"ok": False, "error": app_read.get("error")}, app_read
            assert app_read["error"].startswith("TypeError"), app_read
            assert len(relay.app.requests) == app_calls + 1

            # -- a page on a disallowed origin: same-site, so the cookie goes along, but it
            # can read nothing and change nothing
            evil = await context.new_page()
            await evil.goto(bad_origin + "/")
            kratos_calls = list(fake.requests)
            seen.clear()
            for label, url, init in [
                ("evil whoami", gate + "/sessions/whoami", include),
                ("evil list", gate + "/sessions", include),
                ("evil revoke", f"{gate}/sessions/{other2.id}", {**include, "method": "DELETE"}),
                ("evil revoke all", gate + "/sessions", {**include, "method": "DELETE"}),
                (
                    "evil bogus",
                    gate + "/app/private",
                    {"headers": {"X-Session-Token": "not-a-session-token"}},
                ),
            ]:
                result = await call(evil, label, url, init)
                assert result["ok"] is False, (label, result)
                assert result["error"].startswith("TypeError"), (label, result)
            # the preflights failed, so no DELETE ever reached the gate or Kratos
            assert ("OPTIONS", f"/sessions/{other2.id}") in seen, seen
            assert not [m for m in seen if m[0] == "DELETE"], seen
            new_calls = fake.requests[len(kratos_calls) :]
            assert not [c for c in new_calls if c[0] == "DELETE"], new_calls
            assert fake.is_session_active(other2.id) is True
            assert fake.is_session_active(current) is True
            assert fake.is_session_active(bob.id) is True

            # even if a browser did send a cookie-authenticated DELETE from that origin, the
            # gate refuses it before Kratos hears of it
            async with relay.client() as client:
                refused = await client.delete(
                    f"/sessions/{other2.id}",
                    headers={
                        "Cookie": f"ory_kratos_session={session_cookie}",
                        "Origin": bad_origin,
                    },
                )
                assert refused.status_code == 403, refused.text
                assert "Cross-origin" in refused.json()["error"]["reason"]
                assert "access-control-allow-origin" not in refused.headers
                refused_all = await client.delete(
                    "/sessions",
                    headers={
                        "Cookie": f"ory_kratos_session={session_cookie}",
                        "Origin": bad_origin,
                    },
                )
                assert refused_all.status_code == 403, refused_all.text
            assert fake.count("DELETE", f"/sessions/{other2.id}") == 0
            assert fake.count("DELETE", "/sessions") == 0
            assert fake.is_session_active(other2.id) is True

            await page.bring_to_front()
            await page.screenshot(path=SCREENSHOT, full_page=True)
        finally:
            await browser.close()


# -- CORS details over httpx --------------------------------------------------------------------
@pytest.fixture
def cors_relay(
    make_relay: Callable[..., Any], pages: tuple[UvicornThread, UvicornThread]
) -> tuple[Any, str, str]:
    allowed, disallowed = pages
    relay = make_relay(cors={"allowed_origins": [allowed.url]})
    return relay, allowed.url, disallowed.url


def _header_list(value: str | None) -> set[str]:
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


@pytest.mark.parametrize(
    "path", ["/sessions/00000000-0000-0000-0000-000000000001", "/sessions/whoami", "/health/ready"]
)
async def test_preflight_from_allowed_origin(cors_relay: tuple[Any, str, str], path: str) -> None:
    relay, ok_origin, _ = cors_relay
    async with relay.client() as client:
        r = await client.options(
            path,
            headers={
                "Origin": ok_origin,
                "Access-Control-Request-Method": "DELETE",
                "Access-Control-Request-Headers": "x-session-token,content-type",
            },
        )
    assert r.status_code == 200, r.text
    assert r.headers.get_list("access-control-allow-origin") == [ok_origin]
    assert r.headers["access-control-allow-credentials"] == "true"
    allow_headers = _header_list(r.headers.get("access-control-allow-headers"))
    assert {"x-session-token", "authorization", "content-type"} <= allow_headers
    assert "DELETE" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-max-age"] == "600"
    assert "origin" in _header_list(r.headers.get("vary"))
    # answered before any authentication: Kratos never heard of it
    assert relay.fake.count("GET", "/sessions/whoami") == 0
    assert relay.fake.requests == []
    assert relay.app.requests == []


async def test_preflight_from_disallowed_origin(cors_relay: tuple[Any, str, str]) -> None:
    relay, _, bad_origin = cors_relay
    async with relay.client() as client:
        r = await client.options(
            "/sessions/00000000-0000-0000-0000-000000000001",
            headers={"Origin": bad_origin, "Access-Control-Request-Method": "DELETE"},
        )
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers
    assert relay.fake.requests == []


async def test_vary_origin_and_exposed_headers(cors_relay: tuple[Any, str, str]) -> None:
    relay, ok_origin, bad_origin = cors_relay
    alice = relay.fake.login(ALICE)
    relay.fake.login(ALICE)
    token = {"X-Session-Token": alice.token}
    async with relay.client() as client:
        for path in ("/sessions/whoami", "/sessions", "/sessions/whoami"):  # 2nd whoami: cache
            r = await client.get(path, headers={**token, "Origin": ok_origin})
            assert r.status_code == 200, r.text
            assert r.headers.get_list("access-control-allow-origin") == [ok_origin]
            assert r.headers["access-control-allow-credentials"] == "true"
            assert "origin" in _header_list(r.headers.get("vary")), r.headers
            exposed = _header_list(r.headers.get("access-control-expose-headers"))
            assert {"link", "x-total-count", "x-kratos-authenticated-identity-id"} <= exposed
        # the gate's own 401 on an app path, too
        r = await client.get("/app/x", headers={"X-Session-Token": "junk", "Origin": ok_origin})
        assert r.status_code == 401
        assert r.headers.get_list("access-control-allow-origin") == [ok_origin]
        assert "origin" in _header_list(r.headers.get("vary"))
        # a disallowed origin gets the answer (the browser hides it) but never an ACAO
        r = await client.get("/sessions/whoami", headers={**token, "Origin": bad_origin})
        assert r.status_code == 200
        assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize(
    "request_headers", ["x-foo", "x-foo,content-type", "x-session-token", "x-requested-with"]
)
async def test_preflights_for_app_routes_reach_the_app(
    pages: tuple[UvicornThread, UvicornThread], request_headers: str
) -> None:
    """With `apply_to: sessions` the app answers its own routes' preflights, whatever headers
    they ask for; browsers send them without credentials."""
    allowed, _ = pages
    with _gate_in_front_of(CorsUpstream(), {"allowed_origins": [allowed.url]}) as (fake, gate):
        async with httpx.AsyncClient(base_url=gate, timeout=10) as client:
            r = await client.options(
                "/own-cors",
                headers={
                    "Origin": allowed.url,
                    "Access-Control-Request-Method": "PUT",
                    "Access-Control-Request-Headers": request_headers,
                    "X-User-Id": "spoofed",
                },
            )
            assert r.status_code == 200, r.text
            assert r.json() == {"app": "ok", "method": "OPTIONS", "user": []}
            assert r.headers.get_list("access-control-allow-origin") == ["*"]  # the app's
            assert "access-control-allow-headers" not in r.headers  # not the gate's list
            # not a preflight (no Access-Control-Request-Method, or a body): never reaches the
            # app without a session
            r = await client.options("/own-cors", headers={"Origin": allowed.url})
            assert r.status_code == 401
            r = await client.request(
                "OPTIONS",
                "/own-cors",
                headers={"Origin": allowed.url, "Access-Control-Request-Method": "PUT"},
                content=b"x",
            )
            assert b'"app"' not in r.content, r.text
        assert fake.count("GET", "/sessions/whoami") == 0


@pytest.mark.parametrize("cors", ["off", "all"])
async def test_preflights_never_reach_the_app_unless_apply_to_sessions(
    pages: tuple[UvicornThread, UvicornThread], cors: str
) -> None:
    """An unauthenticated OPTIONS would run any app handler that ignores the method: with CORS
    off a preflight is an ordinary request (401 without a session), with `apply_to: all` the
    gate answers it. Either way the app sees nothing."""
    allowed, _ = pages
    upstream = CorsUpstream()
    settings = {} if cors == "off" else {"allowed_origins": [allowed.url], "apply_to": "all"}
    with _gate_in_front_of(upstream, settings) as (fake, gate):
        alice = fake.login(ALICE)
        async with httpx.AsyncClient(base_url=gate, timeout=10) as client:
            preflight = {"Origin": allowed.url, "Access-Control-Request-Method": "DELETE"}
            r = await client.options("/private/report?x=1", headers=preflight)
            assert b'"app"' not in r.content, r.text
            if cors == "off":
                assert r.status_code == 401, r.text
            else:  # the gate's own answer, with its fixed lists
                assert r.status_code == 200, r.text
                assert r.headers.get_list("access-control-allow-origin") == [allowed.url]
                assert "DELETE" in r.headers["access-control-allow-methods"]
            # with a session the OPTIONS reaches the app as any request would (CORS off)
            if cors == "off":
                r = await client.options(
                    "/private/report", headers={**preflight, "X-Session-Token": alice.token}
                )
                assert r.status_code == 200, r.text
                assert r.json()["user"] == [alice.identity_id]
            # a "preflight" with a body is an ordinary request
            r = await client.request("OPTIONS", "/private/report", headers=preflight, content=b"x")
            assert b'"app"' not in r.content, r.text
            if cors == "off":
                assert r.status_code == 401, r.text


def test_config_refuses_wildcard_with_credentials() -> None:
    with pytest.raises(ValidationError, match="allow_credentials"):
        Settings.model_validate({"cors": {"allowed_origins": ["*"]}})
    with pytest.raises(ValidationError, match="allow_credentials"):
        Settings.model_validate(
            {
                "cors": {
                    "allowed_origins": ["https://app.example.com", "*"],
                    "allow_credentials": True,
                }
            }
        )
    with pytest.raises(ValidationError, match="any origin"):
        Settings.model_validate({"cors": {"allowed_origin_regex": ".*"}})
    for regex in ("https?://.*", "http://.*", "https://.+"):  # every origin of a scheme
        with pytest.raises(ValidationError, match="any origin"):
            Settings.model_validate({"cors": {"allowed_origin_regex": regex}})
    # without credentials a wildcard is merely public; a narrow regex is fine with them
    Settings.model_validate({"cors": {"allowed_origins": ["*"], "allow_credentials": False}})
    fine = Settings.model_validate(
        {"cors": {"allowed_origin_regex": r"https://[a-z0-9-]+\.example\.com"}}
    )
    assert fine.cors.allows("https://app.example.com")
    assert not fine.cors.allows("https://attacker.invalid")


@contextmanager
def _gate_in_front_of(upstream: Any, cors: dict[str, Any]) -> Iterator[tuple[Any, str]]:
    """(fake, gate URL): a Kratos fake, `upstream` and a Gate built from Settings."""
    with ExitStack() as stack:
        kratos = FakeKratosServer().start()
        stack.callback(kratos.stop)
        app = _started(stack, UvicornThread(upstream))
        settings = Settings.model_validate(
            {
                "ory": {
                    "public_url": kratos.public_url,
                    "admin_url": kratos.admin_url,
                    "timeout": 3,
                },
                "upstream": {"url": app.url, "timeout": 5},
                "cors": cors,
            }
        )
        server = _started(stack, UvicornThread(Gate(settings), lifespan="on"))
        yield kratos.fake, server.url


async def test_apply_to_all_replaces_the_apps_cors_headers(
    pages: tuple[UvicornThread, UvicornThread],
) -> None:
    allowed, disallowed = pages
    with _gate_in_front_of(
        CorsUpstream(), {"allowed_origins": [allowed.url], "apply_to": "all"}
    ) as (fake, gate):
        alice = fake.login(ALICE)
        async with httpx.AsyncClient(base_url=gate, timeout=10) as client:
            token = {"X-Session-Token": alice.token}
            for path in ("/own-cors", "/plain"):
                r = await client.get(path, headers={**token, "Origin": allowed.url})
                assert r.status_code == 200, r.text
                assert r.headers.get_list("access-control-allow-origin") == [allowed.url]
                assert r.headers.get_list("access-control-allow-credentials") == ["true"]
                assert "x-upstream" not in _header_list(
                    r.headers.get("access-control-expose-headers")
                )
                assert "origin" in _header_list(r.headers.get("vary"))
            # the app's `*` is not passed on to an origin the gate does not allow
            r = await client.get("/own-cors", headers={**token, "Origin": disallowed.url})
            assert r.status_code == 200
            assert "access-control-allow-origin" not in r.headers


async def test_apply_to_sessions_leaves_app_answers_alone(
    pages: tuple[UvicornThread, UvicornThread],
) -> None:
    allowed, _ = pages
    with _gate_in_front_of(CorsUpstream(), {"allowed_origins": [allowed.url]}) as (fake, gate):
        alice = fake.login(ALICE)
        async with httpx.AsyncClient(base_url=gate, timeout=10) as client:
            token = {"X-Session-Token": alice.token}
            r = await client.get("/plain", headers={**token, "Origin": allowed.url})
            assert r.status_code == 200, r.text
            assert not [k for k in r.headers if k.lower().startswith("access-control-")]
            # the app's own CORS headers pass through untouched
            r = await client.get("/own-cors", headers={**token, "Origin": allowed.url})
            assert r.headers.get_list("access-control-allow-origin") == ["*"]
            assert "access-control-allow-credentials" not in r.headers
            # the gate's own 401 on an app path carries CORS for the allowed origin
            r = await client.get("/plain", headers={"Origin": allowed.url})
            assert r.status_code == 401
            assert r.headers.get_list("access-control-allow-origin") == [allowed.url]
            assert r.headers["access-control-allow-credentials"] == "true"
            # and the relay is covered
            r = await client.get("/sessions/whoami", headers={**token, "Origin": allowed.url})
            assert r.status_code == 200
            assert r.headers.get_list("access-control-allow-origin") == [allowed.url]
