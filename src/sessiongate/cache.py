"""Stage 2a: the session cache. Bounded, per-entry deadlines, indexed for eviction.

Rules the gate's correctness rests on:
* keys are digests of credentials (see `Credential.cache_key`), never raw tokens;
* an entry lives min(cache.ttl, the session's own `expires_at`, `Ory-Session-Cache-For`), so
  an expired session is never served from cache;
* 401s are cached briefly (`negative_ttl`) to absorb retries with a dead credential;
* LRU-bounded at `max_entries`;
* entries can be evicted by session id or identity id, and an eviction also leaves a tombstone
  so that a whoami answer already in flight when the session was revoked cannot re-enter the
  cache afterwards (`put` refuses answers that started before the tombstone);
* evictions are announced to `listeners` (open WebSockets close when their session goes).
"""

from __future__ import annotations

import json
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sessiongate.metrics import Metrics

RawHeaders = tuple[tuple[bytes, bytes], ...]


@dataclass(slots=True)
class CachedSession:
    """One validated session, with everything the hot path needs already computed.

    Memory matters here (the cache holds 100,000 of these): whoami's body is kept deflated
    with a preset dictionary of Kratos' field names (0.8 KB of JSON keeps ~0.25 KB), never as
    parsed JSON (~6 KB of Python objects). `session` parses on first use (middleware mode,
    admin rules) and keeps the result; the proxy never asks for it. The identity headers are
    kept as their names (one tuple shared by every entry with the same names) and one bytes
    of their values: ~0.13 KB, where a tuple of (name, value) tuples held ~0.5 KB.
    """

    session_id: str
    identity_id: str
    expires_at: float  # wall-clock epoch seconds, from the session's `expires_at`
    deflated: bytes  # whoami's body as Kratos sent it, raw-deflated
    header_names: tuple[bytes, ...] = ()  # the identity headers' names (shared, see `_packed`)
    header_values: bytes = b""  # their values, NUL-separated (see `identity_headers`)
    deadline: float = 0.0  # monotonic time after which the entry is dead
    parsed: dict[str, Any] | None = None
    annotations: Any = None  # what middleware mode puts in the scope, built once per entry
    epoch: int = 0  # shared mode: the revocation epoch read before its whoami (strict.py)
    generation: bytes = b""  # shared mode: Redis' data set that epoch was read from (strict.py)
    cache_for: float | None = None  # Kratos' Ory-Session-Cache-For (the shared entry's lifetime)
    # identity_token.py: the token header kept for this session, and when (monotonic) it is due
    # to be made again; never a signature per request
    token: tuple[bytes, bytes] | None = None
    token_renew: float = 0.0

    @classmethod
    def of(
        cls,
        session_id: str,
        identity_id: str,
        expires_at: float,
        body: bytes,
        identity_headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> CachedSession:
        return cls(session_id, identity_id, expires_at, _deflate(body), *_packed(identity_headers))

    @property
    def identity_headers(self) -> RawHeaders:
        """The identity headers for this session, as (name, value) pairs in configured order."""
        headers: list[tuple[bytes, bytes]] = []
        self.add_identity_headers(headers)
        return tuple(headers)

    def add_identity_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Append the identity headers to a request's header list (the hot path: ~0.2 us)."""
        # as many values as names (`_packed`); zip's `strict=` keyword alone costs ~0.15 us
        headers.extend(zip(self.header_names, self.header_values.split(b"\0")))  # noqa: B905

    @identity_headers.setter
    def identity_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.header_names, self.header_values = _packed(headers)

    @property
    def body(self) -> bytes:
        """whoami's body, byte for byte (the relay serves it again)."""
        return _inflate(self.deflated)

    @property
    def session(self) -> dict[str, Any]:
        """whoami's session JSON, parsed once on first use."""
        if self.parsed is None:
            self.parsed = json.loads(self.body)
        return self.parsed


# A preset deflate dictionary: the vocabulary of Kratos' session JSON, so each cached body
# only pays for its ids, timestamps and traits (~0.25 KB instead of ~0.4 KB for a small one).
_KRATOS_WORDS = (
    b'"metadata_admin":null,"metadata_public":null,"organization_id":null,"credentials":'
    b'"tokenized":"totp","webauthn","lookup_secret","code","oidc","passkey","sms","phone",'
    b'"recovery_addresses":[{"id":"","value":"","via":"email","created_at":"","updated_at":""}],'
    b'"verifiable_addresses":[{"id":"","value":"","verified":false,"verified_at":"",'
    b'"via":"email","status":"pending","completed","created_at":"","updated_at":""}],'
    b'"devices":[{"id":"","ip_address":"127.0.0.1","user_agent":"Mozilla/5.0 ","location":""}]}'
    b'"identity":{"id":"","schema_id":"default","schema_url":"https:///schemas/ZGVmYXVsdA",'
    b'"state":"active","state_changed_at":"","traits":{"email":"","name":{"first":"","last":""}},'
    b'"authentication_methods":[{"method":"password","aal":"aal1","completed_at":""}],'
    b'"issued_at":"2026-01-01T00:00:00.000000Z",'
    b'{"id":"","active":true,"expires_at":"","authenticated_at":"",'
    b'"authenticator_assurance_level":"aal1","aal2","provider":"","organization":"",'
)


# Every entry with the same header names shares one tuple of them (the configured names, or
# fewer when a session lacks a field); bounded, though only settings choose the names.
_NAMES: dict[tuple[bytes, ...], tuple[bytes, ...]] = {}
_NAMES_KEPT = 64


def _packed(headers: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[bytes, ...], bytes]:
    """(names, values joined by NUL). A header value never holds a NUL byte (identity_headers.py
    percent-encodes all but visible ASCII and space); one that does is refused, not mangled."""
    pairs = tuple(headers)
    names = tuple(name for name, _ in pairs)
    values = [value for _, value in pairs]
    if any(b"\0" in value for value in values):
        raise ValueError("an identity header value holds a NUL byte")
    shared = _NAMES.get(names)
    if shared is None:
        shared = names
        if len(_NAMES) < _NAMES_KEPT:
            _NAMES[names] = names
    return shared, b"\0".join(values)


def _deflate(body: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=_KRATOS_WORDS)
    return packer.compress(body) + packer.flush()


def _inflate(deflated: bytes) -> bytes:
    unpacker = zlib.decompressobj(-15, zdict=_KRATOS_WORDS)
    return unpacker.decompress(deflated) + unpacker.flush()


#: What `get` returns for credentials Kratos rejected with 401 (stored as a bare deadline).
NEGATIVE = object()
#: What the shared mode's `SharedSessions.validate` returns in strict mode when Redis fails
#: (the caller answers 503); here, so that the authenticator needs no Redis module to know it.
UNAVAILABLE = object()

# Index values: one key (the usual case, ~0 bytes of overhead) or a set of keys.
_Index = dict[str, bytes | set[bytes]]


def _index_add(index: _Index, ident: str, key: bytes) -> None:
    present = index.get(ident)
    if present is None or present == key:
        index[ident] = key
    elif isinstance(present, set):
        present.add(key)
    else:
        index[ident] = {present, key}


def _index_discard(index: _Index, ident: str, key: bytes) -> None:
    present = index.get(ident)
    if present is None:
        return
    if isinstance(present, set):
        present.discard(key)
        if len(present) == 1:
            index[ident] = next(iter(present))
        elif not present:
            del index[ident]
    elif present == key:
        del index[ident]


def _index_keys(index: _Index, ident: str) -> set[bytes]:
    present = index.get(ident)
    if present is None:
        return set()
    return set(present) if isinstance(present, set) else {present}


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revocation: a session, or an identity's sessions (sparing `except_session`); what
    the shared mode records (strict.py), here so that the relay needs no Redis module."""

    session_id: str = ""
    identity_id: str = ""
    except_session: str = ""


class EvictionListener(Protocol):
    """Told of every revocation through the cache, synchronously: keep the callbacks cheap."""

    def session_evicted(self, session_id: str, identity_id: str = "") -> None: ...
    def identity_evicted(self, identity_id: str, except_session: str) -> None: ...
    def cleared(self) -> None: ...


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
        # key → a CachedSession (its deadline inside), or a float: a 401's deadline
        self._entries: OrderedDict[bytes, CachedSession | float] = OrderedDict()
        self._by_session: _Index = {}
        self._by_identity: _Index = {}
        # Tombstones: id → (monotonic time of eviction, the session's identity or "": any /
        # session id to spare or "").
        self._revoked_sessions: dict[str, tuple[float, str]] = {}
        self._revoked_identities: dict[str, tuple[float, str]] = {}
        self._cleared_at = float("-inf")
        self.listeners: list[EvictionListener] = []
        self.metrics: Metrics | None = None  # evictions by cause (gate.py wires it)

    def __len__(self) -> int:
        return len(self._entries)

    # -- reads ------------------------------------------------------------------------------
    def get(self, key: bytes) -> CachedSession | object | None:
        """The live entry (a CachedSession or NEGATIVE), or None."""
        value = self._entries.get(key)
        if value is None:
            return None
        deadline = value.deadline if isinstance(value, CachedSession) else value
        if self._monotonic() >= deadline:
            self._remove(key)
            self._evicted("expired")
            return None
        self._entries.move_to_end(key)
        return value if isinstance(value, CachedSession) else NEGATIVE

    # -- writes -----------------------------------------------------------------------------
    def put(
        self, key: bytes, entry: CachedSession, *, started: float, cache_for: float | None = None
    ) -> bool:
        """Cache a whoami answer that was requested at monotonic time `started`.

        Returns False (and caches nothing) when the answer cannot be trusted any more: the
        session or its identity was evicted after the request started, or it already expired.
        """
        if self.cleared_since(started) or self.revoked_since(
            entry.session_id, entry.identity_id, started
        ):
            return False
        now = self._monotonic()
        lifetime = min(self.ttl, entry.expires_at - self._wall())
        if cache_for is not None:
            lifetime = min(lifetime, cache_for)
        if lifetime <= 0:
            return False
        entry.deadline = now + lifetime
        self._store(key, entry)
        _index_add(self._by_session, entry.session_id, key)
        _index_add(self._by_identity, entry.identity_id, key)
        return True

    def put_negative(self, key: bytes) -> None:
        if self.negative_ttl > 0:
            self._store(key, self._monotonic() + self.negative_ttl)

    def evict_session(self, session_id: str, identity_id: str = "") -> int:
        """Drop every entry of this session; answers already in flight are refused later.

        With `identity_id`, only if the session is that identity's: Kratos answers a user's
        `DELETE /sessions/{id}` with 204 for anyone's session id and revokes only its own, so
        a user must not evict (or have refused) another user's session by naming it."""
        previous = self._revoked_sessions.get(session_id)
        if previous is not None and previous[1] != identity_id:
            identity_id = ""  # two scopes for one id: the wider one (a tombstone never narrows)
        self._revoked_sessions[session_id] = (self._monotonic(), identity_id)
        self._prune_tombstones()
        keys = _index_keys(self._by_session, session_id)
        if identity_id:
            keys = {k for k in keys if self._identity_of(k) == identity_id}
        removed = self._remove_all(keys)
        self._evicted("session_revoked", removed)
        for listener in self.listeners:  # after the removal: a listener may ask whoami again
            listener.session_evicted(session_id, identity_id)
        return removed

    def evict_identity(self, identity_id: str, *, except_session: str = "") -> int:
        """Drop every entry of this identity's sessions, optionally sparing one session."""
        previous = self._revoked_identities.get(identity_id)
        if except_session and previous is not None and previous[1] != except_session:
            # An earlier eviction condemned the spared session too: keep that tombstone in force.
            spared_at = self._revoked_sessions.get(except_session, (previous[0], identity_id))
            self._revoked_sessions[except_session] = (
                max(spared_at[0], previous[0]),
                spared_at[1] if spared_at[1] == identity_id else "",
            )
        self._revoked_identities[identity_id] = (self._monotonic(), except_session)
        self._prune_tombstones()
        keys = {
            k
            for k in _index_keys(self._by_identity, identity_id)
            if not except_session or self._session_of(k) != except_session
        }
        removed = self._remove_all(keys)
        self._evicted("identity_revoked", removed)
        for listener in self.listeners:
            listener.identity_evicted(identity_id, except_session)
        return removed

    def forget_session(self, session_id: str) -> int:
        """Drop entries without a tombstone (after an extend: the next whoami is fresh)."""
        removed = self._remove_all(_index_keys(self._by_session, session_id))
        self._evicted("refresh", removed)
        return removed

    def forget_negative(self) -> int:
        """Drop every remembered 401 (an admin extend may have revived one of them)."""
        removed = self._remove_all(
            {k for k, v in self._entries.items() if not isinstance(v, CachedSession)}
        )
        self._evicted("refresh", removed)
        return removed

    def indexes(self) -> tuple[dict[str, set[bytes]], dict[str, set[bytes]]]:
        """Both indexes (session id → keys, identity id → keys) as plain sets, for inspection."""
        return (
            {i: _index_keys(self._by_session, i) for i in self._by_session},
            {i: _index_keys(self._by_identity, i) for i in self._by_identity},
        )

    def clear(self) -> None:
        """Drop everything; answers in flight now are refused later (a global tombstone)."""
        self._cleared_at = self._monotonic()
        self._evicted("cleared", len(self._entries))
        self._entries.clear()
        self._by_session.clear()
        self._by_identity.clear()
        for listener in self.listeners:
            listener.cleared()

    # -- internals --------------------------------------------------------------------------
    def cleared_since(self, started: float) -> bool:
        """Was the whole cache cleared at or after monotonic time `started`?"""
        return started <= self._cleared_at

    def revoked_since(self, session_id: str, identity_id: str, started: float) -> bool:
        """Was this session (or its identity) evicted at or after monotonic time `started`?
        (A `clear()` is no revocation: see `cleared_since`.)"""
        revoked = self._revoked_sessions.get(session_id)
        if revoked is not None and started <= revoked[0] and revoked[1] in ("", identity_id):
            return True
        ident = self._revoked_identities.get(identity_id)
        return ident is not None and started <= ident[0] and session_id != ident[1]

    def _prune_tombstones(self) -> None:
        """Tombstones only need to outlive the slowest whoami; keep them one TTL."""
        horizon = self._monotonic() - max(self.ttl, 60.0)
        if len(self._revoked_sessions) > 1024:
            self._revoked_sessions = {
                k: v for k, v in self._revoked_sessions.items() if v[0] > horizon
            }
        if len(self._revoked_identities) > 1024:
            self._revoked_identities = {
                k: v for k, v in self._revoked_identities.items() if v[0] > horizon
            }

    def _session_of(self, key: bytes) -> str:
        value = self._entries.get(key)
        return value.session_id if isinstance(value, CachedSession) else ""

    def _identity_of(self, key: bytes) -> str:
        value = self._entries.get(key)
        return value.identity_id if isinstance(value, CachedSession) else ""

    def _store(self, key: bytes, value: CachedSession | float) -> None:
        if key in self._entries:
            self._remove(key)
        self._entries[key] = value
        while len(self._entries) > self.max_entries:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self._evicted("capacity")
        self._sweep()

    def _sweep(self, budget: int = 2) -> None:
        """Drop up to `budget` dead entries at the LRU end on each write, so credentials that
        are never used again (logged out, rotated, junk) stay about one TTL, not until
        `max_entries` pushes them out (found by the soak run: RSS +20% in 10 minutes)."""
        now = self._monotonic()
        for _ in range(budget):
            oldest = next(iter(self._entries), None)
            if oldest is None:
                return
            value = self._entries[oldest]
            deadline = value.deadline if isinstance(value, CachedSession) else value
            if now < deadline:
                return
            self._remove(oldest)
            self._evicted("expired")

    def _evicted(self, cause: str, count: int = 1) -> None:
        metrics = self.metrics
        if metrics is not None:
            metrics.evicted(cause, count)

    def _remove_all(self, keys: set[bytes]) -> int:
        for key in keys:
            self._remove(key)
        return len(keys)

    def _remove(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if isinstance(entry, CachedSession):
            _index_discard(self._by_session, entry.session_id, key)
            _index_discard(self._by_identity, entry.identity_id, key)
