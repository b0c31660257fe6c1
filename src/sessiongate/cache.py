"""Stage 2a: the session cache. Bounded, per-entry deadlines, indexed for eviction.

Rules the gate's correctness rests on:
* keys are digests of credentials (see `Credential.cache_key`), never raw tokens;
* an entry lives min(cache.ttl, the session's own `expires_at`, `Ory-Session-Cache-For`), so
  an expired session is never served from cache;
* 401s are cached briefly (`negative_ttl`) to absorb retries with a dead credential;
* LRU-bounded at `max_entries`;
* entries can be evicted by session id or identity id, and an eviction also leaves a tombstone
  so that a whoami answer already in flight when the session was revoked cannot re-enter the
  cache afterwards (`put` refuses answers that started before the tombstone).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class CachedSession:
    """One validated session, with everything the hot path needs already computed."""

    session_id: str
    identity_id: str
    expires_at: float  # wall-clock epoch seconds, from the session's `expires_at`
    session: dict[str, Any]
    body: bytes  # whoami's body as Kratos sent it (the relay serves it again)
    identity_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    deadline: float = 0.0  # monotonic time after which the entry is dead


#: Marker stored for credentials Kratos rejected with 401.
NEGATIVE = object()


class SessionCache:
    def __init__(
        self,
        *,
        ttl: float,
        max_entries: int,
        negative_ttl: float,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.negative_ttl = negative_ttl
        self._monotonic = monotonic
        self._wall = wall
        self._entries: OrderedDict[bytes, tuple[float, Any]] = OrderedDict()
        self._by_session: dict[str, set[bytes]] = {}
        self._by_identity: dict[str, set[bytes]] = {}
        # Tombstones: id → (monotonic time of eviction, session id to spare or "").
        self._revoked_sessions: dict[str, float] = {}
        self._revoked_identities: dict[str, tuple[float, str]] = {}
        self._cleared_at = float("-inf")

    def __len__(self) -> int:
        return len(self._entries)

    # -- reads ------------------------------------------------------------------------------
    def get(self, key: bytes) -> CachedSession | object | None:
        """The live entry (a CachedSession or NEGATIVE), or None."""
        item = self._entries.get(key)
        if item is None:
            return None
        deadline, value = item
        if self._monotonic() >= deadline:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return value

    # -- writes -----------------------------------------------------------------------------
    def put(
        self, key: bytes, entry: CachedSession, *, started: float, cache_for: float | None = None
    ) -> bool:
        """Cache a whoami answer that was requested at monotonic time `started`.

        Returns False (and caches nothing) when the answer cannot be trusted any more: the
        session or its identity was evicted after the request started, or it already expired.
        """
        if self.revoked_since(entry.session_id, entry.identity_id, started):
            return False
        now = self._monotonic()
        lifetime = min(self.ttl, entry.expires_at - self._wall())
        if cache_for is not None:
            lifetime = min(lifetime, cache_for)
        if lifetime <= 0:
            return False
        entry.deadline = now + lifetime
        self._store(key, entry.deadline, entry)
        self._by_session.setdefault(entry.session_id, set()).add(key)
        self._by_identity.setdefault(entry.identity_id, set()).add(key)
        return True

    def put_negative(self, key: bytes) -> None:
        if self.negative_ttl > 0:
            self._store(key, self._monotonic() + self.negative_ttl, NEGATIVE)

    def evict_session(self, session_id: str) -> int:
        """Drop every entry of this session; answers already in flight are refused later."""
        self._revoked_sessions[session_id] = self._monotonic()
        self._prune_tombstones()
        return self._remove_all(self._by_session.get(session_id, set()).copy())

    def evict_identity(self, identity_id: str, *, except_session: str = "") -> int:
        """Drop every entry of this identity's sessions, optionally sparing one session."""
        previous = self._revoked_identities.get(identity_id)
        if except_session and previous is not None and previous[1] != except_session:
            # An earlier eviction condemned the spared session too: keep that tombstone in force.
            spared_at = self._revoked_sessions.get(except_session, previous[0])
            self._revoked_sessions[except_session] = max(spared_at, previous[0])
        self._revoked_identities[identity_id] = (self._monotonic(), except_session)
        self._prune_tombstones()
        keys = {
            k
            for k in self._by_identity.get(identity_id, set())
            if not except_session or self._session_of(k) != except_session
        }
        return self._remove_all(keys)

    def forget_session(self, session_id: str) -> int:
        """Drop entries without a tombstone (after an extend: the next whoami is fresh)."""
        return self._remove_all(self._by_session.get(session_id, set()).copy())

    def clear(self) -> None:
        """Drop everything; answers in flight now are refused later (a global tombstone)."""
        self._cleared_at = self._monotonic()
        self._entries.clear()
        self._by_session.clear()
        self._by_identity.clear()

    # -- internals --------------------------------------------------------------------------
    def revoked_since(self, session_id: str, identity_id: str, started: float) -> bool:
        """Was this session (or its identity) evicted at or after monotonic time `started`?"""
        if started <= self._cleared_at:
            return True
        revoked_at = self._revoked_sessions.get(session_id)
        if revoked_at is not None and started <= revoked_at:
            return True
        ident = self._revoked_identities.get(identity_id)
        return ident is not None and started <= ident[0] and session_id != ident[1]

    def _prune_tombstones(self) -> None:
        """Tombstones only need to outlive the slowest whoami; keep them one TTL."""
        horizon = self._monotonic() - max(self.ttl, 60.0)
        if len(self._revoked_sessions) > 1024:
            self._revoked_sessions = {
                k: t for k, t in self._revoked_sessions.items() if t > horizon
            }
        if len(self._revoked_identities) > 1024:
            self._revoked_identities = {
                k: v for k, v in self._revoked_identities.items() if v[0] > horizon
            }

    def _session_of(self, key: bytes) -> str:
        item = self._entries.get(key)
        return item[1].session_id if item and isinstance(item[1], CachedSession) else ""

    def _store(self, key: bytes, deadline: float, value: Any) -> None:
        if key in self._entries:
            self._remove(key)
        self._entries[key] = (deadline, value)
        while len(self._entries) > self.max_entries:
            oldest = next(iter(self._entries))
            self._remove(oldest)

    def _remove_all(self, keys: set[bytes]) -> int:
        for key in keys:
            self._remove(key)
        return len(keys)

    def _remove(self, key: bytes) -> None:
        item = self._entries.pop(key, None)
        if item is None or not isinstance(item[1], CachedSession):
            return
        entry = item[1]
        for index, ident in (
            (self._by_session, entry.session_id),
            (self._by_identity, entry.identity_id),
        ):
            keys = index.get(ident)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[ident]
