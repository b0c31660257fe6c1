"""Upstream admission (`sessiongate.upstream_limits`) through the real gate.

Every test runs the Kratos fake, the echo app and the gate under uvicorn on 127.0.0.1, with
`forwarded.trusted_proxies: [127.0.0.0/8]` so that each test client can be a different client
address (`X-Forwarded-For`), as behind a load balancer. Slow clients are raw sockets that send
part of a request and then trickle or stall; what is checked is what the other clients notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from gate_stack import Stack
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from resources import until
from sessiongate.upstream_limits import UpstreamLimits

MARGIN = 1.5  # seconds of slack on a shared 2-core host
TRUSTED = {"forwarded": {"trusted_proxies": ["127.0.0.0/8"]}}


def client_at(address: str, **headers: str) -> dict[str, str]:
    return {"X-Forwarded-For": address, **headers}


def limited(make_stack: Callable[..., Stack], **upstream: Any) -> Stack:
    # /slow/<s>: the echo app answers after s seconds, /big/<n>: n bytes, /sse/<n>: n events;
    # public, so no session is needed
    return make_stack(
        **TRUSTED,
        upstream=upstream,
        access={"public_paths": ["/public/**", "/slow/**", "/big/**", "/sse/**"]},
    )


class _Warnings(logging.Filter):
    """Collects the proxy's log lines (a filter: uvicorn's dictConfig drops handlers)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.messages.append(record.getMessage())
        return True


@pytest.fixture
def proxy_log() -> Iterator[list[str]]:
    collect = _Warnings()
    logger = logging.getLogger("sessiongate.proxy")
    logger.addFilter(collect)
    try:
        yield collect.messages
    finally:
        logger.removeFilter(collect)


class SlowUpload:
    """A raw connection that sends a request head and part of its body, then trickles a byte
    every `every` seconds until closed."""

    def __init__(self, port: int, path: str, address: str, length: int, sent: int) -> None:
        self.port, self.path, self.address = port, path, address
        self.length, self.sent = length, sent
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.trickler: asyncio.Task[None] | None = None

    async def start(self, every: float = 0.3) -> SlowUpload:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: gate.test\r\nX-Forwarded-For: {self.address}"
            f"\r\nContent-Length: {self.length}\r\n\r\n"
        ).encode()
        self.writer.write(head + b"u" * self.sent)
        await self.writer.drain()
        self.trickler = asyncio.ensure_future(self._trickle(every))
        return self

    async def _trickle(self, every: float) -> None:
        assert self.writer is not None
        with contextlib.suppress(ConnectionError):
            for _ in range(self.length - self.sent - 1):  # never the last byte
                await asyncio.sleep(every)
                self.writer.write(b"u")
                await self.writer.drain()

    async def status_within(self, seconds: float) -> int | None:
        """The answer's status if one arrives within `seconds`, else None."""
        assert self.reader is not None
        try:
            line = await asyncio.wait_for(self.reader.readline(), seconds)
        except TimeoutError:
            return None
        return int(line.split(b" ", 2)[1]) if line.startswith(b"HTTP/1.1 ") else None

    async def close(self) -> None:
        if self.trickler is not None:
            self.trickler.cancel()
            await asyncio.gather(self.trickler, return_exceptions=True)
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()


async def ordinary_requests(stack: Stack, n: int = 8) -> list[tuple[int, float]]:
    """`n` GETs one after another from a client nobody else is: (status, seconds) each."""
    out = []
    async with stack.client() as c:
        for i in range(n):
            started = time.monotonic()
            r = await c.get(f"/public/ordinary/{i}", headers=client_at("203.0.113.99"))
            out.append((r.status_code, time.monotonic() - started))
    return out


# -- the attack from issue 10: slow exchanges, as many as the pool holds ----------------------
async def test_as_many_slow_clients_as_the_pool_holds_leave_others_served(make_stack):
    """Pool of 4. Four clients trickle small uploads, four trickle large ones, four hold
    WebSockets (12 slow exchanges from 12 addresses, none over its per-client cap). Ordinary
    requests from a 13th client are all served promptly: small bodies are buffered before an
    upstream connection is taken, large ones may hold only max_streaming_uploads of the pool,
    and WebSockets have their own budget. Before, the first four alone took every connection
    and everyone else got 502 after connect_timeout."""
    stack = limited(
        make_stack,
        max_connections=4,
        max_streaming_uploads=2,
        max_websockets=4,
        pool_timeout=0.5,
        connect_timeout=1,
        timeout=5,
    )
    port = stack.gate_server.port
    small = [
        await SlowUpload(port, "/public/small", f"198.51.100.{i}", 100, 1).start() for i in range(4)
    ]
    large = [
        await SlowUpload(port, "/public/large", f"198.51.101.{i}", 4 << 20, 256 << 10).start()
        for i in range(4)
    ]
    sockets = []
    try:
        async with contextlib.AsyncExitStack() as held:
            for i in range(4):
                headers = {
                    "X-Session-Token": stack.fake.login(f"ws{i}@example.com").token,
                    "X-Forwarded-For": f"198.51.102.{i}",
                }
                ws = await held.enter_async_context(
                    ws_connect(
                        stack.url.replace("http://", "ws://") + "/ws",
                        additional_headers=headers,
                        open_timeout=5,
                    )
                )
                await asyncio.wait_for(ws.recv(), 5)
                sockets.append(ws)
            # two large uploads stream to the app; the other two find no upload slot
            refused = await asyncio.gather(*(u.status_within(0.5 + MARGIN) for u in large))
            assert sorted(refused, key=str) == [503, 503, None, None], refused

            answers = await ordinary_requests(stack)
            assert [status for status, _ in answers] == [200] * len(answers), answers
            assert max(seconds for _, seconds in answers) < 0.5, answers
            # the slow ones are still there, unanswered
            assert not any(u.trickler is None or u.trickler.done() for u in small)
            for ws in sockets:
                await ws.send("still here")
                assert await asyncio.wait_for(ws.recv(), 5) == "echo:still here"
    finally:
        for upload in small + large:
            await upload.close()
    assert not any(r["path"] in ("/public/small", "/public/large") for r in stack.app.requests)


class SlowReader:
    """A raw connection that asks for a large response and never reads it."""

    def __init__(self, port: int, address: str, size: int = 256 << 20) -> None:
        self.port, self.address, self.size = port, address, size
        self.sock: socket.socket | None = None

    def start(self) -> SlowReader:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few KiB
        sock.connect(("127.0.0.1", self.port))
        sock.sendall(
            f"GET /big/{self.size} HTTP/1.1\r\nHost: gate.test\r\n"
            f"X-Forwarded-For: {self.address}\r\n\r\n".encode()
        )
        self.sock = sock
        return self

    def dropped(self) -> bool:
        """The gate closed the connection: what is buffered drains to an end of stream."""
        assert self.sock is not None
        self.sock.settimeout(0.5)
        try:
            for _ in range(100_000):  # bounded: a few MiB of buffers at most
                if not self.sock.recv(65536):
                    return True
        except (TimeoutError, ConnectionError):
            return False
        return False

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


async def test_as_many_slow_readers_as_the_pool_holds_leave_others_served(make_stack):
    """Pool of 4: four clients ask for a large response and never read it (a slow reader,
    or an SSE stream held open). Once a response has streamed for pool_timeout it moves to the
    long-response budget, so ordinary requests from a fifth client are served. Before, the
    four held the pool until the whole body was sent (never) and everyone else got 503."""
    stack = limited(make_stack, max_connections=4, pool_timeout=0.5, timeout=30)
    readers = [SlowReader(stack.gate_server.port, f"198.51.100.{i}").start() for i in range(4)]
    limits = stack.gate.proxy.limits
    try:
        assert await until(lambda: len(stack.app.requests) == 4, 3)
        await asyncio.sleep(0.5 + 0.5)  # streamed for longer than pool_timeout
        answers = await ordinary_requests(stack)
        assert [status for status, _ in answers] == [200] * len(answers), answers
        assert max(seconds for _, seconds in answers) < 0.5, answers
        assert limits.pool.in_use == 0
        assert limits.long.in_use == 4  # the four still stream, outside the pool
    finally:
        for reader in readers:
            reader.close()
    assert await until(lambda: limits.long.in_use == 0 and limits.by_client == {}, 3)


async def test_a_client_that_stops_reading_is_dropped_after_the_timeout(make_stack, proxy_log):
    # upstream.timeout is also the longest a response chunk waits for the client to take it
    stack = limited(make_stack, max_connections=2, pool_timeout=0.5, timeout=1)
    limits = stack.gate.proxy.limits
    reader = SlowReader(stack.gate_server.port, "198.51.100.20").start()
    try:
        assert await until(lambda: limits.by_client != {}, 2)
        started = time.monotonic()
        assert await until(lambda: limits.by_client == {}, 1 + 3 * MARGIN)
        assert time.monotonic() - started < 1 + 3 * MARGIN
        assert await asyncio.to_thread(reader.dropped)
    finally:
        reader.close()
    assert limits.pool.in_use == 0
    assert limits.long.in_use == 0
    assert sum("took no response data" in m for m in proxy_log) == 1, proxy_log


async def test_sse_streams_take_the_long_budget_not_the_pool(make_stack):
    stack = limited(make_stack, max_connections=2, max_long_responses=2, pool_timeout=0.5)
    limits = stack.gate.proxy.limits
    async with stack.client() as c:

        async def listen(i: int) -> list[str]:
            headers = client_at(f"198.51.100.{30 + i}")
            async with c.stream("GET", "/sse/20", headers=headers) as r:
                assert r.headers["content-type"] == "text/event-stream"
                return [line async for line in r.aiter_lines() if line]

        streams = [asyncio.ensure_future(listen(i)) for i in range(2)]
        assert await until(lambda: limits.long.in_use == 2, 2)
        assert limits.pool.in_use == 0
        answers = await ordinary_requests(stack, 4)
        events = await asyncio.gather(*streams)
    assert [status for status, _ in answers] == [200] * 4, answers
    assert events == [[f"data: {i}" for i in range(20)]] * 2
    assert await until(lambda: limits.long.in_use == 0 and limits.pool.in_use == 0, 3)


async def test_a_full_pool_is_a_503_with_retry_after_and_its_own_log_line(make_stack, proxy_log):
    stack = limited(make_stack, max_connections=2, pool_timeout=0.5, connect_timeout=3)
    async with stack.client() as c:
        busy = [
            asyncio.ensure_future(c.get("/slow/2", headers=client_at(f"198.51.100.{i}")))
            for i in range(2)
        ]
        assert await until(lambda: len(stack.app.requests) == 2, 2)
        started = time.monotonic()
        r = await c.get("/public/x", headers=client_at("203.0.113.5"))
        waited = time.monotonic() - started
        assert [b.status_code for b in await asyncio.gather(*busy)] == [200, 200]
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == 503
    assert int(r.headers["retry-after"]) >= 1
    assert 0.4 <= waited < 0.5 + MARGIN, waited
    assert any("pool full" in m for m in proxy_log), proxy_log
    assert not any("connect timeout" in m or "could not" in m for m in proxy_log), proxy_log
    async with stack.client() as c:  # the pool is free again
        assert (await c.get("/public/after", headers=client_at("203.0.113.5"))).status_code == 200


async def test_a_waiting_request_gets_the_next_free_connection(make_stack):
    stack = limited(make_stack, max_connections=1, pool_timeout=3, connect_timeout=1)
    async with stack.client() as c:
        busy = asyncio.ensure_future(c.get("/slow/0.5", headers=client_at("198.51.100.1")))
        assert await until(lambda: len(stack.app.requests) == 1, 2)
        started = time.monotonic()
        r = await c.get("/public/next", headers=client_at("198.51.100.2"))
        waited = time.monotonic() - started
        assert (await busy).status_code == 200
    assert r.status_code == 200, r.text
    assert waited < 0.5 + MARGIN


async def test_one_client_is_capped_and_others_are_not(make_stack):
    # over its cap a client waits pool_timeout for one of its own exchanges, then gets 429
    stack = limited(make_stack, max_connections_per_client=2, pool_timeout=0.3, connect_timeout=1)
    mine = client_at("198.51.100.7")
    async with stack.client() as c:
        busy = [asyncio.ensure_future(c.get("/slow/2", headers=mine)) for _ in (1, 2)]
        assert await until(lambda: len(stack.app.requests) == 2, 2)
        started = time.monotonic()
        third = await c.get("/public/third", headers=mine)
        refused_in = time.monotonic() - started
        # a forged left part of X-Forwarded-For does not make another client
        forged = await c.get("/public/forged", headers=client_at("192.0.2.1, 198.51.100.7"))
        other = await c.get("/public/other", headers=client_at("198.51.100.8"))
        assert [b.status_code for b in await asyncio.gather(*busy)] == [200, 200]
        after = await c.get("/public/after", headers=mine)
    for r in (third, forged):
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == 429
        assert int(r.headers["retry-after"]) >= 1
    assert 0.25 <= refused_in < 0.3 + MARGIN, refused_in
    assert other.status_code == 200
    assert after.status_code == 200
    assert not any(r["path"] in ("/public/third", "/public/forged") for r in stack.app.requests)


async def test_a_client_over_its_cap_gets_its_own_next_free_slot(make_stack):
    # one busy client (a load test, a backend behind one address) is slowed, not refused
    stack = limited(make_stack, max_connections_per_client=1, pool_timeout=3)
    mine = client_at("198.51.100.7")
    async with stack.client() as c:
        answers = await asyncio.gather(
            *(c.get(f"/public/{i}", headers=mine) for i in range(20)),
            c.get("/slow/0.3", headers=mine),
        )
    assert [r.status_code for r in answers] == [200] * 21
    assert stack.gate.proxy.limits.by_client == {}


def test_the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() -> None:
    def scope(peer: str, *xff: bytes) -> dict[str, Any]:
        return {"client": (peer, 1), "headers": [(b"x-forwarded-for", v) for v in xff]}

    direct = UpstreamLimits()
    assert direct.client_key(scope("198.51.100.1", b"203.0.113.1")) == "198.51.100.1"
    behind = UpstreamLimits(trusted_proxies=["10.0.0.0/8"])
    assert behind.client_key(scope("198.51.100.1", b"203.0.113.1")) == "198.51.100.1"
    assert behind.client_key(scope("10.0.0.2", b"203.0.113.1")) == "203.0.113.1"
    # the rightmost address no trusted proxy added; what a client wrote to the left is ignored
    assert behind.client_key(scope("10.0.0.2", b"6.6.6.6, 203.0.113.1, 10.0.0.9")) == (
        "203.0.113.1"
    )
    assert behind.client_key(scope("10.0.0.2", b"6.6.6.6", b"203.0.113.1")) == "203.0.113.1"
    assert behind.client_key(scope("10.0.0.2")) == "10.0.0.2"


async def test_a_capped_client_sending_forwarded_headers_untrusted_is_warned_once(
    make_stack, proxy_log
):
    # a load balancer not in forwarded.trusted_proxies: every request is one client
    stack = make_stack(
        upstream={"max_connections_per_client": 1, "pool_timeout": 0.3},
        access={"public_paths": ["/public/**", "/slow/**"]},
    )
    behind = {"X-Forwarded-For": "203.0.113.7"}
    async with stack.client() as c:
        busy = asyncio.ensure_future(c.get("/slow/1.5", headers=behind))
        assert await until(lambda: len(stack.app.requests) == 1, 2)
        refused = [(await c.get(f"/public/{i}", headers=behind)).status_code for i in range(2)]
        assert (await busy).status_code == 200
    assert refused == [429, 429]
    told = [m for m in proxy_log if "forwarded.trusted_proxies" in m]
    assert len(told) == 1, proxy_log


def test_ipv6_clients_are_keyed_by_their_64() -> None:
    def scope(peer: str, *xff: bytes) -> dict[str, Any]:
        return {"client": (peer, 1), "headers": [(b"x-forwarded-for", v) for v in xff]}

    limits = UpstreamLimits(trusted_proxies=["10.0.0.0/8"])
    one = limits.client_key(scope("2001:db8:1:2::1"))
    assert one == limits.client_key(scope("2001:db8:1:2:ffff:1:2:3")) == "2001:db8:1:2::/64"
    assert one != limits.client_key(scope("2001:db8:1:3::1"))
    assert limits.client_key(scope("10.0.0.2", b"2001:db8:1:2::99")) == one
    assert limits.client_key(scope("::ffff:198.51.100.1")) == "198.51.100.1"
    assert limits.client_key(scope("198.51.100.1")) == "198.51.100.1"
    # 64 "clients" from one /64 share one cap
    assert [limits.enter(limits.client_key(scope(f"2001:db8:1:2::{i:x}"))) for i in range(65)] == [
        True
    ] * 64 + [False]


# -- request bodies ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("length", "sent"), [(100, 1), (4 << 20, 256 << 10)], ids=["buffered", "streamed"]
)
async def test_a_body_slower_than_body_timeout_is_a_408(make_stack, length, sent):
    # never idle for upstream.timeout, but still arriving after upstream.body_timeout
    stack = limited(make_stack, body_timeout=1, timeout=3)
    upload = SlowUpload(stack.gate_server.port, "/public/up", "198.51.100.3", length, sent)
    started = time.monotonic()
    await upload.start(every=0.2)
    try:
        status = await upload.status_within(1 + MARGIN)
    finally:
        await upload.close()
    assert status == 408
    assert 0.9 <= time.monotonic() - started < 1 + MARGIN
    if sent < length and length <= 64 * 1024:
        # a buffered body never reaches the app; a streamed one may have started towards it
        assert not any(r["path"] == "/public/up" for r in stack.app.requests)


async def test_one_client_gets_at_most_a_quarter_of_the_streamed_uploads(make_stack):
    # max_streaming_uploads 4: one address streams one upload at a time; another still can
    stack = limited(make_stack, max_streaming_uploads=4, pool_timeout=0.5, timeout=5)
    port = stack.gate_server.port
    mine = [
        await SlowUpload(port, "/public/up", "198.51.100.40", 4 << 20, 256 << 10).start()
        for _ in range(2)
    ]
    try:
        statuses = await asyncio.gather(*(u.status_within(MARGIN) for u in mine))
        assert sorted(statuses, key=str) == [429, None], statuses
        async with stack.client() as c:
            r = await c.post(
                "/public/other", content=b"y" * (1 << 20), headers=client_at("198.51.100.41")
            )
        assert r.status_code == 200, r.text
    finally:
        for upload in mine:
            await upload.close()
    limits = stack.gate.proxy.limits
    assert await until(lambda: limits.uploads_by_client == {} and limits.by_client == {}, 3)


async def test_a_small_body_is_buffered_before_a_connection_is_taken(make_stack):
    # pool of one: a client trickling a small body holds no upstream connection meanwhile
    stack = limited(make_stack, max_connections=1, pool_timeout=0.2, connect_timeout=1)
    upload = await SlowUpload(stack.gate_server.port, "/public/up", "198.51.100.4", 12, 1).start(
        every=0.1
    )
    try:
        answers = await ordinary_requests(stack, 4)
        status = await upload.status_within(3)
    finally:
        await upload.close()
    assert [s for s, _ in answers] == [200] * 4, answers
    assert status is None  # the trickler never sends its last byte: still waiting, not cut off
    assert not any(r["path"] == "/public/up" for r in stack.app.requests)


# -- WebSockets -------------------------------------------------------------------------------
async def test_websockets_have_their_own_budget(make_stack):
    stack = limited(make_stack, max_websockets=1, max_connections=1)
    url = stack.url.replace("http://", "ws://") + "/ws"
    headers = {"X-Session-Token": stack.fake.login("alice@example.com").token}
    async with ws_connect(url, additional_headers=headers, open_timeout=5) as ws:
        await asyncio.wait_for(ws.recv(), 5)
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(url, additional_headers=headers, open_timeout=5):
                pass
        assert info.value.response.status_code == 503
        assert info.value.response.headers["retry-after"] == "1"
        # the one HTTP connection is still there for everyone else
        async with stack.client() as c:
            r = await c.get("/echo", headers=headers)
            assert r.status_code == 200
    # the slot comes back when the WebSocket closes
    assert await until(lambda: stack.gate.proxy.limits.websockets.free == 1, 3)
    async with ws_connect(url, additional_headers=headers, open_timeout=5) as ws:
        await asyncio.wait_for(ws.recv(), 5)


async def test_per_client_cap_counts_websockets_too(make_stack):
    stack = limited(make_stack, max_connections_per_client=1)
    url = stack.url.replace("http://", "ws://") + "/ws"
    headers = {
        "X-Session-Token": stack.fake.login("alice@example.com").token,
        "X-Forwarded-For": "198.51.100.9",
    }
    async with ws_connect(url, additional_headers=headers, open_timeout=5) as ws:
        await asyncio.wait_for(ws.recv(), 5)
        async with stack.client() as c:
            assert (await c.get("/echo", headers=headers)).status_code == 429
            other = {**headers, "X-Forwarded-For": "198.51.100.10"}
            assert (await c.get("/echo", headers=other)).status_code == 200
    assert await until(lambda: stack.gate.proxy.limits.by_client == {}, 3)
    async with stack.client() as c:
        assert (await c.get("/echo", headers=headers)).status_code == 200


async def test_counters_return_to_zero(make_stack):
    stack = limited(make_stack, max_connections=3)
    async with stack.client() as c:
        await asyncio.gather(
            *(c.get(f"/public/{i}", headers=client_at(f"198.51.100.{i % 3}")) for i in range(30))
        )
        with pytest.raises(httpx.ReadTimeout):
            await c.get("/slow/2", timeout=httpx.Timeout(5, read=0.3))
    limits = stack.gate.proxy.limits
    assert await until(lambda: limits.pool.free == 3 and limits.by_client == {}, 3)
    assert limits.uploads.free == limits.uploads.size
    assert limits.long.free == limits.long.size
    assert limits.waiting == {}
    assert limits.uploads_by_client == {}
