"""The shared mode's Redis connection: redis-py's asyncio client built from `shared.*`.

Owns only the connection: `shared.redis_url` (redis://, rediss:// for TLS, unix://) or
`shared.sentinel` (the sentinels are asked for the master, TLS with `shared.sentinel.tls`), the
passwords from the environment (`SESSIONGATE_REDIS_PASSWORD`, `SESSIONGATE_SENTINEL_PASSWORD`),
and `shared.timeout` as the socket timeouts. No retries inside the client: a caller that misses
its deadline decides what to do (retry in the background, degrade, or fail closed), so a slow
Redis never holds a request longer than `shared.timeout`. Log lines name the server with
`describe()`, which never shows a URL's userinfo.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from sessiongate.config import (
    REDIS_PASSWORD_ENV,
    SENTINEL_PASSWORD_ENV,
    Shared,
    redact_url,
)

#: What a failed Redis call raises (connection refused/reset, timeout, error replies, AUTH).
RedisError = aioredis.RedisError


def _env(name: str, environ: Mapping[str, str] | None) -> str | None:
    return (os.environ if environ is None else environ).get(name) or None


def connect(
    shared: Shared,
    *,
    environ: Mapping[str, str] | None = None,
    socket_timeout: float | None = None,
    max_connections: int | None = 64,
) -> aioredis.Redis:
    """A client for `shared`; `socket_timeout` defaults to `shared.timeout` (a follower that
    blocks on XREAD passes its block time plus `shared.timeout`). Connects lazily."""
    if not shared.enabled:
        raise ValueError("the shared mode is off (no shared.redis_url or shared.sentinel)")
    timeout = shared.timeout if socket_timeout is None else socket_timeout
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": shared.timeout,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": max_connections,
        "decode_responses": False,
        "client_name": "sessiongate",
    }
    password = _env(REDIS_PASSWORD_ENV, environ)
    if password is not None:
        common["password"] = password
    if shared.sentinel is not None:
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": shared.timeout,
            "socket_connect_timeout": shared.timeout,
            "ssl": shared.sentinel.tls,
        }
        sentinel_password = _env(SENTINEL_PASSWORD_ENV, environ)
        if sentinel_password is not None:
            sentinel_kwargs["password"] = sentinel_password
        sentinel = Sentinel(
            shared.sentinel.addresses(),
            sentinel_kwargs=sentinel_kwargs,
            ssl=shared.sentinel.tls,
            **common,
        )
        return sentinel.master_for(shared.sentinel.master)
    assert shared.redis_url is not None
    return aioredis.Redis.from_url(shared.redis_url, **common)


def describe(shared: Shared) -> str:
    """The Redis the gate uses, for log lines: never a password."""
    if shared.sentinel is not None:
        tls = " (TLS)" if shared.sentinel.tls else ""
        return (
            f"sentinel master {shared.sentinel.master} via {', '.join(shared.sentinel.nodes)}{tls}"
        )
    return redact_url(shared.redis_url or "")


def key(shared: Shared, *parts: str) -> str:
    """`<prefix>:<part>:<part>`: every key the gate writes is under `shared.prefix`."""
    return ":".join((shared.prefix, *parts))
