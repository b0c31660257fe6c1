"""The relay's admin session routes: opt-in, who is admitted, and which key reaches Kratos.

Admission (relay.py `_admit_admin`): one of the gate's admin keys as `Authorization: Bearer`
admits; otherwise, when `allow_identities` rules exist, the caller's own session is checked
against them. Refusals use Kratos' herodot envelope:

* no / wrong / empty key, and no rules configured            → 401
* a valid session that matches no `allow_identities` rule     → 403
* a valid session but no rules configured at all             → 401 (the session is not consulted)

Kratos' admin API is called with the gate's own `ORY_API_KEY` (Ory Network, one port) and never
with the caller's `Authorization`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from apps import EchoApp
from sessiongate.config import ConfigError, Settings, load_settings
from sessiongate.gate import Gate
from sessiongate.testing import KratosFake, UvicornThread

RelayStack = Any  # tests/relay/conftest.py's RelayStack (conftest modules are not imported)
MakeRelay = Callable[..., RelayStack]
ADMIN_KEY = "gate-admin-key-0123456789"  # what make_relay puts in SESSIONGATE_ADMIN_KEYS
ORY_KEY = "ory_pat_secret"
BOSS_ID = "0b5e5e5e-1111-4222-8333-944445555666"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def admin_requests(fake: KratosFake) -> list[tuple[str, str]]:
    return [r for r in fake.requests if r[1].startswith("/admin")]


def assert_herodot(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == status
    assert isinstance(error["status"], str)
    assert error["status"]
    assert isinstance(error["reason"], str)
    assert error["reason"]
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


@pytest.fixture(autouse=True)
def _no_ory_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that want an Ory API key set it themselves."""
    monkeypatch.delenv("ORY_API_KEY", raising=False)


# -- off by default -------------------------------------------------------------------------
async def test_admin_routes_are_off_by_default(make_relay: MakeRelay) -> None:
    stack = make_relay()
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as client:
        # With the admin key but no session: the gate's normal authentication refuses.
        anonymous = await client.get("/admin/sessions", headers=bearer(ADMIN_KEY))
        assert anonymous.status_code == 401
        # With a session: an ordinary request for the protected app, proxied to it.
        proxied = await client.get(
            "/admin/sessions", headers={"X-Session-Token": alice.token, "Accept": "*/*"}
        )
        assert proxied.status_code == 200
        assert proxied.json()["path"] == "/admin/sessions"
        deleted = await client.delete(f"/admin/sessions/{alice.id}", headers=bearer(ADMIN_KEY))
        assert deleted.status_code == 401
    assert admin_requests(stack.fake) == []
    assert stack.fake.is_session_active(alice.id)
    assert [r["path"] for r in stack.app.requests] == ["/admin/sessions"]


# -- admission by key -----------------------------------------------------------------------
async def test_admin_key_admits(make_relay: MakeRelay) -> None:
    stack = make_relay(admin=True)
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as client:
        listed = await client.get("/admin/sessions", headers=bearer(ADMIN_KEY))
        assert listed.status_code == 200
        assert [s["id"] for s in listed.json()] == [alice.id]
        one = await client.get(f"/admin/sessions/{alice.id}", headers=bearer(ADMIN_KEY))
        assert one.status_code == 200
        assert one.json()["id"] == alice.id
        # The scheme is case-insensitive, as for Kratos' own Bearer parsing.
        lower = await client.get(
            "/admin/sessions", headers={"Authorization": f"bearer {ADMIN_KEY}"}
        )
        assert lower.status_code == 200
    assert ("GET", "/admin/sessions") in stack.fake.requests
    assert stack.app.requests == []


async def test_several_comma_separated_keys_each_admit(make_relay: MakeRelay) -> None:
    keys = ["first-key-aaaaaaaaaaaa", "second-key-bbbbbbbbbbb", "third-key-cccccccccccc"]
    stack = make_relay(admin=True, admin_keys=" , ".join(keys) + ",")
    stack.fake.login("alice@example.com")
    async with stack.client() as client:
        for key in keys:
            response = await client.get("/admin/sessions", headers=bearer(key))
            assert response.status_code == 200, key
        # Neither the raw variable nor a concatenation of keys is a key.
        for wrong in [",".join(keys), keys[0] + keys[1], keys[0][:-1], "x"]:
            response = await client.get("/admin/sessions", headers=bearer(wrong))
            assert response.status_code == 401, wrong
    assert stack.fake.count("GET", "/admin/sessions") == len(keys)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-key"),
        pytest.param(bearer("wrong-key-0123456789"), id="wrong-key"),
        pytest.param(bearer(ADMIN_KEY + "x"), id="longer-key"),
        pytest.param(bearer(ADMIN_KEY.upper()), id="key-case"),
        pytest.param({"Authorization": "Bearer"}, id="bearer-alone"),
        pytest.param({"Authorization": f"Basic {ADMIN_KEY}"}, id="basic-scheme"),
        pytest.param({"Authorization": ADMIN_KEY}, id="no-scheme"),
        pytest.param({"X-Session-Token": ADMIN_KEY}, id="key-as-session-token"),
    ],
)
async def test_missing_or_wrong_key_is_401_in_herodot_envelope(
    make_relay: MakeRelay, headers: dict[str, str]
) -> None:
    stack = make_relay(admin=True)
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as client:
        listed = await client.get("/admin/sessions", headers=headers)
        assert_herodot(listed, 401)
        deleted = await client.delete(f"/admin/sessions/{alice.id}", headers=headers)
        assert_herodot(deleted, 401)
    assert admin_requests(stack.fake) == []
    assert stack.fake.is_session_active(alice.id)


async def raw_request(url: str, lines: list[str]) -> tuple[int, dict[str, str], bytes]:
    """A hand-written HTTP/1.1 request (httpx refuses header values such as `Bearer `)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(parts.hostname, parts.port), timeout=5
    )
    try:
        head = "\r\n".join([*lines, f"Host: {parts.netloc}", "Connection: close", "", ""])
        writer.write(head.encode("latin-1"))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    header_block, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = header_block.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("value", ["Bearer ", "Bearer  ", "bearer "])
async def test_bearer_with_empty_key_is_401(make_relay: MakeRelay, value: str) -> None:
    stack = make_relay(admin=True)
    stack.fake.login("alice@example.com")
    status, headers, body = await raw_request(
        stack.server.url, ["GET /admin/sessions HTTP/1.1", f"Authorization: {value}"]
    )
    assert status == 401, body
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == 401
    assert error["reason"]
    assert error["message"]
    assert admin_requests(stack.fake) == []


async def test_plain_user_session_without_rules_is_401(make_relay: MakeRelay) -> None:
    """No allow_identities configured: a session never admits, and the answer is 401."""
    stack = make_relay(admin=True)
    alice = stack.fake.login("alice@example.com")
    bob = stack.fake.login("bob@example.com")
    async with stack.client() as client:
        for headers in (
            {"X-Session-Token": alice.token},
            {"Authorization": f"Bearer {alice.token}"},
            {"Cookie": stack.fake.cookie_header(alice)},
        ):
            response = await client.get("/admin/sessions", headers=headers)
            assert_herodot(response, 401)
            revoke = await client.delete(f"/admin/sessions/{bob.id}", headers=headers)
            assert_herodot(revoke, 401)
    assert admin_requests(stack.fake) == []
    assert stack.fake.is_session_active(bob.id)


# -- admission by rules ---------------------------------------------------------------------
def _with_rules(
    make_relay: MakeRelay,
    rules: list[str],
    admin_keys: str = ADMIN_KEY,
    *,
    user_controlled: bool = False,
) -> RelayStack:
    admin: dict[str, Any] = {"enabled": True, "allow_identities": rules}
    if user_controlled:
        admin["allow_user_controlled_rules"] = True
    return make_relay(admin_keys=admin_keys, sessions_api={"admin": admin})


async def test_allow_identities_by_id_admits_that_users_session(make_relay: MakeRelay) -> None:
    stack = _with_rules(make_relay, [BOSS_ID], admin_keys="")
    stack.fake.store.add_identity({"email": "boss@example.com"}, identity_id=BOSS_ID)
    boss = stack.fake.create_session(BOSS_ID)
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as client:
        for headers in (
            {"X-Session-Token": boss.token},
            {"Cookie": stack.fake.cookie_header(boss)},
        ):
            listed = await client.get("/admin/sessions", headers=headers)
            assert listed.status_code == 200, headers
            assert {s["id"] for s in listed.json()} == {boss.id, alice.id}
        # On an admin route `Authorization: Bearer` is an admin key or nothing: a session token
        # there is not looked up (not sent to Kratos' whoami).
        whoamis = stack.fake.count("GET", "/sessions/whoami")
        bearer_token = await client.get("/admin/sessions", headers=bearer(boss.token))
        assert_herodot(bearer_token, 401)
        assert stack.fake.count("GET", "/sessions/whoami") == whoamis
        refused = await client.get("/admin/sessions", headers={"X-Session-Token": alice.token})
        error = assert_herodot(refused, 403)
        assert "admin" in error["reason"]
        # A session that is no longer valid is not a rule match: 401, not 403.
        stack.fake.revoke_session(alice.id)
        stack.gate.cache.clear()
        gone = await client.get("/admin/sessions", headers={"X-Session-Token": alice.token})
        assert_herodot(gone, 401)
        # A matching session can act (revoke alice's... a fresh one).
        carol = stack.fake.login("carol@example.com")
        revoked = await client.delete(
            f"/admin/sessions/{carol.id}", headers={"X-Session-Token": boss.token}
        )
        assert revoked.status_code == 204
    assert not stack.fake.is_session_active(carol.id)
    assert stack.fake.count("GET", "/admin/sessions") == 2


async def test_allow_identities_path_rule(make_relay: MakeRelay) -> None:
    stack = _with_rules(
        make_relay, ["identity.traits.email=admin@example.com"], user_controlled=True
    )
    admin = stack.fake.login("admin@example.com")
    other = stack.fake.login("other@example.com")
    # A trait that merely contains the value, or differs in case, does not match.
    lookalike = stack.fake.login("xadmin@example.com")
    shouting = stack.fake.login("ADMIN@example.com")
    async with stack.client() as client:
        ok = await client.get("/admin/sessions", headers={"X-Session-Token": admin.token})
        assert ok.status_code == 200
        assert len(ok.json()) == 4
        for who in (other, lookalike, shouting):
            refused = await client.get("/admin/sessions", headers={"X-Session-Token": who.token})
            assert_herodot(refused, 403)
        # The key still admits alongside the rules.
        keyed = await client.get("/admin/sessions", headers=bearer(ADMIN_KEY))
        assert keyed.status_code == 200
        # A wrong key with no session: 401.
        wrong = await client.get("/admin/sessions", headers=bearer("nope-nope-nope"))
        assert_herodot(wrong, 401)
    assert stack.fake.count("GET", "/admin/sessions") == 2


async def test_rule_on_session_field(make_relay: MakeRelay) -> None:
    """Rules are paths into the whole session JSON, e.g. the authenticator assurance level."""
    stack = _with_rules(make_relay, ["authenticator_assurance_level=aal2"], admin_keys="")
    strong = stack.fake.login("strong@example.com", aal="aal2")
    weak = stack.fake.login("weak@example.com")
    async with stack.client() as client:
        ok = await client.get("/admin/sessions", headers={"X-Session-Token": strong.token})
        assert ok.status_code == 200
        refused = await client.get("/admin/sessions", headers={"X-Session-Token": weak.token})
        assert_herodot(refused, 403)


async def test_rule_admission_with_kratos_down_is_503_not_401(make_relay: MakeRelay) -> None:
    """When the caller's session cannot be checked, the answer is "try again", not "denied"."""
    stack = _with_rules(make_relay, [BOSS_ID])
    stack.fake.store.add_identity({"email": "boss@example.com"}, identity_id=BOSS_ID)
    boss = stack.fake.create_session(BOSS_ID)
    stack.kratos.stop()
    async with stack.client() as client:
        response = await client.get("/admin/sessions", headers={"X-Session-Token": boss.token})
        assert_herodot(response, 503)
        assert int(response.headers["retry-after"]) > 0
        keyed = await client.get("/admin/sessions", headers=bearer(ADMIN_KEY))
        assert_herodot(keyed, 503)
        assert int(keyed.headers["retry-after"]) > 0
        # No credential at all is still a plain 401.
        anonymous = await client.get("/admin/sessions")
        assert_herodot(anonymous, 401)


# -- Ory Network: one port, Bearer API key --------------------------------------------------
async def test_one_port_mode_gate_key_reaches_kratos(
    make_relay: MakeRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORY_API_KEY", ORY_KEY)
    stack = make_relay(admin=True, fake_options={"api_key": ORY_KEY})
    assert stack.kratos.admin_url == stack.kratos.public_url
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as client:
        listed = await client.get("/admin/sessions", headers=bearer(ADMIN_KEY))
        assert listed.status_code == 200
        assert [s["id"] for s in listed.json()] == [alice.id]
        extended = await client.patch(
            f"/admin/sessions/{alice.id}/extend", headers=bearer(ADMIN_KEY)
        )
        assert extended.status_code in (200, 204)
        revoked = await client.delete(f"/admin/sessions/{alice.id}", headers=bearer(ADMIN_KEY))
        assert revoked.status_code == 204
    assert not stack.fake.is_session_active(alice.id)


async def test_one_port_mode_without_ory_key_relays_kratos_401(make_relay: MakeRelay) -> None:
    """No ORY_API_KEY: the gate sends none, and never substitutes the caller's Authorization."""
    stack = make_relay(admin=True, fake_options={"api_key": ORY_KEY}, admin_keys=ORY_KEY)
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as client:
        # The caller's Bearer happens to be Kratos' API key; forwarding it would succeed.
        response = await client.get("/admin/sessions", headers=bearer(ORY_KEY))
        assert response.status_code == 401
        assert response.json()["error"]["reason"] == "The API key is missing or invalid."
        revoke = await client.delete(f"/admin/sessions/{alice.id}", headers=bearer(ORY_KEY))
        assert revoke.status_code == 401
    assert stack.fake.count("GET", "/admin/sessions") == 1
    assert stack.fake.is_session_active(alice.id)


class Recorder:
    """An ASGI probe in front of the Kratos fake: records each request's Authorization."""

    def __init__(self, app: KratosFake) -> None:
        self.app = app
        self.seen: list[tuple[str, str, list[bytes], list[bytes]]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            auth = [v for n, v in scope["headers"] if n == b"authorization"]
            values = [v for _, v in scope["headers"]]
            self.seen.append((scope["method"], scope["path"], auth, values))
        await self.app(scope, receive, send)


@pytest.fixture
def probed_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Recorder, KratosFake, str]]:
    """Kratos fake in one-port mode behind a Recorder; the gate in front with ORY_API_KEY."""
    monkeypatch.setenv("ORY_API_KEY", ORY_KEY)
    monkeypatch.setenv("SESSIONGATE_ADMIN_KEYS", ADMIN_KEY)
    kratos = UvicornThread()
    fake = KratosFake(public_url=kratos.url, admin_url=None, api_key=ORY_KEY)
    recorder = Recorder(fake)
    kratos.app = recorder
    upstream = UvicornThread(EchoApp())
    servers = [kratos, upstream]
    try:
        kratos.start()
        upstream.start()
        settings = Settings.model_validate(
            {
                "ory": {"public_url": kratos.url, "timeout": 3},  # admin_url unset: = public
                "upstream": {"url": upstream.url, "timeout": 5},
                "sessions_api": {"admin": {"enabled": True}},
            }
        )
        gate_server = UvicornThread(Gate(settings), lifespan="on")
        servers.append(gate_server)
        gate_server.start()
        yield recorder, fake, gate_server.url
    finally:
        for server in reversed(servers):
            server.stop()


async def test_probe_only_the_gate_key_reaches_kratos_admin(
    probed_network: tuple[Recorder, KratosFake, str],
) -> None:
    recorder, fake, gate_url = probed_network
    alice = fake.login("alice@example.com")
    bob = fake.login("bob@example.com")
    async with httpx.AsyncClient(base_url=gate_url, timeout=10) as client:
        admin = bearer(ADMIN_KEY)
        assert (await client.get("/admin/sessions", headers=admin)).status_code == 200
        got = await client.get(f"/admin/sessions/{alice.id}?expand=identity", headers=admin)
        assert got.status_code == 200
        assert got.json()["identity"]["id"] == alice.identity_id
        listed = await client.get(f"/admin/identities/{alice.identity_id}/sessions", headers=admin)
        assert listed.status_code == 200
        extend = await client.patch(f"/admin/sessions/{alice.id}/extend", headers=admin)
        assert extend.status_code in (200, 204)
        assert (await client.delete(f"/admin/sessions/{bob.id}", headers=admin)).status_code == 204
        # A refused caller never causes an admin call.
        refused = await client.get("/admin/sessions", headers=bearer("not-the-key-123"))
        assert refused.status_code == 401
        # Public traffic: the relay, and the gate's own whoami for a proxied request.
        who = await client.get("/sessions/whoami", headers={"X-Session-Token": alice.token})
        assert who.status_code == 200
        mine = await client.get("/sessions", headers={"Authorization": f"Bearer {alice.token}"})
        assert mine.status_code == 200
        app = await client.get("/app", headers={"Cookie": fake.cookie_header(alice)})
        assert app.status_code == 200
        gone = await client.delete(f"/admin/identities/{alice.identity_id}/sessions", headers=admin)
        assert gone.status_code == 204
    assert not fake.is_session_active(bob.id)
    assert not fake.is_session_active(alice.id)

    admin_seen = [s for s in recorder.seen if s[1].startswith("/admin")]
    public_seen = [s for s in recorder.seen if not s[1].startswith("/admin")]
    assert len(admin_seen) == 6, admin_seen
    assert len(public_seen) >= 3, public_seen
    for method, path, auth, _ in admin_seen:
        assert auth == [f"Bearer {ORY_KEY}".encode()], (method, path, auth)
    for method, path, auth, _ in public_seen:
        assert all(ORY_KEY.encode() not in value for value in auth), (method, path, auth)
    for method, path, _, values in recorder.seen:
        assert all(ADMIN_KEY.encode() not in value for value in values), (method, path)
    # The caller's session token went to the public API only, as its own credential.
    assert (
        "GET",
        "/sessions",
        [f"Bearer {alice.token}".encode()],
    ) in [(m, p, a) for m, p, a, _ in public_seen]


# -- start-up refusal -----------------------------------------------------------------------
def _admin_settings(**admin: Any) -> Settings:
    return Settings.model_validate(
        {
            "ory": {"public_url": "http://127.0.0.1:9"},
            "upstream": {"url": "http://127.0.0.1:9"},
            "sessions_api": {"admin": {"enabled": True, **admin}},
        }
    )


@pytest.mark.parametrize("keys", [None, "", " , ,"])
def test_gate_refuses_admin_without_keys_or_rules(
    monkeypatch: pytest.MonkeyPatch, keys: str | None
) -> None:
    if keys is None:
        monkeypatch.delenv("SESSIONGATE_ADMIN_KEYS", raising=False)
    else:
        monkeypatch.setenv("SESSIONGATE_ADMIN_KEYS", keys)
    with pytest.raises(ConfigError) as info:
        Gate(_admin_settings())
    assert any(p.startswith("sessions_api.admin.enabled") for p in info.value.problems)
    assert "SESSIONGATE_ADMIN_KEYS" in str(info.value)


def test_gate_starts_with_keys_or_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONGATE_ADMIN_KEYS", ADMIN_KEY)
    assert Gate(_admin_settings()).relay is not None
    monkeypatch.delenv("SESSIONGATE_ADMIN_KEYS")
    assert Gate(_admin_settings(allow_identities=[BOSS_ID])).relay is not None
    # A custom variable name is the one that counts.
    monkeypatch.setenv("OPS_KEYS", "k1,k2")
    Gate(_admin_settings(keys_env="OPS_KEYS"))
    monkeypatch.delenv("OPS_KEYS")
    with pytest.raises(ConfigError, match="OPS_KEYS"):
        Gate(_admin_settings(keys_env="OPS_KEYS"))
    # Admin off: nothing is required.
    Gate(Settings.model_validate({"sessions_api": {"admin": {"enabled": False}}}))


def _check_config(
    path: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SESSIONGATE_") and k != "ORY_API_KEY"
    }
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "sessiongate.cli", "check-config", "--config", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_reports_admin_without_keys(tmp_path: Path) -> None:
    config = tmp_path / "gate.yaml"
    config.write_text(json.dumps({"sessions_api": {"admin": {"enabled": True}}}), encoding="utf-8")
    refused = _check_config(config)
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert "sessions_api.admin.enabled" in refused.stderr
    assert "configuration OK" not in refused.stdout
    # The same file is fine once the default keys variable is set (it is a secret, not an
    # override of a settings key) or once rules exist.
    keyed = _check_config(config, {"SESSIONGATE_ADMIN_KEYS": ADMIN_KEY})
    assert keyed.returncode == 0, (keyed.stdout, keyed.stderr)
    assert "configuration OK" in keyed.stdout
    ruled = tmp_path / "ruled.yaml"
    ruled.write_text(
        json.dumps({"sessions_api": {"admin": {"enabled": True, "allow_identities": [BOSS_ID]}}}),
        encoding="utf-8",
    )
    assert _check_config(ruled).returncode == 0


# -- issue 10: rules on what the operator controls, compared as JSON --------------------------
@pytest.mark.parametrize(
    "rule",
    [
        "identity.traits.email=admin@example.com",
        "identity.verifiable_addresses.0.value=admin@example.com",
        "identity.recovery_addresses.0.value=admin@example.com",
        "devices.0.ip_address=10.0.0.1",
        "identity.metadata_admin.role=admin",  # not in the session; refused as unknown too
        "identity.metadata_public=x",  # the whole object is not a field
        "tokenized=x",
    ],
)
def test_rules_on_user_controlled_data_are_refused(tmp_path: Path, rule: str) -> None:
    """Traits, addresses and devices are the user's to edit: a rule on them would let a user
    admit themselves. check-config and start-up refuse them unless explicitly allowed."""
    with pytest.raises(ConfigError) as info:
        load_settings(
            None, {"SESSIONGATE_SESSIONS_API__ADMIN__ALLOW_IDENTITIES": json.dumps([rule])}
        )
    assert info.value.problems[0].startswith("sessions_api.admin.allow_identities:")
    assert "allow_user_controlled_rules" in str(info.value)
    config = tmp_path / "gate.yaml"
    admin = {"enabled": True, "allow_identities": [rule]}
    config.write_text(json.dumps({"sessions_api": {"admin": admin}}), encoding="utf-8")
    refused = _check_config(config)
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert "allow_user_controlled_rules" in refused.stderr
    admin["allow_user_controlled_rules"] = True
    config.write_text(json.dumps({"sessions_api": {"admin": admin}}), encoding="utf-8")
    allowed = _check_config(config)
    assert allowed.returncode == 0, (allowed.stdout, allowed.stderr)


@pytest.mark.parametrize(
    "rule",
    [
        BOSS_ID,
        f"identity.id={BOSS_ID}",
        "identity.schema_id=default",
        "identity.state=active",
        "identity.metadata_public.role=admin",
        "identity.metadata_public.teams.0=ops",
        "authenticator_assurance_level=aal2",
    ],
)
def test_rules_on_operator_controlled_data_are_accepted(rule: str) -> None:
    assert _admin_settings(allow_identities=[rule]).sessions_api.admin.allow_identities == [rule]


async def test_rule_values_compare_as_json_values(make_relay: MakeRelay) -> None:
    """`x=true` is JSON true, `x=1` the number 1 (also 1.0), `x="1"` the string; a value that
    is not JSON (`x=admin`) is that string. Booleans, numbers and strings never match across."""
    rules = [
        "identity.metadata_public.admin=true",
        "identity.metadata_public.level=1",
        'identity.metadata_public.code="1"',
        "identity.metadata_public.role=admin",
    ]
    stack = _with_rules(make_relay, rules, admin_keys="")
    fake = stack.fake
    cases = [
        ({"admin": True}, 200),
        ({"admin": "true"}, 403),
        ({"admin": 1}, 403),
        ({"level": 1}, 200),
        ({"level": 1.0}, 200),
        ({"level": "1"}, 403),
        ({"level": True}, 403),
        ({"code": "1"}, 200),
        ({"code": 1}, 403),
        ({"role": "admin"}, 200),
        ({"role": "Admin"}, 403),
        ({"role": ["admin"]}, 403),
        (None, 403),
    ]
    async with stack.client() as client:
        for metadata, expected in cases:
            iid = fake.create_identity(
                email=f"{len(fake.requests)}@x.test", metadata_public=metadata
            )
            session = fake.create_session(iid)
            out = await client.get("/admin/sessions", headers={"X-Session-Token": session.token})
            assert out.status_code == expected, (metadata, out.text)


async def test_admin_extend_drops_remembered_401s(make_relay: MakeRelay) -> None:
    """An expired session that an extend brought back is admitted at once, not after
    cache.negative_ttl (issue 10 item 16); other identities' entries stay cached."""
    stack = make_relay(admin=True, cache={"negative_ttl": 30})
    fake = stack.fake
    alice = fake.login("alice@example.com")
    bob = fake.login("bob@example.com")
    token = {"X-Session-Token": alice.token}
    async with stack.client() as client:
        assert (await client.get("/app", headers={"X-Session-Token": bob.token})).is_success
        fake.expire_session(alice.id)
        assert (await client.get("/app", headers=token)).status_code == 401  # remembered
        extended = await client.patch(
            f"/admin/sessions/{alice.id}/extend", headers=bearer(ADMIN_KEY)
        )
        assert extended.is_success, extended.text
        assert fake.is_session_active(alice.id)
        whoamis = fake.count("GET", "/sessions/whoami")
        assert (await client.get("/app", headers=token)).status_code == 200
        assert (await client.get("/sessions/whoami", headers=token)).status_code == 200
        assert (await client.get("/app", headers={"X-Session-Token": bob.token})).is_success
    assert fake.count("GET", "/sessions/whoami") == whoamis + 1  # alice once; bob from cache
