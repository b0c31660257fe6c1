"""Resource measurements shared by the proxy and reliability tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

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
    """Tasks alive in the gate's own event loop (uvicorn runs it in a thread of this process)."""
    server = stack.gate_server._server
    assert server is not None
    loop = server.servers[0].get_loop()

    async def count() -> int:
        return len(asyncio.all_tasks()) - 1  # minus this counting task

    return asyncio.run_coroutine_threadsafe(count(), loop).result(5)
