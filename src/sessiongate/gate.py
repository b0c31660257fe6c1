"""The standalone gate: an ASGI app that authenticates every request and proxies it.

Reads like the request's path: CORS (Starlette's middleware: preflights are answered before
any authentication; under `cors.apply_to: sessions` only the relay's and the gate's own, the
app's go to the app), a 400 unless there is exactly one Host header, the gate's own health
endpoints (readiness cached for a second), the session relay routes, the sessions page (never
with CORS headers), then the `Gatekeeper` (credential → cache/whoami → decision → identity
headers) and the `UpstreamProxy`. With
`forward_auth.enabled`, `ForwardAuth` answers its decision path before all of that; without
`upstream.url` (a decision service only) every other app path is a 404.
Long-lived clients are opened on first use and closed on lifespan shutdown (or `aclose()`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import TYPE_CHECKING

import httpx
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from sessiongate.access_log import AccessLog
from sessiongate.cache import CachedSession
from sessiongate.config import (
    ConfigError,
    Settings,
    config_warnings,
    runtime_problems,
)
from sessiongate.decide import Decider
from sessiongate.forward_auth import ForwardAuth
from sessiongate.gatekeeper import Gatekeeper
from sessiongate.jwks_endpoint import JwksEndpoint
from sessiongate.kratos import KratosClient
from sessiongate.logs import current_writer, flush_logs
from sessiongate.metrics import Metrics
from sessiongate.observe import Observers, RequestRecord, record_of, with_headers
from sessiongate.proxy import UpstreamProxy
from sessiongate.relay import SessionsRelay
from sessiongate.relay_handlers import RelayHandlers
from sessiongate.relay_routes import ROUTE_NAMES
from sessiongate.responses import send_error, send_json
from sessiongate.sessions_page import SessionsPage
from sessiongate.tracing import CONTEXT, CURRENT, RequestContext, RequestIds, Tracing
from sessiongate.websocket_guard import WebSocketGuard

if TYPE_CHECKING:
    from sessiongate.revocations import Revocations

log = logging.getLogger("sessiongate")
HEALTH_ALIVE = "/health/alive"
HEALTH_READY = "/health/ready"
READY_CACHE_SECONDS = 1.0  # /health/ready asks Kratos at most this often
RAW_SEND = "sessiongate.raw_send"  # scope key: the server's send, bypassing CORS headers
# Test-only: answers carry `x-sessiongate-worker: <pid>`, so a test reaches each worker
TAG_WORKER_ENV = "SESSIONGATE_TEST_TAG_WORKER"

CORS_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
CORS_HEADERS = ["X-Session-Token", "Authorization", "Content-Type", "Accept", "X-Request-Id"]
CORS_EXPOSE = [
    "Link",
    "X-Total-Count",
    "Ory-Error-Id",
    "X-Kratos-Authenticated-Identity-Id",
    "Retry-After",
    "X-Request-Id",
]


class Gate:
    def __init__(
        self,
        settings: Settings,
        *,
        kratos_transport: httpx.AsyncBaseTransport | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """`tracing`: OpenTelemetry spans with a given provider; default: as the `OTEL_*`
        variables say (tracing.py)."""
        problems = runtime_problems(settings)
        if problems:
            raise ConfigError(problems)
        for warning in config_warnings(settings):
            log.warning("configuration: %s", warning)
        self.settings = settings
        self.tracing = tracing if tracing is not None else Tracing.from_environment()
        self.request_ids = RequestIds(settings.forwarded.trusted_proxies)
        self.kratos = KratosClient.from_settings(settings, transport=kratos_transport)
        self.kratos.tracing = self.tracing
        self.gatekeeper = Gatekeeper(settings, self.kratos)
        # the identity token's public keys, served without a session (jwks_endpoint.py)
        self.jwks = JwksEndpoint.of(self.gatekeeper.tokens, settings.identity_token.jwks_path)
        self.proxy = (
            None  # a decision service (forward_auth) with no app of its own
            if settings.upstream.url is None
            else self._upstream_proxy(settings)
        )
        gk = self.gatekeeper
        self.websockets = WebSocketGuard(
            gk.decider, gk.cookie_matcher, gk.authenticator, gk.cache, settings.cors.allows
        )
        api = settings.sessions_api
        self.relay = (
            SessionsRelay(
                settings,
                self.kratos,
                self.gatekeeper,
                admin_keys=api.admin.keys(),
                is_allowed_origin=settings.cors.allows,
            )
            if api.enabled
            else None
        )
        # the sessions page (sessions_page.py): its forms revoke through the relay's handlers
        self.sessions_page = (
            SessionsPage(
                settings,
                gk,
                self.relay.handlers
                if self.relay is not None
                else RelayHandlers.for_gate(settings, self.kratos, gk),
                relay_mounted=self.relay is not None,
            )
            if settings.sessions_page.enabled
            else None
        )
        self._ready, self._ready_until, self._ready_lock = False, 0.0, asyncio.Lock()
        # The shared mode: evictions go to every process through Redis (README, "Several cores")
        self.revocations: Revocations | None = None
        if settings.shared.enabled:
            # imported only here: redis-py and what it imports (~140 modules, ~9 MB of RSS)
            # serve the shared mode alone
            from sessiongate.revocations import Revocations

            self.revocations = Revocations(gk.cache, settings.shared)
        self._start_shared = self.revocations is not None
        records = gk.authenticator.records  # revocation records ride on every stream append
        if self.revocations is not None and records is not None:
            self.revocations.append_hooks.append(records.append_hook)
            # a cached session is proven only within the data set this process follows
            records.trusted = self.revocations.trusted_generation
        if self.relay is not None and self.revocations is not None:
            self.relay.published = self.revocations.flush
            self.relay.handlers.on_forget = self.revocations.forgot
        if self.sessions_page is not None and self.revocations is not None:
            self.sessions_page.published = self.revocations.flush
        # who watches each request (metrics, access log): a record per request when any does
        self.observers = Observers()
        # Prometheus metrics (metrics.py): an observer, and counters in the components
        self.metrics = Metrics(relay_routes=ROUTE_NAMES) if settings.metrics.enabled else None
        if self.metrics is not None:
            self.observers.add(self.metrics)
            gk.count_with(self.metrics)
            if self.proxy is not None:
                self.proxy.metrics = self.metrics
        if settings.log.access:
            self.observers.add(AccessLog(current_writer(), identity=settings.log.identity))
        if self.tracing is not None:
            self.observers.add(self.tracing)  # ends each request's server span
        self._worker_tag = (
            [(b"x-sessiongate-worker", str(os.getpid()).encode())]
            if os.environ.get(TAG_WORKER_ENV)
            else []
        )
        # forward auth (forward_auth.py): its path answered before anything else, CORS included
        # (the callers are proxies); off, requests go straight on
        fa = settings.forward_auth
        self.decisions = (
            ForwardAuth(self._requests, settings, gk, refuses_origin=self.websockets.refuses_origin)
            if fa.enabled
            else None
        )
        self._entry = self.decisions or self._requests
        self._no_app = (
            f"This gate has no app behind it; it answers forward-auth decisions at {fa.path}."
        )
        cors = settings.cors
        self.cors_all = cors.apply_to == "all"
        # only then does the app answer its own preflights; with CORS off an OPTIONS is an
        # ordinary request, which needs a session like any other
        self.app_preflights = cors.enabled and not self.cors_all
        self.cors = (
            CORSMiddleware(
                self._http,
                allow_origins=cors.allowed_origins,
                allow_origin_regex=cors.allowed_origin_regex,
                allow_credentials=cors.allow_credentials,
                allow_methods=CORS_METHODS,
                allow_headers=CORS_HEADERS,
                expose_headers=CORS_EXPOSE,
                max_age=cors.max_age,
            )
            if cors.enabled
            else None
        )

    def _upstream_proxy(self, settings: Settings) -> UpstreamProxy:
        assert settings.upstream.url is not None
        matcher = self.gatekeeper.cookie_matcher
        return UpstreamProxy(
            settings.upstream.url,
            timeout=settings.upstream.timeout,
            connect_timeout=settings.upstream.connect_timeout,
            max_connections=settings.upstream.max_connections,
            trusted_proxies=settings.forwarded.trusted_proxies,
            strip_cookie=matcher if settings.upstream.strip_credentials else None,
            strip_tokens=settings.upstream.strip_credentials,
            public_url=settings.public_url,
            strip_cors_headers=settings.cors.enabled and settings.cors.apply_to == "all",
            trace_headers=self.tracing.fields if self.tracing is not None else frozenset(),
            protected_headers=settings.spoofable_headers(),
            pool_timeout=settings.upstream.pool_timeout,
            max_connections_per_client=settings.upstream.max_connections_per_client,
            max_streaming_uploads=settings.upstream.max_streaming_uploads,
            max_websockets=settings.upstream.max_websockets,
            max_long_responses=settings.upstream.max_long_responses,
            body_timeout=settings.upstream.body_timeout,
            buffer_request_body=settings.upstream.buffer_request_body,
            # the identity token in Authorization: the gate's own, every client's was stripped
            own_authorization=self.gatekeeper.tokens is not None and self.gatekeeper.tokens.bearer,
        )

    @property
    def cache(self):  # type: ignore[no-untyped-def]
        """The session cache: `evict_session(id)`, `evict_identity(id)`, `clear()`."""
        return self.gatekeeper.cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if self._start_shared and kind != "lifespan":
            self._start_shared = False  # servers without lifespan events start it here
            self.revocations.start()  # type: ignore[union-attr]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind not in ("http", "websocket"):
            await self._entry(scope, receive, send)
            return
        # the request's id and trace context: for the app, Kratos, the client and the observers
        request_id = self.request_ids.of(scope)
        ctx = scope[CONTEXT] = RequestContext(
            request_id, scope["headers"], self.tracing is not None
        )
        reset = CURRENT.set(ctx)
        tag = [(b"x-request-id", request_id.encode()), *self._worker_tag]
        try:
            if self.observers:
                # one wrapper for both: the record notes the status, the answer gets the tag
                record, send = self.observers.start(scope, send, tag)
                record.request_id = request_id
                if self.tracing is not None:
                    self.tracing.start(scope, ctx)
                try:
                    await self._entry(scope, receive, send)
                finally:
                    self.observers.finish(scope, record)
            else:
                await self._entry(scope, receive, _tagged(send, tag))
        finally:
            CURRENT.reset(reset)

    async def _requests(self, scope: Scope, receive: Receive, send: Send) -> None:
        """HTTP requests and WebSockets (after the decision endpoint, when it is on)."""
        kind = scope["type"]
        if kind == "http":
            page = self.sessions_page
            if page is not None and page.owns(scope["path"]):
                # never with CORS headers: no other origin may read the page (its CSRF tokens)
                await self._http(scope, receive, send)
                return
            if self.cors is None or (not self.cors_all and self._app_preflight(scope)):
                await self._http(scope, receive, send)
                return
            if not self.cors_all:
                # CORS headers on the relay and on the gate's own answers, not on the app's
                scope[RAW_SEND] = send
            record = record_of(scope)
            if record is not None and Decider.is_preflight(scope["method"], scope["headers"]):
                record.decide("public", "preflight")  # CORSMiddleware may answer it itself
            await self.cors(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = self.websockets
        record = record_of(scope)
        one_host = Decider.has_one_host(scope["headers"])
        if not one_host or guard.refuses_origin(scope):
            # no single Host (origin and X-Forwarded-Host could disagree), or cross-site
            # WebSocket hijacking: closed before accept, the server answers 403
            if record is not None:
                record.decide(*(("denied", "foreign_origin") if one_host else _BAD_HOST))
            await send({"type": "websocket.close", "code": 1008})
            return
        proxy = self.proxy
        if proxy is None:  # a decision service: no app to relay a socket to
            if record is not None:
                record.decide("gate", "no_app")
            await send({"type": "websocket.close", "code": 1008})
            return
        admitted = await self.gatekeeper.check(scope, send)
        if admitted is None:
            return
        if record is not None:
            _admitted(record, admitted.session)
        # WebSockets have their own budget, apart from the HTTP requests' connections
        limits = proxy.limits
        client = await limits.admit_websocket(scope, send)
        if client is None:
            return
        watch = guard.watch(scope, admitted.session)
        try:
            ended = watch.ended if watch is not None else None
            await proxy.websocket(scope, receive, send, admitted.headers, ended)
        finally:
            limits.release_websocket(client)
            if watch is not None:
                guard.release(watch)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        record = record_of(scope)
        if not path.startswith("/"):  # `OPTIONS *`, or an absolute form the server kept whole
            if record is not None:
                record.decide("bad_request", "bad_target")
            await send_error(send, 400, reason="The request target must be a path.")
            return
        if not Decider.has_one_host(scope["headers"]):
            if record is not None:
                record.decide(*_BAD_HOST)
            await send_error(send, 400, reason="The request must carry exactly one Host header.")
            return
        if path in (HEALTH_ALIVE, HEALTH_READY):
            if record is not None:
                record.decide("gate", "health")
            await self._health(path, send)
            return
        if self.jwks is not None and path == self.jwks.path:
            if record is not None:
                record.decide("gate", "jwks")
            await self.jwks(scope, send)
            return
        if self.relay is not None and self.relay.matches(path):
            if record is not None:
                record.decide("relay")
            await self.relay(scope, receive, send)
            return
        page = self.sessions_page
        if page is not None and page.owns(path):
            await page(scope, receive, send)
            return
        proxy = self.proxy
        if proxy is None:
            if record is not None:
                record.decide("gate", "no_app")
            await send_error(send, 404, reason=self._no_app)
            return
        gatekeeper = self.gatekeeper
        if self.app_preflights and Decider.is_preflight(scope["method"], scope["headers"]):
            # `apply_to: sessions` and not the relay's (see `_app_preflight`): the app answers
            # its own preflights, which browsers send without credentials.
            if record is not None:
                record.decide("public", "preflight")
            headers = gatekeeper.identity.strip(scope["headers"])
            await proxy.forward(scope, receive, scope.get(RAW_SEND, send), headers)
            return
        admitted = gatekeeper.quick(scope) or await gatekeeper.check(scope, send)
        if admitted is not None:
            if record is not None:
                _admitted(record, admitted.session)
            # the app's answer bypasses CORS (apply_to: sessions); the proxy's own errors do not
            await proxy.forward(
                scope, receive, scope.get(RAW_SEND, send), admitted.headers, error_send=send
            )

    def _app_preflight(self, scope: Scope) -> bool:
        """A preflight for an app route while `cors.apply_to` is `sessions`: the app's to answer."""
        path = scope["path"]
        return (
            Decider.is_preflight(scope["method"], scope["headers"])
            and path not in (HEALTH_ALIVE, HEALTH_READY)
            and not (self.jwks is not None and path == self.jwks.path)
            and not (self.relay is not None and self.relay.matches(path))
        )

    async def _health(self, path: str, send: Send) -> None:
        if path == HEALTH_ALIVE:
            await send_json(send, 200, b'{"status":"ok"}')
            return
        shared = self.revocations
        if await self._kratos_ready():
            if shared is None:
                await send_json(send, 200, b'{"status":"ok"}')
                return
            # Redis down: still ready in eventual mode (Kratos is the authority), not in strict
            strict = self.settings.shared.consistency == "strict"
            ok = shared.healthy or not strict
            body = json.dumps(
                {
                    "status": "ok" if ok else "Redis is not reachable",
                    "shared": {
                        "redis": shared.state,
                        "consistency": "strict" if strict else "eventual",
                    },
                }
            ).encode()
            await send_json(
                send, 200 if ok else 503, body, headers=[] if ok else [(b"retry-after", b"2")]
            )
        else:
            body = json.dumps({"status": "Kratos is not reachable"}).encode()
            await send_json(send, 503, body, headers=[(b"retry-after", b"2")])

    async def _kratos_ready(self) -> bool:
        """Kratos' readiness, asked at most once per READY_CACHE_SECONDS (probes can be many)."""
        now = time.monotonic()
        if now < self._ready_until:
            return self._ready
        async with self._ready_lock:  # concurrent probes share one call
            if time.monotonic() >= self._ready_until:
                self._ready = await self.kratos.ready()
                self._ready_until = time.monotonic() + READY_CACHE_SECONDS
            return self._ready

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self._start_shared:
                    self._start_shared = False
                    self.revocations.start()  # type: ignore[union-attr]
                settings = self.settings
                if settings.upstream.url is not None:
                    log.info("sessiongate started: upstream %s", settings.upstream.url)
                if self.decisions is not None:
                    log.info(
                        "sessiongate started: forward-auth decisions at %s (source: %s)",
                        settings.forward_auth.path,
                        settings.forward_auth.source,
                    )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                log.info("sessiongate stopped: connections closed")
                flush_logs()  # the process may exit right after: every line written first
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        if self.revocations is not None:
            await self.revocations.aclose()
        if self.proxy is not None:
            await self.proxy.aclose()
        await self.kratos.aclose()
        await self.gatekeeper.aclose()
        if self.metrics is not None:
            self.metrics.close()
        if self.tracing is not None:
            self.tracing.shutdown()  # pending spans exported


_BAD_HOST = ("bad_request", "bad_host")


def _admitted(record: RequestRecord, session: CachedSession | None) -> None:
    if session is None:
        record.decide("public")
    else:
        record.decide("allowed")
        record.identity_id = session.identity_id


def _tagged(send: Send, tag: list[tuple[bytes, bytes]]) -> Send:
    """Every answer, the app's and the gate's own, carries these headers (X-Request-Id)."""

    async def tagging(message):  # type: ignore[no-untyped-def]
        kind = message["type"]
        if kind == "http.response.start" or kind == "websocket.accept":
            message = with_headers(message, tag)
        await send(message)

    return tagging
