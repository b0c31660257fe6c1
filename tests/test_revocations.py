"""`Revocations` against real redis-server processes: two "processes" (two caches, each with its
own Revocations and Redis connections) in one loop. An eviction in one reaches the other,
tombstones included; gaps (flush, restart, trim) and silences drop the cache; Redis faults never
lose a revocation silently nor stop the gate."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from redis_servers import RedisServer, RedisServers, redis_servers  # noqa: F401
from sessiongate.cache import CachedSession, SessionCache
from sessiongate.config import Settings, Shared
from sessiongate.gate import Gate
from sessiongate.revocations import SILENCE, Revocations
from sessiongate.testing import FakeKratosServer

BOUND = 1.0  # the bound for a healthy Redis


def _cache() -> SessionCache:
    return SessionCache(ttl=60.0, max_entries=1000, negative_ttl=2.0)


def _entry(sid: str, iid: str = "identity-1") -> CachedSession:
    return CachedSession.of(sid, iid, time.time() + 3600, b'{"id":"%s"}' % sid.encode())


def _put(cache: SessionCache, key: bytes, sid: str, iid: str = "identity-1") -> None:
    assert cache.put(key, _entry(sid, iid), started=time.monotonic())


async def _until(check: Callable[[], bool], within: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


class Node:
    def __init__(self, server: RedisServer, **shared: object) -> None:
        self.cache = _cache()
        self.rev = Revocations(self.cache, Shared(redis_url=server.url, **shared), environ={})

    def start(self) -> None:
        self.rev.start()


@pytest.fixture
async def pair(redis_servers: RedisServers) -> AsyncIterator[tuple[RedisServer, Node, Node]]:  # noqa: F811
    server = redis_servers.start()
    a, b = Node(server), Node(server)
    a.start()
    b.start()
    try:
        await _until(lambda: a.rev.healthy and b.rev.healthy, 5, "both followers connected")
        yield server, a, b
    finally:
        await a.rev.aclose()
        await b.rev.aclose()


async def test_an_eviction_scoped_to_an_identity_spares_another_identitys_session(pair):
    """A user naming someone else's session id (Kratos: 204, nothing revoked) evicts nothing
    of theirs, at any process, and leaves no tombstone that refuses their answers."""
    _server, a, b = pair
    _put(b.cache, b"victim", "s-x", "bob")
    a.cache.evict_session("s-x", "mallory")
    assert await a.rev.flush()
    a.cache.evict_session("s-marker")  # an event after it: once b applied it, b saw the first
    assert await a.rev.flush()
    await _until(lambda: b.cache.revoked_since("s-marker", "", 0.0), BOUND, "marker at b")
    assert b.cache.get(b"victim") is not None
    started = time.monotonic() - 1  # a whoami for bob's session in flight meanwhile
    assert b.cache.put(b"victim-2", _entry("s-x", "bob"), started=started)
    # the same id scoped to its own identity goes everywhere
    a.cache.evict_session("s-x", "bob")
    assert await a.rev.flush()
    await _until(lambda: b.cache.get(b"victim") is None, BOUND, "evicted at b")
    assert b.cache.get(b"victim-2") is None


async def test_an_eviction_reaches_the_other_process_quickly(pair):
    server, a, b = pair
    _put(b.cache, b"k-b", "s1")
    _put(a.cache, b"k-a", "s1")
    a.cache.evict_session("s1")
    assert await a.rev.flush()
    took = await _until(lambda: b.cache.get(b"k-b") is None, BOUND, "evicted at b")
    assert took < 0.2
    # identity evictions keep their spared session; a remote event is not published again
    _put(b.cache, b"k-2", "s2")
    _put(b.cache, b"k-3", "s3")
    a.cache.evict_identity("identity-1", except_session="s3")
    assert await a.rev.flush()
    await _until(lambda: b.cache.get(b"k-2") is None, BOUND, "identity evicted at b")
    assert b.cache.get(b"k-3") is not None
    await asyncio.sleep(0.1)
    assert server.cli("XLEN", "sessiongate:revocations") == "2"


async def test_a_whoami_in_flight_at_the_other_process_cannot_re_enter(pair):
    _server, a, b = pair
    started = time.monotonic()  # b asked Kratos before the revocation...
    a.cache.evict_session("s1")
    assert await a.rev.flush()
    await _until(lambda: b.cache.revoked_since("s1", "i", started), BOUND, "tombstone at b")
    # ...and its answer arrives after it: refused
    assert not b.cache.put(b"k", _entry("s1"), started=started)


async def test_clear_and_extend_reach_the_other_process(pair):
    _server, a, b = pair
    _put(b.cache, b"k1", "s1")
    a.cache.clear()
    assert await a.rev.flush()
    await _until(lambda: b.cache.get(b"k1") is None, BOUND, "cleared at b")
    _put(b.cache, b"k2", "s2")
    after_clear = time.monotonic()
    a.rev.forgot("s2")
    assert await a.rev.flush()
    await _until(lambda: b.cache.get(b"k2") is None, BOUND, "forgotten at b")
    assert not b.cache.revoked_since("s2", "i", after_clear)  # forget leaves no tombstone


@pytest.mark.parametrize("gap", ["flushall", "restart", "trim"])
async def test_a_gap_in_the_stream_drops_the_whole_cache(pair, gap):
    server, a, b = pair
    a.cache.evict_session("s0")  # the followers have a place in the stream
    assert await a.rev.flush()
    await asyncio.sleep(0.1)
    _put(b.cache, b"k", "s1")
    if gap == "flushall":
        server.cli("FLUSHALL")
    elif gap == "restart":
        server.restart()
    else:
        # another writer's events, trimmed before b read them
        server.cli("XADD", "sessiongate:revocations", "*", "k", "s", "i", "x", "x", "", "o", "z")
        server.cli("XTRIM", "sessiongate:revocations", "MAXLEN", "0")
    await _until(lambda: b.cache.get(b"k") is None, BOUND + SILENCE, f"cache dropped ({gap})")
    await _until(lambda: b.rev.healthy, 5, "b follows again")
    # and propagation works again afterwards
    _put(b.cache, b"k2", "s2")
    a.cache.evict_session("s2")
    assert await a.rev.flush()
    await _until(lambda: b.cache.get(b"k2") is None, BOUND, "evicted after the gap")


@pytest.mark.parametrize("fault", ["stall", "kill"])
async def test_redis_down_degrades_then_recovers_without_losing_a_revocation(pair, fault, caplog):
    caplog.set_level(logging.INFO, "sessiongate.shared")
    server, a, b = pair
    _put(b.cache, b"old", "s-old")
    server.stop() if fault == "stall" else server.kill()
    try:
        # silence > 1 s: b drops what it had, entries now live at most degraded_ttl
        await _until(lambda: b.rev.state == "degraded", SILENCE + 1.5, "b degraded")
        assert b.cache.get(b"old") is None
        assert b.cache.ttl == 5.0
        _put(b.cache, b"new", "s-new")  # the gate keeps serving (Kratos is the authority)
        assert b.cache.get(b"new") is not None
        # a revocation while Redis is down: local at once, appended later
        started = time.monotonic()
        a.cache.evict_session("s-new")
        assert not await a.rev.flush()
        assert time.monotonic() - started < 0.5  # bounded by shared.timeout
    finally:
        server.cont() if fault == "stall" else server.restart()
    await _until(lambda: b.rev.healthy and a.rev.healthy, 5, "both follow again")
    await _until(lambda: b.cache.get(b"new") is None, 3, "the late revocation reached b")
    assert b.cache.ttl == 60.0
    # the late revocation is on the stream (b may have dropped its cache for the gap first)
    await _until(
        lambda: any("appended again" in r.getMessage() for r in caplog.records), 3, "appended"
    )
    degraded = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(degraded) == 2  # logged once per transition, by each of the two processes


async def test_slow_redis_still_gets_every_revocation(pair):
    """A Redis slower than shared.timeout (DEBUG SLEEP holds it 0.4 s): the append misses the
    relay's deadline, is retried, and reaches the other process within the bound."""
    server, a, b = pair
    _put(b.cache, b"k", "s1")
    slow = asyncio.create_task(asyncio.to_thread(server.cli, "DEBUG", "SLEEP", "0.4"))
    await asyncio.sleep(0.05)
    a.cache.evict_session("s1")
    await a.rev.flush()  # may be late: retried in the background
    await _until(lambda: b.cache.get(b"k") is None, BOUND, "evicted at b despite a slow Redis")
    assert await slow == "OK"  # Redis did sleep (redis-cli exits 0 on an error reply too)


async def test_error_replies_degrade_and_never_crash(pair, caplog):
    """Redis answering errors (a replica-only / read-only setting: writes refused); the log
    line says why without quoting the command, whose arguments are session ids."""
    caplog.set_level(logging.WARNING, "sessiongate.shared")
    server, a, _b = pair
    server.cli("CONFIG", "SET", "min-replicas-to-write", "1")  # XADD now fails: NOREPLICAS
    try:
        a.cache.evict_session("session-id-not-for-logs")
        assert not await a.rev.flush()
        assert a.rev._tasks[1].done() is False  # the publisher keeps retrying
    finally:
        server.cli("CONFIG", "SET", "min-replicas-to-write", "0")
    lines = [r.getMessage() for r in caplog.records if "cannot append" in r.getMessage()]
    assert lines
    assert "NOREPLICAS" in lines[0]
    assert not any("session-id-not-for-logs" in r.getMessage() for r in caplog.records)
    await _until(lambda: server.cli("XLEN", "sessiongate:revocations") == "1", 3, "appended")


async def test_appends_wait_for_a_replica(redis_servers: RedisServers):  # noqa: F811
    primary = redis_servers.start()
    replica = redis_servers.start(replica_of=primary)
    await _until(lambda: "state=online" in primary.cli("INFO", "replication"), 10, "replica up")
    node = Node(primary)
    node.start()
    try:
        await _until(lambda: node.rev.healthy, 5, "connected")
        assert node.rev._replicas == 1
        node.cache.evict_session("s1")
        assert await node.rev.flush()
        # confirmed means on the replica too: a failover keeps it
        assert replica.cli("XLEN", "sessiongate:revocations") == "1"
    finally:
        await node.rev.aclose()


async def test_refused_auth_is_one_log_line_and_degraded(redis_servers: RedisServers, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING, "sessiongate.shared")
    server = redis_servers.start(password="right-password")
    cache = _cache()
    rev = Revocations(
        cache,
        Shared(redis_url=server.url),
        environ={"SESSIONGATE_REDIS_PASSWORD": "wrong-password"},
    )
    rev.start()
    try:
        await asyncio.sleep(SILENCE + 0.5)
        assert rev.state == "degraded"  # never trusted, entries capped
        assert cache.ttl == 5.0
        _put(cache, b"k", "s1")
        assert cache.get(b"k") is not None  # still serving
        cache.evict_session("s1")
        await rev.flush()
        await asyncio.sleep(0.5)
    finally:
        await rev.aclose()
    lines = [r.getMessage() for r in caplog.records]
    refused = [x for x in lines if "unreachable" in x]
    assert len(refused) == 1, lines  # one clear line naming the cause
    assert "AuthenticationError" in refused[0], refused
    assert len([x for x in lines if "cannot append" in x]) == 1, lines
    assert not any("wrong-password" in x for x in lines)


@pytest.mark.parametrize(("consistency", "status"), [("eventual", 200), ("strict", 503)])
async def test_ready_shows_the_shared_state(
    redis_servers: RedisServers,  # noqa: F811
    consistency,
    status,
    monkeypatch,
):
    """/health/ready: the follower's state in its JSON; Redis down is 503 only in strict mode."""
    monkeypatch.setenv("SESSIONGATE_SECRET", "s" * 32)
    server = redis_servers.start()
    with FakeKratosServer() as kratos:
        settings = Settings.model_validate(
            {
                "ory": {"public_url": kratos.public_url, "admin_url": kratos.admin_url},
                "shared": {"redis_url": server.url, "consistency": consistency},
            }
        )
        gate = Gate(settings)
        transport = httpx.ASGITransport(app=gate)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gate") as c:
                await c.get("/health/alive")  # starts the follower
                await _until(lambda: gate.revocations.healthy, 5, "connected")
                r = await c.get("/health/ready")
                assert r.status_code == 200, r.text
                assert r.json()["shared"] == {"redis": "connected", "consistency": consistency}
                server.kill()
                await _until(lambda: gate.revocations.state == "degraded", 3, "degraded")
                await asyncio.sleep(1.1)  # /health/ready may be cached for a second
                r = await c.get("/health/ready")
                assert r.status_code == status, r.text
                assert r.json()["shared"]["redis"] == "degraded"
        finally:
            await gate.aclose()


@pytest.mark.parametrize("how", ["dies", "cancelled", "hangs"])
async def test_a_follower_that_dies_or_hangs_degrades_and_comes_back(pair, how, monkeypatch):
    """A follower that stops applying events must not keep saying "connected" (the other
    processes' revocations would be missed for good): it degrades, then follows again."""
    _server, a, b = pair
    applied = b.rev._apply
    broken = asyncio.Event()

    def fail(fields):  # type: ignore[no-untyped-def]
        if not broken.is_set():
            broken.set()
            if how == "cancelled":  # from inside a client library, not a shutdown
                raise asyncio.CancelledError
            raise KeyError("an error nobody expected")
        applied(fields)

    if how == "hangs":
        real_sync = b.rev._sync

        async def hang_once(client):  # type: ignore[no-untyped-def]
            if not broken.is_set():
                broken.set()
                await asyncio.Event().wait()  # a call that never returns
            return await real_sync(client)

        monkeypatch.setattr(b.rev, "_sync", hang_once)
        _server.cli("FLUSHALL")  # a gap: the follower finds a new place in the stream, and hangs
    else:
        monkeypatch.setattr(b.rev, "_apply", fail)
    _put(b.cache, b"k-b", "s1")
    degradations = b.rev.degradations
    a.cache.evict_session("s0")  # an event for b's follower
    assert await a.rev.flush()
    await _until(broken.is_set, 5, "the fault happened")
    # the degraded spell may last milliseconds (a restarted follower syncs at once): the count
    # of spells says it happened
    await _until(lambda: b.rev.degradations > degradations, 8, "degraded")
    assert b.cache.get(b"k-b") is None  # the cache was dropped with it
    await _until(lambda: b.rev.healthy, 5, "following again")
    _put(b.cache, b"k-b", "s1")
    a.cache.evict_session("s1")
    assert await a.rev.flush()
    await _until(lambda: b.cache.get(b"k-b") is None, BOUND, "evicted at b again")


async def test_entries_live_their_full_ttl_as_soon_as_the_follower_has_its_place(
    redis_servers: RedisServers,  # noqa: F811
):
    """A start-up's first sessions are cached for cache.ttl, not shared.degraded_ttl: the
    follower counts as connected once it holds a place in the stream, not only when its first
    blocking read returns (BLOCK_MS later), so they are not validated again seconds later."""
    server = redis_servers.start()
    node = Node(server)
    assert node.cache.ttl == 5.0  # connecting: capped at degraded_ttl
    node.start()
    try:
        await _until(lambda: node.rev._generation is not None, 5, "a place in the stream")
        assert node.rev.state == "connected"
        assert node.cache.ttl == 60.0
        assert node.rev.degradations == 0  # starting up is not a degraded spell
    finally:
        await node.rev.aclose()
