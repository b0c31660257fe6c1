"""The session relay: Kratos' own session routes, mounted on the gate (beside the proxy).

So that the official Ory SDKs work with the gate as their base URL, the gate answers Kratos'
exact session routes (under `sessions_api.prefix`) by relaying them to Kratos. This module is
the relay's pipeline, one stage per module:

* `relay_routes`: which paths are relay routes; the `{id}` parsed by Kratos' UUID rules; the
  upstream URL built from validated parts only;
* reading the body here (64 KiB, a deadline of `ory.timeout`: 408; a client that left is never
  relayed), the credential, the cross-origin check;
* `relay_admission`: who may use the admin routes (off by default);
* `relay_handlers`: each route's cache upkeep around its Kratos call;
* `relay_upstream`: the Kratos call itself; `relay_rewrite`: Kratos URLs → the gate's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import httpx
from starlette.types import Receive, Scope, Send

from sessiongate.authenticate import Denial
from sessiongate.cache import CachedSession
from sessiongate.config import Settings
from sessiongate.credentials import Credential, MalformedCredential, find_credential
from sessiongate.gatekeeper import Gatekeeper
from sessiongate.herodot import error_bytes
from sessiongate.kratos import KratosClient
from sessiongate.metrics import UNMATCHED_ROUTE
from sessiongate.observe import record_of
from sessiongate.relay_admission import AdminAdmission
from sessiongate.relay_handlers import RelayHandlers
from sessiongate.relay_routes import Matched, RouteTable, canonical_id, reencode_query
from sessiongate.relay_upstream import Answer, Call
from sessiongate.request_body import GONE, read_body
from sessiongate.responses import send_error
from sessiongate.uuids import InvalidUUID

__all__ = ["MAX_BODY", "SessionsRelay"]

log = logging.getLogger("sessiongate.relay")

MAX_BODY = 64 * 1024
_GONE = GONE  # the client disconnected before its request was complete
_NO_SESSION = "No valid session cookie found."  # Kratos' 401 reason on DELETE /sessions/{id}


class SessionsRelay:
    def __init__(
        self,
        settings: Settings,
        kratos: KratosClient,
        gatekeeper: Gatekeeper,
        *,
        admin_keys: list[str],
        is_allowed_origin: Callable[[str], bool],
    ) -> None:
        api = settings.sessions_api
        self.table = RouteTable(api.prefix, admin=api.admin.enabled)
        self.prefix = self.table.prefix
        self.gatekeeper = gatekeeper
        self.cache = gatekeeper.cache
        self.body_deadline = settings.ory.timeout
        self.is_allowed_origin = is_allowed_origin
        self.admission = AdminAdmission(
            admin_keys, api.admin.allow_identities, gatekeeper.authenticator
        )
        self.handlers = RelayHandlers.for_gate(settings, kratos, gatekeeper)
        self.rewriter = self.handlers.rewriter
        # The shared mode: awaited after each route, so its evictions reach Redis before the
        # client hears back (set by the gate; None: evictions stay in this process)
        self.published: Callable[[], Awaitable[object]] | None = None

    def matches(self, path: str) -> bool:
        return self.table.kratos_path(path) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = self.table.kratos_path(scope["path"])
        assert path is not None
        method = scope["method"]
        found = self.table.find(method, path)
        record = record_of(scope)
        if record is not None:  # the route's fixed name, never the path
            record.route = found.route.name if isinstance(found, Matched) else UNMATCHED_ROUTE
        if not isinstance(found, Matched):
            if found:
                allow = [(b"allow", ", ".join(found).encode())]
                await send_error(send, 405, reason="Method not allowed.", headers=allow)
            else:
                await send_error(send, 404, reason="No such session route on this gate.")
            return
        route = found.route
        body = await self._read_body(receive)
        if body is _GONE:
            return  # nobody to answer: Kratos is not called on the client's behalf
        if body is None:
            await send_error(send, 408, reason="The request body stopped arriving.")
            return
        if isinstance(body, int):
            await send_error(send, 413, reason=f"Request bodies are limited to {MAX_BODY} bytes.")
            return
        headers = scope["headers"]
        try:
            # Admin routes: the caller's Authorization is an admin key or nothing, never a
            # session token sent on to Kratos.
            credential = find_credential(
                [h for h in headers if h[0] != b"authorization"] if route.admin else headers,
                self.gatekeeper.cookie_matcher,
            )
        except MalformedCredential as exc:
            await send_error(send, 400, reason=str(exc).capitalize() + ".")
            return
        if method in ("DELETE", "PATCH", "POST") and not self._origin_ok(scope, credential):
            await send_error(
                send,
                403,
                reason="Cross-origin request refused: the Origin is "
                "neither this gate nor an allowed CORS origin.",
            )
            return
        if route.admin:
            authorization = dict(headers).get(b"authorization", b"")
            refusal = await self.admission.admit(authorization, credential)
            if refusal is not None:
                status, reason = refusal
                retry = [(b"retry-after", b"2")] if status == 503 else None
                await send_error(send, status, reason=reason, headers=retry)
                return
        try:
            target_id = canonical_id(route, found.raw_id)
        except InvalidUUID as exc:
            await self._refuse_id(send, route.admin, credential, exc)
            return
        call = Call(
            scope,
            route,
            target_id,
            reencode_query(scope.get("query_string", b"")),
            headers,
            body,
            credential,
            method,
        )
        handler: Callable[[Call], Awaitable[Answer]] = getattr(self.handlers, route.handler)
        try:
            answer = await handler(call)
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            log.warning("Kratos relay %s %s failed: %s", method, path, type(exc).__name__)
            await send_error(
                send,
                503,
                reason="The session service is unreachable.",
                headers=[(b"retry-after", b"2")],
            )
            return
        if self.published is not None:
            await self.published()
        await self._send(scope, send, answer)

    async def _refuse_id(
        self, send: Send, admin: bool, credential: Credential | None, exc: InvalidUUID
    ) -> None:
        """Kratos' answer to an id it cannot parse, without calling Kratos with it.

        Admin routes: 400 (the caller is admitted already). `DELETE /sessions/{id}` checks the
        caller's session first (401), with no AAL rule, then the id (400), as Kratos does.
        """
        if not admin:
            result = await self._session_of(credential)
            if isinstance(result, Denial) and result.retry_after:
                retry = [(b"retry-after", result.retry_after.encode())]
                await send_error(send, 503, reason=result.reason, headers=retry)
                return
            if result is None or (isinstance(result, Denial) and result.kind != "aal"):
                await send_error(send, 401, reason=_NO_SESSION)
                return
        await send_error(send, 400, body=error_bytes(400, message=str(exc)))

    async def _session_of(self, credential: Credential | None) -> CachedSession | Denial | None:
        if credential is None:
            return None
        return await self.gatekeeper.authenticator.authenticate(credential)

    def _origin_ok(self, scope: Scope, credential: Credential | None) -> bool:
        """Cookie-authenticated state changes need our own or an allowed CORS Origin."""
        if credential is None or credential.kind != "cookie":
            return True
        return self.gatekeeper.decider.is_same_or_allowed_origin(scope, self.is_allowed_origin)

    # -- I/O --------------------------------------------------------------------------------
    async def _read_body(self, receive: Receive) -> bytes | int | object | None:
        """The body; its size (int) past MAX_BODY; None past the deadline; _GONE on disconnect."""
        return await read_body(receive, limit=MAX_BODY, deadline=self.body_deadline)

    @staticmethod
    async def _send(scope: Scope, send: Send, answer: Answer) -> None:
        body = b"" if scope["method"] == "HEAD" else answer.body
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
        if answer.status not in (204, 304):
            headers.append((b"content-length", str(len(answer.body)).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if answer.status == 204 else body})
