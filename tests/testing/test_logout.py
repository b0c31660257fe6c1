"""The fake's logout endpoints against CONTRACT §4.11-§4.13, §5 (cookies) and §6 (CSRF).

Every response goes through the spec check of `conftest.checked_client`, except the browser
logout flow's 303 error redirect: the spec lists only 200/400/401/500 for
`createBrowserLogoutFlow`, while Kratos' code answers browsers with a 303 (CONTRACT §4.11).
"""

from __future__ import annotations

import hashlib
import json
import re
from urllib.parse import parse_qsl, urlsplit

import httpx

JSON = {"Accept": "application/json"}
HTML = {"Accept": "text/html"}
ERROR_JSON = "application/json"
SUCCESS_JSON = "application/json; charset=utf-8"
LOGOUT_TOKEN = re.compile(r"^ory_lo_[A-Za-z0-9]{32}$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

SESSION_INACTIVE = {
    "error": {
        "id": "session_inactive",
        "code": 401,
        "status": "Unauthorized",
        "reason": "No active session was found in this request.",
        "message": "request does not have a valid authentication session",
    }
}
EXPIRED_COOKIE_ATTRS = (
    "; Path=/; Expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0; HttpOnly; Secure; SameSite=Lax"
)


def csrf_name(public_url: str) -> str:
    return "csrf_token_" + hashlib.sha256(public_url.encode()).hexdigest()


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def cookies_named(response: httpx.Response, name: str) -> list[str]:
    return [c for c in set_cookies(response) if c.split("=", 1)[0] == name]


def split_logout_url(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}", dict(parse_qsl(parts.query))


def cookie(kratos, created) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Cookie": kratos.fake.cookie_header(created)}


def unchecked(kratos) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=kratos.fake), base_url=kratos.fake.public_url
    )


# -- §4.11 GET /self-service/logout/browser ---------------------------------------------------


async def test_browser_flow_with_cookie_returns_absolute_logout_url(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(
        "/self-service/logout/browser", headers={**JSON, **cookie(kratos, alice)}
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == SUCCESS_JSON
    body = r.json()
    assert list(body) == ["logout_url", "logout_token"]
    assert body["logout_token"] == alice.logout_token
    assert LOGOUT_TOKEN.match(body["logout_token"])
    assert body["logout_url"] == (
        f"{kratos.fake.public_url}/self-service/logout?token={alice.logout_token}"
    )


async def test_browser_flow_logout_token_is_fixed_for_the_session(kratos):
    alice = kratos.fake.login("alice@example.com")
    headers = {**JSON, **cookie(kratos, alice)}
    first = await kratos.public.get("/self-service/logout/browser", headers=headers)
    second = await kratos.public.get("/self-service/logout/browser", headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["logout_token"] == alice.logout_token
    other = kratos.fake.login("alice@example.com")
    third = await kratos.public.get(
        "/self-service/logout/browser", headers={**JSON, **cookie(kratos, other)}
    )
    assert third.json()["logout_token"] == other.logout_token != alice.logout_token


async def test_browser_flow_url_uses_public_url_not_request_host(make_kratos):
    kratos = make_kratos(public_url="https://auth.example.com")
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(
        "/self-service/logout/browser",
        headers={**JSON, **cookie(kratos, alice), "Host": "evil.example.net:8080"},
    )
    assert r.status_code == 200
    assert r.json()["logout_url"] == (
        f"https://auth.example.com/self-service/logout?token={alice.logout_token}"
    )


async def test_browser_flow_accepts_session_token_header(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(
        "/self-service/logout/browser", headers={**JSON, "X-Session-Token": alice.token}
    )
    assert r.status_code == 200
    assert r.json()["logout_token"] == alice.logout_token


async def test_browser_flow_without_session_json_is_401_session_inactive(kratos):
    r = await kratos.public.get("/self-service/logout/browser", headers=JSON)
    assert r.status_code == 401
    assert r.headers["content-type"] == ERROR_JSON
    assert r.headers["ory-error-id"] == "session_inactive"
    assert r.json() == SESSION_INACTIVE


async def test_browser_flow_with_revoked_session_json_is_401_session_inactive(kratos):
    alice = kratos.fake.login("alice@example.com")
    kratos.fake.revoke_session(alice.id)
    r = await kratos.public.get(
        "/self-service/logout/browser", headers={**JSON, **cookie(kratos, alice)}
    )
    assert r.status_code == 401
    assert r.json() == SESSION_INACTIVE


async def test_browser_flow_without_session_for_browser_redirects_to_error_ui(kratos):
    async with unchecked(kratos) as client:
        r = await client.get("/self-service/logout/browser", headers=HTML)
    assert r.status_code == 303
    # selfservice/errorx/manager.go:81 is Go's http.Redirect: on GET, a small HTML body
    assert r.content == f'<a href="{r.headers["location"]}">See Other</a>.\n\n'.encode()
    base, query = split_logout_url(r.headers["location"])
    assert base == f"{kratos.fake.public_url}/error"
    assert list(query) == ["id"]
    assert UUID.match(query["id"])


async def test_browser_flow_default_accept_is_not_json(kratos):
    async with unchecked(kratos) as client:  # httpx sends Accept: */*, which picks text/html
        r = await client.get("/self-service/logout/browser")
    assert r.status_code == 303
    assert r.headers["location"].startswith(f"{kratos.fake.public_url}/error?id=")


async def test_browser_flow_json_content_type_counts_as_json(kratos):
    r = await kratos.public.get(
        "/self-service/logout/browser",
        headers={"Accept": "text/html", "Content-Type": "application/json"},
    )
    assert r.status_code == 401
    assert r.json() == SESSION_INACTIVE


async def test_browser_flow_appends_return_to_on_public_url(kratos):
    alice = kratos.fake.login("alice@example.com")
    return_to = f"{kratos.fake.public_url}/welcome?x=1"
    r = await kratos.public.get(
        "/self-service/logout/browser",
        params={"return_to": return_to},
        headers={**JSON, **cookie(kratos, alice)},
    )
    assert r.status_code == 200
    base, query = split_logout_url(r.json()["logout_url"])
    assert base == f"{kratos.fake.public_url}/self-service/logout"
    assert query == {"token": alice.logout_token, "return_to": return_to}


async def test_browser_flow_appends_configured_allowed_return_to(make_kratos):
    kratos = make_kratos(allowed_return_urls=["https://app.example.com/dashboard"])
    alice = kratos.fake.login("alice@example.com")
    return_to = "https://app.example.com/dashboard/settings"
    r = await kratos.public.get(
        "/self-service/logout/browser",
        params={"return_to": return_to},
        headers={**JSON, **cookie(kratos, alice)},
    )
    assert r.status_code == 200
    _, query = split_logout_url(r.json()["logout_url"])
    assert query == {"token": alice.logout_token, "return_to": return_to}


async def test_browser_flow_rejects_disallowed_return_to(make_kratos):
    kratos = make_kratos(allowed_return_urls=["https://app.example.com/dashboard"])
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(
        "/self-service/logout/browser",
        params={"return_to": "https://evil.example.net/dashboard"},
        headers={**JSON, **cookie(kratos, alice)},
    )
    assert r.status_code == 400
    assert r.headers["content-type"] == ERROR_JSON
    assert r.headers["ory-error-id"] == "self_service_flow_return_to_forbidden"
    err = r.json()["error"]
    assert err["id"] == "self_service_flow_return_to_forbidden"
    assert (err["code"], err["status"]) == (400, "Bad Request")
    assert kratos.fake.is_session_active(alice.id)


async def test_browser_flow_sets_csrf_cookie_when_request_has_none(make_kratos):
    kratos = make_kratos(public_url="https://auth.example.com")
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(
        "/self-service/logout/browser", headers={**JSON, **cookie(kratos, alice)}
    )
    assert r.status_code == 200
    name = csrf_name("https://auth.example.com")
    assert name == "csrf_token_" + hashlib.sha256(b"https://auth.example.com").hexdigest()
    (csrf,) = cookies_named(r, name)
    value = csrf.split(";", 1)[0].split("=", 1)[1]
    assert value
    assert "; Max-Age=31536000" in csrf
    assert "; HttpOnly" in csrf
    assert "Path=/" in csrf
    # nothing else: the browser flow never touches the session cookie (CONTRACT §5)
    assert set_cookies(r) == [csrf]


async def test_browser_flow_sets_csrf_cookie_on_errors_too(kratos):
    r = await kratos.public.get("/self-service/logout/browser", headers=JSON)
    assert r.status_code == 401
    assert len(cookies_named(r, csrf_name(kratos.fake.public_url))) == 1


async def test_browser_flow_keeps_existing_csrf_cookie(kratos):
    alice = kratos.fake.login("alice@example.com")
    name = csrf_name(kratos.fake.public_url)
    first = await kratos.public.get(
        "/self-service/logout/browser", headers={**JSON, **cookie(kratos, alice)}
    )
    (issued,) = cookies_named(first, name)
    pair = issued.split(";", 1)[0]
    r = await kratos.public.get(
        "/self-service/logout/browser",
        headers={**JSON, "Cookie": f"{kratos.fake.cookie_header(alice)}; {pair}"},
    )
    assert r.status_code == 200
    assert set_cookies(r) == []


# -- §4.12 GET /self-service/logout?token=... --------------------------------------------------


async def test_logout_without_token_is_400(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get("/self-service/logout", headers={**JSON, **cookie(kratos, alice)})
    assert r.status_code == 400
    assert r.headers["content-type"] == ERROR_JSON
    assert r.json() == {
        "error": {
            "code": 400,
            "status": "Bad Request",
            "reason": "Please include a token in the URL query.",
            "message": "The request was malformed or contained invalid parameters",
        }
    }
    assert kratos.fake.is_session_active(alice.id)


async def test_logout_missing_token_is_checked_before_the_session(kratos):
    r = await kratos.public.get("/self-service/logout", params={"token": ""}, headers=JSON)
    assert r.status_code == 400
    assert r.json()["error"]["reason"] == "Please include a token in the URL query."


async def test_logout_without_session_is_401_session_inactive(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(
        "/self-service/logout", params={"token": alice.logout_token}, headers=JSON
    )
    assert r.status_code == 401
    assert r.headers["ory-error-id"] == "session_inactive"
    assert r.json() == SESSION_INACTIVE
    assert kratos.fake.is_session_active(alice.id)


async def test_logout_with_wrong_token_is_403(kratos):
    alice = kratos.fake.login("alice@example.com")
    bob = kratos.fake.login("bob@example.com")
    r = await kratos.public.get(
        "/self-service/logout",
        params={"token": bob.logout_token},
        headers={**JSON, **cookie(kratos, alice)},
    )
    assert r.status_code == 403
    assert r.headers["content-type"] == ERROR_JSON
    assert r.json() == {
        "error": {
            "code": 403,
            "status": "Forbidden",
            "reason": "Unable to log out because the logout token in the URL query does not "
            "match the session cookie.",
            "message": "The requested action was forbidden",
        }
    }
    assert kratos.fake.is_session_active(alice.id)
    assert kratos.fake.is_session_active(bob.id)


async def test_logout_error_for_browser_redirects_to_error_ui(kratos):
    r = await kratos.public.get("/self-service/logout", params={"token": "x"}, headers=HTML)
    assert r.status_code == 303
    assert r.headers["location"].startswith(f"{kratos.fake.public_url}/error?id=")


async def test_logout_with_cookie_json_is_204_and_revokes(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(
        "/self-service/logout",
        params={"token": alice.logout_token},
        headers={**JSON, **cookie(kratos, alice)},
    )
    assert r.status_code == 204
    assert r.content == b""
    assert "content-type" not in r.headers
    assert not kratos.fake.is_session_active(alice.id)
    assert kratos.fake.session(alice.id).active is False  # revoked, not deleted
    whoami = await kratos.public.get("/sessions/whoami", headers=cookie(kratos, alice))
    assert whoami.status_code == 401


async def test_logout_success_sends_separate_set_cookie_headers(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(
        "/self-service/logout",
        params={"token": alice.logout_token},
        headers={**JSON, **cookie(kratos, alice)},
    )
    assert r.status_code == 204
    raw = [v for k, v in r.headers.raw if k.lower() == b"set-cookie"]
    assert len(raw) >= 2
    (expired,) = cookies_named(r, "ory_kratos_session")
    name, _, rest = expired.partition("=")
    value = rest.partition(";")[0]
    assert value
    assert value != alice.cookie
    assert f"{name}={value}{EXPIRED_COOKIE_ATTRS}" == expired
    csrf = cookies_named(r, csrf_name(kratos.fake.public_url))
    assert csrf
    assert all("; Max-Age=31536000" in c for c in csrf)
    assert len(set_cookies(r)) == 1 + len(csrf)


async def test_logout_regenerates_csrf_even_when_request_has_one(kratos):
    alice = kratos.fake.login("alice@example.com")
    name = csrf_name(kratos.fake.public_url)
    old = "csrf-value-from-an-earlier-response"
    r = await kratos.public.get(
        "/self-service/logout",
        params={"token": alice.logout_token},
        headers={**JSON, "Cookie": f"{kratos.fake.cookie_header(alice)}; {name}={old}"},
    )
    assert r.status_code == 204
    csrf = cookies_named(r, name)
    assert csrf  # regenerated; nosurf may add one more for a value it finds invalid
    assert all(c.split(";", 1)[0] != f"{name}={old}" for c in csrf)
    assert len(cookies_named(r, "ory_kratos_session")) == 1


async def test_logout_for_browser_redirects_to_default_return(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(
        "/self-service/logout",
        params={"token": alice.logout_token},
        headers={**HTML, **cookie(kratos, alice)},
    )
    assert r.status_code == 303
    # selfservice/flow/logout/handler.go:376 is Go's http.Redirect
    assert r.content == f'<a href="{kratos.fake.public_url}/">See Other</a>.\n\n'.encode()
    assert r.headers["location"] == kratos.fake.public_url + "/"
    assert not kratos.fake.is_session_active(alice.id)
    assert len(cookies_named(r, "ory_kratos_session")) == 1


async def test_logout_for_browser_redirects_to_allowed_return_to(make_kratos):
    kratos = make_kratos(allowed_return_urls=["https://app.example.com/"])
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(
        "/self-service/logout",
        params={"token": alice.logout_token, "return_to": "https://app.example.com/bye"},
        headers={**HTML, **cookie(kratos, alice)},
    )
    assert r.status_code == 303
    assert r.headers["location"] == "https://app.example.com/bye"
    assert not kratos.fake.is_session_active(alice.id)


async def test_logout_with_bearer_revokes_that_session_and_keeps_cookie(kratos):
    alice = kratos.fake.login("alice@example.com")
    other = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(
        "/self-service/logout",
        params={"token": alice.logout_token},
        headers={
            **JSON,
            **cookie(kratos, alice),
            "Authorization": f"Bearer {other.token}",
        },
    )
    assert r.status_code == 204
    assert not kratos.fake.is_session_active(other.id)
    assert kratos.fake.is_session_active(alice.id)
    assert cookies_named(r, "ory_kratos_session") == []
    assert cookies_named(r, csrf_name(kratos.fake.public_url))


async def test_logout_with_only_session_token_header_succeeds_without_revoking(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.get(
        "/self-service/logout",
        params={"token": alice.logout_token},
        headers={**JSON, "X-Session-Token": alice.token},
    )
    assert r.status_code == 204
    assert kratos.fake.is_session_active(alice.id)
    assert cookies_named(r, "ory_kratos_session") == []


# -- §4.13 DELETE /self-service/logout/api -----------------------------------------------------


async def native_logout(kratos, body: bytes, content_type: str | None = "application/json"):  # type: ignore[no-untyped-def]
    headers = {"Content-Type": content_type} if content_type else {}
    return await kratos.public.request(
        "DELETE", "/self-service/logout/api", content=body, headers=headers
    )


def token_body(token: str) -> bytes:
    return json.dumps({"session_token": token}).encode()


async def test_native_logout_is_204_and_revokes(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.request(
        "DELETE", "/self-service/logout/api", json={"session_token": alice.token}
    )
    assert r.status_code == 204
    assert r.content == b""
    assert "content-type" not in r.headers
    assert set_cookies(r) == []
    assert kratos.fake.session(alice.id).active is False
    whoami = await kratos.public.get("/sessions/whoami", headers={"X-Session-Token": alice.token})
    assert whoami.status_code == 401


async def test_native_logout_repeat_is_204(kratos):
    alice = kratos.fake.login("alice@example.com")
    first = await native_logout(kratos, token_body(alice.token))
    second = await native_logout(kratos, token_body(alice.token))
    assert first.status_code == second.status_code == 204


async def test_native_logout_of_expired_session_is_204(kratos):
    alice = kratos.fake.login("alice@example.com")
    kratos.fake.expire_session(alice.id)
    r = await native_logout(kratos, token_body(alice.token))
    assert r.status_code == 204
    assert kratos.fake.session(alice.id).active is False


NATIVE_403 = {
    "error": {
        "code": 403,
        "status": "Forbidden",
        "reason": "The provided Ory Session Token could not be found, is invalid, or otherwise "
        "malformed.",
        "message": "The requested action was forbidden",
    }
}


async def test_native_logout_unknown_token_is_403(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await native_logout(kratos, token_body("ory_st_" + "x" * 32))
    assert r.status_code == 403
    assert r.headers["content-type"] == ERROR_JSON
    assert r.json() == NATIVE_403
    assert set_cookies(r) == []
    assert kratos.fake.is_session_active(alice.id)


async def test_native_logout_empty_token_is_403(kratos):
    r = await native_logout(kratos, token_body(""))
    assert r.status_code == 403
    assert r.json() == NATIVE_403


async def test_native_logout_logout_token_is_not_a_session_token(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await native_logout(kratos, token_body(alice.logout_token))
    assert r.status_code == 403
    assert kratos.fake.is_session_active(alice.id)


async def test_native_logout_wrong_content_type_is_400(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await native_logout(kratos, token_body(alice.token), content_type="text/plain")
    assert r.status_code == 400
    assert r.headers["content-type"] == ERROR_JSON
    err = r.json()["error"]
    assert (err["code"], err["status"]) == (400, "Bad Request")
    assert set_cookies(r) == []
    assert kratos.fake.is_session_active(alice.id)


async def test_native_logout_form_body_is_400(kratos):
    alice = kratos.fake.login("alice@example.com")
    r = await kratos.public.request(
        "DELETE", "/self-service/logout/api", data={"session_token": alice.token}
    )
    assert r.status_code == 400
    assert kratos.fake.is_session_active(alice.id)


async def test_native_logout_empty_body_is_400(kratos):
    r = await native_logout(kratos, b"")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == 400
    assert set_cookies(r) == []


async def test_native_logout_ignores_cookie_and_never_sets_one(kratos):
    alice = kratos.fake.login("alice@example.com")
    bob = kratos.fake.login("bob@example.com")
    r = await kratos.public.request(
        "DELETE",
        "/self-service/logout/api",
        json={"session_token": bob.token},
        headers=cookie(kratos, alice),
    )
    assert r.status_code == 204
    assert set_cookies(r) == []
    assert kratos.fake.is_session_active(alice.id)
    assert not kratos.fake.is_session_active(bob.id)
