"""The relay's routes (relay_routes.py): exact Kratos routes only, ids by Kratos' UUID rules.

* `{id}` is parsed as Kratos parses it (gofrs/uuid): a malformed id gets Kratos' own 400 (the
  gofrs message) from the gate, and Kratos is never called with it; the accepted spellings
  (braces, `urn:uuid:`, 32 hex digits, upper case) reach Kratos and the cache in canonical form.
  Issue 10 item 1: an encoded `?`, `#` or dot segment in an id made the gate call other Kratos
  admin endpoints (delete an identity's sessions, read credentials) with its own key.
* After a 2xx on a revoking route, the gate no longer admits that session (item 3).
* Paths that merely start like a relay route are the app's (item 9).

tests/reliability/test_hostile_relay.py sends the hostile corpus over every route, under both
servers, to a recording Kratos.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sessiongate.uuids import InvalidUUID, parse_uuid

MakeRelay = Callable[..., Any]  # tests/relay/conftest.py's make_relay → RelayStack
ADMIN_KEY = "gate-admin-key-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def gofrs_message(raw: str) -> str:
    with pytest.raises(InvalidUUID) as caught:
        parse_uuid(raw)
    return str(caught.value)


def assert_uuid_400(response: httpx.Response, raw: str) -> None:
    """Kratos' answer to a malformed id: 400, herodot, the gofrs error as message."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == 400
    assert error["status"] == "Bad Request"
    assert error["message"] == gofrs_message(raw)


async def test_encoded_query_in_an_admin_id_never_reaches_another_endpoint(
    make_relay: MakeRelay,
) -> None:
    stack = make_relay(admin=True)
    fake = stack.fake
    alice = fake.login("alice@example.com")
    iid = alice.identity_id
    before = len(fake.requests)
    async with stack.client() as client:
        # was: DELETE /admin/identities/<iid> (all of alice's sessions hard-deleted)
        deleted = await client.delete(f"/admin/identities/{iid}%3F/sessions", headers=ADMIN)
        assert_uuid_400(deleted, f"{iid}?")
        # was: GET /admin/identities/<iid>?include_credential=password (credential hashes)
        leaked = await client.get(
            f"/admin/identities/{iid}%3Finclude_credential=password%23/sessions", headers=ADMIN
        )
        assert_uuid_400(leaked, f"{iid}?include_credential=password#")
        # was: GET /admin/sessions (every session of every identity)
        listed = await client.get("/admin/sessions/%2e%2e", headers=ADMIN)
        assert_uuid_400(listed, "..")
        extended = await client.patch(f"/admin/sessions/{alice.id}%23/extend", headers=ADMIN)
        assert_uuid_400(extended, f"{alice.id}#")
    assert fake.requests[before:] == []  # Kratos was not called at all
    assert fake.is_session_active(alice.id)


async def test_public_revoke_with_a_malformed_id_answers_as_kratos(make_relay: MakeRelay) -> None:
    """DELETE /sessions/{id}: Kratos checks the caller's session (401) before the id (400)."""
    stack = make_relay()
    fake = stack.fake
    alice = fake.login("alice@example.com")
    other = fake.login("alice@example.com")
    token = {"X-Session-Token": alice.token}
    async with stack.client() as client:
        anonymous = await client.delete(f"/sessions/{other.id}%3F")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["reason"] == "No valid session cookie found."
        bad = await client.delete(f"/sessions/{other.id}%3F", headers=token)
        assert_uuid_400(bad, f"{other.id}?")
        dots = await client.delete("/sessions/%2e%2e", headers=token)
        assert_uuid_400(dots, "..")
    assert fake.count("DELETE", "/sessions") == 0
    assert fake.is_session_active(other.id)
    # what Kratos itself answers for the same id
    async with httpx.AsyncClient(base_url=stack.kratos.public_url) as kratos:
        direct = await kratos.delete(f"/sessions/{other.id}%3F", headers=token)
    assert direct.status_code == 400
    assert direct.json()["error"]["message"] == gofrs_message(f"{other.id}?")


def _spellings(uuid: str) -> list[str]:
    return [
        uuid,
        uuid.upper(),
        "{" + uuid + "}",
        "urn:uuid:" + uuid,
        uuid.replace("-", ""),
    ]


@pytest.mark.parametrize("spelling", range(5), ids=["canonical", "upper", "braces", "urn", "hex"])
async def test_revocations_reach_kratos_and_the_cache_in_canonical_form(
    make_relay: MakeRelay, spelling: int
) -> None:
    """Item 3's invariant: after a 2xx on a revoking route the gate refuses that session."""
    stack = make_relay(admin=True)
    fake = stack.fake
    caller = fake.login("alice@example.com")
    victims = {
        "own": fake.login("alice@example.com"),
        "admin": fake.login("bob@example.com"),
        "identity": fake.login("carol@example.com"),
    }
    async with stack.client() as client:
        for s in victims.values():  # cached by the gate
            assert (await client.get("/app", headers={"X-Session-Token": s.token})).is_success
        caller_token = {"X-Session-Token": caller.token}
        own = _spellings(victims["own"].id)[spelling]
        bob = _spellings(victims["admin"].id)[spelling]
        carol = _spellings(victims["identity"].identity_id)[spelling]
        assert (await client.delete(f"/sessions/{own}", headers=caller_token)).is_success
        assert (await client.delete(f"/admin/sessions/{bob}", headers=ADMIN)).is_success
        gone = await client.delete(f"/admin/identities/{carol}/sessions", headers=ADMIN)
        assert gone.is_success
        for s in victims.values():
            assert not fake.is_session_active(s.id)
            refused = await client.get("/app", headers={"X-Session-Token": s.token})
            assert refused.status_code == 401
    upstream = {r for r in fake.requests if r[0] == "DELETE"}
    assert upstream == {
        ("DELETE", f"/sessions/{victims['own'].id}"),
        ("DELETE", f"/admin/sessions/{victims['admin'].id}"),
        ("DELETE", f"/admin/identities/{victims['identity'].identity_id}/sessions"),
    }


async def test_admin_get_session_whoami_is_kratos_redirect(make_relay: MakeRelay) -> None:
    """`GET /admin/sessions/whoami` is Kratos' 307 to the public whoami, not a bad UUID."""
    stack = make_relay(admin=True)
    async with stack.client() as client:
        out = await client.get("/admin/sessions/whoami", headers=ADMIN)
    assert out.status_code == 307
    assert out.headers["location"] == stack.server.url + "/sessions/whoami"


@pytest.mark.parametrize(
    "path",
    [
        "/sessions-report",
        "/sessionsX",
        "/admin/dashboard",
        "/admin/sessions-export",
        "/admin",
        "/self-service/logout-all",
        "/self-service/logoutx",
        "/sessions/a/b",
    ],
)
@pytest.mark.parametrize("admin", [False, True], ids=["admin-off", "admin-on"])
async def test_paths_that_only_start_like_a_relay_route_are_the_apps(
    make_relay: MakeRelay, path: str, admin: bool
) -> None:
    stack = make_relay(admin=admin)
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as client:
        out = await client.get(path, headers={"X-Session-Token": alice.token})
        assert out.status_code == 200, out.text
        assert out.json()["path"] == path
        assert (await client.get(path)).status_code == 401  # and the gate protects it


async def test_query_is_reencoded_not_passed_raw(make_relay: MakeRelay) -> None:
    """A `#` or `?` in the query reaches Kratos as data, never as URL structure."""
    stack = make_relay(admin=True)
    stack.fake.requests.clear()
    async with stack.client() as client:
        out = await client.get(
            "/admin/sessions?page_size=2%23&expand=identity%3Fx&active=true", headers=ADMIN
        )
    assert out.status_code == 400  # Kratos parses `2#` as page_size: its own 400
    seen = [p for _, p in stack.fake.requests]
    assert seen == ["/admin/sessions"]
    assert json.loads(out.text)["error"]["message"] == "could not parse parameter page_size"
