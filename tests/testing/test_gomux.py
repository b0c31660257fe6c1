"""The fake routes as Kratos v26.2.0 does: Go's ServeMux and http.Redirect (`testing/gomux.py`).

Kratos registers `METHOD /path` patterns on a plain `http.ServeMux`
(oryx/httprouterx/router.go:105-111; session/handler.go:71-103 for the patterns). These are
the answers a client sees outside the handlers; none has a JSON body, so the client here is
not spec-checked.
"""

from __future__ import annotations

import httpx
import pytest

from sessiongate.testing import KratosFake

TEXT = "text/plain; charset=utf-8"


def client(app, base_url: str) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        # GET and DELETE /sessions (handler.go:96,98); GET brings HEAD (ServeMux.matchingMethods)
        ("POST", "/sessions", "DELETE, GET, HEAD"),
        ("PATCH", "/sessions", "DELETE, GET, HEAD"),
        # only DELETE /sessions/{id} (handler.go:97)
        ("GET", "/sessions/00000000-0000-0000-0000-000000000000", "DELETE"),
        # whoami has 8 methods (handler.go:92-93); DELETE reaches /sessions/{id} instead
        ("PUT", "/self-service/logout/api", "DELETE"),
        ("POST", "/self-service/logout", "GET, HEAD"),
    ],
)
async def test_405_allow_lists_every_method_of_the_path(method, path, allow):
    fake = KratosFake()
    async with client(fake, fake.public_url) as c:
        r = await c.request(method, path)
    assert r.status_code == 405
    assert r.headers["allow"] == allow
    assert r.content == b"Method Not Allowed\n"  # http.Error
    assert r.headers["content-type"] == TEXT
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_405_on_the_admin_port_lists_the_admin_patterns():
    """`/admin/sessions` has GET (handler.go:72) and DELETE (the redirect, handler.go:80)."""
    fake = KratosFake()
    async with client(fake.admin_app, fake.admin_url) as c:
        r = await c.post("/admin/sessions")
    assert r.status_code == 405
    assert r.headers["allow"] == "DELETE, GET, HEAD"


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/sessions/whoami/",  # no pattern ends in "/": no redirect to the slash-less path
        "/sessions/",
        "/sessions/a/b",
    ],
)
async def test_unknown_paths_are_gos_404_without_a_redirect(path):
    fake = KratosFake()
    async with client(fake, fake.public_url) as c:
        r = await c.get(path)
    assert r.status_code == 404
    assert r.content == b"404 page not found\n"  # http.NotFound
    assert r.headers["content-type"] == TEXT
    assert "location" not in r.headers


async def test_admin_port_404_after_adding_the_prefix():
    fake = KratosFake()
    async with client(fake.admin_app, fake.admin_url) as c:
        r = await c.get("/admin/nope")
    assert r.status_code == 404
    assert r.content == b"404 page not found\n"


@pytest.mark.parametrize(
    ("method", "body", "content_type"),
    [
        # Go's http.Redirect: body `<a href="…">Temporary Redirect</a>.` + Fprintln's newline
        ("GET", True, "text/html; charset=utf-8"),
        ("HEAD", False, "text/html; charset=utf-8"),
        ("DELETE", False, None),
    ],
)
async def test_cross_port_redirect_is_gos_http_redirect(method, body, content_type):
    """x/redir/port_redirect.go:29-41: RedirectToPublicRoute ends in http.Redirect(…, 307)."""
    fake = KratosFake()
    path = "/admin/sessions/whoami" if method != "DELETE" else "/admin/sessions"
    async with client(fake.admin_app, fake.admin_url) as c:
        r = await c.request(method, path + "?a=1&b=2")
    assert r.status_code == 307
    location = fake.public_url + path.removeprefix("/admin") + "?a=1&b=2"
    assert r.headers["location"] == location
    escaped = location.replace("&", "&amp;")  # htmlEscape
    expected = f'<a href="{escaped}">Temporary Redirect</a>.\n\n'.encode() if body else b""
    assert r.content == expected
    assert r.headers.get("content-type") == content_type


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/self-service/logout/browser"),
        ("DELETE", "/self-service/logout/api"),
        ("GET", "/self-service/logout?token=x"),
    ],
)
async def test_admin_port_sends_logout_to_the_public_port(method, path):
    """selfservice/flow/logout/handler.go:65-67 registers the three logout routes on the admin
    router as RedirectToPublicRoute (307)."""
    fake = KratosFake()
    async with client(fake.admin_app, fake.admin_url) as c:
        r = await c.request(method, path)
    assert r.status_code == 307
    assert r.headers["location"] == fake.public_url + path


async def test_json_bodies_end_with_the_encoders_newline():
    """herodot writes with json.NewEncoder(w).Encode (herodot v0.10.8 json.go:190 for errors,
    and JSONWriter.Write for results), which ends every document with "\\n"."""
    fake = KratosFake()
    alice = fake.login("alice@example.com")
    async with client(fake, fake.public_url) as c:
        ok = await c.get("/sessions/whoami", headers={"X-Session-Token": alice.token})
        err = await c.get("/sessions/whoami")
    assert ok.content.endswith(b"}\n")
    assert not ok.content.endswith(b"\n\n")
    assert int(ok.headers["content-length"]) == len(ok.content)
    assert err.content.endswith(b"}}\n")
    assert int(err.headers["content-length"]) == len(err.content)
