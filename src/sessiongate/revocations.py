"""The shared mode's revocations: every eviction reaches every process through a Redis Stream.

Owns the stream `<prefix>:revocations` and this process' place in it:

* **Publishing.** This object listens to the local `SessionCache`: every `evict_session`,
  `evict_identity` and `clear()` made here (the relay, the admin routes, `gate.cache.evict_*`)
  is queued and appended with XADD (approximate MAXLEN; `WAIT 1` when Redis has replicas, so a
  failover does not lose a confirmed revocation). The relay awaits `flush()` before the client
  hears back; an append that misses `shared.timeout` is retried in the background (logged), and
  for that revocation the other processes' bound is `cache.ttl`.
* **Following.** One task per process reads the stream (XREAD BLOCK from the last id seen) and
  applies remote events to the local cache, tombstones included, without publishing them again.
  The cache is trusted only while the follower can prove it saw every event: each read also
  checks a generation key (gone or changed: Redis restarted empty or was flushed) and that the
  last id seen is still in the stream (gone: trimmed past it). A gap drops the whole local
  cache. No answer from Redis for `SILENCE` (1 s) is a disconnection: the cache is dropped and,
  until Redis answers again, entries live at most `shared.degraded_ttl` (Kratos stays the
  authority; nobody is logged out because Redis is down). Each transition is logged once.
  A follower or publisher that ends while the gate runs (an unexpected error, a cancellation
  from inside the client library), or a "connected" follower that has not read for `STUCK`
  seconds, is restarted degraded: a cache never goes on trusting a follower that applies
  nothing.
* **The trusted generation.** `trusted_generation()` is the generation the follower last
  proved it follows (None while it cannot: connecting, after a gap, degraded). Redis restarted
  empty or flushed takes the stream and the revocation records with it; until the follower
  notices (its next read, up to `BLOCK_MS` later) the local cache may hold a session revoked
  just before. Eventual mode accepts that (within the bound of 1 s); strict mode does not:
  `strict.RevocationRecords` admits a cache hit only while Redis' generation is this one, so a
  revocation lost with Redis' data is refused on the very next request at every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from sessiongate.cache import SessionCache
from sessiongate.config import Shared
from sessiongate.shared_redis import RedisError, connect, describe, key

log = logging.getLogger("sessiongate.shared")

SILENCE = 1.0  # no answer from Redis for this long: disconnected (the bound)
STUCK = 3 * SILENCE  # a connected follower that has not read for this long is restarted
BLOCK_MS = 400  # XREAD BLOCK: an idle stream still answers well within SILENCE
MAXLEN = 100_000  # approximate stream length; a follower further behind sees a gap
MAX_PENDING = 100_000  # appends queued while Redis is unreachable; beyond, the oldest go
READ_COUNT = 1000
REPLICA_CHECK = 25  # every this many reads (~10 s when idle), how many replicas WAIT needs

# Event kinds on the stream
SESSION, IDENTITY, FORGET, CLEAR = "s", "i", "f", "c"

AppendHook = Callable[[Any, str, str, str], None]
_FAILURES = (RedisError, OSError, TimeoutError, asyncio.TimeoutError)


class _Pending:
    __slots__ = ("except_session", "future", "ident", "kind")

    def __init__(self, kind: str, ident: str, except_session: str) -> None:
        self.kind, self.ident, self.except_session = kind, ident, except_session
        self.future: asyncio.Future[None] | None = None


class Revocations:
    """Publishes this process' evictions and applies everyone else's (see the module doc)."""

    def __init__(
        self,
        cache: SessionCache,
        shared: Shared,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.cache = cache
        self.shared = shared
        self.stream = key(shared, "revocations")
        self.generation_key = key(shared, "generation")
        self.origin = f"{os.getpid()}-{secrets.token_hex(6)}".encode()
        self.append_hooks: list[AppendHook] = []
        self.state = "connecting"
        #: times this process stopped trusting its follower (Redis silent, unreachable, a
        #: follower restarted): a degraded spell may last milliseconds, this count stays
        self.degradations = 0
        self._generation: bytes | None = None  # see trusted_generation()
        self._heard = time.monotonic()  # the follower's last answer from Redis (`_watch`)
        self._environ = environ
        self._ttl = cache.ttl
        self._pending: deque[_Pending] = deque()
        self._applying = False
        self._replicas = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._client: Any = None
        self._append_failing = False
        self._closing = False
        self._degrade()  # until the follower has a place in the stream
        cache.listeners.append(self)

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self.state == "connected"

    def trusted_generation(self) -> bytes | None:
        """Redis' generation this follower proved it follows (every event applied since its
        place in the stream); None while it cannot (see the module doc)."""
        return self._generation

    def start(self) -> None:
        """Start the follower and the publisher on the running loop (idempotent)."""
        if self._tasks:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._client = connect(self.shared, environ=self._environ)
        self._tasks = [self._spawn(self._follow), self._spawn(self._publish)]
        self._loop.call_later(SILENCE, self._watch)
        if self._pending:
            self._wake.set()

    def _spawn(self, work: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(
            work(), name=f"sessiongate-revocations{work.__name__}"
        )
        task.add_done_callback(lambda done: self._ended(done, work))
        return task

    def _watch(self) -> None:
        """Every SILENCE: a follower that says "connected" yet has not read for STUCK seconds
        (a call that never returns) is cancelled, which restarts it degraded (`_ended`)."""
        if self._closing or self._loop is None:
            return
        stuck = time.monotonic() - self._heard > STUCK
        if stuck and self.state == "connected" and self._tasks and not self._tasks[0].done():
            log.error("shared mode: the revocation follower stopped reading; restarting it")
            self._degrade(RuntimeError("the follower stopped reading"))
            self._tasks[0].cancel()
        self._loop.call_later(SILENCE, self._watch)

    def _ended(
        self, task: asyncio.Task[None], work: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        """A follower or publisher that ends while the gate runs (an error nobody expected, a
        cancellation from inside a client library) must not leave "connected" behind, applying
        nothing: degrade (the cache is dropped, entries live shared.degraded_ttl) and start it
        again."""
        if self._closing or task not in self._tasks:
            return
        exc = None if task.cancelled() else task.exception()
        log.error(
            "shared mode: the revocation %s stopped (%s); restarting it",
            work.__name__.strip("_"),
            "cancelled" if exc is None else type(exc).__name__,
        )
        if self.state != "degraded":
            self._degrade(exc or RuntimeError("stopped"))
        self._tasks[self._tasks.index(task)] = self._spawn(work)

    async def aclose(self) -> None:
        self._closing = True  # a cancellation redis-py turns into a ConnectionError ends too
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        self._tasks = []
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None

    # -- publishing: the cache's EvictionListener ------------------------------------------
    def session_evicted(self, session_id: str, identity_id: str = "") -> None:
        # the identity (if the eviction is scoped to it) rides in the "x" field
        self._enqueue(SESSION, session_id, identity_id)

    def identity_evicted(self, identity_id: str, except_session: str) -> None:
        self._enqueue(IDENTITY, identity_id, except_session)

    def cleared(self) -> None:
        self._enqueue(CLEAR, "", "")

    def forgot(self, session_id: str) -> None:
        """An admin extend dropped this session's entries (no tombstone): everyone drops them."""
        self._enqueue(FORGET, session_id, "")

    def _enqueue(self, kind: str, ident: str, except_session: str) -> None:
        if self._applying:
            return  # a remote event applied here: never published again
        loop = self._loop
        if loop is not None and threading.get_ident() != self._thread:
            # `gate.cache.evict_*` from another thread: the loop does the work
            loop.call_soon_threadsafe(self._enqueue, kind, ident, except_session)
            return
        item = _Pending(kind, ident, except_session)
        if loop is not None:
            item.future = loop.create_future()
        self._pending.append(item)
        if len(self._pending) > MAX_PENDING:
            dropped = self._pending.popleft()
            log.error(
                "shared mode: %d revocations waiting for Redis; dropped the oldest (its "
                "bound is now cache.ttl)",
                MAX_PENDING,
            )
            _settle(dropped)
        if self._wake is not None:
            self._wake.set()

    async def flush(self) -> bool:
        """Wait (at most `shared.timeout`) until every eviction queued so far is appended.

        False when some are not: they stay queued and are retried in the background."""
        waiting = [p.future for p in self._pending if p.future is not None and not p.future.done()]
        if not waiting:
            return True
        _done, late = await asyncio.wait(waiting, timeout=self.shared.timeout)
        if late:
            log.warning(
                "shared mode: %d revocation(s) not appended within shared.timeout (%gs); "
                "retrying in the background (until then other processes may admit them for "
                "up to cache.ttl)",
                len(late),
                self.shared.timeout,
            )
            return False
        return True

    async def _publish(self) -> None:
        assert self._wake is not None
        backoff = 0.05
        while not self._closing:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = list(self._pending)[:500]
            try:
                # the first try is bounded by shared.timeout (the relay waits for it); retries
                # allow a slow Redis up to SILENCE, so a slow one still gets every revocation
                limit = self.shared.timeout if not self._append_failing else SILENCE
                async with asyncio.timeout(limit):
                    await self._append(batch)
            except _FAILURES as exc:
                if not self._append_failing:
                    log.warning(
                        "shared mode: cannot append revocations to Redis %s (%s); retrying",
                        describe(self.shared),
                        _why(exc),
                    )
                self._append_failing = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            if self._append_failing:
                log.info("shared mode: revocations appended again")
            self._append_failing = False
            backoff = 0.05
            sent = {id(item) for item in batch}
            # MAX_PENDING may have dropped (and settled) some of the batch meanwhile, from the
            # left: what is left of it is still at the left
            while self._pending and id(self._pending[0]) in sent:
                _settle(self._pending.popleft())

    async def _append(self, batch: list[_Pending]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for item in batch:
            fields = {
                b"k": item.kind,
                b"i": item.ident,
                b"x": item.except_session,
                b"o": self.origin,
            }
            pipe.xadd(self.stream, fields, maxlen=MAXLEN, approximate=True)
            for hook in self.append_hooks:
                hook(pipe, item.kind, item.ident, item.except_session)
        if self._replicas:
            pipe.execute_command("WAIT", 1, max(1, int(self.shared.timeout * 500)))
        results = await pipe.execute()
        if self._replicas and int(results[-1]) < 1:
            raise RedisError("no replica acknowledged the revocation (WAIT 1)")

    # -- following --------------------------------------------------------------------------
    async def _follow(self) -> None:
        client = connect(
            self.shared, environ=self._environ, socket_timeout=SILENCE, max_connections=2
        )
        last_id: bytes | None = None
        generation: bytes | None = None
        self._heard = time.monotonic()
        reads = 0
        try:
            while not self._closing:
                try:
                    if last_id is None:
                        last_id, generation = await self._sync(client)
                        # a place in the stream: every event after it will be applied, so
                        # entries may live their full cache.ttl from now, not only once the
                        # first blocking read returns (up to BLOCK_MS later: a start-up's first
                        # sessions would be validated again within shared.degraded_ttl)
                        self._generation = generation
                        if self.state != "connected":
                            self._connected()
                    reads += 1
                    pipe = client.pipeline(transaction=False)
                    pipe.get(self.generation_key)
                    pipe.xrange(self.stream, last_id, last_id, count=1)
                    pipe.xread({self.stream: last_id}, count=READ_COUNT, block=BLOCK_MS)
                    if reads % REPLICA_CHECK == 0:  # a replica attached (or left) since
                        pipe.info("replication")
                    current, still_there, read, *replication = await pipe.execute()
                    self._heard = time.monotonic()
                    if replication:
                        self._replicas = int(replication[0].get("connected_slaves", 0))
                    if current != generation or (last_id != b"0-0" and not still_there):
                        # Redis restarted empty, was flushed, or trimmed past our place
                        log.warning(
                            "shared mode: the revocation stream has a gap (Redis restarted, "
                            "flushed or trimmed); dropped the local session cache"
                        )
                        self._generation = last_id = None
                        continue
                    self._generation = generation
                    for entries in _entries(read):
                        for entry_id, fields in entries:
                            if fields.get(b"o") != self.origin:
                                self._apply(fields)
                            last_id = entry_id
                    if self.state != "connected":
                        self._connected()
                except _FAILURES as exc:
                    silent = time.monotonic() - self._heard >= SILENCE
                    if silent or self.state != "connected":
                        # connected and silent for 1 s, or never connected (refused AUTH, ...):
                        # one log line, the degraded mode
                        if self.state != "degraded":
                            self._degrade(exc)
                        # prove continuity again (and drop the cache) later
                        self._generation = last_id = None
                    await asyncio.sleep(0.1)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _sync(self, client: Any) -> tuple[bytes, bytes]:
        """A new place in the stream: its tail; everything before it may have been missed."""
        pipe = client.pipeline(transaction=False)
        pipe.set(self.generation_key, secrets.token_hex(8), nx=True)
        pipe.get(self.generation_key)
        pipe.xrevrange(self.stream, count=1)
        pipe.info("replication")
        _set, generation, tail, replication = await pipe.execute()
        self._replicas = int(replication.get("connected_slaves", 0))
        if self.state != "connecting":
            # after a gap or a silence; at start-up the entries made meanwhile were capped at
            # shared.degraded_ttl like degraded ones, so the first place needs no drop
            self._drop_all()
        return (tail[0][0] if tail else b"0-0"), generation

    def _apply(self, fields: dict[bytes, bytes]) -> None:
        kind = fields.get(b"k", b"").decode()
        ident = fields.get(b"i", b"").decode()
        self._applying = True
        try:
            if kind == SESSION and ident:
                self.cache.evict_session(ident, fields.get(b"x", b"").decode())
            elif kind == IDENTITY and ident:
                except_session = fields.get(b"x", b"").decode()
                self.cache.evict_identity(ident, except_session=except_session)
            elif kind == FORGET and ident:
                self.cache.forget_session(ident)
                self.cache.forget_negative()
            elif kind == CLEAR:
                self.cache.clear()
        finally:
            self._applying = False

    def _drop_all(self) -> None:
        """Drop the whole local cache, in-flight answers included, without publishing it."""
        self._applying = True
        try:
            self.cache.clear()
        finally:
            self._applying = False

    def _degrade(self, exc: BaseException | None = None) -> None:
        self._generation = None
        if exc is not None:
            log.warning(
                "shared mode: Redis %s unreachable (%s): serving on, cache entries live at "
                "most shared.degraded_ttl (%gs) until it answers again",
                describe(self.shared),
                _why(exc),
                self.shared.degraded_ttl,
            )
            self._drop_all()
            self.degradations += 1
        self.state = "degraded" if exc is not None else "connecting"
        self.cache.ttl = min(self._ttl, self.shared.degraded_ttl)

    def _connected(self) -> None:
        log.info(
            "shared mode: following revocations on Redis %s (%d replica(s))",
            describe(self.shared),
            self._replicas,
        )
        self.state = "connected"
        self.cache.ttl = self._ttl


def _entries(read: Any) -> list[Any]:
    """XREAD's answer (RESP2: [[stream, entries]], RESP3: {stream: [entries]}) → entry lists."""
    if not read:
        return []
    if isinstance(read, dict):
        return [v[0] if v and isinstance(v[0], list) else v for v in read.values()]
    return [entries for _stream, entries in read]


def _settle(item: _Pending) -> None:
    if item.future is not None and not item.future.done():
        item.future.set_result(None)


# redis-py quotes a failed pipeline command with its arguments (session and identity ids)
_PIPELINE_COMMAND = re.compile(r"Command # (\d+) \(.*?\) of pipeline caused error: ", re.S)


def _why(exc: BaseException) -> str:
    """A failure for a log line: its type and redis-py's message (host:port, never a password,
    never a command's arguments)."""
    text = _PIPELINE_COMMAND.sub(r"pipeline command #\1 failed: ", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
