"""Stage 5: forward an admitted request to the protected app and stream the answer back.

One long-lived aiohttp `ClientSession` owns the upstream connections, limits and timeouts.
aiohttp rather than httpx on this path: on this machine a Starlette + httpx gate does ~600 req/s
because httpcore's pool bookkeeping grows with the pool on every request, while aiohttp's
client reached ~6,500 req/s in the same setup (figures and the comparison: `bench/README.md`).

What the proxy guarantees:
* bodies stream both ways in chunks (constant memory whatever the size);
* hop-by-hop headers and those named in `Connection` are dropped, both directions;
* `X-Forwarded-For/-Proto/-Host` are set (from `public_url` when configured); incoming ones,
  and the path-override and client-address headers (`X-Original-URL`, `True-Client-IP`...), are
  kept only from trusted proxies, and never in a `_` spelling;
* the Ory credential (session cookie, `X-Session-Token`, `Authorization: Bearer`) is removed
  from what the app sees (unless configured otherwise);
* several `Set-Cookie` headers stay several (raw header lists, never a dict);
* upstream connect error → 502, timeout → 504; a client that goes away cancels the upstream
  request; WebSocket upgrades are relayed both ways after the gate admitted the handshake;
* a client that takes no response data for `upstream.timeout` is dropped, and a response
  streaming past `upstream.pool_timeout` (or SSE) leaves the pool (`_Watch`, upstream_limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from starlette.types import Message, Receive, Scope, Send
from yarl import URL

from sessiongate.client_address import TrustedProxies
from sessiongate.config import HOP_BY_HOP, TRUSTED_PROXY_HEADERS
from sessiongate.credentials import is_bearer, without_session_cookies
from sessiongate.observe import record_of
from sessiongate.responses import send_error
from sessiongate.tracing import CONTEXT, REQUEST_ID, for_app
from sessiongate.upstream_limits import RETRY_AFTER, UpstreamLimits

if TYPE_CHECKING:
    from sessiongate.metrics import Metrics

log = logging.getLogger("sessiongate.proxy")
RawHeaders = list[tuple[bytes, bytes]]

_TRUSTED_ONLY = TRUSTED_PROXY_HEADERS
# `_` spellings (X_Original_URL) are dropped from anyone: servers that fold `_` into `-` would
# read them as the real header, and no proxy sends them.
_NEVER_WITH_UNDERSCORE = _TRUSTED_ONLY | {b"x-session-token", REQUEST_ID}
_WS_HANDSHAKE = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
    }
)
# Request headers the proxy looks at; everything else is passed on as is.
# `Expect` is dropped: the client's ASGI server answers `100-continue` itself, and aiohttp would
# otherwise wait for the app's `100` before sending a body the gate already holds.
# `X-Request-Id`: the gate's own replaces the client's (tracing.RequestIds).
_SPECIAL = HOP_BY_HOP | _TRUSTED_ONLY | {b"host", b"connection", b"cookie", b"expect", REQUEST_ID}
_CREDENTIALS = frozenset({b"x-session-token", b"authorization"})
CHUNK = 64 * 1024
# A client that leaves is noticed by a watcher task; answers faster than this never start one
# (a task per request costs ~5% of the hot path), they just finish unread.
WATCH_AFTER = 0.05


class ClientGone(Exception):
    """The client disconnected while its request was being forwarded."""


class ClientStalled(Exception):
    """The request body paused for longer than upstream.timeout, or took longer than
    upstream.body_timeout in all."""


class _Watch:
    """Watches an exchange once it outlives WATCH_AFTER (a timer, then a task and a timer):

    * the client going away cancels the forwarding task, so the upstream request is abandoned
      with it (`gone`);
    * a response chunk the client does not take within `upstream.timeout` cancels it too
      (`stalled`): a client that does not read holds no connection for longer;
    * a response still streaming after `upstream.pool_timeout` moves from the connection pool
      to the long-response budget (`long`), so SSE and slow downloads leave the pool to others.
    """

    __slots__ = (
        "gone",
        "handle",
        "idle",
        "limits",
        "long",
        "long_after",
        "receive",
        "responding",
        "sending",
        "stalled",
        "task",
        "watcher",
    )

    def __init__(
        self, task: asyncio.Task[object], receive: Receive, limits: UpstreamLimits, idle: float
    ) -> None:
        self.task = task
        self.receive = receive
        self.limits = limits
        self.idle = idle
        self.long_after = limits.pool_timeout
        self.gone = self.stalled = self.long = False
        self.responding: float | None = None  # loop time the response started
        self.sending: float | None = None  # loop time the pending send started
        self.handle: asyncio.TimerHandle | None = None
        self.watcher: asyncio.Task[None] | None = None

    def arm(self) -> None:
        self.handle = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start)

    def _start(self) -> None:
        self.handle = None
        self.watcher = asyncio.get_running_loop().create_task(self._watch())
        self._tick()

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                self.task.cancel()
                return

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        sending = self.sending
        if sending is not None and now - sending >= self.idle:
            self.handle = None
            self.stalled = True
            self.task.cancel()
            return
        due = (sending if sending is not None else now) + self.idle
        if not self.long:
            if self.responding is not None and now >= self.responding + self.long_after:
                self.move_to_long()
            if not self.long:  # not streaming long yet (or no room): look again then
                due = min(due, now + self.long_after)
        self.handle = loop.call_at(due, self._tick)

    def move_to_long(self) -> None:
        if not self.long:
            self.long = self.limits.to_long()

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        if self.watcher is not None:
            self.watcher.cancel()


def http_scheme(scope: Scope) -> str:
    """http/https for a WebSocket's ws/wss as well: X-Forwarded-Proto names the HTTP scheme."""
    scheme = scope.get("scheme", "http")
    return {"ws": "http", "wss": "https"}.get(scheme, scheme)


def _has_body(headers: RawHeaders) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def _receive_by(receive: Receive, idle: float | None, deadline: float | None) -> Message:
    """The next request-body message within `idle` seconds and before `deadline` (loop
    time); else ClientStalled."""
    wait = idle
    if deadline is not None:
        left = deadline - asyncio.get_running_loop().time()
        wait = left if wait is None else min(wait, left)
    try:
        async with asyncio.timeout(wait):
            return await receive()
    except TimeoutError:
        raise ClientStalled from None


async def _too_slow(scope: Scope, send: Send) -> None:
    await _refuse(scope, send, 408, reason="The request body did not arrive in time.")


async def _refuse(scope: Scope, send: Send, status: int, **error: Any) -> None:
    """The proxy's own answer instead of the app's (noted for the observers)."""
    record = record_of(scope)
    if record is not None:
        record.upstream_error = str(status)
    await send_error(send, status, **error)


class UpstreamProxy:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        max_connections: int = 256,
        trusted_proxies: list[str] | None = None,
        strip_cookie: Callable[[str], bool] | None = None,
        strip_tokens: bool = False,
        public_url: str | None = None,
        strip_cors_headers: bool = False,
        trace_headers: frozenset[bytes] = frozenset(),
        protected_headers: frozenset[str] = frozenset(),
        pool_timeout: float = 2.0,
        max_connections_per_client: int = 64,
        max_streaming_uploads: int = 64,
        max_websockets: int = 1024,
        max_long_responses: int = 1024,
        body_timeout: float = 300.0,
        buffer_request_body: int = 64 * 1024,
        own_authorization: bool = False,
    ) -> None:
        self.base = url.rstrip("/")
        self.trusted = TrustedProxies(trusted_proxies)
        self.limits = UpstreamLimits(
            max_connections=max_connections,
            max_per_client=max_connections_per_client,
            max_streaming_uploads=max_streaming_uploads,
            max_websockets=max_websockets,
            max_long_responses=max_long_responses,
            pool_timeout=pool_timeout,
            trusted_proxies=self.trusted,
        )
        self.body_timeout = body_timeout
        # bodies up to this size are read whole before an upstream connection is taken
        self.buffer_request_body = buffer_request_body
        # X-Session-Token and `Authorization: Bearer`: the Ory credential's other forms
        self.strip_tokens = strip_tokens
        self.special = _SPECIAL | _CREDENTIALS if strip_tokens else _SPECIAL
        if own_authorization:
            # the identity token rides in Authorization: the gatekeeper removed every client
            # Authorization (any path) and added the gate's own, which goes on as it is
            self.special = self.special - {b"authorization"}
        # with OpenTelemetry the app gets the gate's span as its parent, not the client's
        self.special |= trace_headers
        # the configured external URL is what the app is told, not the client's Host
        public = URL(public_url) if public_url else None
        self.public_host = public.raw_authority if public is not None else None
        self.public_scheme = public.scheme if public is not None else None
        # the gate's identity headers: a client's `Connection` must not remove them
        self.protected = frozenset(n.lower().replace("_", "-") for n in protected_headers)
        self.host_header = URL(self.base).raw_authority
        self.timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=timeout)
        self.max_connections = max_connections
        self.strip_cookie = strip_cookie
        # With CORS applied to everything the gate's policy replaces the app's headers.
        self.strip_cors_headers = strip_cors_headers
        self._session: aiohttp.ClientSession | None = None
        self.metrics: Metrics | None = None  # WebSockets open (gate.py wires it)

    # -- lifecycle --------------------------------------------------------------------------
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # UpstreamLimits admits at most max_connections HTTP exchanges and max_websockets
            # WebSockets, so aiohttp's own limit is only a backstop: no request waits in its
            # pool (where the wait would count against connect_timeout).
            connector = aiohttp.TCPConnector(
                limit=self.max_connections + self.limits.websockets.size + self.limits.long.size,
                limit_per_host=0,
                ttl_dns_cache=60,
                enable_cleanup_closed=True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self.timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- headers ----------------------------------------------------------------------------
    def upstream_headers(
        self, scope: Scope, headers: RawHeaders, trusted: bool | None = None
    ) -> list[tuple[str, str]]:
        """The headers the app receives. One pass; a list, since aiohttp copies it anyway.
        `trusted`: whether the peer is a trusted proxy, when the caller knows already."""
        out: list[tuple[str, str]] = []
        named: list[bytes] = []  # what `Connection` names: hop-by-hop for this request only
        special = self.special
        xff = proto = fhost = host = ""
        for name, value in headers:
            if name not in special:
                if b"_" in name and name.replace(b"_", b"-") in _NEVER_WITH_UNDERSCORE:
                    continue  # X_Forwarded_For: servers that fold `_` would trust it
                out.append((name.decode("latin-1"), value.decode("latin-1")))
            elif name == b"host":
                host = value.decode("latin-1")
            elif name == b"connection":
                named.extend(t.strip().lower() for t in value.split(b","))
            elif name == b"cookie":
                if self.strip_cookie is None:
                    out.append(("cookie", value.decode("latin-1")))
                    continue
                kept = without_session_cookies(value.decode("latin-1"), self.strip_cookie)
                if kept:
                    out.append(("cookie", kept))
            elif name == b"authorization":
                if not is_bearer(value):
                    out.append(("authorization", value.decode("latin-1")))
            elif name == b"x-session-token":
                continue  # every one of them, the one the gate used and any duplicate
            elif name in _TRUSTED_ONLY:
                if trusted is None:
                    trusted = self.trusted.peer_is_trusted(scope)
                if not trusted:
                    continue
                text = value.decode("latin-1")
                if name == b"x-forwarded-for":
                    xff = f"{xff}, {text}" if xff else text
                elif name == b"x-forwarded-proto":
                    proto = text
                elif name == b"x-forwarded-host":
                    fhost = text
                else:
                    out.append((name.decode("latin-1"), text))
            # else: hop-by-hop, dropped
        if named:
            # compared as the gate's identity headers are: case-blind, `_` as `-`
            drop = {n.decode("latin-1").replace("_", "-") for n in named if n} - self.protected
            out = [(n, v) for n, v in out if n.lower().replace("_", "-") not in drop]
        ctx = scope.get(CONTEXT)
        if ctx is not None:  # after the `Connection` drop: a client cannot name them away
            out.extend(for_app(ctx))
        peer = (scope.get("client") or ("", 0))[0]
        out.append(("X-Forwarded-For", f"{xff}, {peer}" if xff and peer else (xff or peer)))
        if self.public_host is not None:
            out.append(("X-Forwarded-Proto", self.public_scheme or "http"))
            out.append(("X-Forwarded-Host", self.public_host))
        else:
            out.append(("X-Forwarded-Proto", proto or http_scheme(scope)))
            if fhost or host:
                out.append(("X-Forwarded-Host", fhost or host))
        out.append(("Host", self.host_header))
        return out

    def response_headers(self, raw: tuple[tuple[bytes, bytes], ...]) -> RawHeaders:
        connection_named = {
            token.strip().lower().encode("latin-1")
            for name, value in raw
            if name.lower() == b"connection"
            for token in value.decode("latin-1").split(",")
        }
        out = []
        for name, value in raw:
            lname = name.lower()
            if lname in HOP_BY_HOP or lname in connection_named:
                continue
            if lname == b"date" or lname == REQUEST_ID:
                # the ASGI server adds its own Date, the gate its X-Request-Id: one of each
                continue
            if self.strip_cors_headers and lname.startswith(b"access-control-"):
                continue
            out.append((lname, value))
        return out

    def target(self, scope: Scope, *, websocket: bool = False) -> URL:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        target = self.base + raw_path.decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        if websocket:
            target = "ws" + target[4:] if target.startswith("http") else target
        return URL(target, encoded=True)

    # -- HTTP -------------------------------------------------------------------------------
    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: RawHeaders,
        *,
        error_send: Send | None = None,
    ) -> None:
        """Forward the request; `headers` are the client's, already stripped and annotated.

        The app's answer goes to `send`; the proxy's own (408, 429, 502, 503, 504) to
        `error_send` (default `send`), so they carry the gate's CORS headers where the app's
        do not."""
        answer = send if error_send is None else error_send
        limits = self.limits
        trusted = self.trusted.peer_is_trusted(scope)  # once per request: False when none set
        client = limits.client_key(scope, trusted)
        if not limits.enter(client) and not await limits.enter_waiting(client, scope):
            await _refuse(
                scope,
                answer,
                429,
                reason="Too many requests from this client are in progress.",
                headers=[RETRY_AFTER],
                head=scope["method"] == "HEAD",
            )
            return
        try:
            await self._forward(scope, receive, send, answer, headers, client, trusted)
        finally:
            limits.leave(client)

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        answer: Send,
        headers: RawHeaders,
        client: str,
        trusted: bool,
    ) -> None:
        method = scope["method"]
        upstream_headers = self.upstream_headers(scope, headers, trusted)
        idle = self.timeout.sock_read
        deadline: float | None = None
        if _has_body(headers):
            # Read up to buffer_request_body before taking an upstream connection: a slow
            # client with a small body then holds none. A client that goes silent for
            # upstream.timeout, or sends for longer than upstream.body_timeout, gets 408.
            deadline = asyncio.get_running_loop().time() + self.body_timeout
            parts: list[bytes] = []
            size = 0
            while True:
                try:
                    message = await _receive_by(receive, idle, deadline)
                except ClientStalled:
                    await _too_slow(scope, answer)
                    return
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                if chunk:
                    parts.append(chunk)
                    size += len(chunk)
                more = message.get("more_body", False)
                if not more or size > self.buffer_request_body:
                    break
            first = parts[0] if len(parts) == 1 else b"".join(parts)
        else:
            # asked even without a body: skipping it measured no faster and a longer p99
            message = await receive()  # the server has it already: no timer on the hot path
            if message["type"] == "http.disconnect":
                return
            first = message.get("body", b"")
            more = message.get("more_body", False)
        limits = self.limits
        if more and not limits.take_upload_share(client):
            await _refuse(
                scope,
                answer,
                429,
                reason="Too many uploads from this client are in progress.",
                headers=[RETRY_AFTER],
            )
            return
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch(task, receive, limits, idle)
        body: bytes | AsyncIterator[bytes] | None
        if more:
            # receive() has one reader: the body's until its last chunk, then the watcher's
            body = self._stream_body(first, receive, watch.arm, idle, deadline)
        else:
            body = first or None
            watch.arm()  # a client leaving while its request waits for a slot cancels it too
        admitted = False
        started = False
        try:
            admitted = limits.try_acquire(more) or await limits.acquire(more)
            if not admitted:
                await _refuse(
                    scope,
                    answer,
                    503,
                    reason="The protected app is busy; try again shortly.",
                    headers=[RETRY_AFTER],
                    head=method == "HEAD",
                )
                return
            record = record_of(scope)
            if record is not None:
                record.upstream_at = time.perf_counter()
            async with self.session().request(
                method,
                self.target(scope),
                headers=upstream_headers,
                data=body,
                allow_redirects=False,
                compress=None,
                chunked=None,
            ) as resp:
                if resp.status == 101:
                    # a switch nobody asked for (the gate never forwards `Upgrade` on HTTP):
                    # relayed, the client would take the connection for another protocol
                    resp.close()
                    log.warning("upstream %s: unsolicited 101 Switching Protocols", self.base)
                    await _refuse(scope, answer, 502, reason="The protected app answered badly.")
                    return
                await send(
                    {
                        "type": "http.response.start",
                        "status": resp.status,
                        "headers": self.response_headers(resp.raw_headers),
                    }
                )
                started = True
                if method == "HEAD":
                    await send({"type": "http.response.body", "body": b""})
                    return
                loop = asyncio.get_running_loop()
                watch.responding = loop.time()
                if resp.content_type == "text/event-stream":
                    watch.move_to_long()  # SSE: long-lived by design
                # `sending` lets the watch drop a client that takes no chunk for `idle`
                content = resp.content
                async for chunk in content.iter_chunked(CHUNK):
                    watch.sending = loop.time()
                    # the last chunk says so: one message less than an empty closing one
                    last = content.at_eof()
                    await send({"type": "http.response.body", "body": chunk, "more_body": not last})
                    watch.sending = None
                    if last:
                        return
                watch.sending = loop.time()
                await send({"type": "http.response.body", "body": b""})
        except asyncio.CancelledError:
            if watch.stalled:
                task.uncancel()
                limits.warn(
                    "stalled",
                    "client %s took no response data for %gs (upstream.timeout): dropped",
                    client,
                    idle,
                )
                return  # the server closes the connection: the response was not completed
            if watch.gone:
                task.uncancel()
                return  # the client left: the upstream request was abandoned with it
            raise
        except ClientGone:
            return
        except aiohttp.ConnectionTimeoutError:
            # could not even connect in time: the app is unreachable, not slow
            log.warning("upstream %s: connect timeout", self.base)
            await _refuse(scope, answer, 502, reason="The protected app could not be reached.")
        except (TimeoutError, aiohttp.ServerTimeoutError):
            if started:
                raise  # too late for a status: let the server drop the connection
            await _refuse(scope, answer, 504, reason="The protected app did not answer in time.")
        except (
            aiohttp.ClientConnectorError,
            aiohttp.ClientOSError,
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientConnectionError,  # e.g. the body could not be sent
            aiohttp.ClientPayloadError,
            aiohttp.ClientResponseError,
        ) as exc:
            if isinstance(exc.__cause__, ClientGone):
                return  # aiohttp wraps what the body iterator raised: the client left mid-upload
            if isinstance(exc.__cause__, ClientStalled) and not started:
                # a stalled upload must not hold an upstream connection for ever
                await _too_slow(scope, answer)
                return
            if started:
                raise
            log.warning("upstream %s failed: %s", self.base, type(exc).__name__)
            await _refuse(scope, answer, 502, reason="The protected app could not be reached.")
        finally:
            watch.stop()
            if admitted:
                limits.release(more, watch.long)
            if more:
                limits.give_upload_share(client)

    @staticmethod
    async def _stream_body(
        first: bytes,
        receive: Receive,
        on_end: Callable[[], None],
        idle: float | None,
        deadline: float | None,
    ) -> AsyncIterator[bytes]:
        if first:
            yield first
        while True:
            message = await _receive_by(receive, idle, deadline)
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body"):
                on_end()
                return

    # -- WebSocket --------------------------------------------------------------------------
    async def websocket(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: RawHeaders,
        ended: asyncio.Future[tuple[int, str]] | None = None,
    ) -> None:
        """Relay one WebSocket; close codes and reasons pass both ways. `ended`, when it
        resolves to (code, reason), closes both sides with them (the session is over)."""
        first = await receive()  # websocket.connect
        if first["type"] != "websocket.connect":
            return
        upstream_headers = self.upstream_headers(
            scope, [(n, v) for n, v in headers if n not in _WS_HANDSHAKE]
        )
        record = record_of(scope)
        if record is not None:
            record.upstream_at = time.perf_counter()
        try:
            ws = await self.session().ws_connect(
                self.target(scope, websocket=True),
                headers=upstream_headers,
                protocols=tuple(scope.get("subprotocols") or ()),
                autoclose=False,
                autoping=True,
                max_msg_size=0,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("upstream websocket failed: %s", type(exc).__name__)
            await send({"type": "websocket.close", "code": 1011})
            return
        await send({"type": "websocket.accept", "subprotocol": ws.protocol})

        async def client_to_upstream() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    # 1005 (no code) and 1006 (connection lost) cannot be sent in a frame
                    code = _close_code(message.get("code", 1000), {1005: 1000, 1006: 1001})
                    reason = _close_reason(message.get("reason"))
                    await ws.close(code=code, message=reason.encode())
                    return
                if message.get("text") is not None:
                    await ws.send_str(message["text"])
                elif message.get("bytes") is not None:
                    await ws.send_bytes(message["bytes"])

        async def upstream_to_client() -> None:
            code, reason = 1011, ""  # the app's connection ended without a close frame
            while True:
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await send({"type": "websocket.send", "text": msg.data})
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await send({"type": "websocket.send", "bytes": msg.data})
                elif msg.type == aiohttp.WSMsgType.CLOSE:
                    code = _close_code(msg.data, {1005: 1000})
                    reason = _close_reason(msg.extra)
                    await ws.close(code=code, message=reason.encode())  # the closing handshake
                    break
                elif msg.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG):
                    continue
                else:  # CLOSING, CLOSED, ERROR
                    break
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": code, "reason": reason})

        metrics = self.metrics
        if metrics is not None:
            metrics.websocket_opened()
        tasks = [
            asyncio.create_task(client_to_upstream()),
            asyncio.create_task(upstream_to_client()),
        ]
        waiting: list[asyncio.Future[object]] = [*tasks]
        if ended is not None:
            waiting.append(ended)  # type: ignore[arg-type]
        try:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if ended is not None and ended in done:
                code, reason = ended.result()
                for t in tasks:
                    t.cancel()
                with contextlib.suppress(Exception):
                    await send({"type": "websocket.close", "code": code, "reason": reason})
                await ws.close(code=code, message=reason.encode())
        finally:
            if metrics is not None:
                metrics.websocket_closed()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ws.close()


def _close_code(code: object, replace: dict[int, int]) -> int:
    """A code that may be sent in a close frame (RFC 6455 7.4); others become 1011."""
    if not isinstance(code, int):
        return 1011
    code = replace.get(code, code)
    if code in (1004, 1005, 1006, 1015) or not (1000 <= code <= 1014 or 3000 <= code <= 4999):
        return 1011
    return code


def _close_reason(reason: object) -> str:
    """At most 123 bytes of UTF-8 (a close frame's payload is 125 bytes with the code)."""
    if not isinstance(reason, str) or not reason:
        return ""
    raw = reason.encode("utf-8", "replace")[:123]
    return raw.decode("utf-8", "ignore")
