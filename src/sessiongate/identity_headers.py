"""Stage 4: the identity headers the protected app trusts, and removal of spoofed ones.

Values come from dot paths into whoami's session JSON (`identity.traits.email`). Before the
gate adds them, every client-sent header whose name matches one of them case-insensitively *or
with `_` for `-`* is removed (CVE-2025-64484 class: some servers fold `X_User_Id` into
`X-User-Id`). Header values are made safe once, when the session is cached: anything outside
visible ASCII and space is percent-encoded as UTF-8, so no CR/LF or 8-bit byte can reach the app.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

RawHeaders = list[tuple[bytes, bytes]]

KEEP_MEMO = 4096
KEEP_NAME_BYTES = 64
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def canonical(name: bytes) -> bytes:
    return name.lower().replace(b"_", b"-")


def lookup(session: Any, path: tuple[str, ...]) -> Any:
    node = session
    for key in path:
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    return node


def header_value(value: Any) -> bytes | None:
    """A JSON value as a header value: strings as-is, others as compact JSON; None → absent."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    # surrogatepass: json.loads turns a lone `\ud800` escape into a lone surrogate
    return quote(text.encode("utf-8", "surrogatepass"), safe=_SAFE).encode("ascii")


class IdentityHeaders:
    """Compiled once from settings; `compute` runs per cached session, `apply` per request."""

    def __init__(
        self,
        mapping: dict[str, str],
        session_header: str | None = None,
        spoofable: frozenset[str] = frozenset(),
    ) -> None:
        self.fields = [
            (name.lower().encode("ascii"), tuple(path.split("."))) for name, path in mapping.items()
        ]
        self.session_header = session_header.lower().encode("ascii") if session_header else None
        self.spoofable = frozenset(n.encode("ascii") for n in spoofable) | frozenset(
            canonical(n) for n, _ in self.fields
        )
        self._keep: dict[bytes, bool] = {}  # header name → not spoofable (bounded memo)

    def compute(self, session: dict[str, Any]) -> RawHeaders:
        out: RawHeaders = []
        for name, path in self.fields:
            value = header_value(lookup(session, path))
            if value is not None:
                out.append((name, value))
        if self.session_header is not None:
            raw = json.dumps(session, separators=(",", ":")).encode()
            out.append((self.session_header, base64.urlsafe_b64encode(raw).rstrip(b"=")))
        return out

    def strip(self, headers: RawHeaders) -> RawHeaders:
        """The request's headers minus every variant of a header the gate owns."""
        keep = self._keep  # header names repeat across requests: remember the verdicts
        return [(n, v) for n, v in headers if keep.get(n) or (n not in keep and self._learn(n))]

    def _learn(self, name: bytes) -> bool:
        verdict = canonical(name) not in self.spoofable
        # bounded in count and size: clients choose header names
        if len(self._keep) < KEEP_MEMO and len(name) <= KEEP_NAME_BYTES:
            self._keep[name] = verdict
        return verdict
