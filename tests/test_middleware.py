"""Middleware mode: `SessionGateMiddleware` around Starlette, FastAPI and bare ASGI apps.

Every app is served by a real uvicorn on 127.0.0.1 with the Kratos fake on its own ports. The
upstream URL points at a closed port: the middleware decides and annotates, it never forwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from redis_servers import RedisServers
from resources import raw_request
from sessiongate.cache import CachedSession
from sessiongate.config import Settings
from sessiongate.middleware import OryUser, SessionGateMiddleware, require_session
from sessiongate.testing import FakeKratosServer, KratosFake, UvicornThread

LOGIN_URL = "http://127.0.0.1:4433/self-service/login/browser"


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(kratos_url: str, **overrides: Any) -> Settings:
    data: dict[str, Any] = {
        "ory": {"public_url": kratos_url, "timeout": 2},
        # nothing listens here: middleware mode must never need the upstream
        "upstream": {"url": f"http://127.0.0.1:{closed_port()}", "connect_timeout": 1},
        "access": {"login_url": LOGIN_URL, "public_paths": ["/health/**"]},
    }
    data.update(overrides)
    return Settings.model_validate(data)


@pytest.fixture
def kratos() -> Iterator[FakeKratosServer]:
    server = FakeKratosServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake(kratos: FakeKratosServer) -> KratosFake:
    return kratos.fake


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[UvicornThread] = []

    def run(app: Any, **options: Any) -> str:
        server = UvicornThread(app, **options)
        server.start()
        started.append(server)
        return server.url

    yield run
    for server in reversed(started):
        server.stop()


async def client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=10, follow_redirects=False)


# --- a Starlette app -------------------------------------------------------------------------


class Views:
    """Starlette views that report what the middleware gave them, and count their calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def whoami(self, request: Request) -> JSONResponse:
        self.calls += 1
        user = request.user
        assert isinstance(user, OryUser)
        return JSONResponse(
            {
                "authenticated": user.is_authenticated,
                "identity_id": user.identity_id,
                "display_name": user.display_name,
                "aal": user.aal,
                "session_id": user.session_id,
                "scopes": list(request.auth.scopes),
                "state_session_id": request.state.ory_session["id"],
                "x_user_id": request.headers.getlist("x-user-id"),
                "x_user_email": request.headers.getlist("x-user-email"),
                "raw_header_names": [k.decode() for k, _ in request.scope["headers"]],
                "greeting": getattr(request.state, "greeting", None),
            }
        )

    async def health(self, request: Request) -> JSONResponse:
        self.calls += 1
        return JSONResponse(
            {
                "ory_session": request.state.ory_session,
                "x_user_id": request.headers.getlist("x-user-id"),
                "authenticated": request.user.is_authenticated,
                "display_name": request.user.display_name,
                "scopes": list(request.auth.scopes),
            }
        )

    async def echo(self, request: Request) -> JSONResponse:
        self.calls += 1
        body = await request.body()
        return JSONResponse(
            {
                "size": len(body),
                "digest": hashlib.sha256(body).hexdigest(),
                "user": request.user.identity_id,
            }
        )

    async def socket(self, websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(websocket.user.identity_id)
        await websocket.close()


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    yield {"greeting": "hello from lifespan"}


def starlette_app(settings: Settings, views: Views) -> Starlette:
    return Starlette(
        routes=[
            Route("/me", views.whoami),
            Route("/health/alive", views.health),
            Route("/cors", views.health, methods=["OPTIONS"]),
            Route("/echo", views.echo, methods=["POST"]),
            WebSocketRoute("/ws", views.socket),
        ],
        middleware=[Middleware(SessionGateMiddleware, settings=settings)],
        lifespan=lifespan,
    )


@pytest.fixture
def views() -> Views:
    return Views()


@pytest.fixture
def app_url(kratos, views, serve) -> str:
    return serve(starlette_app(make_settings(kratos.public_url), views), lifespan="on")


async def test_valid_token_annotates_user_auth_and_state(app_url, fake, views):
    alice = fake.login("alice@example.com")
    async with await client(app_url) as c:
        r = await c.get("/me", headers={"X-Session-Token": alice.token})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["authenticated"] is True
    assert body["identity_id"] == alice.identity_id
    assert body["display_name"] == "alice@example.com"
    assert body["aal"] == "aal1"
    assert body["session_id"] == alice.id
    assert "authenticated" in body["scopes"]
    assert "aal1" in body["scopes"]
    assert body["state_session_id"] == alice.id
    assert body["x_user_id"] == [alice.identity_id]
    assert body["x_user_email"] == ["alice@example.com"]
    # the app's lifespan still runs through the middleware and its state reaches requests
    assert body["greeting"] == "hello from lifespan"
    assert views.calls == 1


@pytest.mark.parametrize("credential", ["cookie", "bearer"])
async def test_cookie_and_bearer_credentials(app_url, fake, credential):
    bob = fake.login("bob@example.com")
    headers = (
        {"Cookie": f"other=1; {fake.cookie_name}={bob.cookie}"}
        if credential == "cookie"
        else {"Authorization": f"Bearer {bob.token}"}
    )
    async with await client(app_url) as c:
        r = await c.get("/me", headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["identity_id"] == bob.identity_id


async def test_sessions_are_cached_between_requests(app_url, fake):
    alice = fake.login("alice@example.com")
    before = fake.count("GET", "/sessions/whoami")
    async with await client(app_url) as c:
        for _ in range(3):
            r = await c.get("/me", headers={"X-Session-Token": alice.token})
            assert r.status_code == 200
    assert fake.count("GET", "/sessions/whoami") - before == 1


async def test_no_session_is_a_401_envelope_for_apis(app_url, views):
    async with await client(app_url) as c:
        r = await c.get("/me", headers={"Accept": "application/json"})
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/json"
        assert r.headers["www-authenticate"].startswith("Bearer")
        err = r.json()["error"]
        assert err["code"] == 401
        assert err["status"] == "Unauthorized"
        assert err["message"]
        r = await c.get("/me", headers={"X-Session-Token": "no-such-token"})
        assert r.status_code == 401
        r = await c.post("/echo", content=b"x", headers={"Accept": "text/html"})
        assert r.status_code == 401  # not a navigation: no redirect
    assert views.calls == 0


async def test_no_session_redirects_browsers_to_login(app_url, views):
    async with await client(app_url) as c:
        r = await c.get("/me?tab=1", headers={"Accept": "text/html,application/xhtml+xml"})
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location.startswith(LOGIN_URL)
    assert "return_to=" in location
    assert views.calls == 0


async def test_revoked_session_is_refused(app_url, fake, views):
    carol = fake.login("carol@example.com")
    fake.revoke_session(carol.id)
    async with await client(app_url) as c:
        r = await c.get("/me", headers={"X-Session-Token": carol.token})
    assert r.status_code == 401
    assert views.calls == 0


async def test_the_sessions_page_is_answered_by_the_middleware(kratos, fake, views, serve):
    """The page before the app: a form signs another session out, through Kratos and the
    middleware's cache, and that session's next request to the app is refused."""
    settings = make_settings(kratos.public_url, sessions_page={"enabled": True})
    url = serve(starlette_app(settings, views), lifespan="on")
    phone = fake.login("alice@example.com", devices=[{"user_agent": "Phone/1.0 <b>"}])
    laptop = fake.login("alice@example.com")
    page = "/.sessiongate/sessions"
    async with await client(url) as c:
        r = await c.get("/me", headers={"X-Session-Token": phone.token})
        assert r.status_code == 200  # the phone's session is cached now
        laptop_cookie = {"Cookie": fake.cookie_header(laptop), "Accept": "text/html"}
        shown = await c.get(page, headers=laptop_cookie)
        assert shown.status_code == 200, shown.text
        assert shown.headers["cache-control"] == "no-store"
        assert "Phone/1.0 &lt;b&gt;" in shown.text
        # no relay in middleware mode: the logout link is Kratos' own
        assert f'href="{kratos.public_url}/self-service/logout?token=ory_lo_' in shown.text
        token = shown.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        done = await c.post(
            page,
            data={"action": "revoke", "session": phone.id, "csrf": token},
            headers={**laptop_cookie, "Origin": url},
        )
        assert done.status_code == 303
        assert done.headers["location"].startswith(page + "?status=revoked&proof=")
        r = await c.get("/me", headers={"X-Session-Token": phone.token})
        assert r.status_code == 401
    assert views.calls == 1  # the page never reached the app
    assert fake.is_session_active(laptop.id)


async def test_public_path_passes_without_a_session(app_url, views):
    async with await client(app_url) as c:
        r = await c.get("/health/alive", headers={"X-User-Id": "spoofed"})
    assert r.status_code == 200, r.text
    # request.user works in the view (Starlette's anonymous user), as it would under
    # AuthenticationMiddleware: no 500 on a public path
    assert r.json() == {
        "ory_session": None,
        "x_user_id": [],
        "authenticated": False,
        "display_name": "",
        "scopes": [],
    }
    assert views.calls == 1


async def test_preflight_reaches_the_app_without_a_session(kratos, fake, views, serve):
    """Under `cors.apply_to: sessions` the app's own CORS layer answers preflights; browsers
    send them without credentials."""
    settings = make_settings(
        kratos.public_url, cors={"allowed_origins": ["https://front.example.com"]}
    )
    app_url = serve(starlette_app(settings, views), lifespan="on")
    async with await client(app_url) as c:
        r = await c.options(
            "/cors",
            headers={
                "Origin": "https://front.example.com",
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "x-foo",
                "X-User-Id": "spoofed",
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["authenticated"] is False
        assert r.json()["x_user_id"] == []
        # an OPTIONS that is not a preflight (no Access-Control-Request-Method, or a body)
        # still needs a session
        r = await c.options("/cors", headers={"Origin": "https://front.example.com"})
        assert r.status_code == 401
        r = await c.request(
            "OPTIONS",
            "/cors",
            headers={"Origin": "https://front.example.com", "Access-Control-Request-Method": "PUT"},
            content=b"x",
        )
        assert r.status_code == 401
    assert views.calls == 1
    assert fake.count("GET", "/sessions/whoami") == 0


@pytest.mark.parametrize("cors", ["off", "all"])
async def test_preflight_needs_a_session_unless_apply_to_sessions(kratos, fake, views, serve, cors):
    """With CORS off (or `apply_to: all`) an OPTIONS preflight is an ordinary request: any view
    that ignores the method would otherwise run unauthenticated."""
    overrides = {} if cors == "off" else {"cors": {"allowed_origins": ["*"], "apply_to": "all"}}
    if cors == "all":
        overrides["cors"]["allow_credentials"] = False
    app_url = serve(starlette_app(make_settings(kratos.public_url, **overrides), views))
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "DELETE"}
    async with await client(app_url) as c:
        r = await c.options("/cors?x=1", headers=preflight)
        assert r.status_code == 401, r.text
        # a "preflight" with a body is an ordinary request too
        r = await c.request("OPTIONS", "/cors", headers=preflight, content=b"x")
        assert r.status_code == 401, r.text
        alice = fake.login("alice@example.com")
        r = await c.options("/cors", headers={**preflight, "X-Session-Token": alice.token})
        assert r.status_code == 200, r.text
    assert views.calls == 1


@pytest.mark.parametrize(("version", "hosts"), [("1.1", []), ("1.0", []), ("1.1", ["a", "b"])])
@pytest.mark.parametrize("target", ["/me", "/health/alive"])
def test_no_host_or_several_hosts_is_a_400(app_url, fake, views, version, hosts, target):
    """As in proxy mode: the app would see one origin, a forwarded-host reader another."""
    alice = fake.login("alice@example.com")
    headers = [("Host", h) for h in hosts] + [("X-Session-Token", alice.token)]
    status, _, body = raw_request(app_url, target, headers, host=None, version=version)
    assert status == 400, body
    assert json.loads(body)["error"]["code"] == 400
    assert views.calls == 0


async def test_public_path_trick_is_not_public(app_url, views):
    async with await client(app_url) as c:
        r = await c.get("/health/../me")
    assert r.status_code == 401
    assert views.calls == 0


async def test_spoofed_identity_headers_are_replaced(app_url, fake):
    alice = fake.login("alice@example.com")
    async with await client(app_url) as c:
        r = await c.get(
            "/me",
            headers=[
                ("X-Session-Token", alice.token),
                ("X-User-Id", "evil"),
                ("x-user-id", "evil2"),
                ("X_User_Id", "evil3"),
                ("X-User-Email", "mallory@example.com"),
                ("X-Kratos-Authenticated-Identity-Id", "evil4"),
            ],
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["x_user_id"] == [alice.identity_id]
    assert body["x_user_email"] == ["alice@example.com"]
    names = body["raw_header_names"]
    assert "x_user_id" not in names
    assert "x-kratos-authenticated-identity-id" not in names


async def test_request_body_reaches_the_view_untouched(app_url, fake):
    alice = fake.login("alice@example.com")
    payload = bytes(range(256)) * 1000
    async with await client(app_url) as c:
        r = await c.post("/echo", content=payload, headers={"X-Session-Token": alice.token})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "size": len(payload),
        "digest": hashlib.sha256(payload).hexdigest(),
        "user": alice.identity_id,
    }


async def test_kratos_down_fails_closed(kratos, app_url, fake, views):
    alice = fake.login("alice@example.com")
    kratos.stop()
    async with await client(app_url) as c:
        r = await c.get("/me", headers={"X-Session-Token": alice.token})
    assert r.status_code == 503
    assert r.headers["retry-after"]
    assert views.calls == 0


def test_websocket_through_the_middleware(app_url, fake):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    alice = fake.login("alice@example.com")
    ws_url = app_url.replace("http://", "ws://") + "/ws"
    with connect(
        ws_url, additional_headers={"X-Session-Token": alice.token}, open_timeout=10
    ) as ws:
        assert ws.recv(timeout=10) == alice.identity_id
    with pytest.raises(InvalidStatus) as info, connect(ws_url, open_timeout=10):
        pass
    assert info.value.response.status_code == 403


# --- FastAPI ---------------------------------------------------------------------------------

# module level: with postponed annotations FastAPI resolves the alias in the module's globals
Session = Annotated[dict[str, Any], Depends(require_session)]


def fastapi_app(settings: Settings) -> FastAPI:
    app = FastAPI()
    app.add_middleware(SessionGateMiddleware, settings=settings)

    @app.get("/me")
    async def me(session: Session, request: Request) -> dict[str, Any]:
        return {"session_id": session["id"], "user": request.user.display_name}

    @app.get("/health/whoami")
    async def public_but_requires(session: Session) -> dict[str, Any]:
        return {"session_id": session["id"]}

    return app


async def test_fastapi_require_session_dependency(kratos, fake, serve):
    url = serve(fastapi_app(make_settings(kratos.public_url)), lifespan="on")
    alice = fake.login("alice@example.com")
    async with await client(url) as c:
        r = await c.get("/me", headers={"X-Session-Token": alice.token})
        assert r.status_code == 200, r.text
        assert r.json() == {"session_id": alice.id, "user": "alice@example.com"}
        r = await c.get("/me")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == 401  # the gate's envelope, FastAPI never ran
        # a public path is let through, but require_session still insists on a session
        r = await c.get("/health/whoami")
        assert r.status_code == 401
        assert r.json() == {"detail": "No valid Ory session."}
        # public paths are not authenticated at all (README: ory_session is None there)
        before = fake.count("GET", "/sessions/whoami")
        r = await c.get("/health/whoami", headers={"X-Session-Token": alice.token})
        assert r.status_code == 401
        assert fake.count("GET", "/sessions/whoami") == before


def test_require_session_helper_directly():
    from starlette.exceptions import HTTPException

    session = {"id": "s1"}
    request = Request({"type": "http", "headers": [], "state": {"ory_session": session}})
    assert require_session(request) is session
    for scope in (
        {"type": "http", "headers": [], "state": {"ory_session": None}},
        {"type": "http", "headers": []},
    ):
        with pytest.raises(HTTPException) as info:
            require_session(Request(scope))
        assert info.value.status_code == 401


# --- a bare ASGI app -------------------------------------------------------------------------


class BareApp:
    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.scopes.append(scope)
        user = scope.get("user")
        state = scope.get("state", {})
        session = state.get("ory_session")
        body = json.dumps(
            {
                "identity_id": getattr(user, "identity_id", None),
                "authenticated": user.is_authenticated if user is not None else None,
                "session_id": session["id"] if session else None,
                "scopes": list(scope["auth"].scopes) if "auth" in scope else None,
                "x_user_id": [v.decode() for k, v in scope["headers"] if k == b"x-user-id"],
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def test_bare_asgi_app_wrapped_directly(kratos, fake, serve):
    bare = BareApp()
    url = serve(SessionGateMiddleware(bare, make_settings(kratos.public_url)))
    alice = fake.login("alice@example.com")
    async with await client(url) as c:
        r = await c.get("/x", headers={"X-Session-Token": alice.token, "X-User-Id": "evil"})
        assert r.status_code == 200, r.text
        assert r.json() == {
            "identity_id": alice.identity_id,
            "session_id": alice.id,
            "scopes": ["authenticated", "aal1"],
            "x_user_id": [alice.identity_id],
            "authenticated": True,
        }
        r = await c.get("/x")
        assert r.status_code == 401
        r = await c.get("/health/ready")
        assert r.status_code == 200
        assert r.json()["session_id"] is None
        assert r.json()["identity_id"] is None
        assert (r.json()["authenticated"], r.json()["scopes"]) == (False, [])
    assert len(bare.scopes) == 2  # the 401 never reached the app


async def test_middleware_reads_settings_from_the_environment(kratos, fake, serve, monkeypatch):
    monkeypatch.setenv("SESSIONGATE_ORY__PUBLIC_URL", kratos.public_url)
    monkeypatch.setenv("SESSIONGATE_ACCESS__PUBLIC_PATHS", '["/open/*"]')
    monkeypatch.delenv("SESSIONGATE_CONFIG", raising=False)
    middleware = SessionGateMiddleware(BareApp())
    assert middleware.settings.ory.public_url == kratos.public_url
    url = serve(middleware)
    alice = fake.login("alice@example.com")
    async with await client(url) as c:
        assert (await c.get("/open/a")).status_code == 200
        assert (await c.get("/health/alive")).status_code == 401
        r = await c.get("/y", headers={"X-Session-Token": alice.token})
        assert r.status_code == 200
        assert r.json()["identity_id"] == alice.identity_id


async def test_kratos_transport_runs_the_fake_in_process(serve):
    fake = KratosFake()
    bare = BareApp()
    middleware = SessionGateMiddleware(
        bare,
        make_settings("http://kratos.invalid"),
        kratos_transport=httpx.ASGITransport(app=fake),
    )
    url = serve(middleware)
    alice = fake.login("alice@example.com")
    async with await client(url) as c:
        r = await c.get("/z", headers={"X-Session-Token": alice.token})
        assert r.status_code == 200, r.text
        assert r.json()["identity_id"] == alice.identity_id
        # the cache is reachable for evictions, as on the gate
        middleware.cache.evict_session(alice.id)
        fake.revoke_session(alice.id)
        r = await c.get("/z", headers={"X-Session-Token": alice.token})
        assert r.status_code == 401


async def test_shared_mode_evictions_reach_another_middleware_process(tmp_path, monkeypatch):
    """Middleware mode with `shared.redis_url`: the app's `cache.evict_session` in one process
    reaches another's cache through a real redis-server."""
    monkeypatch.setenv("SESSIONGATE_SECRET", "middleware-test-secret-0123456789abcdef")

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"ok": True})(scope, receive, send)

    servers = RedisServers(tmp_path / "redis")
    try:
        redis = servers.start()
        shared = {"redis_url": redis.url, "cache_sessions": False}  # revocations only
        settings = Settings.model_validate({"shared": shared})
        one, two = SessionGateMiddleware(inner, settings), SessionGateMiddleware(inner, settings)
        for mw in (one, two):  # the first request starts the follower (public path: no Kratos)
            transport = httpx.ASGITransport(app=mw)
            async with httpx.AsyncClient(transport=transport, base_url="http://gate") as c:
                assert (await c.get("/health/x")).status_code == 200
        deadline = time.monotonic() + 5
        while not (one.revocations.healthy and two.revocations.healthy):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        entry = CachedSession.of("s1", "i1", time.time() + 600, b'{"id":"s1"}')
        assert two.cache.put(b"k", entry, started=time.monotonic())
        one.cache.evict_session("s1")
        assert await one.revocations.flush()
        deadline = time.monotonic() + 1.0
        while two.cache.get(b"k") is not None:
            assert time.monotonic() < deadline, "not evicted in the other process within 1 s"
            await asyncio.sleep(0.005)
        await one.revocations.aclose()
        await two.revocations.aclose()
    finally:
        servers.close()
