"""The reference point: the gate a team would write in an afternoon.

Starlette, an httpx.AsyncClient for both whoami and forwarding, a dict as the cache. It is
correct enough for the benchmark (cookie → whoami once → forward with an identity header) and
deliberately ordinary: sessiongate's targets are ratios against it.
"""

from __future__ import annotations

import argparse
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def build(upstream: str, whoami: str) -> Starlette:
    client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=512, max_keepalive_connections=512)
    )
    cache: dict[str, tuple[float, str]] = {}

    async def proxy(request: Request) -> Response:
        cookie = request.cookies.get("ory_kratos_session")
        if not cookie:
            return Response(status_code=401)
        hit = cache.get(cookie)
        if hit is None or hit[0] < time.monotonic():
            r = await client.get(
                whoami + "/sessions/whoami", headers={"Cookie": f"ory_kratos_session={cookie}"}
            )
            if r.status_code != 200:
                return Response(status_code=401)
            hit = (time.monotonic() + 60, r.json()["identity"]["id"])
            cache[cookie] = hit
        upstream_response = await client.request(
            request.method,
            upstream + request.url.path,
            headers={"X-User-Id": hit[1]},
            content=await request.body(),
        )
        return Response(
            upstream_response.content,
            status_code=upstream_response.status_code,
            headers={"content-type": upstream_response.headers.get("content-type", "text/html")},
        )

    return Starlette(routes=[Route("/{path:path}", proxy, methods=["GET", "POST"])])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--whoami", required=True)
    args = parser.parse_args()
    uvicorn.run(
        build(args.upstream, args.whoami),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
