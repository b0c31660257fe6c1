"""The shared mode's Redis connection: redis-py's asyncio client built from `shared.*`.

Owns only the connection: `shared.redis_url` (redis://, rediss:// for TLS, unix://) or
`shared.sentinel` (the sentinels are asked for the master, TLS with `shared.sentinel.tls`), the
passwords from the environment (`SESSIONGATE_REDIS_PASSWORD`, `SESSIONGATE_SENTINEL_PASSWORD`),
and `shared.timeout` as the socket timeouts. One retry inside the client, at once and only for a
connection found closed (a pooled connection of a Redis that restarted or dropped it): without
it the first call on each pooled connection after a restart fails, a 503 in strict mode. No
retry after a timeout: a caller that misses its deadline decides what to do (retry in the
background, degrade, or fail closed), so a slow Redis never holds a request longer than
`shared.timeout`. Log lines name the server with `describe()`, which never shows a URL's
userinfo. `Batcher` sends the calls asked for in one turn of the event loop as one pipeline, so
a burst costs a few round trips, not one each.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from sessiongate.config import (
    REDIS_PASSWORD_ENV,
    SENTINEL_PASSWORD_ENV,
    Shared,
    redact_url,
)

#: What a failed Redis call raises (connection refused/reset, timeout, error replies, AUTH).
RedisError = aioredis.RedisError


def _env(name: str, environ: Mapping[str, str] | None) -> str | None:
    return (os.environ if environ is None else environ).get(name) or None


def connect(
    shared: Shared,
    *,
    environ: Mapping[str, str] | None = None,
    socket_timeout: float | None = None,
    max_connections: int | None = 64,
) -> aioredis.Redis:
    """A client for `shared`; `socket_timeout` defaults to `shared.timeout` (a follower that
    blocks on XREAD passes its block time plus `shared.timeout`). Connects lazily."""
    if not shared.enabled:
        raise ValueError("the shared mode is off (no shared.redis_url or shared.sentinel)")
    timeout = shared.timeout if socket_timeout is None else socket_timeout
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": shared.timeout,
        # a closed connection (ConnectionError) is retried once at once; a timeout never
        "retry": Retry(NoBackoff(), 1, supported_errors=(aioredis.ConnectionError,)),
        "max_connections": max_connections,
        "decode_responses": False,
        "client_name": "sessiongate",
    }
    password = _env(REDIS_PASSWORD_ENV, environ)
    if password is not None:
        common["password"] = password
    if shared.sentinel is not None:
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": shared.timeout,
            "socket_connect_timeout": shared.timeout,
            "ssl": shared.sentinel.tls,
        }
        sentinel_password = _env(SENTINEL_PASSWORD_ENV, environ)
        if sentinel_password is not None:
            sentinel_kwargs["password"] = sentinel_password
        sentinel = Sentinel(
            shared.sentinel.addresses(),
            sentinel_kwargs=sentinel_kwargs,
            ssl=shared.sentinel.tls,
            **common,
        )
        return sentinel.master_for(shared.sentinel.master)
    assert shared.redis_url is not None
    return aioredis.Redis.from_url(shared.redis_url, **common)


def describe(shared: Shared) -> str:
    """The Redis the gate uses, for log lines: never a password."""
    if shared.sentinel is not None:
        tls = " (TLS)" if shared.sentinel.tls else ""
        return (
            f"sentinel master {shared.sentinel.master} via {', '.join(shared.sentinel.nodes)}{tls}"
        )
    return redact_url(shared.redis_url or "")


def key(shared: Shared, *parts: str) -> str:
    """`<prefix>:<part>:<part>`: every key the gate writes is under `shared.prefix`."""
    return ":".join((shared.prefix, *parts))


#: Adds a call's commands to a pipeline (`pipe.get(k)`, ...); their replies come back in order.
Commands = Callable[[Any], object]

_Call = tuple[Commands, Hashable, "asyncio.Future[list[Any]]"]

#: Calls per pipeline: a larger burst is split, so no single reply takes long to parse.
BATCH = 256
#: A deadline noticed this late (s) means a busy event loop, not (only) a slow Redis.
LATE = 0.02
#: ... and a call then waits at most this many timeouts in all (a slow Redis and a busy loop).
BUSY_ROUNDS = 8


class Batcher:
    """One pipeline per turn of the event loop for every call asked for in that turn.

    Each call is still sent after it was asked for (a write that finished before the call began
    is seen by it). Calls with the same `share` key in one pipeline are sent once and share the
    replies. The whole pipeline is bounded by `timeout`; on any failure (down, slow, an error
    reply) every call in it raises that failure and its caller decides.
    """

    def __init__(self, redis: aioredis.Redis, timeout: float) -> None:
        self.redis = redis
        self.timeout = timeout
        self._queue: list[_Call] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, commands: Commands, share: Hashable = None) -> list[Any]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((commands, share, future))
        if len(self._queue) == 1:  # the first of this turn schedules the flush
            task = asyncio.get_running_loop().create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _flush(self) -> None:
        batch, self._queue = self._queue, []
        await asyncio.gather(
            *(self._send(batch[i : i + BATCH]) for i in range(0, len(batch), BATCH))
        )

    async def _send(self, batch: list[_Call]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        spans: dict[Hashable, tuple[int, int]] = {}
        placed: list[tuple[int, int]] = []
        for commands, share, _ in batch:
            span = spans.get(share) if share is not None else None
            if span is None:
                start = len(pipe)
                commands(pipe)
                span = (start, len(pipe))
                if share is not None:
                    spans[share] = span
            placed.append(span)
        try:
            replies = await self._execute(pipe)
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else TimeoutError()
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), (start, end) in zip(batch, placed, strict=True):
            if not future.done():
                future.set_result(replies[start:end])

    async def _execute(self, pipe: Any) -> list[Any]:
        """`pipe.execute()` within `timeout`, where only an idle event loop's time counts.

        A round trip takes a dozen turns of the loop in redis-py. In a burst (a cold start)
        every turn is long, so a reply that came back at once can still miss the deadline, and
        a prompt Redis must not count as slow (each caller would then ask whoami on its own).
        So a deadline first checks whether the loop is busy: noticed late, or the next turn
        takes longer than LATE. A busy loop gets another `timeout`, up to BUSY_ROUNDS in all;
        an idle loop that still has no reply means a slow Redis."""
        loop = asyncio.get_running_loop()
        work = asyncio.ensure_future(pipe.execute())
        due = loop.time() + self.timeout
        last = due + self.timeout * (BUSY_ROUNDS - 1)
        expired = False

        def deadline() -> None:
            if not work.done():
                loop.call_soon(decide, loop.time())

        def decide(noticed: float) -> None:
            nonlocal expired, timer, due
            if work.done():
                return
            now = loop.time()
            if (noticed - due > LATE or now - noticed > LATE) and now < last:
                due = min(now + self.timeout, last)
                timer = loop.call_at(due, deadline)
                return
            expired = True
            work.cancel()

        timer = loop.call_at(due, deadline)
        try:
            return await work
        except asyncio.CancelledError:
            if expired and not _cancelling():
                raise TimeoutError from None
            raise
        finally:
            timer.cancel()

    async def aclose(self) -> None:
        """Let calls already asked for finish (each within `timeout`)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (not just what it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
