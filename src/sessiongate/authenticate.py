"""Stage 2: credential → validated session, through the cache, failing closed.

`Authenticator.authenticate` returns the `CachedSession` when Kratos (or the cache) says the
session is valid, else a `Denial` saying why. Concurrent misses for one credential share one
whoami call; the number of whoami calls in flight is bounded (`ory.max_inflight`) and beyond it
requests are shed with 503 rather than queued, so a burst of junk tokens cannot become a burst
of Kratos calls. Kratos trouble (timeout, connection error, 5xx, unparsable body) is never a
pass and never a logout: it is 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from sessiongate.cache import NEGATIVE, UNAVAILABLE, CachedSession, SessionCache
from sessiongate.credentials import Credential
from sessiongate.identity_headers import IdentityHeaders
from sessiongate.identity_token import IdentityTokens
from sessiongate.kratos import KratosAnswer, KratosClient, KratosUnavailable
from sessiongate.metrics import whoami_outcome
from sessiongate.tracing import note_cache

if TYPE_CHECKING:
    from sessiongate.metrics import Metrics
    from sessiongate.shared_sessions import SharedSessions
    from sessiongate.strict import RevocationRecords

log = logging.getLogger("sessiongate.authenticate")

DenialKind = Literal["anonymous", "aal", "unavailable", "rate_limited", "overloaded", "malformed"]
_FRACTION = re.compile(r"(\.\d{6})\d+")


@dataclass(frozen=True, slots=True)
class Denial:
    kind: DenialKind
    reason: str = ""
    retry_after: str = ""
    body: bytes = b""  # Kratos' own body, for the AAL 403
    redirect_browser_to: str = ""


ANONYMOUS = Denial("anonymous", "No valid session credentials found in the request.")
# identity_token: no token, no pass (never an unsigned request to the app)
NO_TOKEN = Denial("unavailable", "The identity token could not be obtained.", retry_after="2")
# strict mode cannot prove a cached session unrevoked without Redis: fail closed
SHARED_UNAVAILABLE = Denial("unavailable", "The revocation store is unreachable.", retry_after="2")


def parse_time(text: str) -> float:
    """RFC 3339 (Go may send nanoseconds) → epoch seconds."""
    return datetime.fromisoformat(_FRACTION.sub(r"\1", text).replace("Z", "+00:00")).timestamp()


def _cache_for(answer: KratosAnswer) -> float | None:
    raw = answer.headers.get("ory-session-cache-for")
    if raw is None:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        return None


class Authenticator:
    def __init__(
        self,
        kratos: KratosClient,
        cache: SessionCache,
        identity_headers: IdentityHeaders,
        *,
        max_inflight: int = 64,
        tokens: IdentityTokens | None = None,
    ) -> None:
        self.kratos = kratos
        self.cache = cache
        self.identity_headers = identity_headers
        # identity_token.py: a token made with the entry (its session is parsed here anyway)
        self.tokens = tokens
        self.max_inflight = max_inflight
        # credential digest → (the shared whoami's future, when it was sent)
        self._inflight: dict[bytes, tuple[asyncio.Future[CachedSession | Denial], float]] = {}
        self.whoami_calls = 0
        # the shared mode (gatekeeper.py wires them): sessions in Redis, revocation records
        self.shared: SharedSessions | None = None
        self.records: RevocationRecords | None = None
        self.strict = False
        # cache hits and misses, whoami calls, sheds (gate.py / middleware.py wire it)
        self.metrics: Metrics | None = None

    async def authenticate(self, credential: Credential) -> CachedSession | Denial:
        return await self._authenticate(credential, rejoin=True)

    async def _authenticate(
        self, credential: Credential, *, rejoin: bool
    ) -> CachedSession | Denial:
        key = credential.cache_key
        metrics = self.metrics if rejoin else None  # a second look is the same lookup
        hit = self.cache.get(key)
        if hit is not None:
            if hit is NEGATIVE:
                if metrics is not None:
                    metrics.cache_hit()
                note_cache(True)
                return ANONYMOUS
            if not self.strict:
                if metrics is not None:
                    metrics.cache_hit()
                note_cache(True)
                return hit  # type: ignore[return-value]
            checked = await self._strict_hit(hit)  # type: ignore[arg-type]
            if checked is not None:
                if metrics is not None:
                    metrics.cache_hit()
                note_cache(checked is hit)
                return checked
        if metrics is not None:
            metrics.cache_miss()
        note_cache(False)  # whoami: this request's own, or one it shares
        pending = self._inflight.get(key)
        if pending is not None:
            future, leader_started = pending
            shared = await asyncio.shield(future)
            # A waiter may have arrived after the session was revoked through the gate while
            # the shared whoami (sent before) was in flight: that answer is stale for it.
            if not isinstance(shared, CachedSession):
                return shared
            if self.cache.revoked_since(shared.session_id, shared.identity_id, leader_started):
                return ANONYMOUS
            if self.cache.cleared_since(leader_started):
                # Only a clear() since (the shared mode drops the cache when Redis is lost):
                # no revocation, yet that answer is not trusted either. Ask again (with the
                # other waiters, once), never 401.
                if rejoin:
                    return await self._authenticate(credential, rejoin=False)
                return await self._ask_kratos(credential, key)
            return shared
        if len(self._inflight) >= self.max_inflight:
            if self.metrics is not None:
                self.metrics.request_shed()
            return Denial("overloaded", "Too many session checks in flight.", retry_after="1")
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = (future, time.monotonic())
        try:
            result = await self._ask_kratos(credential, key)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        else:
            future.set_result(result)
        finally:
            del self._inflight[key]
        return result

    async def _strict_hit(self, hit: CachedSession) -> CachedSession | Denial | None:
        """Strict mode: a cached session only after Redis proves it unrevoked (None: revoked,
        or not provable since Redis lost its records: ask whoami again)."""
        assert self.records is not None
        try:
            if await self.records.still_valid(hit):
                return hit
        except Exception as exc:
            log.warning("strict mode: revocation records unreadable (%s)", type(exc).__name__)
            return SHARED_UNAVAILABLE
        self.cache.forget_session(hit.session_id)
        return None

    async def _ask_kratos(self, credential: Credential, key: bytes) -> CachedSession | Denial:
        if self.shared is not None:
            result = await self.shared.validate(
                credential, key, lambda: self._whoami(credential, key)
            )
            if result is NEGATIVE:
                return ANONYMOUS
            return SHARED_UNAVAILABLE if result is UNAVAILABLE else result
        if self.strict:
            assert self.records is not None
            try:
                stamp = await self.records.stamp()
            except Exception as exc:
                log.warning("strict mode: revocation epoch unreadable (%s)", type(exc).__name__)
                return SHARED_UNAVAILABLE
            result = await self._whoami(credential, key)
            if isinstance(result, CachedSession):
                self.records.tag(result, stamp)
            return result
        return await self._whoami(credential, key)

    async def _whoami(self, credential: Credential, key: bytes) -> CachedSession | Denial:
        started = time.monotonic()
        self.whoami_calls += 1
        metrics = self.metrics
        if metrics is None:
            try:
                answer = await self.kratos.whoami(credential)
            except KratosUnavailable as exc:
                return self._unreachable(exc)
            return self._no_token_noted(self.classify(key, answer, started))
        metrics.whoami_started()
        outcome = ""  # none when the call is abandoned (the request's task cancelled)
        try:
            answer = await self.kratos.whoami(credential)
            outcome = whoami_outcome(answer.status)
        except KratosUnavailable as exc:
            outcome = exc.kind
            return self._unreachable(exc)
        finally:
            metrics.whoami_done(outcome, time.monotonic() - started)
        return self._no_token_noted(self.classify(key, answer, started))

    @staticmethod
    def _no_token_noted(result: CachedSession | Denial) -> CachedSession | Denial:
        if result is NO_TOKEN:
            log.warning(
                "Kratos whoami answered 200 without a valid `tokenized` JWT for "
                "identity_token.tokenize_as (a Kratos before v1.1 ignores it); failing closed"
            )
        return result

    @staticmethod
    def _unreachable(exc: KratosUnavailable) -> Denial:
        log.warning("Kratos whoami failed: %s", exc)
        return Denial("unavailable", "The session service is unreachable.", retry_after="2")

    def classify(self, key: bytes, answer: KratosAnswer, started: float) -> CachedSession | Denial:
        """Turn whoami's answer into a session or a denial, caching what may be cached.

        `started` is when the whoami request was sent (monotonic): an answer that began before
        an eviction of its session is not cached (see `SessionCache.put`).
        """
        status = answer.status
        if status == 200:
            entry = self._parse_session(answer)
            if entry is None:
                log.warning("Kratos whoami answered 200 with a body that is not a session")
                return Denial(
                    "unavailable", "The session service answered nonsense.", retry_after="2"
                )
            if isinstance(entry, Denial):
                return entry
            entry.cache_for = _cache_for(answer)
            tokens = self.tokens
            if entry.token is not None and tokens is not None and tokens.source == "kratos":
                # Kratos' token is kept until its own exp, never longer: then whoami again
                left = entry.token_renew - time.monotonic()
                entry.cache_for = left if entry.cache_for is None else min(entry.cache_for, left)
            self.cache.put(key, entry, started=started, cache_for=entry.cache_for)
            return entry
        if status == 401:
            self.cache.put_negative(key)
            return ANONYMOUS
        if status == 403:
            redirect = self._aal_redirect(answer.body)
            if redirect is not None:
                return Denial(
                    "aal",
                    "A second factor is required.",
                    body=answer.body,
                    redirect_browser_to=redirect,
                )
        if status == 429:
            return Denial(
                "rate_limited",
                "The session service is rate limiting.",
                retry_after=answer.headers.get("retry-after", "1"),
            )
        log.warning("Kratos whoami answered %d; failing closed", status)
        return Denial("unavailable", "The session service failed.", retry_after="2")

    def _parse_session(self, answer: KratosAnswer) -> CachedSession | Denial | None:
        """A cache entry, ANONYMOUS for an inactive session, None for a body that is no session."""
        try:
            session: Any = json.loads(answer.body)
            session_id, identity_id = str(session["id"]), str(session["identity"]["id"])
            expires_at = parse_time(session["expires_at"])
        except (ValueError, KeyError, TypeError):
            return None
        if session.get("active") is not True:
            return ANONYMOUS
        entry = CachedSession.of(
            session_id,
            identity_id,
            expires_at,
            answer.body,
            self.identity_headers.compute(session),
        )
        # Kratos' token is read now: the entry lives no longer than it (None: Kratos sent none,
        # as for the relay's whoami, which does not ask for one: nothing is cached). The gate's
        # own token is signed by the first request that passes (IdentityTokens.attach), never
        # for a session only the relay looked up.
        tokens = self.tokens
        if (
            tokens is not None
            and tokens.source == "kratos"
            and tokens.from_session(entry, session) is None
        ):
            return NO_TOKEN
        return entry

    @staticmethod
    def _aal_redirect(body: bytes) -> str | None:
        try:
            data = json.loads(body)
            if data["error"]["id"] != "session_aal2_required":
                return None
            url = data.get("redirect_browser_to") or data["error"]["details"]["redirect_browser_to"]
        except (ValueError, KeyError, TypeError):
            return None
        return url if isinstance(url, str) else None
