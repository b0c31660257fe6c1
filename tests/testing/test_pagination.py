"""Unit tests of `sessiongate.testing.pagination`: CONTRACT §8.1 (offset) and §8.2 (keyset)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from starlette.datastructures import QueryParams

from sessiongate.testing.pagination import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    KeysetToken,
    MigrationPage,
    PageTokenError,
    decode_offset_token,
    encode_offset_token,
    go_atoi,
    go_query_encode,
    keyset_link_header,
)

NIL = "00000000-0000-0000-0000-000000000000"
SID = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"


def tok(offset: int) -> str:
    """Reference encoding, written out independently: unpadded base64url of the JSON."""
    raw = ('{"offset":"%d","v":2}' % offset).encode()  # noqa: UP031
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def q(text: str = "") -> QueryParams:
    return QueryParams(text)


def link(path: str, page: int, size: int, offset: int, rel: str, extra: str = "") -> str:
    return (
        f"<{path}?{extra}page={page}&page_size={size}&page_token={tok(offset)}"
        f'&per_page={size}>; rel="{rel}"'
    )


# -- offset tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "token"),
    [
        (0, "eyJvZmZzZXQiOiIwIiwidiI6Mn0"),
        (2, "eyJvZmZzZXQiOiIyIiwidiI6Mn0"),
        (4, "eyJvZmZzZXQiOiI0IiwidiI6Mn0"),
        (250, "eyJvZmZzZXQiOiIyNTAiLCJ2IjoyfQ"),
        (-250, "eyJvZmZzZXQiOiItMjUwIiwidiI6Mn0"),
    ],
)
def test_encode_offset_token_exact(offset, token):
    assert encode_offset_token(offset) == token
    assert "=" not in token
    assert base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)) == (
        b'{"offset":"%d","v":2}' % offset
    )


@pytest.mark.parametrize("offset", [0, 1, 2, 7, 250, 999, 123456, -2, -250])
def test_offset_token_round_trip(offset):
    assert decode_offset_token(encode_offset_token(offset)) == offset


def test_offset_token_decodes_url_safe_alphabet():
    raw = b'{"offset":"3","v":2,"x":"~~~???"}'
    token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert "-" in token or "_" in token
    assert decode_offset_token(token) == 3


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "!!!",
        "%%%",
        "not a token",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b"{}").decode().rstrip("="),
        base64.urlsafe_b64encode(b'{"v":2}').decode().rstrip("="),
        base64.urlsafe_b64encode(b'{"offset":"x","v":2}').decode().rstrip("="),
        base64.urlsafe_b64encode(b'{"offset":"","v":2}').decode().rstrip("="),
        base64.urlsafe_b64encode(b'{"offset":"1.5","v":2}').decode().rstrip("="),
        base64.urlsafe_b64encode(b"[1,2]").decode().rstrip("="),
        base64.urlsafe_b64encode(b'"str"').decode().rstrip("="),
    ],
)
def test_malformed_offset_token_is_offset_0(token):
    assert decode_offset_token(token) == 0


def test_padded_token_does_not_decode_and_counts_as_offset_0():
    """oryx/pagination/tokenpagination/pagination.go:25-31: RawURLEncoding rejects `=`; the
    error is dropped at line 55, so the offset stays 0 (never a 400)."""
    padded = base64.urlsafe_b64encode(b'{"offset":"250","v":2}').decode()
    assert padded.endswith("=")
    assert decode_offset_token(padded) == 0
    assert decode_offset_token(padded.rstrip("=")) == 250
    # the standard alphabet is not the URL one
    assert decode_offset_token(encode_offset_token(250).replace("-", "+")) in (0, 250)


# -- go_atoi / go_query_encode -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5", 5),
        ("+5", 5),
        ("-3", -3),
        ("007", 7),
        ("0", 0),
        (None, None),
        ("", None),
        ("+", None),
        ("-", None),
        (" 5", None),
        ("5 ", None),
        ("5a", None),
        ("1.0", None),
        ("0x10", None),
        ("\u0663", None),  # ARABIC-INDIC DIGIT THREE: isdigit() but not ASCII
        ("1_000", None),
    ],
)
def test_go_atoi(text, value):
    assert go_atoi(text) == value


def test_go_query_encode_sorts_keys_and_keeps_repeated_values_in_order():
    items = [("b", "2"), ("a", "x"), ("page", "1"), ("b", "1"), ("A", "z")]
    assert go_query_encode(items) == "A=z&a=x&b=2&b=1&page=1"


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("a b", "a+b"),
        ("a/b", "a%2Fb"),
        ("a&b=c", "a%26b%3Dc"),
        ("a+b", "a%2Bb"),
        ("~-._", "~-._"),
        ("*!'()", "%2A%21%27%28%29"),
        ("é", "%C3%A9"),
        ("?#:@,;$", "%3F%23%3A%40%2C%3B%24"),
        ("", ""),
    ],
)
def test_go_query_encode_escapes_like_query_escape(value, escaped):
    assert go_query_encode([(value, value)]) == f"{escaped}={escaped}"


def test_go_query_encode_empty():
    assert go_query_encode([]) == ""


# -- MigrationPage.parse -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "page", "per_page"),
    [
        ("", 0, DEFAULT_PAGE_SIZE),
        # page_token / page_size style
        ("page_size=2", 0, 2),
        (f"page_size=2&page_token={tok(4)}", 2, 2),
        (f"page_size=2&page_token={tok(5)}", 2, 2),  # integer division
        (f"page_size=3&page_token={tok(2)}", 0, 3),
        (f"page_token={tok(500)}", 2, 250),  # page_token alone: size 250
        # tokenpagination/pagination.go:72-78: only a positive offset moves the page
        (f"page_token={tok(-250)}", 0, 250),
        (f"page_token={tok(-1)}", 0, 250),
        # ParseInt(…, 10, 0) out of the int64 range is an error → the default
        ("page_size=9223372036854775808", 0, 250),
        ("page_size=9223372036854775807", 0, MAX_PAGE_SIZE),
        (f"page_size=2&page_token={tok(4).rstrip('=')}=", 0, 2),  # padded: offset 0
        ("page_token=garbage&page_size=2", 0, 2),
        ("page_size=2000", 0, MAX_PAGE_SIZE),
        ("page_size=1000", 0, 1000),
        ("page_size=1001", 0, 1000),
        ("page_size=1", 0, 1),
        ("page_size=0", 0, 1),
        ("page_size=-7", 0, 1),
        ("page_size=abc", 0, 250),
        ("page_size=", 0, 250),
        ("page_size=2.5", 0, 250),
        ("page_token=", 0, 250),
        # either token param present: legacy page/per_page are ignored
        (f"page=3&per_page=10&page_size=2&page_token={tok(2)}", 1, 2),
        ("page=3&per_page=10&page_size=4", 0, 4),
        ("page=3&per_page=10&page_token=", 0, 250),
        # legacy page / per_page style
        ("page=3&per_page=10", 3, 10),
        ("page=1", 1, 250),
        ("page=-2&per_page=10", 0, 10),
        ("page=abc&per_page=10", 0, 10),
        ("per_page=5000", 0, 1000),
        ("per_page=0", 0, 1),
        ("per_page=-1", 0, 1),
        ("per_page=x", 0, 250),
        ("page=2&per_page=", 2, 250),
        # pagepagination/pagination.go:34-42: a page that does not parse as an int is page 0
        ("page=1.5&per_page=10", 0, 10),
        ("page=99999999999999999999&per_page=10", 0, 10),
        ("page=%2B2&per_page=10", 2, 10),  # ParseInt takes a sign; a bare "+" is a space
        ("per_page=99999999999999999999", 0, 250),
    ],
)
def test_migration_parse(query, page, per_page):
    assert MigrationPage.parse(q(query)) == MigrationPage(page=page, per_page=per_page)


# -- MigrationPage.slice (the #3883 defect) ----------------------------------------------------


@pytest.mark.parametrize(
    ("page", "defect", "expected"),
    [
        (0, True, slice(0, 2)),
        (1, True, slice(0, 2)),
        (2, True, slice(2, 4)),
        (3, True, slice(4, 6)),
        (-1, True, slice(0, 2)),
        (0, False, slice(0, 2)),
        (1, False, slice(2, 4)),
        (2, False, slice(4, 6)),
    ],
)
def test_migration_slice(page, defect, expected):
    assert MigrationPage(page=page, per_page=2).slice(5, kratos_defect=defect) == expected


def test_migration_defect_first_page_and_its_next_page_select_the_same_items():
    items = list("abcde")
    first = MigrationPage.parse(q("page_size=2"))
    nxt = MigrationPage.parse(q(f"page=1&page_size=2&page_token={tok(2)}&per_page=2"))
    assert items[first.slice(5, kratos_defect=True)] == ["a", "b"]
    assert items[nxt.slice(5, kratos_defect=True)] == ["a", "b"]
    assert items[nxt.slice(5, kratos_defect=False)] == ["c", "d"]


# -- MigrationPage.link_header: every branch of CONTRACT §8.1 ----------------------------------


def test_link_contract_example_exact():
    page = MigrationPage.parse(q("page_size=2"))
    assert page.link_header("/sessions", q("page_size=2"), 5) == (
        "</sessions?page=1&page_size=2&page_token=eyJvZmZzZXQiOiIyIiwidiI6Mn0&per_page=2>; "
        'rel="next",'
        "</sessions?page=2&page_size=2&page_token=eyJvZmZzZXQiOiI0IiwidiI6Mn0&per_page=2>; "
        'rel="last"'
    )


def test_link_off_below_pp_next_and_last():
    # total 6 divisible by pp: last = total - pp = 4
    header = MigrationPage(page=0, per_page=2).link_header("/sessions", q(), 6)
    assert header == link("/sessions", 1, 2, 2, "next") + "," + link("/sessions", 2, 2, 4, "last")


def test_link_middle_first_next_prev_last():
    header = MigrationPage(page=1, per_page=2).link_header("/sessions", q(), 7)
    assert header == ",".join(
        [
            link("/sessions", 0, 2, 0, "first"),
            link("/sessions", 2, 2, 4, "next"),
            link("/sessions", 0, 2, 0, "prev"),
            link("/sessions", 3, 2, 6, "last"),
        ]
    )


def test_link_middle_deeper_page():
    header = MigrationPage(page=2, per_page=10).link_header("/sessions", q(), 45)
    assert header == ",".join(
        [
            link("/sessions", 0, 10, 0, "first"),
            link("/sessions", 3, 10, 30, "next"),
            link("/sessions", 1, 10, 10, "prev"),
            link("/sessions", 4, 10, 40, "last"),
        ]
    )


@pytest.mark.parametrize(("page", "total"), [(2, 5), (2, 6), (9, 6), (4, 9)])
def test_link_at_or_past_last_first_and_prev(page, total):
    pp = 2
    last = total - pp if total % pp == 0 else (total // pp) * pp
    header = MigrationPage(page=page, per_page=pp).link_header("/sessions", q(), total)
    assert header == link("/sessions", 0, 2, 0, "first") + "," + link(
        "/sessions", (last - pp) // pp, 2, last - pp, "prev"
    )


def test_link_at_last_exact_values():
    header = MigrationPage(page=2, per_page=2).link_header("/sessions", q(), 5)
    assert header == (
        f'</sessions?page=0&page_size=2&page_token={tok(0)}&per_page=2>; rel="first",'
        f'</sessions?page=1&page_size=2&page_token={tok(2)}&per_page=2>; rel="prev"'
    )


@pytest.mark.parametrize(("page", "pp", "total"), [(0, 250, 3), (0, 4, 4), (5, 10, 3), (1, 3, 1)])
def test_link_total_fits_one_page_single_first_with_size_total(page, pp, total):
    header = MigrationPage(page=page, per_page=pp).link_header("/sessions", q(), total)
    assert header == link("/sessions", 0, total, 0, "first")


def test_link_total_zero_default_size():
    header = MigrationPage(page=0, per_page=250).link_header("/sessions", q(), 0)
    assert header == (
        f'</sessions?page=0&page_size=250&page_token={tok(0)}&per_page=250>; rel="first",'
        f'</sessions?page=1&page_size=250&page_token={tok(250)}&per_page=250>; rel="next",'
        f'</sessions?page=-1&page_size=250&page_token={tok(-250)}&per_page=250>; rel="prev"'
    )
    assert tok(-250) == "eyJvZmZzZXQiOiItMjUwIiwidiI6Mn0"


def test_link_total_zero_later_page():
    header = MigrationPage(page=3, per_page=2).link_header("/x", q(), 0)
    assert header == ",".join(
        [link("/x", 0, 2, 0, "first"), link("/x", 4, 2, 8, "next"), link("/x", 2, 2, 4, "prev")]
    )


def test_link_keeps_other_params_sorted_and_replaces_pagination_params():
    query = q("zeta=1&page=7&alpha=a%2Fb+c&per_page=9&page_token=junk&page_size=2&mid=x&mid=y")
    page = MigrationPage.parse(query)
    header = page.link_header("/admin/identities/abc/sessions", query, 5)
    path = "/admin/identities/abc/sessions"
    assert header == (
        f"<{path}?alpha=a%2Fb+c&mid=x&mid=y&page=1&page_size=2&page_token={tok(2)}"
        '&per_page=2&zeta=1>; rel="next",'
        f"<{path}?alpha=a%2Fb+c&mid=x&mid=y&page=2&page_size=2&page_token={tok(4)}"
        '&per_page=2&zeta=1>; rel="last"'
    )


def test_link_joined_with_bare_comma():
    header = MigrationPage(page=1, per_page=2).link_header("/sessions", q(), 7)
    assert header.count('",<') == 3
    assert ", " not in header


# -- keyset tokens (CONTRACT §8.2) -------------------------------------------------------------


def test_keyset_first_token_is_nil_uuid_and_2200():
    first = KeysetToken.first()
    assert first.id == NIL
    assert first.created_at == datetime(2200, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert KeysetToken.decode(first.encode()) == first


def test_keyset_encode_is_unpadded_standard_base64():
    token = KeysetToken(SID, datetime(2024, 5, 6, 7, 8, 9, 123450, tzinfo=UTC)).encode()
    assert "=" not in token
    raw = base64.b64decode(token + "=" * (-len(token) % 4), validate=True).decode()
    parts = dict(p.split("=", 1) for p in raw.split("/"))
    assert set(parts) == {"id", "created_at"}
    assert parts["id"] == SID
    assert parts["created_at"].startswith("2024-05-06 07:08:09.12345")


@pytest.mark.parametrize(
    "created",
    [
        datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
    ],
)
def test_keyset_round_trip(created):
    token = KeysetToken(SID, created)
    assert KeysetToken.decode(token.encode()) == token


@pytest.mark.parametrize(
    "raw",
    [
        f"id={SID}/created_at=2024-05-06 07:08:09.12345",
        f"created_at=2024-05-06 07:08:09.12345/id={SID}",  # Go map order: either way round
    ],
)
def test_keyset_decodes_kratos_tokens_in_either_order(raw):
    token = base64.b64encode(raw.encode()).decode().rstrip("=")
    assert KeysetToken.decode(token) == KeysetToken(
        SID, datetime(2024, 5, 6, 7, 8, 9, 123450, tzinfo=UTC)
    )


def test_keyset_decodes_kratos_first_token_without_fraction():
    raw = f"created_at=2200-12-31 23:59:59/id={NIL}"
    token = base64.b64encode(raw.encode()).decode().rstrip("=")
    assert KeysetToken.decode(token) == KeysetToken.first()


def test_keyset_uppercase_uuid_is_normalised():
    raw = f"id={SID.upper()}/created_at=2024-05-06 07:08:09"
    token = base64.b64encode(raw.encode()).decode().rstrip("=")
    assert KeysetToken.decode(token).id == SID


@pytest.mark.parametrize("form", [SID.replace("-", ""), "{" + SID + "}", "urn:uuid:" + SID])
def test_keyset_token_id_is_any_gofrs_form(form):
    """persistence/sql/persister_session.go:82-84 checks the id with gofrs' FromString."""
    raw = f"id={form}/created_at=2024-05-06 07:08:09"
    assert KeysetToken.decode(base64.b64encode(raw.encode()).decode().rstrip("=")).id == SID


def test_keyset_padded_token_is_a_parse_error():
    """keysetpagination/page_token.go:54: RawStdEncoding does not take `=` padding."""
    raw = f"id={SID}/created_at=2024-05-06 07:08:09"
    padded = base64.b64encode(raw.encode()).decode()
    assert padded.endswith("=")
    with pytest.raises(PageTokenError) as exc:
        KeysetToken.decode(padded)
    assert exc.value.kind == "parse"


def test_keyset_token_without_created_at_pages_by_id_alone():
    """keysetpagination/paginator.go:116-121: no `created_at` part → `id > ?` only."""
    token = KeysetToken.decode(base64.b64encode(f"id={SID}".encode()).decode().rstrip("="))
    assert token.created_at is None
    assert token.admits(datetime(1999, 1, 1, tzinfo=UTC), "f" * 8 + SID[8:])
    assert not token.admits(datetime(1999, 1, 1, tzinfo=UTC), "0" * 8 + SID[8:])


@pytest.mark.parametrize("token", ["!!!", "not base64!", "a", "%%%%", "____"])
def test_keyset_non_base64_is_parse_error(token):
    with pytest.raises(PageTokenError) as info:
        KeysetToken.decode(token)
    assert info.value.kind == "parse"
    assert isinstance(info.value, ValueError)
    assert str(info.value) == "parse"


@pytest.mark.parametrize(
    "raw",
    [
        "id=not-a-uuid/created_at=2024-05-06 07:08:09",
        "created_at=2024-05-06 07:08:09",
        "id=/created_at=2024-05-06 07:08:09",
        "hello",
        "",
    ],
)
def test_keyset_bad_id_is_invalid_error(raw):
    token = base64.b64encode(raw.encode()).decode().rstrip("=")
    with pytest.raises(PageTokenError) as info:
        KeysetToken.decode(token)
    assert info.value.kind == "invalid"


def test_keyset_admits_older_rows_and_same_time_higher_ids():
    t = datetime(2024, 1, 1, tzinfo=UTC)
    token = KeysetToken("5" + SID[1:], t)
    assert token.admits(datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC), SID)
    assert not token.admits(datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC), SID)
    assert token.admits(t, "6" + SID[1:])
    assert not token.admits(t, "4" + SID[1:])
    assert not token.admits(t, token.id)
    assert KeysetToken.first().admits(datetime(2200, 12, 31, 23, 59, 58, tzinfo=UTC), NIL)


def test_keyset_link_header_first_only_and_with_next():
    first = KeysetToken.first().encode()
    query = q("page_size=2&active=true&page_token=whatever")
    assert keyset_link_header("/admin/sessions", query, 2, None) == (
        f'</admin/sessions?active=true&page_size=2&page_token={first}>; rel="first"'
    )
    nxt = KeysetToken(SID, datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC))
    assert keyset_link_header("/admin/sessions", query, 2, nxt) == (
        f'</admin/sessions?active=true&page_size=2&page_token={first}>; rel="first",'
        f'</admin/sessions?active=true&page_size=2&page_token={nxt.encode()}>; rel="next"'
    )


def test_repeated_parameters_use_the_first_value_like_go() -> None:
    from sessiongate.testing.pagination import go_get

    query = QueryParams("page_size=1&page_size=3&page_token=x")
    assert go_get(query, "page_size") == "1"
    assert MigrationPage.parse(query).per_page == 1
