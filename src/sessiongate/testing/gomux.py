"""Go's `http.ServeMux` (Go 1.22+ method patterns) and `http.Redirect`, as Kratos v26.2.0 uses them.

Kratos registers `METHOD /path` patterns on a plain ServeMux (oryx/httprouterx/router.go:105-111,
`r.mux.Handle(method+" "+route, handler)`). What a client can see of that, and of Starlette's
Router were it used instead:

* a path matched by some pattern but not for this method: 405, `Allow` listing every method of
  every matching pattern, sorted, HEAD added when GET is there (ServeMux.matchingMethods);
* no pattern: 404 `404 page not found` (http.NotFound); neither has a JSON body;
* no trailing-slash redirect: no Kratos pattern ends in `/`, so `/sessions/whoami/` is a 404;
* `http.Redirect` on GET writes a small HTML body (HEAD gets its Content-Type, others neither).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

TEXT_PLAIN = b"text/plain; charset=utf-8"
TEXT_HTML = "text/html; charset=utf-8"
REASONS = {303: "See Other", 307: "Temporary Redirect"}


def go_redirect(location: str, status: int, method: str) -> tuple[bytes, list[tuple[str, str]]]:
    """Body and headers of Go's `http.Redirect(w, r, location, status)` (net/http, server.go)."""
    headers = [("Location", location)]
    if method in ("GET", "HEAD"):
        headers.append(("Content-Type", TEXT_HTML))
    body = b""
    if method == "GET":
        # htmlEscape: & ' < > " as Go writes them; then fmt.Fprintln adds a second newline
        escaped = html.escape(location, quote=True).replace("&#x27;", "&#39;")
        escaped = escaped.replace("&quot;", "&#34;")
        body = f'<a href="{escaped}">{REASONS[status]}</a>.\n\n'.encode()
    return body, headers


async def _plain(send: Send, status: int, text: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    """`http.Error`: text/plain, nosniff, the message and a newline."""
    body = text + b"\n"
    headers = [
        *extra,
        (b"content-type", TEXT_PLAIN),
        (b"x-content-type-options", b"nosniff"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GoMux:
    """Dispatch to the first route matching path and method; else 405 with Allow, else 404.

    Routes are listed literal-first (`/sessions/whoami` before `/sessions/{id}`), which is what
    ServeMux's most-specific-pattern rule picks for these paths."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self.routes = list(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        allowed: set[str] = set()
        for route in self.routes:
            match, child = route.matches(scope)
            if match == Match.FULL:
                scope.update(child)
                await route.handle(scope, receive, send)
                return
            if match == Match.PARTIAL:
                allowed |= set(getattr(route, "methods", None) or ())
        if allowed:
            if "GET" in allowed:
                allowed.add("HEAD")
            allow = ", ".join(sorted(allowed)).encode()
            await _plain(send, 405, b"Method Not Allowed", [(b"allow", allow)])
            return
        await _plain(send, 404, b"404 page not found", [])
