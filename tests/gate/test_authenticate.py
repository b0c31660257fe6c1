"""Stage 2 end to end: credential → cache / whoami → admit or deny, over real sockets.

Most tests use the `make_stack` harness (a real FakeKratosServer). Tests that need a Kratos
misbehaving (slow, 500, nonsense, 429, ...) run a `KratosProbe` under uvicorn instead: it either
delegates to an in-process `KratosFake` or answers a scripted reply, optionally after a delay,
and records every whoami it sees and how many were in flight at once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from gate_stack import settings_for
from starlette.types import Receive, Scope, Send

from apps import EchoApp
from sessiongate.gate import Gate
from sessiongate.testing import CreatedSession, FakeKratosServer, KratosFake, UvicornThread
from sessiongate.testing.server import bind_loopback

WHOAMI = ("GET", "/sessions/whoami")
#: 100 requests released at once open 100 upstream connections: give a busy CI host room.
ROOMY_UPSTREAM = {"connect_timeout": 10, "timeout": 10}
COOKIE = "ory_kratos_session"


def whoami_count(fake: KratosFake) -> int:
    return fake.count(*WHOAMI)


def credential_headers(kind: str, session: CreatedSession) -> dict[str, str]:
    if kind == "token":
        return {"X-Session-Token": session.token}
    if kind == "cookie":
        return {"Cookie": f"{COOKIE}={session.cookie}"}
    return {"Authorization": f"Bearer {session.token}"}


def assert_herodot(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"]["code"] == status
    assert body["error"]["status"]
    assert "message" in body["error"]
    return body


def assert_unavailable(response: httpx.Response) -> None:
    assert_herodot(response, 503)
    retry_after = response.headers.get("retry-after")
    assert retry_after is not None, response.headers
    assert int(retry_after) >= 1, response.headers


# -- a programmable "Kratos" ----------------------------------------------------------------


class KratosProbe:
    """Stands in for Kratos' public port; see the module docstring."""

    def __init__(
        self,
        *,
        reply: tuple[int, list[tuple[str, str]], bytes] | None = None,
        delay: float = 0.0,
        trickle: float = 0.0,
    ) -> None:
        self.reply = reply
        self.delay = delay
        self.trickle = trickle  # seconds between body bytes of a scripted reply
        self.fake: KratosFake | None = None
        self.whoami_headers: list[list[tuple[str, str]]] = []
        self.current = 0
        self.peak = 0
        self.release = threading.Event()  # set on teardown: cut every delay short

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/sessions/whoami":
            self.whoami_headers.append(
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
            )
        self.current += 1
        self.peak = max(self.peak, self.current)
        try:
            if self.delay:  # until the delay is over or teardown releases everyone
                await asyncio.to_thread(self.release.wait, self.delay)
            if self.reply is None:
                assert self.fake is not None
                await self.fake(scope, receive, send)
                return
            status, headers, body = self.reply
            raw = [(k.lower().encode(), v.encode()) for k, v in headers]
            raw.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": raw})
            sent = 0
            while self.trickle and sent < len(body) - 1 and not self.release.is_set():
                chunk = body[sent : sent + 1]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += 1
                await asyncio.sleep(self.trickle)
            await send({"type": "http.response.body", "body": body[sent:]})
        finally:
            self.current -= 1


@dataclass
class CustomStack:
    probe: KratosProbe
    app: EchoApp
    gate: Gate
    url: str

    @property
    def fake(self) -> KratosFake:
        assert self.probe.fake is not None
        return self.probe.fake

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10, **kwargs)


@pytest.fixture
def make_custom() -> Iterator[Callable[..., CustomStack]]:
    """A gate in front of a KratosProbe and an EchoApp; everything stopped on teardown."""
    stops: list[Callable[[], None]] = []

    def build(
        reply: tuple[int, list[tuple[str, str]], bytes] | None = None,
        delay: float = 0.0,
        trickle: float = 0.0,
        **overrides: Any,
    ) -> CustomStack:
        probe = KratosProbe(reply=reply, delay=delay, trickle=trickle)
        kratos = UvicornThread(probe)
        if reply is None:
            probe.fake = KratosFake(public_url=kratos.url, admin_url=None)
        kratos.start()
        stops.append(kratos.stop)
        stops.append(probe.release.set)  # runs before kratos.stop (reversed order)
        app = EchoApp()
        upstream = UvicornThread(app)
        upstream.start()
        stops.append(upstream.stop)
        gate = Gate(settings_for(kratos.url, upstream.url, **overrides))
        gate_server = UvicornThread(gate, lifespan="on")
        gate_server.start()
        stops.append(gate_server.stop)
        return CustomStack(probe, app, gate, gate_server.url)

    yield build
    for stop in reversed(stops):
        stop()


def session_json(*, active: bool = True, expires_in: float = 3600) -> bytes:
    now = datetime.now(UTC)
    return json.dumps(
        {
            "id": "5d6f1a4e-0000-4000-8000-000000000001",
            "active": active,
            "expires_at": (now + timedelta(seconds=expires_in)).isoformat().replace("+00:00", "Z"),
            "authenticated_at": now.isoformat().replace("+00:00", "Z"),
            "authenticator_assurance_level": "aal1",
            "identity": {
                "id": "5d6f1a4e-0000-4000-8000-0000000000aa",
                "traits": {"email": "probe@example.com"},
                "state": "active",
            },
        }
    ).encode()


# -- admitting ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["token", "cookie", "bearer"])
async def test_valid_credential_is_admitted_with_identity(stack, kind):
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        r = await c.get("/hello", headers=credential_headers(kind, alice))
    assert r.status_code == 200, r.text
    assert len(stack.app.requests) == 1
    seen = stack.app.last_headers()
    assert seen["x-user-id"] == [alice.identity_id]
    assert seen["x-session-id"] == [alice.id]
    assert whoami_count(stack.fake) == 1


async def test_second_request_within_ttl_makes_no_whoami_call(stack):
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        for _ in range(5):
            r = await c.get("/hello", headers={"X-Session-Token": alice.token})
            assert r.status_code == 200, r.text
    assert whoami_count(stack.fake) == 1
    assert len(stack.app.requests) == 5
    assert all(dict(req["headers"])["x-user-id"] == alice.identity_id for req in stack.app.requests)


async def test_different_credentials_of_one_session_are_cached_separately(stack):
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        for kind in ("token", "cookie", "token", "cookie"):
            r = await c.get("/hello", headers=credential_headers(kind, alice))
            assert r.status_code == 200, r.text
    assert whoami_count(stack.fake) == 2


# -- the cache window and evictions ---------------------------------------------------------


async def test_revoked_session_is_served_until_its_entry_lapses(make_stack):
    stack = make_stack(cache={"ttl": 0.5})
    alice = stack.fake.login("alice@example.com")
    headers = {"X-Session-Token": alice.token}
    async with stack.client() as c:
        assert (await c.get("/a", headers=headers)).status_code == 200
        stack.fake.revoke_session(alice.id)
        # the documented cache window: still admitted, no whoami asked
        r = await c.get("/b", headers=headers)
        assert r.status_code == 200, r.text
        assert whoami_count(stack.fake) == 1
        await asyncio.sleep(0.7)
        r = await c.get("/c", headers=headers)
        assert_herodot(r, 401)
    assert whoami_count(stack.fake) == 2
    assert [req["path"] for req in stack.app.requests] == ["/a", "/b"]


async def test_evict_session_rejects_immediately(stack):
    alice = stack.fake.login("alice@example.com")
    other = stack.fake.login("alice@example.com")  # same identity, another session
    async with stack.client() as c:
        for s in (alice, other):
            r = await c.get("/a", headers={"X-Session-Token": s.token})
            assert r.status_code == 200
        stack.fake.revoke_session(alice.id)
        assert (await c.get("/b", headers={"X-Session-Token": alice.token})).status_code == 200
        assert stack.gate.cache.evict_session(alice.id) == 1
        r = await c.get("/c", headers={"X-Session-Token": alice.token})
        assert_herodot(r, 401)
        # the other session is untouched and still served from cache
        calls = whoami_count(stack.fake)
        r = await c.get("/d", headers={"X-Session-Token": other.token})
        assert r.status_code == 200
        assert whoami_count(stack.fake) == calls
    assert [req["path"] for req in stack.app.requests] == ["/a", "/a", "/b", "/d"]


async def test_evict_identity_rejects_all_its_sessions_immediately(stack):
    s1 = stack.fake.login("alice@example.com")
    s2 = stack.fake.login("alice@example.com")
    bob = stack.fake.login("bob@example.com")
    async with stack.client() as c:
        for s in (s1, s2, bob):
            assert (
                await c.get("/a", headers={"Cookie": f"{COOKIE}={s.cookie}"})
            ).status_code == 200
        stack.fake.revoke_session(s1.id)
        stack.fake.revoke_session(s2.id)
        assert stack.gate.cache.evict_identity(s1.identity_id) == 2
        for s in (s1, s2):
            r = await c.get("/b", headers={"Cookie": f"{COOKIE}={s.cookie}"})
            assert_herodot(r, 401)
        calls = whoami_count(stack.fake)
        assert (await c.get("/c", headers={"Cookie": f"{COOKIE}={bob.cookie}"})).status_code == 200
        assert whoami_count(stack.fake) == calls
    assert [req["path"] for req in stack.app.requests] == ["/a", "/a", "/a", "/c"]


async def test_expired_session_is_never_served_from_cache(stack):
    ident = stack.fake.create_identity(email="short@example.com")
    short = stack.fake.create_session(ident, expires_in=timedelta(seconds=1))
    headers = {"X-Session-Token": short.token}
    async with stack.client() as c:
        assert (await c.get("/a", headers=headers)).status_code == 200  # cache ttl is 60 s
        await asyncio.sleep(1.3)
        r = await c.get("/b", headers=headers)
        assert_herodot(r, 401)
    assert [req["path"] for req in stack.app.requests] == ["/a"]
    assert whoami_count(stack.fake) == 2


# -- single flight and the in-flight bound --------------------------------------------------


@pytest.mark.parametrize("ttl", [0, 60])
async def test_concurrent_first_requests_share_one_whoami(make_custom, ttl):
    # a slow Kratos guarantees the 100 requests overlap; ttl 0 means nothing is cached, so
    # only single flight can keep it to one call
    custom = make_custom(delay=1.0, cache={"ttl": ttl}, upstream=ROOMY_UPSTREAM)
    alice = custom.fake.login("alice@example.com")
    async with custom.client() as c:
        responses = await asyncio.gather(
            *(c.get(f"/r/{i}", headers={"X-Session-Token": alice.token}) for i in range(100))
        )
    assert [r.status_code for r in responses] == [200] * 100
    assert whoami_count(custom.fake) == 1
    assert len(custom.app.requests) == 100
    assert {dict(req["headers"])["x-user-id"] for req in custom.app.requests} == {alice.identity_id}


async def test_concurrent_first_requests_on_real_stack(make_stack):
    stack = make_stack(upstream=ROOMY_UPSTREAM)
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        responses = await asyncio.gather(
            *(c.get(f"/r/{i}", headers={"X-Session-Token": alice.token}) for i in range(100))
        )
    assert [r.status_code for r in responses] == [200] * 100
    assert whoami_count(stack.fake) == 1
    assert len(stack.app.requests) == 100


async def test_inflight_bound_sheds_excess_with_503(make_custom):
    custom = make_custom(delay=1.0, ory={"max_inflight": 2})
    sessions = [custom.fake.login(f"user{i}@example.com") for i in range(20)]
    async with custom.client() as c:
        responses = await asyncio.gather(
            *(c.get("/x", headers={"X-Session-Token": s.token}) for s in sessions)
        )
    statuses = [r.status_code for r in responses]
    assert custom.probe.peak == 2, custom.probe.peak
    assert statuses.count(200) == 2, statuses
    assert statuses.count(503) == 18, statuses
    for r in responses:
        if r.status_code == 503:
            assert_unavailable(r)
    assert len(custom.app.requests) == 2
    assert len(custom.probe.whoami_headers) == 2


# -- negative caching -----------------------------------------------------------------------


async def test_401_is_negative_cached(make_stack):
    stack = make_stack(cache={"negative_ttl": 0.5})
    headers = {"X-Session-Token": "ory_st_nosuchtoken000000000000000000000"}
    async with stack.client() as c:
        assert_herodot(await c.get("/a", headers=headers), 401)
        assert whoami_count(stack.fake) == 1
        assert_herodot(await c.get("/a", headers=headers), 401)
        assert whoami_count(stack.fake) == 1
        await asyncio.sleep(0.7)
        assert_herodot(await c.get("/a", headers=headers), 401)
        assert whoami_count(stack.fake) == 2
    assert stack.app.requests == []


async def test_negative_ttl_zero_asks_every_time(make_stack):
    stack = make_stack(cache={"negative_ttl": 0})
    headers = {"X-Session-Token": "ory_st_nosuchtoken000000000000000000000"}
    async with stack.client() as c:
        for _ in range(3):
            assert_herodot(await c.get("/a", headers=headers), 401)
    assert whoami_count(stack.fake) == 3
    assert stack.app.requests == []


# -- Kratos down, and back ------------------------------------------------------------------


async def test_kratos_stopped_gives_503_and_recovers_on_same_port(stack):
    port = urlsplit(stack.kratos.public_url).port
    assert port is not None
    alice = stack.fake.login("alice@example.com")  # never asked for: not cached
    stack.kratos.stop()
    async with stack.client() as c:
        started = time.monotonic()
        r = await c.get("/a", headers={"X-Session-Token": alice.token})
        assert_unavailable(r)
        assert time.monotonic() - started < 3.0
        r = await c.get("/a", headers={"Cookie": f"a=1; {COOKIE}={alice.cookie}"})
        assert_unavailable(r)
        assert stack.app.requests == []

        revived = FakeKratosServer(public_port=port).start()
        try:
            bob = revived.fake.login("bob@example.com")
            r = await c.get("/b", headers={"X-Session-Token": bob.token})
            assert r.status_code == 200, r.text
            assert stack.app.last_headers()["x-user-id"] == [bob.identity_id]
            # the 503 was not cached either way: alice is now unknown to the new Kratos
            assert_herodot(await c.get("/a", headers={"X-Session-Token": alice.token}), 401)
        finally:
            revived.stop()
    assert [req["path"] for req in stack.app.requests] == ["/b"]


async def test_kratos_on_closed_port_gives_503(make_stack):
    sock = bind_loopback()
    port = sock.getsockname()[1]
    sock.close()
    stack = make_stack(ory={"public_url": f"http://127.0.0.1:{port}"})
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        for headers in (
            {"X-Session-Token": alice.token},
            {"Authorization": f"Bearer {alice.token}"},
            {"Cookie": f"{COOKIE}={alice.cookie}", "Accept": "text/html"},
        ):
            assert_unavailable(await c.get("/a", headers=headers))
    assert stack.app.requests == []


# -- Kratos misbehaving ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        ((500, [("Content-Type", "application/json")], b'{"error":{"code":500}}'), 503),
        ((502, [("Content-Type", "text/plain")], b"bad gateway"), 503),
        ((200, [("Content-Type", "text/html")], b"<html>not json</html>"), 503),
        # a body httpx cannot even decode must not escape as the server's plain 500
        ((200, [("Content-Type", "application/json"), ("Content-Encoding", "gzip")], b"{}"), 503),
        ((200, [("Content-Type", "application/json")], b'{"id": "x"}'), 503),
        ((200, [("Content-Type", "application/json")], b"[]"), 503),
        ((200, [("Content-Type", "application/json")], session_json(active=False)), 401),
        ((200, [("Content-Type", "application/json")], session_json(expires_in=-60)), 200),
        ((403, [("Content-Type", "application/json")], b'{"error":{"id":"other"}}'), 503),
        ((404, [("Content-Type", "text/plain")], b"404 page not found"), 503),
    ],
)
async def test_kratos_answers_map_to_fail_closed_statuses(make_custom, reply, status):
    custom = make_custom(reply=reply)
    async with custom.client() as c:
        r = await c.get("/a", headers={"X-Session-Token": "ory_st_whatever"})
    if status == 200:
        # active but already expired per expires_at: admitted once, yet never cached
        assert r.status_code == 200, r.text
        assert len(custom.gate.cache) == 0
        return
    if status == 503:
        assert_unavailable(r)
    else:
        assert_herodot(r, status)
    assert custom.app.requests == []
    assert len(custom.probe.whoami_headers) == 1


async def test_active_false_is_not_cached_positively(make_custom):
    custom = make_custom(
        reply=(200, [("Content-Type", "application/json")], session_json(active=False))
    )
    async with custom.client() as c:
        for _ in range(2):
            assert_herodot(await c.get("/a", headers={"X-Session-Token": "t"}), 401)
    assert custom.app.requests == []
    assert all(not hasattr(v, "session_id") for v in custom.gate.cache._entries.values())


async def test_scripted_valid_session_is_admitted(make_custom):
    """Positive control for the probe: a well-formed active session passes."""
    custom = make_custom(reply=(200, [("Content-Type", "application/json")], session_json()))
    async with custom.client() as c:
        r = await c.get("/a", headers={"X-Session-Token": "t"})
    assert r.status_code == 200, r.text
    assert custom.app.last_headers()["x-user-id"] == ["5d6f1a4e-0000-4000-8000-0000000000aa"]


async def test_kratos_429_is_passed_on_with_its_retry_after(make_custom):
    reply = (429, [("Content-Type", "application/json"), ("Retry-After", "17")], b"{}")
    custom = make_custom(reply=reply)
    async with custom.client() as c:
        r = await c.get("/a", headers={"X-Session-Token": "ory_st_whatever"})
    assert_herodot(r, 429)
    assert r.headers["retry-after"] == "17"
    assert custom.app.requests == []


async def test_kratos_timeout_gives_prompt_503(make_custom):
    custom = make_custom(delay=30.0, ory={"timeout": 0.5})
    alice = custom.fake.login("alice@example.com")
    async with custom.client() as c:
        started = time.monotonic()
        r = await c.get("/a", headers={"X-Session-Token": alice.token})
        elapsed = time.monotonic() - started
    assert_unavailable(r)
    assert elapsed < 1.5, elapsed
    assert custom.app.requests == []


async def test_trickling_kratos_is_cut_off_at_the_timeout(make_custom):
    """ory.timeout bounds the whole whoami call, not just each read between two bytes."""
    body = session_json()
    custom = make_custom(
        reply=(200, [("Content-Type", "application/json")], body), trickle=0.1, ory={"timeout": 0.5}
    )
    async with custom.client() as c:
        started = time.monotonic()
        r = await c.get("/a", headers={"X-Session-Token": "t"})
        elapsed = time.monotonic() - started
    assert_unavailable(r)
    assert elapsed < 1.5, elapsed
    assert custom.app.requests == []


# -- AAL ------------------------------------------------------------------------------------


async def test_aal2_required_api_request_gets_kratos_403(stack):
    ident = stack.fake.create_identity(email="mfa@example.com", available_aal="aal2")
    sess = stack.fake.create_session(ident, aal="aal1")
    async with httpx.AsyncClient(timeout=10) as direct:
        kratos_answer = await direct.get(
            stack.kratos.public_url + "/sessions/whoami",
            headers={"X-Session-Token": sess.token, "Accept": "application/json"},
        )
    assert kratos_answer.status_code == 403
    async with stack.client() as c:
        r = await c.get("/api/thing", headers={"X-Session-Token": sess.token})
    body = assert_herodot(r, 403)
    assert body["error"]["id"] == "session_aal2_required"
    assert r.content == kratos_answer.content
    assert r.headers["ory-error-id"] == "session_aal2_required"
    assert body["redirect_browser_to"] == (
        stack.kratos.public_url + "/self-service/login/browser?aal=aal2"
    )
    assert stack.app.requests == []


async def test_aal2_required_browser_navigation_is_redirected(stack):
    ident = stack.fake.create_identity(email="mfa@example.com", available_aal="aal2")
    sess = stack.fake.create_session(ident, aal="aal1")
    async with stack.client() as c:
        r = await c.get(
            "/dashboard?tab=1",
            headers={"Cookie": f"{COOKIE}={sess.cookie}", "Accept": "text/html,*/*;q=0.8"},
        )
    assert r.status_code == 303, r.text
    location = urlsplit(r.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == (
        stack.kratos.public_url + "/self-service/login/browser"
    )
    query = parse_qs(location.query)
    assert query["aal"] == ["aal2"]
    assert query["return_to"] == [stack.url + "/dashboard?tab=1"]
    assert stack.app.requests == []


async def test_aal2_session_is_admitted(stack):
    ident = stack.fake.create_identity(email="mfa@example.com", available_aal="aal2")
    sess = stack.fake.create_session(ident, aal="aal2")
    async with stack.client() as c:
        r = await c.get("/a", headers={"X-Session-Token": sess.token})
    assert r.status_code == 200, r.text
    assert stack.app.last_headers()["x-user-id"] == [ident]


# -- what goes to Kratos, what is kept ------------------------------------------------------


async def test_whoami_gets_only_the_session_cookie(make_custom):
    custom = make_custom()
    alice = custom.fake.login("alice@example.com")
    async with custom.client() as c:
        r = await c.get(
            "/a",
            headers={
                "Cookie": f"a=1; {COOKIE}={alice.cookie}; b=2",
                "Authorization": "Basic dXNlcjpwYXNz",
                "X-Api-Secret": "app-only",
            },
        )
    assert r.status_code == 200, r.text
    assert len(custom.probe.whoami_headers) == 1
    sent = custom.probe.whoami_headers[0]
    names = {k for k, _ in sent}
    assert [v for k, v in sent if k == "cookie"] == [f"{COOKIE}={alice.cookie}"]
    assert "authorization" not in names
    assert "x-session-token" not in names
    assert "x-api-secret" not in names


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            lambda s: {
                "X-Session-Token": s.token,
                "Cookie": f"a=1; {COOKIE}={s.cookie}",
                "Authorization": f"Bearer {s.token}",
            },
            lambda s: ("x-session-token", s.token),
        ),
        (
            lambda s: {"Cookie": "a=1; b=2", "Authorization": f"Bearer {s.token}"},
            lambda s: ("authorization", f"Bearer {s.token}"),
        ),
    ],
)
async def test_whoami_gets_only_the_one_credential(make_custom, headers, expected):
    custom = make_custom()
    alice = custom.fake.login("alice@example.com")
    async with custom.client() as c:
        r = await c.get("/a", headers=headers(alice))
    assert r.status_code == 200, r.text
    sent = custom.probe.whoami_headers[0]
    credential_names = {"cookie", "authorization", "x-session-token"}
    assert [(k, v) for k, v in sent if k in credential_names] == [expected(alice)]


async def test_raw_credentials_never_appear_in_cache_keys(stack):
    alice = stack.fake.login("alice@example.com")
    bad = "ory_st_doesnotexist0000000000000000000"
    async with stack.client() as c:
        for kind in ("token", "cookie", "bearer"):
            assert (await c.get("/a", headers=credential_headers(kind, alice))).status_code == 200
        assert (await c.get("/a", headers={"X-Session-Token": bad})).status_code == 401
    keys = list(stack.gate.cache._entries)
    assert len(keys) == 4
    secrets = [alice.token, alice.cookie, bad]
    for k in keys:
        assert isinstance(k, bytes)
        for secret in secrets:
            assert secret.encode() not in k
            assert secret[:16].encode() not in k
    for k in stack.gate.cache.indexes()[0].get(alice.id, set()):
        assert alice.token.encode() not in k


async def test_request_arriving_after_eviction_does_not_share_a_stale_whoami(make_custom):
    # The first request's whoami is in flight when the session is revoked through the gate;
    # a request that arrives after the revocation must not be admitted on that answer.
    custom = make_custom(delay=1.0, upstream=ROOMY_UPSTREAM)
    alice = custom.fake.login("alice@example.com")
    headers = {"X-Session-Token": alice.token}
    async with custom.client() as c:
        first = asyncio.create_task(c.get("/before", headers=headers))
        await asyncio.sleep(0.3)  # the shared whoami is now in flight
        custom.gate.cache.evict_session(alice.id)
        second = await c.get("/after", headers=headers)
        first_response = await first
    assert first_response.status_code == 200  # it arrived before the revocation
    assert second.status_code == 401
    assert [r["path"] for r in custom.app.requests] == ["/before"]


async def test_a_cache_cleared_while_a_whoami_is_in_flight_logs_nobody_out(make_custom):
    # `cache.clear()` (the shared mode drops the cache when Redis is lost or restarted, and
    # `gate.cache.clear()`) is no revocation: a request that joins a whoami sent before it gets
    # a fresh answer, not a 401 (the soak caught that false logout during a Redis stall).
    custom = make_custom(delay=1.0, upstream=ROOMY_UPSTREAM)
    alice = custom.fake.login("alice@example.com")
    headers = {"X-Session-Token": alice.token}
    async with custom.client() as c:
        first = asyncio.create_task(c.get("/before", headers=headers))
        await asyncio.sleep(0.3)  # the shared whoami is now in flight
        custom.gate.cache.clear()
        second = await c.get("/after", headers=headers)
        first_response = await first
    assert first_response.status_code == 200
    assert second.status_code == 200, second.text
    assert sorted(r["path"] for r in custom.app.requests) == ["/after", "/before"]


# -- the fast path and its limits ------------------------------------------------------------


async def test_oversized_whoami_body_fails_closed(make_custom):
    huge = session_json()[:-1] + b', "padding": "' + b"x" * (1024 * 1024) + b'"}'
    custom = make_custom(reply=(200, [("Content-Type", "application/json")], huge))
    async with custom.client() as c:
        r = await c.get("/a", headers={"X-Session-Token": "t"})
    assert_unavailable(r)
    assert custom.app.requests == []
    assert len(custom.gate.cache) == 0


async def test_fingerprint_memo_is_bounded_and_every_client_still_checked(make_stack, monkeypatch):
    monkeypatch.setattr("sessiongate.gatekeeper.FINGERPRINT_MEMO", 4)
    stack = make_stack()
    sessions = [stack.fake.login(f"u{i}@example.com") for i in range(10)]
    async with stack.client() as c:
        for _ in range(2):
            for s in sessions:
                r = await c.get("/m", headers={"X-Session-Token": s.token})
                assert r.status_code == 200, r.text
                assert dict(r.json()["headers"])["x-user-id"] == s.identity_id
        memo = stack.gate.gatekeeper._keys_by_fingerprint
        assert 0 < len(memo) <= 4
        # a revoked session is refused on its next request although its client is remembered
        stack.fake.revoke_session(sessions[-1].id)
        stack.gate.cache.evict_session(sessions[-1].id)
        r = await c.get("/m", headers={"X-Session-Token": sessions[-1].token})
        assert r.status_code == 401
    assert whoami_count(stack.fake) == 10 + 1  # one per session, then the revoked one again
