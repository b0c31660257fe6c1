"""Kratos' UUID rules (gofrs/uuid `FromString`), shared by the Kratos fake and the relay.

Kratos parses every `{id}` in its session routes with gofrs/uuid: the canonical 36-character
form, 32 bare hex digits, `{...}` braces and a `urn:uuid:` prefix are accepted; anything else
is a 400 whose message is gofrs' error text. The relay uses the same parser so that only a
canonical id ever reaches Kratos' URL or the cache.
"""

from __future__ import annotations

import json
import re
import uuid

_HEX = re.compile(r"^[0-9a-fA-F]+$")


class InvalidUUID(ValueError):
    """gofrs/uuid's error; `str(exc)` is the message Kratos puts in its 400 answer."""


def parse_uuid(text: str) -> str:
    """The canonical (lower-case, hyphenated) form of `text`, or InvalidUUID."""
    t = text
    if len(t) == 45 and t.lower().startswith("urn:uuid:"):
        t = t[9:]
    elif len(t) == 38 and t[0] == "{" and t[-1] == "}":
        t = t[1:-1]
    if len(t) == 36:
        if t[8] != "-" or t[13] != "-" or t[18] != "-" or t[23] != "-":
            raise InvalidUUID(f"uuid: incorrect UUID format in string {json.dumps(text)}")
        t = t.replace("-", "")
    elif len(t) != 32:
        raise InvalidUUID(f"uuid: incorrect UUID length {len(text)} in string {json.dumps(text)}")
    if not _HEX.match(t):
        raise InvalidUUID(f"uuid: incorrect UUID format in string {json.dumps(text)}")
    return str(uuid.UUID(hex=t))
