"""OpenTelemetry spans (tracing.py, the `otel` extra) on a real gate, with an in-memory exporter.

The span tree is the README's ("Traces"): the gate continues the client's trace with one SERVER
span per request (stable HTTP semantic conventions plus `sessiongate.decision`, `.reason`,
`.cache.hit`, `.request_id`), a CLIENT span per whoami call below it, and hands the app the
server span and Kratos the whoami span as their parents. And the switch: which `OTEL_*`
variables turn spans on.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from resources import until
from sessiongate.gate import Gate
from sessiongate.testing import UvicornThread
from sessiongate.tracing import Tracing, otel_configured

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT}-01"


@pytest.fixture
def traced(make_stack):  # type: ignore[no-untyped-def]
    """A stack whose gate exports its spans to memory (the gate is rebuilt with `tracing`)."""
    servers: list[UvicornThread] = []

    def build(**overrides: Any) -> tuple[Any, InMemorySpanExporter, str]:
        stack = make_stack(**overrides)
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        gate = Gate(stack.gate.settings, tracing=Tracing(provider))
        server = UvicornThread(gate, lifespan="on")
        server.start()
        servers.append(server)
        return stack, exporter, server.url

    yield build
    for server in servers:
        server.stop()


def by_kind(exporter: InMemorySpanExporter, kind: SpanKind) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.kind == kind]


async def servers_spans(exporter: InMemorySpanExporter, count: int) -> list[Any]:
    """The SERVER spans, once `count` ended (a span ends after the answer was sent)."""
    await until(lambda: len(by_kind(exporter, SpanKind.SERVER)) >= count, 5)
    return by_kind(exporter, SpanKind.SERVER)


async def test_the_span_tree_and_its_attributes(traced) -> None:
    import httpx

    stack, exporter, url = traced()
    alice = stack.fake.login("alice@example.com")
    headers = {"X-Session-Token": alice.token, "traceparent": TRACEPARENT}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        r = await client.get("/orders?page=2", headers={**headers, "User-Agent": "probe/1"})
        assert r.status_code == 200
        app_saw = stack.app.last_headers()
        r2 = await client.get("/orders", headers=headers)  # from the cache: no whoami
        assert r2.status_code == 200
    [server, cached] = await servers_spans(exporter, 2)
    [whoami] = by_kind(exporter, SpanKind.CLIENT)

    # the client's trace goes on: the server span's parent is the client's span
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert f"{server.parent.span_id:016x}" == PARENT
    assert server.name == "GET"
    attributes = dict(server.attributes)
    assert attributes == {
        "http.request.method": "GET",
        "url.path": "/orders",  # never the query
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "server.address": "127.0.0.1",
        "server.port": int(url.rsplit(":", 1)[1]),
        "client.address": "127.0.0.1",
        "network.peer.address": "127.0.0.1",
        "user_agent.original": "probe/1",
        "sessiongate.request_id": r.headers["x-request-id"],
        "http.response.status_code": 200,
        "sessiongate.decision": "allowed",
        "sessiongate.cache.hit": False,
    }
    assert dict(cached.attributes)["sessiongate.cache.hit"] is True

    # whoami below the server span; Kratos got the whoami span as its parent
    assert whoami.parent.span_id == server.context.span_id
    assert whoami.context.trace_id == server.context.trace_id
    assert whoami.name == "GET"
    assert dict(whoami.attributes) == {
        "http.request.method": "GET",
        "url.full": stack.kratos.public_url + "/sessions/whoami",
        "server.address": "127.0.0.1",
        "server.port": int(stack.kratos.public_url.rsplit(":", 1)[1]),
        "http.response.status_code": 200,
    }
    sent = [h for _, p, h in stack.fake.received if p == "/sessions/whoami"][-1]
    assert sent["traceparent"] == f"00-{TRACE_ID}-{whoami.context.span_id:016x}-01"
    # ... and the app the server span
    assert app_saw["traceparent"] == [f"00-{TRACE_ID}-{server.context.span_id:016x}-01"]


async def test_denials_failures_and_a_new_trace(traced) -> None:
    import httpx

    stack, exporter, url = traced()
    alice = stack.fake.login("alice@example.com")
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        assert (await client.get("/a")).status_code == 401  # no traceparent: a new trace
        stack.kratos.stop()
        r = await client.get("/a", headers={"X-Session-Token": alice.token})
        assert r.status_code == 503
    denied, failed = await servers_spans(exporter, 2)
    assert denied.parent is None
    assert dict(denied.attributes)["sessiongate.decision"] == "denied"
    assert dict(denied.attributes)["sessiongate.reason"] == "no_credential"
    assert "sessiongate.cache.hit" not in dict(denied.attributes)  # no credential to look up
    assert denied.status.status_code == StatusCode.UNSET  # a 4xx is not the server's fault
    assert dict(failed.attributes)["error.type"] == "503"
    assert failed.status.status_code == StatusCode.ERROR
    [whoami] = by_kind(exporter, SpanKind.CLIENT)
    assert whoami.parent.span_id == failed.context.span_id
    assert whoami.status.status_code == StatusCode.ERROR
    assert dict(whoami.attributes)["error.type"] == "ClientConnectorError"


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "gate"}, False),  # naming alone turns nothing on
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_the_switch(environ, on) -> None:
    assert otel_configured(environ) is on
    tracing = Tracing.from_environment(environ)
    assert (tracing is not None) is on
    if tracing is not None:
        assert dict(tracing.provider.resource.attributes)["service.name"] == "sessiongate"
        tracing.shutdown()


def test_an_unknown_exporter_is_a_warning_not_a_crash(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="sessiongate.tracing"):
        assert Tracing.from_environment({"OTEL_TRACES_EXPORTER": "zipkin-nope"}) is None
    assert "no OpenTelemetry span exporter 'zipkin-nope'" in caplog.text
