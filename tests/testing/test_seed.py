"""Fixing what the fake would randomise, for users' own tests: ids, tokens, cookie values,
revoked / expired / aal2 sessions, devices and the clock, through `KratosFake`, the seed
format (`sessiongate.testing.seed`) and the pytest plugin's `make_kratos_*` fixtures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import ValidationError

from sessiongate.testing import KratosFake
from sessiongate.testing.seed import Seed

IID = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
SID = "0f8fad5b-d9cb-469f-a165-70867728950e"
SID2 = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

SEED = {
    "now": "2030-01-02T03:04:05Z",
    "identities": [
        {
            "id": IID,
            "email": "alice@example.com",
            "available_aal": "aal2",
            "sessions": [
                {
                    "id": SID,
                    "token": "alice-laptop",
                    "logout_token": "alice-logout",
                    "cookie": "alice-laptop-cookie",
                    "aal": "aal2",
                    "devices": [
                        {"ip_address": "10.0.0.1", "user_agent": "Laptop", "location": "Berlin"},
                        {"ip_address": "10.0.0.2", "user_agent": "Phone"},
                    ],
                },
                {"token": "alice-revoked", "aal": "aal2", "active": False},
                {"token": "alice-expired", "aal": "aal2", "expires_in": -60},
                {"id": SID2, "token": "alice-aal1", "aal": "aal1", "expires_in": 600},
            ],
        }
    ],
}


async def whoami(fake: KratosFake, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=fake), base_url=fake.public_url
    ) as client:
        return await client.get("/sessions/whoami", headers=headers)


async def test_seed_fixes_ids_tokens_cookie_devices_and_the_clock():
    fake = KratosFake()
    created = fake.load_seed(SEED)
    assert [c.token for _, c in created] == [
        "alice-laptop",
        "alice-revoked",
        "alice-expired",
        "alice-aal1",
    ]
    assert fake.now() == T0
    r = await whoami(fake, **{"X-Session-Token": "alice-laptop"})
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == SID
    assert body["identity"]["id"] == IID
    assert body["authenticator_assurance_level"] == "aal2"
    assert body["expires_at"].startswith("2030-01-03T03:04:05")  # T0 + 24 h, frozen clock
    assert [(d["ip_address"], d["user_agent"], d["location"]) for d in body["devices"]] == [
        ("10.0.0.1", "Laptop", "Berlin"),
        ("10.0.0.2", "Phone", ""),
    ]
    # the fixed cookie value is a working credential, and the logout token is the fixed one
    r = await whoami(fake, Cookie="ory_kratos_session=alice-laptop-cookie")
    assert r.status_code == 200
    assert r.json()["id"] == SID
    assert fake.session(SID).logout_token == "alice-logout"


@pytest.mark.parametrize("token", ["alice-revoked", "alice-expired"])
async def test_seeded_revoked_and_expired_sessions_are_refused(token):
    fake = KratosFake()
    fake.load_seed(SEED)
    r = await whoami(fake, **{"X-Session-Token": token})
    assert r.status_code == 401


async def test_aal1_session_of_an_aal2_identity_is_403_and_the_frozen_clock_moves_on_demand():
    fake = KratosFake()
    fake.load_seed(SEED)
    r = await whoami(fake, **{"X-Session-Token": "alice-aal1"})
    assert r.status_code == 403
    sess = fake.session(SID2)
    assert sess.expires_at == sess.created_at + timedelta(seconds=600)
    assert fake.now() == T0  # frozen: nothing moved while requests ran
    fake.advance_clock(timedelta(days=2))
    r = await whoami(fake, **{"X-Session-Token": "alice-laptop"})
    assert r.status_code == 401  # the 24 h session has expired


async def test_now_option_and_set_clock():
    fake = KratosFake(now=T0)
    alice = fake.login("alice@example.com", expires_in=timedelta(hours=1))
    assert fake.session(alice.id).created_at - T0 < timedelta(milliseconds=1)
    fake.set_clock(T0 + timedelta(minutes=59))
    assert (await whoami(fake, **{"X-Session-Token": alice.token})).status_code == 200
    fake.set_clock(T0 + timedelta(minutes=61))
    assert (await whoami(fake, **{"X-Session-Token": alice.token})).status_code == 401


def test_duplicate_or_malformed_fixed_values_are_refused():
    fake = KratosFake()
    iid = fake.create_identity(email="a@example.com", identity_id=IID.upper())
    assert iid == IID  # any gofrs form, stored canonical
    with pytest.raises(ValueError, match="exists"):
        fake.create_identity(email="b@example.com", identity_id=IID)
    fake.create_session(iid, session_id=SID, token="t1", cookie="c1")
    with pytest.raises(ValueError, match="exists"):
        fake.create_session(iid, session_id=SID)
    with pytest.raises(ValueError, match="in use"):
        fake.create_session(iid, token="t1")
    with pytest.raises(ValueError, match="cookie"):
        fake.create_session(iid, cookie="c1")
    with pytest.raises(ValueError, match="cookie"):
        fake.create_session(iid, cookie="has space")
    with pytest.raises(ValueError, match="token"):
        fake.create_session(iid, token="two words")
    with pytest.raises(ValueError, match="incorrect UUID length"):
        fake.create_session(iid, session_id="nope")


def test_seed_refuses_both_expiries_and_unknown_keys():
    with pytest.raises(ValidationError):
        Seed.model_validate(
            {
                "identities": [
                    {"sessions": [{"expires_in": 1, "expires_at": "2030-01-01T00:00:00Z"}]}
                ]
            }
        )
    with pytest.raises(ValidationError):
        Seed.model_validate({"identities": [{"sessions": [{"tokn": "x"}]}]})


async def test_make_kratos_fake_fixture_takes_options_and_a_seed_file(make_kratos_fake, tmp_path):
    path = tmp_path / "seed.yaml"
    path.write_text(
        "now: 2030-01-02T03:04:05Z\n"
        "identities:\n"
        "  - email: bob@example.com\n"
        "    sessions: [{token: bob-token}]\n"
    )
    fake = make_kratos_fake(path, required_aal="aal1")
    assert fake.required_aal == "aal1"
    assert fake.now() == T0
    r = await whoami(fake, **{"X-Session-Token": "bob-token"})
    assert r.json()["identity"]["traits"]["email"] == "bob@example.com"


def test_make_kratos_server_fixture_serves_the_seed(make_kratos_server):
    server = make_kratos_server(SEED)
    r = httpx.get(
        server.public_url + "/sessions/whoami", headers={"X-Session-Token": "alice-laptop"}
    )
    assert r.status_code == 200
    assert r.json()["id"] == SID
