"""Stage "handle errors": the gate's own answers, as raw ASGI messages in Kratos' envelope.

Clients of an Ory-protected app already parse Kratos errors; the gate's 401/403/429/502/503/504
use the same herodot envelope (see `sessiongate.herodot`) so they need nothing new.
"""

from __future__ import annotations

from starlette.types import Send

from sessiongate.herodot import error_bytes, error_headers

RawHeaders = list[tuple[bytes, bytes]]


async def send_error(
    send: Send,
    status: int,
    *,
    reason: str = "",
    error_id: str = "",
    headers: RawHeaders | None = None,
    body: bytes | None = None,
    head: bool = False,
) -> None:
    payload = body if body is not None else error_bytes(status, id=error_id, reason=reason)
    all_headers = [
        *error_headers(error_id),
        (b"content-length", str(len(payload)).encode()),
        (b"cache-control", b"no-store"),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": b"" if head else payload})


async def send_redirect(
    send: Send, location: str, *, status: int = 303, headers: RawHeaders | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"location", location.encode("latin-1")),
                (b"content-length", b"0"),
                (b"cache-control", b"no-store"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def send_json(
    send: Send, status: int, body: bytes, headers: RawHeaders | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
