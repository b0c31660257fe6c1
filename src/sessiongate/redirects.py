"""Where the gate may send a browser: `return_to` only to the gate's own origin or an allowed one.

`safe_return_to` is deliberately strict and fails closed: control characters or whitespace
anywhere, backslashes, user-info (`https://gate@evil`), scheme-relative `//host`, schemes other
than http(s), and anything whose percent-decoded form changes meaning are rejected. A relative
path is resolved against the gate's origin.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

from sessiongate.config import origin_of

_FORBIDDEN = {chr(c) for c in range(0x00, 0x21)} | {"\x7f", "\\"}


def _suspicious(text: str) -> bool:
    return any(ch in _FORBIDDEN for ch in text) or any(
        0x80 <= ord(ch) <= 0x9F or ch in "\u2028\u2029\ufeff\u3000\u00a0" for ch in text
    )


def _scheme(text: str) -> str:
    try:
        return urlsplit(text).scheme
    except ValueError:  # e.g. a netloc that NFKC-normalises to '/', '@' ...: fail closed
        return ""


def safe_return_to(url: str, own_origin: str, allowed_origins: Iterable[str]) -> str | None:
    """The absolute URL to return to, or None if it could leave the allowed origins."""
    if not url or len(url) > 4096:
        return None
    # Decode up to three times: every layer must be as harmless as the raw form.
    # The raw form is checked whole; decoded layers up to the query (an encoded space in a
    # search query is harmless, one before the path is not: `/%09/evil.com`).
    layer = url
    for depth in range(3):
        if _suspicious(layer if depth == 0 else layer.split("?", 1)[0]):
            return None
        decoded = unquote(layer)
        if decoded == layer:
            break
        if decoded.startswith(("//", "/\\")) or (not layer.startswith("/") and not _scheme(layer)):
            return None
        layer = decoded
    else:
        return None
    if url.startswith("/"):
        if url.startswith("//"):
            return None
        url = own_origin + url
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a malformed port
    except ValueError:
        return None
    del port
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if "@" in parts.netloc or parts.netloc.endswith(":"):
        return None
    decoded_netloc = unquote(parts.netloc)
    if decoded_netloc != parts.netloc:
        return None
    origin = origin_of(url)
    if origin != origin_of(own_origin) and origin not in set(allowed_origins):
        return None
    # Normalised: the origin as compared (lower-case host, default port dropped) + the rest.
    return origin + urlunsplit(("", "", parts.path, parts.query, parts.fragment))


def with_query(url: str, **params: str) -> str:
    """`url` with params appended to its query (kept as the caller wrote it otherwise)."""
    parts = urlsplit(url)
    extra = urlencode(params)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
