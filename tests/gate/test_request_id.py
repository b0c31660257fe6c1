"""X-Request-Id and W3C trace context through a real gate (tracing.py), without OpenTelemetry.

The id is taken from the request only when the TCP peer is a trusted proxy and the value is
1-128 visible ASCII characters; otherwise the gate makes one. Either way exactly that id
reaches the app (never the client's own), Kratos (whoami and the relay's calls) and the client
(app answers, denials, the gate's own errors). `traceparent`/`tracestate` reach the app and
Kratos unchanged. A whoami shared by concurrent requests carries the first one's id and trace.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from gate_stack import Stack, settings_for
from test_authenticate import KratosProbe

from apps import EchoApp
from resources import until
from sessiongate.gate import Gate
from sessiongate.middleware import SessionGateMiddleware
from sessiongate.proxy import UpstreamProxy
from sessiongate.testing import FakeKratosServer, KratosFake, UvicornThread
from sessiongate.tracing import CONTEXT, RequestContext

GENERATED = re.compile(r"^[0-9a-f]{32}$")
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
TRUSTED = {"forwarded": {"trusted_proxies": ["127.0.0.1/32"]}}


def app_ids(stack: Stack) -> list[str]:
    """The X-Request-Id headers the app got with its last request (all of them)."""
    return [v for k, v in stack.app.requests[-1]["headers"] if k == "x-request-id"]


def kratos_seen(stack: Stack, path: str = "/sessions/whoami") -> list[dict[str, str]]:
    return [headers for _, p, headers in stack.fake.received if p == path]


async def test_the_gate_makes_the_id_and_everyone_gets_it(make_stack) -> None:
    stack = make_stack(sessions_api={"enabled": True})
    alice = stack.fake.login("alice@example.com")
    token = {"X-Session-Token": alice.token}
    async with stack.client() as client:
        # no trusted proxies: a client's own id is never taken, nor passed on
        r = await client.get("/a", headers={**token, "X-Request-Id": "client-chosen"})
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        assert GENERATED.match(rid), rid
        assert app_ids(stack) == [rid]
        assert kratos_seen(stack)[-1]["x-request-id"] == rid

        # each request its own
        r2 = await client.get("/a", headers=token)
        assert r2.headers["x-request-id"] not in (rid, "")
        assert app_ids(stack) == [r2.headers["x-request-id"]]

        # denials and the gate's own answers carry it too
        for path, headers, status in [
            ("/a", {}, 401),
            ("/a", {"X-Session-Token": "x" * 9000}, 400),
            ("/health/alive", {}, 200),
        ]:
            r = await client.get(path, headers=headers)
            assert r.status_code == status
            assert GENERATED.match(r.headers["x-request-id"]), (path, r.headers)

        # the relay's calls to Kratos
        r = await client.get("/sessions", headers={**token, "X-Request-Id": "client-chosen"})
        assert r.status_code == 200
        [listed] = kratos_seen(stack, "/sessions")
        assert listed["x-request-id"] == r.headers["x-request-id"]
        assert r.headers.get_list("x-request-id") == [listed["x-request-id"]]
    assert all(h.get("x-request-id") != "client-chosen" for _, _, h in stack.fake.received)


@pytest.mark.parametrize(
    "sent",
    [
        [(b"x-request-id", b"client-1")],
        # servers that fold `_` into `-` would read it as the real one
        [(b"x_request_id", b"client-2")],
        # nor can a client name the gate's own away
        [(b"x-request-id", b"client-3"), (b"connection", b"x-request-id")],
    ],
)
def test_the_app_gets_one_id_whatever_the_client_sent(sent) -> None:
    # aiohttp keeps the last of repeated headers, so this is checked on the list itself
    proxy = UpstreamProxy("http://127.0.0.1:9", trusted_proxies=["127.0.0.1/32"])
    headers = [(b"host", b"gate.test"), *sent]
    scope = {"type": "http", "headers": headers, "client": ("127.0.0.1", 5), "scheme": "http"}
    scope[CONTEXT] = RequestContext("gate-id", headers, otel=False)
    out = proxy.upstream_headers(scope, headers)
    ids = [v for n, v in out if n.lower().replace("_", "-") == "x-request-id"]
    assert ids == ["gate-id"]


async def test_an_app_echoing_the_id_does_not_double_it(make_stack) -> None:
    async def echoing(scope: Any, receive: Any, send: Any) -> None:
        rid = dict(scope["headers"])[b"x-request-id"]
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"x-request-id", rid)]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    stack = make_stack(app=echoing, access={"public_paths": ["/**"]})
    async with stack.client() as client:
        r = await client.get("/x")
    assert len(r.headers.get_list("x-request-id")) == 1


@pytest.mark.parametrize(
    ("sent", "taken"),
    [
        ("req-42", True),
        ("a" * 128, True),
        ("!#$%&'*+-.^_`|~:/=?@[]{}", True),
        ("a" * 129, False),  # too long
        ("has space", False),
        ("tab\there", False),
        ("caf\xe9", False),  # not ASCII
    ],
)
async def test_a_trusted_proxy_s_id_is_taken_when_it_is_sane(make_stack, sent, taken) -> None:
    stack = make_stack(**TRUSTED)
    alice = stack.fake.login("alice@example.com")
    headers = [("X-Session-Token", alice.token), ("X-Request-Id", sent.encode("latin-1"))]
    async with stack.client() as client:
        r = await client.get("/a", headers=headers)
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    assert (rid == sent) is taken, rid
    assert taken or GENERATED.match(rid)
    assert app_ids(stack) == [rid]
    assert kratos_seen(stack)[-1]["x-request-id"] == rid


async def test_trace_context_reaches_the_app_and_kratos_unchanged(make_stack) -> None:
    stack = make_stack(sessions_api={"enabled": True})
    alice = stack.fake.login("alice@example.com")
    trace = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    async with stack.client() as client:
        r = await client.get("/a", headers={"X-Session-Token": alice.token, **trace})
        assert r.status_code == 200
        seen = stack.app.last_headers()
        assert (seen["traceparent"], seen["tracestate"]) == ([TRACEPARENT], [TRACESTATE])
        whoami = kratos_seen(stack)[-1]
        assert (whoami["traceparent"], whoami["tracestate"]) == (TRACEPARENT, TRACESTATE)
        r = await client.get("/sessions", headers={"X-Session-Token": alice.token, **trace})
        assert r.status_code == 200
        assert kratos_seen(stack, "/sessions")[-1]["traceparent"] == TRACEPARENT
        # without one, none is made up
        bob = stack.fake.login("bob@example.com")
        await client.get("/b", headers={"X-Session-Token": bob.token})
        assert "traceparent" not in kratos_seen(stack)[-1]
        assert "traceparent" not in stack.app.last_headers()


@pytest.fixture
def slow_kratos() -> Iterator[Callable[..., tuple[KratosProbe, str]]]:
    stops: list[Callable[[], None]] = []

    def build(**overrides: Any) -> tuple[KratosProbe, str]:
        probe = KratosProbe(delay=0.5)
        kratos = UvicornThread(probe)
        probe.fake = KratosFake(public_url=kratos.url, admin_url=None)
        kratos.start()
        stops.extend([kratos.stop, probe.release.set])
        upstream = UvicornThread(EchoApp())
        upstream.start()
        stops.append(upstream.stop)
        gate_server = UvicornThread(Gate(settings_for(kratos.url, upstream.url, **overrides)))
        gate_server.start()
        stops.append(gate_server.stop)
        return probe, gate_server.url

    yield build
    for stop in reversed(stops):
        stop()


async def test_a_shared_whoami_carries_the_first_request_s_id_and_trace(slow_kratos) -> None:
    probe, url = slow_kratos(**TRUSTED)
    assert probe.fake is not None
    alice = probe.fake.login("alice@example.com")

    def headers(n: int) -> dict[str, str]:
        parent = f"00-{n:032x}-{n:016x}-01"
        return {"X-Session-Token": alice.token, "X-Request-Id": f"r{n}", "traceparent": parent}

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        first = asyncio.create_task(client.get("/a", headers=headers(1)))
        await until(lambda: bool(probe.whoami_headers), 5)  # the first one's whoami is out
        others = [client.get("/a", headers=headers(n)) for n in range(2, 6)]
        answers = [await first, *await asyncio.gather(*others)]
    assert [r.status_code for r in answers] == [200] * 5
    assert [r.headers["x-request-id"] for r in answers] == [f"r{n}" for n in range(1, 6)]
    [sent] = [dict(h) for h in probe.whoami_headers]  # one call for the five
    assert (sent["x-request-id"], sent["traceparent"]) == ("r1", headers(1)["traceparent"])


@pytest.mark.parametrize("trusted", [True, False])
async def test_middleware_whoami_carries_the_request_s_trace_and_trusted_id(trusted) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with FakeKratosServer() as kratos:
        settings = settings_for(
            kratos.public_url,
            "http://127.0.0.1:9",
            **(TRUSTED if trusted else {}),
        )
        alice = kratos.fake.login("alice@example.com")
        headers = {
            "X-Session-Token": alice.token,
            "X-Request-Id": "mw-1",
            "traceparent": TRACEPARENT,
        }
        gated = SessionGateMiddleware(app, settings)
        with UvicornThread(gated) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                assert (await client.get("/a", headers=headers)).status_code == 200
        await gated.kratos.aclose()  # no lifespan here: its client is closed by hand
        [sent] = [h for _, p, h in kratos.fake.received if p == "/sessions/whoami"]
    assert sent["traceparent"] == TRACEPARENT
    assert sent.get("x-request-id") == ("mw-1" if trusted else None)


@pytest.mark.parametrize("otel_env", [{}, {"OTEL_TRACES_EXPORTER": "console"}])
def test_the_core_runs_without_the_opentelemetry_packages(otel_env) -> None:
    """As after `pip install sessiongate` (no extra): a gate starts; with OTEL_* set, it says
    that the packages are missing instead of failing."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'opentelemetry': raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import logging; logging.basicConfig()\n"
        "from sessiongate.config import Settings\n"
        "from sessiongate.gate import Gate\n"
        "print('tracing', Gate(Settings()).tracing)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, **otel_env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "tracing None", out.stderr
    assert ("sessiongate[otel]" in out.stderr) is bool(otel_env), out.stderr
