"""A fault-injecting TCP proxy of the tests' own, on 127.0.0.1, switchable at runtime.

`FaultProxy(target_port)` listens on a free loopback port and forwards to the target, in a
background thread with its own event loop. A test puts it between two real servers (the gate
and Kratos, the gate and the app) and switches what it does, from any thread:

    passthrough()                     forward both ways (the default)
    refuse()                          close the listener: connecting gets ECONNREFUSED
    reset_on_accept()                 accept, then reset (RST) before reading anything
    blackhole()                       accept and read the request, never answer
    delay(s)                          hold each request `s` seconds, then forward it
    reset(after=n, hold=s)            forward the response head and `n` body bytes, wait `s`,
                                      then reset the connection
    truncate(after=n)                 forward the head and `n` body bytes, then close (FIN)
    serve(status, body, ...)          answer every request with a canned response, then close

`refuse` and `reset_on_accept` are what a crashed server looks like, so switching to them also
resets every open connection (pooled keep-alive ones included). The other modes act per
request: a request is recognised as a client chunk that starts with an HTTP request line (good
enough for the bodyless requests the gate sends to Kratos and the tests send to apps), and
`only=b"/path"` limits a mode to requests whose request line contains that text; the others
pass through. `faulted` counts the requests a fault was applied to, `forwarded` those sent on
to the target, so a test can show its fault really happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

CHUNK = 64 * 1024
_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"OPTIONS ")
_HEAD_LIMIT = 64 * 1024  # a canned answer waits for the request head, up to this much of it


@dataclass(frozen=True)
class Mode:
    name: str
    only: bytes | None = None
    seconds: float = 0.0
    after: int = 0
    canned: bytes = b""

    def applies_to(self, request_line: bytes) -> bool:
        return self.name != "passthrough" and (self.only is None or self.only in request_line)


PASSTHROUGH = Mode("passthrough")


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN: SO_LINGER with a zero timeout, then abort."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _flush(writer: asyncio.StreamWriter) -> None:
    """Wait until everything written is in the kernel's hands (drain alone stops at 16 KiB)."""
    writer.transport.set_write_buffer_limits(0)
    await writer.drain()


class _Cut:
    """Counts a response's body bytes and says where `after` of them end."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.head = b""
        self.head_done = False
        self.body = 0

    def take(self, data: bytes) -> tuple[bytes, bool]:
        """The part of `data` to pass on, and whether the cut point is reached with it."""
        if self.head_done:
            body_here = len(data)
        else:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return data, False
            self.head_done = True
            body_here = len(self.head) - (end + 4)
            self.head = b""
        head_here = len(data) - body_here
        room = self.after - self.body
        if body_here < room:
            self.body += body_here
            return data, False
        self.body = self.after
        return data[: head_here + room], True


class _Link:
    """One accepted client connection and, once a request was forwarded, its target one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.target_reader: asyncio.StreamReader | None = None
        self.target_writer: asyncio.StreamWriter | None = None
        self.pump: asyncio.Task[None] | None = None
        self.mode = PASSTHROUGH  # the fault for the response being relayed, if any
        self.cut: _Cut | None = None
        self.blackholed = False

    def abort(self) -> None:
        _reset(self.writer)
        if self.target_writer is not None:
            self.target_writer.transport.abort()

    def close(self) -> None:
        self.writer.transport.close()
        if self.target_writer is not None:
            self.target_writer.transport.close()
        if self.pump is not None:
            self.pump.cancel()


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.mode = PASSTHROUGH
        self.accepted = 0
        self.faulted = 0
        self.forwarded = 0
        self._sock: socket.socket | None = _bind()  # bound now, so the URL is known early
        self.port: int = self._sock.getsockname()[1]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"faultproxy-{self.port}", daemon=True
        )
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            if self._sock is not None:
                self._sock.close()
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def open_links(self) -> int:
        """Client connections the proxy holds right now."""
        return len(self._links)

    def hang_up(self) -> None:
        """Close every connection, both ends, as a server drops idle keep-alive ones (FIN);
        returns once the proxy has let go of them all."""
        self._call(self._hang_up())

    # -- modes ------------------------------------------------------------------------------
    def passthrough(self) -> None:
        self._set(PASSTHROUGH)

    def refuse(self) -> None:
        self._set(Mode("refuse"))

    def reset_on_accept(self) -> None:
        self._set(Mode("reset_on_accept"))

    def blackhole(self, *, only: bytes | None = None) -> None:
        self._set(Mode("blackhole", only=only))

    def delay(self, seconds: float, *, only: bytes | None = None) -> None:
        self._set(Mode("delay", only=only, seconds=seconds))

    def reset(self, after: int, *, hold: float = 0.0, only: bytes | None = None) -> None:
        self._set(Mode("reset", only=only, after=after, seconds=hold))

    def truncate(self, after: int, *, only: bytes | None = None) -> None:
        self._set(Mode("truncate", only=only, after=after))

    def serve(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        headers: tuple[tuple[str, str], ...] = (),
        only: bytes | None = None,
    ) -> None:
        lines = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in headers),
        ]
        canned = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        self._set(Mode("serve", only=only, canned=canned))

    def _set(self, mode: Mode) -> None:
        self._call(self._switch(mode))

    # -- on the proxy's loop ----------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None, "start() the proxy first"
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        if self._server is None:
            sock, self._sock = self._sock or _bind(self.port), None
            self._server = await asyncio.start_server(self._serve, sock=sock)

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _switch(self, mode: Mode) -> None:
        self.mode = mode
        if mode.name in ("refuse", "reset_on_accept"):
            for link in list(self._links):  # a crashed server's connections die with it
                link.abort()
        if mode.name == "refuse":
            await self._unlisten()
        else:
            await self._listen()

    async def _hang_up(self) -> None:
        for link in list(self._links):
            link.close()
        await self._drained()

    async def _drained(self) -> None:
        for _ in range(100):  # the handlers see their connections end and finish
            if not self._links:
                return
            await asyncio.sleep(0.01)

    async def _shutdown(self) -> None:
        await self._unlisten()
        for link in list(self._links):
            link.abort()
        await self._drained()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(reader, writer)
        self._links.add(link)
        try:
            if self.mode.name == "reset_on_accept":
                _reset(writer)
                return
            await self._client_to_target(link)
        except (OSError, TimeoutError):
            link.abort()
        finally:
            link.close()
            if link.pump is not None:
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await link.pump
            self._links.discard(link)

    async def _client_to_target(self, link: _Link) -> None:
        while True:
            data = await link.reader.read(CHUNK)
            if not data:
                return  # the client closed: close both sides
            if link.blackholed:
                continue
            if data.startswith(_METHODS) and b"\r\n" in data:
                mode = self.mode
                line = data.split(b"\r\n", 1)[0]
                link.mode, link.cut = PASSTHROUGH, None
                if mode.applies_to(line):
                    self.faulted += 1
                    if mode.name == "blackhole":
                        link.blackholed = True
                        continue
                    if mode.name == "serve":
                        await self._answer(link, data, mode.canned)
                        return
                    if mode.name == "delay":
                        held = await self._hold(link, data, mode.seconds)
                        if held is None:
                            return
                        data = held
                    if mode.name in ("reset", "truncate"):
                        link.mode, link.cut = mode, _Cut(mode.after)
                self.forwarded += 1
            if link.target_writer is None:
                await self._connect(link)
            assert link.target_writer is not None
            link.target_writer.write(data)
            await link.target_writer.drain()

    async def _connect(self, link: _Link) -> None:
        try:
            link.target_reader, link.target_writer = await asyncio.open_connection(*self.target)
        except OSError:
            # the target is down: so is the proxy, as far as this client can tell
            link.abort()
            raise
        link.pump = asyncio.create_task(self._target_to_client(link))

    async def _target_to_client(self, link: _Link) -> None:
        assert link.target_reader is not None
        writer = link.writer
        try:
            while True:
                data = await link.target_reader.read(CHUNK)
                if not data:
                    if not link.blackholed:
                        writer.transport.close()
                    return
                if link.blackholed:
                    continue
                cut = link.cut
                if cut is None:
                    writer.write(data)
                    await writer.drain()
                    continue
                data, reached = cut.take(data)
                writer.write(data)
                if not reached:
                    await writer.drain()
                    continue
                await _flush(writer)
                if link.mode.name == "truncate":
                    writer.transport.close()
                else:
                    await asyncio.sleep(link.mode.seconds)
                    _reset(writer)
                if link.target_writer is not None:
                    link.target_writer.transport.abort()
                return
        except OSError:
            link.abort()

    async def _hold(self, link: _Link, data: bytes, seconds: float) -> bytes | None:
        """The request, after `seconds`; None when the client gave up waiting meanwhile."""
        held = bytearray(data)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            try:
                more = await asyncio.wait_for(link.reader.read(CHUNK), left)
            except TimeoutError:
                break
            if not more:
                return None
            held += more
        return bytes(held)

    async def _answer(self, link: _Link, data: bytes, canned: bytes) -> None:
        """Answer once the request head is in, then wait for the client to close (bounded):
        closing with unread request bytes would be a reset, not the clean answer intended."""
        head = bytearray(data)
        while b"\r\n\r\n" not in head and len(head) < _HEAD_LIMIT:
            more = await asyncio.wait_for(link.reader.read(CHUNK), 5)
            if not more:
                return
            head += more
        link.writer.write(canned)
        await _flush(link.writer)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while await link.reader.read(CHUNK):
                    pass


def _bind(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock
