"""`shared_redis`: `connect` to a real redis-server by URL, with the password from the
environment, over a unix socket, through Sentinel; `shared.timeout` bounds a stalled server;
`Batcher` turns a burst of calls into a few pipelines on a few connections."""

from __future__ import annotations

import asyncio
import time

import pytest

from redis_servers import RedisServers, free_port, redis_servers  # noqa: F401
from sessiongate.config import Sentinel, Shared
from sessiongate.shared_redis import Batcher, RedisError, connect, describe, key


async def _roundtrip(client) -> bytes:  # type: ignore[no-untyped-def]
    try:
        await client.set(b"k", b"v")
        return await client.get(b"k")
    finally:
        await client.aclose()


async def test_url_and_password_from_the_environment(redis_servers: RedisServers):  # noqa: F811
    server = redis_servers.start(password="pw-from-env")
    shared = Shared(redis_url=server.url)
    assert await _roundtrip(connect(shared, environ={"SESSIONGATE_REDIS_PASSWORD": "pw-from-env"}))
    with pytest.raises(RedisError):
        await _roundtrip(connect(shared, environ={}))


async def test_unix_socket(redis_servers: RedisServers, tmp_path):  # noqa: F811
    sock = tmp_path / "r.sock"
    redis_servers.start(extra=("--unixsocket", str(sock), "--unixsocketperm", "700"))
    assert await _roundtrip(connect(Shared(redis_url=f"unix://{sock}"), environ={})) == b"v"


async def test_sentinel(redis_servers: RedisServers):  # noqa: F811
    master = redis_servers.start()
    sentinel = redis_servers.start(sentinel_of=master)
    shared = Shared(sentinel=Sentinel(master="mymaster", nodes=[f"127.0.0.1:{sentinel.port}"]))
    assert await _roundtrip(connect(shared, environ={})) == b"v"
    assert master.cli("GET", "k") == "v"
    assert "mymaster" in describe(shared)


async def test_a_stalled_server_costs_at_most_the_timeout(redis_servers: RedisServers):  # noqa: F811
    server = redis_servers.start()
    client = connect(Shared(redis_url=server.url, timeout=0.2), environ={})
    try:
        await client.ping()
        server.stop()
        started = time.monotonic()
        with pytest.raises((RedisError, asyncio.TimeoutError)):
            await client.get(b"x")
        assert time.monotonic() - started < 1.0
    finally:
        server.cont()
        await client.aclose()


def test_describe_never_shows_the_password_and_keys_are_prefixed():
    shared = Shared(redis_url="redis://u:secret@h:1/0", prefix="p1")
    assert "secret" not in describe(shared)
    assert key(shared, "revocations") == "p1:revocations"
    assert free_port() > 0


async def test_a_burst_shares_a_few_connections_and_each_call_gets_its_own_replies(
    redis_servers: RedisServers,  # noqa: F811
):
    server = redis_servers.start()
    client = connect(Shared(redis_url=server.url), environ={}, max_connections=None)
    batcher = Batcher(client, timeout=2.0)
    try:
        await client.mset({f"k{i}": f"v{i}" for i in range(1000)})

        async def one(i: int) -> list[bytes]:
            return await batcher.run(lambda pipe: (pipe.get(f"k{i}"), pipe.get(f"k{i + 1}")))

        replies = await asyncio.gather(*(one(i) for i in range(999)))
        assert replies == [[f"v{i}".encode(), f"v{i + 1}".encode()] for i in range(999)]
        # 999 calls at once: 4 pipelines of at most 256 calls, not a connection each
        clients = [c for c in server.cli("CLIENT", "LIST").splitlines() if "name=sessiongate" in c]
        assert 1 <= len(clients) <= 4, clients
        # calls that share a key in one pipeline are sent once; each is read after it was asked
        sent = []

        def counted(pipe):  # type: ignore[no-untyped-def]
            sent.append(1)
            pipe.incr("n")

        shared = await asyncio.gather(*(batcher.run(counted, share="n") for _ in range(10)))
        assert shared == [[1]] * 10
        assert len(sent) == 1
        assert await batcher.run(counted, share="n") == [2]
    finally:
        await batcher.aclose()
        await client.aclose()


async def test_a_stalled_server_fails_every_call_of_the_pipeline_within_its_timeout(
    redis_servers: RedisServers,  # noqa: F811
):
    server = redis_servers.start()
    client = connect(Shared(redis_url=server.url, timeout=0.2), environ={})
    batcher = Batcher(client, timeout=0.2)
    try:
        await client.ping()
        server.stop()
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(batcher.run(lambda pipe: pipe.get("x")) for _ in range(50)), return_exceptions=True
        )
        assert time.monotonic() - started < 1.0
        assert all(isinstance(o, (RedisError, TimeoutError)) for o in outcomes), outcomes
        server.cont()
        assert await batcher.run(lambda pipe: pipe.set("x", "1")) == [True]
    finally:
        server.cont()
        await batcher.aclose()
        await client.aclose()


async def test_a_busy_event_loop_does_not_make_a_prompt_redis_count_as_slow(
    redis_servers: RedisServers,  # noqa: F811
):
    """A burst (a cold start) keeps the loop busy past `timeout` while Redis has long answered:
    the calls get their replies, not a timeout that would send each to whoami on its own."""
    server = redis_servers.start()
    client = connect(Shared(redis_url=server.url, timeout=5), environ={})
    batcher = Batcher(client, timeout=0.2)
    try:
        await client.ping()
        loop = asyncio.get_running_loop()
        # Redis answers after 50 ms; from 10 ms on the loop is busy for 0.4 s
        loop.call_later(0.01, time.sleep, 0.4)

        def commands(pipe, n):  # type: ignore[no-untyped-def]
            if n == 0:
                pipe.execute_command("DEBUG", "SLEEP", "0.05")
            pipe.echo(f"r{n}")

        gathered = asyncio.gather(
            *(batcher.run(lambda pipe, n=n: commands(pipe, n)) for n in range(20)),
            return_exceptions=True,
        )
        outcomes = await gathered
        assert outcomes == [[b"OK", b"r0"]] + [[f"r{n}".encode()] for n in range(1, 20)], outcomes
    finally:
        await batcher.aclose()
        await client.aclose()


async def test_a_loop_busy_for_several_timeouts_still_gets_a_prompt_redis_reply(
    redis_servers: RedisServers,  # noqa: F811
):
    """A cold start keeps every turn of the loop long (many requests per turn), so a reply that
    came back at once still takes several turns to reach its caller: each deadline noticed late
    extends it again (up to BUSY_ROUNDS timeouts), instead of sending every caller to whoami."""
    server = redis_servers.start()
    client = connect(Shared(redis_url=server.url, timeout=5), environ={})
    batcher = Batcher(client, timeout=0.15)
    try:
        await client.ping()
        loop = asyncio.get_running_loop()
        turns = 12

        def long_turn() -> None:  # every turn of the loop takes 100 ms, for 12 turns
            nonlocal turns
            time.sleep(0.1)
            turns -= 1
            if turns:
                loop.call_soon(long_turn)

        loop.call_soon(long_turn)
        outcomes = await asyncio.gather(
            *(batcher.run(lambda pipe, n=n: pipe.echo(f"r{n}")) for n in range(20)),
            return_exceptions=True,
        )
        assert outcomes == [[f"r{n}".encode()] for n in range(20)], outcomes
    finally:
        await batcher.aclose()
        await client.aclose()
