"""A fleet for the shared-mode tests: `sessiongate serve` processes sharing one real Redis.

Each gate is a real process (as users run it) in front of the same Kratos fake and echo app
(`backends` from test_cli), with `SESSIONGATE_SECRET` set and `shared.redis_url` pointing at a
`redis_servers` server. `Fleet.get` sends one request with a session token.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from redis_servers import RedisServer
from test_cli import Backends, Running, clean_env, free_port, serve, write_config

SECRET = "shared-fleet-test-secret-0123456789abcdef"
WHOAMI = ("GET", "/sessions/whoami")


def gate_settings(backends: Backends, redis: RedisServer, port: int, **shared: Any) -> dict:
    return {
        "listen": {"host": "127.0.0.1", "port": port, "server": "uvicorn"},
        "ory": {
            "public_url": backends.kratos.public_url,
            "admin_url": backends.kratos.admin_url,
            "timeout": "2s",
        },
        "upstream": {"url": backends.upstream.url, "timeout": 5, "connect_timeout": 1},
        "access": {"login_url": "http://127.0.0.1:4433/self-service/login/browser"},
        "sessions_api": {"enabled": True},
        "shared": {"redis_url": redis.url, **shared},
        "metrics": {"port": 0},  # several gates at once: each its own metrics port
        "log": {"level": "warning"},
    }


@contextlib.contextmanager
def fleet(
    tmp_path: Path,
    backends: Backends,
    redis: RedisServer,
    count: int = 2,
    *,
    sections: dict[str, Any] | None = None,
    **shared: Any,
) -> Iterator[list[Running]]:
    """`count` gate processes; each its own port, all the same Redis and secret (and the
    same other `sections` of settings, e.g. `sessions_page`)."""
    with contextlib.ExitStack() as stack:
        gates = []
        for n in range(count):
            port = free_port()
            workdir = tmp_path / f"gate{n}"
            workdir.mkdir()
            settings = {**gate_settings(backends, redis, port, **shared), **(sections or {})}
            path = write_config(workdir / "gate.yaml", settings)
            env = clean_env(SESSIONGATE_SECRET=SECRET)
            gates.append(stack.enter_context(serve(workdir, ["--config", str(path)], env, port)))
        yield gates


def whoami_calls(backends: Backends) -> int:
    return backends.kratos.fake.count(*WHOAMI)


async def get(client: httpx.AsyncClient, gate: Running, token: str) -> httpx.Response:
    return await client.get(gate.url + "/anything", headers={"X-Session-Token": token})


async def get_all(gates: list[Running], tokens: list[str], *, concurrency: int = 64) -> list[int]:
    """Every token at every gate, concurrently; the statuses."""
    limit = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=20, limits=limits) as client:

        async def one(gate: Running, token: str) -> int:
            async with limit:
                return (await get(client, gate, token)).status_code

        return list(await asyncio.gather(*(one(g, t) for t in tokens for g in gates)))
