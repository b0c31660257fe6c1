"""The session relay through the official Ory SDK (`ory_client`), with the gate as its host.

Every operation the SDK offers for sessions runs against the gate in front of the Kratos fake
(real uvicorn servers on 127.0.0.1), once without a prefix and once under `/auth`. The second
half checks that the gate's cache stays truthful: with a warm cache, a revocation relayed
through the gate is seen by the very next request anywhere on the gate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import ory_client
import pytest
from ory_client.api.frontend_api import FrontendApi
from ory_client.api.identity_api import IdentityApi
from ory_client.exceptions import (
    BadRequestException,
    ForbiddenException,
    NotFoundException,
    UnauthorizedException,
)
from ory_client.models.perform_native_logout_body import PerformNativeLogoutBody

from relay.conftest import ADMIN_KEY, RelayStack
from sessiongate.testing import CreatedSession

TIMEOUT = 10.0
WHOAMI = ("GET", "/sessions/whoami")
_LINK = re.compile(r'<([^>]*)>;\s*rel="([^"]+)"')


@pytest.fixture(params=["", "/auth"], ids=["root", "prefixed"])
def stack(request: pytest.FixtureRequest, make_relay: Callable[..., RelayStack]) -> RelayStack:
    return make_relay(prefix=request.param, admin=True)


@contextmanager
def frontend(stack: RelayStack) -> Iterator[FrontendApi]:
    with ory_client.ApiClient(ory_client.Configuration(host=stack.url)) as client:
        yield FrontendApi(client)


@contextmanager
def identity_api(stack: RelayStack) -> Iterator[IdentityApi]:
    config = ory_client.Configuration(host=stack.url, access_token=ADMIN_KEY)
    with ory_client.ApiClient(config) as client:
        yield IdentityApi(client)


def http(stack: RelayStack) -> httpx.Client:
    return httpx.Client(timeout=TIMEOUT, follow_redirects=False)


def links(value: str | None) -> dict[str, str]:
    return {rel: url for url, rel in _LINK.findall(value or "")}


def cookie(stack: RelayStack, created: CreatedSession) -> str:
    return stack.fake.cookie_header(created)


def app_get(stack: RelayStack, **headers: str) -> httpx.Response:
    """A protected app path (outside the relay's prefix), as an API client would call it."""
    with http(stack) as client:
        return client.get(stack.server.url + "/app", headers=_headers(headers))


def whoami(stack: RelayStack, **headers: str) -> httpx.Response:
    """The relayed whoami."""
    with http(stack) as client:
        return client.get(stack.url + "/sessions/whoami", headers=_headers(headers))


def _headers(headers: dict[str, str]) -> dict[str, str]:
    names = {"token": "X-Session-Token", "cookie": "Cookie"}
    out = {"Accept": "application/json"}
    out.update({names.get(k, k): v for k, v in headers.items()})
    return out


def warm(stack: RelayStack, **headers: str) -> None:
    """Make the gate cache this credential, and prove it is served from the cache."""
    assert app_get(stack, **headers).status_code == 200
    calls = stack.fake.count(*WHOAMI)
    assert app_get(stack, **headers).status_code == 200
    assert whoami(stack, **headers).status_code == 200
    assert stack.fake.count(*WHOAMI) == calls, "the credential is not cached"


def assert_refused(stack: RelayStack, **headers: str) -> None:
    app = app_get(stack, **headers)
    assert app.status_code == 401, app.text
    who = whoami(stack, **headers)
    assert who.status_code == 401, who.text


def assert_admitted(stack: RelayStack, **headers: str) -> None:
    assert app_get(stack, **headers).status_code == 200
    assert whoami(stack, **headers).status_code == 200


def ids(sessions: list[Any]) -> list[str]:
    return [str(s.id) for s in sessions]


# -- FrontendApi --------------------------------------------------------------------------------
def test_to_session_with_token_and_cookie(stack: RelayStack) -> None:
    alice = stack.fake.login("alice@example.com")
    bob = stack.fake.login("bob@example.com")
    with frontend(stack) as fe:
        by_token = fe.to_session(x_session_token=alice.token)
        by_cookie = fe.to_session(cookie=cookie(stack, bob))
        info = fe.to_session_with_http_info(x_session_token=alice.token)
        with pytest.raises(UnauthorizedException):
            fe.to_session(x_session_token="ory_st_" + "x" * 32)
        with pytest.raises(UnauthorizedException):
            fe.to_session()
    assert str(by_token.id) == alice.id
    assert str(by_token.identity.id) == alice.identity_id
    assert by_token.identity.traits["email"] == "alice@example.com"
    assert by_token.active is True
    assert str(by_cookie.id) == bob.id
    assert str(by_cookie.identity.id) == bob.identity_id
    assert info.status_code == 200
    assert info.headers.get("x-kratos-authenticated-identity-id") == alice.identity_id


def test_list_my_sessions_pages_counts_and_excludes_current(stack: RelayStack) -> None:
    fake = stack.fake
    me = fake.login("alice@example.com")
    others = [fake.create_session(me.identity_id) for _ in range(5)]
    revoked = fake.create_session(me.identity_id)
    fake.revoke_session(revoked.id)
    stranger = fake.login("mallory@example.com")
    seen: list[str] = []
    with frontend(stack) as fe:
        first = fe.list_my_sessions_with_http_info(x_session_token=me.token, per_page=2, page=1)
        assert first.status_code == 200
        assert first.headers.get("x-total-count") == "5"
        for page in range(1, 10):
            batch = fe.list_my_sessions(x_session_token=me.token, per_page=2, page=page)
            seen += ids(batch)
            if len(batch) < 2:
                break
        assert page == 3
        everything = fe.list_my_sessions(cookie=cookie(stack, me))
        by_size = fe.list_my_sessions(x_session_token=me.token, page_size=3)
    assert sorted(seen) == sorted(o.id for o in others)
    assert len(seen) == len(set(seen)) == 5
    assert me.id not in seen
    assert revoked.id not in seen
    assert stranger.id not in seen
    assert ids(everything) == [o.id for o in reversed(others)]  # created_at descending
    assert len(by_size) == 3
    assert all(str(s.identity.id) == me.identity_id for s in everything)
    assert all(s.devices for s in everything)


def test_disable_my_session(stack: RelayStack) -> None:
    fake = stack.fake
    me = fake.login("alice@example.com")
    other = fake.create_session(me.identity_id)
    stranger = fake.login("mallory@example.com")
    with frontend(stack) as fe:
        assert fe.disable_my_session(other.id, x_session_token=me.token) is None
        # someone else's session: 204 as in Kratos, but nothing happens
        assert fe.disable_my_session(stranger.id, cookie=cookie(stack, me)) is None
        with pytest.raises(BadRequestException) as current:
            fe.disable_my_session(me.id, x_session_token=me.token)
        with pytest.raises(UnauthorizedException):
            fe.disable_my_session(other.id, x_session_token=other.token)
        remaining = fe.list_my_sessions(x_session_token=me.token)
    assert "cannot revoke current session" in (current.value.body or "")
    assert not fake.is_session_active(other.id)
    assert fake.is_session_active(stranger.id)
    assert fake.is_session_active(me.id)
    assert remaining == []


def test_disable_my_other_sessions_counts(stack: RelayStack) -> None:
    fake = stack.fake
    me = fake.login("alice@example.com")
    others = [fake.create_session(me.identity_id) for _ in range(3)]
    fake.revoke_session(others[0].id)  # already inactive rows count too (CONTRACT §4.4)
    stranger = fake.login("mallory@example.com")
    with frontend(stack) as fe:
        result = fe.disable_my_other_sessions(x_session_token=me.token)
        again = fe.disable_my_other_sessions(cookie=cookie(stack, me))
    assert result.count == 3
    assert again.count == 3
    assert fake.is_session_active(me.id)
    assert not any(fake.is_session_active(o.id) for o in others)
    assert fake.is_session_active(stranger.id)


# -- IdentityApi --------------------------------------------------------------------------------
def _population(stack: RelayStack) -> tuple[list[CreatedSession], CreatedSession]:
    fake = stack.fake
    alice = fake.login("alice@example.com")
    sessions = [alice] + [fake.create_session(alice.identity_id) for _ in range(3)]
    bob = fake.login("bob@example.com")
    sessions += [bob, fake.create_session(bob.identity_id)]
    sessions.append(fake.login("carol@example.com"))
    dead = fake.create_session(bob.identity_id)
    fake.revoke_session(dead.id)
    sessions.append(dead)
    return sessions, dead


def test_list_sessions_walks_rewritten_next_links(stack: RelayStack) -> None:
    sessions, dead = _population(stack)
    everyone = {s.id for s in sessions}
    with identity_api(stack) as ia:
        first = ia.list_sessions_with_http_info(page_size=3, expand=["identity", "devices"])
    assert first.status_code == 200
    assert first.headers.get("x-total-count") is None  # keyset scheme: no total (§4.5)
    page_ids = ids(first.data)
    assert len(page_ids) == 3
    assert all(s.identity is not None and s.devices for s in first.data)

    visited = list(page_ids)
    next_url = links(first.headers.get("link")).get("next")
    pages = 1
    with http(stack) as client:
        while next_url:
            assert next_url.startswith(stack.url + "/admin/sessions?"), next_url
            assert stack.fake.public_url not in next_url
            assert stack.fake.admin_url not in next_url
            response = client.get(next_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body, "a next link must not lead to an empty page"
            assert all(item["identity"] and item["devices"] for item in body)  # expand kept
            visited += [item["id"] for item in body]
            next_url = links(response.headers.get("link")).get("next")
            pages += 1
            assert pages <= 10
    assert pages == 3
    assert len(visited) == len(set(visited)) == len(everyone)
    assert set(visited) == everyone

    # The same walk with the SDK, taking page_token out of the gate's rewritten links.
    sdk_visited: list[str] = []
    token = None
    with identity_api(stack) as ia:
        for _ in range(10):
            page = ia.list_sessions_with_http_info(page_size=3, page_token=token)
            sdk_visited += ids(page.data)
            nxt = links(page.headers.get("link")).get("next")
            if nxt is None:
                break
            assert nxt.startswith(stack.url + "/admin/sessions?")
            token = parse_qs(urlsplit(nxt).query)["page_token"][0]
        active = ia.list_sessions(active=True)
        inactive = ia.list_sessions(active=False)
        plain = ia.list_sessions(page_size=2)
    assert sdk_visited == visited
    assert set(ids(active)) == everyone - {dead.id}
    assert ids(inactive) == [dead.id]
    assert all(s.identity is None for s in plain)


def test_list_identity_sessions_page_walk_matches_total(stack: RelayStack) -> None:
    fake = stack.fake
    alice = fake.login("alice@example.com")
    mine = [alice] + [fake.create_session(alice.identity_id) for _ in range(6)]
    fake.revoke_session(mine[2].id)
    fake.login("bob@example.com")
    walked: list[str] = []
    with identity_api(stack) as ia:
        first = ia.list_identity_sessions_with_http_info(alice.identity_id, per_page=3, page=1)
        total = int(first.headers["x-total-count"])
        nxt = links(first.headers.get("link")).get("next")
        for page in range(1, 10):
            batch = ia.list_identity_sessions(alice.identity_id, per_page=3, page=page)
            walked += ids(batch)
            if len(batch) < 3 or len(walked) >= total:
                break
        active = ia.list_identity_sessions_with_http_info(alice.identity_id, active=True)
        inactive = ia.list_identity_sessions(alice.identity_id, active=False)
        unknown = ia.list_identity_sessions("00000000-0000-4000-8000-000000000001")
    assert total == 7
    assert len(walked) == len(set(walked)) == total
    assert set(walked) == {s.id for s in mine}  # includes the current and the revoked one
    assert nxt is not None
    assert nxt.startswith(stack.url + "/admin/identities/")
    assert active.headers["x-total-count"] == "6"
    assert mine[2].id not in ids(active.data)
    assert ids(inactive) == [mine[2].id]
    assert unknown == []


def test_get_session_expand_and_404(stack: RelayStack) -> None:
    alice = stack.fake.login(
        "alice@example.com", devices=[{"ip_address": "10.0.0.9", "user_agent": "sdk-test"}]
    )
    with identity_api(stack) as ia:
        full = ia.get_session(alice.id, expand=["identity", "devices"])
        bare = ia.get_session(alice.id)
        with pytest.raises(NotFoundException) as missing:
            ia.get_session("00000000-0000-4000-8000-000000000002")
        with pytest.raises(BadRequestException):
            ia.get_session("not-a-uuid")
    assert str(full.id) == alice.id
    assert str(full.identity.id) == alice.identity_id
    assert [d.user_agent for d in full.devices] == ["sdk-test"]
    assert bare.identity is None
    assert bare.devices == []
    assert missing.value.status == 404
    assert "Unable to locate the resource" in (missing.value.body or "")


def test_disable_session(stack: RelayStack) -> None:
    alice = stack.fake.login("alice@example.com")
    with identity_api(stack) as ia:
        assert ia.disable_session(alice.id) is None
        after = ia.get_session(alice.id)
        with pytest.raises(NotFoundException):
            ia.disable_session("00000000-0000-4000-8000-000000000003")
    assert after.active is False
    assert not stack.fake.is_session_active(alice.id)


def test_delete_identity_sessions_then_404(stack: RelayStack) -> None:
    fake = stack.fake
    alice = fake.login("alice@example.com")
    second = fake.create_session(alice.identity_id)
    bob = fake.login("bob@example.com")
    with identity_api(stack) as ia:
        assert ia.delete_identity_sessions(alice.identity_id) is None
        with pytest.raises(NotFoundException):
            ia.get_session(alice.id)
        with pytest.raises(NotFoundException):
            ia.get_session(second.id)
        with pytest.raises(NotFoundException):
            ia.delete_identity_sessions(alice.identity_id)
        assert ia.list_identity_sessions(alice.identity_id) == []
        assert str(ia.get_session(bob.id).id) == bob.id


def test_extend_session_moves_expiry(stack: RelayStack) -> None:
    fake = stack.fake
    alice = fake.login("alice@example.com")
    with identity_api(stack) as ia:
        before = ia.get_session(alice.id).expires_at
        fake.advance_clock(3600)
        extended = ia.extend_session(alice.id)
        with pytest.raises(NotFoundException):
            ia.extend_session("00000000-0000-4000-8000-000000000004")
    assert str(extended.id) == alice.id
    assert extended.expires_at > before
    assert (extended.expires_at - before).total_seconds() == pytest.approx(3600, abs=5)
    assert extended.expires_at == fake.session(alice.id).expires_at


# -- the cache stays truthful ------------------------------------------------------------------
def test_revoke_one_refuses_the_revoked_session_next(stack: RelayStack) -> None:
    fake = stack.fake
    me = fake.login("alice@example.com")
    victim = fake.create_session(me.identity_id)
    warm(stack, token=victim.token)
    warm(stack, token=me.token)
    with frontend(stack) as fe:
        fe.disable_my_session(victim.id, x_session_token=me.token)
    assert_refused(stack, token=victim.token)
    calls = fake.count(*WHOAMI)
    assert_admitted(stack, token=me.token)
    assert fake.count(*WHOAMI) == calls  # the caller's entry was left alone


def test_revoking_someone_elses_session_id_evicts_nothing_of_theirs(stack: RelayStack) -> None:
    """Kratos answers 204 to a user's DELETE /sessions/{id} of another identity's session and
    revokes nothing (CONTRACT): the gate must not evict (nor refuse) the victim's entry."""
    fake = stack.fake
    mallory = fake.login("mallory@example.com")
    bob = fake.login("bob@example.com")
    warm(stack, token=bob.token)
    calls = fake.count(*WHOAMI)
    with frontend(stack) as fe:
        for _ in range(3):
            fe.disable_my_session(bob.id, x_session_token=mallory.token)
    assert fake.is_session_active(bob.id)
    mallory_whoamis = fake.count(*WHOAMI) - calls
    assert_admitted(stack, token=bob.token)
    # bob's entry survived: his request needed no whoami
    assert fake.count(*WHOAMI) - calls == mallory_whoamis


def test_revoke_others_refuses_every_other_session_next(stack: RelayStack) -> None:
    fake = stack.fake
    me = fake.login("alice@example.com")
    others = [fake.create_session(me.identity_id) for _ in range(2)]
    browser = fake.create_session(me.identity_id)
    stranger = fake.login("mallory@example.com")
    for s in (me, *others, stranger):
        warm(stack, token=s.token)
    warm(stack, cookie=cookie(stack, browser))
    with frontend(stack) as fe:
        assert fe.disable_my_other_sessions(x_session_token=me.token).count == 3
    for s in others:
        assert_refused(stack, token=s.token)
    assert_refused(stack, cookie=cookie(stack, browser))
    calls = fake.count(*WHOAMI)
    assert_admitted(stack, token=me.token)
    assert_admitted(stack, token=stranger.token)
    assert fake.count(*WHOAMI) == calls


def test_admin_disable_refuses_next(stack: RelayStack) -> None:
    alice = stack.fake.login("alice@example.com")
    bob = stack.fake.login("bob@example.com")
    warm(stack, token=alice.token)
    warm(stack, cookie=cookie(stack, alice))
    warm(stack, token=bob.token)
    with identity_api(stack) as ia:
        ia.disable_session(alice.id)
    assert_refused(stack, token=alice.token)
    assert_refused(stack, cookie=cookie(stack, alice))
    assert_admitted(stack, token=bob.token)


def test_admin_delete_identity_sessions_refuses_next(stack: RelayStack) -> None:
    fake = stack.fake
    alice = fake.login("alice@example.com")
    second = fake.create_session(alice.identity_id)
    bob = fake.login("bob@example.com")
    for s in (alice, second, bob):
        warm(stack, token=s.token)
    with identity_api(stack) as ia:
        ia.delete_identity_sessions(alice.identity_id)
    assert_refused(stack, token=alice.token)
    assert_refused(stack, token=second.token)
    assert_admitted(stack, token=bob.token)


@pytest.mark.parametrize(
    "spelling",
    [str.upper, lambda u: "{" + u + "}", lambda u: u.replace("-", ""), lambda u: "urn:uuid:" + u],
    ids=["upper", "braces", "no-hyphens", "urn"],
)
def test_revocation_by_any_uuid_spelling_evicts(
    stack: RelayStack, spelling: Callable[[str], str]
) -> None:
    """Kratos (gofrs/uuid) accepts several spellings of an id; the eviction must follow."""
    fake = stack.fake
    me = fake.login("alice@example.com")
    victim = fake.create_session(me.identity_id)
    admin_victim = fake.login("bob@example.com")
    ident = fake.login("carol@example.com")
    for s in (me, victim, admin_victim, ident):
        warm(stack, token=s.token)
    with frontend(stack) as fe:
        fe.disable_my_session(spelling(victim.id), x_session_token=me.token)
    with identity_api(stack) as ia:
        ia.disable_session(spelling(admin_victim.id))
        ia.delete_identity_sessions(spelling(ident.identity_id))
    assert not fake.is_session_active(victim.id)
    assert not fake.is_session_active(admin_victim.id)
    assert_refused(stack, token=victim.token)
    assert_refused(stack, token=admin_victim.token)
    assert_refused(stack, token=ident.token)
    assert_admitted(stack, token=me.token)


def test_browser_logout_refuses_the_cookie_next(stack: RelayStack) -> None:
    fake = stack.fake
    alice = fake.login("alice@example.com")
    jar = cookie(stack, alice)
    warm(stack, cookie=jar)
    with frontend(stack) as fe:
        flow = fe.create_browser_logout_flow(cookie=jar)
    assert flow.logout_token == alice.logout_token
    assert flow.logout_url == f"{stack.url}/self-service/logout?token={alice.logout_token}"
    with http(stack) as client:
        out = client.get(flow.logout_url, headers={"Cookie": jar, "Accept": "application/json"})
    assert out.status_code == 204, out.text
    set_cookies = out.headers.get_list("set-cookie")
    assert len(set_cookies) >= 2
    assert any(c.startswith(fake.cookie_name + "=") and "Max-Age=0" in c for c in set_cookies)
    assert any(c.startswith(fake.csrf_cookie_name + "=") for c in set_cookies)
    assert not fake.is_session_active(alice.id)
    assert_refused(stack, cookie=jar)


def test_browser_logout_with_the_sdk(stack: RelayStack) -> None:
    alice = stack.fake.login("alice@example.com")
    jar = cookie(stack, alice)
    warm(stack, cookie=jar)
    with frontend(stack) as fe:
        flow = fe.create_browser_logout_flow(cookie=jar)
        token = parse_qs(urlsplit(flow.logout_url).query)["token"][0]
        fe.update_logout_flow(token=token, cookie=jar)
    assert_refused(stack, cookie=jar)


def test_logout_url_as_a_browser_follows_it(stack: RelayStack) -> None:
    alice = stack.fake.login("alice@example.com")
    jar = cookie(stack, alice)
    warm(stack, cookie=jar)
    with http(stack) as client:
        flow = client.get(
            stack.url + "/self-service/logout/browser",
            headers={"Cookie": jar, "Accept": "application/json"},
        )
        assert flow.status_code == 200
        logout_url = flow.json()["logout_url"]
        assert logout_url.startswith(stack.url + "/self-service/logout?token=")
        out = client.get(logout_url, headers={"Cookie": jar, "Accept": "text/html"})
    assert out.status_code == 303
    assert len(out.headers.get_list("set-cookie")) >= 2
    assert_refused(stack, cookie=jar)


def test_native_logout_refuses_the_token_next(stack: RelayStack) -> None:
    fake = stack.fake
    alice = fake.login("alice@example.com")
    bob = fake.login("bob@example.com")
    warm(stack, token=alice.token)
    warm(stack, token=bob.token)
    with http(stack) as client:
        out = client.request(
            "DELETE",
            stack.url + "/self-service/logout/api",
            json={"session_token": alice.token},
        )
    assert out.status_code == 204, out.text
    assert_refused(stack, token=alice.token)
    assert_admitted(stack, token=bob.token)
    with frontend(stack) as fe:
        fe.perform_native_logout(PerformNativeLogoutBody(session_token=bob.token))
    assert_refused(stack, token=bob.token)


def test_admin_extend_whoami_reports_the_new_expiry(stack: RelayStack) -> None:
    fake = stack.fake
    alice = fake.login("alice@example.com")
    jar = cookie(stack, alice)
    warm(stack, token=alice.token)
    warm(stack, cookie=jar)
    old = whoami(stack, token=alice.token).json()["expires_at"]
    fake.advance_clock(7200)
    with identity_api(stack) as ia:
        extended = ia.extend_session(alice.id)
    new = whoami(stack, token=alice.token)
    assert new.status_code == 200
    assert new.json()["expires_at"] != old
    assert _parse(new.json()["expires_at"]) == extended.expires_at
    with frontend(stack) as fe:
        assert fe.to_session(x_session_token=alice.token).expires_at == extended.expires_at
        assert fe.to_session(cookie=jar).expires_at == extended.expires_at
    # the cookie holder gets Kratos' refreshed cookie through the relay
    refreshed = whoami(stack, cookie=jar)
    assert refreshed.status_code == 200
    assert _parse(refreshed.json()["expires_at"]) == extended.expires_at
    assert_admitted(stack, token=alice.token)


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00"))


def test_failed_revocations_do_not_evict(stack: RelayStack) -> None:
    fake = stack.fake
    me = fake.login("alice@example.com")
    other = fake.create_session(me.identity_id)
    warm(stack, token=me.token)
    warm(stack, token=other.token)
    calls = fake.count(*WHOAMI)
    with frontend(stack) as fe:
        with pytest.raises(BadRequestException):  # the current session: 400
            fe.disable_my_session(me.id, x_session_token=me.token)
        with pytest.raises(UnauthorizedException):  # a dead credential: 401
            fe.disable_my_session(other.id, x_session_token="ory_st_" + "d" * 32)
        with pytest.raises(UnauthorizedException):
            fe.disable_my_other_sessions(x_session_token="ory_st_" + "d" * 32)
        with pytest.raises(ForbiddenException):  # unknown token: 403
            fe.perform_native_logout(PerformNativeLogoutBody(session_token="ory_st_" + "e" * 32))
    with identity_api(stack) as ia, pytest.raises(BadRequestException):
        ia.disable_session("not-a-uuid")
    with http(stack) as client:
        wrong = client.get(
            stack.url + "/self-service/logout?token=ory_lo_wrong",
            headers={"X-Session-Token": me.token, "Accept": "application/json"},
        )
        # a real token, but not sent as JSON: Kratos answers 400 and revokes nothing
        not_json = client.request(
            "DELETE",
            stack.url + "/self-service/logout/api",
            content=json.dumps({"session_token": other.token}),
            headers={"Content-Type": "text/plain"},
        )
    assert wrong.status_code == 403
    assert not_json.status_code == 400
    whoami_after_failures = fake.count(*WHOAMI)
    assert whoami_after_failures - calls <= 3  # only the dead/unknown tokens were asked about
    assert_admitted(stack, token=me.token)
    assert_admitted(stack, token=other.token)
    assert fake.count(*WHOAMI) == whoami_after_failures  # both still served from the cache
    assert fake.is_session_active(me.id)
    assert fake.is_session_active(other.id)


def test_whoami_served_from_cache_when_warm(stack: RelayStack) -> None:
    fake = stack.fake
    alice = fake.login("alice@example.com")
    assert app_get(stack, token=alice.token).status_code == 200
    calls = fake.count(*WHOAMI)
    relayed = whoami(stack, token=alice.token)
    assert fake.count(*WHOAMI) == calls
    with httpx.Client(timeout=TIMEOUT) as client:
        direct = client.get(
            fake.public_url + "/sessions/whoami",
            headers={"X-Session-Token": alice.token, "Accept": "application/json"},
        )
    assert relayed.status_code == direct.status_code == 200
    assert relayed.content == direct.content
    assert relayed.headers["x-kratos-authenticated-identity-id"] == alice.identity_id
    assert relayed.headers["content-type"].startswith("application/json")
    assert "no-store" in relayed.headers["cache-control"]


def test_whoami_relayed_and_cached_when_cold(stack: RelayStack) -> None:
    fake = stack.fake
    alice = fake.login("alice@example.com")
    calls = fake.count(*WHOAMI)
    relayed = whoami(stack, token=alice.token)
    assert fake.count(*WHOAMI) == calls + 1
    assert relayed.status_code == 200
    assert relayed.headers["x-kratos-authenticated-identity-id"] == alice.identity_id
    assert relayed.json()["id"] == alice.id
    assert app_get(stack, token=alice.token).status_code == 200
    again = whoami(stack, token=alice.token)
    assert fake.count(*WHOAMI) == calls + 1
    assert again.content == relayed.content
    # a dead credential: Kratos' 401, and no cached pass
    dead = whoami(stack, token="ory_st_" + "z" * 32)
    assert dead.status_code == 401
    assert dead.json()["error"]["code"] == 401


def test_relayed_headers_survive(stack: RelayStack) -> None:
    fake = stack.fake
    alice = fake.login("alice@example.com")
    for _ in range(3):
        fake.create_session(alice.identity_id)
    with http(stack) as client:
        listed = client.get(
            stack.url + "/sessions?page_size=2", headers={"X-Session-Token": alice.token}
        )
        assert listed.status_code == 200
        assert listed.headers["x-total-count"] == "3"
        assert "no-store" in listed.headers["cache-control"]
        assert len(listed.json()) == 2
        rels = links(listed.headers["link"])
        assert set(rels) == {"next", "last"}
        assert all(u.startswith(stack.url + "/sessions?") for u in rels.values())
        # Kratos' defect #3883, relayed faithfully: `next` from page 1 is page 1 again
        again = client.get(rels["next"], headers={"X-Session-Token": alice.token})
        assert again.status_code == 200
        assert [s["id"] for s in again.json()] == [s["id"] for s in listed.json()]

        error = client.get(
            stack.url + "/self-service/logout/browser", headers={"Accept": "application/json"}
        )
        assert error.status_code == 401
        assert error.headers["ory-error-id"] == "session_inactive"
        assert error.json()["error"]["id"] == "session_inactive"
        assert "no-store" in error.headers["cache-control"]

        admin = client.get(
            stack.url + "/admin/identities/" + alice.identity_id + "/sessions?per_page=1",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert admin.headers["x-total-count"] == "4"
        assert all(
            u.startswith(stack.url + "/admin/") for u in links(admin.headers["link"]).values()
        )

        refused = client.get(stack.url + "/admin/sessions")
        assert refused.status_code == 401
        assert refused.headers["content-type"].startswith("application/json")


def test_only_the_credential_reaches_kratos(stack: RelayStack) -> None:
    """The relay sends Kratos the one credential, Accept and Content-Type: nothing else."""
    seen: list[httpx.Headers] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request.headers)

    kratos = stack.gate.kratos
    for client in (kratos.public, kratos.admin):
        client.event_hooks = {"request": [record], "response": []}
    alice = stack.fake.login("alice@example.com")
    stack.fake.create_session(alice.identity_id)
    noise = {
        "Cookie": "app_session=secret-app-cookie; theme=dark",
        "X-App-Secret": "do-not-forward",
        "X-Forwarded-For": "203.0.113.9",
        "Accept": "application/json",
    }
    with http(stack) as client:
        r1 = client.get(stack.url + "/sessions", headers={**noise, "X-Session-Token": alice.token})
        r2 = client.get(
            stack.url + "/admin/sessions", headers={**noise, "Authorization": f"Bearer {ADMIN_KEY}"}
        )
        r3 = client.get(
            stack.url + "/sessions/whoami",
            headers={**noise, "X-Session-Token": alice.token, "Authorization": "Bearer other"},
        )
    assert (r1.status_code, r2.status_code, r3.status_code) == (200, 200, 200)
    assert len(seen) == 3
    for headers in seen:
        assert "secret-app-cookie" not in headers.get("cookie", "")
        assert "theme" not in headers.get("cookie", "")
        assert "x-app-secret" not in headers
        assert "x-forwarded-for" not in headers
        assert ADMIN_KEY not in headers.get("authorization", "")
        assert "other" not in headers.get("authorization", "")
    assert seen[0]["x-session-token"] == alice.token
    assert "x-session-token" not in seen[1]
    assert "cookie" not in seen[1]
    assert seen[2]["x-session-token"] == alice.token


def test_revoke_others_from_an_unresolvable_caller_never_evicts_other_identities(
    stack: RelayStack,
) -> None:
    """DELETE /sessions has no AAL check in Kratos: an aal1 session of a 2FA identity still
    revokes the others, but whoami and GET /sessions refuse it (CONTRACT §4.2, §4.4), so the gate
    cannot learn whose sessions went. It must not flush everyone's entries for that (issue 10
    item 4: any user could do it in a loop); the other identities stay served from the cache."""
    fake = stack.fake
    iid = fake.create_identity(email="alice@example.com", available_aal="aal2")
    strong = fake.create_session(iid, aal="aal2")
    weak = fake.create_session(iid, aal="aal1")
    bob = fake.login("bob@example.com")
    warm(stack, token=bob.token)
    calls = fake.count(*WHOAMI)
    with frontend(stack) as fe:
        for _ in range(5):
            fe.disable_my_other_sessions(x_session_token=weak.token)
    assert not fake.is_session_active(strong.id)
    whoamis_for_weak = fake.count(*WHOAMI) - calls
    assert_admitted(stack, token=bob.token)
    assert whoami(stack, token=bob.token).status_code == 200
    # bob's entry survived: no whoami was needed for him (the weak caller's own are 403s,
    # which are not cached)
    assert fake.count(*WHOAMI) - calls == whoamis_for_weak


@pytest.mark.parametrize("token", ["a\nb", "caf\u00e9", "x" * 5000, "with space"])
def test_native_logout_with_a_junk_token_is_not_a_server_error(
    stack: RelayStack, token: str
) -> None:
    with http(stack) as client:
        out = client.request(
            "DELETE", stack.url + "/self-service/logout/api", json={"session_token": token}
        )
    assert out.status_code in (400, 403), out.text
    assert out.json()["error"]["code"] == out.status_code
