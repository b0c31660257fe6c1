"""Hostile input on every relay route, under both servers (granian and uvicorn).

The gate runs as `sessiongate serve` (the production entry point, `listen.server` chosen per
test) in front of the Kratos fake, whose public and admin ports are wrapped by a recorder that
keeps the raw method, path and query of every request Kratos receives. What an attacker sends
over a raw socket (so no client library tidies it up), and what must hold for every route:

* ids: encoded `?`, `#`, `/`, `\\`, `;`, dot segments, controls, CR LF, non-ASCII, over-long,
  and the spellings Kratos accepts (braces, lower-case `urn:uuid:`, bare hex, upper-case
  digits): Kratos receives only the route that matched, with the canonical id (or nothing,
  and the gate answers Kratos' 400 / 401), never another endpoint (issue 10 item 1);
* queries: encoded and raw `#`, `?`, `&`, `/`: the upstream path is still exactly the route's, and
  the query carries the same pairs;
* paths that only start like a relay route are the app's (item 9);
* a body that stops arriving gets 408; a client that leaves mid-body is never relayed (item 14).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from starlette.types import ASGIApp, Receive, Scope, Send
from test_hostile_input import exchange, request_bytes

from apps import EchoApp
from sessiongate.testing import KratosFake, UvicornThread
from test_cli import clean_env, free_port, serve, write_config

ADMIN_KEY = "hostile-relay-admin-key-0123456789"
BODY_DEADLINE = 1.0  # ory.timeout: the relay's deadline for a request body
WHOAMI = ("GET", "/sessions/whoami")


@dataclass
class Recorder:
    """Kratos as seen from the wire: (port kind, method, raw path, raw query) of each request."""

    app: ASGIApp
    kind: str
    seen: list[tuple[str, str, str, bytes]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope["path"].encode()
            path = raw.split(b"?", 1)[0].decode("latin-1")
            self.seen.append((self.kind, scope["method"], path, scope.get("query_string", b"")))
        await self.app(scope, receive, send)


@dataclass
class HostileStack:
    fake: KratosFake
    public: Recorder
    admin: Recorder
    app: EchoApp
    port: int

    def mark(self) -> tuple[int, int]:
        return len(self.public.seen), len(self.admin.seen)

    def since(self, mark: tuple[int, int]) -> list[tuple[str, str, str, bytes]]:
        """What Kratos received (both ports) after `mark`."""
        return self.public.seen[mark[0] :] + self.admin.seen[mark[1] :]

    def send(self, data: bytes) -> Any:
        return exchange(self.port, data)


@pytest.fixture(scope="module", params=["granian", "uvicorn"])
def hostile(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostileStack]:
    public_server, admin_server = UvicornThread(), UvicornThread()
    fake = KratosFake(public_url=public_server.url, admin_url=admin_server.url)
    public, admin = Recorder(fake, "public"), Recorder(fake.admin_app, "admin")
    public_server.app, admin_server.app = public, admin
    app = EchoApp()
    upstream = UvicornThread(app)
    servers = [public_server, admin_server, upstream]
    for server in servers:
        server.start()
    tmp_path: Path = tmp_path_factory.mktemp(request.param)
    port = free_port()
    config = write_config(
        tmp_path / "gate.yaml",
        {
            "listen": {"host": "127.0.0.1", "port": port, "server": request.param},
            "metrics": {"port": 0},
            "ory": {
                "public_url": public_server.url,
                "admin_url": admin_server.url,
                "timeout": BODY_DEADLINE,
            },
            "upstream": {"url": upstream.url, "timeout": 5, "connect_timeout": 1},
            "sessions_api": {"admin": {"enabled": True}},
        },
    )
    env = clean_env(SESSIONGATE_ADMIN_KEYS=ADMIN_KEY)
    try:
        with serve(tmp_path, ["--config", str(config)], env, port):
            yield HostileStack(fake, public, admin, app, port)
    finally:
        for server in reversed(servers):
            server.stop()


# -- the routes and the corpus -----------------------------------------------------------------
PUBLIC_ID_ROUTES = [("DELETE", "/sessions/{id}")]
ADMIN_ID_ROUTES = [
    ("GET", "/admin/sessions/{id}"),
    ("DELETE", "/admin/sessions/{id}"),
    ("PATCH", "/admin/sessions/{id}/extend"),
    ("GET", "/admin/identities/{id}/sessions"),
    ("DELETE", "/admin/identities/{id}/sessions"),
]
PLAIN_ROUTES = [  # no path parameter
    ("GET", "/sessions/whoami", "public"),
    ("GET", "/sessions", "public"),
    ("DELETE", "/sessions", "public"),
    ("GET", "/self-service/logout/browser", "public"),
    ("GET", "/self-service/logout", "public"),
    ("DELETE", "/self-service/logout/api", "public"),
    ("GET", "/admin/sessions", "admin"),
]
U = "6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
# (what goes on the wire, the canonical id Kratos may receive or None for "refused")
IDS: list[tuple[str, str | None]] = [
    (U, U),
    (U.upper(), U),
    ("%7B" + U + "%7D", U),
    ("{" + U + "}", U),
    ("urn:uuid:" + U, U),
    ("URN:UUID:" + U, None),  # gofrs v4.4.0 compares the prefix byte for byte (codec.go)
    (U.replace("-", ""), U),
    ("{" + U.replace("-", "") + "}", U),  # the 34-byte form
    ("urn:uuid:" + U.replace("-", ""), U),  # the 41-byte form
    (U + "%3F", None),
    (U + "%3Finclude_credential=password%23", None),
    (U + "%3Fpage_size=1", None),
    (U + "%23", None),
    (U + "%23frag", None),
    ("%2e%2e", None),
    ("%2E%2E", None),
    ("%2e", None),
    (".%2e", None),
    (U + "%2F..%2F..%2Fsessions", None),
    (U + "%2f..", None),
    (U + "%5C..%5C..", None),
    (U + ";x=1", None),
    (U + "%3B", None),
    (U + "%00", None),
    (U + "%0d%0aX-Injected:%201", None),
    (U + "%20", None),
    ("%20" + U, None),
    (U + "%25", None),
    (U + "%2525", None),
    ("%C3%A9" + U[2:], None),
    (U[:-1] + "g", None),
    (U.replace("-", "_"), None),
    ("{" + U, None),
    ("urn:uuid:" + U + "%3F", None),
    ("x" * 300, None),
    ("whoami%3F", None),
]
QUERIES = [
    b"a=%23b",
    b"x=1%26y%3D2",
    b"%2F..%2Fadmin%2Fidentities=1",
    b"page_token=..%2F..%2Fadmin&page_size=1",
    b"expand=identity%3Finclude_credential%3Dpassword",
    b"a=b%3Fc%23d&&e",
    b"return_to=http%3A%2F%2Fevil.example%2F%2E%2E",
    b"token=a%2F..%2F..%2Fadmin%2Fsessions",
]


def _headers(kind: str, token: str) -> list[bytes]:
    if kind == "admin":
        return [b"Authorization: Bearer " + ADMIN_KEY.encode()]
    return [b"X-Session-Token: " + token.encode(), b"Accept: application/json"]


def _pairs(query: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for piece in query.split(b"&"):
        if piece:
            name, _, value = piece.partition(b"=")
            out.append(
                (
                    unquote_to_bytes(name.replace(b"+", b" ")),
                    unquote_to_bytes(value.replace(b"+", b" ")),
                )
            )
    return out


def test_ids_reach_kratos_only_as_the_matched_route(hostile: HostileStack) -> None:
    alice = hostile.fake.login("alice@example.com")
    problems = []
    routes = [(m, t, "public") for m, t in PUBLIC_ID_ROUTES]
    routes += [(m, t, "admin") for m, t in ADMIN_ID_ROUTES]
    for method, template, kind in routes:
        for wire, canonical in IDS:
            before, seen = hostile.mark(), len(hostile.app.requests)
            target = template.replace("{id}", wire)
            reply = hostile.send(
                request_bytes(target.encode(), *_headers(kind, alice.token), method=method.encode())
            )
            new = hostile.since(before)
            upstream = [(k, m, p) for k, m, p, _ in new if (m, p) != WHOAMI]
            if canonical is not None:
                expected = [(kind, method, template.replace("{id}", canonical))]
                if upstream != expected:
                    problems.append((method, target, reply.status, upstream))
            elif upstream or (reply.status not in (400, 401) and len(hostile.app.requests) == seen):
                # Kratos' own answer without Kratos: 400 (gofrs), 401 before the id on DELETE
                # /sessions/{id}; the server's 400 for the request line; or, for an encoded
                # `/` (no relay route any more), the gatekeeper and the app
                problems.append((method, target, reply.status, upstream))
    assert problems == []


def test_queries_never_change_the_upstream_route(hostile: HostileStack) -> None:
    alice = hostile.fake.login("alice@example.com")
    problems = []
    routes = [(m, t, k) for m, t, k in PLAIN_ROUTES]
    routes += [(m, t.replace("{id}", U), "admin") for m, t in ADMIN_ID_ROUTES]
    for method, path, kind in routes:
        for query in QUERIES:
            before = hostile.mark()
            target = path.encode() + b"?" + query
            reply = hostile.send(
                request_bytes(target, *_headers(kind, alice.token), method=method.encode())
            )
            new = hostile.since(before)
            relayed = [c for c in new if (c[1], c[2]) == (method, path) and c[0] == kind]
            stray = [c for c in new if (c[1], c[2]) not in ((method, path), WHOAMI)]
            if stray or len(relayed) != 1 or _pairs(relayed[0][3]) != _pairs(query):
                problems.append((method, target, reply.status, new))
    assert problems == []


@pytest.mark.parametrize(
    "path", ["/sessions-report", "/admin/dashboard", "/self-service/logout-all", "/sessions/a/b"]
)
def test_near_relay_paths_are_the_apps(hostile: HostileStack, path: str) -> None:
    alice = hostile.fake.login("alice@example.com")
    seen = len(hostile.app.requests)
    reply = hostile.send(request_bytes(path.encode(), b"X-Session-Token: " + alice.token.encode()))
    assert reply.status == 200, reply.body
    assert len(hostile.app.requests) == seen + 1
    assert [c for c in hostile.since((0, 0)) if (c[1], c[2]) == ("GET", path)] == []


# every relay route, as (method, path, port kind), with a valid id where there is one
EVERY_ROUTE = [
    *PLAIN_ROUTES,
    *[(m, t.replace("{id}", U), "public") for m, t in PUBLIC_ID_ROUTES],
    *[(m, t.replace("{id}", U), "admin") for m, t in ADMIN_ID_ROUTES],
]


def _partial_body_request(method: str, path: str, kind: str, token: str) -> bytes:
    """Headers announcing 100 bytes of body, and only the first few of them."""
    head = request_bytes(
        path.encode(),
        *_headers(kind, token),
        b"Content-Type: application/json",
        b"Content-Length: 100",
        method=method.encode(),
    )
    return head + b'{"session_token":"' + token.encode()


def test_a_stalled_body_gets_408_and_kratos_is_not_called(hostile: HostileStack) -> None:
    """On every route at once (so the test takes one deadline, not one per route)."""
    alice = hostile.fake.login("alice@example.com")
    before = hostile.mark()

    def stalled(route: tuple[str, str, str]) -> tuple[Any, float]:
        started = time.monotonic()
        reply = hostile.send(_partial_body_request(*route, alice.token))
        return reply, time.monotonic() - started

    with ThreadPoolExecutor(len(EVERY_ROUTE)) as pool:
        results = list(pool.map(stalled, EVERY_ROUTE))
    for route, (reply, elapsed) in zip(EVERY_ROUTE, results, strict=True):
        assert reply.status == 408, (route, reply)
        assert BODY_DEADLINE * 0.9 <= elapsed < BODY_DEADLINE + 5, (route, elapsed)
    assert [c for c in hostile.since(before) if (c[1], c[2]) != WHOAMI] == []
    assert hostile.fake.is_session_active(alice.id)


def test_a_client_that_left_mid_body_is_not_relayed(hostile: HostileStack) -> None:
    alice = hostile.fake.login("alice@example.com")
    before = hostile.mark()
    with contextlib.ExitStack() as sockets:
        for route in EVERY_ROUTE:
            sock = sockets.enter_context(
                socket.create_connection(("127.0.0.1", hostile.port), timeout=5)
            )
            sock.sendall(_partial_body_request(*route, alice.token))
        time.sleep(0.2)
    time.sleep(BODY_DEADLINE + 0.5)  # past the deadline: nothing was relayed late either
    assert hostile.since(before) == []
    assert hostile.fake.is_session_active(alice.id)


def test_whoami_as_an_id_only_where_kratos_gives_it_a_meaning(hostile: HostileStack) -> None:
    """`DELETE /sessions/whoami` is Kratos' whoami and `GET /admin/sessions/whoami` its 307;
    on the other id routes `whoami` is a malformed id like any other."""
    alice = hostile.fake.login("alice@example.com")
    for method, template, kind in [
        *[(m, t, "public") for m, t in PUBLIC_ID_ROUTES],
        *[(m, t, "admin") for m, t in ADMIN_ID_ROUTES],
    ]:
        path = template.replace("{id}", "whoami")
        before = hostile.mark()
        reply = hostile.send(
            request_bytes(path.encode(), *_headers(kind, alice.token), method=method.encode())
        )
        upstream = [(k, m, p) for k, m, p, _ in hostile.since(before)]
        if (method, template) in (("DELETE", "/sessions/{id}"), ("GET", "/admin/sessions/{id}")):
            assert upstream == [(kind, method, path)], (path, upstream)
            assert reply.status == (200 if kind == "public" else 307), reply
        else:
            assert upstream == [], (path, upstream)
            assert reply.status == 400, reply
