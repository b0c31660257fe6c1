"""What the proxy tells the app besides the identity: no Ory credential, no client-chosen routing.

Through the real gate (uvicorn, Kratos fake, `EchoApp`): the Ory credential in every form
(`upstream.strip_credentials`), the path-override and client-address headers that legacy stacks
honour for routing (kept only from `forwarded.trusted_proxies`), and `X-Forwarded-Host/-Proto`
from `public_url` when it is configured. tests/reliability/test_hostile_headers.py sends the
same classes in every spelling a socket allows, under granian and uvicorn.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from gate_stack import Stack
from websockets.asyncio.client import connect

from sessiongate.proxy import UpstreamProxy

# the path-override and client-address headers named in the review, and their relatives
ROUTING = {
    "X-Original-URL": "/admin",
    "X-Original-URI": "/admin",
    "X-Rewrite-URL": "/admin",
    "X-Forwarded-Prefix": "/admin",
    "X-Forwarded-Port": "8443",
    "X-Forwarded-Scheme": "https",
    "X-Forwarded-Server": "evil.example",
    "X-Forwarded-Ssl": "on",
    "X-Forwarded-Uri": "/admin",
    "X-Url-Scheme": "https",
    "Front-End-Https": "on",
    "True-Client-IP": "10.0.0.1",
    "X-Client-IP": "10.0.0.1",
    "X-Cluster-Client-IP": "10.0.0.1",
    "CF-Connecting-IP": "10.0.0.1",
    "X-Host": "evil.example",
    "X-Original-Host": "evil.example",
}


def received(stack: Stack) -> dict[str, list[str]]:
    return stack.app.last_headers()


async def get(stack: Stack, path: str, headers: Any) -> httpx.Response:
    async with stack.client() as c:
        r = await c.get(path, headers=headers)
    assert r.status_code == 200, r.text
    return r


# -- item 5: the Ory credential never reaches the app ----------------------------------------
async def test_the_session_token_does_not_reach_the_app(stack: Stack) -> None:
    alice = stack.fake.login("alice@example.com")
    await get(stack, "/t", [("X-Session-Token", alice.token), ("X-Session-Token", "second")])
    h = received(stack)
    assert h["x-user-id"] == [alice.identity_id]
    assert "x-session-token" not in h
    assert alice.token not in repr(stack.app.requests[-1])


async def test_a_bearer_token_does_not_reach_the_app(stack: Stack) -> None:
    alice = stack.fake.login("alice@example.com")
    for value in (f"Bearer {alice.token}", f"bearer {alice.token}"):
        await get(stack, "/b", {"Authorization": value})
        h = received(stack)
        assert h["x-user-id"] == [alice.identity_id]
        assert "authorization" not in h
    assert alice.token not in repr(stack.app.requests)


async def test_a_bearer_beside_the_winning_cookie_is_stripped_too(stack: Stack) -> None:
    # The cookie wins (credentials.py), so the gate never used the Bearer; it is still the
    # place Ory SDKs put a session token, and an app behind the gate has no use for one.
    alice, bob = stack.fake.login("alice@example.com"), stack.fake.login("bob@example.com")
    cookie = f"{stack.fake.cookie_header(alice)}; theme=dark"
    await get(stack, "/c", {"Cookie": cookie, "Authorization": f"Bearer {bob.token}"})
    h = received(stack)
    assert h["x-user-id"] == [alice.identity_id]
    assert h["cookie"] == ["theme=dark"]
    assert "authorization" not in h
    assert bob.token not in repr(stack.app.requests[-1])


async def test_other_authorization_schemes_still_reach_the_app(stack: Stack) -> None:
    alice = stack.fake.login("alice@example.com")
    await get(stack, "/basic", {"X-Session-Token": alice.token, "Authorization": "Basic YTpi"})
    assert received(stack)["authorization"] == ["Basic YTpi"]


async def test_credentials_are_stripped_on_public_paths_too(stack: Stack) -> None:
    headers = {"X-Session-Token": "anything", "Authorization": "Bearer abc", "Cookie": "a=1"}
    await get(stack, "/public/x", headers)
    h = received(stack)
    assert "x-session-token" not in h
    assert "authorization" not in h
    assert h["cookie"] == ["a=1"]


async def test_credentials_reach_the_app_when_strip_credentials_is_off(make_stack) -> None:
    stack = make_stack(upstream={"strip_credentials": False})
    alice = stack.fake.login("alice@example.com")
    cookie = stack.fake.cookie_header(alice)
    await get(stack, "/t", {"X-Session-Token": alice.token, "Cookie": cookie})
    h = received(stack)
    assert h["x-session-token"] == [alice.token]
    assert h["cookie"] == [cookie]
    await get(stack, "/b", {"Authorization": f"Bearer {alice.token}"})
    assert received(stack)["authorization"] == [f"Bearer {alice.token}"]


async def test_the_deprecated_strip_session_cookie_is_still_honoured(make_stack, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="sessiongate.config"):
        stack = make_stack(upstream={"strip_session_cookie": False})
    assert "upstream.strip_session_cookie is deprecated" in caplog.text
    alice = stack.fake.login("alice@example.com")
    await get(stack, "/b", {"Authorization": f"Bearer {alice.token}"})
    assert received(stack)["authorization"] == [f"Bearer {alice.token}"]


# -- item 6: path-override and client-address headers ----------------------------------------
@pytest.mark.parametrize("path", ["/private", "/public/page"])
async def test_routing_headers_from_an_untrusted_peer_never_reach_the_app(
    stack: Stack, path: str
) -> None:
    alice = stack.fake.login("alice@example.com")
    await get(stack, path, {"X-Session-Token": alice.token, **ROUTING})
    h = received(stack)
    assert [n for n in h if n in {k.lower() for k in ROUTING}] == []
    assert stack.app.requests[-1]["path"] == path


async def test_routing_headers_from_a_trusted_proxy_are_kept(make_stack) -> None:
    stack = make_stack(forwarded={"trusted_proxies": ["127.0.0.0/8"]})
    alice = stack.fake.login("alice@example.com")
    await get(stack, "/private", {"X-Session-Token": alice.token, **ROUTING})
    h = received(stack)
    for name, value in ROUTING.items():
        assert h[name.lower()] == [value], name


async def test_underscore_routing_headers_are_dropped_even_from_a_trusted_proxy(
    make_stack,
) -> None:
    stack = make_stack(forwarded={"trusted_proxies": ["127.0.0.0/8"]})
    alice = stack.fake.login("alice@example.com")
    spelled = {n.replace("-", "_"): v for n, v in ROUTING.items()}
    await get(stack, "/private", {"X-Session-Token": alice.token, **spelled})
    h = received(stack)
    assert [n for n in h if "_" in n] == []


async def test_forwarded_host_and_proto_come_from_public_url(make_stack) -> None:
    stack = make_stack(public_url="https://gate.example.com:8443")
    alice = stack.fake.login("alice@example.com")
    headers = {"X-Session-Token": alice.token, "Host": "evil.example"}
    await get(stack, "/private", headers)
    h = received(stack)
    assert h["x-forwarded-host"] == ["gate.example.com:8443"]
    assert h["x-forwarded-proto"] == ["https"]


def test_upstream_headers_drop_every_spelling_of_the_classes() -> None:
    """The header pass alone: case is the server's business (ASGI names are lower case)."""
    proxy = UpstreamProxy("http://127.0.0.1:1", strip_cookie=lambda n: False, strip_tokens=True)
    scope = {"type": "http", "client": ("127.0.0.1", 5), "scheme": "http"}
    names = [n.lower() for n in ROUTING] + ["x-session-token"]
    headers = [(s.encode(), b"evil") for n in names for s in (n, n.replace("-", "_"))]
    headers += [(b"authorization", b"Bearer\tevil"), (b"authorization", b"BEARER evil")]
    out = proxy.upstream_headers(scope, headers * 2)
    assert [(n, v) for n, v in out if v == "evil" or "evil" in v] == []


async def test_a_websocket_gets_the_same_headers_with_an_http_scheme(stack: Stack) -> None:
    alice = stack.fake.login("alice@example.com")
    url = stack.url.replace("http://", "ws://", 1) + "/ws"
    headers = {"X-Session-Token": alice.token, "Authorization": "Bearer x", **ROUTING}
    async with connect(url, additional_headers=headers, open_timeout=5) as ws:
        await ws.recv()
    h = received(stack)
    assert h["x-forwarded-proto"] == ["http"]  # not `ws`: the app reads it as an HTTP scheme
    assert [n for n in h if n in {k.lower() for k in ROUTING}] == []
    assert "x-session-token" not in h
    assert "authorization" not in h
