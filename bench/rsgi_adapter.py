"""A measurement, not a product: the gate behind granian's RSGI interface (issue 15).

RSGI hands the app a scope object and a protocol instead of ASGI's per-message dicts. The
gate's core (authenticate, decide, proxy) speaks ASGI, so the thinnest RSGI adapter builds
the ASGI scope from RSGI's (headers `str` → `bytes`) and maps `receive`/`send` onto the
protocol (response headers `bytes` → `str`). This is that adapter, HTTP only (no WebSocket:
RSGI's `accept()` cannot name a subprotocol) and with the whole request body read at once:
enough for the benchmark's GET rows, which is all it is for.

    python -m granian --interface rsgi --factory bench.rsgi_adapter:gate   (SESSIONGATE_CONFIG)

bench.py runs it as the row "sessiongate proxy, RSGI adapter (prototype)" beside the gate
under granian's ASGI, and the empty proxies under both interfaces (bench/README.md).
"""

from __future__ import annotations

from typing import Any

from sessiongate.serve import gate_from_environment


class RsgiGate:
    """The ASGI gate as an RSGI app (HTTP requests only)."""

    def __init__(self, asgi: Any) -> None:
        self.asgi = asgi

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        host, _, port = scope.client.rpartition(":")
        path = scope.path
        asgi_scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": scope.http_version,
            "method": scope.method,
            "scheme": scope.scheme,
            "path": path,
            "raw_path": path.encode("latin-1"),
            "query_string": scope.query_string.encode("latin-1"),
            "root_path": "",
            "headers": [
                (name.encode("latin-1"), value.encode("latin-1"))
                for name, value in scope.headers.items()
            ],
            "client": (host, int(port)),
            "server": None,
        }
        received = False
        status = 200
        headers: list[tuple[str, str]] = []
        stream: Any = None

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": await protocol(), "more_body": False}
            await protocol.client_disconnect()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, headers, stream
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, value in message.get("headers", ())
                ]
                return
            body = message.get("body", b"")
            if stream is None:
                if not message.get("more_body", False):
                    protocol.response_bytes(status, headers, body)
                    return
                stream = protocol.response_stream(status, headers)
            if body:
                await stream.send_bytes(body)

        await self.asgi(asgi_scope, receive, send)


def gate() -> RsgiGate:
    """granian's factory: the gate as `sessiongate serve` builds it (collector tuned too)."""
    return RsgiGate(gate_from_environment())
