"""Decisions without a session: public paths, path tricks, browser navigation, the gate's origin.

Requests that must reach the gate byte for byte go over a raw socket, so no client normalises
dot segments, encoded slashes or backslashes on the way.
"""

from __future__ import annotations

import asyncio
import json
import time
import unicodedata
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resources import raw_request
from sessiongate.config import Settings
from sessiongate.decide import Decider

LOGIN = "http://127.0.0.1:4433/self-service/login/browser"


def whoami_calls(stack) -> int:
    return stack.fake.count("GET", "/sessions/whoami")


# -- public paths ---------------------------------------------------------------------------


PUBLIC = ["/health/x", "/health/deep/er", "/public/x", "/public/a/b/c.css", "/public/"]


async def test_public_paths_pass_without_session_and_without_whoami(stack) -> None:
    async with stack.client() as c:
        for i, path in enumerate(PUBLIC, 1):
            r = await c.get(path, params={"q": "1"}, headers={"Accept": "text/html"})
            assert r.status_code == 200, (path, r.text)
            assert r.json()["path"] == path
            assert r.json()["query"] == "q=1"
            assert len(stack.app.requests) == i
    assert whoami_calls(stack) == 0


async def test_public_path_ignores_even_a_bad_credential(stack) -> None:
    async with stack.client() as c:
        r = await c.post(
            "/public/form",
            headers={"X-Session-Token": "ory_st_unknown", "Accept": "application/json"},
            content=b"body",
        )
        r2 = await c.get("/public/x", headers={"Authorization": "Bearer " + "a" * 10_000})
    assert (r.status_code, r2.status_code) == (200, 200)
    assert r.json()["body_size"] == 4
    assert whoami_calls(stack) == 0


def test_gate_health_endpoints_are_answered_by_the_gate(stack) -> None:
    status, _headers, body = raw_request(stack.url, "/health/alive")
    assert status == 200
    assert json.loads(body) == {"status": "ok"}
    assert stack.app.requests == []


async def test_ready_asks_kratos_at_most_once_a_second(stack) -> None:
    def kratos_ready_calls() -> int:
        return stack.fake.count("GET", "/health/ready")

    async with stack.client() as c:
        start = time.monotonic()
        answers = await asyncio.gather(*(c.get("/health/ready") for _ in range(30)))
        answers += [await c.get("/health/ready") for _ in range(60)]
        elapsed = time.monotonic() - start
        assert {r.status_code for r in answers} == {200}
        # one call per started second at most (concurrent probes share the one call)
        assert 1 <= kratos_ready_calls() <= 1 + int(elapsed), elapsed
        await asyncio.sleep(1.1)
        before = kratos_ready_calls()
        assert (await c.get("/health/ready")).status_code == 200
        assert kratos_ready_calls() == before + 1
        # a failure is cached the same way, and noticed within a second
        stack.kratos.stop()
        await asyncio.sleep(1.1)
        assert (await c.get("/health/ready")).status_code == 503
        assert (await c.get("/health/ready")).status_code == 503


async def test_non_public_paths_need_a_session(stack) -> None:
    async with stack.client() as c:
        for path in ["/private", "/", "/publicx", "/public", "/PUBLIC/x", "/healthz", "/health"]:
            r = await c.get(path)
            assert r.status_code == 401, path
    assert stack.app.requests == []


async def test_no_public_paths_configured_means_nothing_is_public(make_stack) -> None:
    s = make_stack(access={"public_paths": []})
    async with s.client() as c:
        r = await c.get("/public/x")
    assert r.status_code == 401
    assert s.app.requests == []


PATH_TRICKS = [
    "/public/../private",
    "/public/%2e%2e/private",
    "/public/%2E%2E/private",
    "/public/.%2e/private",
    "/public%2f..%2fprivate",
    "/public%2F..%2Fprivate",
    "/public/..%2fprivate",
    "/public/..%2Fprivate",
    "/public/%2e%2e%2fprivate",
    "/public/;/../private",
    "/public/..;/private",
    "/public/x;y",
    "/public;/x",
    "/public//x",
    "/public/x//y",
    "/public/%252e%252e/private",
    "/public/%252e%252e%252fprivate",
    "/public/%5c..%5cprivate",
    "/public\\..\\private",
    "/public/..\\private",
    "/public/./x",
    "/public/.",
    "/public/..",
    "/public/x/../../private",
    "/public/%2e/x",
    "/health/../private",
    "/health/%2e%2e/private",
    "/health//x",
]


def test_path_tricks_never_make_a_path_public(stack) -> None:
    failures = []
    for target in PATH_TRICKS:
        status, _, body = raw_request(stack.url, target, [("Accept", "application/json")])
        if status != 401 or json.loads(body)["error"]["code"] != 401:
            failures.append((target, status, body[:200]))
    assert failures == []
    assert stack.app.requests == []
    assert whoami_calls(stack) == 0


def test_the_raw_request_helper_does_reach_a_public_path(stack) -> None:
    """Control for the tricks above: the same helper gets a plain public path through."""
    status, _, body = raw_request(stack.url, "/public/x?y=1", [("Accept", "application/json")])
    assert status == 200, body
    assert json.loads(body)["raw_path"] == "/public/x"


@pytest.mark.parametrize("target", ["/public/../private", "/public/%2e%2e/private"])
def test_path_tricks_with_a_session_are_just_protected_requests(stack, target: str) -> None:
    alice = stack.fake.login("alice@example.com")
    status, _, body = raw_request(stack.url, target, [("X-Session-Token", alice.token)])
    assert status == 200, body
    assert whoami_calls(stack) == 1


def _decider(globs: list[str]) -> Decider:
    return Decider(Settings.model_validate({"access": {"public_paths": globs}}))


@pytest.mark.parametrize(
    ("path", "raw", "public"),
    [
        ("/public/x", b"/public/x", True),
        ("/public/a/b", b"/public/a/b", True),
        ("/public/x", None, True),
        ("/public/../private", None, False),  # no raw_path: the normalised form must match
        ("/public//x", None, False),
        ("/public/./x", None, False),
        ("/public/../private", b"/public/%2e%2e/private", False),
        ("/public/x", b"/public/x;y", False),
        ("/public/x", b"/public%2Fx", False),
        ("/public/x", b"/public/x?a=/../b", True),  # only the path part counts
        ("/private", b"/private", False),
        ("/public", b"/public", False),
        ("/Public/x", b"/Public/x", False),  # case-sensitive
    ],
)
def test_is_public_unit(path: str, raw: bytes | None, public: bool) -> None:
    assert _decider(["/public/**", "/health/**"]).is_public(path, raw) is public


# Fullwidth and other compatibility look-alikes of `/` and `.`: an app that NFKC-normalises
# (many frameworks and filesystems do) would turn these into `/public/../admin`.
LOOKALIKE_TRICKS = [
    "/public/..%EF%BC%8Fadmin",  # U+FF0F fullwidth solidus
    "/public/%EF%BC%8E%EF%BC%8E/admin",  # U+FF0E fullwidth full stop
    "/public/%EF%BC%8E%EF%BC%8E%EF%BC%8Fadmin",
    "/public/%E2%80%A5/admin",  # U+2025 two dot leader -> ".."
    "/public/%EF%B9%92%EF%B9%92/admin",  # U+FE52 small full stop
    "/public/%C2%AA",  # U+00AA feminine ordinal -> "a": any NFKC change counts
]


def test_unicode_lookalikes_never_make_a_path_public(stack) -> None:
    failures = []
    for target in LOOKALIKE_TRICKS:
        status, _, body = raw_request(stack.url, target, [("Accept", "application/json")])
        if status != 401:
            failures.append((target, status, body[:200]))
    assert failures == []
    assert stack.app.requests == []


def test_every_character_that_nfkc_changes_makes_a_path_protected() -> None:
    """The class: every BMP character whose NFKC form differs, anywhere in a public path."""
    decider = _decider(["/public/**"])
    changed = [
        chr(c)
        for c in range(0x80, 0x10000)
        if not 0xD800 <= c <= 0xDFFF and unicodedata.normalize("NFKC", chr(c)) != chr(c)
    ]
    assert len(changed) > 2500  # the corpus is the whole class, not a handful
    public = [
        ch
        for ch in changed
        if decider.is_public(f"/public/a{ch}b", f"/public/a{ch}b".encode())
        or decider.is_public(f"/public/{ch}", None)
    ]
    assert public == []
    # non-ASCII that NFKC keeps (é, ü, CJK) stays public: the rule is "changes", not "non-ASCII"
    for path in ["/public/caf\u00e9", "/public/\u6771\u4eac", "/public/\u00fc/x"]:
        assert decider.is_public(path, path.encode()) is True


@pytest.mark.parametrize(
    ("glob", "path", "match"),
    [
        ("/api/*/docs", "/api/v1/docs", True),
        ("/api/*/docs", "/api/admin/x/docs", False),  # `*` stays inside one segment
        ("/api/*/docs", "/api//docs", False),
        ("/api/**/docs", "/api/admin/x/docs", True),  # `**` crosses segments
        ("/api/**/docs", "/api/v1/docs", True),
        ("/assets/*", "/assets/app.css", True),
        ("/assets/*", "/assets/", True),
        ("/assets/*", "/assets/img/logo.png", False),
        ("/assets/**", "/assets/img/logo.png", True),
        ("/assets/**", "/assets", False),
        ("/assets/*.css", "/assets/a.css", True),
        ("/assets/*.css", "/assets/x/a.css", False),
        ("/a/?", "/a/b", True),
        ("/a/?", "/a//", False),  # `?` is not a `/` either
        ("/a/[bc]/d", "/a/c/d", True),
        ("/a/[!x]/d", "/a/y/d", True),
        ("/a/[!x]/d", "/a///d", False),  # a negated class does not admit `/`
        ("/a/[!x]/d", "/a/x/d", False),
        ("/a/[x", "/a/[x", True),  # an unclosed `[` is literal
        ("/a.b", "/aXb", False),  # glob text is literal, not a regex
        ("/a+", "/aa", False),
    ],
)
def test_glob_segments(glob: str, path: str, match: bool) -> None:
    assert _decider([glob]).is_public(path, None) is match


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.from_regex(r"[a-z0-9._-]{1,8}", fullmatch=True), min_size=1, max_size=4),
    st.lists(st.from_regex(r"[a-z0-9_-]{1,8}", fullmatch=True), min_size=1, max_size=4),
)
def test_a_single_star_never_crosses_a_slash(prefix: list[str], middle: list[str]) -> None:
    prefix = [p for p in prefix if p not in (".", "..")] or ["p"]
    glob_prefix = "/" + "/".join(prefix)
    path = f"{glob_prefix}/{'/'.join(middle)}/end"
    one, two = _decider([glob_prefix + "/*/end"]), _decider([glob_prefix + "/**/end"])
    assert one.is_public(path, None) is (len(middle) == 1)
    assert two.is_public(path, None) is True


def test_is_public_with_no_globs_is_false() -> None:
    assert _decider([]).is_public("/public/x", b"/public/x") is False


# -- browser navigation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "accept"),
    [
        ("GET", "text/html"),
        ("GET", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ("HEAD", "text/html"),
    ],
)
async def test_browser_navigation_is_redirected_to_login(stack, method: str, accept: str) -> None:
    async with stack.client() as c:
        r = await c.request(method, "/docs/page?x=1", headers={"Accept": accept})
    assert r.status_code == 303, r.text
    location = urlsplit(r.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == LOGIN
    assert parse_qs(location.query) == {"return_to": [stack.url + "/docs/page?x=1"]}
    assert r.headers["cache-control"] == "no-store"
    assert r.content == b""
    assert stack.app.requests == []


ENVELOPE_401 = {
    "error": {
        "code": 401,
        "status": "Unauthorized",
        "reason": "No valid session credentials found in the request.",
        "message": "The request could not be authorized",
    }
}


@pytest.mark.parametrize(
    ("method", "accept"),
    [
        ("POST", "text/html"),  # a form post is not a navigation to redirect
        ("PUT", "text/html"),
        ("DELETE", "text/html"),
        ("GET", "application/json"),
        ("GET", "*/*"),
        ("GET", None),
    ],
)
async def test_api_calls_get_401_with_herodot_envelope(
    stack, method: str, accept: str | None
) -> None:
    headers = {"Accept": accept} if accept else {}
    async with stack.client() as c:
        r = await c.request(method, "/api/things", headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/json"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "location" not in r.headers
    assert r.json() == ENVELOPE_401
    assert stack.app.requests == []


async def test_head_api_call_gets_401_without_body(stack) -> None:
    async with stack.client() as c:
        r = await c.head("/api/things", headers={"Accept": "application/json"})
    assert r.status_code == 401
    assert r.content == b""
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_is_browser_navigation_unit() -> None:
    nav = Decider.is_browser_navigation
    html = [(b"accept", b"text/html")]
    assert nav("GET", html)
    assert nav("HEAD", html)
    assert not nav("POST", html)
    assert not nav("GET", [(b"accept", b"application/json")])
    assert not nav("GET", [])
    assert nav("GET", [(b"accept", b"application/json"), (b"accept", b"text/html")])


# -- the gate's origin ------------------------------------------------------------------------


def _return_to(location: str) -> list[str] | None:
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == LOGIN
    return parse_qs(parts.query).get("return_to")


def test_public_url_beats_the_host_header(make_stack) -> None:
    s = make_stack(public_url="https://gate.example.com")
    for host in ("evil.com", "127.0.0.1:1", "gate.example.com:8443"):
        status, headers, _ = raw_request(s.url, "/x/y?z=1", [("Accept", "text/html")], host=host)
        assert status == 303
        assert _return_to(headers["location"][0]) == ["https://gate.example.com/x/y?z=1"]


def test_origin_comes_from_a_well_formed_host_header(stack) -> None:
    status, headers, _ = raw_request(
        stack.url, "/x", [("Accept", "text/html")], host="Gate.Test:8080"
    )
    assert status == 303
    assert _return_to(headers["location"][0]) == ["http://gate.test:8080/x"]


MALFORMED_HOSTS = [
    "evil.com/x",
    "evil.com@gate.test",
    "evil.com\\x",
    "evil.com:",
    "evil.com:abc",
    "evil.com:123456",
    "evil.com:99999",  # five digits but no port
    "[fff]",  # bracketed but not IPv6
    "[::1",
    "a_b.test",
]


def test_malformed_host_gives_login_redirect_without_return_to(stack) -> None:
    failures = []
    for host in MALFORMED_HOSTS:
        status, headers, body = raw_request(stack.url, "/x", [("Accept", "text/html")], host=host)
        if status != 303 or headers.get("location") != [LOGIN]:
            failures.append((host, status, headers.get("location"), body[:200]))
    assert failures == []
    assert stack.app.requests == []


# (HTTP version, Host header lines): none, or several that may disagree
AMBIGUOUS_HOSTS = [
    ("1.1", []),
    ("1.1", [""]),
    ("1.0", []),
    ("1.1", ["gate.test", "evil.com"]),
    ("1.1", ["gate.test", "gate.test"]),
    ("1.0", ["evil.com", "gate.test"]),
    ("1.1", ["gate.test", ""]),
    ("1.1", ["gate.test", "gate.test", "gate.test"]),
]


@pytest.mark.parametrize(("version", "hosts"), AMBIGUOUS_HOSTS)
@pytest.mark.parametrize("target", ["/x", "/public/x", "/health/alive", "/sessions/whoami"])
def test_no_host_or_several_hosts_is_a_400(make_stack, version, hosts, target) -> None:
    s = make_stack(forwarded={"trusted_proxies": ["127.0.0.1/32"]})
    alice = s.fake.login("alice@example.com")
    headers = [("Host", h) for h in hosts] + [
        ("Accept", "text/html"),
        ("X-Session-Token", alice.token),
        ("X-Forwarded-Host", "evil.com"),
    ]
    status, _, body = raw_request(s.url, target, headers, host=None, version=version)
    assert status == 400, body
    assert json.loads(body)["error"]["code"] == 400
    assert s.app.requests == []
    assert whoami_calls(s) == 0


def test_has_one_host_unit() -> None:
    one = Decider.has_one_host
    assert one([(b"host", b"a")])
    assert one([(b"accept", b"*/*"), (b"host", b"a:1")])
    assert not one([(b"host", b"")])  # granian's stand-in for a missing Host
    assert not one([])
    assert not one([(b"x-host", b"a")])
    assert not one([(b"host", b"a"), (b"host", b"a")])


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("gate.test", "http://gate.test"),
        ("GATE.test:80", "http://gate.test"),
        ("gate.test:8080", "http://gate.test:8080"),
        ("[::1]:8080", "http://[::1]:8080"),
        ("127.0.0.1", "http://127.0.0.1"),
        ("evil.com:99999", None),
        ("[fff]", None),
        ("evil.com/x", None),
        ("a b", None),
    ],
)
def test_origin_unit(host: str, origin: str | None) -> None:
    d = _decider(["/public/*"])
    assert d.origin("http", [(b"host", host.encode())]) == origin


def test_origin_unit_public_url_and_no_host() -> None:
    d = Decider(Settings.model_validate({"public_url": "https://Gate.Example.com:443/"}))
    assert d.origin("http", [(b"host", b"evil.com")]) == "https://gate.example.com"
    assert _decider([]).origin("http", []) is None


@pytest.mark.parametrize(
    ("scheme", "origins", "same"),
    [
        ("http", [], True),  # not a browser
        ("http", [b"http://gate.example"], True),
        ("ws", [b"http://gate.example"], True),  # a WebSocket's origin is its HTTP origin
        ("wss", [b"http://gate.example"], False),  # another scheme
        ("https", [b"https://app.example"], True),  # allowed CORS origin
        ("http", [b"http://evil.example"], False),
        ("http", [b"http://gate.example", b"http://evil.example"], False),
        ("http", [b"http://evil.example", b"http://gate.example"], False),
        ("http", [b"http://gate.example", b"http://gate.example"], False),  # several: foreign
    ],
)
def test_is_same_or_allowed_origin_unit(scheme: str, origins: list[bytes], same: bool) -> None:
    headers = [(b"host", b"gate.example"), *((b"origin", o) for o in origins)]
    scope = {"scheme": scheme, "headers": headers}
    allowed = {"https://app.example"}.__contains__
    assert _decider([]).is_same_or_allowed_origin(scope, allowed) is same
