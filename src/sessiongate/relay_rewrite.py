"""URLs in Kratos' answers, rewritten to point at the gate (`Link`, `Location`, `logout_url`).

A URL is rewritten only when it is relative or on one of Kratos' own origins (public, admin),
and Kratos' base path is removed only at a segment boundary. `Set-Cookie` domains are rewritten
when `sessions_api.cookie_domain` is set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.types import Scope

from sessiongate.config import origin_of

_LINK_URL = re.compile(r"<([^>]*)>")


class UrlRewriter:
    def __init__(
        self,
        prefix: str,
        kratos_urls: list[str],
        gate_origin: Callable[[Scope], str | None],
    ) -> None:
        self.prefix = prefix.rstrip("/")
        self.kratos_origins = {origin_of(u): urlsplit(u).path for u in kratos_urls}
        self._gate_origin = gate_origin

    def gate_base(self, scope: Scope) -> str:
        return (self._gate_origin(scope) or "") + self.prefix

    def rewrite_url(self, url: str, scope: Scope) -> str:
        """A Kratos URL (relative, or absolute on a Kratos origin) → the same path on the gate."""
        if url.startswith("/") and not url.startswith("//"):
            return self.gate_base(scope) + url
        try:
            origin = origin_of(url)
        except ValueError:
            return url
        base_path = self.kratos_origins.get(origin)
        if base_path is None:
            return url
        rest = url[len(url.split("/", 3)[0]) + 2 + len(url.split("/", 3)[2]) :]
        boundaries = (base_path + "/", base_path + "?", base_path + "#")
        if base_path and (rest == base_path or rest.startswith(boundaries)):
            rest = rest[len(base_path) :]  # only at a segment boundary: /base.evil is not /base
        base = self.gate_base(scope)
        if not base.startswith("http") and rest.startswith(("//", "/\\")):
            return url  # with no known gate origin this would read as scheme-relative //host
        return base + (rest or "/")

    def rewrite_link(self, value: str, scope: Scope) -> str:
        return _LINK_URL.sub(lambda m: f"<{self.rewrite_url(m.group(1), scope)}>", value)

    def rewrite_logout_url(self, body: bytes, scope: Scope) -> bytes:
        try:
            data = json.loads(body)
        except ValueError:
            return body
        if not isinstance(data, dict) or not isinstance(data.get("logout_url"), str):
            return body
        data["logout_url"] = self.rewrite_url(data["logout_url"], scope)
        return json.dumps(data, separators=(",", ":")).encode()


def rewrite_cookie_domain(cookie: str, domain: str) -> str:
    parts = [p for p in cookie.split(";") if not p.strip().lower().startswith("domain=")]
    parts.insert(1, f" Domain={domain}")
    return ";".join(parts)
