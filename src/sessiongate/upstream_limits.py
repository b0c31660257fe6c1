"""Admission to the protected app: who may hold an upstream connection, and for how long.

Every exchange with the app holds one upstream connection for as long as it lasts. Without
bounds a few slow or long-lived exchanges (uploads trickling in, WebSockets held open) take
every connection and all other requests queue behind them. The budgets here keep them apart:

* per client, at most `max_per_client` exchanges at once, HTTP and WebSocket together (an
  HTTP request beyond waits up to `pool_timeout` for one of the client's own to end, then
  429; a WebSocket is refused at once). The client is the peer address or, when the peer
  is a trusted proxy, the rightmost `X-Forwarded-For` address that is not one (behind a
  load balancer every peer is the balancer);
* HTTP exchanges share `max_connections` slots; a request waits at most `pool_timeout` for
  one (beyond: 503 with `Retry-After`, logged as a full pool, not as an unreachable app);
* request bodies streamed to the app (larger than the proxy's buffer) hold at most
  `max_streaming_uploads` of those slots, so ordinary requests always find some;
* one client streams at most a quarter of those uploads (at least one; beyond: 429), so one
  address cannot take them all;
* a response still streaming after `pool_timeout`, or a `text/event-stream` one (SSE,
  long-polls), moves from the pool to its own budget, `max_long_responses` (when that is full
  it stays in the pool); the proxy also drops a client that takes no chunk for
  `upstream.timeout`, so a client that does not read holds nothing for long;
* WebSockets have their own budget, `max_websockets` (gate.py takes a slot around the relay).

The client's key is its address (IPv6: its /64), from `client_address.py`.

Counters and queues of futures (made only when a request waits) only: no task, a dict lookup
or two per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from starlette.types import Scope, Send

from sessiongate.client_address import TrustedProxies, client_key
from sessiongate.herodot import error_bytes, error_headers

log = logging.getLogger("sessiongate.proxy")
RETRY_AFTER = (b"retry-after", b"1")
_WARN_EVERY = 1.0  # seconds: a flood of refusals is one log line a second per kind


class Slots:
    """A counting semaphore bound to no event loop, FIFO, with a try-without-await path."""

    __slots__ = ("free", "size", "waiters")

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self.waiters: deque[asyncio.Future[None]] | None = None  # made on the first wait

    def try_take(self) -> bool:
        if self.free > 0:
            self.free -= 1
            return True
        return False

    async def take_by(self, deadline: float) -> bool:
        """A slot before `deadline` (event-loop time): True, else False."""
        if self.try_take():
            return True
        if deadline <= asyncio.get_running_loop().time():
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.waiters is None:
            self.waiters = deque()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
            return True
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot just as we gave up: pass it on
            else:
                waiter.cancel()
                self._forget(waiter)
            if isinstance(exc, TimeoutError):
                return False
            raise

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        if self.waiters is not None:
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)

    def give(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes straight to the oldest waiter
                return
        self.free += 1

    @property
    def in_use(self) -> int:
        return self.size - self.free


class UpstreamLimits:
    def __init__(
        self,
        *,
        max_connections: int = 256,
        max_per_client: int = 64,
        max_streaming_uploads: int = 64,
        max_websockets: int = 1024,
        max_long_responses: int = 1024,
        pool_timeout: float = 2.0,
        trusted_proxies: TrustedProxies | list[str] | None = None,
    ) -> None:
        self.pool = Slots(max_connections)
        self.uploads = Slots(min(max_streaming_uploads, max_connections))
        # one client may stream at most a quarter of the uploads (at least one)
        self.upload_share = max(1, self.uploads.size // 4)
        self.uploads_by_client: dict[str, int] = {}
        self.websockets = Slots(max_websockets)
        self.long = Slots(max_long_responses)
        self.max_per_client = max_per_client
        self.pool_timeout = pool_timeout
        self.trusted = (
            trusted_proxies
            if isinstance(trusted_proxies, TrustedProxies)
            else TrustedProxies(trusted_proxies)
        )
        # exchanges open per client key; a queue only for a client with a request waiting
        self.by_client: dict[str, int] = {}
        self.waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._warned: dict[str, float] = {}
        self._told_untrusted_balancer = False

    # -- who is the client --------------------------------------------------------------------
    def client_key(self, scope: Scope, peer_trusted: bool | None = None) -> str:
        """The key of the client's budget (IPv6 clients by their /64)."""
        if peer_trusted is None:
            peer_trusted = self.trusted.peer_is_trusted(scope)
        return client_key(self.trusted.client_address(scope, peer_trusted))

    # -- per client -----------------------------------------------------------------------------
    def enter(self, key: str) -> bool:
        """One of the client's slots without waiting (the hot path: a dict lookup)."""
        n = self.by_client.get(key, 0)
        if n < self.max_per_client:
            self.by_client[key] = n + 1
            return True
        return False

    async def enter_waiting(self, key: str, scope: Scope | None = None) -> bool:
        """One of the client's slots once one of its own exchanges ends, within
        `pool_timeout`; False (and a log line) if none did. Call after `enter` failed."""
        if scope is not None:
            self._check_balancer(scope)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        queue = self.waiting.get(key)
        if queue is None:
            queue = self.waiting[key] = deque()
        queue.append(waiter)
        try:
            async with asyncio.timeout(self.pool_timeout):
                await waiter
            return True  # `leave` handed us its slot: the count did not change
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.leave(key)  # handed a slot just as we gave up: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
                if not queue and self.waiting.get(key) is queue:
                    del self.waiting[key]
            if not isinstance(exc, TimeoutError):
                raise
        self.warn(
            "client", "client %s has %d exchanges with the app open: 429", key, self.max_per_client
        )
        return False

    def leave(self, key: str) -> None:
        queue = self.waiting.get(key)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                if not queue:
                    del self.waiting[key]
                waiter.set_result(None)  # the slot goes straight to the client's oldest waiter
                return
        if queue is not None:
            del self.waiting[key]
        n = self.by_client[key] - 1
        if n:
            self.by_client[key] = n
        else:
            del self.by_client[key]

    def _check_balancer(self, scope: Scope) -> None:
        """Once: a client at its cap whose requests carry X-Forwarded-For from a peer that
        is not a trusted proxy is most likely a load balancer everyone shares."""
        if self._told_untrusted_balancer or self.trusted.peer_is_trusted(scope):
            return
        if any(name == b"x-forwarded-for" for name, _ in scope["headers"]):
            self._told_untrusted_balancer = True
            client = scope.get("client")
            log.warning(
                "upstream: client %s reached upstream.max_connections_per_client (%d) and sends "
                "X-Forwarded-For: if it is a load balancer or proxy, list it in "
                "forwarded.trusted_proxies, else every client behind it shares one cap",
                client[0] if client else "?",
                self.max_per_client,
            )

    # -- streamed uploads per client ------------------------------------------------------------
    def take_upload_share(self, key: str) -> bool:
        """One of the client's share of the streamed-upload budget (no waiting)."""
        n = self.uploads_by_client.get(key, 0)
        if n >= self.upload_share:
            self.warn(
                "upload-share",
                "client %s streams %d uploads (a quarter of upstream.max_streaming_uploads): 429",
                key,
                n,
            )
            return False
        self.uploads_by_client[key] = n + 1
        return True

    def give_upload_share(self, key: str) -> None:
        n = self.uploads_by_client[key] - 1
        if n:
            self.uploads_by_client[key] = n
        else:
            del self.uploads_by_client[key]

    # -- HTTP slots -----------------------------------------------------------------------------
    def try_acquire(self, streaming: bool) -> bool:
        """A slot without waiting (the hot path: no coroutine)."""
        if not streaming:
            return self.pool.try_take()
        if self.uploads.free > 0 and self.pool.free > 0:
            self.uploads.free -= 1
            self.pool.free -= 1
            return True
        return False

    async def acquire(self, streaming: bool) -> bool:
        """A slot within `pool_timeout`; False (and a log line) when the budget stayed full."""
        deadline = asyncio.get_running_loop().time() + self.pool_timeout
        if streaming and not await self.uploads.take_by(deadline):
            self.warn(
                "uploads",
                "upstream: %d streamed uploads in flight (upstream.max_streaming_uploads); "
                "no slot for %gs: 503",
                self.uploads.in_use,
                self.pool_timeout,
            )
            return False
        try:
            got = await self.pool.take_by(deadline)
        except BaseException:
            if streaming:
                self.uploads.give()
            raise
        if not got:
            if streaming:
                self.uploads.give()
            self.warn(
                "pool",
                "upstream: connection pool full (%d exchanges, upstream.max_connections); "
                "no connection for %gs: 503",
                self.pool.in_use,
                self.pool_timeout,
            )
        return got

    def release(self, streaming: bool, long: bool = False) -> None:
        (self.long if long else self.pool).give()
        if streaming:
            self.uploads.give()

    # -- long responses -------------------------------------------------------------------------
    def to_long(self) -> bool:
        """Move a long-running response from the pool to the long-response budget: True if it
        moved (its pool connection is free for others), False if that budget is full (the
        response keeps its pool connection)."""
        if not self.long.try_take():
            self.warn(
                "long",
                "upstream: %d long responses streaming (upstream.max_long_responses): "
                "this one stays in the connection pool",
                self.long.size,
            )
            return False
        self.pool.give()
        return True

    # -- WebSockets -----------------------------------------------------------------------------
    async def admit_websocket(self, scope: Scope, send: Send) -> str | None:
        """The client's key when a WebSocket may be relayed; else None, the handshake refused.
        Call `release_websocket(key)` when the relay ends."""
        key = self.client_key(scope)
        if not self.enter(key):
            self.warn(
                "client", "client %s has %d exchanges with the app open", key, self.max_per_client
            )
            await refuse_websocket(scope, send, 429, "Too many open connections from this client.")
            return None
        if not self.websockets.try_take():
            self.leave(key)
            self.warn("websockets", "upstream: %d WebSockets open: refused", self.websockets.size)
            await refuse_websocket(scope, send, 503, "Too many WebSockets open; try again.")
            return None
        return key

    def release_websocket(self, key: str) -> None:
        self.websockets.give()
        self.leave(key)

    # -- logging ------------------------------------------------------------------------------
    def warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned.get(kind, -_WARN_EVERY) >= _WARN_EVERY:
            self._warned[kind] = now
            log.warning(message, *args)


async def refuse_websocket(scope: Scope, send: Send, status: int, reason: str) -> None:
    """Refuse a handshake with an HTTP status where the server can send one, else close
    (the server then answers 403)."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = error_bytes(status, reason=reason)
        headers = [
            *error_headers(),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            RETRY_AFTER,
        ]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.close", "code": 1013})  # 1013: try again later
