"""WebSocket checks beyond the handshake's session: its Origin, and the session's end.

* Origin (cross-site WebSocket hijacking): browsers send cookies on a cross-site WebSocket
  handshake and no CORS rule stops it, so a handshake whose credential is the session cookie
  must come from the gate's own origin (`public_url`, else the `Host`) or an allowed CORS
  origin (`cors.allowed_origins` / `allowed_origin_regex`), like the relay's state-changing
  calls; anything else is refused before the app (403). A handshake without `Origin` (not a
  browser) passes. Tokens (`X-Session-Token`, `Authorization: Bearer`) are not checked: a page
  cannot set headers on a WebSocket handshake, so a token there was put by a non-browser client,
  for which Origin means nothing.
* The session's end: an open socket is closed with 1008 when its session is revoked through the
  gate (the cache tells its `listeners`: `evict_session`, `evict_identity`; `clear()`, which
  says "some sessions were revoked, unknown which", re-validates every open socket at once),
  and when it lapses: when its cache entry expires (at most `cache.ttl`, at least
  `MIN_RECHECK`), the socket's credential is checked again through the authenticator (one
  whoami shared by every socket and request with that credential). One timer per socket, no
  polling. Kratos unreachable at a
  re-check is retried twice (1 s, then 2 s later), then the socket is closed with 1013 (fail
  closed: a session that cannot be checked is not trusted longer than `cache.ttl`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from starlette.types import Scope

from sessiongate.authenticate import Authenticator
from sessiongate.cache import CachedSession, SessionCache
from sessiongate.credentials import CookieMatcher, Credential, MalformedCredential, find_credential
from sessiongate.decide import Decider

log = logging.getLogger("sessiongate.websocket")

REVOKED = (1008, "The session was revoked.")
LAPSED = (1008, "The session ended.")
UNCHECKED = (1013, "The session could not be checked again; try again later.")
#: Shortest wait before a re-check: an entry that could not be cached (cache.ttl 0,
#: Ory-Session-Cache-For 0) must not become a whoami loop, and a short cache lifetime must not
#: make every open socket ask Kratos every second (1024 sockets, 1024 whoami/s).
MIN_RECHECK = 5.0
#: Kratos unreachable at a re-check: retried RETRIES times, RETRY_DELAY, 2 * RETRY_DELAY later.
RETRY_DELAY = 1.0
RETRIES = 2

Ending = tuple[int, str]


class SocketWatch:
    """One open socket: its credential and session, and `ended` (code, reason) once it must go."""

    __slots__ = ("attempts", "credential", "ended", "identity_id", "session_id", "task", "timer")

    def __init__(self, credential: Credential, session: CachedSession) -> None:
        self.credential = credential
        self.session_id = session.session_id
        self.identity_id = session.identity_id
        self.ended: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()
        self.timer: asyncio.Handle | None = None
        self.task: asyncio.Task[None] | None = None
        self.attempts = 0


class WebSocketGuard:
    def __init__(
        self,
        decider: Decider,
        cookie_matcher: CookieMatcher,
        authenticator: Authenticator,
        cache: SessionCache,
        is_allowed_origin: Callable[[str], bool],
    ) -> None:
        self.decider = decider
        self.cookie_matcher = cookie_matcher
        self.authenticator = authenticator
        self.is_allowed_origin = is_allowed_origin
        self._by_session: dict[str, set[SocketWatch]] = {}
        self._by_identity: dict[str, set[SocketWatch]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # the server's, set by `watch`
        cache.listeners.append(self)

    # -- the handshake ----------------------------------------------------------------------
    def refuses_origin(self, scope: Scope) -> bool:
        """A browser handshake from a foreign Origin that would be authenticated by cookie."""
        if self.decider.is_same_or_allowed_origin(scope, self.is_allowed_origin):
            return False
        try:
            credential = find_credential(scope["headers"], self.cookie_matcher)
        except MalformedCredential:
            return False  # the gatekeeper refuses it anyway
        return credential is not None and credential.kind == "cookie"

    # -- open sockets -----------------------------------------------------------------------
    def watch(self, scope: Scope, session: CachedSession | None) -> SocketWatch | None:
        """Start watching an admitted socket's session (None on a public path: no session)."""
        if session is None:
            return None
        try:
            credential = find_credential(scope["headers"], self.cookie_matcher)
        except MalformedCredential:
            credential = None
        if credential is None:  # cannot happen after an admission; be safe rather than sorry
            return None
        watch = SocketWatch(credential, session)
        self._loop = asyncio.get_running_loop()
        self._by_session.setdefault(watch.session_id, set()).add(watch)
        self._by_identity.setdefault(watch.identity_id, set()).add(watch)
        self._arm(watch, session.deadline - time.monotonic())
        return watch

    def release(self, watch: SocketWatch) -> None:
        """The socket is gone: drop its timer, its re-check and its index entries."""
        if watch.timer is not None:
            watch.timer.cancel()
        if watch.task is not None and watch.task is not asyncio.current_task():
            watch.task.cancel()
        for index, key in (
            (self._by_session, watch.session_id),
            (self._by_identity, watch.identity_id),
        ):
            group = index.get(key)
            if group is not None:
                group.discard(watch)
                if not group:
                    del index[key]

    @property
    def open_sockets(self) -> int:
        return sum(len(g) for g in self._by_session.values())

    def _end(self, watch: SocketWatch, ending: Ending) -> None:
        if not watch.ended.done():
            watch.ended.set_result(ending)
        if watch.timer is not None:
            watch.timer.cancel()

    def _arm(self, watch: SocketWatch, delay: float, floor: float = MIN_RECHECK) -> None:
        if watch.timer is not None:
            watch.timer.cancel()
        loop = asyncio.get_running_loop()
        watch.timer = loop.call_later(max(delay, floor), self._lapse, watch)

    def _lapse(self, watch: SocketWatch) -> None:
        watch.timer = None
        if watch.ended.done() or (watch.task is not None and not watch.task.done()):
            return
        watch.task = asyncio.get_running_loop().create_task(self._recheck(watch))

    async def _recheck(self, watch: SocketWatch) -> None:
        try:
            result = await self.authenticator.authenticate(watch.credential)
        except Exception:  # fail closed, and never leave the socket unwatched
            log.exception("WebSocket session re-check failed")
            self._end(watch, UNCHECKED)
            return
        if watch.ended.done():
            return
        if isinstance(result, CachedSession):
            watch.attempts = 0
            # a little past the entry's deadline: the cache must see it expired by then
            self._arm(watch, result.deadline - time.monotonic() + 0.05)
        elif result.kind in ("anonymous", "aal"):
            self._end(watch, LAPSED)
        elif watch.attempts < RETRIES:
            watch.attempts += 1
            self._arm(watch, RETRY_DELAY * watch.attempts, floor=0)
        else:
            self._end(watch, UNCHECKED)

    # -- the cache's EvictionListener -------------------------------------------------------
    def _elsewhere(self, callback: Callable[..., None], *args: object) -> bool:
        """Code outside the server's loop (another thread) evicted: hand the work to the loop."""
        loop = self._loop
        if loop is None or not self._by_session:
            return True  # no open socket: nothing to do
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return False
        loop.call_soon_threadsafe(callback, *args)
        return True

    def session_evicted(self, session_id: str, identity_id: str = "") -> None:
        if self._elsewhere(self.session_evicted, session_id, identity_id):
            return
        for watch in list(self._by_session.get(session_id, ())):
            if not identity_id or watch.identity_id == identity_id:
                self._end(watch, REVOKED)

    def identity_evicted(self, identity_id: str, except_session: str) -> None:
        if self._elsewhere(self.identity_evicted, identity_id, except_session):
            return
        for watch in list(self._by_identity.get(identity_id, ())):
            if watch.session_id != except_session:
                self._end(watch, REVOKED)

    def cleared(self) -> None:
        if self._elsewhere(self.cleared):
            return
        # some sessions were revoked, the gate does not know which: check every socket now
        loop = asyncio.get_running_loop()
        for group in self._by_session.values():
            for watch in group:
                if watch.timer is not None:
                    watch.timer.cancel()
                watch.timer = loop.call_soon(self._lapse, watch)
