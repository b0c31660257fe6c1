"""Stage 5 through the real gate: what the protected app receives and what the client gets back.

Every test runs the Kratos fake, an upstream app and the gate under uvicorn on 127.0.0.1 and
authenticates with `X-Session-Token`. `ProbeApp` (below) is an upstream that also records when
the gate abandons a request (its `receive()` reports `http.disconnect`), so cancellation is
observed on the upstream side rather than inferred.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import psutil
import pytest
from gate_stack import Stack, settings_for
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from resources import PeakRSS, gate_task_count, until
from sessiongate.gate import Gate
from sessiongate.testing import FakeKratosServer, UvicornThread, serve_thread
from sessiongate.testing.server import bind_loopback

MB = 1 << 20
RawHeaders = list[tuple[bytes, bytes]]


# -- an upstream that notices abandoned requests ------------------------------------------------
class ProbeApp:
    """Records raw headers and bodies, and every `http.disconnect` the gate causes.

    /stream        streams 64 KiB chunks until the gate drops the connection (30 s at most)
    /wait/<s>      waits up to s seconds for the request to be abandoned, then answers
    /trickle       8 bytes, one every 250 ms
    /upload        reads the body; records whether it was complete or abandoned
    anything else  echoes method, raw path, query, raw header list, body length and sha256
    WebSocket      accepts, sends {"user": [x-user-id values], "headers": [...]}, echoes
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.events: list[tuple[str, float]] = []

    def event(self, name: str) -> None:
        self.events.append((name, time.monotonic()))

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self.events)

    def when(self, name: str) -> float:
        return next(t for n, t in self.events if n == name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/stream":
            await self._stream(receive, send)
            return
        if path.startswith("/wait/"):
            await self._wait(float(path.rsplit("/", 1)[1]), receive, send)
            return
        if path == "/trickle":
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(8):
                await asyncio.sleep(0.25)
                await send({"type": "http.response.body", "body": b"t", "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.event("upload:disconnected")
                return
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            if not message.get("more_body"):
                break
        record = {
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": (scope.get("raw_path") or b"").decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            "body_size": size,
            "sha256": digest.hexdigest(),
        }
        self.requests.append(record)
        self.event("request:complete")
        body = json.dumps(record).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _stream(self, receive: Receive, send: Send) -> None:
        await receive()  # the (empty) request body
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        self.event("stream:started")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = b"s" * (64 * 1024)
        deadline = time.monotonic() + 30
        try:
            while not gone.is_set() and time.monotonic() < deadline:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await asyncio.sleep(0)
            if gone.is_set():
                self.event("stream:disconnected")
                return
            self.event("stream:ran-out")
            await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()

    async def _wait(self, seconds: float, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass  # the whole request body first
        self.event("wait:started")
        try:
            message = await asyncio.wait_for(receive(), seconds)
        except TimeoutError:
            self.event("wait:finished")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"waited"})
            return
        if message["type"] == "http.disconnect":
            self.event("wait:disconnected")

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        self.requests.append({"method": "WS", "path": scope["path"], "headers": headers})
        await send({"type": "websocket.accept"})
        users = [v for k, v in headers if k.lower().replace("_", "-") == "x-user-id"]
        await send(
            {"type": "websocket.send", "text": json.dumps({"user": users, "headers": headers})}
        )
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await send({"type": "websocket.send", "bytes": message["bytes"][::-1]})
            else:
                await send({"type": "websocket.send", "text": "echo:" + message["text"]})


# -- helpers ----------------------------------------------------------------------------------
def auth(stack: Stack, email: str = "alice@example.com") -> dict[str, str]:
    return {"X-Session-Token": stack.fake.login(email).token}


def header_map(headers: list[tuple[str, str]] | list[list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in headers:
        out.setdefault(k.lower(), []).append(v)
    return out


def established_to(port: int) -> int:
    """Established server-side sockets of `port` (every server runs in this process)."""
    return sum(
        1
        for c in psutil.Process().net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


async def body_chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    chunk = b"u" * size
    sent = 0
    while sent < total:
        part = chunk if total - sent >= size else chunk[: total - sent]
        sent += len(part)
        yield part


async def read_response(
    reader: asyncio.StreamReader, *, head: bool = False
) -> tuple[int, RawHeaders, bytes]:
    """One HTTP/1.1 response with its raw header list (case and order as sent)."""
    block = await reader.readuntil(b"\r\n\r\n")
    lines = block[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: RawHeaders = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip()))
    names = {n.lower(): v for n, v in headers}
    if head or status in (204, 304) or 100 <= status < 200:
        return status, headers, b""
    if b"content-length" in names:
        return status, headers, await reader.readexactly(int(names[b"content-length"]))
    if names.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, headers, body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    return status, headers, await reader.read()


async def raw_exchange(
    port: int, request: bytes, *, head: bool = False
) -> tuple[int, RawHeaders, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(read_response(reader, head=head), 10)
    finally:
        writer.close()
        await writer.wait_closed()


def raw_get(path: bytes, token: str, *extra: bytes, method: bytes = b"GET") -> bytes:
    lines = [
        method + b" " + path + b" HTTP/1.1",
        b"Host: gate.test",
        b"X-Session-Token: " + token.encode(),
        *extra,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _Collect(logging.Filter):
    """A filter, not a handler: uvicorn's dictConfig drops handlers each time a server starts."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            self.records.append(record)
        return True


class _CollectGranian(logging.Handler):
    """On the root logger: granian logs under `_granian.*` (propagated; its dictConfig, run at
    each start, resets the `_granian` logger's own handlers)."""

    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("_granian"):
            self.records.append(record)


@pytest.fixture(autouse=True)
def no_asgi_exceptions() -> Iterator[list[logging.LogRecord]]:
    """Every server here logs an exception escaping the gate (or an app): uvicorn to
    `uvicorn.error`, granian under `_granian`. One fails the test even when the client, long
    gone, could not notice."""
    collect = _Collect()
    logger = logging.getLogger("uvicorn.error")
    logger.addFilter(collect)
    granian = _CollectGranian(collect.records)
    logging.getLogger().addHandler(granian)
    try:
        yield collect.records
    finally:
        logger.removeFilter(collect)
        logging.getLogger().removeHandler(granian)
    assert [r.getMessage() for r in collect.records] == []


@pytest.fixture
def make_stack(make_stack_under: Callable[[str], Callable[..., Stack]], gate_server: str):
    """This module's `make_stack` (and so `stack`): the gate under each server."""
    return make_stack_under(gate_server)


@pytest.fixture
def make_probe_stack(gate_server: str) -> Iterator[Callable[..., Stack]]:
    """Like `make_stack`, with any upstream app (default `ProbeApp`) or an upstream URL, and
    the gate under each server with the CLI's options (uvicorn: no proxy headers, no Server
    header)."""
    started: list[Callable[[], None]] = []

    def build(app: Any = None, upstream_url: str | None = None, **overrides: Any) -> Stack:
        kratos = FakeKratosServer().start()
        started.append(kratos.stop)
        upstream = UvicornThread(app if app is not None else ProbeApp())
        if upstream_url is None:
            upstream.start()
            started.append(upstream.stop)
            upstream_url = upstream.url
        else:
            upstream.sock.close()
        gate = Gate(settings_for(kratos.public_url, upstream_url, **overrides))
        # as `sessiongate serve` runs it: uvicorn's own X-Forwarded-* handling (on by default,
        # trusting 127.0.0.1) would rewrite the peer before the gate's trusted_proxies decide
        server = serve_thread(
            gate_server, gate, lifespan="on", proxy_headers=False, server_header=False
        )
        server.start()
        started.append(server.stop)
        return Stack(kratos, upstream.app, gate, server, upstream)  # type: ignore[arg-type]

    yield build
    for stop in reversed(started):
        stop()


# -- method, path, query, body ----------------------------------------------------------------
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_method_path_query_and_body_reach_the_app(make_probe_stack, method):
    stack = make_probe_stack()
    payload = b"" if method in ("GET", "OPTIONS") else b'{"hello": "w\xc3\xb6rld"}\x00\xff'
    async with stack.client() as c:
        r = await c.request(
            method, "/api/items/42", params={"q": "a b", "n": "1"}, content=payload,
            headers={**auth(stack), "X-Custom": "kept", "Content-Type": "application/x-test"},
        )  # fmt: skip
    assert r.status_code == 200, r.text
    seen = stack.app.requests[-1]
    assert seen["method"] == method
    assert seen["path"] == "/api/items/42"
    assert seen["query"] == "q=a+b&n=1"
    assert seen["body_size"] == len(payload)
    assert seen["sha256"] == hashlib.sha256(payload).hexdigest()
    h = header_map(seen["headers"])
    assert h["x-custom"] == ["kept"]
    assert h["content-type"] == ["application/x-test"]


async def test_percent_encoded_path_and_query_are_forwarded_byte_for_byte(make_probe_stack):
    stack = make_probe_stack()
    token = stack.fake.login("alice@example.com").token
    raw_path = b"/a%2Fb/%25zz/caf%C3%A9/%20sp%3Bace;p=1/%7Euser/A%2f"
    query = b"q=%26x%3D1&e=%C3%A9&plus=a+b&pct=%25&empty=&flag&slash=%2F&u=%ZZ"
    request = raw_get(raw_path + b"?" + query, token)
    status, _, body = await raw_exchange(stack.gate_server.port, request)
    assert status == 200, body
    seen = stack.app.requests[-1]
    assert seen["raw_path"].encode("latin-1") == raw_path
    assert seen["query"].encode("latin-1") == query
    assert seen["path"] == "/a/b/%zz/café/ sp;ace;p=1/~user/A/"


async def test_dot_segments_are_not_resolved_by_the_proxy(make_probe_stack):
    # What the gate authorised is what the app gets: no re-normalisation on the way.
    stack = make_probe_stack()
    token = stack.fake.login("alice@example.com").token
    status, _, body = await raw_exchange(stack.gate_server.port, raw_get(b"/x/./y/../z//w", token))
    assert status == 200, body
    assert stack.app.requests[-1]["raw_path"] == "/x/./y/../z//w"


# -- large bodies stream, memory stays flat ---------------------------------------------------
@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_50mb_upload_streams_through_with_bounded_memory(make_probe_stack, framing):
    stack = make_probe_stack()
    total = 50 * MB
    headers = auth(stack)
    if framing == "content-length":
        headers["Content-Length"] = str(total)
    expected = hashlib.sha256()
    for _ in range(total // (64 * 1024)):
        expected.update(b"u" * (64 * 1024))
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as c:
        await c.get("/warm", headers=headers if framing == "chunked" else auth(stack))
        with PeakRSS() as rss:
            start = time.monotonic()
            r = await c.post("/upload", content=body_chunks(total), headers=headers)
            elapsed = time.monotonic() - start
    assert r.status_code == 200, r.text
    seen = stack.app.requests[-1]
    assert seen["body_size"] == total
    assert seen["sha256"] == expected.hexdigest()
    h = header_map(seen["headers"])
    if framing == "content-length":
        assert h["content-length"] == [str(total)]
        assert "transfer-encoding" not in h
    print(f"50 MB upload ({framing}): {elapsed:.2f}s, RSS growth {rss.growth / MB:.1f} MB")
    assert rss.growth < 100 * MB


async def _download(stack: Stack, total: int) -> tuple[int, float, PeakRSS]:
    headers = auth(stack)
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as c:
        await c.get("/warm", headers=headers)
        got = 0
        with PeakRSS() as rss:
            start = time.monotonic()
            async with c.stream("GET", f"/big/{total}", headers=headers) as r:
                assert r.status_code == 200
                assert r.headers["content-length"] == str(total)
                async for chunk in r.aiter_raw():
                    got += len(chunk)
            elapsed = time.monotonic() - start
    return got, elapsed, rss


async def test_1gb_download_streams_back_with_bounded_memory(stack):
    total = 1 << 30
    got, elapsed, rss = await _download(stack, total)
    print(
        f"1 GB download: {elapsed:.1f}s ({total / MB / elapsed:.0f} MB/s), "
        f"RSS growth {rss.growth / MB:.1f} MB"
    )
    assert got == total
    assert rss.growth < 100 * MB


async def test_1gb_upload_streams_through_with_bounded_memory(make_probe_stack):
    stack = make_probe_stack(upstream={"timeout": 30})
    total = 1 << 30
    headers = auth(stack)
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as c:
        await c.get("/warm", headers=headers)
        with PeakRSS() as rss:
            start = time.monotonic()
            r = await c.post("/upload", content=body_chunks(total, 256 * 1024), headers=headers)
            elapsed = time.monotonic() - start
    assert r.status_code == 200, r.text
    assert stack.app.requests[-1]["body_size"] == total
    print(
        f"1 GB upload: {elapsed:.1f}s ({total / MB / elapsed:.0f} MB/s), "
        f"RSS growth {rss.growth / MB:.1f} MB"
    )
    assert rss.growth < 100 * MB


# -- hop-by-hop headers -----------------------------------------------------------------------
async def test_hop_by_hop_request_headers_do_not_reach_the_app(make_probe_stack):
    stack = make_probe_stack()
    token = stack.fake.login("alice@example.com").token
    request = raw_get(
        b"/hop",
        token,
        b"Connection: keep-alive, X-Secret, x-other",
        b"Keep-Alive: timeout=5, max=100",
        b"TE: trailers",
        b"Trailer: X-Checksum",
        b"Upgrade: h2c",
        b"Proxy-Authorization: Basic dXNlcjpwYXNz",
        b"Proxy-Connection: keep-alive",
        b"X-Secret: hidden",
        b"X-Other: hidden-too",
        b"X-Kept: visible",
    )
    status, _, body = await raw_exchange(stack.gate_server.port, request)
    assert status == 200, body
    h = header_map(stack.app.requests[-1]["headers"])
    for name in (
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "x-secret",
        "x-other",
    ):
        assert name not in h, (name, h)
    # aiohttp may add its own `Connection`, but never one naming the client's headers
    for value in h.get("connection", []):
        assert "secret" not in value.lower()
        assert "other" not in value.lower()
    assert h["x-kept"] == ["visible"]


async def test_hop_by_hop_response_headers_do_not_reach_the_client(stack):
    token = stack.fake.login("alice@example.com").token
    status, headers, body = await raw_exchange(stack.gate_server.port, raw_get(b"/hop", token))
    assert status == 200
    names = [n.lower() for n, _ in headers]
    assert b"x-hop" not in names
    assert b"keep-alive" not in names
    assert names.count(b"date") == 1  # the app's Date and the gate's server's are not both sent
    assert names.count(b"content-length") == 1
    for name, value in headers:
        if name.lower() == b"connection":
            assert b"x-hop" not in value.lower()
    assert json.loads(body)["path"] == "/hop"  # the body itself is intact
    assert stack.app.requests[-1]["path"] == "/hop"


# -- X-Forwarded-* ----------------------------------------------------------------------------
SPOOFED = {
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
    "Forwarded": "for=203.0.113.7;proto=https",
    "X-Real-IP": "203.0.113.7",
}


async def test_forwarded_headers_are_set_from_the_peer(make_probe_stack):
    stack = make_probe_stack()
    async with stack.client() as c:
        r = await c.get("/fwd", headers=auth(stack))
        assert r.status_code == 200
        h = header_map(stack.app.requests[-1]["headers"])
        assert h["x-forwarded-for"] == ["127.0.0.1"]
        assert h["x-forwarded-proto"] == ["http"]
        assert h["x-forwarded-host"] == [f"127.0.0.1:{stack.gate_server.port}"]
        assert h["host"] == [f"127.0.0.1:{stack.upstream_server.port}"]

        r = await c.get("/fwd", headers={**auth(stack), "Host": "app.example.com:8443"})
        assert r.status_code == 200
        h = header_map(stack.app.requests[-1]["headers"])
        assert h["x-forwarded-host"] == ["app.example.com:8443"]
        assert h["host"] == [f"127.0.0.1:{stack.upstream_server.port}"]


async def test_spoofed_forwarded_headers_are_replaced_from_an_untrusted_peer(make_probe_stack):
    stack = make_probe_stack()
    async with stack.client() as c:
        r = await c.get("/fwd", headers={**auth(stack), **SPOOFED})
    assert r.status_code == 200
    h = header_map(stack.app.requests[-1]["headers"])
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-forwarded-proto"] == ["http"]
    assert h["x-forwarded-host"] == [f"127.0.0.1:{stack.gate_server.port}"]
    assert "forwarded" not in h
    assert "x-real-ip" not in h


async def test_forwarded_headers_are_kept_and_appended_from_a_trusted_proxy(make_probe_stack):
    stack = make_probe_stack(forwarded={"trusted_proxies": ["127.0.0.0/8"]})
    token = stack.fake.login("alice@example.com").token
    async with stack.client() as c:
        r = await c.get("/fwd", headers={"X-Session-Token": token, **SPOOFED})
        assert r.status_code == 200
        h = header_map(stack.app.requests[-1]["headers"])
        assert h["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
        assert h["x-forwarded-proto"] == ["https"]
        assert h["x-forwarded-host"] == ["evil.example"]
        assert h["forwarded"] == ["for=203.0.113.7;proto=https"]
        assert h["x-real-ip"] == ["203.0.113.7"]

        r = await c.get("/fwd", headers={"X-Session-Token": token})  # nothing incoming
        assert r.status_code == 200
        h = header_map(stack.app.requests[-1]["headers"])
        assert h["x-forwarded-for"] == ["127.0.0.1"]
        assert h["x-forwarded-proto"] == ["http"]
        assert h["x-forwarded-host"] == [f"127.0.0.1:{stack.gate_server.port}"]

    # several incoming X-Forwarded-For lines are one list, in order, then the peer
    status, _, body = await raw_exchange(
        stack.gate_server.port,
        raw_get(
            b"/fwd",
            token,
            b"X-Forwarded-For: 198.51.100.1",
            b"X-Forwarded-For: 198.51.100.2, 198.51.100.3",
        ),
    )
    assert status == 200, body
    h = header_map(stack.app.requests[-1]["headers"])
    assert h["x-forwarded-for"] == ["198.51.100.1, 198.51.100.2, 198.51.100.3, 127.0.0.1"]
    assert h["x-forwarded-host"] == ["gate.test"]


async def test_a_trusted_cidr_that_does_not_match_the_peer_does_not_trust_it(make_probe_stack):
    stack = make_probe_stack(forwarded={"trusted_proxies": ["10.0.0.0/8", "::1/128"]})
    async with stack.client() as c:
        r = await c.get("/fwd", headers={**auth(stack), **SPOOFED})
    assert r.status_code == 200
    h = header_map(stack.app.requests[-1]["headers"])
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-forwarded-proto"] == ["http"]
    assert "forwarded" not in h


# -- cookies ----------------------------------------------------------------------------------
async def test_several_set_cookie_headers_stay_separate(stack):
    token = stack.fake.login("alice@example.com").token
    status, headers, body = await raw_exchange(stack.gate_server.port, raw_get(b"/cookies", token))
    assert status == 200
    assert body == b"cookies"
    cookies = [v for n, v in headers if n.lower() == b"set-cookie"]
    assert cookies == [
        b"a=1; Path=/; Expires=Wed, 21 Oct 2037 07:28:00 GMT",
        b"b=2; Path=/; HttpOnly",
    ]
    async with stack.client() as c:  # and what an ordinary client library makes of them
        r = await c.get("/cookies", headers={"X-Session-Token": token})
    assert r.headers.get_list("set-cookie") == [
        "a=1; Path=/; Expires=Wed, 21 Oct 2037 07:28:00 GMT",
        "b=2; Path=/; HttpOnly",
    ]
    assert r.cookies["a"] == "1"
    assert r.cookies["b"] == "2"


async def test_the_session_cookie_is_stripped_and_other_cookies_kept_verbatim(make_probe_stack):
    stack = make_probe_stack()
    alice = stack.fake.login("alice@example.com")
    session_cookie = stack.fake.cookie_header(alice)
    async with stack.client() as c:
        cookie = f'theme="dark mode"; {session_cookie}; ory_session_abc=x; b=2'
        r = await c.get("/c", headers={"Cookie": cookie})
        assert r.status_code == 200, r.text
        h = header_map(stack.app.requests[-1]["headers"])
        assert h["cookie"] == ['theme="dark mode"; b=2']
        assert h["x-user-id"] == [alice.identity_id]

        r = await c.get("/c", headers={"Cookie": session_cookie})
        assert r.status_code == 200, r.text
        assert "cookie" not in header_map(stack.app.requests[-1]["headers"])

        # a session cookie sent alongside a token is stripped as well
        r = await c.get("/c", headers={"X-Session-Token": alice.token, "Cookie": cookie})
        assert r.status_code == 200
        assert header_map(stack.app.requests[-1]["headers"])["cookie"] == ['theme="dark mode"; b=2']


async def test_the_session_cookie_is_kept_when_configured(make_probe_stack):
    stack = make_probe_stack(upstream={"strip_session_cookie": False})
    alice = stack.fake.login("alice@example.com")
    cookie = f"theme=dark; {stack.fake.cookie_header(alice)}"
    async with stack.client() as c:
        r = await c.get("/c", headers={"Cookie": cookie})
    assert r.status_code == 200, r.text
    assert header_map(stack.app.requests[-1]["headers"])["cookie"] == [cookie]


# -- upstream failures ------------------------------------------------------------------------
async def test_upstream_down_is_a_502_in_the_herodot_envelope(make_probe_stack):
    closed = bind_loopback()
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there any more
    stack = make_probe_stack(upstream_url=f"http://127.0.0.1:{port}")
    async with stack.client() as c:
        start = time.monotonic()
        r = await c.get("/anything", headers=auth(stack))
        elapsed = time.monotonic() - start
        assert r.status_code == 502
        assert r.headers["content-type"] == "application/json"
        assert "ory-error-id" in r.headers
        error = r.json()["error"]
        assert error["code"] == 502
        assert error["status"] == "Bad Gateway"
        assert error["message"]
        assert elapsed < 2
        r = await c.post("/anything", content=body_chunks(MB), headers=auth(stack))
        assert r.status_code == 502
        assert r.json()["error"]["code"] == 502
        r = await c.head("/anything", headers=auth(stack))
        assert r.status_code == 502
        assert r.content == b""


async def test_the_proxys_own_errors_carry_the_gates_cors_headers(make_probe_stack):
    # cors.apply_to: sessions leaves the app's answers alone, not the gate's own 502
    closed = bind_loopback()
    port = closed.getsockname()[1]
    closed.close()
    origin = "https://app.example.com"
    stack = make_probe_stack(
        upstream_url=f"http://127.0.0.1:{port}", cors={"allowed_origins": [origin]}
    )
    async with stack.client() as c:
        r = await c.get("/anything", headers={**auth(stack), "Origin": origin})
    assert r.status_code == 502
    assert r.headers["access-control-allow-origin"] == origin
    assert r.headers["access-control-allow-credentials"] == "true"


async def test_the_apps_answers_keep_their_own_cors_headers(make_probe_stack):
    origin = "https://app.example.com"
    stack = make_probe_stack(cors={"allowed_origins": [origin]})
    async with stack.client() as c:
        r = await c.get("/anything", headers={**auth(stack), "Origin": origin})
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers


async def test_slow_upstream_is_a_504_while_the_gate_keeps_serving_others(make_stack):
    stack = make_stack(upstream={"timeout": 1})
    headers = auth(stack)
    async with stack.client() as slow_client, stack.client() as fast_client:
        start = time.monotonic()
        slow = asyncio.create_task(slow_client.get("/slow/5", headers=headers))
        await until(lambda: any(r["path"] == "/slow/5" for r in stack.app.requests), 2)
        fast_times = []
        for _ in range(5):
            t = time.monotonic()
            r = await fast_client.get("/fast", headers=headers)
            fast_times.append(time.monotonic() - t)
            assert r.status_code == 200
        assert not slow.done(), "the slow request must still be pending"
        r = await slow
        elapsed = time.monotonic() - start
    print(f"504 after {elapsed:.2f}s; fast requests meanwhile: {max(fast_times) * 1000:.0f} ms max")
    assert r.status_code == 504
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == 504
    assert error["status"] == "Gateway Timeout"
    assert 0.9 <= elapsed < 2.5
    assert max(fast_times) < 0.5


async def test_upstream_timeout_is_idle_time_not_total_time(make_probe_stack):
    # a response trickling in for longer than the timeout, never idle that long, is fine
    stack = make_probe_stack(upstream={"timeout": 1})
    async with stack.client() as c:
        start = time.monotonic()
        r = await c.get("/trickle", headers=auth(stack))
        elapsed = time.monotonic() - start
    assert r.status_code == 200
    assert r.content == b"t" * 8
    assert elapsed > 1.5


# -- client disconnects -----------------------------------------------------------------------
async def _quiet_baseline(stack: Stack) -> int:
    """The gate's task count once no request is in flight."""
    counts: list[int] = []
    for _ in range(50):
        counts.append(gate_task_count(stack))
        if len(counts) >= 3 and len(set(counts[-3:])) == 1:
            break
        await asyncio.sleep(0.05)
    return counts[-1]


async def test_client_leaving_mid_download_cancels_the_upstream_request(make_probe_stack):
    stack = make_probe_stack()
    headers = auth(stack)
    async with stack.client() as c:
        assert (await c.get("/warm", headers=headers)).status_code == 200
    baseline = await _quiet_baseline(stack)

    client = stack.client()
    got = 0
    async with client.stream("GET", "/stream", headers=headers) as r:
        assert r.status_code == 200
        async for chunk in r.aiter_raw():
            got += len(chunk)
            if got >= 4 * MB:
                break
        during = gate_task_count(stack)
    await client.aclose()  # the unread response makes httpx drop the connection
    left = time.monotonic()
    assert during > baseline
    assert await until(lambda: stack.app.has("stream:disconnected"), 5), stack.app.events
    assert stack.app.when("stream:disconnected") - left < 2
    assert await until(lambda: gate_task_count(stack) <= baseline, 5), (
        gate_task_count(stack),
        baseline,
    )
    assert await until(lambda: established_to(stack.upstream_server.port) == 0, 5)


async def test_client_leaving_while_upstream_thinks_cancels_the_upstream_request(
    make_probe_stack,
):
    stack = make_probe_stack()
    headers = auth(stack)
    async with stack.client() as c:
        assert (await c.get("/warm", headers=headers)).status_code == 200
    baseline = await _quiet_baseline(stack)
    async with httpx.AsyncClient(base_url=stack.url, timeout=httpx.Timeout(10, read=0.5)) as c:
        start = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await c.get("/wait/3", headers=headers)
    assert await until(lambda: stack.app.has("wait:disconnected"), 2.5), stack.app.events
    assert stack.app.when("wait:disconnected") - start < 2
    assert not stack.app.has("wait:finished")
    assert await until(lambda: gate_task_count(stack) <= baseline, 5)


async def test_client_leaving_while_echo_app_sleeps_closes_the_upstream_connection(stack):
    # EchoApp's /slow/3 cannot see the disconnect; its connection from the gate can be counted.
    port = stack.upstream_server.port
    headers = auth(stack)
    assert established_to(port) == 0  # no request forwarded yet: no pooled connection either
    baseline = await _quiet_baseline(stack)
    async with httpx.AsyncClient(base_url=stack.url, timeout=httpx.Timeout(10, read=0.7)) as c:
        start = time.monotonic()
        request = asyncio.create_task(c.get("/slow/3", headers=headers))
        assert await until(lambda: established_to(port) == 1, 2)
        with pytest.raises(httpx.ReadTimeout):
            await request
    assert await until(lambda: established_to(port) == 0, 1.5)
    assert time.monotonic() - start < 2.5  # well before the app would have answered
    assert await until(lambda: gate_task_count(stack) <= baseline, 5)


async def test_client_leaving_after_a_streamed_upload_cancels_the_upstream_request(
    make_probe_stack, no_asgi_exceptions
):
    # the body arrives in several ASGI messages; then the app thinks and the client gives up
    stack = make_probe_stack()
    headers = auth(stack)
    async with stack.client() as c:
        assert (await c.get("/warm", headers=headers)).status_code == 200
    baseline = await _quiet_baseline(stack)

    async def slow_body() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"b" * 100_000
            await asyncio.sleep(0.05)

    async with httpx.AsyncClient(base_url=stack.url, timeout=httpx.Timeout(10, read=0.7)) as c:
        start = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await c.post("/wait/4", content=slow_body(), headers=headers)
    assert stack.app.has("wait:started")
    assert await until(lambda: stack.app.has("wait:disconnected"), 3), stack.app.events
    assert stack.app.when("wait:disconnected") - start < 2.5
    assert await until(lambda: gate_task_count(stack) <= baseline, 5)
    assert [r.getMessage() for r in no_asgi_exceptions] == []


async def test_expect_100_continue_is_honoured_end_to_end(make_probe_stack):
    stack = make_probe_stack()
    token = stack.fake.login("alice@example.com").token
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gate_server.port)
    try:
        writer.write(
            raw_get(
                b"/upload", token, b"Content-Length: 11", b"Expect: 100-continue", method=b"PUT"
            )
        )
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100")
        writer.write(b"hello world")
        await writer.drain()
        status, _, body = await asyncio.wait_for(read_response(reader), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    assert status == 200, body
    assert json.loads(body)["sha256"] == hashlib.sha256(b"hello world").hexdigest()
    # the gate's server answered the 100 and the gate holds the body: the app is not asked
    assert "expect" not in header_map(stack.app.requests[-1]["headers"])


async def test_client_leaving_mid_upload_cancels_the_upstream_request(
    make_probe_stack, no_asgi_exceptions
):
    stack = make_probe_stack()
    token = stack.fake.login("alice@example.com").token
    async with stack.client() as c:
        assert (await c.get("/warm", headers={"X-Session-Token": token})).status_code == 200
    baseline = await _quiet_baseline(stack)
    _, writer = await asyncio.open_connection("127.0.0.1", stack.gate_server.port)
    try:
        writer.write(
            raw_get(b"/upload", token, b"Content-Length: 104857600", method=b"POST")
            + b"u" * (2 * MB)
        )
        await writer.drain()
        assert await until(lambda: established_to(stack.upstream_server.port) >= 1, 3)
        await asyncio.sleep(0.2)
    finally:
        writer.close()
        await writer.wait_closed()
    assert await until(lambda: stack.app.has("upload:disconnected"), 5), stack.app.events
    assert [r["path"] for r in stack.app.requests] == ["/warm"]  # the upload never completed
    assert await until(lambda: gate_task_count(stack) <= baseline, 5)
    assert [r.getMessage() for r in no_asgi_exceptions] == []


# -- HEAD -------------------------------------------------------------------------------------
async def test_head_gets_the_headers_and_no_body(stack):
    token = stack.fake.login("alice@example.com").token
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gate_server.port)
    try:
        writer.write(raw_get(b"/big/1000", token, method=b"HEAD"))
        await writer.drain()
        status, headers, _ = await asyncio.wait_for(read_response(reader, head=True), 5)
        assert status == 200
        assert dict((n.lower(), v) for n, v in headers)[b"content-length"] == b"1000"
        # had the gate written a body, it would be read here as the next response's start
        writer.write(raw_get(b"/after-head", token))
        await writer.drain()
        status, _, body = await asyncio.wait_for(read_response(reader), 5)
        assert status == 200
        assert json.loads(body)["path"] == "/after-head"
    finally:
        writer.close()
        await writer.wait_closed()
    assert [r["method"] for r in stack.app.requests] == ["HEAD", "GET"]
    async with stack.client() as c:
        r = await c.head("/echo", headers={"X-Session-Token": token})
    assert r.status_code == 200
    assert r.content == b""
    assert int(r.headers["content-length"]) > 0


# -- WebSocket --------------------------------------------------------------------------------
def ws_url(stack: Stack, path: str = "/ws") -> str:
    return stack.url.replace("http://", "ws://", 1) + path


async def test_websocket_is_relayed_with_the_identity(stack):
    alice = stack.fake.login("alice@example.com")
    async with ws_connect(
        ws_url(stack), additional_headers={"X-Session-Token": alice.token}, open_timeout=5
    ) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert first == {"user": alice.identity_id}
        for text in ("hello", "ünïcödé", "x" * 100_000):
            await ws.send(text)
            assert await asyncio.wait_for(ws.recv(), 5) == "echo:" + text
    assert stack.app.requests[-1]["method"] == "WS"


async def test_websocket_binary_frames_and_close_are_relayed(make_probe_stack):
    stack = make_probe_stack()
    headers = auth(stack)
    async with stack.client() as c:
        assert (await c.get("/warm", headers=headers)).status_code == 200
    baseline = await _quiet_baseline(stack)
    async with ws_connect(ws_url(stack), additional_headers=headers, open_timeout=5) as ws:
        await asyncio.wait_for(ws.recv(), 5)
        await ws.send(b"\x00\x01\x02\xff")
        assert await asyncio.wait_for(ws.recv(), 5) == b"\xff\x02\x01\x00"
        assert gate_task_count(stack) > baseline
    # the client's close ends the relay: its tasks and the upstream socket go away
    assert await until(lambda: gate_task_count(stack) <= baseline, 5)
    assert await until(lambda: established_to(stack.upstream_server.port) <= 1, 5)
    assert stack.app.requests[-1]["method"] == "WS"


async def test_websocket_without_a_session_is_refused_before_the_app(stack):
    for headers in ({}, {"X-Session-Token": "not-a-valid-token"}):
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(ws_url(stack), additional_headers=headers, open_timeout=5):
                pass
        assert info.value.response.status_code == 403
    assert stack.app.requests == []


async def test_a_spoofed_identity_header_never_reaches_the_app_over_websocket(make_probe_stack):
    stack = make_probe_stack()
    alice = stack.fake.login("alice@example.com")
    headers = {
        "X-Session-Token": alice.token,
        "X-User-Id": "evil",
        "x_user_id": "evil-underscore",
        "X-USER-EMAIL": "evil@example.com",
    }
    async with ws_connect(ws_url(stack), additional_headers=headers, open_timeout=5) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert first["user"] == [alice.identity_id]
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 5) == "echo:ping"
    h = header_map(stack.app.requests[-1]["headers"])
    assert h["x-user-email"] == ["alice@example.com"]
    assert "x_user_id" not in h
    assert "evil" not in json.dumps(stack.app.requests[-1]["headers"])


async def test_a_websocket_upgrade_with_an_upstream_down_is_closed(make_probe_stack):
    closed = bind_loopback()
    port = closed.getsockname()[1]
    closed.close()
    stack = make_probe_stack(upstream_url=f"http://127.0.0.1:{port}")
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(ws_url(stack), additional_headers=auth(stack), open_timeout=5):
            pass
    assert info.value.response.status_code == 403


def test_upstream_that_never_accepts_the_connection_is_a_502() -> None:
    # A listener whose accept queue is full: the kernel drops new SYNs, so connecting hangs
    # until upstream.connect_timeout. Unreachable (502), not slow (504).
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(8):  # fill the accept queue; later connects stay in SYN_SENT
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(listener.getsockname())
        fillers.append(s)
    port = listener.getsockname()[1]
    with FakeKratosServer() as kratos:
        alice = kratos.fake.login("alice@example.com")
        gate = Gate(
            settings_for(
                kratos.public_url,
                f"http://127.0.0.1:{port}",
                upstream={"connect_timeout": 0.5, "timeout": 5},
            )
        )
        with UvicornThread(gate, lifespan="on") as server:
            started = time.monotonic()
            r = httpx.get(server.url + "/x", headers={"X-Session-Token": alice.token}, timeout=10)
            elapsed = time.monotonic() - started
    for s in fillers:
        s.close()
    listener.close()
    assert r.status_code == 502
    assert r.json()["error"]["code"] == 502
    assert elapsed < 3


def test_connection_cannot_name_away_an_identity_header_in_any_spelling() -> None:
    from sessiongate.proxy import UpstreamProxy

    proxy = UpstreamProxy("http://127.0.0.1:1", protected_headers=frozenset({"X_User"}))
    scope = {"type": "http", "client": ("127.0.0.1", 5), "scheme": "http"}
    headers = [(b"connection", b"x_user, X-Other"), (b"x-other", b"o"), (b"x_user", b"gate")]
    out = dict(proxy.upstream_headers(scope, headers))
    assert out["x_user"] == "gate"
    assert "x-other" not in out
