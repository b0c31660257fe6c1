"""Kratos' JSON error envelope (ory/herodot v0.10.8), shared by the Kratos fake and the gate.

One place decides the exact bytes of an error: key order `id, code, status, request, reason,
debug, details, message`; empty keys left out except `message`; `Content-Type:
application/json` without a charset; `Ory-Error-Id` always sent, empty when there is no id
(CONTRACT §2). The gate answers in the same envelope so clients need only one error parser.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

#: herodot's fixed messages for the statuses these endpoints use.
DEFAULT_MESSAGES: dict[int, str] = {
    400: "The request was malformed or contained invalid parameters",
    401: "The request could not be authorized",
    403: "The requested action was forbidden",
    404: "The requested resource could not be found",
    405: "The requested method is not allowed",
    408: "The request took too long to arrive",
    413: "The request body is too large",
    409: "The resource could not be created due to a conflict",
    429: "The request was rate limited",
    500: "An internal server error occurred, please contact the system administrator",
    502: "The upstream service returned an invalid response",
    503: "The service is unavailable right now",
    504: "The upstream service did not answer in time",
}

ERROR_CONTENT_TYPE = b"application/json"


def error_body(
    code: int,
    *,
    id: str = "",
    reason: str = "",
    message: str | None = None,
    request_id: str = "",
    details: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The envelope as a dict in herodot's key order; `extra` adds top-level keys after `error`."""
    err: dict[str, Any] = {}
    if id:
        err["id"] = id
    err["code"] = code
    err["status"] = HTTPStatus(code).phrase
    if request_id:
        err["request"] = request_id
    if reason:
        err["reason"] = reason
    if details:
        err["details"] = details
    err["message"] = message if message is not None else DEFAULT_MESSAGES.get(code, "")
    body: dict[str, Any] = {"error": err}
    if extra:
        body.update(extra)
    return body


def error_bytes(code: int, **kwargs: Any) -> bytes:
    return json.dumps(error_body(code, **kwargs), separators=(",", ":")).encode()


def error_headers(error_id: str = "") -> list[tuple[bytes, bytes]]:
    """Raw ASGI headers every herodot error carries."""
    return [
        (b"content-type", ERROR_CONTENT_TYPE),
        (b"ory-error-id", error_id.encode("latin-1")),
    ]
