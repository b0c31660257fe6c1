"""`return_to`: only ever the gate's own origin or an allowed one (open-redirect corpus).

The corpus is written for this project, in the spirit of the open-redirect test data of
oauth2-proxy and similar proxies: scheme-relative URLs, backslashes, user-info, encoded and
double-encoded slashes, control characters, Unicode lookalikes and dangerous schemes.
"""

from __future__ import annotations

import socket
from urllib.parse import parse_qs, urlsplit

import pytest

from sessiongate.redirects import safe_return_to, with_query

OWN = "https://gate.example.com"
ALLOWED = ["https://app.example.com"]

ACCEPTED: list[tuple[str, str]] = [
    # relative paths resolve against the gate's origin
    ("/", "https://gate.example.com/"),
    ("/path", "https://gate.example.com/path"),
    ("/path?q=1", "https://gate.example.com/path?q=1"),
    ("/path?q=1#frag", "https://gate.example.com/path?q=1#frag"),
    ("/a/b/c.html", "https://gate.example.com/a/b/c.html"),
    ("/search?q=a+b&next=%2Fhome", "https://gate.example.com/search?q=a+b&next=%2Fhome"),
    ("/a%2F%2Fevil.com", "https://gate.example.com/a%2F%2Fevil.com"),  # slashes mid-path
    ("/x?url=//evil.com", "https://gate.example.com/x?url=//evil.com"),  # only in the query
    ("/x#//evil.com", "https://gate.example.com/x#//evil.com"),
    ("/%E2%82%AC", "https://gate.example.com/%E2%82%AC"),  # UTF-8 percent-encoded path
    ("/caf%C3%A9?x=%C3%A9", "https://gate.example.com/caf%C3%A9?x=%C3%A9"),
    # the gate's own origin, absolute
    ("https://gate.example.com", "https://gate.example.com"),
    ("https://gate.example.com/", "https://gate.example.com/"),
    ("https://gate.example.com/ok", "https://gate.example.com/ok"),
    ("https://gate.example.com:443/ok", "https://gate.example.com/ok"),  # default port dropped
    ("https://GATE.EXAMPLE.COM/x", "https://gate.example.com/x"),  # host case normalised
    ("HTTPS://Gate.Example.Com:443/X?Y#Z", "https://gate.example.com/X?Y#Z"),
    (
        "https://gate.example.com/x?next=https://evil.com",
        "https://gate.example.com/x?next=https://evil.com",
    ),
    ("https://gate.example.com#@evil.com", "https://gate.example.com#@evil.com"),
    ("https://gate.example.com?@evil.com", "https://gate.example.com?@evil.com"),
    ("https://gate.example.com//evil.com", "https://gate.example.com//evil.com"),  # a gate path
    # the allowed origin
    ("https://app.example.com", "https://app.example.com"),
    ("https://app.example.com/", "https://app.example.com/"),
    ("https://app.example.com/x?y#z", "https://app.example.com/x?y#z"),
    ("https://APP.example.com:443/dash", "https://app.example.com/dash"),
    ("https://app.example.com/cb?code=1&state=%2F", "https://app.example.com/cb?code=1&state=%2F"),
]

REJECTED: list[str] = [
    # empty, relative without a slash, fragments and queries only
    "",
    "path-without-slash",
    "evil.com",
    "evil.com/path",
    "./x",
    "../x",
    "?next=/x",
    "#frag",
    # scheme-relative and its disguises
    "//evil.com",
    "///evil.com",
    "////evil.com",
    "//evil.com/path",
    "//gate.example.com",  # scheme-relative even to ourselves: refused (fail closed)
    "/\\evil.com",
    "\\/evil.com",
    "\\\\evil.com",
    "/\\/evil.com",
    "/%2F%2Fevil.com",
    "/%2f%2fevil.com",
    "/%2F/evil.com",
    "%2F%2Fevil.com",
    "/%5Cevil.com",
    "/%5cevil.com",
    "/%5C%5Cevil.com",
    "%5C%5Cevil.com",
    "/%252F%252Fevil.com",  # double-encoded
    "%252F%252Fevil.com",
    "/%25252F%25252Fevil.com",  # triple-encoded
    "/%25%32%46%25%32%46evil.com",  # %2F spelled with encoded digits
    "/a%25252525252541",  # encoded deeper than the gate will look: refused
    "/%09/evil.com",
    "/%0a/evil.com",
    "/%0d/evil.com",
    "/%00/evil.com",
    "/%20/evil.com",
    # foreign or look-alike hosts
    "https://evil.com",
    "https://evil.com/",
    "http://evil.com",
    "https://gate.example.com.evil.com",
    "https://gate.example.com.evil.com/x",
    "https://evil.com/https://gate.example.com",
    "https://evil.com#@gate.example.com",
    "https://evil.com?@gate.example.com",
    "https://app.example.com.evil.com",
    "https://evilgate.example.com",
    "https://sub.gate.example.com",
    "https://example.com",
    "https://g\u0430te.example.com/",  # Cyrillic a
    "https://gate.example.com%2eevil.com/",
    "https://gate.example.com%40evil.com/",
    "https://gate.example.com%2F@evil.com",
    # user-info
    "https://gate.example.com@evil.com",
    "https://gate.example.com@evil.com/x",
    "https://user:pass@gate.example.com/",
    "https://@gate.example.com/",
    "https://evil.com\\@gate.example.com",
    "https://evil.com%5C@gate.example.com",
    # other schemes
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "javascript://gate.example.com/%0aalert(1)",
    "java\tscript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "data:",
    "vbscript:msgbox(1)",
    "file:///etc/passwd",
    "ftp://gate.example.com/",
    "ws://gate.example.com/",
    "wss://gate.example.com/",
    "blob:https://gate.example.com/x",
    # mangled http(s)
    "https:evil.com",
    "https:/evil.com",
    "https:///evil.com",
    "https:\\\\evil.com",
    "https:/\\evil.com",
    "http:gate.example.com",
    "http://gate.example.com",  # right host, wrong scheme
    "http://gate.example.com/x",
    "http://app.example.com/",
    "http://gate.example.com:evil",
    "https://gate.example.com:evil/",
    "https://gate.example.com:/x",  # empty port
    "https://gate.example.com:65536/",
    "https://gate.example.com:443:443/",
    "https://gate.example.com:+443/",
    "https://gate.example.com:\uff10443/",  # fullwidth digit
    "https://gate.example.com:8443/",  # another port is another origin
    "https://app.example.com:8443/",
    "https://[::1]/",
    # whitespace and control characters anywhere
    " https://evil.com",
    "\thttps://evil.com",
    "\nhttps://evil.com",
    "\r\nhttps://evil.com",
    " /path",
    "\t/path",
    "/path ",
    "\thttps://gate.example.com/",
    "https://gate.example.com/\t",
    "https://gate.example.com/a\r\nSet-Cookie: x=1",
    "https://gate.example.com/a\nLocation: https://evil.com",
    "/a\rb",
    "/a\x00b",
    "https://gate.example.com/\x00",
    "/a\x7fb",
    "/a\x1bb",
    "/a\x85b",  # C1 next line
    "/a%0d%0aSet-Cookie:%20x=1",
    # Unicode lookalikes and separators
    "\uff0f\uff0fevil.com",  # fullwidth slashes
    "/\uff0fevil.com/\u2028",
    "https://evil.com\uff0f@gate.example.com",
    "https://gate.example.com\uff0f@evil.com",
    "https://gate.example.com\uff0f.evil.com",
    "https://evil.com\uff0f%41",  # NFKC turns the netloc into a path: must not raise
    "https://evil.com\uff03.gate.example.com",  # fullwidth #
    "/\u2028evil.com",
    "/\u2029evil.com",
    "/\ufeffevil.com",
    "/\u3000evil.com",
    "/\u00a0evil.com",
    "\u2028https://gate.example.com/",
    # too long
    "/" + "a" * 5000,
]


@pytest.mark.parametrize(("url", "expected"), ACCEPTED)
def test_safe_return_to_accepts_own_and_allowed_origins(url: str, expected: str) -> None:
    assert safe_return_to(url, OWN, ALLOWED) == expected


@pytest.mark.parametrize("url", REJECTED)
def test_safe_return_to_rejects_open_redirects(url: str) -> None:
    assert safe_return_to(url, OWN, ALLOWED) is None


def test_corpus_is_large_enough() -> None:
    assert len(ACCEPTED) + len(REJECTED) >= 60
    assert not set(dict(ACCEPTED)) & set(REJECTED)


def test_allowed_origins_are_only_what_is_configured() -> None:
    assert safe_return_to("https://app.example.com/x", OWN, []) is None
    assert safe_return_to("https://app.example.com/x", OWN, ALLOWED) == "https://app.example.com/x"
    # an iterable that is not a list works too (the gate passes a frozenset)
    assert safe_return_to("https://app.example.com/", OWN, frozenset(ALLOWED)) is not None


def test_own_origin_with_port_and_default_port() -> None:
    own = "http://127.0.0.1:4455"
    assert safe_return_to("/x?y=1", own, []) == "http://127.0.0.1:4455/x?y=1"
    assert safe_return_to("http://127.0.0.1:4455/x", own, []) == "http://127.0.0.1:4455/x"
    assert safe_return_to("http://127.0.0.1/x", own, []) is None
    assert safe_return_to("http://127.0.0.1:4456/x", own, []) is None
    assert safe_return_to("http://gate.test:80/x", "http://gate.test", []) == "http://gate.test/x"


def test_every_accepted_result_is_absolute_and_on_an_allowed_origin() -> None:
    for url, _ in ACCEPTED:
        result = safe_return_to(url, OWN, ALLOWED)
        assert result is not None
        parts = urlsplit(result)
        assert f"{parts.scheme}://{parts.netloc}" in (OWN, *ALLOWED), result


# -- with_query ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "params", "expected"),
    [
        (
            "https://k.test/self-service/login/browser",
            {"return_to": "https://gate.example.com/a?b=1&c=2"},
            "https://k.test/self-service/login/browser"
            "?return_to=https%3A%2F%2Fgate.example.com%2Fa%3Fb%3D1%26c%3D2",
        ),
        (
            "https://k.test/login?aal=aal2",
            {"return_to": "https://gate.example.com/"},
            "https://k.test/login?aal=aal2&return_to=https%3A%2F%2Fgate.example.com%2F",
        ),
        ("/login", {"return_to": "/x y"}, "/login?return_to=%2Fx+y"),
        ("https://k.test/login#frag", {"a": "1"}, "https://k.test/login?a=1#frag"),
        (
            "https://k.test/login?x=%2F#f",
            {"a": "1", "b": "2"},
            "https://k.test/login?x=%2F&a=1&b=2#f",
        ),
        ("https://k.test/login", {}, "https://k.test/login"),
        ("https://k.test/login", {"r": "\r\n"}, "https://k.test/login?r=%0D%0A"),
    ],
)
def test_with_query(url: str, params: dict[str, str], expected: str) -> None:
    assert with_query(url, **params) == expected


def test_with_query_round_trips_through_parse_qs() -> None:
    target = "https://gate.example.com/x?a=1&b=%2F#frag"
    out = with_query("https://k.test/login?flow=1", return_to=target)
    query = parse_qs(urlsplit(out).query, strict_parsing=True)
    assert query == {"flow": ["1"], "return_to": [target]}


# -- end to end: the login redirect of the real gate ---------------------------------------

HOSTILE_TARGETS = [
    "//evil.com",
    "///evil.com",
    "//evil.com/%2F..",
    "/%2F%2Fevil.com",
    "/%2f%2fevil.com",
    "/%5Cevil.com",
    "/%5C%5Cevil.com",
    "/\\evil.com",
    "/\\\\evil.com",
    "/%252F%252Fevil.com",
    "/%09/evil.com",
    "/%0d%0aLocation:%20https://evil.com",
    "/%00",
    "/..//evil.com",
    "/.%2e/%2e%2e//evil.com",
    "/@evil.com",
    "/x?return_to=https://evil.com",
    "/x?%0d%0aSet-Cookie:%20a=b",
    "/%E2%80%A8evil.com",
    "/%EF%BC%8F%EF%BC%8Fevil.com",
    "/https://evil.com",
    "/x\x85y",  # an 8-bit byte in the raw request target
]


def raw_get(url: str, target: str | bytes, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """One HTTP/1.1 request with `target` sent byte for byte (no client normalisation)."""
    parts = urlsplit(url)
    raw_target = target.encode("latin-1") if isinstance(target, str) else target
    headers = {"Host": parts.netloc, **headers}
    lines = [b"GET " + raw_target + b" HTTP/1.1"]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers.items()]
    lines += [b"Connection: close", b"", b""]
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(b"\r\n".join(lines))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    out: dict[str, str] = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        out[name.strip().lower()] = value.strip()
    return status, out


def assert_return_to_safe(location: str, allowed: tuple[str, ...]) -> str | None:
    parts = urlsplit(location)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "http",
        "127.0.0.1:4433",
        "/self-service/login/browser",
    ), location
    query = parse_qs(parts.query, keep_blank_values=True)
    assert set(query) <= {"return_to"}, location
    if "return_to" not in query:
        return None
    (return_to,) = query["return_to"]
    rt = urlsplit(return_to)
    assert f"{rt.scheme}://{rt.netloc}" in allowed, return_to
    assert rt.username is None, return_to
    assert rt.password is None, return_to
    assert "\\" not in return_to, return_to
    assert not any(ord(c) < 0x21 or 0x7F <= ord(c) <= 0x9F for c in return_to), return_to
    return return_to


def test_gate_login_redirect_never_returns_off_origin(stack) -> None:
    answered = 0
    for target in HOSTILE_TARGETS:
        status, headers = raw_get(stack.url, target, {"Accept": "text/html"})
        if status == 400:  # the HTTP server itself refused the request line: nothing to redirect
            continue
        answered += 1
        assert status == 303, (target, status, headers)
        assert_return_to_safe(headers["location"], (stack.url,))
    assert answered >= len(HOSTILE_TARGETS) - 1
    assert stack.app.requests == []
    assert stack.fake.count("GET", "/sessions/whoami") == 0


def test_gate_login_redirect_keeps_a_plain_return_to(stack) -> None:
    status, headers = raw_get(
        stack.url, "/reports/2026?year=2026&q=a+b%2Fc", {"Accept": "text/html"}
    )
    assert status == 303
    rt = assert_return_to_safe(headers["location"], (stack.url,))
    assert rt == stack.url + "/reports/2026?year=2026&q=a+b%2Fc"


def test_gate_with_public_url_ignores_a_hostile_host_header(make_stack) -> None:
    s = make_stack(public_url="https://gate.example.com", access={"allowed_return_to": ALLOWED})
    for target in HOSTILE_TARGETS[:-1]:
        status, headers = raw_get(s.url, target, {"Accept": "text/html", "Host": "evil.com"})
        assert status == 303, target
        assert_return_to_safe(headers["location"], ("https://gate.example.com",))
    status, headers = raw_get(s.url, "/fine/path?x=1", {"Accept": "text/html", "Host": "evil"})
    rt = assert_return_to_safe(headers["location"], ("https://gate.example.com",))
    assert rt == "https://gate.example.com/fine/path?x=1"


def test_encoded_space_in_the_query_keeps_return_to() -> None:
    from sessiongate.redirects import safe_return_to

    own = "https://gate.example.com"
    assert safe_return_to("/search?q=a%20b", own, []) == own + "/search?q=a%20b"
    assert safe_return_to("/%09/evil.com", own, []) is None
    assert safe_return_to("/x%20y/%2F%2Fevil.com", own, []) is None
