"""Identity headers: computed from the session, and never spoofable by the client."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sessiongate.config import Settings
from sessiongate.identity_headers import IdentityHeaders, canonical, header_value, lookup

SESSION: dict[str, Any] = {
    "id": "sess-1",
    "active": True,
    "identity": {
        "id": "ident-1",
        "traits": {
            "email": "alice@example.com",
            "age": 42,
            "ratio": 1.5,
            "admin": True,
            "banned": False,
            "nothing": None,
            "empty": "",
            "name": {"first": "Alice", "last": "Liddell"},
            "groups": ["staff", "ops"],
            "display": "Zoë 😀",
            "evil": "a\r\nX-Admin: 1",
            "percent": "100%",
            "nested_unicode": {"n": "Zoë"},
        },
        "verifiable_addresses": [{"value": "alice@example.com", "verified": True}],
    },
}


def compute(mapping: dict[str, str], session: dict[str, Any] = SESSION) -> dict[bytes, bytes]:
    out = IdentityHeaders(mapping).compute(session)
    names = [n for n, _ in out]
    assert len(names) == len(set(names))
    return dict(out)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("identity.id", b"ident-1"),
        ("id", b"sess-1"),
        ("identity.traits.email", b"alice@example.com"),
        ("identity.traits.age", b"42"),
        ("identity.traits.ratio", b"1.5"),
        ("identity.traits.admin", b"true"),
        ("identity.traits.banned", b"false"),
        ("active", b"true"),
        ("identity.traits.empty", b""),
        ("identity.traits.name", b'{"first":"Alice","last":"Liddell"}'),
        ("identity.traits.name.first", b"Alice"),
        ("identity.traits.groups", b'["staff","ops"]'),
        ("identity.traits.groups.0", b"staff"),
        ("identity.traits.groups.1", b"ops"),
        ("identity.verifiable_addresses.0.verified", b"true"),
        ("identity.traits.display", b"Zo%C3%AB %F0%9F%98%80"),
        ("identity.traits.evil", b"a%0D%0AX-Admin: 1"),
        ("identity.traits.percent", b"100%25"),
        ("identity.traits.nested_unicode", b'{"n":"Zo\\u00eb"}'),
    ],
)
def test_compute_values(path: str, value: bytes) -> None:
    assert compute({"X-Value": path}) == {b"x-value": value}


@pytest.mark.parametrize(
    "path",
    [
        "identity.traits.missing",
        "identity.traits.nothing",  # JSON null
        "identity.traits.groups.2",  # out of range
        "identity.traits.groups.-1",
        "identity.traits.groups.first",
        "identity.traits.email.0",  # not a container
        "identity.id.x",
        "nope.deeper.still",
        "identity.traits.name.0",
    ],
)
def test_missing_values_make_the_header_absent(path: str) -> None:
    assert compute({"X-Value": path, "X-User-Id": "identity.id"}) == {b"x-user-id": b"ident-1"}


def test_compute_keeps_mapping_order_and_lowercases_names() -> None:
    out = IdentityHeaders(
        {"X-User-Id": "identity.id", "X-User-Email": "identity.traits.email", "X-Session-Id": "id"}
    ).compute(SESSION)
    assert out == [
        (b"x-user-id", b"ident-1"),
        (b"x-user-email", b"alice@example.com"),
        (b"x-session-id", b"sess-1"),
    ]


def test_every_computed_value_is_visible_ascii_or_space() -> None:
    mapping = {f"X-H{i}": p for i, p in enumerate(["identity.traits", "identity", "id"])}
    for _, value in IdentityHeaders(mapping).compute(SESSION):
        assert all(0x20 <= b <= 0x7E for b in value), value


def test_session_header_is_base64url_json_that_decodes_back() -> None:
    out = IdentityHeaders({"X-User-Id": "identity.id"}, session_header="X-Session").compute(SESSION)
    assert [n for n, _ in out] == [b"x-user-id", b"x-session"]
    raw = dict(out)[b"x-session"]
    assert b"=" not in raw
    assert b"+" not in raw
    assert b"/" not in raw
    decoded = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    assert json.loads(decoded) == SESSION


def test_helpers() -> None:
    assert canonical(b"X_User_Id") == b"x-user-id"
    assert lookup({"a": [{"b": 1}]}, ("a", "0", "b")) == 1
    assert lookup({"a": {"0": "zero"}}, ("a", "0")) == "zero"
    assert lookup([1, 2], ("1",)) == 2
    assert header_value(None) is None
    assert header_value(0) == b"0"
    assert header_value([]) == b"[]"


# -- strip --------------------------------------------------------------------------------------

SPOOFED_NAMES = [
    "X-User-Id",
    "x-user-id",
    "X-USER-ID",
    "X_User_Id",
    "x_user_id",
    "X-User_Id",
    "X-User-Email",
    "x_user_email",
    "X-Session-Id",
    "X_SESSION_ID",
    "X-Kratos-Authenticated-Identity-Id",
    "x_kratos_authenticated_identity_id",
]


def gate_identity() -> IdentityHeaders:
    s = Settings()
    return IdentityHeaders(s.identity_headers, s.session_header, s.spoofable_headers())


def test_strip_removes_every_variant_and_keeps_the_rest_in_order() -> None:
    keep = [
        (b"host", b"gate"),
        (b"x-user-idx", b"1"),
        (b"x-user", b"2"),
        (b"x-userid", b"3"),
        (b"authorization", b"Bearer t"),
        (b"cookie", b"a=1"),
        (b"x-user-id-extra", b"4"),
        (b"accept", b"*/*"),
    ]
    spoofed = [(n.encode(), b"evil") for n in SPOOFED_NAMES]
    mixed = [h for pair in zip(keep, spoofed, strict=False) for h in pair] + spoofed[len(keep) :]
    assert gate_identity().strip(mixed) == keep


def test_strip_covers_the_session_header_when_configured() -> None:
    s = Settings(session_header="X-Session")
    ih = IdentityHeaders(s.identity_headers, s.session_header, s.spoofable_headers())
    headers = [(b"x_session", b"e30"), (b"X-SESSION", b"e30"), (b"x-sessions", b"keep")]
    assert ih.strip(headers) == [(b"x-sessions", b"keep")]


def test_strip_with_custom_identity_header_names() -> None:
    ih = IdentityHeaders({"Remote_User": "identity.id"})
    assert ih.strip([(b"remote-user", b"x"), (b"REMOTE_USER", b"y"), (b"remote", b"z")]) == [
        (b"remote", b"z")
    ]


# -- end to end through the real gate -----------------------------------------------------------

OWNED = {"x-user-id", "x-user-email", "x-session-id", "x-kratos-authenticated-identity-id"}


def spoof_headers() -> list[tuple[str, str]]:
    headers = []
    for name in SPOOFED_NAMES:
        headers += [(name, f"evil-{name}"), (name, f"evil2-{name}")]
    return headers


def owned_received(stack) -> dict[str, list[tuple[str, str]]]:
    """What the app received under any spelling of a gate-owned header: canonical → pairs."""
    out: dict[str, list[tuple[str, str]]] = {}
    for name, value in stack.app.requests[-1]["headers"]:
        canon = name.lower().replace("_", "-")
        if canon in OWNED:
            out.setdefault(canon, []).append((name, value))
    return out


@pytest.mark.parametrize("credential", ["token", "cookie", "bearer"])
async def test_spoofed_identity_headers_never_reach_the_app(stack, credential: str) -> None:
    alice = stack.fake.login("alice@example.com")
    auth = {
        "token": ("X-Session-Token", alice.token),
        "cookie": ("Cookie", stack.fake.cookie_header(alice)),
        "bearer": ("Authorization", f"Bearer {alice.token}"),
    }[credential]
    async with stack.client() as c:
        r = await c.get(
            "/private",
            headers=[*spoof_headers(), auth, ("X-Other", "kept"), ("X_Other_Thing", "kept too")],
        )
    assert r.status_code == 200, r.text
    # underscored names do survive uvicorn and the proxy: the stripping above is the gate's
    assert stack.app.last_headers()["x_other_thing"] == ["kept too"]
    assert owned_received(stack) == {
        "x-user-id": [("x-user-id", alice.identity_id)],
        "x-user-email": [("x-user-email", "alice@example.com")],
        "x-session-id": [("x-session-id", alice.id)],
    }
    assert stack.app.last_headers()["x-other"] == ["kept"]


async def test_spoofed_identity_headers_are_stripped_on_public_paths(stack) -> None:
    async with stack.client() as c:
        r = await c.get("/public/page", headers=[*spoof_headers(), ("X-Other", "kept")])
    assert r.status_code == 200, r.text
    assert owned_received(stack) == {}
    assert stack.app.last_headers()["x-other"] == ["kept"]
    assert stack.fake.count("GET", "/sessions/whoami") == 0


async def test_spoofed_headers_are_stripped_on_cache_hits_too(stack) -> None:
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        for _ in range(3):
            r = await c.get(
                "/private", headers=[*spoof_headers(), ("X-Session-Token", alice.token)]
            )
            assert r.status_code == 200
            assert owned_received(stack)["x-user-id"] == [("x-user-id", alice.identity_id)]
            assert len(owned_received(stack)) == 3
    assert stack.fake.count("GET", "/sessions/whoami") == 1


async def test_session_header_reaches_the_app_and_cannot_be_spoofed(make_stack) -> None:
    s = make_stack(session_header="X-Session")
    alice = s.fake.login("alice@example.com")
    spoof = [("X-Session", "e30"), ("x_session", "e30"), ("X_SESSION", "e30")]
    async with s.client() as c:
        r = await c.get("/private", headers=[*spoof, ("X-Session-Token", alice.token)])
    assert r.status_code == 200, r.text
    got = [
        (n, v) for n, v in s.app.requests[-1]["headers"] if canonical(n.encode()) == b"x-session"
    ]
    assert len(got) == 1
    name, value = got[0]
    assert name == "x-session"
    session = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    assert session["id"] == alice.id
    assert session["identity"]["id"] == alice.identity_id


async def test_non_ascii_and_crlf_traits_arrive_percent_encoded(make_stack) -> None:
    s = make_stack(identity_headers={"X-User-Id": "identity.id", "X-Name": "identity.traits.name"})
    iid = s.fake.create_identity({"name": "Zoë\r\nX-Admin: 1"}, email="zoe@example.com")
    zoe = s.fake.create_session(iid)
    async with s.client() as c:
        r = await c.get("/private", headers={"X-Session-Token": zoe.token, "X-Admin": "0"})
    assert r.status_code == 200, r.text
    h = s.app.last_headers()
    assert h["x-name"] == ["Zo%C3%AB%0D%0AX-Admin: 1"]
    assert h["x-admin"] == ["0"]
    assert h["x-user-id"] == [iid]


# -- the session cookie is not the app's business ------------------------------------------


async def test_session_cookie_is_stripped_and_other_cookies_pass_in_order(stack) -> None:
    alice = stack.fake.login("alice@example.com")
    cookie = (
        f"a=1; {stack.fake.cookie_header(alice)}; b=2; ory_session_xyz=zzz; c=3;"
        " ory_kratos_session=second"
    )
    async with stack.client() as c:
        r = await c.get("/private", headers={"Cookie": cookie})
    assert r.status_code == 200, r.text
    h = stack.app.last_headers()
    assert h["cookie"] == ["a=1; b=2; c=3"]
    assert h["x-user-id"] == [alice.identity_id]


async def test_session_cookie_alone_leaves_no_cookie_header(stack) -> None:
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        r = await c.get("/private", headers={"Cookie": stack.fake.cookie_header(alice)})
    assert r.status_code == 200, r.text
    assert "cookie" not in stack.app.last_headers()


async def test_session_cookie_stripped_across_several_cookie_headers(stack) -> None:
    alice = stack.fake.login("alice@example.com")
    headers = [
        ("Cookie", "x=1; " + stack.fake.cookie_header(alice)),
        ("Cookie", "ory_session_abc=v; y=2"),
    ]
    async with stack.client() as c:
        r = await c.get("/private", headers=headers)
    assert r.status_code == 200, r.text
    received = ";".join(stack.app.last_headers()["cookie"])
    assert [p.strip() for p in received.split(";")] == ["x=1", "y=2"]


async def test_session_cookie_is_stripped_on_public_paths_too(stack) -> None:
    async with stack.client() as c:
        r = await c.get("/public/x", headers={"Cookie": "a=1; ory_kratos_session=zzz; b=2"})
    assert r.status_code == 200
    assert stack.app.last_headers()["cookie"] == ["a=1; b=2"]


async def test_session_cookie_kept_when_configured(make_stack) -> None:
    s = make_stack(upstream={"strip_session_cookie": False})
    alice = s.fake.login("alice@example.com")
    cookie = f"a=1; {s.fake.cookie_header(alice)}; b=2"
    async with s.client() as c:
        r = await c.get("/private", headers={"Cookie": cookie})
    assert r.status_code == 200
    assert s.app.last_headers()["cookie"] == [cookie]


def test_the_name_memo_never_keeps_long_client_chosen_names() -> None:
    ih = IdentityHeaders({"X-User-Id": "identity.id"})
    long_name = b"x-" + b"a" * 60_000
    headers = [(long_name, b"1"), (b"x_user_id", b"spoof"), (b"accept", b"*/*")]
    for _ in range(3):
        assert ih.strip(headers) == [(long_name, b"1"), (b"accept", b"*/*")]
    assert long_name not in ih._keep
    assert ih._keep[b"accept"] is True
    assert ih._keep[b"x_user_id"] is False
