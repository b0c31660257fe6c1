"""`sessiongate serve` as an operator runs it: JSON lines on stderr, access lines included, and
OpenTelemetry switched on by the standard variables alone (README, "Access logs", "Traces")."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from test_cli import Running, backends, clean_env, free_port, gate_config, serve

__all__ = ["backends"]  # the fixture, used by name


def json_lines(gate: Running) -> list[dict[str, Any]]:
    """Every stderr line as JSON (a line that is not JSON fails the test)."""
    text = gate.stderr.read_text(errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def access_lines(gate: Running, count: int, path: str = "/hello") -> list[dict[str, Any]]:
    """The access lines, once `count` of them for `path` were written (the writer batches: up
    to ~50 ms; the start-up's health probes have lines of their own)."""
    deadline = time.monotonic() + 10
    while True:
        found = [x for x in json_lines(gate) if x.get("logger") == "sessiongate.access"]
        mine = [x for x in found if x.get("path") == path]
        if len(mine) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_serve_writes_json_access_lines_to_stderr(tmp_path, backends, server) -> None:
    port = free_port()
    path = gate_config(
        tmp_path,
        backends,
        port,
        listen={"host": "127.0.0.1", "port": port, "server": server},
        # access lines have their own switch: written whatever the level
        log={"format": "json", "level": "warning"},
    )
    alice = backends.kratos.fake.login("alice@example.com")
    with (
        serve(tmp_path, ["--config", str(path)], clean_env(), port) as gate,
        httpx.Client(base_url=gate.url, timeout=10) as client,
    ):
        ok = client.get("/hello?token=q-secret", headers={"X-Session-Token": alice.token})
        assert ok.status_code == 200
        refused = client.get("/hello", headers={"Cookie": "ory_kratos_session=c-secret"})
        assert refused.status_code == 401
        lines = access_lines(gate, 2)
    allowed, denied = [x for x in lines if x["path"] == "/hello"][-2:]
    assert allowed["request_id"] == ok.headers["x-request-id"]
    assert (allowed["status"], allowed["decision"], allowed["method"]) == (200, "allowed", "GET")
    assert (denied["status"], denied["decision"], denied["reason"]) == (
        401,
        "denied",
        "invalid_session",
    )
    for line in (allowed, denied):
        assert line["time"].endswith("Z")
        assert line["level"] == "info"
        assert line["overhead_ms"] <= line["duration_ms"]
    # every line on stderr is JSON, the gate's own and the server's; nothing secret in any
    everything = json_lines(gate)
    assert any(x["logger"] == "sessiongate" and x["level"] == "warning" for x in everything)
    infos = [x for x in everything if x["level"] == "info"]
    assert {x["logger"] for x in infos} == {"sessiongate.access"}  # log.level: warning
    stderr = gate.stderr.read_text()
    for secret in (alice.token, "q-secret", "c-secret"):
        assert secret not in stderr


def test_serve_sends_spans_when_otel_variables_say_so(tmp_path, backends) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    port = free_port()
    path = gate_config(tmp_path, backends, port, log={"access": False})
    env = clean_env(
        OTEL_TRACES_EXPORTER="console",  # spans as JSON on stdout
        OTEL_SERVICE_NAME="gate-under-test",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    alice = backends.kratos.fake.login("alice@example.com")
    with serve(tmp_path, ["--config", str(path)], env, port) as gate:
        r = httpx.get(gate.url + "/traced", headers={"X-Session-Token": alice.token}, timeout=10)
        assert r.status_code == 200
    out = gate.stdout.read_text()  # after shutdown: every span exported
    assert '"name": "GET"' in out, gate.output()
    assert '"kind": "SpanKind.SERVER"' in out
    assert '"kind": "SpanKind.CLIENT"' in out
    assert '"url.path": "/traced"' in out
    assert '"service.name": "gate-under-test"' in out
    assert r.headers["x-request-id"] in out
