"""How the Kratos fake finds a session token in a request, and its session cookie codec.

Kratos' order (CONTRACT §1): a non-empty `X-Session-Token`; else the *first* cookie with the
session cookie's name, decoded; else `Authorization: Bearer <token>` split on single spaces into
exactly two parts, scheme case-insensitive. The cookie is an encrypted blob holding the token,
the expiry it was issued for and a nonce, never the token itself (CONTRACT §5).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from cryptography.fernet import Fernet, InvalidToken
from starlette.datastructures import Headers

Source = Literal["header", "cookie", "bearer"]


@dataclass(frozen=True)
class FoundToken:
    token: str
    source: Source
    cookie_expires_at: datetime | None = None  # only for source == "cookie"


def first_cookie(headers: Headers, name: str) -> str | None:
    """Go's `r.Cookie(name)`: the first cookie of that name across all Cookie headers."""
    for header in headers.getlist("cookie"):
        for part in header.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                if len(value) > 1 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value
    return None


def bearer_token(headers: Headers) -> str | None:
    parts = headers.get("authorization", "").split(" ")
    if len(parts) != 2 or parts[0].lower() != "bearer" or not parts[1]:
        return None
    return parts[1]


class CookieCodec:
    """Encrypts `{session_token, expires_at, nonce}`; a new nonce makes every issue unique."""

    def __init__(self, key: bytes | None = None) -> None:
        self._fernet = Fernet(key or Fernet.generate_key())
        #: Cookie values a test fixed (`create_session(cookie=...)`): value → (token, expiry).
        self.fixed: dict[str, tuple[str, datetime | None]] = {}

    def encode(self, token: str, expires_at: datetime | None) -> str:
        payload = {
            "session_token": token,
            "expires_at": expires_at.timestamp() if expires_at else None,
            "nonce": secrets.token_hex(16),
        }
        return self._fernet.encrypt(json.dumps(payload).encode()).decode()

    def decode(self, value: str) -> tuple[str, datetime | None] | None:
        """(token, expiry stored in the cookie), or None when it cannot be decoded (securecookie's
        "the value is not valid"). The token is "" in a cookie that holds none."""
        if value in self.fixed:
            return self.fixed[value]
        try:
            payload = json.loads(self._fernet.decrypt(value.encode()))
        except (InvalidToken, ValueError, UnicodeError):
            return None
        if not isinstance(payload, dict):
            return None
        token = payload.get("session_token")
        token = token if isinstance(token, str) else ""
        stamp = payload.get("expires_at")
        expiry = datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, int | float) else None
        return token, expiry


def find_token(headers: Headers, cookie_name: str, codec: CookieCodec) -> FoundToken | None:
    header_token = headers.get("x-session-token", "")
    if header_token:
        return FoundToken(header_token, "header")
    cookie = first_cookie(headers, cookie_name)
    if cookie is not None:
        decoded = codec.decode(cookie)
        if decoded is not None and decoded[0]:
            return FoundToken(decoded[0], "cookie", decoded[1])
    bearer = bearer_token(headers)
    if bearer:
        return FoundToken(bearer, "bearer")
    return None
