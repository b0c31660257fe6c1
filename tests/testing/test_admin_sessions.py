"""Conformance of the fake's admin session endpoints with CONTRACT.md (Kratos v26.2.0).

Covers §4.5-§4.10 (listSessions, getSession, disableSession, listIdentitySessions,
deleteIdentitySessions, extendSession), the keyset pagination of §8.2, the offset `Link` of §8.1
as the identity list sends it, the identity/devices null rules of §3.1, the cross-port
behaviour and one-port API key of §1, and the admin headers of §2.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlsplit

import httpx
import pytest

PUBLIC_URL = "http://127.0.0.1:4433"
ADMIN_URL = "http://127.0.0.1:4434"
SUCCESS_TYPE = "application/json; charset=utf-8"
NO_CACHE = "private, no-cache, no-store, must-revalidate"
BAD_REQUEST = "The request was malformed or contained invalid parameters"
NIL_UUID = "00000000-0000-0000-0000-000000000000"
# §8.2: the first-page token is the nil UUID at 2200-12-31 23:59:59, unpadded standard base64.
FIRST_TOKEN = (
    base64.b64encode(f"id={NIL_UUID}/created_at=2200-12-31 23:59:59".encode()).decode().rstrip("=")
)
# `default` in unpadded base64url: the schema URL Kratos builds for the default schema.
DEFAULT_SCHEMA_URL = f"{PUBLIC_URL}/schemas/ZGVmYXVsdA"
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
LINK_RE = re.compile(r'<([^<>]*)>; rel="([a-z]+)"')


# -- helpers ----------------------------------------------------------------------------------
def error_body(code: int, status: str, message: str, reason: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "status": status}
    if reason is not None:
        err["reason"] = reason
    err["message"] = message
    return {"error": err}


def assert_error(response: httpx.Response, expected: dict[str, Any]) -> None:
    """Exact herodot envelope (§2): body, key order, JSON type without charset, empty id header."""
    assert response.status_code == expected["error"]["code"]
    assert response.headers["content-type"] == "application/json"
    assert response.headers["ory-error-id"] == ""
    body = response.json()
    assert body == expected
    assert list(body["error"]) == list(expected["error"])


def bad_request(message: str = BAD_REQUEST, reason: str | None = None) -> dict[str, Any]:
    return error_body(400, "Bad Request", message, reason)


NOT_FOUND_DB = error_body(404, "Not Found", "Unable to locate the resource")


def links(response: httpx.Response) -> dict[str, str]:
    """`Link` split into rel -> URL; links are joined with a bare comma (§8.1)."""
    out: dict[str, str] = {}
    for part in response.headers["link"].split(","):
        match = LINK_RE.fullmatch(part)
        assert match, f"malformed link {part!r}"
        assert match[2] not in out
        out[match[2]] = match[1]
    return out


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


def keyset_parts(url: str) -> dict[str, str]:
    token = query_of(url)["page_token"][0]
    assert "=" not in token  # unpadded
    raw = base64.b64decode(token + "=" * (-len(token) % 4), validate=True).decode()
    return dict(part.split("=", 1) for part in raw.split("/"))


def offset_token(offset: int) -> str:
    raw = json.dumps({"offset": str(offset), "v": 2}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def migration_link(path: str, offset: int, size: int, rel: str) -> str:
    query = (
        f"page={int(offset / size)}&page_size={size}"
        f"&page_token={offset_token(offset)}&per_page={size}"
    )
    return f'<{path}?{query}>; rel="{rel}"'


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def ids(response: httpx.Response) -> list[str]:
    return [s["id"] for s in response.json()]


def make_sessions(fake: Any, count: int) -> list[str]:
    """`count` sessions over alternating identities, returned newest first."""
    alice = fake.create_identity(email="alice@example.com")
    bob = fake.create_identity(email="bob@example.com")
    created = [fake.create_session(alice if i % 2 == 0 else bob).id for i in range(count)]
    return created[::-1]


def mixed_states(fake: Any) -> dict[str, str]:
    """One live, one revoked, one expired session, and a live one of a disabled identity."""
    alice = fake.create_identity(email="alice@example.com")
    carol = fake.create_identity(email="carol@example.com")
    live = fake.create_session(alice).id
    revoked = fake.create_session(alice).id
    expired = fake.create_session(alice).id
    disabled_owner = fake.create_session(carol).id
    fake.revoke_session(revoked)
    fake.expire_session(expired)
    fake.set_identity_state(carol, "inactive")
    fake.advance_clock(1)
    return {
        "alice": alice,
        "carol": carol,
        "live": live,
        "revoked": revoked,
        "expired": expired,
        "disabled_owner": disabled_owner,
    }


# -- GET /admin/sessions (§4.5, §8.2) -----------------------------------------------------------
async def test_list_sessions_returns_every_identity_newest_first(kratos):
    alice = kratos.fake.create_identity(email="alice@example.com")
    bob = kratos.fake.create_identity(email="bob@example.com")
    a1 = kratos.fake.create_session(alice).id
    b1 = kratos.fake.create_session(bob).id
    a2 = kratos.fake.create_session(alice).id
    r = await kratos.admin.get("/admin/sessions")
    assert r.status_code == 200
    assert r.headers["content-type"] == SUCCESS_TYPE
    assert ids(r) == [a2, b1, a1]
    assert all(list(s) == SESSION_KEYS for s in r.json())


async def test_list_sessions_without_expand_has_null_identity_and_devices(kratos):
    sid = kratos.fake.login("alice@example.com").id
    r = await kratos.admin.get("/admin/sessions")
    assert r.status_code == 200
    [row] = r.json()
    assert row["id"] == sid
    assert row["identity"] is None
    assert row["devices"] is None
    assert row["active"] is True


async def test_list_sessions_expand_identity_row_has_schema_url_but_no_addresses(kratos):
    created = kratos.fake.login("alice@example.com")
    r = await kratos.admin.get("/admin/sessions", params={"expand": "identity"})
    assert r.status_code == 200
    [row] = r.json()
    identity = row["identity"]
    assert identity["id"] == created.identity_id
    assert identity["schema_id"] == "default"
    assert identity["schema_url"] == DEFAULT_SCHEMA_URL
    assert identity["traits"] == {"email": "alice@example.com"}
    assert "verifiable_addresses" not in identity
    assert "recovery_addresses" not in identity
    assert "credentials" not in identity
    assert "metadata_admin" not in identity
    assert row["devices"] is None


async def test_list_sessions_expand_devices_lists_devices(kratos):
    alice = kratos.fake.create_identity(email="alice@example.com")
    sid = kratos.fake.create_session(
        alice,
        devices=[{"ip_address": "203.0.113.7", "user_agent": "UA/1.0", "location": "Berlin, DE"}],
    ).id
    r = await kratos.admin.get("/admin/sessions", params={"expand": "devices"})
    assert r.status_code == 200
    [row] = r.json()
    assert row["id"] == sid
    assert row["identity"] is None
    [device] = row["devices"]
    assert list(device) == ["id", "ip_address", "user_agent", "location"]
    assert uuid.UUID(device["id"])
    assert (device["ip_address"], device["user_agent"], device["location"]) == (
        "203.0.113.7",
        "UA/1.0",
        "Berlin, DE",
    )


async def test_list_sessions_expand_repeated_gives_identity_and_devices(kratos):
    created = kratos.fake.login("alice@example.com")
    r = await kratos.admin.get("/admin/sessions?expand=identity&expand=devices")
    assert r.status_code == 200
    [row] = r.json()
    assert row["identity"]["id"] == created.identity_id
    assert len(row["devices"]) == 1


async def test_list_sessions_expand_is_case_insensitive(kratos):
    created = kratos.fake.login("alice@example.com")
    r = await kratos.admin.get("/admin/sessions?expand=Identity&expand=DEVICES")
    assert r.status_code == 200
    [row] = r.json()
    assert row["identity"]["id"] == created.identity_id
    assert row["identity"]["schema_url"] == DEFAULT_SCHEMA_URL
    assert len(row["devices"]) == 1


@pytest.mark.parametrize("value", ["foo", "identity,devices", "Identities", ""])
async def test_list_sessions_unknown_expand_is_400(kratos, value):
    kratos.fake.login("alice@example.com")
    r = await kratos.admin.get("/admin/sessions", params={"expand": value})
    assert_error(r, bad_request(reason=f"Could not parse expand option: {value}"))


async def test_list_sessions_has_no_total_count(kratos):
    make_sessions(kratos.fake, 3)
    r = await kratos.admin.get("/admin/sessions", params={"page_size": "2"})
    assert r.status_code == 200
    assert "x-total-count" not in r.headers


async def test_list_sessions_link_is_only_first_when_all_rows_fit(kratos):
    make_sessions(kratos.fake, 2)
    r = await kratos.admin.get("/admin/sessions")
    assert r.status_code == 200
    assert r.headers["link"] == (
        f'</admin/sessions?page_size=250&page_token={quote_plus(FIRST_TOKEN)}>; rel="first"'
    )
    assert keyset_parts(links(r)["first"]) == {
        "id": NIL_UUID,
        "created_at": "2200-12-31 23:59:59",
    }


async def test_list_sessions_link_on_empty_store_is_first_only(kratos):
    r = await kratos.admin.get("/admin/sessions")
    assert r.status_code == 200
    assert r.json() == []
    assert list(links(r)) == ["first"]


async def test_list_sessions_link_has_next_with_last_row_token_when_more_rows(kratos):
    newest_first = make_sessions(kratos.fake, 3)
    r = await kratos.admin.get("/admin/sessions", params={"page_size": "2"})
    assert r.status_code == 200
    assert ids(r) == newest_first[:2]
    rels = links(r)
    assert list(rels) == ["first", "next"]
    assert rels["first"] == f"/admin/sessions?page_size=2&page_token={quote_plus(FIRST_TOKEN)}"
    assert rels["next"].startswith("/admin/sessions?page_size=2&page_token=")
    next_parts = keyset_parts(rels["next"])
    assert set(next_parts) == {"id", "created_at"}
    assert next_parts["id"] == newest_first[1]


async def test_list_sessions_link_has_no_next_when_rows_exactly_fill_page(kratos):
    make_sessions(kratos.fake, 2)
    r = await kratos.admin.get("/admin/sessions", params={"page_size": "2"})
    assert r.status_code == 200
    assert len(r.json()) == 2
    assert list(links(r)) == ["first"]


async def test_list_sessions_link_keeps_other_query_params_sorted(kratos):
    make_sessions(kratos.fake, 3)
    r = await kratos.admin.get("/admin/sessions?page_size=1&expand=identity&active=true")
    assert r.status_code == 200
    rels = links(r)
    assert rels["first"] == (
        "/admin/sessions?active=true&expand=identity&page_size=1"
        f"&page_token={quote_plus(FIRST_TOKEN)}"
    )
    assert rels["next"].startswith("/admin/sessions?active=true&expand=identity&page_size=1&")


async def test_list_sessions_walking_next_links_visits_every_session_once(kratos):
    newest_first = make_sessions(kratos.fake, 5)
    seen: list[str] = []
    page_sizes: list[int] = []
    url: str | None = "/admin/sessions?page_size=2"
    while url is not None:
        r = await kratos.admin.get(url)
        assert r.status_code == 200
        seen.extend(ids(r))
        page_sizes.append(len(r.json()))
        rels = links(r)
        assert rels["first"] == (
            f"/admin/sessions?page_size=2&page_token={quote_plus(FIRST_TOKEN)}"
        )
        url = rels.get("next")
        assert len(page_sizes) <= 5, "next links do not terminate"
    assert page_sizes == [2, 2, 1]
    assert seen == newest_first


@pytest.mark.parametrize("value", ["abc", "2.0", "1e2", " 2"])
async def test_list_sessions_non_integer_page_size_is_400(kratos, value):
    r = await kratos.admin.get("/admin/sessions", params={"page_size": value})
    assert_error(r, bad_request("could not parse parameter page_size"))


@pytest.mark.parametrize("value", ["0", "-1"])
async def test_list_sessions_page_size_below_one_means_250(kratos, value):
    newest_first = make_sessions(kratos.fake, 3)
    r = await kratos.admin.get("/admin/sessions", params={"page_size": value})
    assert r.status_code == 200
    assert ids(r) == newest_first
    assert query_of(links(r)["first"])["page_size"] == ["250"]


async def test_list_sessions_page_size_above_1000_is_clamped(kratos):
    make_sessions(kratos.fake, 1)
    r = await kratos.admin.get("/admin/sessions", params={"page_size": "5000"})
    assert r.status_code == 200
    assert query_of(links(r)["first"])["page_size"] == ["1000"]


@pytest.mark.parametrize("token", ["!!!not-base64!!!", "a"])
async def test_list_sessions_non_base64_page_token_is_400(kratos, token):
    make_sessions(kratos.fake, 1)
    r = await kratos.admin.get("/admin/sessions", params={"page_token": token})
    assert_error(r, bad_request("could not parse parameter page_size"))


async def test_list_sessions_page_token_with_non_uuid_id_is_400(kratos):
    make_sessions(kratos.fake, 1)
    token = base64.b64encode(b"id=not-a-uuid/created_at=2020-01-01 00:00:00").decode().rstrip("=")
    r = await kratos.admin.get("/admin/sessions", params={"page_token": token})
    assert_error(
        r, bad_request(reason="The page token is invalid, do not craft your own page tokens")
    )


def raw_token(text: str) -> str:
    """A keyset token as Kratos writes it: RawStdEncoding, no padding (page_token.go:50)."""
    return base64.b64encode(text.encode()).decode().rstrip("=")


async def test_list_sessions_first_non_empty_page_size_and_token_win(kratos):
    """keysetpagination/header.go:93,104: `cmp.Or(q["page_token"]...)`, likewise page_size:
    empty values are skipped, then the first one wins."""
    sids = make_sessions(kratos.fake, 3)
    r = await kratos.admin.get("/admin/sessions?page_size=&page_size=1&page_size=abc")
    assert r.status_code == 200
    assert ids(r) == sids[:1]
    token = query_of(links(r)["next"])["page_token"][0]
    r = await kratos.admin.get(
        f"/admin/sessions?page_size=2&page_token=&page_token={token}&page_token=garbage"
    )
    assert r.status_code == 200
    assert ids(r) == sids[1:3]


@pytest.mark.parametrize("size", ["9223372036854775808", "-9223372036854775809", "1e3"])
async def test_list_sessions_page_size_out_of_int_range_is_400(kratos, size):
    """strconv.Atoi fails outside int64 (header.go:105-108): the page_size 400."""
    r = await kratos.admin.get("/admin/sessions", params={"page_size": size})
    assert_error(r, bad_request("could not parse parameter page_size"))


async def test_list_sessions_padded_page_token_is_400(kratos):
    """NewMapPageToken decodes with RawStdEncoding (page_token.go:54): `=` padding fails."""
    make_sessions(kratos.fake, 1)
    padded = base64.b64encode(f"id={NIL_UUID}/created_at=2020-01-01 00:00:00".encode()).decode()
    assert padded.endswith("=")
    r = await kratos.admin.get("/admin/sessions", params={"page_token": padded})
    assert_error(r, bad_request("could not parse parameter page_size"))


async def test_list_sessions_token_without_created_at_pages_by_id(kratos):
    """paginator.go:116-121: a token with an id but no created_at filters `id > ?` and orders
    by id alone (line 163)."""
    sids = make_sessions(kratos.fake, 4)
    pivot = sorted(sids)[1]
    r = await kratos.admin.get("/admin/sessions", params={"page_token": raw_token(f"id={pivot}")})
    assert r.status_code == 200
    assert ids(r) == sorted(sids)[2:]


async def test_list_sessions_checks_expand_before_the_token_id(kratos):
    """session/handler.go adminListSessions parses `expand` before the persister checks the
    token's id (persistence/sql/persister_session.go:82-84)."""
    token = raw_token("id=not-a-uuid/created_at=2020-01-01 00:00:00")
    r = await kratos.admin.get("/admin/sessions", params={"page_token": token, "expand": "x"})
    assert_error(r, bad_request(reason="Could not parse expand option: x"))
    # ... but a token that does not even decode is refused before expand (header.go:98-101)
    r = await kratos.admin.get("/admin/sessions", params={"page_token": "!!!", "expand": "x"})
    assert_error(r, bad_request("could not parse parameter page_size"))


@pytest.mark.parametrize("value", ["true", "1", "t", "T", "TRUE", "True"])
async def test_list_sessions_active_true_keeps_unrevoked_unexpired(kratos, value):
    s = mixed_states(kratos.fake)
    r = await kratos.admin.get("/admin/sessions", params={"active": value})
    assert r.status_code == 200
    # The identity's state is ignored by the filter: carol is disabled but her session stays.
    assert ids(r) == [s["disabled_owner"], s["live"]]


@pytest.mark.parametrize("value", ["false", "0", "f", "F", "FALSE", "False"])
async def test_list_sessions_active_false_keeps_revoked_or_expired(kratos, value):
    s = mixed_states(kratos.fake)
    r = await kratos.admin.get("/admin/sessions", params={"active": value})
    assert r.status_code == 200
    assert ids(r) == [s["expired"], s["revoked"]]
    assert [row["active"] for row in r.json()] == [False, False]


async def test_list_sessions_without_active_returns_all_states(kratos):
    s = mixed_states(kratos.fake)
    r = await kratos.admin.get("/admin/sessions")
    assert r.status_code == 200
    assert ids(r) == [s["disabled_owner"], s["expired"], s["revoked"], s["live"]]
    # Without the identity loaded, a disabled identity does not make the session inactive.
    assert [row["active"] for row in r.json()] == [True, False, False, True]


async def test_list_sessions_identity_state_affects_active_only_when_expanded(kratos):
    s = mixed_states(kratos.fake)
    r = await kratos.admin.get("/admin/sessions", params={"active": "true", "expand": "identity"})
    assert r.status_code == 200
    rows = {row["id"]: row for row in r.json()}
    assert set(rows) == {s["disabled_owner"], s["live"]}
    assert rows[s["disabled_owner"]]["active"] is False
    assert rows[s["disabled_owner"]]["identity"]["state"] == "inactive"
    assert rows[s["live"]]["active"] is True


@pytest.mark.parametrize("value", ["yes", "2", "tRUE", " true"])
async def test_list_sessions_invalid_active_is_400(kratos, value):
    r = await kratos.admin.get("/admin/sessions", params={"active": value})
    assert_error(r, bad_request("could not parse parameter active"))


async def test_list_sessions_empty_active_counts_as_absent(kratos):
    s = mixed_states(kratos.fake)
    r = await kratos.admin.get("/admin/sessions?active=")
    assert r.status_code == 200
    assert ids(r) == [s["disabled_owner"], s["expired"], s["revoked"], s["live"]]


async def test_list_sessions_checks_active_before_page_size(kratos):
    r = await kratos.admin.get("/admin/sessions?page_size=x&active=maybe&expand=nope")
    assert_error(r, bad_request("could not parse parameter active"))
    r = await kratos.admin.get("/admin/sessions?page_size=x&expand=nope")
    assert_error(r, bad_request("could not parse parameter page_size"))


async def test_list_sessions_ignores_legacy_page_and_per_page(kratos):
    newest_first = make_sessions(kratos.fake, 3)
    r = await kratos.admin.get("/admin/sessions", params={"page": "2", "per_page": "1"})
    assert r.status_code == 200
    assert ids(r) == newest_first
    assert r.headers["link"] == (
        "</admin/sessions?page=2&page_size=250"
        f'&page_token={quote_plus(FIRST_TOKEN)}&per_page=1>; rel="first"'
    )


# -- GET /admin/sessions/{id} (§4.6) -------------------------------------------------------------
async def test_get_session_without_expand_has_null_identity_and_empty_devices(kratos):
    created = kratos.fake.login("alice@example.com")
    r = await kratos.admin.get(f"/admin/sessions/{created.id}")
    assert r.status_code == 200
    assert r.headers["content-type"] == SUCCESS_TYPE
    body = r.json()
    assert list(body) == SESSION_KEYS
    assert body["id"] == created.id
    assert body["active"] is True
    assert body["identity"] is None
    assert body["devices"] == []
    assert body["authenticator_assurance_level"] == "aal1"
    assert "x-kratos-authenticated-identity-id" not in r.headers


async def test_get_session_expand_identity_gives_full_identity(kratos):
    created = kratos.fake.login("alice@example.com")
    r = await kratos.admin.get(f"/admin/sessions/{created.id}", params={"expand": "identity"})
    assert r.status_code == 200
    body = r.json()
    identity = body["identity"]
    assert identity["id"] == created.identity_id
    assert identity["schema_url"] == DEFAULT_SCHEMA_URL
    assert [a["value"] for a in identity["verifiable_addresses"]] == ["alice@example.com"]
    assert [a["value"] for a in identity["recovery_addresses"]] == ["alice@example.com"]
    assert identity["organization_id"] is None
    assert "credentials" not in identity
    assert "metadata_admin" not in identity
    assert body["devices"] == []


async def test_get_session_expand_devices_lists_devices(kratos):
    alice = kratos.fake.create_identity(email="alice@example.com")
    sid = kratos.fake.create_session(
        alice, devices=[{"ip_address": "198.51.100.2", "user_agent": "curl/8"}]
    ).id
    r = await kratos.admin.get(f"/admin/sessions/{sid}", params={"expand": "Devices"})
    assert r.status_code == 200
    body = r.json()
    assert body["identity"] is None
    [device] = body["devices"]
    assert (device["ip_address"], device["user_agent"], device["location"]) == (
        "198.51.100.2",
        "curl/8",
        "",
    )


@pytest.mark.parametrize("kill", ["revoke", "expire"])
async def test_get_session_returns_revoked_and_expired_as_inactive(kratos, kill):
    created = kratos.fake.login("alice@example.com")
    if kill == "revoke":
        kratos.fake.revoke_session(created.id)
    else:
        kratos.fake.expire_session(created.id)
        kratos.fake.advance_clock(1)
    r = await kratos.admin.get(f"/admin/sessions/{created.id}")
    assert r.status_code == 200
    assert r.json()["id"] == created.id
    assert r.json()["active"] is False


async def test_get_session_identity_state_counts_only_when_expanded(kratos):
    created = kratos.fake.login("alice@example.com")
    kratos.fake.set_identity_state(created.identity_id, "inactive")
    plain = await kratos.admin.get(f"/admin/sessions/{created.id}")
    expanded = await kratos.admin.get(f"/admin/sessions/{created.id}?expand=identity")
    assert plain.json()["active"] is True
    assert expanded.json()["active"] is False


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not-a-uuid", 'uuid: incorrect UUID length 10 in string "not-a-uuid"'),
        (
            "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",
            # gofrs/uuid v4.4.0 codec.go:47,95-96: a non-hex digit is errInvalidFormat
            "uuid: invalid UUID format",
        ),
    ],
)
async def test_get_session_bad_uuid_is_400_with_gofrs_message(kratos, raw, message):
    r = await kratos.admin.get(f"/admin/sessions/{raw}")
    assert_error(r, bad_request(message))


async def test_get_session_bad_expand_is_400(kratos):
    created = kratos.fake.login("alice@example.com")
    r = await kratos.admin.get(f"/admin/sessions/{created.id}", params={"expand": "everything"})
    assert_error(r, bad_request(reason="Could not parse expand option: everything"))


async def test_get_session_unknown_is_404_without_reason(kratos):
    r = await kratos.admin.get(f"/admin/sessions/{uuid.uuid4()}")
    assert_error(r, NOT_FOUND_DB)


async def test_get_session_whoami_redirects_to_public_whoami(kratos):
    r = await kratos.admin.get("/admin/sessions/whoami")
    assert r.status_code == 307
    assert r.headers["location"] == f"{PUBLIC_URL}/sessions/whoami"
    # x/redir/port_redirect.go:39 is Go's http.Redirect: on GET, a small HTML body
    location = f"{PUBLIC_URL}/sessions/whoami"
    assert r.content == f'<a href="{location}">Temporary Redirect</a>.\n\n'.encode()
    assert r.headers["content-type"] == "text/html; charset=utf-8"


# -- DELETE /admin/sessions/{id} (§4.7) ----------------------------------------------------------
async def test_disable_session_is_204_with_json_content_type_and_empty_body(kratos):
    created = kratos.fake.login("alice@example.com")
    r = await kratos.admin.delete(f"/admin/sessions/{created.id}")
    assert r.status_code == 204
    assert r.content == b""
    assert r.headers["content-type"] == SUCCESS_TYPE


async def test_disable_session_revokes_any_owner_and_keeps_row(kratos):
    alice = kratos.fake.login("alice@example.com")
    bob = kratos.fake.login("bob@example.com")
    r = await kratos.admin.delete(f"/admin/sessions/{bob.id}")
    assert r.status_code == 204
    assert kratos.fake.session(bob.id).active is False
    assert kratos.fake.is_session_active(bob.id) is False
    assert kratos.fake.is_session_active(alice.id) is True
    row = await kratos.admin.get(f"/admin/sessions/{bob.id}")
    assert row.status_code == 200
    assert row.json()["active"] is False
    who = await kratos.public.get("/sessions/whoami", headers={"X-Session-Token": bob.token})
    assert who.status_code == 401


async def test_disable_session_already_revoked_is_204(kratos):
    created = kratos.fake.login("alice@example.com")
    kratos.fake.revoke_session(created.id)
    r = await kratos.admin.delete(f"/admin/sessions/{created.id}")
    assert r.status_code == 204
    assert r.content == b""
    again = await kratos.admin.delete(f"/admin/sessions/{created.id}")
    assert again.status_code == 204


async def test_disable_session_unknown_is_404(kratos):
    r = await kratos.admin.delete(f"/admin/sessions/{uuid.uuid4()}")
    assert_error(r, NOT_FOUND_DB)


async def test_disable_session_bad_uuid_is_400(kratos):
    r = await kratos.admin.delete("/admin/sessions/123")
    assert_error(r, bad_request('uuid: incorrect UUID length 3 in string "123"'))


# -- GET /admin/identities/{id}/sessions (§4.8, §8.1) ---------------------------------------------
async def test_list_identity_sessions_includes_current_and_inactive(kratos):
    s = mixed_states(kratos.fake)
    current = kratos.fake.create_session(s["alice"])
    who = await kratos.public.get("/sessions/whoami", headers={"X-Session-Token": current.token})
    assert who.status_code == 200
    path = f"/admin/identities/{s['alice']}/sessions"
    r = await kratos.admin.get(path)
    assert r.status_code == 200
    assert ids(r) == [current.id, s["expired"], s["revoked"], s["live"]]
    assert [row["active"] for row in r.json()] == [True, False, False, True]
    assert r.headers["x-total-count"] == "4"
    assert r.headers["link"] == migration_link(path, 0, 4, "first")


async def test_list_identity_sessions_embed_identity_row_and_devices(kratos):
    created = kratos.fake.login("alice@example.com")
    r = await kratos.admin.get(f"/admin/identities/{created.identity_id}/sessions")
    assert r.status_code == 200
    [row] = r.json()
    assert list(row) == SESSION_KEYS
    identity = row["identity"]
    assert identity["id"] == created.identity_id
    assert identity["schema_url"] == ""
    assert "verifiable_addresses" not in identity
    assert "recovery_addresses" not in identity
    assert len(row["devices"]) == 1
    assert row["devices"][0]["ip_address"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", ["live"]),
        ("1", ["live"]),
        ("false", ["expired", "revoked"]),
        ("f", ["expired", "revoked"]),
    ],
)
async def test_list_identity_sessions_active_filter(kratos, value, expected):
    s = mixed_states(kratos.fake)
    path = f"/admin/identities/{s['alice']}/sessions"
    r = await kratos.admin.get(path, params={"active": value})
    assert r.status_code == 200
    assert ids(r) == [s[name] for name in expected]
    assert r.headers["x-total-count"] == str(len(expected))


async def test_list_identity_sessions_active_filter_ignores_identity_state(kratos):
    s = mixed_states(kratos.fake)
    r = await kratos.admin.get(f"/admin/identities/{s['carol']}/sessions?active=true")
    assert r.status_code == 200
    assert ids(r) == [s["disabled_owner"]]
    # The identity is loaded here, so the serialised `active` reflects the disabled identity.
    assert r.json()[0]["active"] is False


async def test_list_identity_sessions_paginates_with_migration_links(kratos):
    alice = kratos.fake.create_identity(email="alice@example.com")
    newest_first = [kratos.fake.create_session(alice).id for _ in range(5)][::-1]
    path = f"/admin/identities/{alice}/sessions"
    r = await kratos.admin.get(path, params={"page_size": "2"})
    assert r.status_code == 200
    assert ids(r) == newest_first[:2]
    assert r.headers["x-total-count"] == "5"
    assert r.headers["link"] == ",".join(
        [migration_link(path, 2, 2, "next"), migration_link(path, 4, 2, "last")]
    )
    assert r.headers["link"].startswith(f"</admin/identities/{alice}/sessions?")


async def test_list_identity_sessions_unknown_identity_is_200_empty(kratos):
    kratos.fake.login("alice@example.com")
    iid = str(uuid.uuid4())
    path = f"/admin/identities/{iid}/sessions"
    r = await kratos.admin.get(path)
    assert r.status_code == 200
    assert r.content == b"[]\n"  # Go's json.Encoder ends with a newline
    assert r.headers["x-total-count"] == "0"
    assert r.headers["link"] == ",".join(
        [
            migration_link(path, 0, 250, "first"),
            migration_link(path, 250, 250, "next"),
            migration_link(path, -250, 250, "prev"),
        ]
    )


async def test_list_identity_sessions_bad_uuid_is_400(kratos):
    r = await kratos.admin.get("/admin/identities/alice/sessions")
    assert_error(r, bad_request('uuid: incorrect UUID length 5 in string "alice"'))


async def test_list_identity_sessions_bad_active_is_400(kratos):
    created = kratos.fake.login("alice@example.com")
    r = await kratos.admin.get(
        f"/admin/identities/{created.identity_id}/sessions", params={"active": "maybe"}
    )
    assert_error(r, bad_request("could not parse parameter active"))


async def test_list_identity_sessions_empty_active_counts_as_absent(kratos):
    s = mixed_states(kratos.fake)
    r = await kratos.admin.get(f"/admin/identities/{s['alice']}/sessions?active=")
    assert r.status_code == 200
    assert ids(r) == [s["expired"], s["revoked"], s["live"]]


async def test_list_identity_sessions_checks_uuid_before_active(kratos):
    r = await kratos.admin.get("/admin/identities/nope/sessions?active=maybe")
    assert_error(r, bad_request('uuid: incorrect UUID length 4 in string "nope"'))


# -- DELETE /admin/identities/{id}/sessions (§4.9) ------------------------------------------------
async def test_delete_identity_sessions_is_204_without_content_type(kratos):
    created = kratos.fake.login("alice@example.com")
    r = await kratos.admin.delete(f"/admin/identities/{created.identity_id}/sessions")
    assert r.status_code == 204
    assert r.content == b""
    assert "content-type" not in r.headers


async def test_delete_identity_sessions_hard_deletes_every_row(kratos):
    first = kratos.fake.login("alice@example.com")
    second = kratos.fake.login("alice@example.com")
    kratos.fake.revoke_session(second.id)
    bob = kratos.fake.login("bob@example.com")
    r = await kratos.admin.delete(f"/admin/identities/{first.identity_id}/sessions")
    assert r.status_code == 204
    for gone in (first, second):
        who = await kratos.public.get("/sessions/whoami", headers={"X-Session-Token": gone.token})
        assert who.status_code == 401
        row = await kratos.admin.get(f"/admin/sessions/{gone.id}")
        assert_error(row, NOT_FOUND_DB)
    listed = await kratos.admin.get(f"/admin/identities/{first.identity_id}/sessions")
    assert listed.json() == []
    assert kratos.fake.is_session_active(bob.id) is True


async def test_delete_identity_sessions_unknown_identity_is_404(kratos):
    kratos.fake.login("alice@example.com")
    r = await kratos.admin.delete(f"/admin/identities/{uuid.uuid4()}/sessions")
    assert_error(r, NOT_FOUND_DB)


async def test_delete_identity_sessions_with_zero_sessions_is_404(kratos):
    alice = kratos.fake.create_identity(email="alice@example.com")
    r = await kratos.admin.delete(f"/admin/identities/{alice}/sessions")
    assert_error(r, NOT_FOUND_DB)


async def test_delete_identity_sessions_twice_second_is_404(kratos):
    created = kratos.fake.login("alice@example.com")
    path = f"/admin/identities/{created.identity_id}/sessions"
    assert (await kratos.admin.delete(path)).status_code == 204
    assert_error(await kratos.admin.delete(path), NOT_FOUND_DB)


async def test_delete_identity_sessions_bad_uuid_is_400(kratos):
    r = await kratos.admin.delete("/admin/identities/xyz/sessions")
    assert_error(r, bad_request('uuid: incorrect UUID length 3 in string "xyz"'))


# -- PATCH /admin/sessions/{id}/extend (§4.10) ----------------------------------------------------
async def test_extend_session_sets_expiry_to_now_plus_lifespan(kratos):
    created = kratos.fake.login("alice@example.com")
    before = await kratos.admin.get(f"/admin/sessions/{created.id}")
    old_expiry = parse_time(before.json()["expires_at"])
    kratos.fake.advance_clock(3600)
    r = await kratos.admin.patch(f"/admin/sessions/{created.id}/extend")
    assert r.status_code == 200
    assert r.headers["content-type"] == SUCCESS_TYPE
    new_expiry = parse_time(r.json()["expires_at"])
    moved = (new_expiry - old_expiry).total_seconds()
    assert 3600 <= moved < 3605
    assert new_expiry == kratos.fake.session(created.id).expires_at
    after = await kratos.admin.get(f"/admin/sessions/{created.id}")
    assert after.json()["expires_at"] == r.json()["expires_at"]


async def test_extend_session_200_body_has_full_identity_and_empty_devices(kratos):
    created = kratos.fake.login("alice@example.com")
    r = await kratos.admin.patch(f"/admin/sessions/{created.id}/extend")
    assert r.status_code == 200
    body = r.json()
    assert list(body) == SESSION_KEYS
    assert body["id"] == created.id
    assert body["active"] is True
    assert body["identity"]["id"] == created.identity_id
    assert body["identity"]["schema_url"] == DEFAULT_SCHEMA_URL
    assert [a["value"] for a in body["identity"]["verifiable_addresses"]] == ["alice@example.com"]
    assert body["devices"] == []


async def test_extend_revoked_session_stays_inactive(kratos):
    created = kratos.fake.login("alice@example.com")
    kratos.fake.revoke_session(created.id)
    r = await kratos.admin.patch(f"/admin/sessions/{created.id}/extend")
    assert r.status_code == 200
    assert r.json()["active"] is False
    assert kratos.fake.is_session_active(created.id) is False
    who = await kratos.public.get("/sessions/whoami", headers={"X-Session-Token": created.token})
    assert who.status_code == 401


async def test_extend_expired_never_revoked_session_becomes_active(kratos):
    created = kratos.fake.login("alice@example.com")
    kratos.fake.expire_session(created.id)
    kratos.fake.advance_clock(60)
    headers = {"X-Session-Token": created.token}
    assert (await kratos.public.get("/sessions/whoami", headers=headers)).status_code == 401
    r = await kratos.admin.patch(f"/admin/sessions/{created.id}/extend")
    assert r.status_code == 200
    assert r.json()["active"] is True
    who = await kratos.public.get("/sessions/whoami", headers=headers)
    assert who.status_code == 200
    assert who.json()["id"] == created.id


async def test_extend_with_faster_session_extend_is_204(make_kratos):
    k = make_kratos(faster_session_extend=True)
    created = k.fake.login("alice@example.com")
    old_expiry = k.fake.session(created.id).expires_at
    k.fake.advance_clock(3600)
    r = await k.admin.patch(f"/admin/sessions/{created.id}/extend")
    assert r.status_code == 204
    assert r.content == b""
    moved = (k.fake.session(created.id).expires_at - old_expiry).total_seconds()
    assert 3600 <= moved < 3605


async def test_extend_unknown_session_is_404(kratos):
    r = await kratos.admin.patch(f"/admin/sessions/{uuid.uuid4()}/extend")
    assert_error(r, NOT_FOUND_DB)


async def test_extend_bad_uuid_is_400(kratos):
    r = await kratos.admin.patch("/admin/sessions/abc/extend")
    assert_error(r, bad_request('uuid: incorrect UUID length 3 in string "abc"'))


# -- ports (§1) -----------------------------------------------------------------------------------
async def test_admin_port_adds_admin_prefix_when_missing(kratos):
    created = kratos.fake.login("alice@example.com")
    prefixed = await kratos.admin.get(f"/admin/sessions/{created.id}?expand=identity")
    # `/sessions/{id}` is not a GET route in the spec, so this one response bypasses the spec
    # check; it must equal the checked `/admin/...` answer byte for byte.
    transport = httpx.ASGITransport(app=kratos.fake.admin_app)
    async with httpx.AsyncClient(transport=transport, base_url=ADMIN_URL) as raw:
        r = await raw.get(f"/sessions/{created.id}?expand=identity")
    assert r.status_code == 200
    assert r.content == prefixed.content
    assert r.headers["content-type"] == SUCCESS_TYPE
    assert r.headers["cache-control"] == NO_CACHE


async def test_admin_port_lists_sessions_without_prefix_and_links_with_prefix(kratos):
    newest_first = make_sessions(kratos.fake, 2)
    transport = httpx.ASGITransport(app=kratos.fake.admin_app)
    async with httpx.AsyncClient(transport=transport, base_url=ADMIN_URL) as raw:
        r = await raw.get("/sessions")
    assert r.status_code == 200
    assert ids(r) == newest_first
    assert r.headers["link"] == (
        f'</admin/sessions?page_size=250&page_token={quote_plus(FIRST_TOKEN)}>; rel="first"'
    )


async def test_admin_delete_all_sessions_redirects_to_public(kratos):
    created = kratos.fake.login("alice@example.com")
    r = await kratos.admin.delete("/admin/sessions")
    assert r.status_code == 307
    assert r.headers["location"] == f"{PUBLIC_URL}/sessions"
    assert r.content == b""
    assert kratos.fake.is_session_active(created.id) is True


async def test_public_delete_identity_sessions_redirects_to_admin(kratos):
    created = kratos.fake.login("alice@example.com")
    r = await kratos.public.delete(f"/identities/{created.identity_id}/sessions")
    assert r.status_code == 307
    assert r.headers["location"] == (f"{ADMIN_URL}/admin/identities/{created.identity_id}/sessions")
    assert r.content == b""
    assert kratos.fake.is_session_active(created.id) is True


# -- one port with an API key (§1, Ory Network) ---------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "ory_pat_test"},
        {"Authorization": "Basic ory_pat_test"},
    ],
)
async def test_one_port_admin_without_valid_api_key_is_401(make_kratos, headers):
    k = make_kratos(api_key="ory_pat_test")
    k.fake.login("alice@example.com")
    r = await k.admin.get("/admin/sessions", headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/json"
    assert "ory-error-id" in r.headers
    error = r.json()["error"]
    assert (error["code"], error["status"], error["message"]) == (
        401,
        "Unauthorized",
        "The request could not be authorized",
    )
    assert list(error)[:2] == ["code", "status"]


async def test_one_port_admin_delete_without_api_key_changes_nothing(make_kratos):
    k = make_kratos(api_key="ory_pat_test")
    created = k.fake.login("alice@example.com")
    r = await k.admin.delete(f"/admin/sessions/{created.id}")
    assert r.status_code == 401
    assert k.fake.is_session_active(created.id) is True


async def test_one_port_admin_with_api_key_is_200_on_public_url(make_kratos):
    k = make_kratos(api_key="ory_pat_test")
    created = k.fake.login("alice@example.com")
    assert k.fake.admin_url == k.fake.public_url == PUBLIC_URL
    assert str(k.admin.base_url) == str(k.public.base_url)
    auth = {"Authorization": "Bearer ory_pat_test"}
    r = await k.admin.get("/admin/sessions", headers=auth)
    assert r.status_code == 200
    assert ids(r) == [created.id]
    one = await k.admin.get(f"/admin/sessions/{created.id}", headers=auth)
    assert one.status_code == 200
    assert one.json()["id"] == created.id


# -- admin headers (§2) ---------------------------------------------------------------------------
GET_CASES = [
    ("/admin/sessions", 200),
    ("/admin/sessions?expand=nope", 400),
    ("/admin/sessions/{sid}", 200),
    ("/admin/sessions/{unknown}", 404),
    ("/admin/sessions/not-a-uuid", 400),
    ("/admin/sessions/whoami", 307),
    ("/admin/identities/{iid}/sessions", 200),
    ("/admin/identities/{iid}/sessions?active=maybe", 400),
]


@pytest.mark.parametrize(("template", "status"), GET_CASES)
async def test_admin_get_has_cache_control_and_no_vary(kratos, template, status):
    created = kratos.fake.login("alice@example.com")
    path = template.format(sid=created.id, iid=created.identity_id, unknown=uuid.uuid4())
    r = await kratos.admin.get(path)
    assert r.status_code == status
    assert r.headers.get_list("cache-control") == [NO_CACHE]
    assert "vary" not in r.headers


NON_GET_CASES = [
    ("DELETE", "/admin/sessions/{sid}", 204),
    ("DELETE", "/admin/sessions/{unknown}", 404),
    ("PATCH", "/admin/sessions/{sid}/extend", 200),
    ("PATCH", "/admin/sessions/{unknown}/extend", 404),
    ("PATCH", "/admin/sessions/bad/extend", 400),
    ("DELETE", "/admin/identities/{iid}/sessions", 204),
    ("DELETE", "/admin/sessions", 307),
]


@pytest.mark.parametrize(("method", "template", "status"), NON_GET_CASES)
async def test_admin_non_get_has_no_cache_control_and_no_vary(kratos, method, template, status):
    created = kratos.fake.login("alice@example.com")
    path = template.format(sid=created.id, iid=created.identity_id, unknown=uuid.uuid4())
    r = await kratos.admin.request(method, path)
    assert r.status_code == status
    assert "cache-control" not in r.headers
    assert "vary" not in r.headers
