"""`sessiongate.uuids.parse_uuid` is gofrs/uuid v4.4.0's `FromString`, message for message.

Kratos v26.2.0 pins `github.com/gofrs/uuid v4.4.0+incompatible` (go.mod:37) and answers a bad
`{id}` with 400 and `err.Error()` as the message (session/handler.go:310-313, 485-488). The
cases below follow codec.go:63-111 of that tag line by line.
"""

from __future__ import annotations

import uuid

import pytest

from sessiongate.uuids import InvalidUUID, go_quote, parse_uuid

U = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
HASH = U.replace("-", "")


@pytest.mark.parametrize(
    "text",
    [
        U,  # codec.go:66 canonical
        U.upper(),  # codec.go:49-58 fromHexChar takes both cases
        HASH,  # codec.go:65 hash
        "{" + U + "}",  # codec.go:67-71, 38 bytes
        "{" + HASH + "}",  # 34 bytes
        "urn:uuid:" + U,  # codec.go:72-76, 45 bytes
        "urn:uuid:" + HASH,  # 41 bytes
    ],
)
def test_every_form_gofrs_accepts_becomes_canonical(text: str) -> None:
    assert parse_uuid(text) == U


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", 'uuid: incorrect UUID length 3 in string "abc"'),  # codec.go:77-78
        ("", 'uuid: incorrect UUID length 0 in string ""'),
        # Go counts bytes: "é" is two, so 35 characters are 36 bytes and reach the hex check.
        ("é" + U[2:], "uuid: invalid UUID format"),
        ("é" * 3, 'uuid: incorrect UUID length 6 in string "ééé"'),
        # %q escapes what is not printable
        ('a"\\\n\x01', 'uuid: incorrect UUID length 5 in string "a\\"\\\\\\n\\x01"'),
        # codec.go:81-83: the hyphens of the canonical form
        (HASH + "0000", f'uuid: incorrect UUID format in string "{HASH}0000"'),
        # codec.go:92-94 / 102-104: a non-hex digit
        ("z" + U[1:], "uuid: invalid UUID format"),
        ("z" + HASH[1:], "uuid: invalid UUID format"),
        # codec.go:67-69: 34/38 bytes need the braces, the message quotes the whole string
        ("[" + U + "]", f'uuid: incorrect UUID format in string "[{U}]"'),
        # codec.go:72-74: the prefix is case-sensitive and only its 9 bytes are quoted
        ("URN:UUID:" + U, 'uuid: incorrect UUID format in string "URN:UUID:"'),
        ("urn:uuid:{" + HASH[:30] + "}", "uuid: invalid UUID format"),
        ("{" + U + "}x", f'uuid: incorrect UUID length 39 in string "{{{U}}}x"'),
    ],
)
def test_errors_are_gofrs_messages(text: str, message: str) -> None:
    with pytest.raises(InvalidUUID) as exc:
        parse_uuid(text)
    assert str(exc.value) == message


def test_go_quote_escapes_like_strconv_quote() -> None:
    assert go_quote(b"\x7f\t\xff") == '"\\x7f\\t\\xff"'
    assert go_quote("\u200b".encode()) == '"\\u200b"'  # a format character is not printable


def test_round_trip_of_random_ids() -> None:
    for _ in range(50):
        u = uuid.uuid4()
        assert parse_uuid(u.hex.upper()) == str(u)
