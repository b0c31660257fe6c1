"""Prometheus metrics (metrics.py) of a real gate, family by family, as an operator reads them.

Each test runs the in-process stack (uvicorn, the Kratos fake or a scripted `KratosProbe`, the
echo app), sends a known set of requests and reads the gate's page (`Metrics.exposition`, what
a scrape returns): exact counts per label set, nothing a client sent among the label values.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from test_authenticate import make_custom, session_json  # noqa: F401  (a fixture)
from websockets.asyncio.client import connect as ws_connect

from metrics_page import Page, settled_page
from resources import until
from sessiongate.metrics import EVICTION_CAUSES, WHOAMI_OUTCOMES, Metrics
from sessiongate.middleware import SessionGateMiddleware
from sessiongate.observe import RequestRecord
from sessiongate.testing import FakeKratosServer, UvicornThread

JSON = [("Content-Type", "application/json")]
HTML = "text/html,application/xhtml+xml"


def requests_by_decision(page: Page) -> dict[tuple[str, str], float]:
    return {
        (dict(k)["decision"], dict(k)["reason"]): v
        for k, v in page.series("sessiongate_requests_total").items()
    }


async def test_requests_by_decision_and_reason(make_stack):
    stack = make_stack(sessions_api={"enabled": True})
    alice = stack.fake.login("alice@example.com")
    token = {"X-Session-Token": alice.token}
    async with stack.client() as c:
        assert (await c.get("/orders/7?secret=s3cr3t", headers=token)).status_code == 200
        assert (await c.get("/orders/8", headers=token)).status_code == 200
        assert (await c.get("/public/a")).status_code == 200
        assert (await c.get("/orders")).status_code == 401
        unknown = {"X-Session-Token": "ory_st_UnknownTokenForMetrics"}
        assert (await c.get("/orders", headers=unknown)).status_code == 401
        assert (await c.get("/orders", headers={"Accept": HTML})).status_code == 303
        malformed = {"X-Session-Token": "x" * 9000}
        assert (await c.get("/orders", headers=malformed)).status_code == 400
        assert (await c.get("/health/alive")).status_code == 200
        assert (await c.get("/sessions/whoami", headers=token)).status_code == 200
    page = await settled_page(stack.gate, 9)
    assert requests_by_decision(page) == {
        ("allowed", ""): 2,
        ("public", ""): 1,
        ("denied", "no_credential"): 1,
        ("denied", "invalid_session"): 1,
        ("redirected", "no_credential"): 1,
        ("bad_request", "malformed_credential"): 1,
        ("gate", "health"): 1,
        ("relay", ""): 1,
    }
    # every HTTP request is in both histograms; the gate's share is part of the whole
    assert page.value("sessiongate_request_overhead_seconds_count") == 9
    assert page.value("sessiongate_request_duration_seconds_count") == 9
    overhead = page.value("sessiongate_request_overhead_seconds_sum")
    assert 0 < overhead <= page.value("sessiongate_request_duration_seconds_sum")
    # label values are fixed sets: no path, query, token or identity on the page
    for text in ("orders", "s3cr3t", "UnknownToken", alice.token, alice.identity_id, alice.id):
        assert text not in page.text
    assert page.types["sessiongate_requests"] == "counter"


async def test_overhead_excludes_the_app(make_stack):
    stack = make_stack()
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        r = await c.get("/slow/0.3", headers={"X-Session-Token": alice.token})
        assert r.status_code == 200
    page = await settled_page(stack.gate, 1)
    # the app took 0.3 s: the total is above it, the gate's own time well below
    assert page.value("sessiongate_request_duration_seconds_bucket", le="0.25") == 0
    assert page.value("sessiongate_request_duration_seconds_sum") >= 0.3
    assert page.value("sessiongate_request_overhead_seconds_bucket", le="0.25") == 1
    assert page.value("sessiongate_request_overhead_seconds_sum") < 0.25


async def test_cache_hits_misses_and_entries(make_stack):
    stack = make_stack()
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        for _ in range(3):  # a miss (whoami), then two hits
            await c.get("/a", headers={"X-Session-Token": alice.token})
        for _ in range(2):  # a miss (401), then the remembered 401
            await c.get("/a", headers={"X-Session-Token": "ory_st_NoSuchSession"})
    page = await settled_page(stack.gate, 5)
    assert page.value("sessiongate_cache_hits_total") == 3
    assert page.value("sessiongate_cache_misses_total") == 2
    assert page.value("sessiongate_cache_entries") == 2  # a session and a remembered 401
    assert page.value("sessiongate_kratos_whoami_total", outcome="200") == 1
    assert page.value("sessiongate_kratos_whoami_total", outcome="401") == 1


async def test_evictions_by_cause(make_stack):
    stack = make_stack(sessions_api={"enabled": True}, cache={"max_entries": 4})
    fake = stack.fake
    alice, bob = fake.login("alice@example.com"), fake.login("bob@example.com")
    carol, carol2, carol3 = (fake.login("carol@example.com") for _ in range(3))
    carols = {"X-Session-Token": carol.token}
    async with stack.client() as c:
        for who in (alice, bob, carol, carol2, carol3):  # the fifth pushes alice out
            r = await c.get("/a", headers={"X-Session-Token": who.token})
            assert r.status_code == 200
        # carol revokes one of her other sessions through the gate, then all the others
        assert (await c.delete(f"/sessions/{carol3.id}", headers=carols)).status_code == 204
        assert (await c.delete("/sessions", headers=carols)).status_code == 200
    page = await settled_page(stack.gate, 7)
    assert page.value("sessiongate_cache_entries") == 2  # bob's and carol's
    stack.gate.cache.clear()  # what an app (or the shared mode losing Redis) may do
    page = Page(stack.gate.metrics.exposition().decode())
    got = {dict(k)["cause"]: v for k, v in page.series("sessiongate_cache_evictions_total").items()}
    assert got == {"capacity": 1, "session_revoked": 1, "identity_revoked": 1, "cleared": 2}
    assert set(got) <= set(EVICTION_CAUSES)
    assert page.value("sessiongate_cache_entries") == 0


async def test_expired_entries(make_stack):
    stack = make_stack(cache={"ttl": 0.3})
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        assert (await c.get("/a", headers={"X-Session-Token": alice.token})).status_code == 200
        await asyncio.sleep(0.4)
        assert (await c.get("/a", headers={"X-Session-Token": alice.token})).status_code == 200
    page = await settled_page(stack.gate, 2)
    assert page.series("sessiongate_cache_evictions_total") == {(("cause", "expired"),): 1.0}
    assert page.value("sessiongate_cache_misses_total") == 2
    assert page.value("sessiongate_kratos_whoami_total", outcome="200") == 2


async def test_whoami_outcomes_and_latency(make_custom):  # noqa: F811
    custom = make_custom(ory={"timeout": 0.5})
    probe = custom.probe
    replies = [
        ((200, JSON, session_json()), 200, "200"),
        ((401, JSON, b'{"error":{"code":401}}'), 401, "401"),
        ((403, JSON, b'{"error":{"id":"other"}}'), 503, "403"),
        ((429, [*JSON, ("Retry-After", "3")], b"{}"), 429, "429"),
        ((500, JSON, b'{"error":{"code":500}}'), 503, "5xx"),
        ((404, [("Content-Type", "text/plain")], b"404 page not found"), 503, "other"),
    ]
    async with custom.client() as c:
        for i, (reply, status, _) in enumerate(replies):
            probe.reply = reply
            r = await c.get("/a", headers={"X-Session-Token": f"ory_st_probe{i}"})
            assert r.status_code == status, r.text
        probe.delay = 30.0  # past ory.timeout
        r = await c.get("/a", headers={"X-Session-Token": "ory_st_slow"})
        assert r.status_code == 503
    page = await settled_page(custom.gate, len(replies) + 1)
    expected = {outcome: 1.0 for _, _, outcome in replies} | {"timeout": 1.0}
    got = {dict(k)["outcome"]: v for k, v in page.series("sessiongate_kratos_whoami_total").items()}
    assert got == expected
    assert set(got) <= set(WHOAMI_OUTCOMES)
    assert page.value("sessiongate_kratos_whoami_duration_seconds_count") == 7
    # the timed-out call took ory.timeout (0.5 s); the others were quick
    assert page.value("sessiongate_kratos_whoami_duration_seconds_bucket", le="0.25") == 6
    assert page.value("sessiongate_kratos_whoami_in_flight") == 0
    decisions = requests_by_decision(page)
    assert decisions[("unavailable", "rate_limited")] == 1
    assert decisions[("unavailable", "kratos_unavailable")] == 4


async def test_whoami_connection_error(make_stack):
    stack = make_stack()
    stack.kratos.stop()
    async with stack.client() as c:
        r = await c.get("/a", headers={"X-Session-Token": "ory_st_anything"})
    assert r.status_code == 503
    page = await settled_page(stack.gate, 1)
    assert page.series("sessiongate_kratos_whoami_total") == {
        (("outcome", "connection_error"),): 1.0
    }


async def test_whoami_in_flight_and_shed_requests(make_custom):  # noqa: F811
    custom = make_custom(delay=1.0, ory={"max_inflight": 2})
    sessions = [custom.fake.login(f"user{i}@example.com") for i in range(5)]
    async with custom.client() as c:
        calls = asyncio.gather(
            *(c.get("/x", headers={"X-Session-Token": s.token}) for s in sessions)
        )
        task = asyncio.ensure_future(calls)
        assert await until(lambda: custom.probe.current == 2)
        page = Page(custom.gate.metrics.exposition().decode())
        assert page.value("sessiongate_kratos_whoami_in_flight") == 2
        responses = await task
    assert sorted(r.status_code for r in responses) == [200, 200, 503, 503, 503]
    page = await settled_page(custom.gate, 5)
    assert page.value("sessiongate_requests_shed_total") == 3
    assert requests_by_decision(page)[("unavailable", "overloaded")] == 3
    assert page.value("sessiongate_kratos_whoami_in_flight") == 0


async def test_upstream_errors_by_status(make_stack):
    stack = make_stack(upstream={"timeout": 0.3, "connect_timeout": 1})
    alice = stack.fake.login("alice@example.com")
    token = {"X-Session-Token": alice.token}
    async with stack.client() as c:
        assert (await c.get("/slow/2", headers=token)).status_code == 504
        stack.upstream_server.stop()
        assert (await c.get("/a", headers=token)).status_code == 502
        assert (await c.get("/b", headers=token)).status_code == 502
    page = await settled_page(stack.gate, 3)
    assert page.series("sessiongate_upstream_errors_total") == {
        (("status", "502"),): 2.0,
        (("status", "504"),): 1.0,
    }
    assert requests_by_decision(page) == {("allowed", ""): 3}  # the gate said yes to each


async def test_relay_calls_by_route_and_status(make_stack):
    stack = make_stack(sessions_api={"enabled": True})
    alice = stack.fake.login("alice@example.com")
    token = {"X-Session-Token": alice.token}
    async with stack.client() as c:
        assert (await c.get("/sessions/whoami", headers=token)).status_code == 200
        assert (await c.get("/sessions/whoami", headers=token)).status_code == 200
        assert (await c.get("/sessions/whoami")).status_code == 401
        assert (await c.get("/sessions", headers=token)).status_code == 200
        r = await c.delete("/sessions/not-a-uuid", headers=token)
        assert r.status_code == 400
        assert (await c.post("/sessions/whoami", headers=token)).status_code == 405
    page = await settled_page(stack.gate, 6)
    got = {
        (dict(k)["route"], dict(k)["status"]): v
        for k, v in page.series("sessiongate_relay_requests_total").items()
    }
    assert got == {
        ("whoami", "200"): 2,
        ("whoami", "401"): 1,
        ("list_sessions", "200"): 1,
        ("revoke_session", "400"): 1,
        ("unmatched", "405"): 1,
    }
    assert "not-a-uuid" not in page.text


async def test_websockets_open(make_stack):
    stack = make_stack()
    alice = stack.fake.login("alice@example.com")
    url = stack.url.replace("http://", "ws://", 1) + "/ws"

    def open_now() -> float:
        page = Page(stack.gate.metrics.exposition().decode())
        return page.value("sessiongate_websockets_open")

    headers = {"X-Session-Token": alice.token}
    async with ws_connect(url, additional_headers=headers, open_timeout=5) as first:
        assert json.loads(await first.recv())["user"] == alice.identity_id
        async with ws_connect(url, additional_headers=headers, open_timeout=5) as second:
            await second.recv()
            assert open_now() == 2
        assert await until(lambda: open_now() == 1)
    assert await until(lambda: open_now() == 0)
    page = await settled_page(stack.gate, 2)
    assert requests_by_decision(page) == {("allowed", ""): 2}
    # a socket's life is not a request's latency
    assert page.value("sessiongate_request_duration_seconds_count") == 0


async def test_metrics_off_records_nothing(make_stack):
    stack = make_stack(metrics={"enabled": False}, log={"access": False})
    gate = stack.gate
    assert gate.metrics is None
    assert not gate.observers  # no record per request at all (access lines off too)
    assert gate.gatekeeper.authenticator.metrics is None
    assert gate.cache.metrics is None
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        assert (await c.get("/a", headers={"X-Session-Token": alice.token})).status_code == 200


def test_unknown_decisions_are_counted_as_unknown():
    metrics = Metrics()
    record = RequestRecord(0.0, "GET", "/x", finished=0.001)
    for decision, reason in [("allowed", ""), ("user/path", "?q=1"), ("other/path", "x")]:
        record.decide(decision, reason)
        metrics.finish({}, record)
    page = Page(metrics.exposition().decode())
    assert requests_by_decision(page) == {("allowed", ""): 1, ("unknown", "unknown"): 2}
    assert "path" not in page.text


@pytest.fixture
def middleware_stack():  # type: ignore[no-untyped-def]
    kratos = FakeKratosServer().start()
    from gate_stack import settings_for

    settings = settings_for(kratos.public_url, "http://127.0.0.1:9")
    # a Starlette app answers the lifespan, so the middleware closes its clients at shutdown
    app = Starlette(routes=[Route("/a", lambda request: PlainTextResponse("ok"))])
    gated = SessionGateMiddleware(app, settings)

    async def server(scope, receive, send):  # type: ignore[no-untyped-def]
        # as in the README: /metrics answered before the gate, everything else through it
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await gated.metrics_app(scope, receive, send)  # type: ignore[misc]
        else:
            await gated(scope, receive, send)

    running = UvicornThread(server, lifespan="on")
    running.start()
    try:
        yield kratos, running
    finally:
        running.stop()
        kratos.stop()


async def test_middleware_mode_serves_its_page_through_metrics_app(middleware_stack):
    kratos, running = middleware_stack
    alice = kratos.fake.login("alice@example.com")
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as c:
        for _ in range(2):
            r = await c.get("/a", headers={"X-Session-Token": alice.token})
            assert r.status_code == 200
        assert (await c.get("/a")).status_code == 401
        for _ in range(50):  # the answer can reach us before the middleware counts it
            r = await c.get("/metrics")
            page = Page(r.text)
            if page.total("sessiongate_requests_total") >= 3:
                break
            await asyncio.sleep(0.02)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert requests_by_decision(page) == {("allowed", ""): 2, ("denied", "no_credential"): 1}
    assert page.value("sessiongate_cache_hits_total") == 1
    assert page.value("sessiongate_kratos_whoami_total", outcome="200") == 1
    assert page.value("sessiongate_request_overhead_seconds_count") == 3
