"""Protected apps for the tests: real ASGI apps served by uvicorn behind the gate.

`EchoApp` answers every request with what it received (method, path, query, headers, body
length) and records it, so tests can assert what reached the app and what did not.
`ClosingApp` is a WebSocket app that records how its sockets were closed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import Receive, Scope, Send


class EchoApp:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        record = {
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": (scope.get("raw_path") or b"").decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "headers": headers,
            "body_size": size,
        }
        self.requests.append(record)
        path = scope["path"]
        if path == "/cookies":
            out = [
                (b"set-cookie", b"a=1; Path=/; Expires=Wed, 21 Oct 2037 07:28:00 GMT"),
                (b"set-cookie", b"b=2; Path=/; HttpOnly"),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": out})
            await send({"type": "http.response.body", "body": b"cookies"})
            return
        if path.startswith("/big/"):
            total = int(path.rsplit("/", 1)[1])
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(total).encode())],
                }
            )
            chunk = b"x" * (1 << 20)
            sent = 0
            while sent < total:
                part = chunk[: min(len(chunk), total - sent)]
                await send({"type": "http.response.body", "body": part, "more_body": True})
                sent += len(part)
            await send({"type": "http.response.body", "body": b""})
            return
        if path.startswith("/sse/"):
            # /sse/<n>: server-sent events, one every 0.1 s, n of them
            head = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
            await send({"type": "http.response.start", "status": 200, "headers": head})
            for i in range(int(path.rsplit("/", 1)[1])):
                await send(
                    {"type": "http.response.body", "body": b"data: %d\n\n" % i, "more_body": True}
                )
                await asyncio.sleep(0.1)
            await send({"type": "http.response.body", "body": b""})
            return
        if path.startswith("/slow/"):
            await asyncio.sleep(float(path.rsplit("/", 1)[1]))
        body = json.dumps(record).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"connection", b"keep-alive, x-hop"),
                    (b"x-hop", b"must-not-pass"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.requests.append(
            {
                "method": "WS",
                "path": scope["path"],
                "headers": list(headers.items()),
                "body_size": 0,
                "query": "",
                "raw_path": "",
            }
        )
        await send({"type": "websocket.accept"})
        await send(
            {"type": "websocket.send", "text": json.dumps({"user": headers.get("x-user-id")})}
        )
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": "echo:" + (message.get("text") or "")})

    def last_headers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for k, v in self.requests[-1]["headers"]:
            out.setdefault(k, []).append(v)
        return out


class ClosingApp:
    """Closes with the code and reason a client asks for (`close:<code>:<reason>`), and
    records the code and reason of a client's close."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.disconnects: list[tuple[int, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnects.append((message.get("code", 0), message.get("reason") or ""))
                return
            text = message.get("text") or ""
            if text.startswith("close:"):
                _, code, reason = text.split(":", 2)
                await send({"type": "websocket.close", "code": int(code), "reason": reason})
                return
            await send({"type": "websocket.send", "text": "echo:" + text})
