"""Access log lines (access_log.py, logs.py) from a real gate: one valid JSON object per request
with the documented fields, for every kind of answer: allowed, denied, redirected, relay,
WebSocket, the app down (502), the app too slow (504) and Kratos down (503).

The gate runs under uvicorn with the Kratos fake and the echo app; its access observer writes
through a `LogWriter` (the same thread and formats `sessiongate serve` uses) into a file that the
test reads back. `tests/test_serve_logs.py` checks the same lines on a served gate's stderr.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from gate_stack import Stack
from websockets.asyncio.client import connect as ws_connect

from sessiongate.access_log import AccessLog
from sessiongate.config import Settings
from sessiongate.gate import Gate
from sessiongate.logs import LogWriter
from sessiongate.observe import DECISIONS, REASONS

HTML = "text/html,application/xhtml+xml"
FIELDS = {
    "time",
    "level",
    "logger",
    "request_id",
    "method",
    "path",
    "status",
    "decision",
    "reason",
    "overhead_ms",
    "duration_ms",
}
RFC3339_UTC = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


class Lines:
    """The access lines a gate wrote, read back through the writer."""

    def __init__(self, gate: Gate, *, as_json: bool = True, identity: bool = False) -> None:
        self.stream = io.StringIO()
        self.writer = LogWriter(self.stream, as_json=as_json)
        gate.observers.add(AccessLog(self.writer, identity=identity))
        self.seen = 0

    def text(self) -> list[str]:
        self.writer.flush()
        lines = self.stream.getvalue().splitlines()
        new, self.seen = lines[self.seen :], len(lines)
        return new

    async def next(self) -> dict[str, Any]:
        """The next line (the server may answer before the request's task finishes)."""
        for _ in range(100):
            lines = self.text()
            if lines:
                assert len(lines) == 1, lines
                return json.loads(lines[0])  # type: ignore[no-any-return]
            await asyncio.sleep(0.02)
        raise AssertionError("no access line")

    def close(self) -> None:
        self.writer.stop()


def check(line: dict[str, Any], **expected: Any) -> None:
    """Every documented field, of the documented type, and the values expected."""
    assert set(line) >= FIELDS, line
    assert line["level"] == "info"
    assert line["logger"] == "sessiongate.access"
    assert line["decision"] in DECISIONS
    assert line["reason"] in REASONS
    assert isinstance(line["status"], int)
    assert 0 <= line["overhead_ms"] <= line["duration_ms"], line
    assert "?" not in line["path"]
    assert "identity_id" not in line or expected.get("identity_id"), line
    for key, value in expected.items():
        assert line[key] == value, (key, line)


@pytest.fixture
def logged(make_stack: Callable[..., Stack]):  # type: ignore[no-untyped-def]
    stacks: list[Lines] = []

    def build(
        identity: bool = False, as_json: bool = True, **overrides: Any
    ) -> tuple[Stack, Lines]:
        stack = make_stack(log={"access": False}, **overrides)
        lines = Lines(stack.gate, identity=identity, as_json=as_json)
        stacks.append(lines)
        return stack, lines

    yield build
    for lines in stacks:
        lines.close()


async def test_allowed_denied_redirected_and_relay_lines(logged) -> None:
    stack, lines = logged(sessions_api={"enabled": True})
    alice = stack.fake.login("alice@example.com")
    token = {"X-Session-Token": alice.token}
    async with stack.client() as client:
        r = await client.get("/orders/7?secret=s3cr3t&page=2", headers=token)
        assert r.status_code == 200
        line = await lines.next()
        check(line, method="GET", path="/orders/7", status=200, decision="allowed", reason="")
        assert line["request_id"] == r.headers["x-request-id"]  # the one the client got
        assert "identity_id" not in line  # log.identity is off by default
        assert "s3cr3t" not in json.dumps(line)

        r = await client.post("/orders", content=b"{}")
        line = await lines.next()
        check(line, method="POST", status=401, decision="denied", reason="no_credential")

        await client.get("/orders", headers={"X-Session-Token": "ory_st_unknown"})
        check(await lines.next(), status=401, decision="denied", reason="invalid_session")

        await client.get("/orders", headers={"Accept": HTML})
        check(await lines.next(), status=303, decision="redirected", reason="no_credential")

        await client.get("/public/page")
        check(await lines.next(), status=200, decision="public", reason="")

        r = await client.get("/sessions/whoami", headers=token)
        assert r.status_code == 200
        line = await lines.next()
        check(line, path="/sessions/whoami", status=200, decision="relay")
        assert line["request_id"] == r.headers["x-request-id"]


async def test_the_identity_only_when_asked(logged) -> None:
    stack, lines = logged(identity=True)
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as client:
        await client.get("/a", headers={"X-Session-Token": alice.token})
        check(await lines.next(), decision="allowed", identity_id=alice.identity_id)
        await client.get("/a")  # no session: no identity, even when asked
        assert "identity_id" not in await lines.next()


async def test_websocket_lines(logged) -> None:
    stack, lines = logged()
    alice = stack.fake.login("alice@example.com")
    url = stack.url.replace("http://", "ws://", 1) + "/ws?ticket=abc"
    async with ws_connect(url, additional_headers={"X-Session-Token": alice.token}) as ws:
        await asyncio.wait_for(ws.recv(), 5)
    line = await lines.next()
    check(line, path="/ws", status=101, decision="allowed", kind="websocket")
    with pytest.raises(Exception, match="403"):
        async with ws_connect(url, open_timeout=5):
            pass
    check(await lines.next(), status=403, decision="denied", kind="websocket")


async def test_the_app_down_too_slow_and_kratos_down(logged) -> None:
    stack, lines = logged(upstream={"timeout": 0.5})
    alice = stack.fake.login("alice@example.com")
    token = {"X-Session-Token": alice.token}
    async with stack.client() as client:
        r = await client.get("/slow/3", headers=token)
        assert r.status_code == 504
        line = await lines.next()
        check(line, status=504, decision="allowed", upstream_error="504")
        assert line["duration_ms"] >= 400

        stack.upstream_server.stop()
        r = await client.get("/gone", headers=token)
        assert r.status_code == 502
        check(await lines.next(), status=502, decision="allowed", upstream_error="502")

        stack.kratos.stop()
        bob = stack.fake.login("bob@example.com")
        r = await client.get("/a", headers={"X-Session-Token": bob.token})
        assert r.status_code == 503
        line = await lines.next()
        check(line, status=503, decision="unavailable", reason="kratos_unavailable")
        assert line["request_id"] == r.headers["x-request-id"]  # the gate's own errors too


async def test_a_path_cannot_forge_a_line(logged) -> None:
    stack, lines = logged()
    async with stack.client() as client:
        # decoded by the server: a newline, a quote and a brace in the path
        await client.get('/a%0A{"status":200}%22x')
    line = await lines.next()  # still exactly one line, valid JSON
    check(line, path='/a\n{"status":200}"x', status=401)


async def test_text_lines_have_the_same_fields(logged) -> None:
    stack, lines = logged(as_json=False)
    async with stack.client() as client:
        r = await client.get("/a b?token=xyz")
    [line] = [t for t in lines.text() if t]  # flushed: the request is over
    assert " INFO sessiongate.access " in line
    assert f'request_id="{r.headers["x-request-id"]}"' in line
    assert 'method="GET" path="/a b" status=401 decision=denied reason=no_credential' in line
    assert "overhead_ms=" in line
    assert "duration_ms=" in line
    assert "xyz" not in line


def test_access_lines_are_on_by_default_in_proxy_mode(make_stack) -> None:
    on = make_stack().gate
    off = make_stack(log={"access": False}).gate
    assert any(isinstance(o, AccessLog) for o in on.observers.observers)
    assert not any(isinstance(o, AccessLog) for o in off.observers.observers)


def test_the_readme_example_line_and_settings() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Access logs", 1)[1].split("\n### ", 1)[0]
    settings_block = re.search(r"```yaml\n(.*?)```", section, re.S)
    line_block = re.search(r"```json\n(.*?)```", section, re.S)
    assert settings_block is not None
    assert line_block is not None
    log = Settings.model_validate(yaml.safe_load(settings_block.group(1))).log
    assert (log.level, log.access, log.format, log.identity) == ("warning", True, "json", False)
    check(json.loads(line_block.group(1).replace("\n", "")), decision="allowed")
