"""ASGI middleware mode: the gate's decision around an app in the same process.

`SessionGateMiddleware(app, settings)` runs the same `Gatekeeper` as the proxy but forwards
nothing: it answers denials itself and, for admitted requests, annotates the scope the way
Starlette's `AuthenticationMiddleware` does (`request.user`, `request.auth`) plus
`request.state.ory_session` (built once per cached session and shared by its requests: treat
them as read-only), and replaces the identity headers so code that reads `X-User-Id`
stays safe. On public paths and CORS preflights (which pass without a session, only under
`cors.apply_to: sessions`) `request.user` is Starlette's `UnauthenticatedUser` and
`request.auth` empty `AuthCredentials`. A request without exactly one Host header gets 400, as
in proxy mode. Whoami calls carry the request's own `traceparent`/`tracestate` and, from a
trusted proxy, its `X-Request-Id` (tracing.py); the middleware makes no ids, spans or access
lines of its own: the host application owns those. WebSockets go through the proxy mode's
`WebSocketGuard`: foreign-Origin cookie handshakes are refused, and a socket whose session ends
is closed on both sides (`_WatchedSocket`). With `sessions_page.enabled` the middleware answers
the sessions page itself, before the app. `require_session` is a dependency for FastAPI (or a
helper for Starlette views).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import httpx
from starlette.authentication import AuthCredentials, BaseUser, UnauthenticatedUser
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessiongate.cache import CachedSession
from sessiongate.config import Settings, config_warnings, load_settings
from sessiongate.decide import Decider
from sessiongate.gatekeeper import Gatekeeper, Pass
from sessiongate.jwks_endpoint import JwksEndpoint
from sessiongate.kratos import KratosClient
from sessiongate.metrics import Metrics
from sessiongate.observe import Observers, record_of
from sessiongate.relay_handlers import RelayHandlers
from sessiongate.relay_routes import ROUTE_NAMES
from sessiongate.responses import send_error
from sessiongate.sessions_page import SessionsPage
from sessiongate.tracing import CURRENT, RequestContext, RequestIds
from sessiongate.websocket_guard import SocketWatch, WebSocketGuard

if TYPE_CHECKING:
    from sessiongate.revocations import Revocations

log = logging.getLogger("sessiongate")


class OryUser(BaseUser):
    """`request.user` for an Ory session: the identity and the whole session JSON."""

    def __init__(self, session: dict[str, Any]) -> None:
        self.session = session
        self.identity_data: dict[str, Any] = session.get("identity") or {}

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        traits = self.identity_data.get("traits")
        email = traits.get("email") if isinstance(traits, dict) else None
        return email if isinstance(email, str) else self.identity_id

    @property
    def identity(self) -> str:
        """Starlette's unique user identifier: the Ory identity id."""
        return self.identity_id

    @property
    def identity_id(self) -> str:
        return str(self.identity_data.get("id", ""))

    @property
    def session_id(self) -> str:
        return str(self.session.get("id", ""))

    @property
    def aal(self) -> str:
        return str(self.session.get("authenticator_assurance_level", ""))


def _annotations(session: dict[str, Any]) -> tuple[OryUser, AuthCredentials, dict[str, Any]]:
    aal = session.get("authenticator_assurance_level", "aal1")
    return OryUser(session), AuthCredentials(["authenticated", aal]), session


class SessionGateMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | None = None,
        *,
        kratos_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.app = app
        self.settings = settings if settings is not None else load_settings()
        self.kratos = KratosClient.from_settings(self.settings, transport=kratos_transport)
        self.gatekeeper = Gatekeeper(self.settings, self.kratos)
        # identity_token: the token rides in the app's headers like the identity headers; the
        # public keys are served here without a session, as in proxy mode
        self.jwks = JwksEndpoint.of(self.gatekeeper.tokens, self.settings.identity_token.jwks_path)
        # as in proxy mode: preflights pass without a session only under `cors.apply_to:
        # sessions`; with CORS off an OPTIONS needs a session like any other request
        cors = self.settings.cors
        self.app_preflights = cors.enabled and cors.apply_to == "sessions"
        gk = self.gatekeeper
        # as in proxy mode: cross-site handshakes refused, sockets closed with their session
        self.websockets = WebSocketGuard(
            gk.decider, gk.cookie_matcher, gk.authenticator, gk.cache, cors.allows
        )
        # who watches each request (metrics): a record per request when any does
        self.observers = Observers()
        # Prometheus metrics: no listener here; the host mounts `metrics_app` where it wants
        self.metrics = Metrics(relay_routes=ROUTE_NAMES) if self.settings.metrics.enabled else None
        self.metrics_app = self.metrics.asgi_app() if self.metrics is not None else None
        if self.metrics is not None:
            self.observers.add(self.metrics)
            gk.count_with(self.metrics)
        self._trusted = RequestIds(self.settings.forwarded.trusted_proxies).trusted
        for warning in config_warnings(self.settings):
            log.warning("configuration: %s", warning)
        # The shared mode: `cache.evict_*` reach every process through Redis; an app that must
        # know they did before it answers awaits `revocations.flush()` (README, "Several cores")
        shared = self.settings.shared
        self.revocations: Revocations | None = None
        if shared.enabled:
            # imported only here: redis-py and what it imports (~140 modules, ~9 MB of RSS)
            # serve the shared mode alone
            from sessiongate.revocations import Revocations

            self.revocations = Revocations(self.gatekeeper.cache, shared)
        self._start_shared = self.revocations is not None
        records = self.gatekeeper.authenticator.records  # ride on every stream append
        if self.revocations is not None and records is not None:
            self.revocations.append_hooks.append(records.append_hook)
            # a cached session is proven only within the data set this process follows
            records.trusted = self.revocations.trusted_generation
        # the sessions page (sessions_page.py), answered before the app; no relay here, so its
        # logout link is Kratos' own
        self.sessions_page = (
            SessionsPage(
                self.settings,
                gk,
                RelayHandlers.for_gate(self.settings, self.kratos, gk),
                relay_mounted=False,
            )
            if self.settings.sessions_page.enabled
            else None
        )
        if self.sessions_page is not None and self.revocations is not None:
            self.sessions_page.published = self.revocations.flush

    @property
    def cache(self):  # type: ignore[no-untyped-def]
        return self.gatekeeper.cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._start_shared:
            self._start_shared = False
            self.revocations.start()  # type: ignore[union-attr]
        if scope["type"] not in ("http", "websocket"):
            if scope["type"] == "lifespan":
                await self._lifespan(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # what Kratos calls made for this request carry (tracing.outgoing)
        trusted = self._trusted
        rid = RequestIds.incoming(scope) if trusted and trusted.peer_is_trusted(scope) else ""
        reset = CURRENT.set(RequestContext(rid, scope["headers"], False))
        try:
            if not self.observers:
                await self._gated(scope, receive, send)
                return
            record, send = self.observers.start(scope, send)
            record.request_id = rid
            try:
                await self._gated(scope, receive, send)
            finally:
                self.observers.finish(scope, record)
        finally:
            CURRENT.reset(reset)

    async def _gated(self, scope: Scope, receive: Receive, send: Send) -> None:
        record = record_of(scope)
        one_host = Decider.has_one_host(scope["headers"])
        if not one_host or (scope["type"] == "websocket" and self.websockets.refuses_origin(scope)):
            if record is not None:
                record.decide(
                    *(("denied", "foreign_origin") if one_host else ("bad_request", "bad_host"))
                )
            if scope["type"] == "http":
                await send_error(
                    send, 400, reason="The request must carry exactly one Host header."
                )
            else:  # before accept, a close makes the server refuse the handshake
                await send({"type": "websocket.close", "code": 1008})
            return
        if self.jwks is not None and self.jwks.matches(scope):
            if record is not None:
                record.decide("gate", "jwks")
            await self.jwks(scope, send)
            return
        page = self.sessions_page
        if page is not None and scope["type"] == "http" and page.owns(scope["path"]):
            await page(scope, receive, send)
            return
        gatekeeper = self.gatekeeper
        if (
            scope["type"] == "http"
            and self.app_preflights
            and Decider.is_preflight(scope["method"], scope["headers"])
        ):
            # the app's CORS layer answers it; browsers send preflights without credentials
            admitted = Pass(None, gatekeeper.identity.strip(scope["headers"]))
            if record is not None:
                record.decide("public", "preflight")
        else:
            admitted = gatekeeper.quick(scope) or await gatekeeper.check(scope, send)
            if admitted is None:
                return
            if record is not None:
                entry = admitted.session
                record.decide("public" if entry is None else "allowed")
                record.identity_id = "" if entry is None else entry.identity_id
        if record is not None:
            record.upstream_at = time.perf_counter()  # the app's time is not the gate's
        # The scope is this request's own (servers build one per request): annotate it in place,
        # as Starlette's AuthenticationMiddleware does.
        scope["headers"] = admitted.headers
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        entry = admitted.session
        if entry is None:
            # public path: `request.user` must work in a view, as under AuthenticationMiddleware
            scope["user"], scope["auth"] = UnauthenticatedUser(), AuthCredentials()
            state["ory_session"] = None
        else:
            annotations = entry.annotations
            if annotations is None:  # once per cached session, not per request
                annotations = entry.annotations = _annotations(entry.session)
            scope["user"], scope["auth"], state["ory_session"] = annotations
        if scope["type"] == "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        if metrics is None:
            await self._socket(scope, receive, send, entry)
            return
        accepted = False

        async def counting(message: Message) -> None:  # the socket is open once the app accepts
            nonlocal accepted
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True
                metrics.websocket_opened()
            await send(message)

        try:
            await self._socket(scope, receive, counting, entry)
        finally:
            if accepted:
                metrics.websocket_closed()

    async def _socket(
        self, scope: Scope, receive: Receive, send: Send, entry: CachedSession | None
    ) -> None:
        """A WebSocket to the app, closed by the gate when its session ends."""
        watch = self.websockets.watch(scope, entry)
        if watch is None:
            await self.app(scope, receive, send)
            return
        try:
            await _WatchedSocket(watch, receive, send).run(self.app, scope)
        finally:
            self.websockets.release(watch)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def closing_send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                if self.revocations is not None:
                    await self.revocations.aclose()
                await self.kratos.aclose()
                await self.gatekeeper.aclose()
                if self.metrics is not None:
                    self.metrics.close()
            await send(message)

        await self.app(scope, receive, closing_send)


class SocketClosed(OSError):
    """The app sent on a socket the gate closed (ASGI: send on a closed connection)."""


class _WatchedSocket:
    """The app's side of a socket whose session is watched: when the watch ends, the client
    gets a close with its code and reason, the app a `websocket.disconnect` (at its pending or
    next receive), and later sends from the app raise `SocketClosed`."""

    def __init__(self, watch: SocketWatch, receive: Receive, send: Send) -> None:
        self.ended = watch.ended
        self._receive, self._send = receive, send
        self.closed = False  # a close went to the client, from the app or from the gate

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        closer = asyncio.ensure_future(self._close_when_ended())
        try:
            await app(scope, self.receive, self.send)
        except SocketClosed:
            if not self.ended.done():
                raise
        finally:
            closer.cancel()
            if self.ended.done():  # the app returned at the disconnect before the close went
                await self._close()

    async def _close_when_ended(self) -> None:
        await asyncio.wait((self.ended,))  # not `await`: cancelling this must not cancel it
        await self._close()

    async def _close(self) -> None:
        if not self.closed:
            self.closed = True
            code, reason = self.ended.result()
            # before accept this refuses the handshake (403); after, a close frame
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    def _disconnect(self) -> dict[str, Any]:
        code, reason = self.ended.result()
        return {"type": "websocket.disconnect", "code": code, "reason": reason}

    async def receive(self) -> dict[str, Any]:
        if self.ended.done():
            return self._disconnect()
        receiving = asyncio.ensure_future(self._receive())
        await asyncio.wait((receiving, self.ended), return_when=asyncio.FIRST_COMPLETED)
        if receiving.done():
            return receiving.result()
        receiving.cancel()
        await self._close()
        return self._disconnect()

    async def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            if self.ended.done():
                raise SocketClosed("the session ended; the gate closed this socket")
        elif message["type"] == "websocket.close":
            self.closed = True
        await self._send(message)


def require_session(conn: HTTPConnection) -> dict[str, Any]:
    """The Ory session of this request, or HTTP 401. Use as `Depends(require_session)`."""
    session = conn.scope.get("state", {}).get("ory_session")
    if not isinstance(session, dict):
        raise HTTPException(status_code=401, detail="No valid Ory session.")
    return session
