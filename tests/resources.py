"""Helpers shared by the tests: resource measurements, polling, raw HTTP requests."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import psutil


class PeakRSS:
    """Samples this process' RSS every 20 ms in a thread; `growth` is peak minus baseline."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.base


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Poll `condition` for at most `seconds`; its final value."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


def gate_task_count(stack: Any) -> int:
    """Tasks alive in the gate's own event loop (its server runs it in a thread of this
    process)."""
    loop = stack.gate_server.loop
    assert loop is not None

    async def count() -> int:
        return len(asyncio.all_tasks()) - 1  # minus this counting task

    return asyncio.run_coroutine_threadsafe(count(), loop).result(5)


def raw_request(
    url: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    *,
    method: str = "GET",
    host: str | None = "default",
    version: str = "1.1",
) -> tuple[int, dict[str, list[str]], bytes]:
    """Send one HTTP request with `target` exactly as given; read the whole answer.

    `host=None` sends no Host header; extra ones can be given in `headers`.
    """
    parts = urlsplit(url)
    lines = [f"{method} {target} HTTP/{version}".encode("latin-1")]
    if host is not None:
        lines.append(b"Host: " + (parts.netloc if host == "default" else host).encode("latin-1"))
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers or []]
    lines += [b"Connection: close", b"", b""]
    data = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(b"\r\n".join(lines))
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    out: dict[str, list[str]] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        out.setdefault(name.strip().lower(), []).append(value.strip())
    return int(status_line.split()[1]), out, body
