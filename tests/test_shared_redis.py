"""`shared_redis.connect`: a real redis-server by URL, with the password from the environment,
over a unix socket, through Sentinel; `shared.timeout` bounds a stalled server."""

from __future__ import annotations

import asyncio
import time

import pytest

from redis_servers import RedisServers, free_port, redis_servers  # noqa: F401
from sessiongate.config import Sentinel, Shared
from sessiongate.shared_redis import RedisError, connect, describe, key


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
