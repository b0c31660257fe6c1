"""WebSockets through the real gate: the handshake's Origin, sockets that outlive their session,
and close codes and reasons in both directions (websocket_guard.py, proxy.py).

Clients are `websockets` connections to the gate under uvicorn; revocations go through the
gate's own relay routes, as an Ory SDK would send them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from gate_stack import Stack
from test_proxy import no_asgi_exceptions  # noqa: F401  (autouse: errors the servers log fail)
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from apps import ClosingApp
from resources import until

WHOAMI = ("GET", "/sessions/whoami")


def ws_url(stack: Stack, path: str = "/ws") -> str:
    return stack.url.replace("http://", "ws://", 1) + path


def connect(stack: Stack, headers: dict[str, str], origin: str | None = None) -> Any:
    return ws_connect(
        ws_url(stack),
        additional_headers=headers,
        origin=origin,
        open_timeout=5,  # type: ignore[arg-type]
    )


async def drain(ws: ClientConnection) -> None:
    while True:
        await ws.recv()


async def closed_with(ws: ClientConnection, seconds: float = 10) -> tuple[int, str]:
    """The close code and reason the gate sent, waiting at most `seconds`."""
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(drain(ws), seconds)
    rcvd = info.value.rcvd
    assert rcvd is not None, info.value
    return rcvd.code, rcvd.reason


async def still_open(ws: ClientConnection) -> None:
    await ws.send("ping")
    assert await asyncio.wait_for(ws.recv(), 5) == "echo:ping"


# -- item 8: Origin --------------------------------------------------------------------------
def foreign_origins(stack: Stack) -> list[str]:
    port = stack.gate_server.port
    return [
        "http://evil.example",
        "null",  # sandboxed frames, file: pages
        f"https://127.0.0.1:{port}",  # another scheme
        f"http://127.0.0.1:{port + 1}",  # another port
        "http://127.0.0.1",
        f"http://127.0.0.1.evil.example:{port}",
        f"http://evil.example/127.0.0.1:{port}",
        f"http://127.0.0.1:{port}.evil.example",
        f"http://127.0.0.1:{port}@evil.example",
        "https://app.example.com.evil.example",  # an allowed origin as a prefix
    ]


async def test_a_cookie_handshake_from_a_foreign_origin_is_refused(make_stack) -> None:
    stack = make_stack(cors={"allowed_origins": ["https://app.example.com"]})
    alice = stack.fake.login("alice@example.com")
    cookie = {"Cookie": stack.fake.cookie_header(alice)}
    whoami = stack.fake.count(*WHOAMI)
    for origin in foreign_origins(stack):
        with pytest.raises(InvalidStatus) as info:
            async with connect(stack, cookie, origin):
                pass
        assert info.value.response.status_code == 403, origin
    assert stack.app.requests == []
    assert stack.fake.count(*WHOAMI) == whoami  # refused before any whoami


async def test_a_cookie_handshake_from_the_gate_or_an_allowed_origin_passes(make_stack) -> None:
    stack = make_stack(cors={"allowed_origins": ["https://app.example.com"]})
    alice = stack.fake.login("alice@example.com")
    cookie = {"Cookie": stack.fake.cookie_header(alice)}
    for origin in (stack.url, "https://app.example.com", None):  # None: not a browser
        async with connect(stack, cookie, origin) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"user": alice.identity_id}
    assert len(stack.app.requests) == 3


@pytest.mark.parametrize("foreign_first", [True, False])
async def test_a_cookie_handshake_with_several_origins_is_refused(
    stack: Stack, foreign_first: bool
) -> None:
    """A browser sends one Origin: several are foreign, whichever comes first.

    uvicorn's server answers such a handshake 400 itself and granian passes it on, so the
    handshake goes to the gate's ASGI app directly, as granian would hand it over.
    """
    alice = stack.fake.login("alice@example.com")
    origins = [b"http://evil.example", stack.url.encode()]
    host = stack.url.removeprefix("http://").encode()
    headers = [(b"host", host), (b"cookie", stack.fake.cookie_header(alice).encode())]
    headers += [(b"origin", o) for o in (origins if foreign_first else origins[::-1])]
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", stack.gate_server.port),
        "subprotocols": [],
    }
    sent: list[dict[str, Any]] = []
    connect_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal connect_sent
        if not connect_sent:
            connect_sent = True
            return {"type": "websocket.connect"}
        await asyncio.sleep(5)
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    whoami = stack.fake.count(*WHOAMI)
    await asyncio.wait_for(stack.gate(scope, receive, send), 10)
    assert sent == [{"type": "websocket.close", "code": 1008}]  # the server answers 403
    assert stack.fake.count(*WHOAMI) == whoami
    assert stack.app.requests == []


async def test_a_token_handshake_is_not_checked_for_origin(stack: Stack) -> None:
    # a page cannot put a token on a WebSocket handshake: a token means a non-browser client
    alice = stack.fake.login("alice@example.com")
    for headers in ({"X-Session-Token": alice.token}, {"Authorization": f"Bearer {alice.token}"}):
        async with connect(stack, headers, "http://evil.example") as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"user": alice.identity_id}


async def test_a_token_beside_a_cookie_from_a_foreign_origin_is_checked_by_the_winner(
    stack: Stack,
) -> None:
    alice = stack.fake.login("alice@example.com")
    cookie = stack.fake.cookie_header(alice)
    # X-Session-Token wins over the cookie: not a browser-made handshake
    async with connect(stack, {"X-Session-Token": alice.token, "Cookie": cookie}, "null") as ws:
        await asyncio.wait_for(ws.recv(), 5)
    # a Bearer loses to the cookie: the cookie authenticates, so the Origin counts
    with pytest.raises(InvalidStatus):
        async with connect(
            stack, {"Authorization": f"Bearer {alice.token}", "Cookie": cookie}, "null"
        ):
            pass


# -- item 8: sockets end with their session --------------------------------------------------
@asynccontextmanager
async def two_sockets(
    stack: Stack, ended: Any, kept: Any
) -> AsyncIterator[tuple[ClientConnection, ClientConnection]]:
    """Open sockets for the sessions `ended` and `kept`, each past its greeting."""
    async with (
        connect(stack, {"X-Session-Token": ended.token}) as ws,
        connect(stack, {"X-Session-Token": kept.token}) as other,
    ):
        await asyncio.wait_for(ws.recv(), 5)
        await asyncio.wait_for(other.recv(), 5)
        yield ws, other


async def revoke_one_through_the_gate(stack: Stack, ended: Any, kept: Any) -> None:
    async with stack.client() as c:
        r = await c.delete(f"/sessions/{ended.id}", headers={"X-Session-Token": kept.token})
    assert r.status_code == 204, r.text


async def revoke_the_others_through_the_gate(stack: Stack, ended: Any, kept: Any) -> None:
    async with stack.client() as c:
        r = await c.delete("/sessions", headers={"X-Session-Token": kept.token})
    assert r.status_code == 200, r.text


async def revoke_in_kratos_and_clear_the_cache(stack: Stack, ended: Any, kept: Any) -> None:
    stack.fake.revoke_session(ended.id)  # in Kratos, behind the gate's back
    stack.gate.cache.clear()  # "some sessions were revoked": from another thread, too


@pytest.mark.parametrize(
    ("kept_email", "revoke", "reason"),
    [
        # alice on a second device revokes the first device's session
        ("alice@example.com", revoke_one_through_the_gate, "The session was revoked."),
        # alice's current session revokes her other ones: their sockets only
        ("alice@example.com", revoke_the_others_through_the_gate, "The session was revoked."),
        # clearing the cache re-checks every socket: bob's stays
        ("bob@example.com", revoke_in_kratos_and_clear_the_cache, "The session ended."),
    ],
    ids=["revoke-one", "revoke-others", "clear-cache"],
)
async def test_an_ended_session_closes_its_socket_only(
    stack: Stack, kept_email: str, revoke: Any, reason: str
) -> None:
    alice = stack.fake.login("alice@example.com")
    kept = stack.fake.login(kept_email)
    async with two_sockets(stack, alice, kept) as (ws, other):
        await revoke(stack, alice, kept)
        assert await closed_with(ws, 5) == (1008, reason)
        await still_open(other)


async def test_a_session_revoked_elsewhere_closes_its_socket_when_the_entry_lapses(
    make_stack,
) -> None:
    stack = make_stack(cache={"ttl": 1})
    alice = stack.fake.login("alice@example.com")
    bob = stack.fake.login("bob@example.com")
    async with two_sockets(stack, alice, bob) as (ws, kept):
        before = stack.fake.count(*WHOAMI)
        stack.fake.revoke_session(alice.id)
        # re-checked when the entry lapses, but not before MIN_RECHECK (5 s)
        assert await closed_with(ws, 9) == (1008, "The session ended.")
        # bob's socket was re-checked once (bounded timers, not a loop), and stays open
        await asyncio.sleep(2.5)
        await still_open(kept)
        assert 2 <= stack.fake.count(*WHOAMI) - before <= 3
    assert await until(lambda: stack.gate.websockets.open_sockets == 0, 5)


async def test_a_short_cache_lifetime_does_not_make_sockets_poll_kratos(make_stack) -> None:
    # cache.ttl 1: one whoami per socket every second would be 1024/s for 1024 sockets
    stack = make_stack(cache={"ttl": 1})
    sockets = [stack.fake.login(f"user{i}@example.com") for i in range(3)]
    async with contextlib.AsyncExitStack() as opened:
        for session in sockets:
            ws = await opened.enter_async_context(
                connect(stack, {"X-Session-Token": session.token})
            )
            await asyncio.wait_for(ws.recv(), 5)
        before = stack.fake.count(*WHOAMI)
        await asyncio.sleep(3.5)
        assert stack.fake.count(*WHOAMI) == before  # the first re-checks come after 5 s
        await still_open(ws)


async def test_a_socket_whose_session_cannot_be_checked_again_is_closed(make_stack) -> None:
    stack = make_stack(cache={"ttl": 1})
    alice = stack.fake.login("alice@example.com")
    async with connect(stack, {"X-Session-Token": alice.token}) as ws:
        await asyncio.wait_for(ws.recv(), 5)
        stack.kratos.stop()  # Kratos unreachable: two retries, then fail closed
        code, reason = await closed_with(ws, 15)  # re-check after 5 s, retries 1 s and 2 s later
    assert code == 1013, reason
    assert "try again later" in reason


async def test_a_public_path_socket_is_not_watched(stack: Stack) -> None:
    # no session: /public/* needs none, and there is nothing to end
    async with ws_connect(ws_url(stack, "/public/ws"), open_timeout=5) as ws:
        await asyncio.wait_for(ws.recv(), 5)
        assert stack.gate.websockets.open_sockets == 0
        await still_open(ws)


# -- item 13: close codes and reasons, both ways ---------------------------------------------
@pytest.mark.parametrize(
    ("code", "reason"), [(4001, "bye from the app"), (1001, ""), (1000, "é" * 61)]
)
async def test_the_apps_close_code_and_reason_reach_the_client(make_stack, code, reason) -> None:
    stack = make_stack(app=ClosingApp())
    alice = stack.fake.login("alice@example.com")
    async with connect(stack, {"X-Session-Token": alice.token}) as ws:
        await ws.send(f"close:{code}:{reason}")
        assert await closed_with(ws, 5) == (code, reason)


@pytest.mark.parametrize(("code", "reason"), [(4002, "bye from the client"), (1000, "done")])
async def test_the_clients_close_code_and_reason_reach_the_app(make_stack, code, reason) -> None:
    app = ClosingApp()
    stack = make_stack(app=app)
    alice = stack.fake.login("alice@example.com")
    async with connect(stack, {"X-Session-Token": alice.token}) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), 5) == "echo:hello"
        await ws.close(code, reason)
    assert await until(lambda: app.disconnects != [], 5)
    assert app.disconnects == [(code, reason)]


async def test_a_revoked_sockets_app_side_is_told_why(make_stack) -> None:
    app = ClosingApp()
    stack = make_stack(app=app)
    alice = stack.fake.login("alice@example.com")
    other = stack.fake.login("alice@example.com")
    async with connect(stack, {"X-Session-Token": alice.token}) as ws:
        await ws.send("hello")
        await asyncio.wait_for(ws.recv(), 5)
        async with stack.client() as c:
            r = await c.delete(f"/sessions/{alice.id}", headers={"X-Session-Token": other.token})
        assert r.status_code == 204
        assert await closed_with(ws, 5) == (1008, "The session was revoked.")
    assert await until(lambda: app.disconnects != [], 5)
    assert app.disconnects == [(1008, "The session was revoked.")]
