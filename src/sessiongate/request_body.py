"""Reading a request body the gate answers itself (relay calls, the sessions page's forms):
bounded in size and in time, and telling a client that left from one that sent too much."""

from __future__ import annotations

import asyncio

from starlette.types import Receive

#: What `read_body` returns when the client disconnected before its request was complete.
GONE = object()


async def read_body(
    receive: Receive, *, limit: int, deadline: float
) -> bytes | int | object | None:
    """The body; its size so far (int) once past `limit`; None past `deadline` (s); GONE on
    a disconnect."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(deadline):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return GONE
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return size
                chunks.append(chunk)
                if not message.get("more_body"):
                    return b"".join(chunks)
    except TimeoutError:
        return None
