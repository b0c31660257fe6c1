"""Conformance of the Kratos fake's `GET /sessions/whoami` to CONTRACT.md §1, §2, §3, §4.1, §5.

Every response from `kratos.public` / `kratos.admin` is also validated against the OpenAPI
spec and parsed by `ory-client` (conftest). The spec only declares `GET /sessions/whoami`, so
the tests for the other methods (§4.1 "Methods") use an unchecked client on the same fake.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
import jwt
import pytest

WHOAMI = "/sessions/whoami"
COOKIE = "ory_kratos_session"
NO_CACHE = "private, no-cache, no-store, must-revalidate"
SUCCESS_CT = "application/json; charset=utf-8"
ERROR_CT = "application/json"

NO_SESSION_401 = {
    "error": {
        "code": 401,
        "status": "Unauthorized",
        "reason": "No valid session credentials found in the request.",
        "message": "The request could not be authorized",
    }
}
NO_SESSION_401_BYTES = (
    b'{"error":{"code":401,"status":"Unauthorized",'
    b'"reason":"No valid session credentials found in the request.",'
    b'"message":"The request could not be authorized"}}'
)
AAL_REASON = (
    "An active session was found but it does not fulfill the requested Authenticator "
    "Assurance Level. Please verify yourself with a second factor to resolve this issue."
)
SESSION_KEYS = [
    "id",
    "active",
    "expires_at",
    "authenticated_at",
    "authenticator_assurance_level",
    "authentication_methods",
    "issued_at",
    "identity",
    "devices",
]
# Go's RFC 3339 nanosecond form: UTC "Z", fraction optional and never ending in 0.
GO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d*[1-9])?Z$")
SET_COOKIE = re.compile(
    rf"^{COOKIE}=(?P<value>[^;]+); Path=/; Expires=(?P<expires>[^;]+); "
    r"Max-Age=(?P<max_age>\d+); HttpOnly; Secure; SameSite=Lax$"
)


def raw_client(fake) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    """No spec check: the spec has no operation for whoami's non-GET methods."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=fake), base_url=fake.public_url)


def go_time(value: datetime) -> str:
    """Independent re-implementation of Go's time.RFC3339Nano for UTC."""
    value = value.astimezone(UTC)
    frac = f"{value.microsecond:06d}".rstrip("0")
    return value.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def assert_no_session_401(r: httpx.Response) -> None:
    assert r.status_code == 401
    assert r.content.rstrip(b"\n") == NO_SESSION_401_BYTES
    assert r.json() == NO_SESSION_401
    assert r.headers["content-type"] == ERROR_CT
    assert r.headers.get_list("ory-error-id") == [""]
    assert "x-kratos-authenticated-identity-id" not in r.headers
    assert r.headers.get_list("set-cookie") == []
    assert r.headers["cache-control"] == NO_CACHE


def assert_session_of(r: httpx.Response, created) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == created.id
    assert body["identity"]["id"] == created.identity_id
    assert r.headers["x-kratos-authenticated-identity-id"] == created.identity_id


# -- §1 credential resolution ---------------------------------------------------------------


async def test_session_token_header_beats_valid_cookie(kratos):
    alice = kratos.fake.login("alice@example.com")
    bob = kratos.fake.login("bob@example.com")
    r = await kratos.public.get(
        WHOAMI, headers={"X-Session-Token": bob.token, "Cookie": kratos.fake.cookie_header(alice)}
    )
    assert_session_of(r, bob)
    # RefreshCookie then compares alice's cookie with bob's session (manager_http.go:128-131):
    # bob's expires later, so the cookie is re-issued, for bob's session.
    [set_cookie] = r.headers.get_list("set-cookie")
    value = SET_COOKIE.match(set_cookie)["value"]  # type: ignore[index]
    r = await kratos.public.get(WHOAMI, headers={"Cookie": f"{COOKIE}={value}"})
    assert_session_of(r, bob)


async def test_stale_session_token_beats_valid_cookie_and_gives_401(kratos):
    alice = kratos.fake.login("alice@example.com")
    stale = kratos.fake.login("alice@example.com")
    kratos.fake.revoke_session(stale.id)
    for token in (stale.token, "ory_st_" + "x" * 32):
        r = await kratos.public.get(
            WHOAMI,
            headers={"X-Session-Token": token, "Cookie": kratos.fake.cookie_header(alice)},
        )
        assert_no_session_401(r)


async def test_empty_session_token_header_falls_through_to_cookie(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(
        WHOAMI, headers={"X-Session-Token": "", "Cookie": kratos.fake.cookie_header(alice)}
    )
    assert_session_of(r, alice)


async def test_first_cookie_with_the_name_is_used(kratos):
    alice = kratos.fake.login("alice@example.com")
    bob = kratos.fake.login("bob@example.com")
    r = await kratos.public.get(
        WHOAMI, headers={"Cookie": f"other=1; {COOKIE}={alice.cookie}; {COOKIE}={bob.cookie}"}
    )
    assert_session_of(r, alice)
    r = await kratos.public.get(
        WHOAMI, headers={"Cookie": f"{COOKIE}={bob.cookie}; {COOKIE}={alice.cookie}"}
    )
    assert_session_of(r, bob)


async def test_only_first_cookie_is_decoded_no_fallback_to_second(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(
        WHOAMI, headers={"Cookie": f"{COOKIE}=garbage; {COOKIE}={alice.cookie}"}
    )
    assert_no_session_401(r)


COOKIE_INVALID_500 = {
    "error": {
        "code": 500,
        "status": "Internal Server Error",
        "message": "securecookie: the value is not valid",
    }
}


@pytest.mark.parametrize("value", ["not-a-valid-cookie", ""])
@pytest.mark.parametrize("credential", ["bearer", "header"])
async def test_undecodable_cookie_beside_a_valid_token_is_500(kratos, value, credential):
    """The token finds the session (manager_http.go:215-231 falls back to Bearer past a bad
    cookie), but whoami then re-checks any cookie present: RefreshCookie's getCookie fails
    (manager_http.go:118-126, handler.go:266-270) with securecookie's errMacInvalid, a plain
    error that herodot answers as 500. The identity header was already set (handler.go:254)."""
    alice = kratos.fake.login("alice@example.com")
    token = (
        {"Authorization": f"Bearer {alice.token}"}
        if credential == "bearer"
        else {"X-Session-Token": alice.token}
    )
    r = await kratos.public.get(
        WHOAMI, headers={"Cookie": f"{COOKIE}={value}", "X-Request-ID": "r-5", **token}
    )
    assert r.status_code == 500
    assert r.json() == {"error": {**COOKIE_INVALID_500["error"], "request": "r-5"}}
    assert r.headers["content-type"] == ERROR_CT
    assert r.headers.get_list("ory-error-id") == [""]
    assert r.headers["x-kratos-authenticated-identity-id"] == alice.identity_id
    assert r.headers.get_list("set-cookie") == []


async def test_undecodable_cookie_alone_is_401_not_500(kratos):
    """Without another credential no session is found, so RefreshCookie never runs."""
    r = await kratos.public.get(WHOAMI, headers={"Cookie": f"{COOKIE}=not-a-valid-cookie"})
    assert_no_session_401(r)


async def test_cookie_holding_raw_token_is_not_a_credential(kratos):
    """The cookie value is an opaque encoded blob, never the token itself (§5)."""
    alice = kratos.fake.login("alice@example.com")
    assert alice.token not in alice.cookie
    r = await kratos.public.get(WHOAMI, headers={"Cookie": f"{COOKIE}={alice.token}"})
    assert_no_session_401(r)


async def test_cookie_beats_bearer(kratos):
    alice = kratos.fake.login("alice@example.com")
    bob = kratos.fake.login("bob@example.com")
    r = await kratos.public.get(
        WHOAMI,
        headers={
            "Cookie": kratos.fake.cookie_header(alice),
            "Authorization": f"Bearer {bob.token}",
        },
    )
    assert_session_of(r, alice)


async def test_cookie_with_other_name_is_ignored(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(WHOAMI, headers={"Cookie": f"ory_session_x={alice.cookie}"})
    assert_no_session_401(r)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_bearer_scheme_is_case_insensitive(kratos, scheme):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(WHOAMI, headers={"Authorization": f"{scheme} {alice.token}"})
    assert_session_of(r, alice)
    assert r.headers.get_list("set-cookie") == []


@pytest.mark.parametrize(
    "template",
    [
        "Bearer  {t}",  # double space: three parts
        "Bearer {t} extra",  # three parts
        "Basic {t}",  # wrong scheme
        "{t}",  # no scheme
        "Bearer\t{t}",  # only single spaces split
    ],
)
async def test_malformed_authorization_is_not_a_token(kratos, template):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(WHOAMI, headers={"Authorization": template.format(t=alice.token)})
    assert_no_session_401(r)


# -- 401 ------------------------------------------------------------------------------------


async def test_no_credentials_401_exact(kratos):
    r = await kratos.public.get(WHOAMI)
    assert_no_session_401(r)
    assert r.headers["vary"] == "Cookie"
    assert "ory-session-cache-for" not in r.headers


async def test_unknown_token_401(kratos):
    r = await kratos.public.get(WHOAMI, headers={"X-Session-Token": "ory_st_" + "a" * 32})
    assert_no_session_401(r)


async def test_revoked_session_401(kratos):
    alice = kratos.fake.login("alice@example.com")
    kratos.fake.revoke_session(alice.id)
    assert_no_session_401(await kratos.public.get(WHOAMI, headers={"X-Session-Token": alice.token}))
    assert_no_session_401(
        await kratos.public.get(WHOAMI, headers={"Cookie": kratos.fake.cookie_header(alice)})
    )


async def test_expire_session_401(kratos):
    alice = kratos.fake.login("alice@example.com")
    kratos.fake.expire_session(alice.id)
    assert_no_session_401(await kratos.public.get(WHOAMI, headers={"X-Session-Token": alice.token}))


async def test_clock_past_expiry_401(kratos):
    alice = kratos.fake.login("alice@example.com", expires_in=timedelta(minutes=10))
    kratos.fake.advance_clock(9 * 60)
    r = await kratos.public.get(WHOAMI, headers={"X-Session-Token": alice.token})
    assert_session_of(r, alice)
    kratos.fake.advance_clock(61)
    assert_no_session_401(await kratos.public.get(WHOAMI, headers={"X-Session-Token": alice.token}))
    assert_no_session_401(
        await kratos.public.get(WHOAMI, headers={"Cookie": kratos.fake.cookie_header(alice)})
    )


async def test_disabled_identity_401(kratos):
    alice = kratos.fake.login("alice@example.com")
    kratos.fake.set_identity_state(alice.identity_id, "inactive")
    assert_no_session_401(await kratos.public.get(WHOAMI, headers={"X-Session-Token": alice.token}))
    kratos.fake.set_identity_state(alice.identity_id, "active")
    assert_session_of(
        await kratos.public.get(WHOAMI, headers={"X-Session-Token": alice.token}), alice
    )


async def test_request_id_echoed_in_401(kratos):
    r = await kratos.public.get(WHOAMI, headers={"X-Request-ID": "req-123"})
    assert r.status_code == 401
    assert r.content.rstrip(b"\n") == (
        b'{"error":{"code":401,"status":"Unauthorized","request":"req-123",'
        b'"reason":"No valid session credentials found in the request.",'
        b'"message":"The request could not be authorized"}}'
    )
    assert list(r.json()["error"]) == ["code", "status", "request", "reason", "message"]


async def test_401_does_not_clear_cookie(kratos):
    alice = kratos.fake.login("alice@example.com")
    kratos.fake.revoke_session(alice.id)
    r = await kratos.public.get(WHOAMI, headers={"Cookie": kratos.fake.cookie_header(alice)})
    assert r.status_code == 401
    assert r.headers.get_list("set-cookie") == []


# -- 200 ------------------------------------------------------------------------------------


async def test_200_body_shape_and_key_order(kratos):
    fake = kratos.fake
    iid = fake.create_identity({"email": "alice@example.com", "name": "Alice"})
    sess = fake.create_session(
        iid,
        devices=[{"ip_address": "203.0.113.7", "user_agent": "Mozilla/5.0", "location": "Berlin"}],
    )
    r = await kratos.public.get(WHOAMI, headers={"X-Session-Token": sess.token})
    assert r.status_code == 200
    body = json.loads(r.content)  # dicts keep the wire order
    assert list(body) == SESSION_KEYS
    stored = fake.session(sess.id)
    assert body["id"] == sess.id
    assert body["active"] is True
    assert body["expires_at"] == go_time(stored.expires_at)
    assert body["authenticated_at"] == go_time(stored.authenticated_at)
    assert body["issued_at"] == go_time(stored.issued_at)
    assert body["authenticator_assurance_level"] == "aal1"
    assert body["authentication_methods"] == [
        {"method": "password", "aal": "aal1", "completed_at": body["authenticated_at"]}
    ]
    assert body["devices"] == [
        {
            "id": stored.devices[0].id,
            "ip_address": "203.0.113.7",
            "user_agent": "Mozilla/5.0",
            "location": "Berlin",
        }
    ]
    ident = body["identity"]
    assert list(ident) == [
        "id",
        "schema_id",
        "schema_url",
        "state",
        "state_changed_at",
        "traits",
        "verifiable_addresses",
        "recovery_addresses",
        "metadata_public",
        "created_at",
        "updated_at",
        "organization_id",
    ]
    assert ident["id"] == iid
    assert ident["schema_id"] == "default"
    assert ident["schema_url"] == f"{fake.public_url}/schemas/ZGVmYXVsdA"
    assert ident["state"] == "active"
    assert ident["traits"] == {"email": "alice@example.com", "name": "Alice"}
    assert ident["metadata_public"] is None
    assert ident["organization_id"] is None
    [va] = ident["verifiable_addresses"]
    assert list(va) == ["id", "value", "verified", "via", "status", "created_at", "updated_at"]
    assert (va["value"], va["verified"], va["via"]) == ("alice@example.com", False, "email")
    [ra] = ident["recovery_addresses"]
    assert list(ra) == ["id", "value", "via", "created_at", "updated_at"]
    assert (ra["value"], ra["via"]) == ("alice@example.com", "email")
    for secret in ("credentials", "metadata_admin"):
        assert secret not in ident
    for token in (sess.token, sess.logout_token):
        assert token not in r.text
    assert "tokenized" not in body


async def test_200_headers(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(WHOAMI, headers={"X-Session-Token": alice.token})
    assert r.status_code == 200
    assert r.headers["content-type"] == SUCCESS_CT
    assert r.headers.get_list("x-kratos-authenticated-identity-id") == [alice.identity_id]
    assert r.headers.get_list("cache-control") == [NO_CACHE]
    assert r.headers.get_list("vary") == ["Cookie"]
    assert "ory-error-id" not in r.headers
    assert "ory-session-cache-for" not in r.headers
    assert r.headers.get_list("set-cookie") == []


async def test_identity_without_email_has_no_addresses(kratos):
    iid = kratos.fake.create_identity({"username": "carol"})
    sess = kratos.fake.create_session(iid)
    r = await kratos.public.get(WHOAMI, headers={"X-Session-Token": sess.token})
    assert r.status_code == 200
    ident = r.json()["identity"]
    assert "verifiable_addresses" not in ident
    assert "recovery_addresses" not in ident
    assert ident["schema_url"]


async def test_timestamps_use_go_format(kratos):
    fake = kratos.fake
    iid = fake.create_identity(email="alice@example.com")
    # Find a session whose expiry has a trailing zero microsecond digit, so trimming matters.
    for _ in range(2000):
        sess = fake.create_session(iid)
        if fake.session(sess.id).expires_at.microsecond % 10 == 0:
            break
    else:
        pytest.fail("no session with a trailing-zero fraction")
    r = await kratos.public.get(WHOAMI, headers={"X-Session-Token": sess.token})
    body = r.json()
    stamps = [
        body["expires_at"],
        body["authenticated_at"],
        body["issued_at"],
        body["identity"]["created_at"],
        body["identity"]["updated_at"],
        body["identity"]["state_changed_at"],
        *(m["completed_at"] for m in body["authentication_methods"]),
        *(a["created_at"] for a in body["identity"]["verifiable_addresses"]),
    ]
    for stamp in stamps:
        assert GO_TIME.match(stamp), stamp
    assert body["expires_at"] == go_time(fake.session(sess.id).expires_at)


async def test_x_kratos_identity_header_only_on_200(make_kratos):
    k = make_kratos()
    ident = k.fake.create_identity(email="mfa@example.com", available_aal="aal2")
    aal1 = k.fake.create_session(ident, aal="aal1")
    r403 = await k.public.get(WHOAMI, headers={"X-Session-Token": aal1.token})
    r401 = await k.public.get(WHOAMI, headers={"X-Session-Token": "ory_st_nope"})
    assert r403.status_code == 403
    assert r401.status_code == 401
    for r in (r401, r403):
        assert "x-kratos-authenticated-identity-id" not in r.headers


async def test_cache_control_on_get_whatever_status_absent_on_post(kratos):
    alice = kratos.fake.login("alice@example.com")
    mfa = kratos.fake.create_identity(email="mfa@example.com", available_aal="aal2")
    weak = kratos.fake.create_session(mfa)
    for headers, status in (
        ({"X-Session-Token": alice.token}, 200),
        ({}, 401),
        ({"X-Session-Token": weak.token}, 403),
    ):
        r = await kratos.public.get(WHOAMI, headers=headers)
        assert r.status_code == status
        assert r.headers.get_list("cache-control") == [NO_CACHE]
        assert r.headers.get_list("vary") == ["Cookie"]
    async with raw_client(kratos.fake) as raw:
        for headers, status in (({"X-Session-Token": alice.token}, 200), ({}, 401)):
            r = await raw.post(WHOAMI, headers=headers)
            assert r.status_code == status
            assert "cache-control" not in r.headers
            assert r.headers.get_list("vary") == ["Cookie"]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "OPTIONS", "CONNECT", "TRACE"])
async def test_whoami_answers_every_registered_method(kratos, method):
    alice = kratos.fake.login("alice@example.com")
    async with raw_client(kratos.fake) as raw:
        r = await raw.request(method, WHOAMI, headers={"X-Session-Token": alice.token})
        assert_session_of(r, alice)
        assert list(json.loads(r.content)) == SESSION_KEYS
        assert r.headers["content-type"] == SUCCESS_CT
        r = await raw.request(method, WHOAMI)
        assert r.status_code == 401
        assert r.json() == NO_SESSION_401


async def test_whoami_head(kratos):
    alice = kratos.fake.login("alice@example.com")
    async with raw_client(kratos.fake) as raw:
        r = await raw.head(WHOAMI, headers={"X-Session-Token": alice.token})
        assert r.status_code == 200
        assert r.content == b""
        assert r.headers["x-kratos-authenticated-identity-id"] == alice.identity_id
        assert "cache-control" not in r.headers
        r = await raw.head(WHOAMI)
        assert r.status_code == 401
        assert r.content == b""


async def test_delete_sessions_whoami_is_whoami(kratos):
    alice = kratos.fake.login("alice@example.com")
    async with raw_client(kratos.fake) as raw:
        r = await raw.delete(WHOAMI, headers={"Cookie": kratos.fake.cookie_header(alice)})
        assert_session_of(r, alice)
        assert list(json.loads(r.content)) == SESSION_KEYS
        assert r.headers["content-type"] == SUCCESS_CT
        assert "cache-control" not in r.headers
        r = await raw.delete(WHOAMI)
        assert r.status_code == 401
        assert r.json() == NO_SESSION_401
    assert kratos.fake.is_session_active(alice.id)


# -- 403 AAL (§4.1, §9.1) -------------------------------------------------------------------


def expected_aal_body(public_url: str) -> dict:
    url = f"{public_url}/self-service/login/browser?aal=aal2"
    return {
        "error": {
            "id": "session_aal2_required",
            "code": 403,
            "status": "Forbidden",
            "reason": AAL_REASON,
            "details": {"redirect_browser_to": url},
            "message": "Session does not fulfill the requested Authenticator Assurance Level",
        },
        "redirect_browser_to": url,
    }


async def test_aal2_required_under_highest_available(kratos):
    fake = kratos.fake
    iid = fake.create_identity(email="mfa@example.com", available_aal="aal2")
    sess = fake.create_session(iid, aal="aal1")
    r = await kratos.public.get(
        WHOAMI, headers={"Cookie": fake.cookie_header(sess), "X-Request-ID": "r-9"}
    )
    assert r.status_code == 403
    body = json.loads(r.content)
    # ErrAALNotSatisfied brings its own JSON (session/manager.go:64-71, EnhanceJSONError), so
    # herodot never adds X-Request-ID as `error.request` (herodot v0.10.8 json.go:61-66).
    assert body == expected_aal_body(fake.public_url)
    assert list(body) == ["error", "redirect_browser_to"]
    assert list(body["error"]) == [
        "id",
        "code",
        "status",
        "reason",
        "details",
        "message",
    ]
    assert r.headers["content-type"] == ERROR_CT
    assert r.headers.get_list("ory-error-id") == ["session_aal2_required"]
    assert r.headers.get_list("set-cookie") == []
    assert "x-kratos-authenticated-identity-id" not in r.headers


async def test_aal2_required_body_exact(kratos):
    fake = kratos.fake
    iid = fake.create_identity(email="mfa@example.com", available_aal="aal2")
    sess = fake.create_session(iid, aal="aal1")
    r = await kratos.public.get(WHOAMI, headers={"X-Session-Token": sess.token})
    assert r.status_code == 403
    assert r.json() == expected_aal_body("http://127.0.0.1:4433")


async def test_aal2_session_passes_highest_available(kratos):
    fake = kratos.fake
    iid = fake.create_identity(email="mfa@example.com", available_aal="aal2")
    sess = fake.create_session(iid, aal="aal2")
    r = await kratos.public.get(WHOAMI, headers={"X-Session-Token": sess.token})
    assert_session_of(r, sess)
    body = r.json()
    assert body["authenticator_assurance_level"] == "aal2"
    assert [(m["method"], m["aal"]) for m in body["authentication_methods"]] == [
        ("password", "aal1"),
        ("totp", "aal2"),
    ]


async def test_aal1_identity_aal1_session_passes_highest_available(kratos):
    alice = kratos.fake.login("alice@example.com")
    assert_session_of(
        await kratos.public.get(WHOAMI, headers={"X-Session-Token": alice.token}), alice
    )


async def test_required_aal_aal1(make_kratos):
    k = make_kratos(required_aal="aal1")
    iid = k.fake.create_identity(email="mfa@example.com", available_aal="aal2")
    aal1 = k.fake.create_session(iid, aal="aal1")
    r = await k.public.get(WHOAMI, headers={"X-Session-Token": aal1.token})
    assert_session_of(r, aal1)
    assert r.json()["authenticator_assurance_level"] == "aal1"
    aal0 = k.fake.create_session(iid, aal="aal0")
    r = await k.public.get(WHOAMI, headers={"X-Session-Token": aal0.token})
    assert r.status_code == 403
    assert r.json() == expected_aal_body(k.fake.public_url)
    assert r.headers["ory-error-id"] == "session_aal2_required"


async def test_aal_check_runs_before_tokenize(kratos):
    fake = kratos.fake
    iid = fake.create_identity(email="mfa@example.com", available_aal="aal2")
    sess = fake.create_session(iid, aal="aal1")
    r = await kratos.public.get(
        WHOAMI, params={"tokenize_as": "nope"}, headers={"X-Session-Token": sess.token}
    )
    assert r.status_code == 403
    assert r.json()["error"]["id"] == "session_aal2_required"


# -- cookie refresh (§4.1, §5) --------------------------------------------------------------


async def test_cookie_request_gets_no_set_cookie_normally(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(WHOAMI, headers={"Cookie": kratos.fake.cookie_header(alice)})
    assert_session_of(r, alice)
    assert r.headers.get_list("set-cookie") == []
    kratos.fake.advance_clock(3600)
    r = await kratos.public.get(WHOAMI, headers={"Cookie": kratos.fake.cookie_header(alice)})
    assert_session_of(r, alice)
    assert r.headers.get_list("set-cookie") == []


async def test_cookie_reissued_after_admin_extend(kratos):
    fake = kratos.fake
    alice = fake.login("alice@example.com")
    old_cookie = fake.cookie_header(alice)
    assert alice.token not in alice.cookie
    old_expiry = fake.session(alice.id).expires_at
    fake.advance_clock(3600)
    r = await kratos.admin.patch(f"/admin/sessions/{alice.id}/extend")
    assert r.status_code == 200
    new_expiry = fake.session(alice.id).expires_at
    assert new_expiry > old_expiry

    r = await kratos.public.get(WHOAMI, headers={"Cookie": old_cookie})
    assert_session_of(r, alice)
    assert r.json()["expires_at"] == go_time(new_expiry)
    [set_cookie] = r.headers.get_list("set-cookie")
    m = SET_COOKIE.match(set_cookie)
    assert m, set_cookie
    value = m["value"]
    assert value not in (alice.token, alice.cookie)
    assert alice.token not in value
    # Extended just now by the default 24h lifespan: Max-Age is the time left until then.
    assert 86400 - 5 <= int(m["max_age"]) <= 86400
    expires = parsedate_to_datetime(m["expires"])
    assert m["expires"].endswith(" GMT")
    assert abs((expires - new_expiry).total_seconds()) <= 2

    # The new cookie works and, holding the new expiry, is not re-issued again.
    r = await kratos.public.get(WHOAMI, headers={"Cookie": f"{COOKIE}={value}"})
    assert_session_of(r, alice)
    assert r.headers.get_list("set-cookie") == []
    # The old cookie still gets a fresh one (and a fresh value each time).
    r = await kratos.public.get(WHOAMI, headers={"Cookie": old_cookie})
    [again] = r.headers.get_list("set-cookie")
    again_value = SET_COOKIE.match(again)["value"]  # type: ignore[index]
    assert again_value != value
    assert alice.token not in again_value


async def test_token_requests_never_get_set_cookie_after_extend(kratos):
    fake = kratos.fake
    alice = fake.login("alice@example.com")
    fake.advance_clock(3600)
    r = await kratos.admin.patch(f"/admin/sessions/{alice.id}/extend")
    assert r.status_code == 200
    for headers in (
        {"X-Session-Token": alice.token},
        {"Authorization": f"Bearer {alice.token}"},
    ):
        r = await kratos.public.get(WHOAMI, headers=headers)
        assert_session_of(r, alice)
        assert r.headers.get_list("set-cookie") == []


@pytest.mark.parametrize("header", ["X-Session-Token", "Authorization"])
async def test_old_cookie_beside_the_winning_token_is_reissued_after_extend(kratos, header):
    """RefreshCookie (session/manager_http.go:113-136) runs whatever credential won: a cookie
    present whose stored expiry is older than the session's gets a new cookie (line 129)."""
    fake = kratos.fake
    alice = fake.login("alice@example.com")
    fake.advance_clock(3600)
    r = await kratos.admin.patch(f"/admin/sessions/{alice.id}/extend")
    assert r.status_code == 200
    value = alice.token if header == "X-Session-Token" else f"Bearer {alice.token}"
    r = await kratos.public.get(
        WHOAMI, headers={header: value, "Cookie": fake.cookie_header(alice)}
    )
    assert_session_of(r, alice)
    [set_cookie] = r.headers.get_list("set-cookie")
    m = SET_COOKIE.match(set_cookie)
    assert m, set_cookie
    r = await kratos.public.get(WHOAMI, headers={"Cookie": f"{COOKIE}={m['value']}"})
    assert_session_of(r, alice)
    assert r.headers.get_list("set-cookie") == []


# -- tokenize_as (§4.1) ---------------------------------------------------------------------


async def test_tokenize_as_jwt(kratos):
    fake = kratos.fake
    alice = fake.login("alice@example.com")
    r = await kratos.public.get(
        WHOAMI, params={"tokenize_as": "jwt"}, headers={"X-Session-Token": alice.token}
    )
    assert_session_of(r, alice)
    body = json.loads(r.content)
    assert list(body) == [*SESSION_KEYS, "tokenized"]
    token = body["tokenized"]
    header = jwt.get_unverified_header(token)
    assert header["kid"]
    key = jwt.PyJWKSet.from_dict(fake.jwks)[header["kid"]]
    claims = jwt.decode(
        token,
        key=key,
        algorithms=[header["alg"]],
        issuer=fake.public_url,
        options={"verify_aud": False, "require": ["exp", "iat", "nbf", "iss", "sub", "jti"]},
    )
    assert claims["iss"] == fake.public_url
    assert claims["sid"] == alice.id
    assert claims["sub"] == alice.identity_id
    assert claims["exp"] - claims["iat"] == 60
    assert claims["nbf"] == claims["iat"]
    assert claims["jti"]
    assert r.headers.get_list("set-cookie") == []


async def test_tokenize_as_unknown_template_400(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(
        WHOAMI, params={"tokenize_as": "nope"}, headers={"X-Session-Token": alice.token}
    )
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "code": 400,
            "status": "Bad Request",
            "reason": 'Unable to find tokenizer template "nope".',
            "message": "The request was malformed or contained invalid parameters",
        }
    }
    assert r.headers["content-type"] == ERROR_CT
    assert r.headers.get_list("ory-error-id") == [""]
    assert r.headers["cache-control"] == NO_CACHE
    assert "x-kratos-authenticated-identity-id" not in r.headers


async def test_tokenize_as_empty_is_not_asked(make_kratos):
    """handler.go:245-246: `tokenize_as=` is "" and so ignored: 200 without `tokenized`, and
    the cache header is still sent (handler.go:257, `len(tokenizeTemplate) == 0`)."""
    kratos = make_kratos(cacheable_sessions=True)
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(WHOAMI + "?tokenize_as=", headers={"X-Session-Token": alice.token})
    assert_session_of(r, alice)
    assert "tokenized" not in r.json()
    assert "ory-session-cache-for" in r.headers


async def test_tokenize_as_unknown_template_without_session_is_401(kratos):
    r = await kratos.public.get(WHOAMI, params={"tokenize_as": "nope"})
    assert_no_session_401(r)


# -- cacheable sessions (§4.1) --------------------------------------------------------------


async def test_cacheable_sessions_200_has_cache_for(make_kratos):
    k = make_kratos(cacheable_sessions=True)
    alice = k.fake.login("alice@example.com")
    r = await k.public.get(WHOAMI, headers={"X-Session-Token": alice.token})
    assert_session_of(r, alice)
    assert r.headers.get_list("ory-session-cache-for") == ["60"]
    short = k.fake.login("alice@example.com", expires_in=timedelta(seconds=30))
    r = await k.public.get(WHOAMI, headers={"X-Session-Token": short.token})
    assert_session_of(r, short)
    assert 29 <= int(r.headers["ory-session-cache-for"]) <= 30


async def test_cacheable_sessions_401_missing_credentials_has_60(make_kratos):
    k = make_kratos(cacheable_sessions=True)
    r = await k.public.get(WHOAMI)
    assert_no_session_401(r)
    assert r.headers.get_list("ory-session-cache-for") == ["60"]


async def test_cacheable_sessions_401_unknown_token_has_none(make_kratos):
    k = make_kratos(cacheable_sessions=True)
    for headers in (
        {"X-Session-Token": "ory_st_" + "b" * 32},
        {"Authorization": "Bearer ory_st_unknown"},
    ):
        r = await k.public.get(WHOAMI, headers=headers)
        assert_no_session_401(r)
        assert "ory-session-cache-for" not in r.headers


async def test_cacheable_sessions_undecodable_cookie_counts_as_missing(make_kratos):
    k = make_kratos(cacheable_sessions=True)
    r = await k.public.get(WHOAMI, headers={"Cookie": f"{COOKIE}=garbage"})
    assert_no_session_401(r)
    assert r.headers.get_list("ory-session-cache-for") == ["60"]


async def test_cacheable_sessions_suppressed_by_tokenize_as(make_kratos):
    k = make_kratos(cacheable_sessions=True)
    alice = k.fake.login("alice@example.com")
    r = await k.public.get(
        WHOAMI, params={"tokenize_as": "jwt"}, headers={"X-Session-Token": alice.token}
    )
    assert_session_of(r, alice)
    assert r.json()["tokenized"]
    assert "ory-session-cache-for" not in r.headers


async def test_no_cache_for_header_when_disabled(kratos):
    r = await kratos.public.get(WHOAMI)
    assert r.status_code == 401
    assert "ory-session-cache-for" not in r.headers
