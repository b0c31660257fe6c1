"""The relay's faithful-but-rewritten answers, and its guards.

* URLs that point at Kratos (`Link`, `Location`, `logout_url`) come back pointing at the gate
  (its origin plus `sessions_api.prefix`); URLs on any other origin are left alone.
* `sessions_api.cookie_domain` replaces the Domain of every relayed `Set-Cookie`, each cookie
  staying its own header.
* Cookie-authenticated DELETE/PATCH/POST need an Origin that is the gate's own or an allowed
  CORS origin (Kratos itself has no CSRF check on these routes, CONTRACT §6).
* Limits and errors: 413 for bodies over 64 KiB, 404/405 for unknown routes/methods, 503 with
  Retry-After when Kratos is unreachable; HEAD gets headers only.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.middleware.gzip import GZipMiddleware

from sessiongate.config import Settings
from sessiongate.gate import Gate
from sessiongate.relay import MAX_BODY
from sessiongate.relay_rewrite import UrlRewriter, rewrite_cookie_domain
from sessiongate.testing import KratosFake, UvicornThread

MakeRelay = Callable[..., Any]  # tests/relay/conftest.py's make_relay → RelayStack
ADMIN_KEY = "gate-admin-key-0123456789"  # what make_relay puts in SESSIONGATE_ADMIN_KEYS
EVIL = "https://evil.example"
APP_ORIGIN = "https://app.example"
GATE_ORIGIN = "<the gate's own origin>"  # stands for stack.server.url in parameters


def links(header: str) -> dict[str, str]:
    """`<url>; rel="x",<url>; rel="y"` → {rel: url}."""
    out = {}
    for part in header.split(","):
        url, _, rel = part.partition(";")
        out[rel.strip().removeprefix('rel="').removesuffix('"')] = url.strip()[1:-1]
    return out


def assert_herodot(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == status
    assert error["status"]
    assert "message" in error  # herodot always emits it (empty for 405/413)
    assert error["reason"] or error["message"]
    return error


# -- unit: UrlRewriter.rewrite_url / rewrite_link -----------------------------------------------
def _rewriter(
    prefix: str = "", public: str = "http://kratos-public", admin: str | None = None
) -> UrlRewriter:
    """The URL rewriter the gate's relay uses with these settings."""
    ory: dict[str, Any] = {"public_url": public}
    if admin:
        ory["admin_url"] = admin
    gate = Gate(Settings.model_validate({"ory": ory, "sessions_api": {"prefix": prefix}}))
    assert gate.relay is not None
    return gate.relay.rewriter


SCOPE = {"type": "http", "scheme": "http", "headers": [(b"host", b"gate.example:8080")]}
GATE = "http://gate.example:8080"


@pytest.mark.parametrize("prefix", ["", "/auth"])
def test_rewrite_link_relative_and_absolute(prefix: str) -> None:
    rewriter = _rewriter(prefix, admin="http://kratos-admin:4434")
    base = GATE + prefix
    relative = (
        "</sessions?page=1&page_size=2&page_token=eyJvZmZzZXQiOiIyIiwidiI6Mn0&per_page=2>; "
        'rel="next",</sessions?page=2&page_size=2&page_token=eyJvZmZzZXQiOiI0IiwidiI6Mn0'
        '&per_page=2>; rel="last"'
    )
    assert rewriter.rewrite_link(relative, SCOPE) == (
        f"<{base}/sessions?page=1&page_size=2&page_token=eyJvZmZzZXQiOiIyIiwidiI6Mn0"
        f'&per_page=2>; rel="next",<{base}/sessions?page=2&page_size=2'
        f'&page_token=eyJvZmZzZXQiOiI0IiwidiI6Mn0&per_page=2>; rel="last"'
    )
    absolute = '<http://kratos-public/sessions?page=0&page_size=1>; rel="first"'
    assert rewriter.rewrite_link(absolute, SCOPE) == (
        f'<{base}/sessions?page=0&page_size=1>; rel="first"'
    )
    admin = (
        '</admin/sessions?page_size=1&page_token=Zmlyc3Q>; rel="first",'
        '<http://kratos-admin:4434/admin/sessions?page_size=1&page_token=bmV4dA>; rel="next"'
    )
    assert rewriter.rewrite_link(admin, SCOPE) == (
        f'<{base}/admin/sessions?page_size=1&page_token=Zmlyc3Q>; rel="first",'
        f'<{base}/admin/sessions?page_size=1&page_token=bmV4dA>; rel="next"'
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://elsewhere.example/sessions?page=1",
        "http://kratos-public:8080/sessions?page=1",  # another port is another origin
        "https://kratos-public/sessions?page=1",  # another scheme too
        "http://kratos-public.evil.example/sessions",
        "//kratos-public/sessions",  # scheme-relative: not Kratos' own relative URL
        "http://evil.example/http://kratos-public/sessions",
    ],
)
def test_rewrite_leaves_foreign_urls_alone(url: str) -> None:
    rewriter = _rewriter()
    assert rewriter.rewrite_url(url, SCOPE) == url
    assert rewriter.rewrite_link(f'<{url}>; rel="next"', SCOPE) == f'<{url}>; rel="next"'


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://kratos-public/sessions/whoami", "/sessions/whoami"),
        ("HTTP://KRATOS-PUBLIC/sessions/whoami", "/sessions/whoami"),
        ("http://kratos-public:80/sessions?x=1", "/sessions?x=1"),
        (
            "http://kratos-public/self-service/logout?token=ory_lo_x",
            "/self-service/logout?token=ory_lo_x",
        ),
        ("/sessions/whoami", "/sessions/whoami"),
        ("http://kratos-admin:4434/admin/sessions/abc", "/admin/sessions/abc"),
    ],
)
@pytest.mark.parametrize("prefix", ["", "/auth"])
def test_rewrite_url_kratos_origins(url: str, expected: str, prefix: str) -> None:
    rewriter = _rewriter(prefix, admin="http://kratos-admin:4434")
    assert rewriter.rewrite_url(url, SCOPE) == GATE + prefix + expected


def test_rewrite_url_strips_kratos_base_path_and_uses_public_url() -> None:
    """Kratos mounted under a path: that path is Kratos', not the gate's."""
    rewriter = _rewriter("/auth", public="https://id.example/kratos")
    assert rewriter.rewrite_url("https://id.example/kratos/sessions?page=1", SCOPE) == (
        GATE + "/auth/sessions?page=1"
    )
    # A configured public_url wins over the Host header.
    gate = Gate(
        Settings.model_validate(
            {"public_url": "https://gate.example", "ory": {"public_url": "http://kratos-public"}}
        )
    )
    assert gate.relay is not None
    assert gate.relay.rewriter.rewrite_url("http://kratos-public/sessions", SCOPE) == (
        "https://gate.example/sessions"
    )


def test_rewrite_cookie_domain_unit() -> None:
    plain = "ory_kratos_session=abc; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax"
    assert rewrite_cookie_domain(plain, "example.test") == (
        "ory_kratos_session=abc; Domain=example.test; Path=/; Max-Age=0; HttpOnly; Secure; "
        "SameSite=Lax"
    )
    with_domain = "csrf_token_x=v; Path=/; Domain=kratos.internal; Max-Age=31536000; HttpOnly"
    out = rewrite_cookie_domain(with_domain, "example.test")
    assert out.lower().count("domain=") == 1
    assert "Domain=example.test" in out
    assert "kratos.internal" not in out


# -- end to end: Link, logout_url, Location --------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "/auth"])
async def test_link_urls_point_at_the_gate(make_relay: MakeRelay, prefix: str) -> None:
    stack = make_relay(prefix=prefix)
    alice = stack.fake.login("alice@example.com")
    others = [stack.fake.login("alice@example.com") for _ in range(3)]
    async with stack.client() as client:
        first = await client.get(
            f"{prefix}/sessions?page_size=1", headers={"X-Session-Token": alice.token}
        )
        assert first.status_code == 200
        assert first.headers["x-total-count"] == "3"
        found = links(first.headers["link"])
        assert set(found) == {"next", "last"}
        for url in found.values():
            assert url.startswith(stack.url + "/sessions?"), url
        query = parse_qs(urlsplit(found["last"]).query)
        assert query["page_size"] == ["1"]
        assert query["page"] == ["2"]
        # The rewritten link works through the gate.
        last = await client.get(found["last"], headers={"X-Session-Token": alice.token})
        assert last.status_code == 200
        assert len(last.json()) == 1
        assert last.json()[0]["id"] in {s.id for s in others}
        for url in links(last.headers["link"]).values():
            assert url.startswith(stack.url + "/sessions?"), url


@pytest.mark.parametrize("prefix", ["", "/auth"])
async def test_admin_link_and_location_point_at_the_gate(
    make_relay: MakeRelay, prefix: str
) -> None:
    stack = make_relay(prefix=prefix, admin=True)
    for who in ("a", "b", "c"):
        stack.fake.login(f"{who}@example.com")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with stack.client() as client:
        page = await client.get(f"{prefix}/admin/sessions?page_size=1", headers=admin)
        assert page.status_code == 200
        assert len(page.json()) == 1
        found = links(page.headers["link"])
        assert {"first", "next"} <= set(found)
        for url in found.values():
            assert url.startswith(stack.url + "/admin/sessions?"), url
        following = await client.get(found["next"], headers=admin)
        assert following.status_code == 200
        assert following.json()[0]["id"] != page.json()[0]["id"]
        # Kratos' 307 from the admin whoami to the public one: Location on the gate.
        redirect = await client.get(f"{prefix}/admin/sessions/whoami", headers=admin)
        assert redirect.status_code == 307
        assert redirect.headers["location"] == stack.url + "/sessions/whoami"
    assert stack.fake.count("GET", "/admin/sessions/whoami") == 1


@pytest.mark.parametrize("prefix", ["", "/auth"])
async def test_logout_url_points_at_the_gate(make_relay: MakeRelay, prefix: str) -> None:
    stack = make_relay(prefix=prefix)
    alice = stack.fake.login("alice@example.com")
    cookie = {"Cookie": stack.fake.cookie_header(alice), "Accept": "application/json"}
    async with stack.client() as client:
        flow = await client.get(f"{prefix}/self-service/logout/browser", headers=cookie)
        assert flow.status_code == 200
        assert int(flow.headers["content-length"]) == len(flow.content)
        body = flow.json()
        assert body["logout_token"] == alice.logout_token
        url = body["logout_url"]
        assert url == f"{stack.url}/self-service/logout?token={alice.logout_token}"
        assert stack.kratos.public_url not in url
        # Following the rewritten URL through the gate logs out.
        done = await client.get(url, headers=cookie)
        assert done.status_code == 204
    assert not stack.fake.is_session_active(alice.id)


async def test_kratos_location_on_browser_logout_points_at_the_gate(make_relay: MakeRelay) -> None:
    stack = make_relay()
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as client:
        done = await client.get(
            f"/self-service/logout?token={alice.logout_token}",
            headers={"Cookie": stack.fake.cookie_header(alice), "Accept": "text/html"},
        )
        assert done.status_code == 303
        assert done.headers["location"].startswith(stack.url + "/")
        assert stack.kratos.public_url not in done.headers["location"]
    assert not stack.fake.is_session_active(alice.id)


# -- cookie_domain ---------------------------------------------------------------------------
@pytest.mark.parametrize("fake_domain", ["", "kratos.internal"])
async def test_cookie_domain_rewrites_each_set_cookie(
    make_relay: MakeRelay, fake_domain: str
) -> None:
    stack = make_relay(
        sessions_api={"cookie_domain": "example.test", "prefix": ""},
        fake_options={"cookie_domain": fake_domain},
    )
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as client:
        done = await client.get(
            f"/self-service/logout?token={alice.logout_token}",
            headers={"Cookie": stack.fake.cookie_header(alice), "Accept": "application/json"},
        )
    assert done.status_code == 204
    cookies = done.headers.get_list("set-cookie")
    assert len(cookies) >= 2, cookies
    names = [c.split("=", 1)[0] for c in cookies]
    assert stack.fake.cookie_name in names
    assert any(n.startswith("csrf_token_") for n in names)
    for cookie in cookies:
        attributes = [a.strip().lower() for a in cookie.split(";")[1:]]
        assert [a for a in attributes if a.startswith("domain=")] == ["domain=example.test"]
        assert "kratos.internal" not in cookie
    expired = next(c for c in cookies if c.startswith(stack.fake.cookie_name + "="))
    assert "Max-Age=0" in expired
    assert not stack.fake.is_session_active(alice.id)


async def test_without_cookie_domain_set_cookie_is_untouched(make_relay: MakeRelay) -> None:
    stack = make_relay(fake_options={"cookie_domain": "kratos.internal"})
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as client:
        done = await client.get(
            f"/self-service/logout?token={alice.logout_token}",
            headers={"Cookie": stack.fake.cookie_header(alice), "Accept": "application/json"},
        )
    cookies = done.headers.get_list("set-cookie")
    assert len(cookies) >= 2
    session = next(c for c in cookies if c.startswith(stack.fake.cookie_name + "="))
    assert "Domain=kratos.internal" in session
    assert "example.test" not in " ".join(cookies)


# -- CSRF: Origin on cookie-authenticated state changes --------------------------------------
@pytest.mark.parametrize(
    "origins",
    [
        [EVIL],
        ["null"],
        ["http://127.0.0.1:1"],
        [APP_ORIGIN],
        # a browser sends one Origin: several are foreign, whichever comes first
        [EVIL, GATE_ORIGIN],
        [GATE_ORIGIN, EVIL],
    ],
)
async def test_cookie_delete_from_foreign_origin_is_refused(
    make_relay: MakeRelay, origins: list[str]
) -> None:
    stack = make_relay()
    current = stack.fake.login("alice@example.com")
    other = stack.fake.login("alice@example.com")
    headers = [("Cookie", stack.fake.cookie_header(current))] + [
        ("Origin", stack.server.url if o == GATE_ORIGIN else o) for o in origins
    ]
    async with stack.client() as client:
        one = await client.delete(f"/sessions/{other.id}", headers=headers)
        assert_herodot(one, 403)
        everyone = await client.delete("/sessions", headers=headers)
        assert_herodot(everyone, 403)
        # The same Origin on a read is fine (CORS, not this check, governs reads).
        read = await client.get("/sessions", headers=headers)
        assert read.status_code == 200
    assert stack.fake.is_session_active(other.id)
    assert stack.fake.is_session_active(current.id)
    assert stack.fake.count("DELETE", f"/sessions/{other.id}") == 0
    assert stack.fake.count("DELETE", "/sessions") == 0


async def _delete_both(stack: Any, headers: dict[str, str], other: Any) -> None:
    async with stack.client() as client:
        one = await client.delete(f"/sessions/{other.id}", headers=headers)
        assert one.status_code == 204, one.text
        assert not stack.fake.is_session_active(other.id)
        third = stack.fake.login("alice@example.com")
        everyone = await client.delete("/sessions", headers=headers)
        assert everyone.status_code == 200, everyone.text
        assert everyone.json()["count"] >= 1
        assert not stack.fake.is_session_active(third.id)


async def test_cookie_delete_from_the_gates_own_origin_is_allowed(make_relay: MakeRelay) -> None:
    stack = make_relay()
    current = stack.fake.login("alice@example.com")
    other = stack.fake.login("alice@example.com")
    headers = {"Cookie": stack.fake.cookie_header(current), "Origin": stack.server.url}
    await _delete_both(stack, headers, other)
    assert stack.fake.is_session_active(current.id)


async def test_cookie_delete_from_an_allowed_cors_origin(make_relay: MakeRelay) -> None:
    stack = make_relay(cors={"allowed_origins": [APP_ORIGIN]})
    current = stack.fake.login("alice@example.com")
    other = stack.fake.login("alice@example.com")
    cookie = stack.fake.cookie_header(current)
    async with stack.client() as client:
        refused = await client.delete(
            f"/sessions/{other.id}", headers={"Cookie": cookie, "Origin": EVIL}
        )
        assert_herodot(refused, 403)
    assert stack.fake.is_session_active(other.id)
    await _delete_both(stack, {"Cookie": cookie, "Origin": APP_ORIGIN}, other)
    assert stack.fake.is_session_active(current.id)


@pytest.mark.parametrize("kind", ["token", "bearer"])
async def test_token_delete_with_foreign_origin_is_allowed(
    make_relay: MakeRelay, kind: str
) -> None:
    """A header credential cannot be sent by a cross-site form or fetch: no CSRF risk."""
    stack = make_relay()
    current = stack.fake.login("alice@example.com")
    other = stack.fake.login("alice@example.com")
    credential = (
        {"X-Session-Token": current.token}
        if kind == "token"
        else {"Authorization": f"Bearer {current.token}"}
    )
    await _delete_both(stack, {**credential, "Origin": EVIL}, other)


async def test_cookie_delete_without_origin_is_allowed(make_relay: MakeRelay) -> None:
    stack = make_relay()
    current = stack.fake.login("alice@example.com")
    other = stack.fake.login("alice@example.com")
    await _delete_both(stack, {"Cookie": stack.fake.cookie_header(current)}, other)


async def test_cookie_admin_call_from_foreign_origin_is_refused(make_relay: MakeRelay) -> None:
    """The admin routes get the same check (a rule-admitted admin uses a cookie)."""
    boss_id = "0b5e5e5e-1111-4222-8333-944445555666"
    stack = make_relay(sessions_api={"admin": {"enabled": True, "allow_identities": [boss_id]}})
    stack.fake.store.add_identity({"email": "boss@example.com"}, identity_id=boss_id)
    boss = stack.fake.create_session(boss_id)
    victim = stack.fake.login("victim@example.com")
    cookie = stack.fake.cookie_header(boss)
    async with stack.client() as client:
        refused = await client.delete(
            f"/admin/sessions/{victim.id}", headers={"Cookie": cookie, "Origin": EVIL}
        )
        assert_herodot(refused, 403)
        assert stack.fake.is_session_active(victim.id)
        allowed = await client.delete(
            f"/admin/sessions/{victim.id}", headers={"Cookie": cookie, "Origin": stack.server.url}
        )
        assert allowed.status_code == 204
    assert not stack.fake.is_session_active(victim.id)


# -- limits and errors -----------------------------------------------------------------------
async def test_body_over_64_kib_is_413(make_relay: MakeRelay) -> None:
    stack = make_relay()
    alice = stack.fake.login("alice@example.com")
    payload = json.dumps({"session_token": alice.token, "pad": "x" * MAX_BODY}).encode()
    assert len(payload) > MAX_BODY
    json_type = {"Content-Type": "application/json"}

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 8192):
            yield payload[start : start + 8192]

    async with stack.client() as client:
        big = await client.request(
            "DELETE", "/self-service/logout/api", content=payload, headers=json_type
        )
        assert_herodot(big, 413)
        streamed = await client.request(
            "DELETE", "/self-service/logout/api", content=chunked(), headers=json_type
        )
        assert_herodot(streamed, 413)
        assert stack.fake.count("DELETE", "/self-service/logout/api") == 0
        assert stack.fake.is_session_active(alice.id)
        # Exactly at the limit is relayed.
        base = json.dumps({"session_token": alice.token, "pad": ""}).encode()
        exact = json.dumps(
            {"session_token": alice.token, "pad": "x" * (MAX_BODY - len(base))}
        ).encode()
        assert len(exact) == MAX_BODY
        ok = await client.request(
            "DELETE", "/self-service/logout/api", content=exact, headers=json_type
        )
        assert ok.status_code == 204, ok.text
    assert not stack.fake.is_session_active(alice.id)


async def test_other_paths_reach_the_app_and_wrong_method_405(make_relay: MakeRelay) -> None:
    stack = make_relay(prefix="/auth")
    alice = stack.fake.login("alice@example.com")
    token = {"X-Session-Token": alice.token}
    before = len(stack.fake.requests)
    async with stack.client() as client:
        # Only Kratos' exact routes are the relay's: anything else under them is the app's.
        for path in ("/auth/sessions/x/y", "/auth/sessions/", "/auth/self-service/logout/other"):
            app = await client.get(path, headers=token)
            assert app.status_code == 200, path
            assert app.json()["path"] == path
        put = await client.put("/auth/sessions", headers=token)
        assert_herodot(put, 405)
        assert {m.strip() for m in put.headers["allow"].split(",")} == {"GET", "DELETE"}
        post = await client.post("/auth/sessions/whoami", headers=token)
        assert_herodot(post, 405)
        assert "GET" in post.headers["allow"]
        # Outside the prefix the same paths are the app's.
        app = await client.get("/sessions/x/y", headers=token)
        assert app.status_code == 200
        assert app.json()["path"] == "/sessions/x/y"
    relayed = [r for r in stack.fake.requests[before:] if r[1] != "/sessions/whoami"]
    assert relayed == []


async def test_kratos_down_is_503_with_retry_after(make_relay: MakeRelay) -> None:
    stack = make_relay(admin=True)
    alice = stack.fake.login("alice@example.com")
    other = stack.fake.login("alice@example.com")
    stack.kratos.stop()
    token = {"X-Session-Token": alice.token}
    async with stack.client() as client:
        calls = [
            ("GET", "/sessions/whoami", token, None),
            ("GET", "/sessions", token, None),
            ("DELETE", f"/sessions/{other.id}", token, None),
            ("DELETE", "/sessions", token, None),
            ("GET", "/self-service/logout/browser", token, None),
            (
                "DELETE",
                "/self-service/logout/api",
                {"Content-Type": "application/json"},
                json.dumps({"session_token": alice.token}).encode(),
            ),
            ("GET", "/admin/sessions", {"Authorization": f"Bearer {ADMIN_KEY}"}, None),
        ]
        for method, path, headers, body in calls:
            response = await client.request(method, path, headers=headers, content=body)
            error = assert_herodot(response, 503)
            assert error["reason"], path
            assert int(response.headers["retry-after"]) > 0, path


async def test_head_whoami_is_headers_only(make_relay: MakeRelay) -> None:
    stack = make_relay()
    alice = stack.fake.login("alice@example.com")
    token = {"X-Session-Token": alice.token}
    async with stack.client() as client:
        first = await client.head("/sessions/whoami", headers=token)  # relayed (cache miss)
        second = await client.head("/sessions/whoami", headers=token)  # from the cache
        full = await client.get("/sessions/whoami", headers=token)
        anonymous = await client.head("/sessions/whoami")
    assert full.status_code == 200
    for response in (first, second):
        assert response.status_code == 200
        assert response.content == b""
        assert response.headers["content-length"] == str(len(full.content))
        assert response.headers["x-kratos-authenticated-identity-id"] == alice.identity_id
        assert response.headers["content-type"].startswith("application/json")
    assert anonymous.status_code == 401
    assert anonymous.content == b""
    # Kratos saw GETs (the relay asks with GET), and only for the first HEAD.
    assert stack.fake.count("HEAD", "/sessions/whoami") == 0
    assert stack.fake.count("GET", "/sessions/whoami") == 2  # first HEAD, anonymous HEAD


async def test_compressed_kratos_answers_are_relayed_decoded() -> None:
    """Kratos behind a compressing proxy (as Ory Network's CDN): the relay hands on the decoded
    body, so it must not hand on `Content-Encoding` (nor the compressed length)."""
    kratos = UvicornThread()
    fake = KratosFake(public_url=kratos.url, admin_url=None)
    kratos.app = GZipMiddleware(fake, minimum_size=10)
    servers = [kratos]
    try:
        kratos.start()
        settings = Settings.model_validate(
            {
                "ory": {"public_url": kratos.url, "timeout": 3},
                "upstream": {"url": "http://127.0.0.1:9"},
            }
        )
        gate = UvicornThread(Gate(settings), lifespan="on")
        servers.append(gate)
        gate.start()
        alice = fake.login("alice@example.com")
        fake.login("alice@example.com")
        token = {"X-Session-Token": alice.token}
        async with httpx.AsyncClient(base_url=gate.url, timeout=10) as client:
            for accept_encoding in ("identity", "gzip"):
                headers = {**token, "Accept-Encoding": accept_encoding}
                gate.app.cache.clear()  # type: ignore[union-attr]
                who = await client.get("/sessions/whoami", headers=headers)
                assert who.status_code == 200
                assert who.json()["id"] == alice.id
                mine = await client.get("/sessions", headers=headers)
                assert mine.status_code == 200
                assert len(mine.json()) == 1
                flow = await client.get("/self-service/logout/browser", headers=headers)
                assert flow.json()["logout_url"].startswith(gate.url + "/self-service/logout?")
                for response in (who, mine, flow):
                    assert "content-encoding" not in response.headers
                    assert int(response.headers["content-length"]) == len(response.content)
    finally:
        for server in reversed(servers):
            server.stop()
