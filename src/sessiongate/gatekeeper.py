"""Stages 1-4 for one request, shared by the proxy, the middleware and forward auth.

`Gatekeeper.quick(scope)` is the cache-hit path (no await, no parsing: a memo maps a digest of
the client's credential headers to its cache key). `Gatekeeper.check(scope, send)` either
answers the request itself (login redirect, 400, 401, 403, 429, 503) and returns None, or
returns a `Pass`: the validated session (None on a public path) and the request headers to hand
on: the client's headers minus every spoofable variant of the gate's identity headers, plus the
identity headers computed for that session. `judge(scope)` decides without answering (a `Pass`
or a `Denial`), `answer_denial` answers a `Denial`, `browser_redirect` says where a browser
would be sent instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import Scope, Send

from sessiongate.authenticate import NO_TOKEN, Authenticator, Denial
from sessiongate.cache import CachedSession, SessionCache
from sessiongate.config import Settings
from sessiongate.credentials import (
    CookieMatcher,
    MalformedCredential,
    credential_fingerprint,
    find_credential,
)
from sessiongate.decide import Decider
from sessiongate.identity_headers import IdentityHeaders
from sessiongate.identity_token import IdentityTokens
from sessiongate.kratos import KratosClient
from sessiongate.observe import record_of
from sessiongate.redirects import safe_return_to, with_query
from sessiongate.responses import send_error, send_redirect
from sessiongate.tracing import note_cache

if TYPE_CHECKING:
    from sessiongate.metrics import Metrics

log = logging.getLogger("sessiongate")
RawHeaders = list[tuple[bytes, bytes]]

WWW_AUTHENTICATE = (b"www-authenticate", b'Bearer realm="sessiongate"')
#: Scope key: the origin the request was made to, when it is not the gate's (forward auth)
REQUEST_ORIGIN = "sessiongate.request_origin"
FINGERPRINT_MEMO = 16_384
#: no credential at all (as against one Kratos refused: `authenticate.ANONYMOUS`)
NO_CREDENTIAL = Denial("anonymous", "No valid session credentials found in the request.")


@dataclass(slots=True)
class Pass:
    session: CachedSession | None
    headers: RawHeaders
    token: tuple[bytes, bytes] | None = None  # the identity token header, also in `headers`


class Gatekeeper:
    def __init__(self, settings: Settings, kratos: KratosClient) -> None:
        self.settings = settings
        self.kratos = kratos
        self.cookie_matcher = CookieMatcher(settings.ory.session_cookies)
        self.identity = IdentityHeaders(
            settings.identity_headers, settings.session_header, settings.spoofable_headers()
        )
        self.cache = SessionCache(
            ttl=settings.cache.ttl,
            max_entries=settings.cache.max_entries,
            negative_ttl=settings.cache.negative_ttl,
        )
        # the identity as a signed JWT (identity_token.py), kept on each cache entry
        self.tokens = IdentityTokens.from_settings(settings)
        self.authenticator = Authenticator(
            kratos,
            self.cache,
            self.identity,
            max_inflight=settings.ory.max_inflight,
            tokens=self.tokens,
        )
        # shared mode (shared_sessions.py, strict.py): Redis behind the local cache
        self.shared_clients: list[Any] = []
        if settings.shared.enabled:
            # imported only here: redis-py and what it imports (~140 modules, ~9 MB of RSS)
            # serve the shared mode alone
            from sessiongate.shared_sessions import attach

            self.shared_clients = attach(self.authenticator, settings)
        self.strict = self.authenticator.strict  # no admission from the local cache alone
        self.decider = Decider(settings)
        # credential fingerprint → cache key, both digests (parsing costs more than the rest
        # of the decision); bounded, emptied when full
        self._keys_by_fingerprint: dict[bytes, bytes] = {}
        self.metrics: Metrics | None = None

    def count_with(self, metrics: Metrics) -> None:
        """Count cache hits, misses, evictions and whoami calls into `metrics`."""
        self.metrics = metrics
        self.authenticator.metrics = metrics
        self.cache.metrics = metrics
        metrics.cache_size = self.cache.__len__

    def quick(self, scope: Scope) -> Pass | None:
        """The answer without awaiting anything, when it is a pass: a public path, or a client
        seen before (same credential headers) whose session is cached. Else None: call `check`.
        """
        headers: RawHeaders = scope["headers"]
        if self.decider.is_public(scope["path"], scope.get("raw_path")):
            return Pass(None, self.identity.strip(headers))
        fingerprint = credential_fingerprint(headers)
        if fingerprint is not None and not self.strict:
            key = self._keys_by_fingerprint.get(fingerprint)
            if key is not None:
                hit = self.cache.get(key)
                if isinstance(hit, CachedSession):
                    metrics = self.metrics
                    if metrics is not None:
                        metrics.cache_hit()
                    note_cache(True)
                    return self._pass(headers, hit)  # None (no token): `judge` answers it
        return None

    def _pass(self, headers: RawHeaders, entry: CachedSession) -> Pass | None:
        """The pass for an admitted session: the client's headers minus the gate's own, plus
        the session's identity headers and token; None when there is no token (no pass)."""
        forwarded = self.identity.strip(headers)
        entry.add_identity_headers(forwarded)
        tokens = self.tokens
        if tokens is None:
            return Pass(entry, forwarded)
        token = tokens.attach(entry)  # kept on the entry: signed again only near its end
        if token is None:
            return None
        forwarded.append(token)
        return Pass(entry, forwarded, token)

    async def check(self, scope: Scope, send: Send) -> Pass | None:
        """`quick`, else the full decision (whoami on a cache miss); answers denials itself."""
        result = await self.judge(scope)
        if isinstance(result, Pass):
            return result
        await self.answer_denial(scope, send, result)
        return None

    async def judge(self, scope: Scope) -> Pass | Denial:
        """The full decision, answering nothing: a `Pass`, or the `Denial` to answer."""
        admitted = self.quick(scope)
        if admitted is not None:
            return admitted
        headers: RawHeaders = scope["headers"]
        fingerprint = credential_fingerprint(headers)
        try:
            credential = find_credential(headers, self.cookie_matcher)
        except MalformedCredential as exc:
            return Denial("malformed", str(exc).capitalize() + ".")
        if credential is not None and fingerprint is not None:
            if len(self._keys_by_fingerprint) >= FINGERPRINT_MEMO:
                self._keys_by_fingerprint.clear()
            self._keys_by_fingerprint[fingerprint] = credential.cache_key
        if credential is None:
            result: CachedSession | Denial = NO_CREDENTIAL
        else:
            result = await self.authenticator.authenticate(credential)
        if isinstance(result, CachedSession):
            admitted = self._pass(headers, result)
            return NO_TOKEN if admitted is None else admitted  # never a request without token
        return result

    async def aclose(self) -> None:
        if self.authenticator.shared is not None:
            await self.authenticator.shared.aclose()
        for client in self.shared_clients:
            await client.aclose()

    def browser_redirect(self, scope: Scope, denial: Denial) -> str | None:
        """Where a browser navigation is sent instead of this denial (the login page, or
        Kratos' aal2 login, with `return_to`), or None: the denial is answered as is."""
        if denial.kind not in ("anonymous", "aal") or scope["type"] != "http":
            return None
        if not self.decider.is_browser_navigation(scope.get("method", "GET"), scope["headers"]):
            return None
        if denial.kind == "anonymous":
            return self.login_redirect(scope)
        return self._with_return_to(scope, denial.redirect_browser_to)

    async def answer_denial(
        self, scope: Scope, send: Send, denial: Denial, *, head: bool | None = None
    ) -> None:
        """Answer `denial` for this request. `head`: whether the answer goes without a body,
        when that is not the request's own method (a decision answers the proxy's call)."""
        location = self.browser_redirect(scope, denial)
        record = record_of(scope)
        if record is not None:
            record.denied(
                denial.kind, redirected=location is not None, credential=denial is not NO_CREDENTIAL
            )
        if location is not None:
            await send_redirect(send, location)
            return
        kind = denial.kind
        if kind == "anonymous":
            await self._deny(scope, send, 401, denial.reason, extra=[WWW_AUTHENTICATE], head=head)
        elif kind == "aal":
            await self._deny(
                scope, send, 403, body=denial.body, error_id="session_aal2_required", head=head
            )
        elif kind == "malformed":
            await self._deny(scope, send, 400, denial.reason, head=head)
        else:  # rate_limited: 429; unavailable, overloaded: 503 (fail closed)
            await self._deny(
                scope,
                send,
                429 if kind == "rate_limited" else 503,
                denial.reason,
                extra=[(b"retry-after", denial.retry_after.encode("latin-1"))],
                head=head,
            )

    async def _deny(
        self,
        scope: Scope,
        send: Send,
        status: int,
        reason: str = "",
        *,
        extra: RawHeaders | None = None,
        body: bytes | None = None,
        error_id: str = "",
        head: bool | None = None,
    ) -> None:
        if scope["type"] == "websocket":
            # Before accept, a close makes the server answer the handshake with 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        await send_error(
            send,
            status,
            reason=reason,
            error_id=error_id,
            headers=extra,
            body=body,
            head=scope.get("method") == "HEAD" if head is None else head,
        )

    def login_redirect(self, scope: Scope) -> str:
        """The login page, with `return_to` this request's URL (when it may go back there)."""
        return self._with_return_to(scope, self.settings.access.login_url)

    def _with_return_to(self, scope: Scope, target: str) -> str:
        origin = self.decider.origin(scope.get("scheme", "http"), scope["headers"])
        if origin is None:
            return target
        # a forward-auth decision knows the original request's own origin (its proxy said
        # so); safe_return_to still admits only the gate's origin or allowed ones
        original = self.decider.original_url(scope, scope.get(REQUEST_ORIGIN) or origin)
        return_to = safe_return_to(original, origin, self.decider.allowed_return_to)
        return with_query(target, return_to=return_to) if return_to else target
