"""Does a forwarding-client candidate keep the proxy's guarantees? Check, before measuring speed.

A raw asyncio server on 127.0.0.1 records the bytes each client sends and answers with crafted
responses; each check prints `ok` or `FAIL` with what was seen, for aiohttp (configured as
`proxy.py` configures it) and pyreqwest (configured as close to that as its builder allows).

    python bench/client_guarantees.py

Needs the candidates (pip install aiohttp pyreqwest). Result with pyreqwest 0.15.1 and aiohttp
3.14.5 (2026-12-01): pyreqwest fails cancellation while the app thinks, the added-headers check
and header casing/order (bench/README.md, "Choosing the hot path").
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

CRLF2 = b"\r\n\r\n"
RESPONSES = {
    b"/cookies": b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-One: 1\r\nSet-Cookie: b=2\r\n"
    b"Content-Length: 2\r\n\r\nok",
    b"/redirect": b"HTTP/1.1 302 Found\r\nLocation: /cookies\r\nContent-Length: 0\r\n\r\n",
    b"/gzip": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd",
}


class App:
    """Records each request head (and body, on /upload) and when its connection closed."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.closed: dict[bytes, float] = {}

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        path = b""
        with contextlib.suppress(ConnectionError):
            while True:  # one request after another on a kept-alive connection
                data = b""
                while CRLF2 not in data:
                    got = await r.read(65536)
                    if not got:
                        self.closed[path] = time.monotonic()
                        return
                    data += got
                head, _, rest = data.partition(CRLF2)
                self.heads.append(head)
                path = head.split(b" ")[1]
                if path in RESPONSES:
                    w.write(RESPONSES[path])
                elif path == b"/upload":
                    while not rest.endswith(b"world") and not rest.endswith(CRLF2):
                        rest += await r.read(65536)
                    self.bodies.append(rest)
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                elif path == b"/think":  # answers after 3 s unless the client closes first
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(3):
                            if not await r.read(1):
                                self.closed[path] = time.monotonic()
                                return
                    w.write(RESPONSES[b"/gzip"])
                elif path == b"/download":
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
                    while True:
                        w.write(b"x" * 65536)
                        await w.drain()
                await w.drain()
        self.closed[path] = time.monotonic()


class Aiohttp:
    def __init__(self) -> None:
        import aiohttp

        self.aiohttp = aiohttp
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=1, sock_read=2),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def get(self, url: str, headers: list[tuple[str, str]], body=None):
        async with self.session.request(
            "POST" if body else "GET", url, headers=headers, data=body, allow_redirects=False
        ) as r:
            return r.status, list(r.raw_headers), await r.read()

    async def download(self, url: str) -> None:
        async with self.session.get(url) as r:
            async for _ in r.content.iter_chunked(65536):
                await asyncio.sleep(0.01)

    async def close(self) -> None:
        await self.session.close()


class Pyreqwest:
    def __init__(self) -> None:
        from pyreqwest.client import ClientBuilder

        b = ClientBuilder().follow_redirects(False).gzip(False).brotli(False)
        b = b.zstd(False).deflate(False).max_connections(256)
        b = b.connect_timeout(timedelta(seconds=1)).read_timeout(timedelta(seconds=2))
        self.client = b.build()

    async def get(self, url: str, headers: list[tuple[str, str]], body=None):
        b = self.client.request("POST" if body else "GET", url).headers(headers)
        if body is not None:
            b = b.body_stream(body)
        async with b.build_streamed() as r:
            out = b""
            while (chunk := await r.body_reader.read_chunk()) is not None:
                out += bytes(chunk)
            raw = [(n.encode(), v.encode()) for n, v in r.headers.items()]
            return r.status, raw, out

    async def download(self, url: str) -> None:
        async with self.client.request("GET", url).build_streamed() as r:
            while await r.body_reader.read_chunk() is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # a slow reader: the download is still going

    async def close(self) -> None:
        await self.client.close()


def report(name: str, ok: bool, seen: object) -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {name}: {seen}")


async def cancelled_after(coro: Awaitable[object], delay: float) -> None:
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(delay)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def check(make: Callable[[], Aiohttp | Pyreqwest]) -> None:
    app = App()
    server = await asyncio.start_server(app.handle, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    client = make()
    try:
        await client.get(base + "/cookies", [("x-lower", "1"), ("X-Title", "2"), ("x-lower", "3")])
        head = app.heads[-1].split(b"\r\n")[1:]
        names = [line.split(b":")[0] for line in head if not line.lower().startswith(b"host:")]
        added = [n for n in names if n.lower() in (b"accept", b"user-agent", b"accept-encoding")]
        report("no headers the client did not send", not added, added)
        report("header names' case kept", b"x-lower" in names and b"X-Title" in names, names)
        report(
            "request header order kept", names[:3] == [b"x-lower", b"X-Title", b"x-lower"], names
        )

        _, raw, _ = await client.get(base + "/cookies", [])
        order = [n.lower() for n, _ in raw if n.lower() != b"content-length"]
        report("several Set-Cookie kept apart", order.count(b"set-cookie") == 2, raw)
        report(
            "response header order kept", order == [b"set-cookie", b"x-one", b"set-cookie"], order
        )

        status, _, _ = await client.get(base + "/redirect", [])
        report("no automatic redirects", status == 302, status)
        _, _, body = await client.get(base + "/gzip", [])
        report("no decompression", body == b"abcd", body)

        async def parts() -> AsyncIterator[bytes]:
            yield b"hello "
            yield b"world"

        await client.get(base + "/upload", [], parts())
        report("request body streamed", b"hello" in app.bodies[-1], app.bodies[-1])

        start = time.monotonic()
        await cancelled_after(client.get(base + "/think", []), 0.3)
        await asyncio.sleep(1.5)
        gone = app.closed.get(b"/think")
        waited = None if gone is None else round(gone - start, 2)
        # at once, not when the read timeout (2 s) or the app's answer (3 s) ends it
        ok = waited is not None and waited < 0.6
        report("cancel while the app thinks closes the connection", ok, waited)

        start = time.monotonic()
        await cancelled_after(client.download(base + "/download"), 0.3)
        await asyncio.sleep(0.5)
        gone = app.closed.get(b"/download")
        waited = None if gone is None else round(gone - start, 2)
        ok = waited is not None and waited < 0.6
        report("cancel mid-download closes the connection", ok, waited)

        kinds = []
        for url in await _timeouts(base):
            try:
                await client.get(url, [])
            except Exception as exc:
                kinds.append(type(exc).__name__)
        # by exception class (pyreqwest's causes' messages do differ: "tcp connect error")
        report("connect timeout and read timeout told apart", len(set(kinds)) == 2, kinds)
    finally:
        await client.close()
        server.close()


async def _timeouts(base: str) -> list[str]:
    """A listener whose accept queue is full (connecting hangs) and the app that thinks 3 s."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fill = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fill.append(s)
    _timeouts.keep = (listener, fill)  # type: ignore[attr-defined]
    return [f"http://127.0.0.1:{port}/", base + "/think"]


async def main() -> None:
    for name, make in (("aiohttp", Aiohttp), ("pyreqwest", Pyreqwest)):
        print(name)
        await check(make)
    await asyncio.sleep(4)  # let abandoned requests end before the loop closes


if __name__ == "__main__":
    asyncio.run(main())
