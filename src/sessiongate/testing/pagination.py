"""Kratos' two pagination schemes, byte for byte (CONTRACT §8).

`migration_*` is the offset scheme of `GET /sessions` and `GET /admin/identities/{id}/sessions`,
including the off-by-one defect ory/kratos#3883 behind a switch. `keyset_*` is the opaque-token
scheme of `GET /admin/sessions`. Both build `Link` from the request's own path and query with
keys re-encoded in sorted order, as Go's `url.Values.Encode` does.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote_plus

from starlette.datastructures import QueryParams

from sessiongate.uuids import InvalidUUID, parse_uuid

DEFAULT_PAGE_SIZE = 250
MAX_PAGE_SIZE = 1000
KEYSET_FIRST_TOKEN_TIME = datetime(2200, 12, 31, 23, 59, 59, tzinfo=UTC)


def go_get(query: QueryParams, key: str, default: str | None = None) -> str | None:
    """Go's `url.Values.Get`: the FIRST value of a repeated key (Starlette's `.get` is last)."""
    values = query.getlist(key)
    return values[0] if values else default


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def go_atoi(text: str | None) -> int | None:
    """strconv.Atoi / ParseInt(s, 10, 0) on 64 bits: optional sign, decimal digits, in range."""
    if text is None:
        return None
    body = text[1:] if text[:1] in "+-" else text
    if not body or not body.isascii() or not body.isdigit():
        return None
    value = int(text)
    return value if INT64_MIN <= value <= INT64_MAX else None


def go_first_nonempty(query: QueryParams, key: str) -> str:
    """`cmp.Or(q[key]...)`: the first non-empty value of a repeated key, or ""."""
    return next((v for v in query.getlist(key) if v), "")


def _clamp_size(text: str | None) -> int:
    """Unparsable (or out of int range) → 250, then clamped to [1, 1000]
    (oryx/pagination/tokenpagination/pagination.go:58-70, pagepagination/pagination.go:44-60)."""
    size = go_atoi(text)
    if size is None:
        return DEFAULT_PAGE_SIZE
    return max(1, min(size, MAX_PAGE_SIZE))


_RAW_URL_B64 = re.compile(r"^[A-Za-z0-9_-]*$")
_RAW_STD_B64 = re.compile(r"^[A-Za-z0-9+/]*$")


def _go_raw_b64decode(token: str, alphabet: re.Pattern[str], *, urlsafe: bool) -> bytes:
    """Go's `base64.Raw{URL,Std}Encoding.DecodeString`: no padding accepted, CR/LF skipped."""
    token = token.replace("\r", "").replace("\n", "")
    if not alphabet.match(token) or len(token) % 4 == 1:
        raise binascii.Error("illegal base64 data")
    padded = token + "=" * (-len(token) % 4)
    if urlsafe:
        return base64.urlsafe_b64decode(padded)
    return base64.b64decode(padded, validate=True)


def _trunc_div(a: int, b: int) -> int:
    """Go's integer division truncates toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def encode_offset_token(offset: int) -> str:
    raw = json.dumps({"offset": str(offset), "v": 2}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")


def _go_query_unescape(text: str) -> str:
    """url.QueryUnescape: `+` is a space, `%XX` a byte; a bad escape is an error."""
    out = bytearray()
    i = 0
    raw = text.encode("utf-8", errors="surrogateescape")
    while i < len(raw):
        c = raw[i]
        if c == 0x25:  # %
            pair = raw[i + 1 : i + 3].decode("latin-1")
            if not _HEX2.fullmatch(pair):
                raise ValueError("invalid URL escape")
            out.append(int(pair, 16))
            i += 3
            continue
        out.append(0x20 if c == 0x2B else c)
        i += 1
    return out.decode("utf-8", errors="surrogateescape")


def decode_offset_token(token: str | None) -> int:
    """A missing or malformed token counts as offset 0 (tokenpagination/pagination.go:25-31,
    54-56: RawURLEncoding, so a `=`-padded token does not decode; the error is dropped)."""
    if not token:
        return 0
    try:
        raw = _go_raw_b64decode(token, _RAW_URL_B64, urlsafe=True)
        value = go_atoi(str(json.loads(raw)["offset"]))
    except (ValueError, KeyError, TypeError, binascii.Error):
        return 0
    return value or 0


def go_query_encode(items: list[tuple[str, str]]) -> str:
    """url.Values.Encode: keys sorted (stable for repeated keys), QueryEscape on both sides."""
    ordered = sorted(items, key=lambda kv: kv[0])
    return "&".join(f"{quote_plus(k, safe='')}={quote_plus(v, safe='')}" for k, v in ordered)


def _link_url(path: str, query: QueryParams, overrides: dict[str, str]) -> str:
    items = [(k, v) for k, v in query.multi_items() if k not in overrides]
    items.extend(overrides.items())
    return f"{path}?{go_query_encode(items)}"


@dataclass(frozen=True)
class MigrationPage:
    page: int
    per_page: int

    @classmethod
    def parse(cls, query: QueryParams) -> MigrationPage:
        if "page_token" in query or "page_size" in query:
            per_page = _clamp_size(go_get(query, "page_size"))
            offset = decode_offset_token(go_get(query, "page_token"))
            # tokenpagination/pagination.go:72-78: only a positive offset moves the page
            return cls(page=offset // per_page if offset > 0 else 0, per_page=per_page)
        # pagepagination/pagination.go:34-42,62-64: unparsable (or out of range) → page 0
        page = go_atoi(go_get(query, "page")) or 0
        return cls(page=max(page, 0), per_page=_clamp_size(go_get(query, "per_page")))

    def slice(self, total: int, *, kratos_defect: bool) -> slice:
        """Which items the database returns: 1-based pages in Kratos (#3883), 0-based if fixed."""
        if kratos_defect:
            p = max(self.page, 1)
            return slice((p - 1) * self.per_page, p * self.per_page)
        start = self.page * self.per_page
        return slice(start, start + self.per_page)

    def link_header(self, path: str, query: QueryParams, total: int) -> str:
        pp = self.per_page
        off = self.page * pp
        last = total - pp if total % pp == 0 else (total // pp) * pp

        def link(offset: int, rel: str, size: int = pp) -> str:
            overrides = {
                "page": str(_trunc_div(offset, size)),
                "page_size": str(size),
                "page_token": encode_offset_token(offset),
                "per_page": str(size),
            }
            return f'<{_link_url(path, query, overrides)}>; rel="{rel}"'

        here = _trunc_div(off, pp)
        if off >= last:
            if total == 0:
                links = [
                    link(0, "first"),
                    link((here + 1) * pp, "next"),
                    link((here - 1) * pp, "prev"),
                ]
            elif total <= pp:
                links = [link(0, "first", size=total)]
            else:
                links = [link(0, "first"), link(last - pp, "prev")]
        elif off < pp:
            links = [link(pp, "next"), link(last, "last")]
        else:
            links = [
                link(0, "first"),
                link((here + 1) * pp, "next"),
                link((here - 1) * pp, "prev"),
                link(last, "last"),
            ]
        return ",".join(links)


class PageTokenError(ValueError):
    """`kind` is "parse" (not base64: reported like a bad page_size) or "invalid" (bad id)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class KeysetToken:
    id: str
    created_at: datetime | None

    def encode(self) -> str:
        # Go's `.99999` layout trims trailing zeros and the dot, so the first-page token reads
        # `2200-12-31 23:59:59` (CONTRACT §8.2). Kept at 6 digits: Kratos' 5 would skip rows.
        assert self.created_at is not None  # only tokens of real rows are encoded
        stamp = self.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        stamp = stamp.rstrip("0").rstrip(".")
        raw = f"id={self.id}/created_at={stamp}".encode()
        return base64.b64encode(raw).decode().rstrip("=")

    @classmethod
    def first(cls) -> KeysetToken:
        return cls(str(uuid.UUID(int=0)), KEYSET_FIRST_TOKEN_TIME)

    @classmethod
    def parse(cls, token: str) -> dict[str, str]:
        """keysetpagination.Parse + NewMapPageToken (oryx/pagination/keysetpagination/
        header.go:93-102, page_token.go:53-69): the value is query-unescaped once more, then
        RawStdEncoding (no padding); `k=v` parts split on `/`. Failing here is "parse"."""
        try:
            raw = _go_raw_b64decode(_go_query_unescape(token), _RAW_STD_B64, urlsafe=False)
        except (binascii.Error, ValueError) as exc:
            raise PageTokenError("parse") from exc
        text = raw.decode("utf-8", errors="replace")
        return dict(p.split("=", 1) for p in text.split("/") if "=" in p)

    @classmethod
    def from_parts(cls, parts: dict[str, str]) -> KeysetToken:
        """The persister's checks (persistence/sql/persister_session.go:82-84): the `id` must
        parse as a gofrs UUID. A token without `created_at` pages by `id > ?` alone
        (keysetpagination/paginator.go:116-121): `created_at` is then None."""
        try:
            ident = parse_uuid(parts.get("id", ""))
        except InvalidUUID as exc:
            raise PageTokenError("invalid") from exc
        if "created_at" not in parts:
            return cls(ident, None)
        try:
            created = datetime.strptime(parts["created_at"], "%Y-%m-%d %H:%M:%S.%f")
        except ValueError:
            try:
                created = datetime.strptime(parts["created_at"], "%Y-%m-%d %H:%M:%S")
            except ValueError as exc:
                raise PageTokenError("invalid") from exc
        return cls(ident, created.replace(tzinfo=UTC))

    @classmethod
    def decode(cls, token: str) -> KeysetToken:
        return cls.from_parts(cls.parse(token))

    def admits(self, created_at: datetime, session_id: str) -> bool:
        """`created_at < t.created_at OR (created_at = t.created_at AND id > t.id)`, or only
        `id > t.id` when the token has no `created_at`."""
        if self.created_at is None:
            return session_id > self.id
        return created_at < self.created_at or (
            created_at == self.created_at and session_id > self.id
        )


def keyset_link_header(
    path: str, query: QueryParams, size: int, next_token: KeysetToken | None
) -> str:
    links = [
        f'<{_link_url(path, query, {"page_size": str(size), "page_token": KeysetToken.first().encode()})}>; rel="first"'  # noqa: E501
    ]
    if next_token is not None:
        overrides = {"page_size": str(size), "page_token": next_token.encode()}
        links.append(f'<{_link_url(path, query, overrides)}>; rel="next"')
    return ",".join(links)
