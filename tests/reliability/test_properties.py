"""Property-based tests (hypothesis) of the gate's parsers and filters, in process.

This module owns the invariants that must hold for *every* input, not just the listed cases in
tests/gate and tests/relay:

* credentials (`find_credential`, `iter_cookies`, `CookieMatcher`, `credential_fingerprint`):
  only `MalformedCredential` ever escapes; a credential found is visible ASCII, at most
  `MAX_CREDENTIAL_BYTES`, really present in the request, chosen by Kratos' precedence; equal
  fingerprints mean equal results and different credential headers mean different fingerprints;
* header filtering (`IdentityHeaders.strip`, `header_value`, `UpstreamProxy.upstream_headers`,
  `UpstreamProxy.response_headers`): no CR/LF/NUL in anything sent on, no spelling of an
  identity header survives, the app sees exactly the gate's identity and forwarding headers;
* `safe_return_to`: None, or a URL on the gate's own or an allowed origin (and stable);
* relay_rewrite's `rewrite_link`/`rewrite_url`: only Kratos' URLs move, and only onto the gate;
* forward auth's decision endpoint (`ForwardAuth`, in a gate with an in-process Kratos fake):
  for any original-request headers, call path, method and Host, never an exception (a 500)
  and never a 200 without a valid credential unless the family's own header names a public
  path; an identity header only for the valid session, and no CR/LF/NUL in any answer header.

Runs are reproducible (`derandomize=True`, no example database) and small (300 examples).
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import json
import re
import string
from functools import cache
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sessiongate.config import Settings, origin_of
from sessiongate.credentials import (
    MAX_CREDENTIAL_BYTES,
    CookieMatcher,
    Credential,
    MalformedCredential,
    credential_fingerprint,
    find_credential,
    iter_cookies,
)
from sessiongate.decide import Decider
from sessiongate.gate import Gate
from sessiongate.identity_headers import KEEP_MEMO, IdentityHeaders, canonical, header_value
from sessiongate.proxy import HOP_BY_HOP, UpstreamProxy
from sessiongate.redirects import safe_return_to
from sessiongate.relay_rewrite import UrlRewriter
from sessiongate.testing import KratosFake

RawHeaders = list[tuple[bytes, bytes]]

PROPS = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SESSION_COOKIES = ["ory_kratos_session", "ory_session_*"]
MATCHER = CookieMatcher(SESSION_COOKIES)
VISIBLE = re.compile(rb"[\x21-\x7e]+")
CREDENTIAL_HEADERS = (b"x-session-token", b"cookie", b"authorization")
FORBIDDEN_IN_HEADERS = re.compile(rb"[\r\n\x00]")


def _clean_bytes(value: bytes) -> bool:
    return FORBIDDEN_IN_HEADERS.search(value) is None


# -- strategies: credential headers ---------------------------------------------------------

visible = st.text(alphabet=[chr(c) for c in range(0x21, 0x7F)], min_size=1, max_size=24)
token_values = st.one_of(
    visible.map(str.encode),
    st.sampled_from(
        [b"", b"ory_st_abc", b"a b", b"\xff\xfe", b"ory_st_\x00x", b"x\ty", b"\x7f", b"\r\n"]
    ),
    st.binary(max_size=24),
    st.integers(MAX_CREDENTIAL_BYTES - 2, MAX_CREDENTIAL_BYTES + 2).map(lambda n: b"t" * n),
)
cookie_names = st.one_of(
    st.sampled_from(
        [
            b"ory_kratos_session",
            b"ory_session_abc",
            b"ory_session_",
            b"ory_session",
            b"ORY_KRATOS_SESSION",
            b"ory_kratos_sessions",
            b"xory_session_a",
            b" ory_kratos_session",
            b"theme",
            b"",
        ]
    ),
    st.binary(max_size=12),
)
cookie_values = st.one_of(
    token_values,
    token_values.map(lambda v: b'"' + v + b'"'),
    st.sampled_from([b'"', b'""', b"a=b", b"x;y"]),
)
separators = st.sampled_from([b"; ", b";", b" ; ", b";;", b"; ;", b"\t;"])


@st.composite
def cookie_headers(draw: st.DrawFn) -> bytes:
    pairs = draw(st.lists(st.tuples(cookie_names, cookie_values), max_size=6))
    parts = [name + b"=" + value for name, value in pairs]
    parts += draw(st.lists(st.binary(max_size=8), max_size=2))  # junk parts, anywhere
    parts = draw(st.permutations(parts)) if parts else parts
    header = b""
    for i, part in enumerate(parts):
        header += (draw(separators) if i else b"") + part
    return header


authorization_values = st.one_of(
    st.tuples(
        st.sampled_from([b"Bearer", b"bearer", b"BEARER", b"BeArEr", b"Basic", b"Bearerx", b""]),
        st.sampled_from([b" ", b"  ", b"\t", b""]),
        token_values,
        st.sampled_from([b"", b" ", b" extra"]),
    ).map(b"".join),
    st.binary(max_size=24),
)
other_names = st.sampled_from(
    [b"accept", b"host", b"x-session-tokens", b"cookie2", b"x_session_token", b"authorisation"]
)


@st.composite
def request_headers(draw: st.DrawFn) -> RawHeaders:
    header = st.one_of(
        st.tuples(st.just(b"x-session-token"), token_values),
        st.tuples(st.just(b"cookie"), cookie_headers()),
        st.tuples(st.just(b"authorization"), authorization_values),
        st.tuples(other_names, st.binary(max_size=16)),
    )
    return draw(st.lists(header, max_size=7))


def credential_part(headers: RawHeaders) -> RawHeaders:
    return [(n, v) for n, v in headers if n in CREDENTIAL_HEADERS]


def outcome(headers: RawHeaders) -> Credential | type[MalformedCredential] | None:
    try:
        return find_credential(headers, MATCHER)
    except MalformedCredential:
        return MalformedCredential


def model(headers: RawHeaders) -> Credential | type[MalformedCredential] | None:
    """CONTRACT §1 written out plainly: what Kratos would use, or MalformedCredential."""

    def vetted(kind: Any, raw: bytes, name: str = "") -> Any:
        if len(raw) > MAX_CREDENTIAL_BYTES or VISIBLE.fullmatch(raw) is None:
            return MalformedCredential
        return Credential(kind, raw.decode("ascii"), name)

    tokens = [v for n, v in headers if n == b"x-session-token"]
    if tokens and tokens[0]:  # Go's Header.Get: the first one only
        return vetted("token", tokens[0])
    # every session cookie (first non-empty value per name); several are ranked exact names
    # first in configured order, then by the first glob they match, and malformed ones dropped
    found: dict[str, str] = {}
    for name, value in headers:
        if name == b"cookie":
            for cname, cvalue in iter_cookies(value):
                if cvalue and MATCHER(cname):
                    found.setdefault(cname, cvalue)
    if len(found) == 1:
        ((cname, cvalue),) = found.items()
        return vetted("cookie", cvalue.encode("latin-1"), cname)
    if found:

        def rank(cname: str) -> int:
            if cname in SESSION_COOKIES:
                return SESSION_COOKIES.index(cname) - len(SESSION_COOKIES)
            return next(i for i, g in enumerate(SESSION_COOKIES) if fnmatch.fnmatchcase(cname, g))

        kept = [
            (n, v)
            for n, v in sorted(found.items(), key=lambda item: rank(item[0]))
            if vetted("cookie", n.encode("latin-1")) is not MalformedCredential
            and vetted("cookie", v.encode("latin-1")) is not MalformedCredential
        ]
        if not kept:
            return MalformedCredential
        (cname, cvalue), *others = kept
        return Credential("cookie", cvalue, cname, tuple(others))
    # the first Authorization only, like Go's Header.Get (an empty one hides later ones)
    authorizations = [v for n, v in headers if n == b"authorization"]
    if authorizations and authorizations[0]:
        scheme, sep, rest = authorizations[0].partition(b" ")
        if sep and scheme.lower() == b"bearer" and rest and b" " not in rest:
            return vetted("bearer", rest)
    return None


# -- credentials ----------------------------------------------------------------------------


@PROPS
@given(request_headers())
@example([(b"x-session-token", b""), (b"x-session-token", b"second")])
@example([(b"cookie", b'ory_kratos_session=""; ory_session_a="v"')])
@example([(b"authorization", b"Bearer  x")])
def test_find_credential_is_kratos_precedence_and_only_raises_malformed(headers: RawHeaders):
    assert outcome(headers) == model(headers)


def test_an_empty_first_authorization_header_hides_a_later_bearer_like_go() -> None:
    headers = [(b"authorization", b""), (b"authorization", b"Bearer ory_st_second")]
    assert find_credential(headers, MATCHER) is None


@PROPS
@given(request_headers())
def test_a_found_credential_is_clean_bounded_and_really_in_the_request(headers: RawHeaders):
    found = outcome(headers)
    if not isinstance(found, Credential):
        return
    raw = found.value.encode("ascii")
    assert VISIBLE.fullmatch(raw), raw
    assert len(raw) <= MAX_CREDENTIAL_BYTES
    if found.kind == "token":
        assert raw == next(v for n, v in headers if n == b"x-session-token")
    elif found.kind == "cookie":
        for cname, cvalue in ((found.cookie_name, found.value), *found.others):
            assert MATCHER(cname)
            name, value = cname.encode("latin-1"), cvalue.encode("ascii")
            assert VISIBLE.fullmatch(value)
            assert len(value) <= MAX_CREDENTIAL_BYTES
            spelled = (name + b"=" + value, name + b'="' + value + b'"')
            assert any(s in v for n, v in headers if n == b"cookie" for s in spelled)
    else:
        assert found.kind == "bearer"
        first = next(v for n, v in headers if n == b"authorization")
        assert first.lower() == b"bearer " + raw.lower()
    # what whoami is sent carries nothing but that one credential (all session cookies)
    ((wname, wvalue),) = found.whoami_headers().items()
    assert found.value in wvalue
    assert _clean_bytes(wvalue.encode("latin-1"))
    assert wname in ("X-Session-Token", "Cookie", "Authorization")


noise = st.lists(
    st.tuples(
        st.sampled_from([b"accept", b"host", b"x-other", b"cookie2", b"x_session_token"]),
        st.binary(max_size=12),
    ),
    max_size=5,
)


@PROPS
@given(request_headers(), noise, st.randoms(use_true_random=False))
def test_equal_fingerprints_give_equal_credentials(headers: RawHeaders, extra, rnd):
    """The memo fingerprint → cache key is sound: headers find_credential ignores do not
    change the fingerprint, and then find_credential's answer is the same too."""
    mixed = list(headers)
    for item in extra:  # interleave unrelated headers, credential headers keep their order
        mixed.insert(rnd.randint(0, len(mixed)), item)
    fp = credential_fingerprint(headers)
    assert credential_fingerprint(mixed) == fp
    assert outcome(mixed) == outcome(headers)
    if fp is None:
        assert credential_part(headers) == []
        assert outcome(headers) is None


@PROPS
@given(request_headers(), request_headers())
@example([(b"cookie", b"a=1"), (b"cookie", b"b=2")], [(b"cookie", b"a=1cookie:3:b=2")])
@example([(b"cookie", b"a"), (b"cookie", b"")], [(b"cookie", b"a")])
@example([(b"cookie", b"a"), (b"cookie", b"b")], [(b"cookie", b"acookieb")])
@example([(b"x-session-token", b"")], [])
def test_different_credential_headers_give_different_fingerprints(one, other):
    fp_one, fp_other = credential_fingerprint(one), credential_fingerprint(other)
    if credential_part(one) != credential_part(other):
        assert fp_one != fp_other
    else:
        assert fp_one == fp_other
    if fp_one is not None and fp_one == fp_other:
        assert outcome(one) == outcome(other)


# -- cookies --------------------------------------------------------------------------------

name_chars = string.ascii_letters + string.digits + "!#$%&'+.^_`|~-"
globs = st.lists(st.text(alphabet=name_chars + "*", min_size=1, max_size=8), min_size=1, max_size=4)


@PROPS
@given(globs, st.one_of(st.text(alphabet=name_chars + "*?[]", max_size=10), st.text(max_size=8)))
@example(["ory_kratos_session", "ory_session_*"], "ory_session_\n")
def test_cookie_matcher_str_and_bytes_agree_with_fnmatch(patterns: list[str], name: str):
    matcher = CookieMatcher(patterns)
    expected = any(fnmatch.fnmatchcase(name, p) for p in patterns)
    assert matcher(name) is expected
    encoded = name.encode("utf-8")
    assert matcher.matches_bytes(encoded) is any(
        fnmatch.fnmatchcase(encoded.decode("latin-1"), p) for p in patterns
    )


@PROPS
@given(st.binary(max_size=200))
def test_iter_cookies_never_raises_and_only_returns_what_is_there(header: bytes):
    text = header.decode("latin-1")
    for name, value in iter_cookies(header):
        assert name
        assert name == name.strip(" \t\n\r\x0b\x0c")
        assert ";" not in name
        assert "=" not in name
        assert ";" not in value
        # the pair is in the header as sent, whitespace between the name and `=` aside
        spaced = re.escape(name) + r"[ \t\n\r\x0b\x0c]*=" + "(?:" + re.escape(value)
        assert re.search(spaced + "|" + re.escape(f'"{value}"') + ")", text)


cookie_token = st.text(alphabet=name_chars, min_size=1, max_size=12)
cookie_octets = st.text(  # RFC 6265 cookie-octet: no CTLs, whitespace, DQUOTE, comma, ; or \
    alphabet=[chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\'], max_size=16
)


@PROPS
@given(st.lists(st.tuples(cookie_token, cookie_octets, st.booleans()), max_size=8))
def test_iter_cookies_round_trips_well_formed_headers(pairs):
    header = "; ".join(f'{n}="{v}"' if quoted else f"{n}={v}" for n, v, quoted in pairs)
    assert iter_cookies(header.encode("latin-1")) == [(n, v) for n, v, _ in pairs]


# -- identity headers -----------------------------------------------------------------------

SETTINGS = Settings(session_header="X-Session")
OWNED = SETTINGS.spoofable_headers()
OWNED_BYTES = frozenset(n.encode() for n in OWNED)
IDENTITY = IdentityHeaders(SETTINGS.identity_headers, SETTINGS.session_header, OWNED)


@st.composite
def spelling(draw: st.DrawFn, name: str) -> bytes:
    """`name` with each letter's case and each `-`/`_` chosen at random."""
    out = []
    for ch in name:
        if ch in "-_":
            out.append(draw(st.sampled_from("-_")))
        elif ch.isalpha():
            out.append(ch.upper() if draw(st.booleans()) else ch.lower())
        else:
            out.append(ch)
    return "".join(out).encode()


owned_spellings = st.sampled_from(sorted(OWNED)).flatmap(spelling)
near_misses = st.sampled_from(
    [b"x-user-idx", b"x-user", b"x-userid", b"x--user-id", b"x-user-id ", b"xx-user-id"]
)
any_names = st.one_of(
    owned_spellings,
    near_misses,
    st.text(alphabet=name_chars, min_size=1, max_size=12).map(str.encode),
)


@PROPS
@given(st.lists(st.tuples(any_names, st.binary(max_size=8)), max_size=12))
def test_strip_removes_every_spelling_of_an_owned_header_and_nothing_else(headers: RawHeaders):
    stripped = IDENTITY.strip(headers)
    assert stripped == [(n, v) for n, v in headers if canonical(n) not in OWNED_BYTES]
    assert not [n for n, _ in stripped if canonical(n) in OWNED_BYTES]


@PROPS
@given(st.lists(owned_spellings, min_size=1, max_size=8))
def test_strip_still_works_once_its_memo_is_full(spellings: list[bytes]):
    identity = IdentityHeaders(SETTINGS.identity_headers, SETTINGS.session_header, OWNED)
    identity.strip([(b"x-filler-%d" % i, b"") for i in range(KEEP_MEMO + 10)])
    assert len(identity._keep) == KEEP_MEMO  # full: new names are judged, not remembered
    assert identity.strip([(n, b"evil") for n in spellings]) == []


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(exclude_categories=())),  # lone surrogates too (json allows them)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@PROPS
@given(json_values)
@example("a\r\nX-Admin: 1")
@example("\x00\u2028\ufeff%")
def test_header_value_is_printable_ascii_and_lossless(value: Any):
    out = header_value(value)
    if value is None:
        assert out is None
        return
    assert out is not None
    assert re.fullmatch(rb"[\x20-\x7e]*", out), out
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    assert unquote(out.decode("ascii"), errors="strict") == text


def test_header_value_survives_a_lone_surrogate_from_json() -> None:
    trait = json.loads('"Zo\\ud800e"')  # what json.loads makes of Kratos' bytes
    out = header_value(trait)
    assert out is not None
    assert re.fullmatch(rb"[\x20-\x7e]*", out), out


# -- upstream_headers ---------------------------------------------------------------------------

UPSTREAM = "http://127.0.0.1:8080"
FORWARDING = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
DROPPED_UNTRUSTED = (*FORWARDING, b"forwarded", b"x-real-ip")
header_text = st.binary(max_size=24).map(  # what an HTTP/1.1 parser can hand over
    lambda b: bytes(c for c in b if c not in b"\r\n\x00").strip(b" \t")
)
tokens = st.text(alphabet=name_chars, min_size=1, max_size=10).map(str.encode)
request_names = st.one_of(
    st.sampled_from(
        [
            b"host",
            b"cookie",
            b"connection",
            b"te",
            b"upgrade",
            b"keep-alive",
            b"transfer-encoding",
            b"proxy-authorization",
            b"proxy-connection",
            b"trailer",
            b"x-forwarded-for",
            b"x-forwarded-proto",
            b"x-forwarded-host",
            b"forwarded",
            b"x-real-ip",
            b"accept",
            b"x-other",
        ]
    ),
    tokens.map(bytes.lower),
)


@st.composite
def client_headers(draw: st.DrawFn, *, connection_tokens: Any = None) -> RawHeaders:
    listable = request_names if connection_tokens is None else connection_tokens
    headers: RawHeaders = []
    for _ in range(draw(st.integers(0, 10))):
        name = draw(request_names)
        if name == b"cookie":
            value = draw(cookie_headers().map(lambda b: bytes(c for c in b if c > 0x1F)))
        elif name == b"connection":
            listed = draw(st.lists(listable, max_size=3))
            value = b", ".join(listed)
        else:
            value = draw(header_text)
        headers.append((name, value))
    return headers


peers = st.one_of(
    st.none(),
    st.ip_addresses().map(lambda ip: (str(ip), 50000)),
    st.sampled_from([("127.0.0.1", 1), ("::1", 1), ("not-an-ip", 1), ("", 0)]),
)
trusted_nets = st.lists(st.sampled_from(["127.0.0.0/8", "10.0.0.0/8", "::1/128"]), max_size=2)


def _names(out: list[tuple[str, str]]) -> list[str]:
    return [n.lower() for n, _ in out]


@PROPS
@given(client_headers(), peers, trusted_nets, st.sampled_from(["http", "https"]))
def test_upstream_headers_are_clean_and_forwarding_is_the_gates(headers, peer, nets, scheme):
    proxy = UpstreamProxy(UPSTREAM, trusted_proxies=nets, strip_cookie=MATCHER)
    scope = {"type": "http", "scheme": scheme, "client": peer}
    out = proxy.upstream_headers(scope, headers)
    for name, value in out:
        assert _clean_bytes(name.encode("latin-1")), name
        assert _clean_bytes(value.encode("latin-1")), value
    names = _names(out)
    assert [v for n, v in out if n.lower() == "host"] == ["127.0.0.1:8080"]
    assert names.count("x-forwarded-for") == names.count("x-forwarded-proto") == 1
    assert names.count("x-forwarded-host") <= 1
    nominated = {
        t.strip().lower().decode("latin-1")
        for n, v in headers
        if n == b"connection"
        for t in v.split(b",")
    }
    for name in names:
        assert name.encode() not in HOP_BY_HOP
        assert name in ("host", *(n.decode() for n in FORWARDING)) or name not in nominated
    for cookie in (v for n, v in out if n.lower() == "cookie"):
        assert not [c for c, _ in iter_cookies(cookie.encode("latin-1")) if MATCHER(c)]
    # everything else the client sent arrives unchanged and in order
    plain = [
        (n.decode(), v.decode("latin-1"))
        for n, v in headers
        if n not in (b"host", b"cookie", b"connection", *DROPPED_UNTRUSTED)
        and n not in HOP_BY_HOP
        and n.decode() not in nominated
    ]
    assert [(n, v) for n, v in out if n in {p for p, _ in plain}] == plain
    trusted = False
    if peer and nets:
        try:
            ip = ipaddress.ip_address(peer[0])
            trusted = any(ip in ipaddress.ip_network(c) for c in nets)
        except ValueError:
            trusted = False
    if not trusted:  # an untrusted peer's forwarding headers are replaced, never passed on
        assert dict(out)["X-Forwarded-For"] == (peer or ("", 0))[0]
        assert dict(out)["X-Forwarded-Proto"] == scheme
        assert "forwarded" not in names
        assert "x-real-ip" not in names
        hosts = [v for n, v in headers if n == b"host"]
        if hosts and hosts[-1]:
            assert dict(out)["X-Forwarded-Host"] == hosts[-1].decode("latin-1")
        else:
            assert "x-forwarded-host" not in names


SESSION = {
    "id": "5d6f1a4e-0000-4000-8000-000000000001",
    "identity": {"id": "5d6f1a4e-0000-4000-8000-0000000000aa", "traits": {"email": "a@b.c"}},
}
GATE_IDENTITY = IDENTITY.compute(SESSION)
# the proxy exactly as the gate builds it (session cookie stripping, whatever else it wires in)
GATE_PROXY = Gate(
    Settings.model_validate({"upstream": {"url": UPSTREAM}, "session_header": "X-Session"})
).proxy
non_owned_tokens = request_names.filter(lambda n: canonical(n) not in OWNED_BYTES)


@PROPS
@given(
    st.lists(st.tuples(any_names, header_text), max_size=8),
    client_headers(connection_tokens=non_owned_tokens),
)
def test_the_app_sees_exactly_the_gates_identity_headers(spoofed: RawHeaders, other: RawHeaders):
    """strip → add the session's headers → upstream_headers, as the gate does per request."""
    proxy = GATE_PROXY
    forwarded = IDENTITY.strip([*spoofed, *other])
    forwarded.extend(GATE_IDENTITY)
    out = proxy.upstream_headers({"type": "http", "client": ("192.0.2.1", 1)}, forwarded)
    owned = [(n.lower(), v) for n, v in out if canonical(n.encode()) in OWNED_BYTES]
    assert owned == [(n.decode(), v.decode()) for n, v in GATE_IDENTITY]


def test_connection_cannot_remove_the_gates_identity_headers() -> None:
    proxy = GATE_PROXY
    client = [(b"host", b"gate"), (b"connection", b"keep-alive, X-User-Id, x-session")]
    forwarded = IDENTITY.strip(client)
    forwarded.extend(GATE_IDENTITY)
    out = proxy.upstream_headers({"type": "http", "client": ("192.0.2.1", 1)}, forwarded)
    owned = [(n.lower(), v) for n, v in out if canonical(n.encode()) in OWNED_BYTES]
    assert owned == [(n.decode(), v.decode()) for n, v in GATE_IDENTITY]


def test_underscore_spellings_of_forwarding_headers_are_not_passed_on() -> None:
    proxy = GATE_PROXY
    client = [
        (b"x_forwarded_for", b"203.0.113.7"),
        (b"x_forwarded_host", b"evil.example"),
        (b"x_forwarded_proto", b"https"),
        (b"x_real_ip", b"203.0.113.7"),
    ]
    out = proxy.upstream_headers({"type": "http", "client": ("192.0.2.1", 1)}, client)
    assert [n for n, _ in out if "_" in n] == []


# -- response_headers ---------------------------------------------------------------------------

response_names = st.one_of(
    st.sampled_from(
        [
            b"Connection",
            b"Keep-Alive",
            b"Transfer-Encoding",
            b"Date",
            b"Set-Cookie",
            b"Content-Type",
            b"Access-Control-Allow-Origin",
            b"access-control-allow-credentials",
            b"X-Hop",
            b"Upgrade",
            b"Proxy-Authenticate",
            b"Trailer",
        ]
    ),
    tokens,
)


@st.composite
def upstream_answers(draw: st.DrawFn) -> tuple[tuple[bytes, bytes], ...]:
    raw = []
    for _ in range(draw(st.integers(0, 10))):
        name = draw(response_names)
        if name.lower() == b"connection":
            value = b", ".join(draw(st.lists(response_names, max_size=3)))
        else:
            value = draw(header_text)
        raw.append((name, value))
    return tuple(raw)


@PROPS
@given(upstream_answers(), st.booleans())
def test_response_headers_are_clean_and_drop_only_hop_by_hop(raw, strip_cors: bool):
    proxy = UpstreamProxy(UPSTREAM, strip_cors_headers=strip_cors)
    out = proxy.response_headers(raw)
    nominated = {
        t.strip().lower() for n, v in raw if n.lower() == b"connection" for t in v.split(b",")
    }

    def kept(name: bytes) -> bool:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in nominated or lname == b"date":
            return False
        return not (strip_cors and lname.startswith(b"access-control-"))

    assert out == [(n.lower(), v) for n, v in raw if kept(n)]
    for name, value in out:
        assert name == name.lower()
        assert _clean_bytes(name)
        assert _clean_bytes(value)
    assert [v for n, v in out if n == b"set-cookie"] == [
        v for n, v in raw if n.lower() == b"set-cookie" and kept(n)
    ]


# -- safe_return_to -----------------------------------------------------------------------------

OWN = "https://gate.example.com"
ALLOWED = ["https://app.example.com", "http://localhost:3000"]
ORIGINS = {OWN, *ALLOWED}

# Sampled lists repeat their plausible entries so that a good share of the URLs is accepted
# (the property says something about accepted URLs only).
url_schemes = st.sampled_from(
    ["https:", "https:", "http:", "HTTPS:", "javascript:", "data:", "", "https:/", "https:\\\\"]
)
url_slashes = st.sampled_from(["//", "//", "//", "/", "///", "\\\\", "/\\", "", "%2f%2f", "\t//"])
url_userinfo = st.sampled_from(["", "", "", "user@", "gate.example.com@", "a:b@", "%40@"])
url_hosts = st.sampled_from(
    [
        "gate.example.com",
        "GATE.example.com",
        "app.example.com",
        "localhost",
        "evil.com",
        "gate.example.com.evil.com",
        "app.example.com.",
        "evil.com#.gate.example.com",
        "evil.com\\.gate.example.com",
        "127.0.0.1",
        "[::1]",
        "gate.example.com%2eevil.com",
        "\uff45\uff56\uff49\uff4c.com",  # fullwidth letters
        "",
    ]
)
url_ports = st.sampled_from(["", "", ":443", ":80", ":3000", ":8443", ":", ":99999", ":x"])
safe_pieces = ["/", "/", "x", "/x", "?a=1", "&b=", "#f", "%20", "%2f", "..", ".", "@", "evil.com"]
hostile_pieces = [
    "%2F%2F",
    "%5c",
    "%252f",
    "%09",
    "%0d%0a",
    "%00",
    "\\",
    " ",
    "\u3000",
    "é",
    "%E2%80%A8",
    "//",
]
url_paths = st.lists(
    st.sampled_from(safe_pieces) | st.sampled_from(safe_pieces) | st.sampled_from(hostile_pieces),
    max_size=5,
).map("".join)


@st.composite
def hostile_urls(draw: st.DrawFn) -> str:
    built = "".join(
        [
            draw(url_schemes),
            draw(url_slashes),
            draw(url_userinfo),
            draw(url_hosts),
            draw(url_ports),
            draw(url_paths),
        ]
    )
    return draw(st.sampled_from([built, "/" + built.lstrip("/"), quote(built, safe=":/")]))


near_origins = st.sampled_from(
    [
        "",
        "https://gate.example.com",
        "https://GATE.example.com:443",
        "https://app.example.com",
        "http://localhost:3000",
        "http://gate.example.com",
        "https://app.example.com:444",
        "http://localhost",
        "https://gate.example.com.evil.com",
        "https://gate.example.com@evil.com",
        "https://evil.com",
    ]
)
plausible_urls = st.tuples(near_origins, st.sampled_from(["/", "/", "?", "#", ""]), url_paths).map(
    "".join
)


@PROPS
@given(st.one_of(hostile_urls(), plausible_urls, st.text(max_size=40)))
@example("/x?y=1#z")
@example("https://app.example.com")
def test_safe_return_to_stays_on_allowed_origins(url: str):
    result = safe_return_to(url, OWN, ALLOWED)
    if result is None:
        return
    origin = origin_of(result)
    assert origin in ORIGINS, (url, result)
    assert result.startswith(origin)
    assert result[len(origin) : len(origin) + 1] in ("", "/", "?", "#"), (url, result)
    parts = urlsplit(result)
    assert parts.username is None
    assert parts.password is None
    assert not any(ch <= " " or ch in "\x7f\\" for ch in result), (url, result)
    # the normalised answer is itself accepted unchanged (it is what the login page gets)
    assert safe_return_to(result, OWN, ALLOWED) == result
    if url.startswith("/"):
        assert origin == OWN


# -- the relay's Link / Location rewriting -------------------------------------------------------

KRATOS_PUBLIC = "http://kratos-public"
KRATOS_ADMIN = "http://kratos-admin:4434"


#: The gate's origin from the Host header (no public_url), as the relay gives it to its rewriter.
DECIDER = Decider(Settings.model_validate({}))


@cache
def rewriter(prefix: str) -> UrlRewriter:
    return UrlRewriter(
        prefix,
        [KRATOS_PUBLIC, KRATOS_ADMIN + "/base"],
        lambda scope: DECIDER.origin(scope["scheme"], scope["headers"]),
    )


link_origins = st.sampled_from(
    [
        KRATOS_PUBLIC,
        "HTTP://KRATOS-PUBLIC:80",
        KRATOS_ADMIN,
        KRATOS_ADMIN + "/base",
        "http://user@kratos-public",
        "http://kratos-public@evil.example",
        "http://kratos-public.evil.example",
        "https://kratos-public",
        "http://kratos-public:8080",
        "//kratos-public",
        "http://[::1",
        "http://kratos-public:99999",
        "",
        "evil",
        "http://evil.example",
    ]
)
link_rests = st.sampled_from(
    [
        "/sessions?page=1&page_size=2",
        "/admin/sessions?page_token=abc",
        "",
        "/",
        "?x=1",
        "#f",
        "/../x",
        "//evil.example/x",
        "/\\evil.example",
        "/a%0d%0ab",
        "@evil.example/x",
    ]
)
link_urls = st.one_of(st.tuples(link_origins, link_rests).map("".join), st.text(max_size=20))
hosts = st.sampled_from(
    [b"gate.example:8080", b"GATE.example", b"[::1]:9", b"evil.com/x", b"a b", b"", b"g:99999"]
)


def _gate_base(host: bytes, prefix: str) -> str:
    origin = DECIDER.origin("http", [(b"host", host)])
    return (origin or "") + prefix


def _on_the_gate(url: str, base: str) -> bool:
    """`url` is `base` (the gate's origin + prefix, or just the prefix) then a path, query or
    fragment: nothing that could extend the host, port or prefix; and with no origin known, a
    path a browser cannot read as scheme-relative (`//host`, `/\\host`)."""
    if not base.startswith("http") and url.startswith(("//", "/\\")):
        return False
    return url.startswith(base) and url[len(base) : len(base) + 1] in ("", "/", "?", "#")


@PROPS
@given(
    st.lists(st.tuples(link_urls, st.sampled_from(['; rel="next"', '; rel="first"', ""]))),
    st.sampled_from(["", "/auth"]),
    hosts,
)
def test_link_rewriting_moves_only_kratos_urls_and_only_onto_the_gate(parts, prefix, host):
    r = rewriter(prefix)
    base = _gate_base(host, prefix)
    scope = {"type": "http", "scheme": "http", "headers": [(b"host", host)]}
    value = ",".join(f"<{url}>{rel}" for url, rel in parts)
    out = r.rewrite_link(value, scope)
    urls_in = re.findall(r"<([^>]*)>", value)
    urls_out = re.findall(r"<([^>]*)>", out)
    assert len(urls_in) == len(urls_out)
    assert re.sub(r"<[^>]*>", "<>", out) == re.sub(r"<[^>]*>", "<>", value)
    for before, after in zip(urls_in, urls_out, strict=True):
        assert after == r.rewrite_url(before, scope)
        if after == before:
            continue
        assert _on_the_gate(after, base), (before, after)
        if base.startswith("http"):
            assert origin_of(after) == origin_of(base)
        relative = before.startswith("/") and not before.startswith("//")
        if not relative:
            assert origin_of(before) in r.kratos_origins, (before, after)
    if not FORBIDDEN_IN_HEADERS.search(value.encode("utf-8")):
        assert not FORBIDDEN_IN_HEADERS.search(out.encode("utf-8"))


@PROPS
@given(link_urls, hosts)
def test_rewrite_url_never_raises_and_never_points_at_a_foreign_origin(url: str, host: bytes):
    r = rewriter("")
    base = _gate_base(host, "")
    scope = {"type": "http", "scheme": "http", "headers": [(b"host", host)]}
    out = r.rewrite_url(url, scope)
    assert isinstance(out, str)
    if out != url:
        assert _on_the_gate(out, base), (url, out)


@pytest.mark.parametrize(
    ("kratos", "host", "url"),
    [
        ("/base", b"gate.example.com", "/base.evil.example/"),
        ("/base", b"gate.example.com", "/base@evil.example/x"),
        ("/base", b"gate.example.com", "/basement/x"),
        ("/base", b"gate.example.com", "/base-ui/welcome"),
        ("", b"", "//evil.example/x"),
        ("", b"", "/\\evil.example/x"),
    ],
)
def test_rewrite_never_moves_a_kratos_url_off_the_gate(kratos: str, host: bytes, url: str):
    public = {"public_url": "https://gate.example.com"} if host else {}
    settings = Settings.model_validate({**public, "ory": {"public_url": KRATOS_PUBLIC + kratos}})
    gate = Gate(settings)
    assert gate.relay is not None
    scope = {"type": "http", "scheme": "https", "headers": [(b"host", host)] if host else []}
    out = gate.relay.rewriter.rewrite_url(KRATOS_PUBLIC + url, scope)
    base = "https://gate.example.com" if host else ""
    assert out == KRATOS_PUBLIC + url or _on_the_gate(out, base), out


# -- forward auth: whatever a proxy (or a client through it) sends --------------------------------

FA_FAKE = KratosFake()
FA_ALICE = FA_FAKE.login("alice@example.com")
FA_LOOP = asyncio.new_event_loop()
FA_URI_HEADER = {"forwarded": b"x-forwarded-uri", "original": b"x-original-url"}
FA_NAMES = [
    b"x-forwarded-method",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-uri",
    b"x-original-method",
    b"x-original-url",
]


@cache
def _fa_gate(source: str) -> Gate:
    settings = Settings.model_validate(
        {
            "ory": {"public_url": FA_FAKE.public_url},
            "forward_auth": {"enabled": True, "source": source},
            "access": {"public_paths": ["/health/**", "/public/**"]},
        }
    )
    return Gate(settings, kratos_transport=httpx.ASGITransport(app=FA_FAKE))


fa_values = st.one_of(
    st.sampled_from(
        [
            b"GET",
            b"POST",
            b"HEAD",
            b"get",
            b"BREW",
            b"https",
            b"http",
            b"wss",
            b"https, http",
            b"app.example.com",
            b"app.example.com:8443",
            b"[::1]:99999",
            b"user@app.example.com",
            b"/a?b=1",
            b"/public/a",
            b"/public/../a",
            b"/public/%2e%2e/a",
            b"/public/a#x",
            b"//public/a",
            b"*",
            b"",
            b"https://app.example.com/public/a",
            b"https://app.example.com/a",
            b"https://app.example.com",
            b"https://app.example.com?x",
            b"//app.example.com/public/a",
            b"/public/a\r\nX-User-Id: admin",
            b"/public/a\x00",
            b"/public/\xc0\xae\xc0\xae/a",
            b"/" + b"a" * 9000,
        ]
    ),
    st.binary(max_size=40),
    st.text(alphabet=string.printable, max_size=40).map(str.encode),
)
fa_uris = st.sampled_from(
    [
        b"/a?b=1",
        b"/public/a",
        b"/public/a?x=/../b",
        b"/public/../a",
        b"/public/%2e%2e/a",
        b"/public/a%2f..%2f..%2fb",
        b"//public/a",
        b"/public",
        b"/publicx/a",
        b"/PUBLIC/a",
        b"/public/a;x=1",
        b"/public/%ef%bc%8f..",
        b"/public/\xef\xbc\x8fa",
    ]
)


@st.composite
def fa_headers(draw: st.DrawFn) -> RawHeaders:
    """The six family headers, each mostly well-formed (so that judging is reached), else
    absent, junk, or sent twice; in any order."""
    uri = draw(fa_uris)
    good = {
        b"x-forwarded-method": draw(st.sampled_from([b"GET", b"POST", b"HEAD"])),
        b"x-forwarded-proto": draw(st.sampled_from([b"https", b"http", b"wss"])),
        b"x-forwarded-host": draw(st.sampled_from([b"app.example.com", b"app.example.com:8443"])),
        b"x-forwarded-uri": uri,
        b"x-original-method": draw(st.sampled_from([b"GET", b"DELETE"])),
        b"x-original-url": b"https://app.example.com" + uri,
    }
    out: RawHeaders = []
    for name in FA_NAMES:
        choice = draw(st.sampled_from(["good"] * 8 + ["none", "junk", "twice"]))
        if choice == "good":
            out.append((name, good[name]))
        elif choice == "junk":
            out.append((name, draw(fa_values)))
        elif choice == "twice":
            out += [(name, good[name]), (name, draw(st.one_of(st.just(good[name]), fa_values)))]
    return draw(st.permutations(out))


fa_credentials = st.sampled_from(["none", "token", "cookie", "bearer", "junk"])
fa_call_paths = st.one_of(
    fa_uris,
    fa_uris,
    st.sampled_from([b"", b"/", b"%2Fpublic/a", b"/public/a%00", b"/public/a#b"]),
    st.binary(max_size=30),
).map(lambda rest: b"/decisions" + rest)


def _fa_credential(kind: str) -> RawHeaders:
    if kind == "token":
        return [(b"x-session-token", FA_ALICE.token.encode())]
    if kind == "cookie":
        return [(b"cookie", f"a=1; ory_kratos_session={FA_ALICE.cookie}".encode())]
    if kind == "bearer":
        return [(b"authorization", f"Bearer {FA_ALICE.token}".encode())]
    if kind == "junk":
        return [(b"x-session-token", b"ory_st_junk")]
    return []


async def _fa_call(gate: Gate, scope: dict[str, Any]) -> tuple[int, RawHeaders]:
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await gate(scope, receive, send)
    start = messages[0]
    assert start["type"] == "http.response.start"
    return start["status"], list(start["headers"])


@PROPS
@given(
    source=st.sampled_from(["forwarded", "original", "path"]),
    family=fa_headers(),
    kind=fa_credentials,
    raw_path=fa_call_paths,
    method=st.sampled_from(["GET", "GET", "HEAD", "POST", "BREW", "get"]),
    hosts=st.one_of(st.just([b"app.example.com"]), st.lists(fa_values, max_size=2)),
    accept_html=st.booleans(),
)
@example(  # the family's own header names a public path: allowed without a session
    source="forwarded",
    family=[
        (b"x-forwarded-method", b"GET"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"app.example.com"),
        (b"x-forwarded-uri", b"/public/a"),
    ],
    kind="none",
    raw_path=b"/decisions",
    method="GET",
    hosts=[b"gate"],
    accept_html=False,
)
def test_forward_auth_never_errs_and_never_allows_without_a_session(
    source: str,
    family: RawHeaders,
    kind: str,
    raw_path: bytes,
    method: str,
    hosts: list[bytes],
    accept_html: bool,
):
    gate = _fa_gate(source)
    headers: RawHeaders = [(b"host", h) for h in hosts] + family + _fa_credential(kind)
    if accept_html:
        headers.append((b"accept", b"text/html"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 4455),
    }
    status, answer = FA_LOOP.run_until_complete(_fa_call(gate, scope))
    assert status in (200, 303, 400, 401, 403, 404), status  # 404: not the decision path
    for name, value in answer:
        assert _clean_bytes(name), name
        assert _clean_bytes(value), (name, value)
    identity = [v for n, v in answer if n == b"x-user-id"]
    valid = kind in ("token", "cookie", "bearer")
    if status != 200:
        assert identity == []
        return
    if identity:
        assert valid
        assert identity == [FA_ALICE.identity_id.encode()]
        return
    # allowed without an identity: only a public path, named by the family's own header
    if source == "path":
        named = [raw_path[len(b"/decisions") :]]
    else:
        named = [v for n, v in family if n == FA_URI_HEADER[source]]
        if source == "original":
            named = [urlsplit(v.decode("latin-1")).path.encode("latin-1") for v in named]
    assert named, (source, family)
    assert all(v.startswith(b"/public/") for v in named), named
