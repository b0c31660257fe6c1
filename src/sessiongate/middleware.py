"""ASGI middleware mode: the gate's decision around an app in the same process.

`SessionGateMiddleware(app, settings)` runs the same `Gatekeeper` as the proxy but forwards
nothing: it answers denials itself and, for admitted requests, annotates the scope the way
Starlette's `AuthenticationMiddleware` does (`request.user`, `request.auth`) plus
`request.state.ory_session` (built once per cached session and shared by its requests: treat
them as read-only), and replaces the identity headers so code that reads `X-User-Id`
stays safe. `require_session` is a dependency for FastAPI (or a helper for Starlette views).
"""

from __future__ import annotations

from typing import Any

import httpx
from starlette.authentication import AuthCredentials, BaseUser
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from sessiongate.config import Settings, load_settings, ory_api_key
from sessiongate.gatekeeper import Gatekeeper
from sessiongate.kratos import KratosClient
from sessiongate.revocations import Revocations


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
        ory = self.settings.ory
        self.kratos = KratosClient(
            ory.public_url,
            ory.admin_base,
            timeout=ory.timeout,
            api_key=ory_api_key(),
            max_connections=ory.max_inflight,
            transport=kratos_transport,
        )
        self.gatekeeper = Gatekeeper(self.settings, self.kratos)
        # The shared mode: `cache.evict_*` reach every process through Redis; an app that must
        # know they did before it answers awaits `revocations.flush()` (README, "Several cores")
        shared = self.settings.shared
        self.revocations = Revocations(self.gatekeeper.cache, shared) if shared.enabled else None
        self._start_shared = self.revocations is not None
        records = self.gatekeeper.authenticator.records  # ride on every stream append
        if self.revocations is not None and records is not None:
            self.revocations.append_hooks.append(records.append_hook)

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
        gatekeeper = self.gatekeeper
        admitted = gatekeeper.quick(scope) or await gatekeeper.check(scope, send)
        if admitted is None:
            return
        # The scope is this request's own (servers build one per request): annotate it in place,
        # as Starlette's AuthenticationMiddleware does.
        scope["headers"] = admitted.headers
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        entry = admitted.session
        if entry is None:
            state["ory_session"] = None
        else:
            annotations = entry.annotations
            if annotations is None:  # once per cached session, not per request
                annotations = entry.annotations = _annotations(entry.session)
            scope["user"], scope["auth"], state["ory_session"] = annotations
        await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def closing_send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                if self.revocations is not None:
                    await self.revocations.aclose()
                await self.kratos.aclose()
                await self.gatekeeper.aclose()
            await send(message)

        await self.app(scope, receive, closing_send)


def require_session(conn: HTTPConnection) -> dict[str, Any]:
    """The Ory session of this request, or HTTP 401. Use as `Depends(require_session)`."""
    session = conn.scope.get("state", {}).get("ory_session")
    if not isinstance(session, dict):
        raise HTTPException(status_code=401, detail="No valid Ory session.")
    return session
