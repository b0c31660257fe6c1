"""Stage 3: decisions that need no session: is this path public, is this a browser navigation,
and what is the gate's own origin and the request's original URL.

Public paths are matched on the *normalised* path (globs: `*` within a segment, `**` across
segments), and a path whose raw form contains encoded slashes or dots, backslashes, `;`
parameters or dot segments, or whose Unicode NFKC form differs from itself (the fullwidth
solidus U+FF0F and full stop U+FF0E become `/` and `.` in an app that normalises), is never
public: a trick that could make the app see a different path than the gate can only ever
cost a login. Requests with no Host header or several are refused (`has_one_host`).
The cross-origin rule of the relay's state changes and of WebSocket handshakes is here too
(`is_same_or_allowed_origin`), so that both read the same Origin the same way.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from collections.abc import Callable

from sessiongate.config import Settings, origin_of, path_globs_pattern

RawHeaders = list[tuple[bytes, bytes]]

_TRICKY = re.compile(rb"%2e|%2f|%5c|%25|\\|;|/\.\.?(/|$)|//", re.IGNORECASE)
# In the decoded path: a `%` left over (`%%32%65`, `%u002e`: decoded again, a dot), NUL and
# controls (C servers stop at NUL), U+FFFD (invalid UTF-8 such as the overlong dot %c0%ae).
_TRICKY_DECODED = re.compile(r"[%\\\x00-\x1f\x7f\ufffd]")
_HTTP_SCHEME = {"ws": "http", "wss": "https"}  # a WebSocket's origin is its HTTP origin
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")


def host_origin(scheme: str, host: str) -> str | None:
    """`scheme://host[:port]` for a well-formed Host value (`name[:port]`, `[v6][:port]`), else
    None: no userinfo, path, list or stray character can become part of an origin."""
    if not _HOST.match(host):
        return None
    try:
        return origin_of(f"{scheme}://{host}")
    except ValueError:  # port > 65535, bracketed non-IPv6 such as [fff]
        return None


class Decider:
    def __init__(self, settings: Settings) -> None:
        self.public_globs = tuple(settings.access.public_paths)
        # One compiled pattern for all globs: a protected path costs a single regex match.
        self._public = path_globs_pattern(self.public_globs)
        self.own_origin = origin_of(settings.public_url) if settings.public_url else None
        self.allowed_return_to = frozenset(settings.access.allowed_return_to)
        self.login_url = settings.access.login_url

    def is_public(self, path: str, raw_path: bytes | None) -> bool:
        if self._public is None or self._public.match(path) is None:
            return False
        if _TRICKY_DECODED.search(path):
            return False
        if not path.isascii() and unicodedata.normalize("NFKC", path) != path:
            return False  # look-alikes of `/` and `.` (U+FF0F, U+FF0E, ...) that an app may fold
        # It looks public: make sure no trick makes the app see another path than this one.
        if raw_path is not None and _TRICKY.search(raw_path.split(b"?", 1)[0]):
            return False
        normal = posixpath.normpath(path) if path not in ("", "/") else "/"
        if path.endswith("/") and normal != "/":
            normal += "/"
        return normal == path

    @staticmethod
    def has_one_host(headers: RawHeaders) -> bool:
        """Exactly one non-empty Host header. With none or several, the origin (first Host)
        and X-Forwarded-Host (last) could disagree, so such requests are refused with 400.
        Empty counts as none: granian hands a request without Host on with `host: ""`."""
        count = 0
        for name, value in headers:
            if name == b"host":
                if not value:
                    return False
                count += 1
        return count == 1

    @staticmethod
    def is_preflight(method: str, headers: RawHeaders) -> bool:
        """A CORS preflight: OPTIONS with Origin and Access-Control-Request-Method, no body.

        Browsers never send credentials on a preflight, so one for an app route must reach the
        app (which answers its own CORS) rather than be refused for want of a session.
        """
        if method != "OPTIONS":
            return False
        origin = request_method = False
        for name, value in headers:
            if name == b"origin":
                origin = True
            elif name == b"access-control-request-method":
                request_method = True
            elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                return False
        return origin and request_method

    @staticmethod
    def is_browser_navigation(method: str, headers: RawHeaders) -> bool:
        """GET/HEAD that asks for HTML: a person to send to the login page, not an API call."""
        if method not in ("GET", "HEAD"):
            return False
        return any(name == b"accept" and b"text/html" in value.lower() for name, value in headers)

    def origin(self, scheme: str, headers: RawHeaders) -> str | None:
        """The gate's origin: configured `public_url`, else from a well-formed Host header."""
        if self.own_origin is not None:
            return self.own_origin
        for name, value in headers:
            if name == b"host":
                return host_origin(scheme, value.decode("latin-1"))
        return None

    def is_same_or_allowed_origin(self, scope: dict, is_allowed: Callable[[str], bool]) -> bool:
        """The request's Origin is the gate's own or an allowed CORS origin (`is_allowed`).

        No Origin passes (not a browser). Several Origin headers are foreign: a browser sends
        one, and which copy a check would read (first, last) must not decide.
        """
        headers = scope["headers"]
        origins = [value for name, value in headers if name == b"origin"]
        if not origins:
            return True
        if len(origins) > 1:
            return False
        text = origins[0].decode("latin-1")
        scheme = scope.get("scheme", "http")
        if text == self.origin(_HTTP_SCHEME.get(scheme, scheme), headers):
            return True
        return is_allowed(text)

    def original_url(self, scope: dict, origin: str) -> str:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        target = raw_path.decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        return origin + target
