"""Stage 1 of a request: find the Ory credential, exactly as Kratos would (CONTRACT §1).

Order: a non-empty `X-Session-Token`; else the first cookie whose name is one of the configured
session cookie names or globs; else `Authorization: Bearer <token>` (exactly two parts split on
single spaces, scheme case-insensitive). Only that one credential is ever sent on to Kratos:
never the app's other cookies or headers. Works on raw ASGI headers (lower-case byte names) so
the hot path builds no framework objects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

RawHeaders = list[tuple[bytes, bytes]]
Kind = Literal["token", "cookie", "bearer"]

#: Longer credentials are refused before any Kratos call (Kratos' are ~40 bytes, cookies ~300).
MAX_CREDENTIAL_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Credential:
    kind: Kind
    value: str
    cookie_name: str = ""

    @property
    def cache_key(self) -> bytes:
        """A digest of the credential: the raw value is never stored or logged."""
        material = f"{self.kind}\x00{self.cookie_name}\x00{self.value}".encode()
        return hashlib.blake2b(material, digest_size=20).digest()

    def whoami_headers(self) -> dict[str, str]:
        """The one header Kratos needs to read this credential."""
        if self.kind == "token":
            return {"X-Session-Token": self.value}
        if self.kind == "cookie":
            return {"Cookie": f"{self.cookie_name}={self.value}"}
        return {"Authorization": f"Bearer {self.value}"}


class MalformedCredential(ValueError):
    """The request carries a credential no Kratos could accept (too long, control bytes)."""


def _clean(raw: bytes) -> str:
    if len(raw) > MAX_CREDENTIAL_BYTES:
        raise MalformedCredential("credential too large")
    # Visible ASCII only: no controls, spaces or 8-bit bytes (header or cookie injection).
    if not all(0x21 <= b <= 0x7E for b in raw):
        raise MalformedCredential("credential has characters outside visible ASCII")
    return raw.decode("ascii")


class CookieMatcher:
    """Exact names first (a set lookup), then globs such as `ory_session_*`."""

    def __init__(self, names: list[str]) -> None:
        self.exact = frozenset(n for n in names if not any(c in n for c in "*?["))
        self.globs = tuple(n for n in names if n not in self.exact)

    def __call__(self, name: str) -> bool:
        return name in self.exact or any(fnmatchcase(name, g) for g in self.globs)


def iter_cookies(header: bytes) -> list[tuple[str, str]]:
    """Cookie header → (name, value) pairs in order; undecodable bytes are kept as latin-1."""
    out = []
    for part in header.decode("latin-1").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            out.append((name, value))
    return out


def find_credential(headers: RawHeaders, is_session_cookie: CookieMatcher) -> Credential | None:
    """The credential Kratos would use, or None. Raises MalformedCredential for junk."""
    cookie_headers: list[bytes] = []
    authorization = b""
    token_seen = False
    for name, value in headers:
        if name == b"x-session-token":
            # Go's Header.Get: only the first X-Session-Token counts, even when empty.
            if value and not token_seen:
                return Credential("token", _clean(value))
            token_seen = True
        elif name == b"cookie":
            cookie_headers.append(value)
        elif name == b"authorization" and not authorization:
            authorization = value
    for header in cookie_headers:
        for cname, cvalue in iter_cookies(header):
            if cvalue and is_session_cookie(cname):
                return Credential("cookie", _clean(cvalue.encode("latin-1")), cname)
    if authorization:
        parts = authorization.split(b" ")
        if len(parts) == 2 and parts[0].lower() == b"bearer" and parts[1]:
            return Credential("bearer", _clean(parts[1]))
    return None
