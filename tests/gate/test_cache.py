"""SessionCache on injected clocks: lifetimes, LRU, negatives, evictions, tombstones."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sessiongate.cache import NEGATIVE, CachedSession, SessionCache

WALL0 = 1_700_000_000.0


class Clocks:
    """A monotonic clock and a wall clock that tests move together."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall_now = WALL0

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall_now

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_now += seconds


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def make_cache(clocks: Clocks, **kwargs: Any) -> SessionCache:
    options: dict[str, Any] = {"ttl": 60.0, "max_entries": 100, "negative_ttl": 2.0}
    options.update(kwargs)
    return SessionCache(monotonic=clocks.monotonic, wall=clocks.wall, **options)


def entry(
    clocks: Clocks, session_id: str = "s1", identity_id: str = "i1", expires_in: float = 3600.0
) -> CachedSession:
    return CachedSession.of(session_id, identity_id, clocks.wall_now + expires_in, b"{}")


def key(n: int | str) -> bytes:
    return f"key-{n}".encode()


def assert_no_leak(cache: SessionCache) -> None:
    assert len(cache) == 0
    assert cache._entries == {}
    assert cache.indexes()[0] == {}
    assert cache.indexes()[1] == {}


# -- lifetimes ------------------------------------------------------------------------------


def test_entry_lives_for_ttl(clocks: Clocks) -> None:
    cache = make_cache(clocks, ttl=10.0)
    e = entry(clocks, expires_in=3600)
    assert cache.put(key(1), e, started=clocks.mono)
    assert e.deadline == pytest.approx(clocks.mono + 10.0)
    clocks.advance(9.9)
    assert cache.get(key(1)) is e
    clocks.advance(0.1)
    assert cache.get(key(1)) is None
    assert_no_leak(cache)


def test_entry_never_outlives_session_expiry(clocks: Clocks) -> None:
    cache = make_cache(clocks, ttl=60.0)
    e = entry(clocks, expires_in=5.0)
    assert cache.put(key(1), e, started=clocks.mono)
    assert e.deadline == pytest.approx(clocks.mono + 5.0)
    clocks.advance(4.9)
    assert cache.get(key(1)) is e
    clocks.advance(0.1)  # exactly at expires_at: dead
    assert cache.get(key(1)) is None
    clocks.advance(100)
    assert cache.get(key(1)) is None
    assert_no_leak(cache)


def test_cache_for_caps_the_lifetime(clocks: Clocks) -> None:
    cache = make_cache(clocks, ttl=60.0)
    e = entry(clocks, expires_in=3600)
    assert cache.put(key(1), e, started=clocks.mono, cache_for=3.0)
    clocks.advance(2.9)
    assert cache.get(key(1)) is e
    clocks.advance(0.1)
    assert cache.get(key(1)) is None


def test_lifetime_is_minimum_of_all_three(clocks: Clocks) -> None:
    cache = make_cache(clocks, ttl=8.0)
    cases = [
        (entry(clocks, "a", expires_in=5.0), 30.0, 5.0),  # expiry smallest
        (entry(clocks, "b", expires_in=50.0), 30.0, 8.0),  # ttl smallest
        (entry(clocks, "c", expires_in=50.0), 2.0, 2.0),  # cache_for smallest
    ]
    for i, (e, cache_for, lifetime) in enumerate(cases):
        assert cache.put(key(i), e, started=clocks.mono, cache_for=cache_for)
        assert e.deadline == pytest.approx(clocks.mono + lifetime)


def test_cache_for_zero_stores_nothing(clocks: Clocks) -> None:
    cache = make_cache(clocks)
    assert not cache.put(key(1), entry(clocks), started=clocks.mono, cache_for=0.0)
    assert cache.get(key(1)) is None
    assert_no_leak(cache)


@pytest.mark.parametrize("expires_in", [0.0, -1.0, -3600.0])
def test_already_expired_session_is_never_stored(clocks: Clocks, expires_in: float) -> None:
    cache = make_cache(clocks)
    assert not cache.put(key(1), entry(clocks, expires_in=expires_in), started=clocks.mono)
    assert cache.get(key(1)) is None
    assert_no_leak(cache)


def test_expiry_uses_wall_clock_not_monotonic(clocks: Clocks) -> None:
    """The session's expires_at is wall time; a wall clock ahead means less time left."""
    cache = make_cache(clocks, ttl=60.0)
    e = entry(clocks, expires_in=10.0)
    clocks.wall_now += 7.0  # wall moved (e.g. the answer took a while), monotonic did not
    assert cache.put(key(1), e, started=clocks.mono)
    assert e.deadline == pytest.approx(clocks.mono + 3.0)


def test_put_replaces_previous_entry_for_key(clocks: Clocks) -> None:
    cache = make_cache(clocks)
    first = entry(clocks, "s1", "i1")
    second = entry(clocks, "s2", "i2")
    assert cache.put(key(1), first, started=clocks.mono)
    assert cache.put(key(1), second, started=clocks.mono)
    assert cache.get(key(1)) is second
    assert len(cache) == 1
    assert "s1" not in cache.indexes()[0]
    assert "i1" not in cache.indexes()[1]
    assert cache.evict_session("s1") == 0
    assert cache.get(key(1)) is second


# -- LRU ------------------------------------------------------------------------------------


def test_lru_bound_drops_least_recently_used(clocks: Clocks) -> None:
    cache = make_cache(clocks, max_entries=3)
    for i in range(3):
        assert cache.put(key(i), entry(clocks, f"s{i}", f"i{i}"), started=clocks.mono)
    assert cache.get(key(0)) is not None  # 0 is now the most recently used; 1 is the oldest
    assert cache.put(key(3), entry(clocks, "s3", "i3"), started=clocks.mono)
    assert len(cache) == 3
    assert cache.get(key(1)) is None
    for i in (0, 2, 3):
        assert cache.get(key(i)) is not None, i
    # the dropped entry left nothing behind in the indexes
    assert "s1" not in cache.indexes()[0]
    assert "i1" not in cache.indexes()[1]
    assert set(cache.indexes()[0]) == {"s0", "s2", "s3"}


def test_lru_without_gets_drops_oldest_insert(clocks: Clocks) -> None:
    cache = make_cache(clocks, max_entries=2)
    for i in range(5):
        cache.put(key(i), entry(clocks, f"s{i}", f"i{i}"), started=clocks.mono)
    assert list(cache._entries) == [key(3), key(4)]
    assert set(cache.indexes()[0]) == {"s3", "s4"}
    assert set(cache.indexes()[1]) == {"i3", "i4"}


def test_lru_counts_negative_entries_too(clocks: Clocks) -> None:
    cache = make_cache(clocks, max_entries=2)
    cache.put(key("pos"), entry(clocks), started=clocks.mono)
    cache.put_negative(key("n1"))
    cache.put_negative(key("n2"))
    assert len(cache) == 2
    assert cache.get(key("pos")) is None
    assert cache.indexes()[0] == {}
    assert cache.indexes()[1] == {}


# -- negatives ------------------------------------------------------------------------------


def test_negative_entry_expires_after_negative_ttl(clocks: Clocks) -> None:
    cache = make_cache(clocks, negative_ttl=2.0)
    cache.put_negative(key(1))
    assert cache.get(key(1)) is NEGATIVE
    clocks.advance(1.9)
    assert cache.get(key(1)) is NEGATIVE
    clocks.advance(0.1)
    assert cache.get(key(1)) is None
    assert_no_leak(cache)


def test_negative_ttl_zero_stores_nothing(clocks: Clocks) -> None:
    cache = make_cache(clocks, negative_ttl=0.0)
    cache.put_negative(key(1))
    assert cache.get(key(1)) is None
    assert_no_leak(cache)


def test_negative_replaces_positive_and_cleans_indexes(clocks: Clocks) -> None:
    cache = make_cache(clocks)
    cache.put(key(1), entry(clocks), started=clocks.mono)
    cache.put_negative(key(1))
    assert cache.get(key(1)) is NEGATIVE
    assert cache.indexes()[0] == {}
    assert cache.indexes()[1] == {}


# -- evictions ------------------------------------------------------------------------------


def test_evict_session_removes_all_its_keys_only(clocks: Clocks) -> None:
    cache = make_cache(clocks)
    # one session reached through two credentials (token and cookie), plus a neighbour
    cache.put(key("tok"), entry(clocks, "s1", "i1"), started=clocks.mono)
    cache.put(key("cookie"), entry(clocks, "s1", "i1"), started=clocks.mono)
    cache.put(key("other"), entry(clocks, "s2", "i1"), started=clocks.mono)
    assert cache.evict_session("s1") == 2
    assert cache.get(key("tok")) is None
    assert cache.get(key("cookie")) is None
    assert cache.get(key("other")) is not None
    assert "s1" not in cache.indexes()[0]
    assert cache.indexes()[1] == {"i1": {key("other")}}
    assert cache.evict_session("s1") == 0
    assert cache.evict_session("unknown") == 0
    assert cache.evict_session("s2") == 1
    assert_no_leak(cache)


def test_evict_identity_removes_every_session_of_it(clocks: Clocks) -> None:
    cache = make_cache(clocks)
    cache.put(key(1), entry(clocks, "s1", "alice"), started=clocks.mono)
    cache.put(key(2), entry(clocks, "s2", "alice"), started=clocks.mono)
    cache.put(key(3), entry(clocks, "s3", "bob"), started=clocks.mono)
    assert cache.evict_identity("alice") == 2
    assert cache.get(key(1)) is None
    assert cache.get(key(2)) is None
    assert cache.get(key(3)) is not None
    assert set(cache.indexes()[0]) == {"s3"}
    assert set(cache.indexes()[1]) == {"bob"}
    assert cache.evict_identity("nobody") == 0


def test_evict_identity_except_session(clocks: Clocks) -> None:
    cache = make_cache(clocks)
    cache.put(key(1), entry(clocks, "s1", "alice"), started=clocks.mono)
    cache.put(key(2), entry(clocks, "s2", "alice"), started=clocks.mono)
    cache.put(key(22), entry(clocks, "s2", "alice"), started=clocks.mono)
    cache.put(key(3), entry(clocks, "s3", "alice"), started=clocks.mono)
    assert cache.evict_identity("alice", except_session="s2") == 2
    assert cache.get(key(1)) is None
    assert cache.get(key(3)) is None
    assert cache.get(key(2)) is not None
    assert cache.get(key(22)) is not None
    assert set(cache.indexes()[0]) == {"s2"}
    assert cache.indexes()[1] == {"alice": {key(2), key(22)}}


def test_evicting_everything_leaves_no_index_entries(clocks: Clocks) -> None:
    cache = make_cache(clocks, max_entries=5)
    for i in range(20):
        cache.put(key(i), entry(clocks, f"s{i % 7}", f"i{i % 3}"), started=clocks.mono)
    for i in range(3):
        cache.evict_identity(f"i{i}")
    assert_no_leak(cache)


def test_expired_entries_leave_no_index_entries(clocks: Clocks) -> None:
    cache = make_cache(clocks, ttl=1.0)
    for i in range(10):
        cache.put(key(i), entry(clocks, f"s{i}", "i"), started=clocks.mono)
    clocks.advance(2)
    for i in range(10):
        assert cache.get(key(i)) is None
    assert_no_leak(cache)


def test_forget_session_drops_without_tombstone(clocks: Clocks) -> None:
    cache = make_cache(clocks)
    started = clocks.mono
    cache.put(key(1), entry(clocks, "s1", "i1"), started=started)
    clocks.advance(1)
    assert cache.forget_session("s1") == 1
    assert cache.get(key(1)) is None
    assert_no_leak(cache)
    # an answer that started before the forget may still be cached: no tombstone
    assert cache.put(key(1), entry(clocks, "s1", "i1"), started=started)
    assert cache.get(key(1)) is not None
    assert cache.forget_session("nope") == 0


def test_clear_empties_everything(clocks: Clocks) -> None:
    cache = make_cache(clocks)
    cache.put(key(1), entry(clocks), started=clocks.mono)
    cache.put_negative(key(2))
    cache.clear()
    assert cache.get(key(1)) is None
    assert cache.get(key(2)) is None
    assert_no_leak(cache)


# -- tombstones -----------------------------------------------------------------------------


def test_put_started_before_evict_session_is_refused(clocks: Clocks) -> None:
    cache = make_cache(clocks)
    started = clocks.mono  # whoami sent ...
    clocks.advance(0.5)
    assert cache.evict_session("s1") == 0  # ... the session is revoked meanwhile ...
    clocks.advance(0.5)
    assert not cache.put(key(1), entry(clocks, "s1", "i1"), started=started)  # ... answer lands
    assert cache.get(key(1)) is None
    assert_no_leak(cache)
    # other sessions of the identity are unaffected
    assert cache.put(key(2), entry(clocks, "s2", "i1"), started=started)


def test_put_started_after_evict_session_is_accepted(clocks: Clocks) -> None:
    cache = make_cache(clocks)
    cache.evict_session("s1")
    clocks.advance(0.1)
    assert cache.put(key(1), entry(clocks, "s1", "i1"), started=clocks.mono)
    assert cache.get(key(1)) is not None


def test_put_started_before_evict_identity_is_refused(clocks: Clocks) -> None:
    cache = make_cache(clocks)
    started = clocks.mono
    clocks.advance(0.5)
    cache.evict_identity("alice")
    assert not cache.put(key(1), entry(clocks, "s1", "alice"), started=started)
    assert not cache.put(key(2), entry(clocks, "s2", "alice"), started=started)
    assert cache.put(key(3), entry(clocks, "s3", "bob"), started=started)
    assert cache.get(key(1)) is None
    assert cache.get(key(2)) is None
    clocks.advance(0.1)
    assert cache.put(key(1), entry(clocks, "s1", "alice"), started=clocks.mono)
    assert cache.get(key(1)) is not None


def test_evict_identity_tombstone_spares_the_excepted_session(clocks: Clocks) -> None:
    cache = make_cache(clocks)
    started = clocks.mono
    clocks.advance(0.5)
    cache.evict_identity("alice", except_session="keep")
    assert cache.put(key(1), entry(clocks, "keep", "alice"), started=started)
    assert not cache.put(key(2), entry(clocks, "other", "alice"), started=started)


def test_forget_session_leaves_earlier_tombstone_in_force(clocks: Clocks) -> None:
    cache = make_cache(clocks)
    started = clocks.mono
    clocks.advance(0.5)
    cache.evict_session("s1")
    cache.forget_session("s1")
    assert not cache.put(key(1), entry(clocks, "s1", "i1"), started=started)


def test_later_partial_identity_eviction_does_not_pardon_earlier_one(clocks: Clocks) -> None:
    """evict_identity(X) then evict_identity(X, except_session=S): S's answer that was already
    in flight at the first eviction must still be refused."""
    cache = make_cache(clocks)
    started = clocks.mono
    clocks.advance(0.5)
    cache.evict_identity("alice")  # every session of alice condemned here
    clocks.advance(0.5)
    cache.evict_identity("alice", except_session="s1")  # later: all but s1
    assert not cache.put(key(1), entry(clocks, "s1", "alice"), started=started)
    assert not cache.put(key(2), entry(clocks, "s2", "alice"), started=started)
    # s1 asked between the two evictions is fine; s2 is not
    between = clocks.mono - 0.25
    assert cache.put(key(1), entry(clocks, "s1", "alice"), started=between)
    assert not cache.put(key(2), entry(clocks, "s2", "alice"), started=between)


def test_clear_refuses_answers_that_were_in_flight() -> None:
    clock = {"mono": 100.0}
    cache = SessionCache(
        ttl=60,
        max_entries=10,
        negative_ttl=1,
        monotonic=lambda: clock["mono"],
        wall=lambda: 1_000.0,
    )
    started = clock["mono"]
    clock["mono"] += 1
    cache.clear()
    entry = CachedSession.of("s1", "i1", 2_000.0, b"{}")
    assert cache.put(b"k", entry, started=started) is False
    assert (
        cache.put(b"k", CachedSession.of("s1", "i1", 2_000.0, b"{}"), started=clock["mono"] + 1)
        is True
    )


# -- what an entry keeps --------------------------------------------------------------------


def whoami_body() -> bytes:
    """What Kratos' whoami answers for a password login (the fake follows CONTRACT.md)."""
    from sessiongate.testing import KratosFake

    fake = KratosFake()
    alice = fake.login("alice@example.com")
    session = fake.store.sessions[alice.id]
    data = fake.store.session_json(session, identity="full", devices="list")
    return json.dumps(data, separators=(",", ":")).encode()


def test_entry_keeps_whoami_body_byte_for_byte_and_parses_only_on_demand() -> None:
    body = whoami_body()
    entry = CachedSession.of("s1", "i1", 2_000.0, body, [(b"x-user-id", b"i1")])
    assert entry.body == body
    assert len(entry.deflated) < len(body) / 3  # Kratos' vocabulary is in the preset dictionary
    assert entry.parsed is None
    assert entry.session == json.loads(body)
    assert entry.session is entry.session  # parsed once
    assert entry.identity_headers == ((b"x-user-id", b"i1"),)


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"x-user-id", b"")],  # an empty trait: the header is sent, empty
        [(b"x-user-id", b"i1"), (b"x-user-email", b"a%0D%0Ab@example.com"), (b"x-empty", b"")],
        [(b"x-session", b"eyJpZCI6InMxIn0")],
    ],
)
def test_entry_gives_back_its_identity_headers_exactly(headers: list[tuple[bytes, bytes]]) -> None:
    entry = CachedSession.of("s1", "i1", 2_000.0, b"{}", headers)
    assert entry.identity_headers == tuple(headers)
    other = CachedSession.of("s2", "i2", 2_000.0, b"{}", [(n, v + b"2") for n, v in headers])
    assert other.identity_headers == tuple((n, v + b"2") for n, v in headers)
    assert other.header_names is entry.header_names  # one tuple of names for every entry
    entry.identity_headers = [(b"x-user-id", b"i9")]  # the shared mode computes them again
    assert entry.identity_headers == ((b"x-user-id", b"i9"),)


def test_entry_refuses_a_header_value_with_a_nul_byte() -> None:
    """Values are kept NUL-separated; identity_headers.py never makes one with a NUL."""
    with pytest.raises(ValueError, match="NUL"):
        CachedSession.of("s1", "i1", 2_000.0, b"{}", [(b"x-user-id", b"a\x00b")])


def test_100k_entries_fit_the_documented_memory_figure(clocks: Clocks) -> None:
    """bench/README.md (Memory): ~0.95 KB per cached session here (1.23 KB while the identity
    headers were a tuple of (name, value) tuples); 100,000 stay well under 200 MB."""
    import tracemalloc

    from sessiongate.authenticate import Authenticator
    from sessiongate.identity_headers import IdentityHeaders
    from sessiongate.kratos import KratosAnswer

    cache = make_cache(clocks, max_entries=200_000)
    headers = IdentityHeaders(
        {"X-User-Id": "identity.id", "X-User-Email": "identity.traits.email", "X-Session-Id": "id"}
    )
    auth = Authenticator(None, cache, headers)  # type: ignore[arg-type]
    template = whoami_body().decode()
    n = 10_000
    answers = [
        KratosAnswer(200, {}, template.replace('"id":"', f'"id":"{i:06d}', 2).encode())
        for i in range(n)
    ]
    keys = [f"credential-{i:08d}".encode().ljust(20, b"-") for i in range(n)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for key, answer in zip(keys, answers, strict=True):
        assert isinstance(auth.classify(key, answer, clocks.mono), CachedSession)
    per_entry = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    assert len(cache) == n
    assert per_entry < 1_050, per_entry  # bytes, keys excluded (they exist before the cache)


def test_dead_entries_do_not_pile_up_until_max_entries(clocks: Clocks) -> None:
    """100 new credentials a second for 10 minutes, each used once: only ~one TTL is kept."""
    cache = make_cache(clocks, ttl=2.0, max_entries=100_000)
    for i in range(60_000):
        clocks.advance(0.01)
        cache.put(key(i), entry(clocks, f"s{i}", "i1"), started=clocks.mono)
        if i % 7 == 0:
            cache.put_negative(key(f"junk{i}"))
    assert len(cache) < 500, len(cache)  # 2 s of traffic is ~230 entries; without sweeping: 68k
    sessions, identities = cache.indexes()
    assert len(sessions) < 500
    assert identities["i1"] == {k for k, v in cache._entries.items() if not isinstance(v, float)}


def test_an_integer_clock_works_too() -> None:
    now = [100]
    cache = SessionCache(
        ttl=60, max_entries=10, negative_ttl=2, monotonic=lambda: now[0], wall=lambda: 1_000
    )
    cache.put_negative(b"k")
    cache.put(b"s", CachedSession.of("s1", "i1", 2_000, b"{}"), started=now[0])
    assert cache.get(b"k") is NEGATIVE
    now[0] = 102
    assert cache.get(b"k") is None
    assert isinstance(cache.get(b"s"), CachedSession)
