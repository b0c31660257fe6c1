"""The fake's self-service session endpoints against CONTRACT §4.2-4.4, §8.1, §2 and §3.1.

`GET /sessions` (listMySessions), `DELETE /sessions/{id}` (disableMySession) and
`DELETE /sessions` (disableMyOtherSessions). Every response also passes the spec/SDK check of
the `kratos` fixtures.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest

from spec_check import check_response

NO_CACHE = "private, no-cache, no-store, must-revalidate"
JSON_UTF8 = "application/json; charset=utf-8"
ERROR_TYPE = "application/json"
NO_COOKIE_401 = {
    "error": {
        "code": 401,
        "status": "Unauthorized",
        "reason": "No valid session cookie found.",
        "message": "The request could not be authorized",
    }
}
AAL_REASON = (
    "An active session was found but it does not fulfill the requested Authenticator "
    "Assurance Level. Please verify yourself with a second factor to resolve this issue."
)
# {"offset":"<n>","v":2}, unpadded base64url (CONTRACT §8.1)
TOKEN_0 = "eyJvZmZzZXQiOiIwIiwidiI6Mn0"
TOKEN_2 = "eyJvZmZzZXQiOiIyIiwidiI6Mn0"
TOKEN_4 = "eyJvZmZzZXQiOiI0IiwidiI6Mn0"
TOKEN_250 = "eyJvZmZzZXQiOiIyNTAiLCJ2IjoyfQ"
TOKEN_MINUS_250 = "eyJvZmZzZXQiOiItMjUwIiwidiI6Mn0"


def tok(created) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"X-Session-Token": created.token}


def ids(response) -> list[str]:  # type: ignore[no-untyped-def]
    return [s["id"] for s in response.json()]


def seed_others(fake, n: int):  # type: ignore[no-untyped-def]
    """Alice's current session plus `n` other active sessions, returned newest first."""
    alice = fake.create_identity(email="alice@example.com")
    current = fake.create_session(alice)
    others = [fake.create_session(alice) for _ in range(n)]
    return current, [s.id for s in reversed(others)]


# -- GET /sessions: what is listed -------------------------------------------------------------


async def test_list_returns_only_callers_other_active_sessions(kratos):
    fake = kratos.fake
    alice = fake.create_identity(email="alice@example.com")
    bob = fake.create_identity(email="bob@example.com")
    old = fake.create_session(alice)
    current = fake.create_session(alice)
    revoked = fake.create_session(alice)
    expired = fake.create_session(alice)
    bobs = fake.create_session(bob)
    new = fake.create_session(alice)
    fake.revoke_session(revoked.id)
    fake.expire_session(expired.id)

    r = await kratos.public.get("/sessions", headers=tok(current))

    assert r.status_code == 200
    assert ids(r) == [new.id, old.id]
    assert r.headers["x-total-count"] == "2"
    assert r.headers["content-type"] == JSON_UTF8
    assert [s["active"] for s in r.json()] == [True, True]
    assert bobs.id not in ids(r)


async def test_list_excludes_session_expired_by_clock(kratos):
    fake = kratos.fake
    alice = fake.create_identity(email="alice@example.com")
    short = fake.create_session(alice, expires_in=timedelta(minutes=5))
    current = fake.create_session(alice)
    assert ids(await kratos.public.get("/sessions", headers=tok(current))) == [short.id]

    fake.advance_clock(301)

    r = await kratos.public.get("/sessions", headers=tok(current))
    assert r.status_code == 200
    assert r.json() == []
    assert r.headers["x-total-count"] == "0"


async def test_list_is_newest_first_by_created_at(kratos):
    fake = kratos.fake
    alice = fake.create_identity(email="alice@example.com")
    created = [fake.create_session(alice) for _ in range(4)]
    current = created[1]

    r = await kratos.public.get("/sessions", headers=tok(current))

    assert ids(r) == [created[3].id, created[2].id, created[0].id]
    issued = [s["issued_at"] for s in r.json()]
    assert issued == sorted(issued, reverse=True)
    assert len(set(issued)) == 3


async def test_list_embeds_identity_row_without_addresses_and_empty_schema_url(kratos):
    fake = kratos.fake
    alice = fake.create_identity(email="alice@example.com")
    other = fake.create_session(alice)
    current = fake.create_session(alice)

    r = await kratos.public.get("/sessions", headers=tok(current))

    [item] = r.json()
    assert item["id"] == other.id
    ident = item["identity"]
    assert list(ident) == [
        "id",
        "schema_id",
        "schema_url",
        "state",
        "state_changed_at",
        "traits",
        "metadata_public",
        "created_at",
        "updated_at",
        "organization_id",
    ]
    assert ident["id"] == alice
    assert ident["schema_url"] == ""
    assert ident["schema_id"] == "default"
    assert ident["state"] == "active"
    assert ident["traits"] == {"email": "alice@example.com"}
    assert ident["metadata_public"] is None
    assert ident["organization_id"] is None
    assert "verifiable_addresses" not in ident
    assert "recovery_addresses" not in ident
    # whoami loads the full identity for the same person (CONTRACT §3.1)
    who = (await kratos.public.get("/sessions/whoami", headers=tok(current))).json()
    assert who["identity"]["schema_url"] != ""
    assert [a["value"] for a in who["identity"]["verifiable_addresses"]] == ["alice@example.com"]


async def test_list_session_shape_and_devices(kratos):
    fake = kratos.fake
    alice = fake.create_identity(email="alice@example.com")
    device = {"ip_address": "203.0.113.7", "user_agent": "Firefox/128", "location": "Berlin, DE"}
    other = fake.create_session(alice, devices=[device])
    current = fake.create_session(alice)

    r = await kratos.public.get("/sessions", headers=tok(current))

    [item] = r.json()
    assert list(item) == [
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
    assert item["id"] == other.id
    assert item["active"] is True
    assert item["authenticator_assurance_level"] == "aal1"
    assert [(m["method"], m["aal"]) for m in item["authentication_methods"]] == [
        ("password", "aal1")
    ]
    [dev] = item["devices"]
    assert list(dev) == ["id", "ip_address", "user_agent", "location"]
    assert uuid.UUID(dev["id"])
    assert (dev["ip_address"], dev["user_agent"], dev["location"]) == (
        "203.0.113.7",
        "Firefox/128",
        "Berlin, DE",
    )
    assert other.token not in r.text
    assert other.logout_token not in r.text


async def test_list_empty_is_json_array(kratos):
    current = kratos.fake.login("alice@example.com")
    r = await kratos.public.get("/sessions", headers=tok(current))
    assert r.status_code == 200
    assert r.content == b"[]\n"  # Go's json.Encoder ends with a newline
    assert r.headers["x-total-count"] == "0"


async def test_list_works_with_cookie(kratos):
    fake = kratos.fake
    current, others = seed_others(fake, 2)
    r = await kratos.public.get("/sessions", headers={"Cookie": fake.cookie_header(current)})
    assert r.status_code == 200
    assert ids(r) == others
    assert "set-cookie" not in r.headers


# -- GET /sessions: errors ---------------------------------------------------------------------


@pytest.mark.parametrize("state", ["missing", "unknown", "revoked", "expired", "disabled"])
async def test_list_401_without_valid_session(kratos, state):
    fake = kratos.fake
    current = fake.login("alice@example.com")
    headers = tok(current)
    if state == "missing":
        headers = {}
    elif state == "unknown":
        headers = {"X-Session-Token": "ory_st_" + "x" * 32}
    elif state == "revoked":
        fake.revoke_session(current.id)
    elif state == "expired":
        fake.expire_session(current.id)
    else:
        fake.set_identity_state(current.identity_id, "inactive")

    r = await kratos.public.get("/sessions", headers=headers)

    assert r.status_code == 401
    assert r.json() == NO_COOKIE_401
    assert "id" not in r.json()["error"]
    assert r.headers["content-type"] == ERROR_TYPE
    assert r.headers["ory-error-id"] == ""
    assert r.headers["cache-control"] == NO_CACHE
    assert "x-total-count" not in r.headers
    assert "link" not in r.headers


async def test_list_403_when_aal2_required(kratos):
    fake = kratos.fake
    alice = fake.create_identity(email="alice@example.com", available_aal="aal2")
    fake.create_session(alice, aal="aal2")
    current = fake.create_session(alice, aal="aal1")

    r = await kratos.public.get("/sessions", headers=tok(current))

    url = f"{fake.public_url}/self-service/login/browser?aal=aal2"
    assert r.status_code == 403
    assert r.json() == {
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
    assert r.headers["ory-error-id"] == "session_aal2_required"
    assert r.headers["content-type"] == ERROR_TYPE
    assert r.headers["cache-control"] == NO_CACHE
    assert "x-total-count" not in r.headers


async def test_list_200_for_aal2_session_of_2fa_identity(kratos):
    fake = kratos.fake
    alice = fake.create_identity(email="alice@example.com", available_aal="aal2")
    other = fake.create_session(alice, aal="aal1")
    current = fake.create_session(alice, aal="aal2")

    r = await kratos.public.get("/sessions", headers=tok(current))

    assert r.status_code == 200
    assert ids(r) == [other.id]


async def test_list_aal1_rule_accepts_aal1_session(make_kratos):
    kratos = make_kratos(required_aal="aal1")
    fake = kratos.fake
    alice = fake.create_identity(email="alice@example.com", available_aal="aal2")
    current = fake.create_session(alice, aal="aal1")
    r = await kratos.public.get("/sessions", headers=tok(current))
    assert r.status_code == 200
    assert r.json() == []


# -- GET /sessions: pagination (CONTRACT §4.2, §8.1) -------------------------------------------


async def test_list_link_header_matches_contract_example(kratos):
    current, others = seed_others(kratos.fake, 5)

    r = await kratos.public.get("/sessions?page_size=2", headers=tok(current))

    assert r.status_code == 200
    assert r.headers["x-total-count"] == "5"
    assert r.headers["link"] == (
        f'</sessions?page=1&page_size=2&page_token={TOKEN_2}&per_page=2>; rel="next",'
        f'</sessions?page=2&page_size=2&page_token={TOKEN_4}&per_page=2>; rel="last"'
    )
    assert ids(r) == others[:2]


async def test_list_x_total_count_is_filtered_total_not_page_length(kratos):
    fake = kratos.fake
    current, others = seed_others(fake, 5)
    fake.revoke_session(others[0])
    r = await kratos.public.get("/sessions?per_page=1", headers=tok(current))
    assert r.headers["x-total-count"] == "4"
    assert ids(r) == others[1:2]


async def test_defect_3883_page_0_and_1_are_the_same(kratos):
    current, others = seed_others(kratos.fake, 5)

    p0 = await kratos.public.get("/sessions?page=0&per_page=2", headers=tok(current))
    p1 = await kratos.public.get("/sessions?page=1&per_page=2", headers=tok(current))
    p2 = await kratos.public.get("/sessions?page=2&per_page=2", headers=tok(current))
    p3 = await kratos.public.get("/sessions?page=3&per_page=2", headers=tok(current))

    assert ids(p0) == ids(p1) == others[0:2]
    assert ids(p2) == others[2:4]
    assert ids(p3) == others[4:5]


async def test_defect_3883_following_next_returns_first_page_again(kratos):
    current, others = seed_others(kratos.fake, 5)

    first = await kratos.public.get("/sessions?page_size=2", headers=tok(current))
    next_url = first.headers["link"].split(",")[0]
    assert next_url.endswith('; rel="next"')
    again = await kratos.public.get(next_url[1 : next_url.index(">")], headers=tok(current))

    assert ids(first) == others[0:2]
    assert ids(again) == others[0:2]


async def test_without_defect_next_links_walk_distinct_pages(make_kratos):
    kratos = make_kratos(pagination_defect=False)
    current, others = seed_others(kratos.fake, 5)

    seen: list[list[str]] = []
    links: list[str] = []
    url: str | None = "/sessions?page_size=2"
    while url is not None:
        r = await kratos.public.get(url, headers=tok(current))
        seen.append(ids(r))
        links.append(r.headers["link"])
        rels = {part.rsplit("; ", 1)[1]: part.split(">")[0][1:] for part in links[-1].split(",")}
        url = rels.get('rel="next"')

    assert seen == [others[0:2], others[2:4], others[4:5]]
    assert links[1] == (
        f'</sessions?page=0&page_size=2&page_token={TOKEN_0}&per_page=2>; rel="first",'
        f'</sessions?page=2&page_size=2&page_token={TOKEN_4}&per_page=2>; rel="next",'
        f'</sessions?page=0&page_size=2&page_token={TOKEN_0}&per_page=2>; rel="prev",'
        f'</sessions?page=2&page_size=2&page_token={TOKEN_4}&per_page=2>; rel="last"'
    )
    assert links[2] == (
        f'</sessions?page=0&page_size=2&page_token={TOKEN_0}&per_page=2>; rel="first",'
        f'</sessions?page=1&page_size=2&page_token={TOKEN_2}&per_page=2>; rel="prev"'
    )


async def test_without_defect_page_0_and_1_differ(make_kratos):
    kratos = make_kratos(pagination_defect=False)
    current, others = seed_others(kratos.fake, 3)
    p0 = await kratos.public.get("/sessions?page=0&per_page=2", headers=tok(current))
    p1 = await kratos.public.get("/sessions?page=1&per_page=2", headers=tok(current))
    assert ids(p0) == others[0:2]
    assert ids(p1) == others[2:3]


async def test_page_size_above_1000_is_clamped_and_returns_all(kratos):
    current, others = seed_others(kratos.fake, 3)

    r = await kratos.public.get("/sessions?page_size=2000", headers=tok(current))

    assert r.status_code == 200
    assert ids(r) == others
    # pp is 1000 and total <= pp: one `first` link whose page size is the total
    assert r.headers["link"] == (
        f'</sessions?page=0&page_size=3&page_token={TOKEN_0}&per_page=3>; rel="first"'
    )


@pytest.mark.parametrize("size", ["0", "-1", "-50"])
async def test_page_size_below_1_becomes_1(kratos, size):
    current, others = seed_others(kratos.fake, 3)

    r = await kratos.public.get(f"/sessions?page_size={size}", headers=tok(current))

    assert r.status_code == 200
    assert ids(r) == others[:1]
    assert r.headers["x-total-count"] == "3"
    token_1 = "eyJvZmZzZXQiOiIxIiwidiI6Mn0"
    token_2 = TOKEN_2
    assert r.headers["link"] == (
        f"</sessions?page=1&page_size=1&page_token={token_1}&per_page=1>; "
        'rel="next",'
        f'</sessions?page=2&page_size=1&page_token={token_2}&per_page=1>; rel="last"'
    )


@pytest.mark.parametrize("query", ["per_page=0", "per_page=-3"])
async def test_legacy_per_page_below_1_becomes_1(kratos, query):
    current, others = seed_others(kratos.fake, 2)
    r = await kratos.public.get(f"/sessions?{query}", headers=tok(current))
    assert r.status_code == 200
    assert ids(r) == others[:1]


@pytest.mark.parametrize("query", ["page_size=abc", "page_size=", "per_page=x1", "page=abc"])
async def test_non_numeric_sizes_fall_back_to_250(kratos, query):
    current, others = seed_others(kratos.fake, 3)

    r = await kratos.public.get(f"/sessions?{query}", headers=tok(current))

    assert r.status_code == 200
    assert ids(r) == others
    link = r.headers["link"]
    assert link.count(", ") == 0
    assert link.endswith('; rel="first"')
    assert "page_size=3&" in link  # total <= 250: one `first` link with page size = total


@pytest.mark.parametrize(
    "token",
    [
        "!!!",
        "not-a-token",
        "e30",
        "eyJvZmZzZXQiOiJ4In0",
        "%%%",
        # {"offset":"4","v":2} padded: RawURLEncoding refuses it, so offset 0, never a 400
        # (oryx/pagination/tokenpagination/pagination.go:25-31, 54-56)
        "eyJvZmZzZXQiOiI0IiwidiI6Mn0%3D",
        # {"offset":"-2","v":2}: a negative offset is page 0 (pagination.go:72-78), the same
        # page and links as the first page
        "eyJvZmZzZXQiOiItMiIsInYiOjJ9",
    ],
)
async def test_malformed_page_token_counts_as_offset_0(kratos, token):
    current, others = seed_others(kratos.fake, 5)

    r = await kratos.public.get(f"/sessions?page_size=2&page_token={token}", headers=tok(current))

    assert r.status_code == 200
    assert ids(r) == others[:2]
    assert r.headers["link"].startswith(
        f'</sessions?page=1&page_size=2&page_token={TOKEN_2}&per_page=2>; rel="next"'
    )


async def test_page_token_style_wins_over_legacy_page(kratos):
    current, others = seed_others(kratos.fake, 5)
    r = await kratos.public.get(
        f"/sessions?page=2&per_page=1&page_size=2&page_token={TOKEN_4}", headers=tok(current)
    )
    assert r.status_code == 200
    assert ids(r) == others[2:4]  # page = 4 // 2 = 2, 1-based in the database (#3883)
    assert "page=1&page_size=2" in r.headers["link"]


async def test_link_keeps_other_query_params_with_keys_sorted(kratos):
    current, _ = seed_others(kratos.fake, 5)

    r = await kratos.public.get(
        "/sessions?zeta=1&page_size=2&alpha=a%2Fb+c&mid=%26", headers=tok(current)
    )

    assert r.status_code == 200
    assert r.headers["link"] == (
        f"</sessions?alpha=a%2Fb+c&mid=%26&page=1&page_size=2&page_token={TOKEN_2}"
        '&per_page=2&zeta=1>; rel="next",'
        f"</sessions?alpha=a%2Fb+c&mid=%26&page=2&page_size=2&page_token={TOKEN_4}"
        '&per_page=2&zeta=1>; rel="last"'
    )


async def test_link_replaces_incoming_pagination_params(kratos):
    current, _ = seed_others(kratos.fake, 5)
    r = await kratos.public.get("/sessions?per_page=2&page=1&page_token=", headers=tok(current))
    # page_token is present (empty): token style, page_size missing -> 250, offset 0
    assert r.headers["link"] == (
        f'</sessions?page=0&page_size=5&page_token={TOKEN_0}&per_page=5>; rel="first"'
    )


async def test_link_when_total_is_zero(kratos):
    current = kratos.fake.login("alice@example.com")

    r = await kratos.public.get("/sessions", headers=tok(current))

    assert r.json() == []
    assert r.headers["x-total-count"] == "0"
    assert r.headers["link"] == (
        f'</sessions?page=0&page_size=250&page_token={TOKEN_0}&per_page=250>; rel="first",'
        f'</sessions?page=1&page_size=250&page_token={TOKEN_250}&per_page=250>; rel="next",'
        f"</sessions?page=-1&page_size=250&page_token={TOKEN_MINUS_250}&per_page=250>; "
        'rel="prev"'
    )


async def test_link_when_total_fits_one_page(kratos):
    current, others = seed_others(kratos.fake, 3)

    r = await kratos.public.get("/sessions", headers=tok(current))

    assert ids(r) == others
    assert r.headers["x-total-count"] == "3"
    assert r.headers["link"] == (
        f'</sessions?page=0&page_size=3&page_token={TOKEN_0}&per_page=3>; rel="first"'
    )


async def test_link_on_last_page(kratos):
    current, others = seed_others(kratos.fake, 5)

    r = await kratos.public.get(f"/sessions?page_size=2&page_token={TOKEN_4}", headers=tok(current))

    assert ids(r) == others[2:4]  # #3883: page 2 is read 1-based
    assert r.headers["link"] == (
        f'</sessions?page=0&page_size=2&page_token={TOKEN_0}&per_page=2>; rel="first",'
        f'</sessions?page=1&page_size=2&page_token={TOKEN_2}&per_page=2>; rel="prev"'
    )


async def test_link_in_the_middle_via_legacy_params(kratos):
    current, others = seed_others(kratos.fake, 7)

    r = await kratos.public.get("/sessions?page=1&per_page=2", headers=tok(current))

    assert ids(r) == others[0:2]
    token_6 = "eyJvZmZzZXQiOiI2IiwidiI6Mn0"
    assert r.headers["link"] == (
        f'</sessions?page=0&page_size=2&page_token={TOKEN_0}&per_page=2>; rel="first",'
        f'</sessions?page=2&page_size=2&page_token={TOKEN_4}&per_page=2>; rel="next",'
        f'</sessions?page=0&page_size=2&page_token={TOKEN_0}&per_page=2>; rel="prev",'
        f'</sessions?page=3&page_size=2&page_token={token_6}&per_page=2>; rel="last"'
    )


# -- DELETE /sessions/{id} (CONTRACT §4.3) -----------------------------------------------------


async def test_delete_whoami_behaves_as_whoami(kratos):
    current = kratos.fake.login("alice@example.com")
    # The checked client would validate this 200 against disableMySession, whose spec knows no
    # 200 (only 204/400/401/default), so send it unchecked and check it as toSession's 200.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=kratos.fake), base_url=kratos.fake.public_url
    ) as raw:
        r = await raw.delete("/sessions/whoami", headers=tok(current))
    check_response(
        httpx.Response(
            r.status_code,
            headers=r.headers,
            content=r.content,
            request=httpx.Request("GET", f"{kratos.fake.public_url}/sessions/whoami"),
        )
    )

    assert r.status_code == 200
    assert r.headers["content-type"] == JSON_UTF8
    assert "cache-control" not in r.headers
    assert r.json()["id"] == current.id
    assert r.json()["identity"]["id"] == current.identity_id
    assert r.headers["x-kratos-authenticated-identity-id"] == current.identity_id
    assert kratos.fake.is_session_active(current.id)


async def test_delete_whoami_without_session_is_whoamis_401(kratos):
    r = await kratos.public.delete("/sessions/whoami")
    assert r.status_code == 401
    assert r.json()["error"]["reason"] == "No valid session credentials found in the request."


@pytest.mark.parametrize("target", ["abc", "00000000-0000-0000-0000-000000000000"])
async def test_delete_one_401_without_session_before_uuid_check(kratos, target):
    r = await kratos.public.delete(f"/sessions/{target}")

    assert r.status_code == 401
    assert r.json() == NO_COOKIE_401
    assert r.headers["content-type"] == ERROR_TYPE
    assert r.headers["ory-error-id"] == ""
    assert "cache-control" not in r.headers


async def test_delete_one_401_with_revoked_session(kratos):
    fake = kratos.fake
    current = fake.login("alice@example.com")
    other = fake.login("alice@example.com")
    fake.revoke_session(current.id)
    r = await kratos.public.delete(f"/sessions/{other.id}", headers=tok(current))
    assert r.status_code == 401
    assert r.json() == NO_COOKIE_401
    assert fake.is_session_active(other.id)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("abc", 'uuid: incorrect UUID length 3 in string "abc"'),
        (
            "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",
            # gofrs/uuid v4.4.0 codec.go:47,95-96: a non-hex digit is errInvalidFormat
            "uuid: invalid UUID format",
        ),
        (
            "0000000000000000000000000000000000000",
            'uuid: incorrect UUID length 37 in string "0000000000000000000000000000000000000"',
        ),
    ],
)
async def test_delete_one_400_for_bad_uuid(kratos, raw, message):
    current = kratos.fake.login("alice@example.com")

    r = await kratos.public.delete(f"/sessions/{raw}", headers=tok(current))

    assert r.status_code == 400
    assert r.json() == {"error": {"code": 400, "status": "Bad Request", "message": message}}
    assert r.headers["content-type"] == ERROR_TYPE
    assert r.headers["ory-error-id"] == ""
    assert "cache-control" not in r.headers


async def test_delete_one_400_for_current_session(kratos):
    current = kratos.fake.login("alice@example.com")

    r = await kratos.public.delete(f"/sessions/{current.id}", headers=tok(current))

    assert r.status_code == 400
    assert r.json() == {
        "error": {"code": 400, "status": "Bad Request", "message": "cannot revoke current session"}
    }
    assert r.headers["content-type"] == ERROR_TYPE
    assert kratos.fake.is_session_active(current.id)


async def test_delete_one_400_for_current_session_in_uppercase(kratos):
    current = kratos.fake.login("alice@example.com")
    r = await kratos.public.delete(f"/sessions/{current.id.upper()}", headers=tok(current))
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "cannot revoke current session"


async def test_delete_one_204_revokes_but_keeps_the_row(kratos):
    fake = kratos.fake
    current = fake.login("alice@example.com")
    target = fake.login("alice@example.com")

    r = await kratos.public.delete(f"/sessions/{target.id}", headers=tok(current))

    assert r.status_code == 204
    assert r.content == b""
    assert r.headers["content-type"] == JSON_UTF8
    assert "cache-control" not in r.headers
    assert "set-cookie" not in r.headers
    assert fake.is_session_active(target.id) is False
    assert fake.session(target.id).active is False
    assert fake.is_session_active(current.id) is True
    admin = await kratos.admin.get(f"/admin/sessions/{target.id}")
    assert admin.status_code == 200
    assert admin.json()["id"] == target.id
    assert admin.json()["active"] is False
    listed = await kratos.public.get("/sessions", headers=tok(current))
    assert listed.json() == []


async def test_delete_one_revoked_token_gets_401(kratos):
    fake = kratos.fake
    current = fake.login("alice@example.com")
    target = fake.login("alice@example.com")
    await kratos.public.delete(f"/sessions/{target.id}", headers=tok(current))
    r = await kratos.public.get("/sessions/whoami", headers=tok(target))
    assert r.status_code == 401


async def test_delete_one_204_for_unknown_id(kratos):
    current = kratos.fake.login("alice@example.com")
    r = await kratos.public.delete(f"/sessions/{uuid.uuid4()}", headers=tok(current))
    assert r.status_code == 204
    assert r.content == b""
    assert r.headers["content-type"] == JSON_UTF8


async def test_delete_one_204_for_foreign_session_which_stays_active(kratos):
    fake = kratos.fake
    current = fake.login("alice@example.com")
    bobs = fake.login("bob@example.com")

    r = await kratos.public.delete(f"/sessions/{bobs.id}", headers=tok(current))

    assert r.status_code == 204
    assert r.content == b""
    assert fake.is_session_active(bobs.id) is True
    assert fake.session(bobs.id).active is True
    who = await kratos.public.get("/sessions/whoami", headers=tok(bobs))
    assert who.status_code == 200


async def test_delete_one_204_for_already_revoked(kratos):
    fake = kratos.fake
    current = fake.login("alice@example.com")
    target = fake.login("alice@example.com")
    fake.revoke_session(target.id)

    r = await kratos.public.delete(f"/sessions/{target.id}", headers=tok(current))

    assert r.status_code == 204
    assert fake.is_session_active(target.id) is False


async def test_delete_one_with_cookie_and_no_csrf_token(kratos):
    fake = kratos.fake
    current = fake.login("alice@example.com")
    target = fake.login("alice@example.com")

    r = await kratos.public.delete(
        f"/sessions/{target.id}",
        headers={"Cookie": fake.cookie_header(current), "Origin": "https://evil.example"},
    )

    assert r.status_code == 204
    assert fake.is_session_active(target.id) is False
    assert "set-cookie" not in r.headers


async def test_delete_one_has_no_aal_check(kratos):
    fake = kratos.fake
    alice = fake.create_identity(email="alice@example.com", available_aal="aal2")
    current = fake.create_session(alice, aal="aal1")
    target = fake.create_session(alice, aal="aal1")
    assert (await kratos.public.get("/sessions", headers=tok(current))).status_code == 403

    r = await kratos.public.delete(f"/sessions/{target.id}", headers=tok(current))

    assert r.status_code == 204
    assert fake.is_session_active(target.id) is False


# -- DELETE /sessions (CONTRACT §4.4) ----------------------------------------------------------


async def test_delete_others_counts_rows_in_any_state(kratos):
    fake = kratos.fake
    alice = fake.create_identity(email="alice@example.com")
    current = fake.create_session(alice)
    active = fake.create_session(alice)
    revoked = fake.create_session(alice)
    expired = fake.create_session(alice)
    bobs = fake.login("bob@example.com")
    fake.revoke_session(revoked.id)
    fake.expire_session(expired.id)

    r = await kratos.public.delete("/sessions", headers=tok(current))

    assert r.status_code == 200
    assert r.json() == {"count": 3}
    assert r.content == b'{"count":3}\n'
    assert r.headers["content-type"] == JSON_UTF8
    assert "cache-control" not in r.headers
    assert fake.is_session_active(current.id) is True
    for s in (active, revoked, expired):
        assert fake.is_session_active(s.id) is False
        assert fake.session(s.id).active is False
    assert fake.is_session_active(bobs.id) is True
    assert (await kratos.public.get("/sessions", headers=tok(current))).json() == []


async def test_delete_others_count_1_for_one_other_active(kratos):
    fake = kratos.fake
    current = fake.login("alice@example.com")
    other = fake.login("alice@example.com")
    r = await kratos.public.delete("/sessions", headers=tok(current))
    assert r.json() == {"count": 1}
    assert not fake.is_session_active(other.id)


async def test_delete_others_count_0_when_alone(kratos):
    fake = kratos.fake
    current = fake.login("alice@example.com")
    fake.login("bob@example.com")
    r = await kratos.public.delete("/sessions", headers=tok(current))
    assert r.status_code == 200
    assert r.json() == {"count": 0}
    assert fake.is_session_active(current.id)


async def test_delete_others_repeat_still_counts_revoked_rows(kratos):
    fake = kratos.fake
    current = fake.login("alice@example.com")
    fake.login("alice@example.com")
    fake.login("alice@example.com")
    first = await kratos.public.delete("/sessions", headers=tok(current))
    second = await kratos.public.delete("/sessions", headers=tok(current))
    assert first.json() == {"count": 2}
    assert second.json() == {"count": 2}


@pytest.mark.parametrize("state", ["missing", "revoked"])
async def test_delete_others_401(kratos, state):
    fake = kratos.fake
    current = fake.login("alice@example.com")
    other = fake.login("alice@example.com")
    headers = {} if state == "missing" else tok(current)
    if state == "revoked":
        fake.revoke_session(current.id)

    r = await kratos.public.delete("/sessions", headers=headers)

    assert r.status_code == 401
    assert r.json() == NO_COOKIE_401
    assert r.headers["content-type"] == ERROR_TYPE
    assert r.headers["ory-error-id"] == ""
    assert "cache-control" not in r.headers
    assert fake.is_session_active(other.id)


async def test_delete_others_with_cookie_no_csrf_and_no_aal_check(kratos):
    fake = kratos.fake
    alice = fake.create_identity(email="alice@example.com", available_aal="aal2")
    current = fake.create_session(alice, aal="aal1")
    other = fake.create_session(alice, aal="aal2")

    r = await kratos.public.delete("/sessions", headers={"Cookie": fake.cookie_header(current)})

    assert r.status_code == 200
    assert r.json() == {"count": 1}
    assert fake.is_session_active(current.id)
    assert not fake.is_session_active(other.id)
    assert "set-cookie" not in r.headers


# -- Cross-cutting headers (CONTRACT §2) -------------------------------------------------------


async def test_get_sessions_has_cache_control_and_vary(kratos):
    current = kratos.fake.login("alice@example.com")
    ok = await kratos.public.get("/sessions", headers=tok(current))
    err = await kratos.public.get("/sessions")
    for r in (ok, err):
        assert r.headers.get_list("cache-control") == [NO_CACHE]
        assert r.headers["vary"] == "Cookie"
