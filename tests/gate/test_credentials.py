"""Finding the Ory credential exactly as Kratos would (CONTRACT §1), and refusing junk early."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resources import raw_request
from sessiongate.credentials import (
    MAX_CREDENTIAL_BYTES,
    CookieMatcher,
    Credential,
    MalformedCredential,
    find_credential,
    iter_cookies,
)

DEFAULT = CookieMatcher(["ory_kratos_session", "ory_session_*"])


def find(*headers: tuple[bytes, bytes], matcher: CookieMatcher = DEFAULT) -> Credential | None:
    return find_credential(list(headers), matcher)


# -- precedence -------------------------------------------------------------------------------


def test_token_beats_cookie_beats_bearer() -> None:
    token = (b"x-session-token", b"ory_st_token")
    cookie = (b"cookie", b"ory_kratos_session=cookieval")
    bearer = (b"authorization", b"Bearer ory_st_bearer")
    assert find(bearer, cookie, token) == Credential("token", "ory_st_token")
    assert find(bearer, cookie) == Credential("cookie", "cookieval", "ory_kratos_session")
    assert find(cookie, bearer) == Credential("cookie", "cookieval", "ory_kratos_session")
    assert find(bearer) == Credential("bearer", "ory_st_bearer")
    assert find() is None
    assert find((b"accept", b"*/*"), (b"user-agent", b"x")) is None


def test_empty_session_token_is_ignored() -> None:
    cookie = (b"cookie", b"ory_kratos_session=c")
    assert find((b"x-session-token", b""), cookie) == Credential(
        "cookie", "c", "ory_kratos_session"
    )
    assert find((b"x-session-token", b""), (b"authorization", b"Bearer b")) == Credential(
        "bearer", "b"
    )
    assert find((b"x-session-token", b"")) is None


def test_first_non_empty_session_token_is_used() -> None:
    got = find((b"x-session-token", b"first"), (b"x-session-token", b"second"))
    assert got == Credential("token", "first")


def test_an_invalid_token_is_not_skipped_in_favour_of_a_cookie() -> None:
    """A stale token still wins (Kratos does the same), so it must not fall through."""
    got = find((b"cookie", b"ory_kratos_session=good"), (b"x-session-token", b"ory_st_stale"))
    assert got == Credential("token", "ory_st_stale")


# -- cookies ------------------------------------------------------------------------------------


def test_several_session_cookies_all_go_to_kratos_exact_names_first() -> None:
    got = find(
        (b"cookie", b"theme=dark; lang=en"),
        (b"cookie", b"ory_session_abc123=first; ory_kratos_session=second"),
        (b"cookie", b"ory_kratos_session=third"),
    )
    assert got == Credential(
        "cookie", "second", "ory_kratos_session", (("ory_session_abc123", "first"),)
    )
    assert got is not None
    assert got.whoami_headers() == {"Cookie": "ory_kratos_session=second; ory_session_abc123=first"}


def test_cookie_ranking_follows_the_configured_order() -> None:
    m = CookieMatcher(["b_*", "exact_two", "a_*", "exact_one"])
    got = find(
        (b"cookie", b"a_1=v1; b_2=v2; exact_one=v3; a_0=v4; exact_two=v5; b_1=v6"), matcher=m
    )
    assert got == Credential(
        "cookie",
        "v5",
        "exact_two",
        (("exact_one", "v3"), ("b_2", "v2"), ("b_1", "v6"), ("a_1", "v1"), ("a_0", "v4")),
    )


def test_a_malformed_extra_session_cookie_is_dropped_not_fatal() -> None:
    """A planted junk cookie with bytes Go's cookie parser would drop cannot cost a 400."""
    junk = b"ory_session_junk=" + b"a" * (MAX_CREDENTIAL_BYTES + 1)
    got = find((b"cookie", junk + b"; ory_session_x=\x80; ory_kratos_session=real"))
    assert got == Credential("cookie", "real", "ory_kratos_session")
    with pytest.raises(MalformedCredential):  # but junk alone is still junk
        find((b"cookie", b"ory_session_x=\x80; ory_session_y=" + b"b" * 5000))


def _kratos_reads(credential: Credential | None, kratos_cookie: str) -> str | None:
    """What Kratos does with the Cookie header the gate sends it: Go's r.Cookie(name)."""
    if credential is None or credential.kind != "cookie":
        return None
    for name, value in iter_cookies(credential.whoami_headers()["Cookie"].encode()):
        if name == kratos_cookie:
            return value
    return None


JUNK_NAMES = st.sampled_from(
    ["ory_kratos_session", "ory_session_x", "ory_session_", "ory_session_abc", "ory_session_zz"]
)
JUNK_VALUES = st.one_of(
    st.from_regex(r"[\x21-\x3a\x3c-\x7e]{1,40}", fullmatch=True),
    st.just("a" * (MAX_CREDENTIAL_BYTES + 1)),
    st.just("bad\x80value"),
)


@settings(max_examples=300, deadline=None)
@given(
    kratos_cookie=st.sampled_from(["ory_kratos_session", "ory_session_abc", "ory_session_q1"]),
    before=st.lists(st.tuples(JUNK_NAMES, JUNK_VALUES), max_size=5),
    after=st.lists(st.tuples(JUNK_NAMES, JUNK_VALUES), max_size=5),
    split=st.booleans(),
)
def test_planted_session_cookies_never_hide_the_real_one(
    kratos_cookie: str, before: list[tuple[str, str]], after: list[tuple[str, str]], split: bool
) -> None:
    """The class: any session-looking cookies planted (a sibling subdomain can set them for the
    parent domain), anywhere around the real one; Kratos still gets its own cookie. Only a
    same-name cookie *before* the real one wins, at Kratos too (Go's first-of-name)."""
    before = [(n, v) for n, v in before if n != kratos_cookie]
    pairs = [*before, (kratos_cookie, "REALvalue"), *after]
    text = [f"{n}={v}".encode("latin-1") for n, v in pairs]
    headers = [(b"cookie", t) for t in text] if split else [(b"cookie", b"; ".join(text))]
    got = find(*headers)
    assert _kratos_reads(got, kratos_cookie) == "REALvalue"


def test_first_of_two_same_name_cookies_wins() -> None:
    got = find((b"cookie", b"ory_kratos_session=one; ory_kratos_session=two"))
    assert got == Credential("cookie", "one", "ory_kratos_session")


def test_session_cookie_with_empty_value_is_skipped() -> None:
    got = find((b"cookie", b"ory_kratos_session=; ory_session_x=v"))
    assert got == Credential("cookie", "v", "ory_session_x")


def test_non_session_cookies_are_ignored() -> None:
    assert find((b"cookie", b"a=1; b=2; session=3; ory_kratos=4; kratos_session=5")) is None
    assert find(
        (b"cookie", b"ory_kratos_sessions=1; xory_session_a=2; ORY_KRATOS_SESSION=3"),
        (b"authorization", b"Bearer tok"),
    ) == Credential("bearer", "tok")


def test_junk_in_non_session_cookies_is_not_our_business() -> None:
    junk = b"tracking=" + b"\xff" * 10_000 + b"; ory_kratos_session=ok"
    assert find((b"cookie", junk)) == Credential("cookie", "ok", "ory_kratos_session")


def test_quoted_cookie_value_is_unquoted() -> None:
    assert find((b"cookie", b'ory_kratos_session="abc"')) == Credential(
        "cookie", "abc", "ory_kratos_session"
    )


@pytest.mark.parametrize(
    ("name", "matches"),
    [
        ("ory_kratos_session", True),
        ("ory_session_abc123", True),
        ("ory_session_", True),
        ("ory_session_a_b-c", True),
        ("ory_session", False),
        ("ORY_SESSION_abc", False),
        ("xory_session_abc", False),
        ("ory_kratos_session2", False),
        ("ory_kratos_sessio", False),
        ("", False),
    ],
)
def test_cookie_matcher_exact_names_and_globs(name: str, matches: bool) -> None:
    assert DEFAULT(name) is matches


def test_cookie_matcher_splits_exact_and_glob_names() -> None:
    m = CookieMatcher(["a", "b_*", "c?", "d[12]"])
    assert m.exact == frozenset({"a"})
    assert m.globs == ("b_*", "c?", "d[12]")
    assert m("a")
    assert m("b_x")
    assert m("cx")
    assert m("d1")
    assert not m("d3")
    assert not m("cxx")
    assert not m("A")


def test_custom_cookie_name_only() -> None:
    m = CookieMatcher(["my_session"])
    assert find((b"cookie", b"ory_kratos_session=a; my_session=b"), matcher=m) == Credential(
        "cookie", "b", "my_session"
    )


def test_iter_cookies_keeps_order_and_skips_nameless_parts() -> None:
    assert iter_cookies(b' a=1;b=2 ;  ; =x; noequals; c="q"; d=""; e=f=g') == [
        ("a", "1"),
        ("b", "2"),
        ("c", "q"),
        ("d", ""),
        ("e", "f=g"),
    ]


# -- bearer -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "token"),
    [
        (b"Bearer ory_st_x", "ory_st_x"),
        (b"bearer ory_st_x", "ory_st_x"),
        (b"BEARER ory_st_x", "ory_st_x"),
        (b"BeArEr ory_st_x", "ory_st_x"),
        (b"Bearer  ory_st_x", None),  # two spaces: three parts
        (b"Bearer ory_st_x ", None),
        (b"Bearer a b", None),
        (b"Bearer", None),
        (b"Bearer ", None),
        (b"Bearer\tory_st_x", None),
        (b"Basic dXNlcjpwYXNz", None),
        (b"Token ory_st_x", None),
        (b"Bearerory_st_x", None),
        (b"ory_st_x", None),
    ],
)
def test_bearer_parsing(value: bytes, token: str | None) -> None:
    got = find((b"authorization", value))
    assert got == (Credential("bearer", token) if token else None)


def test_only_the_first_authorization_header_counts() -> None:
    assert find((b"authorization", b"Basic x"), (b"authorization", b"Bearer y")) is None
    assert find((b"authorization", b"Bearer y"), (b"authorization", b"Basic x")) == Credential(
        "bearer", "y"
    )


# -- malformed credentials --------------------------------------------------------------------


def test_size_limit_is_inclusive() -> None:
    ok = b"a" * MAX_CREDENTIAL_BYTES
    assert find((b"x-session-token", ok)) == Credential("token", ok.decode())
    with pytest.raises(MalformedCredential, match="too large"):
        find((b"x-session-token", ok + b"a"))


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-session-token", b"a" * 100_000)],
        [(b"cookie", b"ory_kratos_session=" + b"a" * 100_000)],
        [(b"cookie", b"ory_session_abc=" + b"a" * 100_000)],
        [(b"authorization", b"Bearer " + b"a" * 100_000)],
        # an oversized token is refused even when a good cookie is present
        [(b"x-session-token", b"a" * 5000), (b"cookie", b"ory_kratos_session=ok")],
    ],
)
def test_oversized_credentials_are_malformed(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(MalformedCredential, match="too large"):
        find_credential(headers, DEFAULT)


@pytest.mark.parametrize(
    "bad",
    [b"ory_st_\x00x", b"ory_st_\x01", b"ory_st_\x7f", b"ory_st_\xe9", b"ory_st_\xff", b"a\rb"],
)
@pytest.mark.parametrize("where", ["token", "cookie", "bearer"])
def test_control_and_8bit_bytes_are_malformed(bad: bytes, where: str) -> None:
    header = {
        "token": (b"x-session-token", bad),
        "cookie": (b"cookie", b"ory_kratos_session=" + bad),
        "bearer": (b"authorization", b"Bearer " + bad),
    }[where]
    with pytest.raises(MalformedCredential, match="visible ASCII"):
        find(header)


def test_space_inside_token_is_malformed() -> None:
    with pytest.raises(MalformedCredential):
        find((b"x-session-token", b"ory_st_a b"))


def test_malformed_is_a_value_error() -> None:
    assert issubclass(MalformedCredential, ValueError)


# -- what is sent to Kratos, and the cache key ---------------------------------------------------


def test_whoami_headers_carry_only_the_one_credential() -> None:
    assert Credential("token", "t").whoami_headers() == {"X-Session-Token": "t"}
    assert Credential("cookie", "v", "ory_session_abc").whoami_headers() == {
        "Cookie": "ory_session_abc=v"
    }
    assert Credential("bearer", "b").whoami_headers() == {"Authorization": "Bearer b"}


def test_cookie_credential_from_a_busy_header_sends_only_that_cookie() -> None:
    got = find((b"cookie", b"app=secret; ory_kratos_session=sess; other=1"))
    assert got is not None
    assert got.whoami_headers() == {"Cookie": "ory_kratos_session=sess"}


def test_cache_key_is_a_digest_distinct_per_kind_name_and_value() -> None:
    keys = {
        Credential("token", "v").cache_key,
        Credential("bearer", "v").cache_key,
        Credential("cookie", "v", "ory_kratos_session").cache_key,
        Credential("cookie", "v", "ory_session_a").cache_key,
        Credential("token", "w").cache_key,
    }
    assert len(keys) == 5
    key = Credential("token", "ory_st_secretvalue").cache_key
    assert isinstance(key, bytes)
    assert len(key) == 20
    assert b"secretvalue" not in key
    assert key == Credential("token", "ory_st_secretvalue").cache_key


# -- end to end: junk never reaches Kratos ---------------------------------------------------


BIG = "ory_st_" + "a" * 100_000


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Session-Token": BIG},
        {"Cookie": "ory_kratos_session=" + BIG},
        {"Cookie": "theme=dark; ory_session_abc123=" + BIG},
        {"Authorization": "Bearer " + BIG},
    ],
    ids=["token", "cookie", "glob-cookie", "bearer"],
)
async def test_oversized_credential_gets_400_without_whoami(stack, headers) -> None:
    async with stack.client() as c:
        r = await c.get("/protected", headers={**headers, "Accept": "text/html"})
    assert r.status_code == 400, r.text[:300]
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error"]["code"] == 400
    assert "too large" in body["error"]["reason"]
    assert stack.fake.count("GET", "/sessions/whoami") == 0
    assert stack.app.requests == []


@pytest.mark.parametrize(
    "line",
    [
        b"X-Session-Token: ory_st_\xe9\xff",
        b"Cookie: ory_kratos_session=abc\x80def",
        b"Authorization: Bearer ory_st_\xc3\xa9",
    ],
)
def test_8bit_credential_gets_400_without_whoami(stack, line: bytes) -> None:
    name, _, value = line.decode("latin-1").partition(": ")
    headers = [(name, value), ("Accept", "application/json")]
    status, _, body = raw_request(stack.url, "/protected", headers)
    assert status == 400, body
    assert json.loads(body)["error"]["code"] == 400
    assert stack.fake.count("GET", "/sessions/whoami") == 0
    assert stack.app.requests == []


async def test_valid_credentials_through_the_gate_follow_kratos_precedence(stack) -> None:
    alice = stack.fake.login("alice@example.com")
    bob = stack.fake.login("bob@example.com")
    cookie = stack.fake.cookie_header(alice)
    async with stack.client() as c:
        # token beats cookie: bob's token wins over alice's cookie
        r = await c.get("/p", headers={"X-Session-Token": bob.token, "Cookie": cookie})
        assert r.status_code == 200
        assert stack.app.last_headers()["x-user-id"] == [bob.identity_id]
        # cookie beats bearer
        r = await c.get("/p", headers={"Authorization": f"Bearer {bob.token}", "Cookie": cookie})
        assert r.status_code == 200
        assert stack.app.last_headers()["x-user-id"] == [alice.identity_id]
        # an empty token is ignored: the cookie is used
        r = await c.get("/p", headers={"X-Session-Token": "", "Cookie": cookie})
        assert r.status_code == 200
        assert stack.app.last_headers()["x-user-id"] == [alice.identity_id]
        # a stale token wins over a good cookie, so the request is refused
        r = await c.get("/p", headers={"X-Session-Token": "ory_st_" + "x" * 32, "Cookie": cookie})
        assert r.status_code == 401
        # bearer alone
        r = await c.get("/p", headers={"Authorization": f"bearer {bob.token}"})
        assert r.status_code == 200
        assert stack.app.last_headers()["x-user-id"] == [bob.identity_id]
        # malformed bearer: anonymous
        r = await c.get("/p", headers={"Authorization": f"Bearer  {bob.token}"})
        assert r.status_code == 401


@pytest.mark.parametrize("kratos_cookie", ["ory_kratos_session", "ory_session_abc123"])
async def test_a_planted_session_cookie_does_not_lock_the_user_out(make_stack, kratos_cookie):
    """Self-hosted (`ory_kratos_session`) and Ory Network (`ory_session_<slug>`): junk cookies
    planted for the parent domain, placed before the real one, change nothing."""
    s = make_stack(fake_options={"cookie_name": kratos_cookie})
    alice = s.fake.login("alice@example.com")
    real = f"{kratos_cookie}={alice.cookie}"
    planted = "ory_session_x=junk; ory_kratos_session=junk; ory_session_zz=" + "j" * 5000
    if kratos_cookie == "ory_kratos_session":
        planted = "ory_session_x=junk; ory_session_zz=" + "j" * 5000
    async with s.client() as c:
        for cookie in (f"theme=dark; {planted}; {real}", f"{real}; {planted}"):
            r = await c.get("/p", headers={"Cookie": cookie, "Accept": "application/json"})
            assert r.status_code == 200, (cookie[:80], r.text)
            assert s.app.last_headers()["x-user-id"] == [alice.identity_id]
            # none of the session cookies reach the app
            sent = "; ".join(s.app.last_headers().get("cookie", []))
            assert "junk" not in sent
            assert alice.cookie not in sent


def test_only_the_first_session_token_header_counts_like_go() -> None:
    from sessiongate.credentials import CookieMatcher, find_credential

    headers = [
        (b"x-session-token", b""),
        (b"x-session-token", b"ory_st_second"),
        (b"authorization", b"Bearer ory_st_bearer"),
    ]
    found = find_credential(headers, CookieMatcher(["ory_kratos_session"]))
    assert found is not None
    assert found.kind == "bearer"


# -- fingerprints ---------------------------------------------------------------------------


def test_fingerprint_is_equal_for_equal_credential_headers_only() -> None:
    from sessiongate.credentials import credential_fingerprint as fp

    base = [(b"host", b"a"), (b"cookie", b"ory_kratos_session=x; theme=dark")]
    assert fp(base) == fp([(b"host", b"b"), *base[1:], (b"accept", b"*/*")])  # others ignored
    assert fp(base) != fp([(b"cookie", b"ory_kratos_session=y; theme=dark")])
    assert fp(base) != fp([*base, (b"x-session-token", b"t")])
    assert fp(base) != fp([(b"authorization", b"Bearer t"), *base])
    assert fp([(b"host", b"a")]) is None
    assert len(fp(base) or b"") == 20
    assert b"ory_kratos_session" not in (fp(base) or b"")


def test_fingerprint_cannot_be_confused_by_moving_bytes_between_headers() -> None:
    from sessiongate.credentials import credential_fingerprint as fp

    one = [(b"cookie", b"a=1"), (b"cookie", b"b=2")]
    other = [(b"cookie", b"a=1cookie:3:b=2")]
    assert fp(one) != fp(other)
    assert fp([(b"cookie", b"a"), (b"cookie", b"")]) != fp([(b"cookie", b"a")])
