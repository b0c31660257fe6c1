"""Forward auth (sessiongate.forward_auth): the decision endpoint, over real sockets.

Each test runs the real stack (gate_stack.py: the Kratos fake, the recording EchoApp and the
gate under uvicorn on 127.0.0.1) with `forward_auth` on, and calls the decision endpoint the way
a proxy would: raw HTTP/1.1 requests (`call`), so each header set is exactly the one Traefik,
ingress-nginx, Caddy, nginx or Envoy sends (no client library adding its own), duplicates
included. The app must never see a decision call; every allowed answer is exactly 200 with an
empty body and the identity of the session only.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from gate_stack import Stack

from sessiongate.config import Settings
from sessiongate.forward_auth import MAX_TARGET
from sessiongate.gate import Gate
from sessiongate.testing import CreatedSession, FakeKratosServer, UvicornThread

COOKIE = "ory_kratos_session"
APP = "app.example.com"
LOGIN = "http://127.0.0.1:4433/self-service/login/browser"
HTML = "text/html,application/xhtml+xml,*/*;q=0.8"
IDENTITY = ("x-user-id", "x-user-email", "x-session-id")


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def get(self, name: str) -> str | None:
        values = self.all(name)
        assert len(values) <= 1, (name, values)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    def json(self) -> Any:
        return json.loads(self.body)

    def removed(self) -> set[str]:
        return set((self.get("x-envoy-auth-headers-to-remove") or "").split(",")) - {""}


async def call(
    stack: Stack,
    target: str,
    headers: list[tuple[str, str]],
    *,
    method: str = "GET",
    host: str | None = None,
) -> Answer:
    """One raw HTTP/1.1 call to the gate: exactly these headers (plus Host and Connection)."""
    parts = urlsplit(stack.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = [f"{method} {target} HTTP/1.1", f"Host: {host or parts.netloc}"]
    head += [f"{name}: {value}" for name, value in headers]
    head += ["Connection: close", "", ""]
    writer.write("\r\n".join(head).encode("latin-1"))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = raw_head.decode("latin-1").split("\r\n")
    pairs = [line.split(":", 1) for line in lines]
    return Answer(
        int(status_line.split()[1]), [(n.strip().lower(), v.strip()) for n, v in pairs], body
    )


def credential(kind: str, session: CreatedSession) -> list[tuple[str, str]]:
    if kind == "token":
        return [("X-Session-Token", session.token)]
    if kind == "cookie":
        return [("Cookie", f"theme=dark; {COOKIE}={session.cookie}; csrf=abc")]
    return [("Authorization", f"Bearer {session.token}")]


def forwarded(uri: str, method: str = "GET", host: str = APP, proto: str = "https") -> list:
    return [
        ("X-Forwarded-Method", method),
        ("X-Forwarded-Proto", proto),
        ("X-Forwarded-Host", host),
        ("X-Forwarded-Uri", uri),
    ]


def original(uri: str, method: str = "GET", origin: str = f"https://{APP}") -> list:
    return [("X-Original-Method", method), ("X-Original-URL", origin + uri)]


async def decide(
    stack: Stack,
    source: str,
    uri: str,
    headers: list[tuple[str, str]],
    *,
    method: str = "GET",
) -> Answer:
    """Ask about `method uri` on https://app.example.com the way `source` describes it."""
    if source == "forwarded":
        return await call(stack, "/decisions", forwarded(uri, method) + headers)
    if source == "original":
        return await call(stack, "/decisions", original(uri, method) + headers)
    return await call(stack, "/decisions" + uri, headers, method=method, host=APP)


def assert_herodot(answer: Answer, status: int) -> dict[str, Any]:
    assert answer.status == status, (answer.status, answer.headers, answer.body)
    assert answer.get("content-type") == "application/json"
    body = answer.json()
    assert body["error"]["code"] == status
    return body


def assert_no_identity(answer: Answer) -> None:
    names = {n for n, _ in answer.headers}
    assert not names & {*IDENTITY, "x-user-id", "x_user_id", "x-session"}, answer.headers


@pytest.fixture
def make_fa(make_stack: Callable[..., Stack]) -> Callable[..., Stack]:
    def build(source: str = "forwarded", fake_options: dict | None = None, **overrides) -> Stack:
        fa = {"enabled": True, "source": source, **overrides.pop("forward_auth", {})}
        return make_stack(fake_options, forward_auth=fa, **overrides)

    return build


SOURCES = ["forwarded", "original", "path"]


# -- allowed ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["token", "cookie", "bearer"])
@pytest.mark.parametrize("source", SOURCES)
async def test_a_valid_session_is_allowed_with_its_identity(make_fa, source, kind):
    stack = make_fa(source)
    alice = stack.fake.login("alice@example.com")
    answer = await decide(stack, source, "/orders/7?x=1", credential(kind, alice))
    assert answer.status == 200, answer
    assert answer.body == b""
    assert answer.get("content-length") == "0"
    assert answer.get("x-user-id") == alice.identity_id
    assert answer.get("x-user-email") == "alice@example.com"
    assert answer.get("x-session-id") == alice.id
    assert answer.get("cache-control") == "no-store"
    # the proxy drops the credential headers before the app; a cookie credential leaves the
    # app's own cookies behind, in `cookie`, for the proxy to set instead
    removed = answer.removed()
    assert {"x-session-token", "authorization"} <= removed
    assert not removed & set(IDENTITY)  # every identity header is set by this answer
    if kind == "cookie":
        assert answer.get("cookie") == "theme=dark; csrf=abc"
        assert "cookie" not in removed
    else:
        assert answer.get("cookie") is None
        assert "cookie" in removed
    assert stack.app.requests == []  # a decision is never proxied


async def test_the_answer_carries_the_session_header_when_configured(make_fa):
    stack = make_fa("forwarded", session_header="X-Ory-Session")
    alice = stack.fake.login("alice@example.com")
    answer = await decide(stack, "forwarded", "/a", credential("token", alice))
    assert answer.status == 200
    session = json.loads(base64.urlsafe_b64decode(answer.get("x-ory-session") + "=="))
    assert session["id"] == alice.id
    anonymous = await decide(stack, "forwarded", "/public/a", [])
    assert "x-ory-session" in anonymous.removed()


async def test_basic_authorization_for_the_app_is_not_removed(make_fa):
    stack = make_fa("forwarded")
    alice = stack.fake.login("alice@example.com")
    headers = [("Authorization", "Basic dTpw"), ("Cookie", f"{COOKIE}={alice.cookie}")]
    answer = await decide(stack, "forwarded", "/a", headers)
    assert answer.status == 200
    assert "authorization" not in answer.removed()
    assert {"cookie", "x-session-token"} <= answer.removed()


async def test_a_public_path_is_allowed_without_identity(make_fa):
    stack = make_fa("forwarded")
    spoofed = [("X-User-Id", "admin"), ("X_User_Email", "root@example.com")]
    answer = await decide(stack, "forwarded", "/public/logo.png", spoofed)
    assert answer.status == 200, answer
    assert answer.body == b""
    assert_no_identity(answer)
    # the proxy drops a client's own identity headers: none is set by this answer
    assert set(IDENTITY) <= answer.removed()
    # a trick that could make the app see another path is no public path
    tricky = await decide(stack, "forwarded", "/public/..%2fsecret", [])
    assert_herodot(tricky, 401)
    assert stack.fake.count("GET", "/sessions/whoami") == 0


# -- denied -----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
async def test_no_or_a_bad_credential_is_401_for_an_api_client(make_fa, source):
    stack = make_fa(source)
    for headers in ([], [("X-Session-Token", "ory_st_nonsense")], [("Accept", "application/json")]):
        answer = await decide(stack, source, "/api/orders", headers)
        body = assert_herodot(answer, 401)
        assert body["error"]["status"] == "Unauthorized"
        assert answer.get("www-authenticate") == 'Bearer realm="sessiongate"'
        assert_no_identity(answer)
    # a browser's POST is no navigation either
    answer = await decide(stack, source, "/form", [("Accept", HTML)], method="POST")
    assert_herodot(answer, 401)


@pytest.mark.parametrize("source", SOURCES)
async def test_a_browser_is_redirected_to_login_with_the_original_url(make_fa, source):
    stack = make_fa(source)
    answer = await decide(stack, source, "/dash/board?tab=2&q=a%20b", [("Accept", HTML)])
    assert answer.status == 303, answer
    location = urlsplit(answer.get("location"))
    assert f"{location.scheme}://{location.netloc}{location.path}" == LOGIN
    # path: the call's own scheme (plain http to the gate); the others say https
    scheme = "http" if source == "path" else "https"
    assert parse_qs(location.query)["return_to"] == [f"{scheme}://{APP}/dash/board?tab=2&q=a%20b"]
    head = await decide(stack, source, "/dash", [("Accept", HTML)], method="HEAD")
    assert head.status == 303


async def test_return_to_never_leaves_the_allowed_origins(make_fa):
    stack = make_fa(
        "forwarded",
        public_url=f"https://{APP}",
        access={"allowed_return_to": ["https://shop.example.com"]},
    )

    async def return_to(host: str, proto: str = "https") -> list[str]:
        headers = [*forwarded("/x?y=1", host=host, proto=proto), ("Accept", HTML)]
        answer = await call(stack, "/decisions", headers)
        assert answer.status == 303
        return parse_qs(urlsplit(answer.get("location")).query).get("return_to", [])

    assert await return_to(APP) == [f"https://{APP}/x?y=1"]
    assert await return_to("APP.example.com:443") == [f"https://{APP}/x?y=1"]
    assert await return_to("shop.example.com") == ["https://shop.example.com/x?y=1"]
    assert await return_to("evil.example") == []  # no open redirect
    assert await return_to(APP, proto="http") == []  # another origin


async def test_header_mode_gives_browsers_401_with_the_login_url(make_fa):
    stack = make_fa("path", forward_auth={"deny_browsers": "header"})
    answer = await decide(stack, "path", "/dash?tab=2", [("Accept", HTML)])
    body = assert_herodot(answer, 401)
    assert body["error"]["code"] == 401
    location = urlsplit(answer.get("x-sessiongate-login"))
    assert f"{location.scheme}://{location.netloc}{location.path}" == LOGIN
    assert parse_qs(location.query)["return_to"] == [f"http://{APP}/dash?tab=2"]
    assert answer.get("location") is None
    # an API client gets the plain 401, without the header
    api = await decide(stack, "path", "/dash", [])
    assert_herodot(api, 401)
    assert api.get("x-sessiongate-login") is None


@pytest.mark.parametrize("mode", ["redirect", "header"])
async def test_aal2_required(make_fa, mode):
    stack = make_fa("forwarded", forward_auth={"deny_browsers": mode})
    ident = stack.fake.create_identity(email="mfa@example.com", available_aal="aal2")
    sess = stack.fake.create_session(ident, aal="aal1")
    api = await decide(stack, "forwarded", "/a", credential("token", sess))
    body = assert_herodot(api, 403)
    assert body["error"]["id"] == "session_aal2_required"
    assert api.get("ory-error-id") == "session_aal2_required"
    browser = await decide(
        stack, "forwarded", "/a?b=1", [*credential("cookie", sess), ("Accept", HTML)]
    )
    target = browser.get("location") if mode == "redirect" else browser.get("x-sessiongate-login")
    assert browser.status == (303 if mode == "redirect" else 401), browser
    query = parse_qs(urlsplit(target).query)
    assert query["aal"] == ["aal2"]
    assert query["return_to"] == [f"https://{APP}/a?b=1"]
    upgraded = stack.fake.create_session(ident, aal="aal2")
    assert (await decide(stack, "forwarded", "/a", credential("token", upgraded))).status == 200


async def test_a_denials_body_follows_the_calls_method_not_the_originals(make_fa):
    # Traefik and nginx call with GET whatever the original method: a HEAD original still
    # gets its body (else the proxy waits for bytes that never come), a HEAD call none
    stack = make_fa("forwarded")
    get_call = await call(stack, "/decisions", forwarded("/a", method="HEAD"))
    assert_herodot(get_call, 401)
    assert len(get_call.body) == int(get_call.get("content-length")) > 0
    head_call = await call(stack, "/decisions", forwarded("/a"), method="HEAD")
    assert head_call.status == 401
    assert head_call.body == b""
    bad = await call(stack, "/decisions", forwarded("a", method="HEAD"))
    assert len(assert_herodot(bad, 400)) > 0


async def test_kratos_down_fails_closed_with_retry_after(make_fa):
    stack = make_fa("forwarded")
    alice = stack.fake.login("alice@example.com")  # never asked about: not cached
    stack.kratos.stop()
    for headers in (credential("token", alice), [*credential("cookie", alice), ("Accept", HTML)]):
        answer = await decide(stack, "forwarded", "/a", headers)
        assert_herodot(answer, 503)
        assert int(answer.get("retry-after")) >= 1
        assert_no_identity(answer)


async def test_a_session_revoked_through_the_relay_is_refused_on_the_next_decision(make_fa):
    stack = make_fa("forwarded")
    alice = stack.fake.login("alice@example.com")
    assert (await decide(stack, "forwarded", "/a", credential("token", alice))).status == 200
    assert (await decide(stack, "forwarded", "/a", credential("cookie", alice))).status == 200
    whoami = stack.fake.count("GET", "/sessions/whoami")
    assert (await decide(stack, "forwarded", "/a", credential("token", alice))).status == 200
    assert stack.fake.count("GET", "/sessions/whoami") == whoami  # served from the cache
    async with stack.client() as client:
        out = await client.request(
            "DELETE",
            "/self-service/logout/api",
            content=json.dumps({"session_token": alice.token}),
            headers={"Content-Type": "application/json"},
        )
        assert out.status_code == 204, out.text
    for kind in ("token", "cookie", "bearer"):
        assert_herodot(await decide(stack, "forwarded", "/a", credential(kind, alice)), 401)


async def test_identity_headers_sent_on_the_call_never_come_back(make_fa):
    stack = make_fa("forwarded")
    alice = stack.fake.login("alice@example.com")
    spoofed = [
        ("X-User-Id", "admin"),
        ("x_user_id", "admin"),
        ("X-USER-EMAIL", "root@example.com"),
        ("X-Session-Id", "s"),
        ("X-Kratos-Authenticated-Identity-Id", "admin"),
    ]
    ok = await decide(stack, "forwarded", "/a", [*credential("token", alice), *spoofed])
    assert ok.status == 200
    assert [(n, v) for n, v in ok.headers if n.startswith(("x-user", "x-session", "x-kratos"))] == [
        ("x-user-id", alice.identity_id),
        ("x-user-email", "alice@example.com"),
        ("x-session-id", alice.id),
    ]
    for headers in (spoofed, [("X-Session-Token", "junk"), *spoofed]):
        answer = await decide(stack, "forwarded", "/a", headers)
        assert_herodot(answer, 401)
        assert not [n for n, _ in answer.headers if n.startswith(("x-user", "x-session"))]


# -- the caller and the endpoint --------------------------------------------------------------


async def test_an_untrusted_caller_gets_403_and_kratos_is_not_asked(make_fa):
    stack = make_fa("forwarded", forward_auth={"trusted_callers": ["10.0.0.0/8", "::1"]})
    alice = stack.fake.login("alice@example.com")
    for uri in ("/a", "/public/a"):
        answer = await decide(stack, "forwarded", uri, credential("token", alice))
        assert_herodot(answer, 403)
        assert_no_identity(answer)
    assert stack.fake.count("GET", "/sessions/whoami") == 0
    # the same gate still proxies its app (trusted_callers is about decisions only)
    async with stack.client() as client:
        r = await client.get("/hello", headers={"X-Session-Token": alice.token})
    assert r.status_code == 200


METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@pytest.mark.parametrize("source", SOURCES)
async def test_every_method_on_the_path_and_below_is_answered_and_never_proxied(make_fa, source):
    stack = make_fa(source)
    alice = stack.fake.login("alice@example.com")
    for method in METHODS:
        for target in ("/decisions", "/decisions/", "/decisions/deep/er?q=1"):
            headers = credential("token", alice)
            if source == "forwarded":
                headers += forwarded("/a", method)
            elif source == "original":
                headers += original("/a", method)
            answer = await call(stack, target, headers, method=method, host=APP)
            assert answer.status == 200, (method, target, answer)
            assert answer.body == b""
            assert answer.get("x-user-id") == alice.identity_id
    assert stack.app.requests == []
    async with stack.client() as client:
        # not the decision path: the app's, behind the gatekeeper as usual
        r = await client.get("/decisionsX", headers={"X-Session-Token": alice.token})
        assert r.status_code == 200
        assert_herodot_httpx(await client.get("/decisions-report"), 401)
    assert [r["path"] for r in stack.app.requests] == ["/decisionsX"]


def assert_herodot_httpx(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == status


async def test_a_websocket_to_the_decision_path_is_refused(make_fa):
    stack = make_fa("forwarded")
    alice = stack.fake.login("alice@example.com")
    head = [
        "GET /decisions HTTP/1.1",
        f"Host: {urlsplit(stack.url).netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        f"X-Session-Token: {alice.token}",
        *(f"{n}: {v}" for n, v in forwarded("/a")),
    ]
    data = await raw(stack, "\r\n".join([*head, "", ""]).encode())
    assert data.startswith(b"HTTP/1.1 403"), data[:200]
    assert stack.app.requests == []


async def raw(stack: Stack, request: bytes) -> bytes:
    parts = urlsplit(stack.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_a_cookie_websocket_handshake_from_a_foreign_origin_is_refused(make_fa):
    stack = make_fa("forwarded")
    alice = stack.fake.login("alice@example.com")
    cookie = credential("cookie", alice)
    ws = forwarded("/socket", proto="wss")
    foreign = await call(stack, "/decisions", [*ws, *cookie, ("Origin", "https://evil.example")])
    assert_herodot(foreign, 403)
    own = await call(stack, "/decisions", [*ws, *cookie, ("Origin", f"https://{APP}")])
    assert own.status == 200
    # a token is no ambient credential: a foreign origin may use one
    token = [*ws, *credential("token", alice), ("Origin", "https://evil.example")]
    assert (await call(stack, "/decisions", token)).status == 200


async def test_a_genuine_preflight_passes_when_the_gate_does_cors(make_fa):
    preflight = [("Origin", "https://spa.example.com"), ("Access-Control-Request-Method", "PUT")]
    stack = make_fa("forwarded", cors={"allowed_origins": ["https://spa.example.com"]})
    answer = await decide(stack, "forwarded", "/api/a", preflight, method="OPTIONS")
    assert answer.status == 200
    assert_no_identity(answer)
    without_cors = make_fa("forwarded")
    answer = await decide(without_cors, "forwarded", "/api/a", preflight, method="OPTIONS")
    assert_herodot(answer, 401)


# -- no fallback between header families -------------------------------------------------------


async def test_source_original_ignores_forwarded_headers(make_fa):
    stack = make_fa("original")
    headers = [*forwarded("/public/a"), ("X-Original-Method", "GET")]
    protected = await call(stack, "/decisions", [*headers, ("X-Original-URL", f"https://{APP}/a")])
    assert_herodot(protected, 401)
    public = await call(
        stack, "/decisions", [*headers, ("X-Original-URL", f"https://{APP}/public/a")]
    )
    assert public.status == 200
    # and X-Forwarded-* never stand in for a missing X-Original-URL
    assert_herodot(await call(stack, "/decisions", headers), 400)


async def test_source_forwarded_ignores_original_headers(make_fa):
    stack = make_fa("forwarded")
    spoof = original("/public/a")
    assert_herodot(await call(stack, "/decisions", [*spoof, *forwarded("/a")]), 401)
    assert (await call(stack, "/decisions", [*spoof, *forwarded("/public/a")])).status == 200
    assert_herodot(await call(stack, "/decisions", spoof), 400)


async def test_source_path_ignores_both_header_families(make_fa):
    stack = make_fa("path")
    spoof = [*forwarded("/public/a"), *original("/public/a")]
    assert_herodot(await call(stack, "/decisions/a", spoof, host=APP), 401)
    assert (await call(stack, "/decisions/public/a", spoof, host=APP)).status == 200
    # nor the path below the decision endpoint for the header families
    forwarded_stack = make_fa("forwarded")
    answer = await call(forwarded_stack, "/decisions/public/a", forwarded("/a"))
    assert_herodot(answer, 401)


# -- what the real callers send (from their documentation and source) -------------------------


async def test_traefik_forward_auth_header_set(make_fa):
    """Traefik v3 `forwardAuth`: a GET to the address with the client's headers and
    X-Forwarded-Method/-Proto/-Host/-Uri (with the query), -Port and -For (forward.go)."""
    stack = make_fa("forwarded")
    alice = stack.fake.login("alice@example.com")
    traefik = [
        ("X-Forwarded-Method", "POST"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", APP),
        ("X-Forwarded-Uri", "/cart/add?item=3"),
        ("X-Forwarded-Port", "443"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("User-Agent", "Mozilla/5.0"),
        ("Accept", "application/json"),
    ]
    ok = await call(stack, "/decisions", [*traefik, *credential("cookie", alice)])
    assert ok.status == 200
    assert ok.get("x-user-id") == alice.identity_id
    assert_herodot(await call(stack, "/decisions", traefik), 401)
    # a browser navigation through Traefik: the 303 is copied to the client as is
    nav = [("X-Forwarded-Method", "GET"), *traefik[1:6], ("Accept", HTML)]
    answer = await call(stack, "/decisions", nav)
    assert answer.status == 303
    return_to = parse_qs(urlsplit(answer.get("location")).query)["return_to"]
    assert return_to == [f"https://{APP}/cart/add?item=3"]


async def test_ingress_nginx_auth_url_header_set(make_fa):
    """ingress-nginx `auth-url`: Host is the auth service's, X-Forwarded-Proto is cleared, the
    original request is in X-Original-URL ($scheme://$http_host$request_uri) and
    X-Original-Method, plus X-Auth-Request-Redirect, X-Sent-From, X-Real-IP, X-Request-ID."""
    stack = make_fa("original")
    alice = stack.fake.login("alice@example.com")
    ingress = [
        ("X-Original-URL", f"https://{APP}/reports/q3?fmt=pdf"),
        ("X-Original-Method", "GET"),
        ("X-Auth-Request-Redirect", "/reports/q3?fmt=pdf"),
        ("X-Sent-From", "nginx-ingress-controller"),
        ("X-Real-IP", "203.0.113.7"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Request-ID", "5f1c0a"),
        ("Accept", HTML),
    ]
    auth_host = "sessiongate.auth.svc.cluster.local"
    for kind in ("token", "cookie", "bearer"):
        ok = await call(stack, "/decisions", [*ingress, *credential(kind, alice)], host=auth_host)
        assert ok.status == 200, ok
        assert ok.get("x-user-id") == alice.identity_id
    denied = await call(stack, "/decisions", ingress, host=auth_host)
    assert denied.status == 303  # redirect mode; `header` is the one for nginx (see README)
    return_to = parse_qs(urlsplit(denied.get("location")).query)["return_to"]
    assert return_to == [f"https://{APP}/reports/q3?fmt=pdf"]  # not the auth host


async def test_envoy_ext_authz_http_header_set(make_fa):
    """Envoy `ext_authz` (HTTP service): the same method, path_prefix + the original
    path?query, and only Host (the original), Method, Path, Content-Length: 0, Authorization and
    the `allowed_headers` (here Cookie, Accept)."""
    stack = make_fa("path")
    alice = stack.fake.login("alice@example.com")
    for method in ("GET", "POST", "DELETE"):
        for headers in (
            [("Authorization", f"Bearer {alice.token}")],
            [("Cookie", f"{COOKIE}={alice.cookie}"), ("Accept", "*/*")],
        ):
            answer = await call(
                stack,
                "/decisions/api/items/9?full=1",
                [("Content-Length", "0"), *headers],
                method=method,
                host=f"{APP}:8443",
            )
            assert answer.status == 200, (method, answer)
            assert answer.get("x-user-id") == alice.identity_id
            assert {"authorization", "x-session-token"} <= answer.removed()
    denied = await call(
        stack, "/decisions/api/items/9", [("Content-Length", "0")], method="POST", host=APP
    )
    assert_herodot(denied, 401)
    assert stack.app.requests == []


# -- bad input: 400, never 200, never 500 ------------------------------------------------------

GOOD = forwarded("/a")


def without(name: str) -> list[tuple[str, str]]:
    return [(n, v) for n, v in GOOD if n != name]


def replaced(name: str, value: str) -> list[tuple[str, str]]:
    return [*without(name), (name, value)]


BAD_FORWARDED = {
    "no method": without("X-Forwarded-Method"),
    "no proto": without("X-Forwarded-Proto"),
    "no host": without("X-Forwarded-Host"),
    "no uri": without("X-Forwarded-Uri"),
    "uri twice, different": [*GOOD, ("X-Forwarded-Uri", "/public/a")],
    "host twice, different": [*GOOD, ("X-Forwarded-Host", "other.example.com")],
    "method twice, different": [*GOOD, ("X-Forwarded-Method", "POST")],
    "relative uri": replaced("X-Forwarded-Uri", "public/a"),
    "absolute-form uri": replaced("X-Forwarded-Uri", f"http://{APP}/public/a"),
    "asterisk uri": replaced("X-Forwarded-Uri", "*"),
    "uri with a fragment": replaced("X-Forwarded-Uri", "/a#frag"),
    "uri with a space": replaced("X-Forwarded-Uri", "/public/a /a"),
    "oversized uri": replaced("X-Forwarded-Uri", "/" + "a" * MAX_TARGET),
    "proto list": replaced("X-Forwarded-Proto", "https, http"),
    "proto ftp": replaced("X-Forwarded-Proto", "ftp"),
    "host list": replaced("X-Forwarded-Host", f"{APP}, evil.example"),
    "host with userinfo": replaced("X-Forwarded-Host", f"user@{APP}"),
    "host with a path": replaced("X-Forwarded-Host", f"{APP}/x"),
    "oversized host": replaced("X-Forwarded-Host", "a" * 400 + ".example"),
    "unknown method": replaced("X-Forwarded-Method", "FETCH"),
    "lower-case method": replaced("X-Forwarded-Method", "get"),
    "8-bit bytes": replaced("X-Forwarded-Uri", "/caf\xe9"),
}


@pytest.mark.parametrize("case", list(BAD_FORWARDED))
async def test_bad_forwarded_headers_are_400(make_fa, case):
    stack = make_fa("forwarded")
    alice = stack.fake.login("alice@example.com")
    answer = await call(stack, "/decisions", [*BAD_FORWARDED[case], *credential("token", alice)])
    assert_herodot(answer, 400)
    assert_no_identity(answer)
    assert stack.app.requests == []
    # the same call with the good set is allowed: the 400 is about the bad value
    assert (await call(stack, "/decisions", [*GOOD, *credential("token", alice)])).status == 200


async def test_the_same_value_twice_is_no_contradiction(make_fa):
    stack = make_fa("forwarded")
    alice = stack.fake.login("alice@example.com")
    answer = await call(stack, "/decisions", [*GOOD, *GOOD, *credential("token", alice)])
    assert answer.status == 200


BAD_ORIGINAL = {
    "no url": [("X-Original-Method", "GET")],
    "no method": [("X-Original-URL", f"https://{APP}/a")],
    "relative url": original("/a", origin=""),
    "scheme-relative url": original("/a", origin=f"//{APP}"),
    "ftp url": original("/a", origin=f"ftp://{APP}"),
    "userinfo": original("/a", origin=f"https://u:p@{APP}"),
    "no host": original("/a", origin="https://"),
    "url twice, different": [*original("/a"), ("X-Original-URL", f"https://{APP}/public/a")],
    "oversized url": original("/" + "a" * MAX_TARGET),
    "unknown method": original("/a", method="BREW"),
}


@pytest.mark.parametrize("case", list(BAD_ORIGINAL))
async def test_bad_original_headers_are_400(make_fa, case):
    stack = make_fa("original")
    alice = stack.fake.login("alice@example.com")
    answer = await call(stack, "/decisions", [*BAD_ORIGINAL[case], *credential("token", alice)])
    assert_herodot(answer, 400)
    assert_no_identity(answer)
    good = [*original("/a"), *credential("token", alice)]
    assert (await call(stack, "/decisions", good)).status == 200


async def test_bad_path_calls_are_400(make_fa):
    stack = make_fa("path")
    alice = stack.fake.login("alice@example.com")
    token = credential("token", alice)
    cases = [
        ("GET", "/decisions%2Fpublic/a", [("Host", APP), *token]),  # the prefix, not as written
        ("BREW", "/decisions/a", [("Host", APP), *token]),  # no HTTP method
        ("GET", "/decisions/" + "a" * MAX_TARGET, [("Host", APP), *token]),
        ("GET", "/decisions/a", [("Host", APP), ("Host", "evil.example"), *token]),
    ]
    for method, target, headers in cases:
        head = [f"{method} {target} HTTP/1.1", *(f"{n}: {v}" for n, v in headers)]
        data = await raw(stack, "\r\n".join([*head, "Connection: close", "", ""]).encode())
        status = int(data.split(b" ", 2)[1])
        assert status == 400, (method, target[:40], data[:300])
        assert b"x-user-id" not in data.lower()
    assert (await call(stack, "/decisions/a", token, host=APP)).status == 200


# -- a decision service with no app -----------------------------------------------------------


async def test_a_decision_service_needs_no_app_and_404s_other_paths():
    with FakeKratosServer() as kratos:
        settings = Settings.model_validate(
            {
                "ory": {"public_url": kratos.public_url, "timeout": 2},
                "forward_auth": {"enabled": True, "source": "forwarded"},
                "access": {"login_url": LOGIN},
            }
        )
        assert settings.upstream.url is None
        gate = Gate(settings)
        assert gate.proxy is None
        alice = kratos.fake.login("alice@example.com")
        with UvicornThread(gate, lifespan="on") as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                token = {"X-Session-Token": alice.token}
                for path in ("/", "/hello", "/public/x"):
                    r = await client.get(path, headers=token)
                    assert r.status_code == 404, r.text
                    assert r.headers["content-type"] == "application/json"
                    assert "/decisions" in r.json()["error"]["reason"]
                assert kratos.fake.count("GET", "/sessions/whoami") == 0
                assert (await client.get("/health/alive")).status_code == 200
                whoami = await client.get("/sessions/whoami", headers=token)  # the relay
                assert whoami.status_code == 200
                ok = await client.get("/decisions", headers={**token, **dict(forwarded("/a"))})
                assert ok.status_code == 200
                assert ok.headers["x-user-id"] == alice.identity_id
