"""Kratos' UUID rules (gofrs/uuid v4.4.0 `FromString`), shared by the Kratos fake and the relay.

Kratos v26.2.0 (go.mod: `github.com/gofrs/uuid v4.4.0+incompatible`) parses every `{id}` in its
session routes with `uuid.FromString` (codec.go:63-111). Go works on bytes, so lengths count
UTF-8 bytes: 32 (bare hex), 36 (canonical), 34/38 (`{...}` around either), 41/45
(`urn:uuid:`, lower case only, before either). Anything else is a 400 whose message is gofrs'
error text, reproduced here to the byte (Go's `%q` quoting included). The relay uses the same
parser so that only a canonical id ever reaches Kratos' URL or the cache.
"""

from __future__ import annotations

import uuid

_HEX = frozenset(b"0123456789abcdefABCDEF")
_GO_ESCAPES = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v"}


class InvalidUUID(ValueError):
    """gofrs/uuid's error; `str(exc)` is the message Kratos puts in its 400 answer."""


def go_quote(raw: bytes) -> str:
    """Go's `%q` of a string (strconv.Quote): printable runes kept, the rest escaped."""
    out = ['"']
    text = raw.decode("utf-8", errors="surrogateescape")
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that is not valid UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif code in _GO_ESCAPES:
            out.append(_GO_ESCAPES[code])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _format_error(raw: bytes) -> InvalidUUID:
    return InvalidUUID(f"uuid: incorrect UUID format in string {go_quote(raw)}")


def parse_uuid(text: str) -> str:
    """The canonical (lower-case, hyphenated) form of `text`, or InvalidUUID."""
    b = text.encode("utf-8", errors="surrogateescape")
    n = len(b)
    if n in (34, 38):
        if b[:1] != b"{" or b[-1:] != b"}":
            raise _format_error(b)
        b = b[1:-1]
    elif n in (41, 45):
        if b[:9] != b"urn:uuid:":
            raise _format_error(b[:9])  # gofrs quotes only the 9-byte prefix
        b = b[9:]
    elif n not in (32, 36):
        raise InvalidUUID(f"uuid: incorrect UUID length {n} in string {go_quote(b)}")
    if len(b) == 36:
        if b[8:9] != b"-" or b[13:14] != b"-" or b[18:19] != b"-" or b[23:24] != b"-":
            raise _format_error(b)
        # only the 32 digit positions are read: a hyphen slot was checked above
        b = b[0:8] + b[9:13] + b[14:18] + b[19:23] + b[24:36]
    if not all(c in _HEX for c in b):
        raise InvalidUUID("uuid: invalid UUID format")
    return str(uuid.UUID(hex=b.decode("ascii")))
