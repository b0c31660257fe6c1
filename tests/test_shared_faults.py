"""Redis faults under the deployed shared mode: real `sessiongate serve` replicas (one of them
with two workers, test_shared_serve's fleet), one Kratos fake, one real redis-server.

Redis restarted empty, slower than `shared.timeout` (DEBUG SLEEP) or answering errors (OOM: every
write refused). Eventual mode: nobody is logged out, a revocation through one process is refused
by every other within the issue's bound (1 s + `shared.degraded_ttl`; `cache.ttl` when its append
failed), no process crashes, and /health/ready says "connected" again once Redis recovers.
Strict mode: fail closed (503, and no revocation relayed to Kratos without its record), then
served again once Redis recovers. (Redis stalled or killed: test_shared_serve.py, test_strict.py.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from redis_servers import RedisServer, RedisServers, redis_servers  # noqa: F401
from test_cli import backends  # noqa: F401
from test_shared_serve import ADMIN_KEY, BOUND, Replica, _revoke, fleet

DEGRADED_TTL = 1.0
CACHE_TTL = 4.0  # the bound for a revocation whose append failed (above 1 s + degraded_ttl)


@contextmanager
def slow(redis: RedisServer, seconds: float, *, repeat: bool) -> Iterator[None]:
    """Redis answers nothing for `seconds` (DEBUG SLEEP), once or over and over until the end."""
    stop, replies = threading.Event(), []

    def sleeping() -> None:
        while True:
            replies.append(redis.cli("DEBUG", "SLEEP", str(seconds)))
            if not repeat or stop.is_set():
                return

    thread = threading.Thread(target=sleeping, daemon=True)
    thread.start()
    time.sleep(0.05)  # the first sleep has begun
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=seconds + 10)
    assert replies, "DEBUG SLEEP never ran"
    assert set(replies) == {"OK"}, replies  # it did sleep (not an error reply)


@contextmanager
def fault(redis: RedisServer, kind: str) -> Iterator[None]:
    if kind == "restart":
        redis.restart()
        yield
    elif kind == "slow":
        with slow(redis, 0.5, repeat=True):
            yield
    else:  # errors: over maxmemory, nothing evictable; every write answers OOM
        redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
        redis.cli("CONFIG", "SET", "maxmemory", "1")
        try:
            yield
        finally:
            redis.cli("CONFIG", "SET", "maxmemory", "0")


def _all_connected(replicas: list[Replica], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    for replica in replicas:
        for _ in range(4 * replica.workers):  # new connections: each worker in turn
            # (no "shared" when the gate's readiness call to the Kratos fake failed: it can
            # meet a kept-alive connection the fake closes just then; ask again)
            while (state := replica.ready()).get("shared", {}).get("redis") != "connected":
                assert time.monotonic() < deadline, state
                time.sleep(0.1)
            assert state["http"] == 200, state


def _until(check, within: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _last_admitted(replica: Replica, token: str, returned: float, within: float) -> float:
    """Ask until every worker refused `token` and six refusals in a row: how long after
    `returned` the last request still admitted had been sent (0 if none was)."""
    last, workers, row = returned, set(), 0
    deadline = returned + within
    while len(workers) < replica.workers or row < 6:
        assert time.monotonic() < deadline, f"{replica.url}: not refused by every worker"
        sent = time.monotonic()
        status, pid = replica.ask(token)
        if status == 401:
            workers.add(pid)
            row += 1
        else:
            assert status == 200, status
            last, workers, row = sent, set(), 0  # admitted: start again
    return last - returned


def _nothing_crashed(replicas: list[Replica]) -> None:
    for replica in replicas:
        assert replica.running.proc.poll() is None, replica.running.output()
        assert "Traceback" not in replica.running.output(), replica.running.output()


@pytest.mark.parametrize("kind", ["restart", "slow", "errors"])
def test_eventual_mode_keeps_everyone_logged_in_and_still_relays_revocations(
    tmp_path,
    backends,  # noqa: F811
    redis_servers: RedisServers,  # noqa: F811
    kind,
):
    redis = redis_servers.start()
    fake = backends.kratos.fake
    settings = {"degraded_ttl": f"{DEGRADED_TTL}s", "cache": {"ttl": f"{CACHE_TTL}s"}}
    with fleet(tmp_path, backends, redis, **settings) as replicas:
        one, two = replicas
        alice = fake.login("alice@example.com")
        victim = fake.login("carol@example.com")
        assert one.ask(alice.token)[0] == 200
        two.each_worker(alice.token, 200, within=10)
        with fault(redis, kind):
            # nobody is logged out: cached sessions, and new ones (their own whoami)
            assert one.ask(alice.token)[0] == 200
            two.each_worker(alice.token, 200, within=10)
            bob = fake.login("bob@example.com")
            assert one.ask(bob.token)[0] == 200
            two.each_worker(bob.token, 200, within=10)
            # a revocation through one: refused there at once; at the other replica's workers
            # no request sent later than the bound after the call returned is admitted (an
            # append that failed: the entries lapse, cache.ttl), and it stays refused
            if kind == "restart":  # every follower has its place in the new stream by now
                time.sleep(1.0)
            two.each_worker(victim.token, 200, within=10)
            _revoke("admin", one, victim, alice)
            returned = time.monotonic()
            assert one.ask(victim.token)[0] == 401
            bound = CACHE_TTL if kind == "errors" else BOUND + DEGRADED_TTL
            late = _last_admitted(two, victim.token, returned, within=bound + 5)
            print(f"\n{kind}: last admitted at the other replica {late:.2f} s after the call")
            assert late < bound, late
        _all_connected(replicas)
        assert one.ask(alice.token)[0] == 200
        two.each_worker(alice.token, 200, within=10)
        assert two.ask(victim.token)[0] == 401
        # nothing lost: the revocation reached the stream (late, after an error or a timeout)
        _until(
            lambda: redis.cli("XLEN", "sessiongate:revocations") not in ("", "0"),
            10,
            "the revocation appended",
        )
        _nothing_crashed(replicas)


@pytest.mark.parametrize("kind", ["errors", "slow"])
def test_strict_mode_fails_closed_while_redis_fails_then_serves_again(
    tmp_path,
    backends,  # noqa: F811
    redis_servers: RedisServers,  # noqa: F811
    kind,
):
    redis = redis_servers.start()
    fake = backends.kratos.fake
    with fleet(tmp_path, backends, redis, consistency="strict") as replicas:
        one, two = replicas
        alice = fake.login("alice@example.com")
        victim = fake.login("carol@example.com")
        for token in (alice.token, victim.token):
            assert one.ask(token)[0] == 200
            two.each_worker(token, 200, within=10)
        # errors: every write refused; slow: one sleep longer than what the checks below take
        # (each is bounded by shared.timeout)
        faulty = fault(redis, "errors") if kind == "errors" else slow(redis, 4.0, repeat=False)
        with faulty:
            started = time.monotonic()
            # no record, no relay: 503, and Kratos still has the session
            with httpx.Client(base_url=one.url, timeout=5) as c:
                r = c.delete(
                    f"/admin/sessions/{victim.id}",
                    headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                )
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"]
            assert fake.is_session_active(victim.id)
            # a session Redis cannot vouch for is not admitted: 503, never a pass
            bob = fake.login("bob@example.com")
            assert one.ask(bob.token)[0] == 503
            if kind == "slow":  # nothing provable at all: cached sessions too
                assert one.ask(alice.token)[0] == 503
            else:  # reads still answer: a cached session is still proven unrevoked
                assert one.ask(alice.token)[0] == 200
            assert time.monotonic() - started < 3.0  # all of it inside the fault
        # recovered: served again, and revocations relayed (refused on the next request)
        _until(lambda: one.ask(bob.token)[0] == 200, 10, "served again")
        _all_connected(replicas)
        two.each_worker(alice.token, 200, within=10)
        _revoke("admin", one, victim, alice)
        assert not fake.is_session_active(victim.id)
        for _ in range(6):
            assert two.ask(victim.token)[0] == 401
        _nothing_crashed(replicas)
