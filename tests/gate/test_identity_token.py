"""The identity token (identity_token.py): what the app receives, checked by verifiers that know
nothing of the gate but its JWKS URL: PyJWT's `PyJWKClient` and Node's `jose` (tests/js)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from gate_stack import Stack, settings_for

from apps import EchoApp
from redis_servers import RedisServers, redis_servers  # noqa: F401
from sessiongate.cache import CachedSession
from sessiongate.gate import Gate
from sessiongate.identity_token import (
    IdentityTokens,
    claim_value,
    kratos_token,
    without_tokenized,
)
from sessiongate.jwks_endpoint import JWKS_MAX_AGE
from sessiongate.middleware import SessionGateMiddleware
from sessiongate.signing_keys import load_keys, new_private_jwk, write_keys_file
from sessiongate.testing import TokenizeTemplate, UvicornThread

JS = Path(__file__).resolve().parents[1] / "js"
ISSUER = "https://gate.example.test"
JWKS = "/.well-known/jwks.json"
ALGS = ["ES256", "EdDSA", "RS256"]


def keys_file(directory: Path, *jwks: dict[str, Any], name: str = "keys.json") -> Path:
    path = directory / name
    write_keys_file(path, {"keys": list(jwks)})
    return path


def token_settings(path: Path, **more: Any) -> dict[str, Any]:
    return {"enabled": True, "keys_file": str(path), "issuer": ISSUER, **more}


def app_headers(app: EchoApp, name: str, index: int = -1) -> list[str]:
    return [v for k, v in app.requests[index]["headers"] if k.lower() == name.lower()]


def bearer_of(app: EchoApp, index: int = -1) -> str:
    (value,) = app_headers(app, "authorization", index)
    scheme, token = value.split(" ")
    assert scheme == "Bearer"
    return token


def pyjwt_verify(jwks_url: str, token: str, audience: str, **options: Any) -> dict[str, Any]:
    """What a Python app does: the key from the JWKS by the token's kid, then every check."""
    client = jwt.PyJWKClient(jwks_url, cache_keys=False)
    key = client.get_signing_key_from_jwt(token)
    return jwt.decode(
        token, key, algorithms=ALGS, audience=audience, issuer=options.pop("issuer", ISSUER)
    )


def jose_verify(jwks_url: str, audience: str, *tokens: str) -> list[dict[str, Any]]:
    """What a Node app does (jose's createRemoteJWKSet + jwtVerify): one verdict per token."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    assert (JS / "node_modules" / "jose").is_dir(), "run `npm ci` in tests/js (scripts/test does)"
    out = subprocess.run(
        ["node", str(JS / "verify.mjs"), jwks_url, ISSUER, audience, *tokens],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.fixture
def gate_on(make_stack: Callable[..., Stack]) -> Iterator[Callable[..., str]]:
    """Another gate (its own settings) in front of a stack's Kratos and app: its URL."""
    started: list[UvicornThread] = []

    def run(stack: Stack, **overrides: Any) -> str:
        upstream = stack.upstream_server.url
        server = UvicornThread(
            Gate(settings_for(stack.kratos.public_url, upstream, **overrides)), lifespan="on"
        )
        server.start()
        started.append(server)
        return server.url

    yield run
    for server in reversed(started):
        server.stop()


@pytest.mark.parametrize("alg", ALGS)
async def test_the_app_gets_a_token_that_independent_verifiers_accept(
    make_stack: Callable[..., Stack], tmp_path: Path, alg: str
) -> None:
    key = new_private_jwk(alg)
    stack = make_stack(identity_token=token_settings(keys_file(tmp_path, key)))
    audience = stack.upstream_server.url.rstrip("/")  # default: the upstream's origin
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        r = await c.get("/page", headers={"X-Session-Token": alice.token})
        assert r.status_code == 200
        keys = await c.get(JWKS)  # no session needed
    token = bearer_of(stack.app)
    assert keys.status_code == 200
    assert keys.headers["cache-control"] == f"public, max-age={JWKS_MAX_AGE}"
    (published,) = keys.json()["keys"]
    assert published["kid"] == key["kid"]
    assert published["alg"] == alg
    assert "d" not in published  # never a private member
    assert "p" not in published
    assert jwt.get_unverified_header(token)["kid"] == key["kid"]

    jwks_url = stack.url + JWKS
    claims = pyjwt_verify(jwks_url, token, audience)
    assert claims["sub"] == alice.identity_id
    assert claims["sid"] == alice.id
    assert claims["email"] == "alice@example.com"
    assert claims["aal"] == "aal1"
    assert claims["amr"] == ["password"]
    assert claims["iss"] == ISSUER
    assert claims["aud"] == audience
    assert claims["exp"] - claims["iat"] == 60  # cache.ttl by default
    assert claims["nbf"] == claims["iat"]
    assert claims["jti"]

    # a token from a key the gate never published (an unknown kid)
    stranger = new_private_jwk(alg)
    forged = jwt.encode(
        {**claims, "sub": "someone-else"},
        jwt.PyJWK(stranger).key,
        algorithm=alg,
        headers={"kid": stranger["kid"]},
    )
    with pytest.raises(jwt.InvalidAudienceError):
        pyjwt_verify(jwks_url, token, "https://another-app.example.test")
    with pytest.raises(jwt.PyJWKClientError):
        pyjwt_verify(jwks_url, forged, audience)

    ok, unknown_kid = jose_verify(jwks_url, audience, token, forged)
    (other_audience,) = jose_verify(jwks_url, "https://another-app.example.test", token)
    assert ok["ok"]
    assert ok["payload"] == claims
    assert ok["header"]["alg"] == alg
    assert not other_audience["ok"]
    assert other_audience["code"] == "ERR_JWT_CLAIM_VALIDATION_FAILED"
    assert not unknown_kid["ok"]
    assert unknown_kid["code"] == "ERR_JWKS_NO_MATCHING_KEY"


async def test_an_expired_token_is_rejected(make_stack: Callable[..., Stack], tmp_path: Path):
    stack = make_stack(identity_token=token_settings(keys_file(tmp_path, new_private_jwk()), ttl=1))
    audience = stack.upstream_server.url.rstrip("/")
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        assert (await c.get("/x", headers={"X-Session-Token": alice.token})).status_code == 200
    token = bearer_of(stack.app)
    jwks_url = stack.url + JWKS
    pyjwt_verify(jwks_url, token, audience)  # valid now
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.2)  # bounded: ttl is 1s
    with pytest.raises(jwt.ExpiredSignatureError):
        pyjwt_verify(jwks_url, token, audience)
    (verdict,) = jose_verify(jwks_url, audience, token)
    assert not verdict["ok"]
    assert verdict["code"] == "ERR_JWT_EXPIRED"


async def test_signed_once_per_cached_session_and_again_only_near_its_end(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(identity_token=token_settings(keys_file(tmp_path, new_private_jwk()), ttl=3))
    tokens = stack.gate.gatekeeper.tokens
    assert tokens is not None
    alice, bob = stack.fake.login("alice@example.com"), stack.fake.login("bob@example.com")
    async with stack.client() as c:
        for _ in range(20):
            r = await c.get("/x", headers={"X-Session-Token": alice.token})
            assert r.status_code == 200
        seen = {bearer_of(stack.app, i) for i in range(20)}
        assert len(seen) == 1  # the same token for every request of the session
        assert tokens.minted == 1  # one signature for 20 requests
        await c.get("/x", headers={"X-Session-Token": bob.token})
        assert tokens.minted == 2  # one per session
        first = seen.pop()
        claims = jwt.decode(first, options={"verify_signature": False})
        # re-signed only in the last tenth of its lifetime
        await asyncio.sleep(
            max(0.0, claims["iat"] + 0.9 * (claims["exp"] - claims["iat"]) - time.time())
        )
        await asyncio.sleep(0.3)
        r = await c.get("/x", headers={"X-Session-Token": alice.token})
        assert r.status_code == 200
    renewed = bearer_of(stack.app)
    assert renewed != first
    assert tokens.minted == 3
    audience = stack.upstream_server.url.rstrip("/")
    assert pyjwt_verify(stack.url + JWKS, renewed, audience)["sub"] == alice.identity_id


async def test_the_token_never_outlives_the_session(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(
        identity_token=token_settings(keys_file(tmp_path, new_private_jwk()), ttl="1h")
    )
    tokens = stack.gate.gatekeeper.tokens
    assert tokens is not None
    alice = stack.fake.login("alice@example.com", expires_in=timedelta(seconds=30))
    expires_at = stack.fake.store.sessions[alice.id].expires_at.timestamp()
    async with stack.client() as c:
        for _ in range(5):
            r = await c.get("/x", headers={"X-Session-Token": alice.token})
            assert r.status_code == 200
    assert {bearer_of(stack.app, i) for i in range(5)} == {bearer_of(stack.app)}
    claims = jwt.decode(bearer_of(stack.app), options={"verify_signature": False})
    assert claims["exp"] == math.floor(expires_at)  # capped by the session, not now + 1h
    assert tokens.minted == 1  # a capped token is not signed again


class Clocks:
    """A wall clock and a monotonic one that move together (tests move them)."""

    def __init__(self, wall: float) -> None:
        self.start = wall
        self.now, self.mono = wall, 1000.0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds

    def at(self, since_start: float) -> None:
        self.now, self.mono = self.start + since_start, 1000.0 + since_start


def signer(tmp_path: Path, clocks: Clocks, ttl: float = 60.0) -> IdentityTokens:
    return IdentityTokens(
        header="Authorization",
        source="gate",
        issuer=ISSUER,
        audience="urn:app",
        ttl=ttl,
        keys=load_keys(keys_file(tmp_path, new_private_jwk())),
        monotonic=clocks.monotonic,
        wall=clocks.wall,
    )


def session_entry(expires_at: float) -> CachedSession:
    body = {"id": "s1", "identity": {"id": "i1", "traits": {"email": "a@example.test"}}}
    return CachedSession.of("s1", "i1", expires_at, json.dumps(body).encode())


def test_a_sessions_last_seconds_sign_once_then_give_no_token(tmp_path: Path) -> None:
    """A token capped at the session's expires_at cannot be extended by signing again: it is
    kept until its exp, then there is no token (503), never a signature per request."""
    clocks = Clocks(wall=1_700_000_000.2)
    tokens = signer(tmp_path, clocks)
    entry = session_entry(expires_at=1_700_000_030.5)
    first = tokens.attach(entry)
    assert first is not None
    claims = jwt.decode(first[1].split()[1], options={"verify_signature": False})
    assert (claims["iat"], claims["exp"]) == (1_700_000_000, 1_700_000_030)
    for step in range(1, 2980):  # 100 requests a second until just before exp
        clocks.at(step / 100)
        assert tokens.attach(entry) == first
    assert tokens.minted == 1
    for step in range(2980, 3030):  # the session's last 0.5 s: past exp, no token, no signing
        clocks.at(step / 100)
        assert tokens.attach(entry) is None
    assert tokens.minted == 1


def test_a_session_in_its_last_second_gets_no_token(tmp_path: Path) -> None:
    clocks = Clocks(wall=1_700_000_030.2)
    tokens = signer(tmp_path, clocks)
    entry = session_entry(expires_at=1_700_000_030.9)  # floor(expires_at) already past
    assert tokens.attach(entry) is None
    assert tokens.attach(entry) is None
    assert tokens.minted == 0


def test_an_uncapped_token_is_signed_again_in_its_last_tenth(tmp_path: Path) -> None:
    clocks = Clocks(wall=1_700_000_000.0)
    tokens = signer(tmp_path, clocks, ttl=10)
    entry = session_entry(expires_at=1_700_003_600.0)
    first = tokens.attach(entry)
    clocks.advance(8.9)
    assert tokens.attach(entry) == first
    clocks.advance(0.2)
    second = tokens.attach(entry)
    assert second is not None
    assert second != first
    assert tokens.minted == 2


async def test_the_relays_whoami_signs_nothing_and_the_gate_signs_once_from_its_cache(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(identity_token=token_settings(keys_file(tmp_path, new_private_jwk())))
    tokens = stack.gate.gatekeeper.tokens
    assert tokens is not None
    alice = stack.fake.login("alice@example.com")
    auth = {"X-Session-Token": alice.token}
    async with stack.client() as c:
        r = await c.get("/sessions/whoami", headers=auth)  # the client's own whoami, relayed
        assert r.status_code == 200
        assert tokens.minted == 0  # cached, but nobody needs a token yet
        whoami = stack.fake.count("GET", "/sessions/whoami")
        for _ in range(3):
            assert (await c.get("/x", headers=auth)).status_code == 200
        assert stack.fake.count("GET", "/sessions/whoami") == whoami  # the relay's cache entry
    assert tokens.minted == 1
    audience = stack.upstream_server.url.rstrip("/")
    assert pyjwt_verify(stack.url + JWKS, bearer_of(stack.app), audience)["sid"] == alice.id


async def test_with_kratos_tokens_the_relays_whoami_is_not_cached_without_one(
    make_stack: Callable[..., Stack],
) -> None:
    """The client's whoami asks no tokenize_as: its answer has no token to keep, so it is not
    cached (a cached entry without a token would be 503 for the gate)."""
    stack = make_stack(identity_token={"enabled": True, "source": "kratos", "tokenize_as": "jwt"})
    alice = stack.fake.login("alice@example.com")
    auth = {"X-Session-Token": alice.token}
    async with stack.client() as c:
        r = await c.get("/sessions/whoami", headers=auth)
        assert r.status_code == 200
        assert "tokenized" not in r.json()
        r = await c.get("/x", headers=auth)
        assert r.status_code == 200  # the gate's own whoami, with tokenize_as
    (value,) = app_headers(stack.app, "authorization")
    assert value.startswith("Bearer ey")


async def test_spoofed_authorization_never_reaches_the_app(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(identity_token=token_settings(keys_file(tmp_path, new_private_jwk())))
    audience = stack.upstream_server.url.rstrip("/")
    alice = stack.fake.login("alice@example.com")
    forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."
    async with stack.client() as c:
        # the session's own Bearer credential: consumed by the gate, replaced by the JWT
        r = await c.get("/a", headers={"Authorization": f"Bearer {alice.token}"})
        assert r.status_code == 200
        token = bearer_of(stack.app)
        assert pyjwt_verify(stack.url + JWKS, token, audience)["sid"] == alice.id
        # a forged Bearer next to a real session: only the gate's token arrives
        r = await c.get(
            "/b",
            headers=[
                ("X-Session-Token", alice.token),
                ("Authorization", f"Bearer {forged}"),
                ("authorization", "Basic YWRtaW46YWRtaW4="),
            ],
        )
        assert r.status_code == 200
        spoof_free = bearer_of(stack.app)  # exactly one Authorization: the gate's token
        assert pyjwt_verify(stack.url + JWKS, spoof_free, audience)["sid"] == alice.id
        # a public path: every client Authorization is removed, whatever its scheme
        r = await c.get(
            "/public/page",
            headers=[("Authorization", f"Bearer {forged}"), ("AUTHORIZATION", "Basic eDp5")],
        )
        assert r.status_code == 200
        assert app_headers(stack.app, "authorization") == []


async def test_a_spoofed_identity_token_header_never_reaches_the_app(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(
        identity_token=token_settings(
            keys_file(tmp_path, new_private_jwk()), header="X-Identity-Token"
        )
    )
    alice = stack.fake.login("alice@example.com")
    spoofs = [("X-Identity-Token", "f1"), ("x_identity_token", "f2"), ("X-IDENTITY_TOKEN", "f3")]
    async with stack.client() as c:
        r = await c.get(
            "/x",
            headers=[("X-Session-Token", alice.token), ("Authorization", "Basic eDp5"), *spoofs],
        )
        assert r.status_code == 200
        received = [(k, v) for k, v in stack.app.requests[-1]["headers"] if "identity" in k.lower()]
        assert len(received) == 1  # the gate's bare JWT
        assert received[0][1].count(".") == 2
        jwks_url = stack.url + JWKS
        audience = stack.upstream_server.url.rstrip("/")
        assert pyjwt_verify(jwks_url, received[0][1], audience)["sub"] == alice.identity_id
        # another header: the proxy's credential stripping as before (Basic passes, Bearer not)
        assert app_headers(stack.app, "authorization") == ["Basic eDp5"]
        r = await c.get("/public/x", headers=spoofs)
        assert r.status_code == 200
        assert not [k for k, _ in stack.app.requests[-1]["headers"] if "identity" in k.lower()]


async def test_rotation_tokens_verify_during_and_after_a_key_switch(
    make_stack: Callable[..., Stack], gate_on: Callable[..., str], tmp_path: Path
) -> None:
    """README "Rotating the keys": publish the new key, switch signing_kid, then remove the old
    key once the last token it signed has expired. Each step is a restart with the new file."""
    old, new = new_private_jwk("ES256"), new_private_jwk("EdDSA")
    stack = make_stack(identity_token=token_settings(keys_file(tmp_path, old, name="1.json")))
    audience = stack.upstream_server.url.rstrip("/")
    alice = stack.fake.login("alice@example.com")
    auth = {"X-Session-Token": alice.token}

    async def token_from(url: str) -> tuple[str, str]:
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            assert (await c.get("/x", headers=auth)).status_code == 200
        token = bearer_of(stack.app)
        return token, jwt.get_unverified_header(token)["kid"]

    t1, kid = await token_from(stack.url)
    assert kid == old["kid"]
    # 1. the new key is published, the old one still signs
    step1 = gate_on(stack, identity_token=token_settings(keys_file(tmp_path, old, new, name="2")))
    t2, kid = await token_from(step1)
    assert kid == old["kid"]
    async with httpx.AsyncClient(timeout=10) as c:
        published = (await c.get(step1 + JWKS)).json()["keys"]
    assert [k["kid"] for k in published] == [old["kid"], new["kid"]]
    # 2. after the JWKS max-age: the new key signs; tokens of the old key still verify
    step2 = gate_on(
        stack,
        identity_token=token_settings(
            keys_file(tmp_path, old, new, name="3"), signing_kid=new["kid"]
        ),
    )
    t3, kid = await token_from(step2)
    assert kid == new["kid"]
    for token in (t1, t2, t3):
        assert pyjwt_verify(step2 + JWKS, token, audience)["sub"] == alice.identity_id
    assert all(v["ok"] for v in jose_verify(step2 + JWKS, audience, t1, t2, t3))
    # 3. the old key removed: its tokens fail, the new key's verify
    step3 = gate_on(stack, identity_token=token_settings(keys_file(tmp_path, new, name="4")))
    t4, kid = await token_from(step3)
    assert kid == new["kid"]
    for token in (t3, t4):
        assert pyjwt_verify(step3 + JWKS, token, audience)["sid"] == alice.id
    for token in (t1, t2):
        with pytest.raises(jwt.PyJWKClientError):
            pyjwt_verify(step3 + JWKS, token, audience)
    verdicts = jose_verify(step3 + JWKS, audience, t1, t2, t3, t4)
    assert [v["ok"] for v in verdicts] == [False, False, True, True]
    assert {v.get("code") for v in verdicts[:2]} == {"ERR_JWKS_NO_MATCHING_KEY"}


# -- source: kratos ---------------------------------------------------------------------------
async def test_kratos_tokens_are_forwarded_and_cached_until_their_exp(
    make_stack: Callable[..., Stack],
) -> None:
    template = TokenizeTemplate(ttl=timedelta(seconds=2), claims={"role": "member"})
    stack = make_stack(
        {"tokenize_templates": {"app": template}},
        identity_token={"enabled": True, "source": "kratos", "tokenize_as": "app"},
    )
    alice = stack.fake.login("alice@example.com")
    whoami = stack.gate.gatekeeper.authenticator
    keys = jwt.PyJWKSet.from_dict(stack.fake.jwks)
    async with stack.client() as c:
        for _ in range(3):
            r = await c.get("/x", headers={"X-Session-Token": alice.token})
            assert r.status_code == 200
        assert whoami.whoami_calls == 1
        tokens = {bearer_of(stack.app, i) for i in range(3)}
        assert len(tokens) == 1
        token = tokens.pop()
        kid = jwt.get_unverified_header(token)["kid"]
        claims = jwt.decode(token, keys[kid].key, algorithms=["ES256"])
        assert claims["sub"] == alice.identity_id
        assert claims["sid"] == alice.id
        assert claims["iss"] == stack.fake.public_url
        assert claims["role"] == "member"
        assert claims["exp"] - claims["iat"] == 2
        # the relay's whoami (from the cache) never shows a client the token it did not ask for
        r = await c.get("/sessions/whoami", headers={"X-Session-Token": alice.token})
        assert r.status_code == 200
        assert "tokenized" not in r.json()
        assert whoami.whoami_calls == 1
        # the entry lives until the token's exp, then whoami again (a new token)
        await asyncio.sleep(max(0.0, claims["exp"] - time.time()) + 0.1)
        r = await c.get("/x", headers={"X-Session-Token": alice.token})
        assert r.status_code == 200
        assert whoami.whoami_calls == 2
        assert bearer_of(stack.app) != token


async def test_a_template_kratos_refuses_is_503_and_nothing_reaches_the_app(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(identity_token={"enabled": True, "source": "kratos", "tokenize_as": "nope"})
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        r = await c.get("/x", headers={"X-Session-Token": alice.token})
        assert r.status_code == 503
        assert r.headers["retry-after"]
        r = await c.get("/x", headers={"X-Session-Token": alice.token})
        assert r.status_code == 503
        r = await c.get("/x")  # no session: still 401 (Kratos finds the session first)
        assert r.status_code == 401
        # no JWKS of the gate's own: Kratos publishes its keys
        assert (await c.get(JWKS)).status_code == 401
    assert stack.app.requests == []


# -- middleware mode --------------------------------------------------------------------------
async def test_middleware_mode_gets_the_token_and_serves_the_keys(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack()
    app = EchoApp()
    settings = settings_for(
        stack.kratos.public_url,
        "http://127.0.0.1:9",
        identity_token=token_settings(
            keys_file(tmp_path, new_private_jwk("EdDSA")), audience="urn:app"
        ),
    )
    server = UvicornThread(SessionGateMiddleware(app, settings))
    server.start()
    try:
        alice = stack.fake.login("alice@example.com")
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            r = await c.get(
                "/x",
                headers={"X-Session-Token": alice.token, "Authorization": "Basic eDp5"},
            )
            assert r.status_code == 200
        token = bearer_of(app)
        assert pyjwt_verify(server.url + JWKS, token, "urn:app")["sub"] == alice.identity_id
        (verdict,) = jose_verify(server.url + JWKS, "urn:app", token)
        assert verdict["ok"]
        # a public path: every client Authorization is removed, whatever its scheme
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            r = await c.get(
                "/public/page",
                headers=[("Authorization", f"Bearer {alice.token}"), ("authorization", "Basic x")],
            )
            assert r.status_code == 200
        assert app_headers(app, "authorization") == []
        # a WebSocket authenticated by its Bearer session token carries the gate's token instead
        from websockets.asyncio.client import connect

        url = server.url.replace("http://", "ws://", 1) + "/ws"
        headers = {"Authorization": f"Bearer {alice.token}"}
        async with connect(url, additional_headers=headers, open_timeout=5) as ws:
            await ws.recv()
        assert app.requests[-1]["method"] == "WS"
        socket_token = bearer_of(app)
        assert socket_token != alice.token
        assert pyjwt_verify(server.url + JWKS, socket_token, "urn:app")["sid"] == alice.id
    finally:
        server.stop()


# -- the README's verification snippets run as written ------------------------------------------
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def readme_block(language: str, marker: str) -> str:
    for block in re.findall(rf"```{language}\n(.*?)```", README, re.S):
        if marker in block:
            return block
    raise AssertionError(f"no {language} block with {marker!r} in the README")


def node_eval(code: str) -> str:
    """Run an ES module snippet with Node in tests/js (where `jose` is installed)."""
    return subprocess.run(
        ["node", "--input-type=module", "-e", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=JS,
    ).stdout


def as_deployed(source: str, gate_url: str, audience: str) -> str:
    return source.replace("https://gate.example.com/", gate_url + "/").replace(
        "http://app.internal:8080", audience
    )


async def test_the_readme_snippets_verify_the_gates_token(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(
        identity_token={"enabled": True, "keys_file": str(keys_file(tmp_path, new_private_jwk()))},
        public_url="https://gate.example.com",  # the token's issuer
    )
    audience = stack.upstream_server.url.rstrip("/")
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        assert (await c.get("/x", headers={"X-Session-Token": alice.token})).status_code == 200
    (authorization,) = app_headers(stack.app, "authorization")

    source = as_deployed(readme_block("python", "PyJWKClient"), stack.url, audience)
    namespace: dict[str, Any] = {}
    exec(compile(source, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    claims = namespace["identity_of"](authorization)
    assert claims["sub"] == alice.identity_id
    with pytest.raises(jwt.InvalidTokenError):
        namespace["identity_of"]("Basic eDp5")

    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    module = JS / f".readme-example-{os.getpid()}.mjs"  # beside node_modules: `jose` resolves
    module.write_text(as_deployed(readme_block("js", "createRemoteJWKSet"), stack.url, audience))
    try:
        out = node_eval(
            f"const m = await import({json.dumps(module.as_uri())});"
            f"console.log(JSON.stringify(await m.identityOf({json.dumps(authorization)})));"
        )
    finally:
        module.unlink()
    assert json.loads(out) == claims


# -- forward auth -----------------------------------------------------------------------------
def forwarded(uri: str) -> list[tuple[str, str]]:
    return [
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "app.example.test"),
        ("X-Forwarded-Uri", uri),
    ]


async def test_a_decision_answer_carries_the_token_for_the_proxy_to_copy(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(
        identity_token=token_settings(keys_file(tmp_path, new_private_jwk())),
        forward_auth={"enabled": True, "source": "forwarded"},
    )
    audience = stack.upstream_server.url.rstrip("/")
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        r = await c.get(
            "/decisions",
            headers=[*forwarded("/cart"), ("Authorization", f"Bearer {alice.token}")],
        )
        assert r.status_code == 200
        scheme, token = r.headers["authorization"].split(" ")
        assert scheme == "Bearer"
        assert pyjwt_verify(stack.url + JWKS, token, audience)["sid"] == alice.id
        # the client's Authorization (here the Ory session token) is named for removal even
        # so: a proxy that does not copy the answer's Authorization must not pass it on
        assert "authorization" in r.headers["x-envoy-auth-headers-to-remove"].split(",")
        # ... whatever the client's scheme
        r = await c.get(
            "/decisions",
            headers=[
                *forwarded("/cart"),
                ("X-Session-Token", alice.token),
                ("Authorization", "Basic eDp5"),
            ],
        )
        assert r.status_code == 200
        assert r.headers["authorization"].startswith("Bearer ")
        assert "authorization" in r.headers["x-envoy-auth-headers-to-remove"].split(",")
        # a public path: no token, and every client Authorization is to be removed
        r = await c.get(
            "/decisions", headers=[*forwarded("/public/x"), ("Authorization", "Basic eDp5")]
        )
        assert r.status_code == 200
        assert "authorization" not in r.headers
        assert "authorization" in r.headers["x-envoy-auth-headers-to-remove"].split(",")


async def test_a_decision_names_authorization_even_without_credential_stripping(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(
        identity_token=token_settings(keys_file(tmp_path, new_private_jwk())),
        forward_auth={"enabled": True, "source": "forwarded"},
        upstream={"strip_credentials": False},
    )
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as c:
        r = await c.get(
            "/decisions",
            headers=[*forwarded("/cart"), ("Authorization", f"Bearer {alice.token}")],
        )
    assert r.status_code == 200
    assert "authorization" in r.headers["x-envoy-auth-headers-to-remove"].split(",")


# -- pieces ---------------------------------------------------------------------------------
def test_claim_paths_take_every_item_of_a_list() -> None:
    session = {
        "authentication_methods": [
            {"method": "password", "aal": "aal1"},
            {"method": "totp", "aal": "aal2"},
            {"method": "password", "aal": "aal1"},
            {"aal": "aal1"},
        ],
        "identity": {"traits": {"groups": [{"name": "a"}, {"name": "b"}]}},
    }
    assert claim_value(session, ("authentication_methods", "*", "method")) == [
        "password",
        "totp",
    ]
    assert claim_value(session, ("identity", "traits", "groups", "*", "name")) == ["a", "b"]
    assert claim_value(session, ("identity", "*")) is None  # not a list
    assert claim_value(session, ("identity", "traits", "missing")) is None


def test_only_a_compact_jws_from_kratos_goes_into_a_header() -> None:
    exp = int(time.time()) + 60
    good = jwt.encode({"exp": exp}, "k" * 40, algorithm="HS256")
    assert kratos_token({"tokenized": good}) == (good, float(exp))
    tokens = IdentityTokens(header="Authorization", source="kratos")
    for bad in [
        good + "=",  # padding: PyJWT reads it, a header would carry it
        good + "\r\nX-User-Id: admin",
        good + " x",
        good.replace(".", "..", 1),
        good.rsplit(".", 1)[0],
        "é" + good,
        "",
    ]:
        assert kratos_token({"tokenized": bad}) is None, bad
        body = json.dumps({"id": "s1", "identity": {"id": "i1"}, "tokenized": bad}).encode()
        entry = CachedSession.of("s1", "i1", time.time() + 600, body)
        assert tokens.attach(entry) is None  # no token: the gate answers 503


def test_without_tokenized_keeps_kratos_bytes() -> None:
    body = b'{"id":"s","active":true,"identity":{"id":"i"},"tokenized":"a.b.c"}'
    assert without_tokenized(body) == b'{"id":"s","active":true,"identity":{"id":"i"}}'
    plain = b'{"id":"s"}'
    assert without_tokenized(plain) is plain
    spaced = b'{"id": "s", "tokenized": "a.b.c"}'
    assert json.loads(without_tokenized(spaced)) == {"id": "s"}


async def test_a_websocket_to_the_app_carries_the_token(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    from websockets.asyncio.client import connect

    stack = make_stack(identity_token=token_settings(keys_file(tmp_path, new_private_jwk())))
    alice = stack.fake.login("alice@example.com")
    url = stack.url.replace("http://", "ws://", 1) + "/ws"
    headers = {"Authorization": f"Bearer {alice.token}"}
    async with connect(url, additional_headers=headers, open_timeout=5) as ws:
        await ws.recv()
    token = bearer_of(stack.app)
    audience = stack.upstream_server.url.rstrip("/")
    assert pyjwt_verify(stack.url + JWKS, token, audience)["sid"] == alice.id


# -- the shared mode: an entry from Redis gets its token too ------------------------------------
async def test_a_session_from_redis_gets_its_token_without_whoami(
    make_stack: Callable[..., Stack],
    gate_on: Callable[..., str],
    redis_servers: RedisServers,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("SESSIONGATE_SECRET", "identity-token-test-secret-0123456789abcdef")
    redis = redis_servers.start()
    token = token_settings(keys_file(tmp_path, new_private_jwk()))
    shared = {"redis_url": redis.url}
    stack = make_stack(identity_token=token, shared=shared)
    other = gate_on(stack, identity_token=token, shared=shared)
    alice = stack.fake.login("alice@example.com")
    auth = {"X-Session-Token": alice.token}
    async with httpx.AsyncClient(timeout=10) as c:
        assert (await c.get(stack.url + "/x", headers=auth)).status_code == 200
        first = bearer_of(stack.app)
        whoami = stack.fake.count("GET", "/sessions/whoami")
        assert (await c.get(other + "/x", headers=auth)).status_code == 200
        assert stack.fake.count("GET", "/sessions/whoami") == whoami  # from Redis
    second = bearer_of(stack.app)
    assert second != first  # signed by the process that read the session
    assert await redis_values_without(redis.url, first.encode())
    audience = stack.upstream_server.url.rstrip("/")
    assert pyjwt_verify(other + JWKS, second, audience)["sid"] == alice.id


async def test_kratos_tokens_never_go_to_redis(
    make_stack: Callable[..., Stack],
    gate_on: Callable[..., str],
    redis_servers: RedisServers,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kratos' token is a bearer credential for the app: a session with one is not shared
    through Redis; each process asks whoami (with tokenize_as) for its own."""
    monkeypatch.setenv("SESSIONGATE_SECRET", "identity-token-test-secret-0123456789abcdef")
    redis = redis_servers.start()
    token = {"enabled": True, "source": "kratos", "tokenize_as": "app"}
    fake_options = {"tokenize_templates": {"app": TokenizeTemplate(ttl=timedelta(seconds=30))}}
    shared = {"redis_url": redis.url}
    stack = make_stack(fake_options, identity_token=token, shared=shared)
    other = gate_on(stack, identity_token=token, shared=shared)
    alice = stack.fake.login("alice@example.com")
    auth = {"X-Session-Token": alice.token}
    async with httpx.AsyncClient(timeout=10) as c:
        assert (await c.get(stack.url + "/x", headers=auth)).status_code == 200
        first = bearer_of(stack.app)
        whoami = stack.fake.count("GET", "/sessions/whoami")
        assert (await c.get(other + "/x", headers=auth)).status_code == 200
        assert stack.fake.count("GET", "/sessions/whoami") == whoami + 1  # its own whoami
        assert (await c.get(other + "/x", headers=auth)).status_code == 200
        assert stack.fake.count("GET", "/sessions/whoami") == whoami + 1  # then its cache
    assert bearer_of(stack.app).count(".") == 2
    assert await redis_values_without(redis.url, first.encode())


async def redis_values_without(url: str, needle: bytes) -> bool:
    """No string value in Redis holds `needle` (entries are deflated: look inflated too)."""
    import zlib

    import redis.asyncio as aioredis

    from sessiongate.cache import _KRATOS_WORDS

    client = aioredis.from_url(url)
    try:
        async for name in client.scan_iter(count=1000):
            if await client.type(name) != b"string":
                continue
            value = await client.get(name) or b""
            assert needle not in value
            for at in range(len(value)):  # the deflated body starts somewhere in the entry
                try:
                    inflated = zlib.decompressobj(-15, zdict=_KRATOS_WORDS).decompress(value[at:])
                except zlib.error:
                    continue
                assert needle not in inflated
    finally:
        await client.aclose()
    return True
