"""Middleware mode, WebSockets: the handshake's Origin and sockets that outlive their session,
as in proxy mode (tests/gate/test_websocket.py), with the app in the middleware's process.

The app behind `SessionGateMiddleware` is served by a real uvicorn with the Kratos fake; a
revocation goes through the middleware's cache, as the app would do it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from apps import ClosingApp, EchoApp
from resources import until
from sessiongate.middleware import SessionGateMiddleware
from test_middleware import fake, kratos, make_settings, serve  # noqa: F401  (fixtures)

ALLOWED = "https://app.example.com"
WHOAMI = ("GET", "/sessions/whoami")


@pytest.fixture(autouse=True)
def no_asgi_exceptions() -> Iterator[None]:
    """An exception escaping the middleware fails the test, though no client could see it."""
    errors: list[str] = []

    def collect(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            errors.append(record.getMessage())
        return True

    logger = logging.getLogger("uvicorn.error")  # a filter: uvicorn's dictConfig drops handlers
    logger.addFilter(collect)
    try:
        yield
    finally:
        logger.removeFilter(collect)
    assert errors == []


def connect(url: str, headers: dict[str, str], origin: str | None = None) -> Any:
    return ws_connect(
        url.replace("http://", "ws://", 1) + "/private/ws",
        additional_headers=headers,
        origin=origin,  # type: ignore[arg-type]
        open_timeout=5,
    )


async def closed_with(ws: Any, seconds: float = 10) -> tuple[int, str]:
    """The close code and reason the middleware sent, waiting at most `seconds`."""

    async def drain() -> None:
        while True:
            await ws.recv()

    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(drain(), seconds)
    rcvd = info.value.rcvd
    assert rcvd is not None, info.value
    return rcvd.code, rcvd.reason


def gated(kratos: Any, app: Any, **overrides: Any) -> SessionGateMiddleware:  # noqa: F811
    settings = make_settings(kratos.public_url, cors={"allowed_origins": [ALLOWED]}, **overrides)
    return SessionGateMiddleware(app, settings)


async def test_a_cookie_handshake_from_a_foreign_origin_is_refused(kratos, fake, serve) -> None:  # noqa: F811
    app = EchoApp()
    url = serve(gated(kratos, app))
    alice = fake.login("alice@example.com")
    cookie = {"Cookie": fake.cookie_header(alice)}
    for origin in ("https://evil.example", "null", f"{ALLOWED}.evil.example"):
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, cookie, origin):
                pass
        assert info.value.response.status_code == 403, origin
    assert app.requests == []
    assert fake.count(*WHOAMI) == 0  # refused before any whoami
    # the gate's own origin, an allowed one, none (not a browser); a token from anywhere
    token = {"X-Session-Token": alice.token}
    for headers, origin in ((cookie, url), (cookie, ALLOWED), (cookie, None), (token, "null")):
        async with connect(url, headers, origin) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"user": alice.identity_id}
    assert len(app.requests) == 4


async def test_revoking_the_session_through_the_cache_closes_its_socket(
    kratos,  # noqa: F811
    fake,  # noqa: F811
    serve,  # noqa: F811
) -> None:
    app = ClosingApp()
    middleware = gated(kratos, app)
    url = serve(middleware)
    alice = fake.login("alice@example.com")
    other = fake.login("alice@example.com")  # alice on a second device
    async with (
        connect(url, {"X-Session-Token": alice.token}) as ws,
        connect(url, {"X-Session-Token": other.token}) as kept,
    ):
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), 5) == "echo:hello"
        await kept.send("hello")
        assert await asyncio.wait_for(kept.recv(), 5) == "echo:hello"
        middleware.cache.evict_session(alice.id)  # from this thread, not the server's
        assert await closed_with(ws, 5) == (1008, "The session was revoked.")
        # the app's side is told why; the other session's socket stays open
        assert await until(lambda: app.disconnects != [], 5)
        assert app.disconnects == [(1008, "The session was revoked.")]
        await kept.send("still")
        assert await asyncio.wait_for(kept.recv(), 5) == "echo:still"
    assert await until(lambda: middleware.websockets.open_sockets == 0, 5)


async def test_a_session_revoked_elsewhere_closes_its_socket_when_the_entry_lapses(
    kratos,  # noqa: F811
    fake,  # noqa: F811
    serve,  # noqa: F811
) -> None:
    app = EchoApp()
    middleware = gated(kratos, app, cache={"ttl": 1})
    url = serve(middleware)
    alice = fake.login("alice@example.com")
    async with connect(url, {"Cookie": fake.cookie_header(alice)}, url) as ws:
        await asyncio.wait_for(ws.recv(), 5)
        fake.revoke_session(alice.id)  # in Kratos, behind the middleware's back
        assert await closed_with(ws, 10) == (1008, "The session ended.")  # after 5 s
    assert await until(lambda: middleware.websockets.open_sockets == 0, 5)
