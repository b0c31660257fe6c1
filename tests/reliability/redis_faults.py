"""The soak's Redis in the shared topology, and the faults injected into it during a run.

Owns one real `redis-server` (`tests/redis_servers.py`: loopback, free port, no persistence, so
a restart is empty), started with the DEBUG command allowed from loopback and
`maxmemory-policy noeviction`, and the faults, each recorded as a `FaultWindow` [start, end]
on this process' `time.monotonic()` clock:

* `stall`: SIGSTOP, then SIGCONT (the server keeps its connections and answers nothing);
* `kill`: SIGKILL, down for the fault's length, then a new empty server on the same port;
* `slow`: `DEBUG SLEEP 0.4` back to back, so every call waits longer than `shared.timeout`
  (250 ms by default);
* `errors`: `CONFIG SET maxmemory 1`: every write answers an OOM error (reads still work), then
  `maxmemory 0` again.

A window's start is recorded before the fault begins and its end once the server is healthy
again (`end` is `inf` while the fault lasts), so a checker that asks `overlapping()` never
misses a fault that was under way.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/, when run as a script

from redis_servers import RedisServer, RedisServers

KINDS = ("stall", "kill", "slow", "errors")
SLEEP = 0.4  # each DEBUG SLEEP of the `slow` fault: past shared.timeout (250 ms)
EXTRA = ("--enable-debug-command", "local", "--maxmemory-policy", "noeviction")


@dataclass
class FaultWindow:
    kind: str
    start: float
    end: float = math.inf  # still going
    note: str = ""  # what showed the fault took effect
    states: list[str] = field(default_factory=list)  # the gates' shared.redis during it

    def overlaps(self, begin: float, finish: float, after: float) -> bool:
        """Whether [start, end + after] meets [begin, finish]."""
        return self.start <= finish and self.end + after >= begin


class RedisFaults:
    """One redis-server for the gates, and the faults (see the module doc)."""

    def __init__(self, root: Path) -> None:
        self._servers = RedisServers(root)
        self._server: RedisServer | None = None
        self.windows: list[FaultWindow] = []

    def start(self) -> str:
        """Start the server; its URL."""
        self._server = self._servers.start(extra=EXTRA)
        return self._server.url

    @property
    def server(self) -> RedisServer:
        assert self._server is not None, "start() first"
        return self._server

    def close(self) -> None:
        self._servers.close()

    def overlapping(self, begin: float, finish: float, after: float) -> list[FaultWindow]:
        """The faults whose window, extended by `after` seconds, meets [begin, finish]."""
        return [w for w in self.windows if w.overlaps(begin, finish, after)]

    async def inject(
        self,
        kind: str,
        length: float,
        observe: Callable[[], Awaitable[list[str]]] | None = None,
    ) -> FaultWindow:
        """Inject one fault for `length` seconds and heal it; `observe()` is awaited after
        two thirds of it (the gates' view of Redis then)."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(KINDS)}")
        window = FaultWindow(kind, time.monotonic())
        self.windows.append(window)
        running = asyncio.create_task(asyncio.to_thread(self._fault, window, length))
        try:
            if observe is not None:
                await asyncio.sleep(length * 2 / 3)
                if not running.done():
                    window.states = await observe()
            await running
        finally:
            window.end = time.monotonic()
        return window

    # -- in a thread: blocking calls, each bounded --------------------------------------------
    def _fault(self, window: FaultWindow, length: float) -> None:
        server = self.server
        until = time.monotonic() + length
        if window.kind == "stall":
            server.stop()
            try:
                _sleep_until(until)
            finally:
                server.cont()
            window.note = f"SIGSTOP/SIGCONT pid {server.pid}"
        elif window.kind == "kill":
            killed = server.pid
            server.kill()
            _sleep_until(until)
            server.restart()  # no persistence: empty
            window.note = f"SIGKILL pid {killed}, restarted empty as pid {server.pid}"
        elif window.kind == "slow":
            client = redis.Redis(port=server.port, socket_timeout=10)
            sleeps = 0
            try:
                while time.monotonic() < until:
                    client.execute_command("DEBUG", "SLEEP", SLEEP)
                    sleeps += 1
            finally:
                client.close()
            window.note = f"{sleeps} x DEBUG SLEEP {SLEEP}"
        else:  # errors
            server.cli("CONFIG", "SET", "maxmemory", "1")
            try:
                answer = server.cli("SET", "soak-fault-probe", "1")
                _sleep_until(until)
            finally:
                server.cli("CONFIG", "SET", "maxmemory", "0")
            window.note = f"a write answered {answer.split(' when')[0]!r}"


def _sleep_until(until: float) -> None:
    time.sleep(max(0.0, until - time.monotonic()))
