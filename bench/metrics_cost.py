"""The metrics' CPU per request, without servers or sockets: what `metrics.enabled` costs.

Middleware mode around a bare ASGI app, called in process (no network: the figure is the gate's
own Python work), for a client whose session is cached, with metrics on (the default) and off,
in rounds interleaved; the fastest round of each (the least disturbed by other processes) is
compared. `--multiprocess` runs prometheus_client's multiprocess mode, as `sessiongate serve`
does. Divide the difference by the gate's time per request in bench.py's proxy row
(1 / req/s on one core) to estimate the req/s ratio the metrics cost.

    python bench/metrics_cost.py [--multiprocess] [--requests 20000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
import time
from typing import Any


async def bare(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def build(enabled: bool) -> tuple[Any, list[tuple[bytes, bytes]]]:
    from sessiongate.cache import CachedSession
    from sessiongate.config import Settings
    from sessiongate.credentials import find_credential
    from sessiongate.middleware import SessionGateMiddleware

    settings = Settings.model_validate(
        {"public_url": "http://gate.test", "metrics": {"enabled": enabled}}
    )
    gated = SessionGateMiddleware(bare, settings)
    headers = [(b"host", b"gate.test"), (b"cookie", b"ory_kratos_session=bench")]
    credential = find_credential(headers, gated.gatekeeper.cookie_matcher)
    assert credential is not None
    body = b'{"id":"s1","identity":{"id":"i1"}}'
    entry = CachedSession.of("s1", "i1", time.time() + 3600, body)
    gated.cache.put(credential.cache_key, entry, started=time.monotonic())
    return gated, headers


async def run(gated: Any, headers: list[tuple[bytes, bytes]], requests: int) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        pass

    gc.collect()
    started = time.perf_counter()
    for _ in range(requests):
        scope = {"type": "http", "method": "GET", "path": "/a", "headers": list(headers)}
        await gated(scope, receive, send)
    return (time.perf_counter() - started) / requests * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--multiprocess", action="store_true")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    if args.multiprocess:  # before prometheus_client is imported
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="metrics-cost-")
    gates = {enabled: build(enabled) for enabled in (True, False)}
    best = {True: float("inf"), False: float("inf")}
    for enabled in (True, False):
        await run(*gates[enabled], 2000)  # warm up
    for _ in range(args.rounds):
        for enabled in (True, False):
            best[enabled] = min(best[enabled], await run(*gates[enabled], args.requests))
    mode = "multiprocess" if args.multiprocess else "in-memory"
    print(
        f"{mode}: metrics on {best[True]:.2f} us/request, off {best[False]:.2f} us/request: "
        f"the metrics cost {best[True] - best[False]:.2f} us a request"
    )


if __name__ == "__main__":
    asyncio.run(main())
