"""Stage 1 of a request: find the Ory credential, exactly as Kratos would (CONTRACT §1).

Order: a non-empty `X-Session-Token`; else the session cookies (names or globs in
`ory.session_cookies`); else `Authorization: Bearer <token>` (exactly two parts split on single
spaces, scheme case-insensitive).

Several session cookies: Kratos reads only the one with *its* name (the first of that name, Go's
`r.Cookie`), and a sibling subdomain can plant a junk `ory_session_x` next to the real one. So
every session cookie the request carries goes to Kratos in one `Cookie` header (the first
non-empty, well-formed value of each name), ranked exact names first, in the configured order,
then glob matches, in the configured order of the globs, then request order; Kratos picks its
own, as it would have from the browser. The top-ranked cookie is the credential's
`cookie_name`/`value`, the rest are `others`. Nothing else is ever sent on to Kratos: never the
app's other cookies or headers. Works on raw ASGI headers (lower-case byte names) so the hot
path builds no framework objects.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Callable
from typing import Literal, NamedTuple

RawHeaders = list[tuple[bytes, bytes]]
Kind = Literal["token", "cookie", "bearer"]

#: Longer credentials are refused before any Kratos call (Kratos' are ~40 bytes, cookies ~300).
MAX_CREDENTIAL_BYTES = 4096


class Credential(NamedTuple):  # a tuple: built on every request, ~4x cheaper than a dataclass
    kind: Kind
    value: str
    cookie_name: str = ""
    others: tuple[tuple[str, str], ...] = ()  # the other session cookies, ranked (see above)

    @property
    def cache_key(self) -> bytes:
        """A digest of the credential: the raw value is never stored or logged."""
        material = f"{self.kind}\x00{self.cookie_name}\x00{self.value}"
        for name, value in self.others:
            material += f"\x00{name}\x00{value}"
        return hashlib.blake2b(material.encode(), digest_size=20).digest()

    def whoami_headers(self) -> dict[str, str]:
        """The one header Kratos needs to read this credential."""
        if self.kind == "token":
            return {"X-Session-Token": self.value}
        if self.kind == "cookie":
            pairs = [f"{self.cookie_name}={self.value}"]
            pairs += [f"{name}={value}" for name, value in self.others]
            return {"Cookie": "; ".join(pairs)}
        return {"Authorization": f"Bearer {self.value}"}


class MalformedCredential(ValueError):
    """The request carries a credential no Kratos could accept (too long, control bytes)."""


_VISIBLE = re.compile(rb"[\x21-\x7e]*")


def _clean(raw: bytes) -> str:
    if len(raw) > MAX_CREDENTIAL_BYTES:
        raise MalformedCredential("credential too large")
    # Visible ASCII only: no controls, spaces or 8-bit bytes (header or cookie injection).
    if _VISIBLE.fullmatch(raw) is None:
        raise MalformedCredential("credential has characters outside visible ASCII")
    return raw.decode("ascii")


class CookieMatcher:
    """Exact names first (a set lookup), then globs such as `ory_session_*` (one regex)."""

    def __init__(self, names: list[str]) -> None:
        self.exact = frozenset(n for n in names if not any(c in n for c in "*?["))
        self.globs = tuple(n for n in names if n not in self.exact)
        # rank of a name when several session cookies arrive: exact names in configured order,
        # then each glob in configured order
        exact_order = [n for n in dict.fromkeys(names) if n in self.exact]
        self._exact_rank = {n.encode("latin-1"): i for i, n in enumerate(exact_order)}
        self._glob_ranks = [re.compile(fnmatch.translate(g).encode("latin-1")) for g in self.globs]
        self._exact_bytes = frozenset(n.encode("latin-1") for n in self.exact)
        pattern = "|".join(f"(?:{fnmatch.translate(g)})" for g in self.globs)
        self._glob = re.compile(pattern) if self.globs else None
        self._glob_bytes = re.compile(pattern.encode("latin-1")) if self.globs else None

    def __call__(self, name: str) -> bool:
        return name in self.exact or (self._glob is not None and self._glob.match(name) is not None)

    def matches_bytes(self, name: bytes) -> bool:
        glob = self._glob_bytes
        return name in self._exact_bytes or (glob is not None and glob.match(name) is not None)

    def rank(self, name: bytes) -> int:
        """Lower is preferred: exact names (configured order) outrank globs (configured order)."""
        exact = self._exact_rank.get(name)
        if exact is not None:
            return exact
        for i, glob in enumerate(self._glob_ranks):
            if glob.match(name) is not None:
                return len(self._exact_rank) + i
        return len(self._exact_rank) + len(self._glob_ranks)


def _cookie_pairs(header: bytes) -> list[tuple[bytes, bytes]]:
    """Cookie header → (name, value) byte pairs in order, quotes around a value removed."""
    out = []
    for part in header.split(b";"):
        name, sep, value = part.strip().partition(b"=")
        name = name.strip()  # `a \t= b`: the name is `a`, as Go trims it
        if sep and name:
            if len(value) > 1 and value[0] == value[-1] == 0x22:  # "
                value = value[1:-1]
            out.append((name, value))
    return out


def iter_cookies(header: bytes) -> list[tuple[str, str]]:
    """Cookie header → (name, value) pairs in order; undecodable bytes are kept as latin-1."""
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in _cookie_pairs(header)]


def without_session_cookies(value: str, is_session_cookie: Callable[[str], bool]) -> str:
    """A Cookie header minus every session cookie (what the app may see); the other cookies
    stay byte for byte (quotes too). Empty when nothing else is left."""
    return "; ".join(
        part.strip()
        for part in value.split(";")
        if part.strip() and not is_session_cookie(part.split("=", 1)[0].strip())
    )


def is_bearer(authorization: bytes) -> bool:
    """An `Authorization: Bearer` value. Every Bearer is a credential the app must not see,
    even one the gate did not use (a cookie won): it can only be an Ory session token or a
    credential the app must not receive from a client."""
    scheme = authorization.split(None, 1)
    return bool(scheme) and scheme[0].lower() == b"bearer"


_CREDENTIAL_HEADERS = frozenset({b"x-session-token", b"cookie", b"authorization"})


def credential_fingerprint(headers: RawHeaders) -> bytes | None:
    """A digest of every header `find_credential` reads, in order (None if there are none).

    Equal fingerprints mean equal credentials, so a gate can remember fingerprint → cache key
    and skip parsing on the next request from the same client; only digests are remembered.
    """
    # fed to the hash one header at a time (the digest of the concatenation, as before):
    # ~0.25 us less than joining them first, on every request
    digest = None
    for name, value in headers:
        if name in _CREDENTIAL_HEADERS:
            if digest is None:
                digest = hashlib.blake2b(digest_size=20)
            digest.update(b"%s:%d:%s" % (name, len(value), value))
    return None if digest is None else digest.digest()


def find_credential(headers: RawHeaders, is_session_cookie: CookieMatcher) -> Credential | None:
    """The credential Kratos would use, or None. Raises MalformedCredential for junk."""
    cookie_headers: list[bytes] = []
    authorization = b""
    token_seen = authorization_seen = False
    for name, value in headers:
        if name == b"x-session-token":
            # Go's Header.Get: only the first X-Session-Token counts, even when empty.
            if value and not token_seen:
                return Credential("token", _clean(value))
            token_seen = True
        elif name == b"cookie":
            cookie_headers.append(value)
        elif name == b"authorization" and not authorization_seen:
            # Go's Header.Get again: an empty first Authorization hides any later one
            authorization = value
            authorization_seen = True
    matches = is_session_cookie.matches_bytes
    found: dict[bytes, bytes] = {}  # name → its first non-empty value, in request order
    for header in cookie_headers:
        for cname, cvalue in _cookie_pairs(header):
            if cvalue and cname not in found and matches(cname):
                found[cname] = cvalue
    if len(found) == 1:  # the usual case
        ((cname, cvalue),) = found.items()
        return Credential("cookie", _clean(cvalue), cname.decode("latin-1"))
    if found:
        return _several_cookies(found, is_session_cookie)
    if authorization:
        parts = authorization.split(b" ")
        if len(parts) == 2 and parts[0].lower() == b"bearer" and parts[1]:
            return Credential("bearer", _clean(parts[1]))
    return None


def _several_cookies(found: dict[bytes, bytes], matcher: CookieMatcher) -> Credential:
    """All session cookies, ranked; a malformed one is dropped as Go's cookie parser drops
    invalid values, unless none is well-formed (then the request gets 400)."""
    ranked = sorted(found.items(), key=lambda item: matcher.rank(item[0]))  # stable
    kept: list[tuple[str, str]] = []
    problem: MalformedCredential | None = None
    for cname, cvalue in ranked:
        try:
            kept.append((_clean(cname), _clean(cvalue)))
        except MalformedCredential as exc:
            problem = problem or exc
    if not kept:
        assert problem is not None
        raise problem
    (name, value), *others = kept
    return Credential("cookie", value, name, tuple(others))
