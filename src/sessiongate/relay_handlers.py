"""What each relay route does around its Kratos call: keeping the gate's cache truthful.

After Kratos confirms (2xx) a revocation, logout, delete or extend, the affected cache entries
are dropped before the client hears back, so the very next request anywhere on the gate sees
the change. Only canonical ids (validated by `relay_routes`) are evicted. One caller never
evicts another identity's entries: `DELETE /sessions` from a caller the gate cannot resolve
(an aal1 session of an identity that needs aal2: whoami and `GET /sessions` refuse it, Kratos'
delete does not) evicts nothing, and those sessions lapse with their entries (`cache.ttl`).
`GET /sessions/whoami` is answered from the cache when it is fresh.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import httpx

from sessiongate.authenticate import Authenticator
from sessiongate.cache import NEGATIVE, CachedSession, Revocation, SessionCache
from sessiongate.config import Settings
from sessiongate.credentials import CookieMatcher, Credential, MalformedCredential, find_credential
from sessiongate.gatekeeper import Gatekeeper
from sessiongate.herodot import error_bytes
from sessiongate.identity_token import without_tokenized
from sessiongate.kratos import KratosAnswer, KratosClient
from sessiongate.relay_rewrite import UrlRewriter
from sessiongate.relay_upstream import Answer, Call, KratosRelay

log = logging.getLogger("sessiongate.relay")

WHOAMI_401 = error_bytes(401, reason="No valid session credentials found in the request.")
_NO_STORE = "private, no-cache, no-store, must-revalidate"


class RelayHandlers:
    def __init__(
        self,
        upstream: KratosRelay,
        authenticator: Authenticator,
        cache: SessionCache,
        rewriter: UrlRewriter,
    ) -> None:
        self.upstream = upstream
        self.authenticator = authenticator
        self.cache = cache
        self.rewriter = rewriter
        # told of an admin extend's forget_session (no cache listener hears it; the shared
        # mode tells the other processes)
        self.on_forget: Callable[[str], None] | None = None

    @classmethod
    def for_gate(
        cls, settings: Settings, kratos: KratosClient, gatekeeper: Gatekeeper
    ) -> RelayHandlers:
        """The handlers of this gate's relay routes, its Kratos calls rewritten to the gate
        (`sessions_api.prefix`). The relay uses them, and so does the sessions page, whose
        forms revoke through the same code (and keep the cache just as truthful)."""
        api = settings.sessions_api
        rewriter = UrlRewriter(
            api.prefix.rstrip("/"),
            [settings.ory.public_url, settings.ory.admin_base],
            lambda scope: gatekeeper.decider.origin(scope.get("scheme", "http"), scope["headers"]),
        )
        return cls(
            KratosRelay(kratos, rewriter, api.cookie_domain),
            gatekeeper.authenticator,
            gatekeeper.cache,
            rewriter,
        )

    async def whoami(self, call: Call) -> Answer:
        """From the cache when fresh (Kratos' own bytes), else relayed and then cached."""
        cred = call.credential
        if cred is None or call.query:  # tokenize_as and friends: always Kratos' fresh answer
            return await self.relay_public(call)
        hit = self.cache.get(cred.cache_key)
        metrics = self.authenticator.metrics
        if metrics is not None:  # a look into the cache like the gate's own
            strict = self.authenticator.strict
            if hit is NEGATIVE or (isinstance(hit, CachedSession) and not strict):
                metrics.cache_hit()
            else:
                metrics.cache_miss()
        if isinstance(hit, CachedSession) and not self.authenticator.strict:
            return _from_cache(hit)  # (strict mode: Kratos' fresh answer, never unproven cache)
        if hit is NEGATIVE:
            headers = [
                ("content-type", "application/json"),
                ("ory-error-id", ""),
                ("cache-control", _NO_STORE),
            ]
            return Answer(401, headers, WHOAMI_401)
        started = time.monotonic()
        answer = await self.relay_public(call)
        # Cache what Kratos said, as the gate would have; the client gets Kratos' own answer
        # (including a refreshed cookie after an extend, which is never cached).
        self.authenticator.classify(
            cred.cache_key,
            KratosAnswer(answer.status, httpx.Headers(answer.headers), answer.body),
            started,
        )
        return answer

    async def relay_public(self, call: Call) -> Answer:
        return await self.upstream.send(call, admin=False)

    async def relay_admin(self, call: Call) -> Answer:
        return await self.upstream.send(call, admin=True)

    async def logout_flow(self, call: Call) -> Answer:
        answer = await self.upstream.send(call, admin=False)
        answer.body = self.rewriter.rewrite_logout_url(answer.body, call.scope)
        return answer

    async def revoke_one(self, call: Call) -> Answer:
        """A user's `DELETE /sessions/{id}`. Kratos answers 204 for any session id and revokes
        only the caller's own: the eviction is scoped to the caller's identity, so naming
        someone else's session evicts (and refuses) nothing of theirs, here or elsewhere."""
        target = call.target_id if call.target_id not in (None, "whoami") else None
        current = await self.caller_session(call.credential) if target else None
        rev = target and Revocation(session_id=target)
        # a caller the gate cannot resolve (an aal1 session of a 2FA identity: Kratos revokes
        # for it, whoami refuses it) evicts unscoped: a revoked session kept would be worse
        identity = current.identity_id if current is not None else ""
        return await self._evicting(
            call, rev, lambda sid: self.cache.evict_session(sid, identity), admin=False
        )

    async def revoke_others(self, call: Call) -> Answer:
        current = await self.caller_session(call.credential)
        rev = current and Revocation(
            identity_id=current.identity_id, except_session=current.session_id
        )
        answer = await self._revoking(call, rev)
        if answer.ok and current is not None:
            self.cache.evict_identity(current.identity_id, except_session=current.session_id)
        # A caller the gate cannot resolve (see the module docstring) evicts nothing: no other
        # identity's entries may go because of it.
        return answer

    async def logout_browser(self, call: Call) -> Answer:
        current = await self.caller_session(call.credential)
        rev = current and Revocation(session_id=current.session_id)
        answer = await self._revoking(call, rev, ok=lambda a: a.status in (204, 303))
        # 204 (JSON) or 303 (browser) is success; a 303 can also be an error page, and then
        # evicting only costs one extra whoami, while keeping a logged-out session is wrong.
        if answer.status in (204, 303) and current is not None:
            self.cache.evict_session(current.session_id)
        return answer

    async def logout_api(self, call: Call) -> Answer:
        token = _session_token(call.body)
        target = None
        if token:
            try:
                # find_credential vets the token (visible ASCII, bounded) as for a header
                found = find_credential([(b"x-session-token", token.encode())], CookieMatcher([]))
                target = await self.caller_session(found)
            except MalformedCredential:
                target = None
        rev = target and Revocation(session_id=target.session_id)
        answer = await self._revoking(call, rev, forward_credential=False)
        if answer.ok and target is not None:
            self.cache.evict_session(target.session_id)
        return answer

    async def admin_disable(self, call: Call) -> Answer:
        rev = call.target_id and Revocation(session_id=call.target_id)
        return await self._evicting(call, rev, self.cache.evict_session)

    async def admin_extend(self, call: Call) -> Answer:
        answer = await self.upstream.send(call, admin=True)
        if answer.ok and call.target_id is not None:
            self.cache.forget_session(call.target_id)
            if self.on_forget is not None:
                self.on_forget(call.target_id)
            # An extend can bring an expired session back; the gate cannot tell which
            # credentials (remembered as 401s) belong to it, and 401s are cheap to recompute.
            self.cache.forget_negative()
        return answer

    async def admin_delete_identity(self, call: Call) -> Answer:
        rev = call.target_id and Revocation(identity_id=call.target_id)
        return await self._evicting(call, rev, self.cache.evict_identity)

    async def _evicting(
        self,
        call: Call,
        rev: Revocation | str | None,
        evict: Callable[[str], object],
        *,
        admin: bool = True,
    ) -> Answer:
        """Kratos' answer; on a 2xx, `evict(target id)` first, before the client hears back."""
        answer = await self._revoking(call, rev, admin=admin)
        if answer.ok and call.target_id not in (None, "whoami"):
            evict(call.target_id)
        return answer

    async def _revoking(
        self,
        call: Call,
        rev: Revocation | str | None,
        *,
        admin: bool = False,
        forward_credential: bool = True,
        ok: Callable[[Answer], bool] = lambda answer: answer.ok,
    ) -> Answer:
        """Relay a revocation, keeping the shared mode's revocation records (strict.py): in
        strict mode an open record first (none written: 503, nothing relayed), then the
        confirmed epoch after Kratos' success (eventual mode: only that, best effort)."""
        records = self.authenticator.records
        strict = self.authenticator.strict
        if records is not None and isinstance(rev, Revocation) and strict:
            try:
                await records.begin(rev)
            except Exception as exc:
                log.warning("strict mode: revocation record not written (%s)", type(exc).__name__)
                return _unavailable()
        answer = await self.upstream.send(
            call, admin=admin, **({} if forward_credential else {"forward_credential": False})
        )
        if records is None or not isinstance(rev, Revocation):
            return answer
        try:
            if ok(answer):
                await records.confirm(rev)
            elif strict:
                await records.abort(rev)
        except Exception as exc:
            log.warning("revocation record not confirmed (%s)", type(exc).__name__)
        return answer

    async def caller_session(self, credential: Credential | None) -> CachedSession | None:
        if credential is None:
            return None
        result = await self.authenticator.authenticate(credential)
        return result if isinstance(result, CachedSession) else None


def _from_cache(entry: CachedSession) -> Answer:
    headers = [
        ("content-type", "application/json; charset=utf-8"),
        ("x-kratos-authenticated-identity-id", entry.identity_id),
        ("cache-control", _NO_STORE),
        ("vary", "Cookie"),
    ]
    # source kratos keeps Kratos' `tokenized` in the (local) cached body;
    # a client that did not ask tokenize_as never gets it (Kratos would not send it)
    return Answer(200, headers, without_tokenized(entry.body))


def _unavailable() -> Answer:
    body = error_bytes(503, reason="The revocation store is unreachable.")
    headers = [("content-type", "application/json"), ("retry-after", "2")]
    return Answer(503, headers, body)


def _session_token(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    token = data.get("session_token") if isinstance(data, dict) else None
    return token if isinstance(token, str) and token else None
