"""Middleware mode's own cost per request, in-process (no server, no sockets), cache warm.

    .venv/bin/python bench/middleware_cost.py [--prof]

Drives `SessionGateMiddleware` and the bare app it wraps with the same scope, 20,000 times
each, twice, with metrics on and off; whoami is a loopback aiohttp server (asked once).
`--prof` adds a cProfile of the gated loop. The gap to the server row of bench.py is the
server's work that the middleware makes no cheaper (bench/README.md, "Middleware mode").
"""

import asyncio
import cProfile
import pstats
import sys
import time

from aiohttp import web

from sessiongate.config import Settings
from sessiongate.middleware import SessionGateMiddleware

BODY = b"<p>" + b"x" * 1017 + b"</p>"
HEADERS = [(b"content-type", b"text/html"), (b"content-length", b"1024")]


async def bare(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


SESSION = {
    "id": "s1",
    "active": True,
    "expires_at": "2099-01-01T00:00:00Z",
    "authenticator_assurance_level": "aal1",
    "identity": {"id": "i1", "traits": {"email": "a@example.com"}},
    "authentication_methods": [{"method": "password"}],
}


async def whoami(request):
    return web.json_response(SESSION)


async def main(metrics):
    app = web.Application()
    app.router.add_get("/sessions/whoami", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    s = Settings.model_validate(
        {
            "ory": {"public_url": f"http://127.0.0.1:{port}"},
            "metrics": {"enabled": metrics},
            "upstream": {"url": "http://127.0.0.1:1"},
        }
    )
    mw = SessionGateMiddleware(bare, s)
    scope0 = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"wrk"),
            (b"cookie", b"ory_kratos_session=ory_st_abc; theme=dark"),
        ],
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 8000),
    }

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(m):
        pass

    async def one(app):
        await app(dict(scope0, headers=list(scope0["headers"])), receive, send)

    await one(mw)  # warm the cache
    N = 20000
    for app, name in ((bare, "bare"), (mw, "gated"), (bare, "bare"), (mw, "gated")):
        t = time.perf_counter()
        for _ in range(N):
            await one(app)
        print(
            name,
            f"{(time.perf_counter() - t) / N * 1e6:.2f} us/request",
            "metrics" if metrics else "",
        )
    if "--prof" in sys.argv:
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(N):
            await one(mw)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(18)
    await mw.kratos.aclose()
    await mw.gatekeeper.aclose()
    if mw.metrics is not None:
        mw.metrics.close()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(True))
    asyncio.run(main(False))
