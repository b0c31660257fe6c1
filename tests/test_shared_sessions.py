"""`shared.cache_sessions`: one whoami per session for the whole fleet, real Redis, real gates.

Each test runs `sessiongate serve` processes (shared_fleet.py) in front of one Kratos fake and
counts whoami calls where Kratos receives them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time

import httpx
import redis
import redis.asyncio as aioredis

from redis_servers import RedisServers, redis_servers  # noqa: F401
from sessiongate.credentials import Credential
from sessiongate.shared_sessions import credential_digest, derive
from shared_fleet import SECRET, fleet, get, get_all, whoami_calls
from test_cli import Backends, backends  # noqa: F401


def _entry_key(token: str, secret: str = SECRET) -> str:
    digest = credential_digest(derive(secret.encode(), b"credential"), Credential("token", token))
    return f"sessiongate:s:{digest}"


async def test_cold_start_of_1000_sessions_over_three_processes_costs_1000_whoami(
    tmp_path,
    backends: Backends,  # noqa: F811
    redis_servers: RedisServers,  # noqa: F811
):
    fake = backends.kratos.fake
    ident = fake.create_identity(email="many@example.com")
    tokens = [fake.create_session(ident).token for _ in range(1000)]
    server = redis_servers.start()
    with fleet(tmp_path, backends, server, count=3) as gates:
        before = whoami_calls(backends)
        statuses = await get_all(gates, tokens)  # every session at every process, at once
        assert statuses.count(200) == len(statuses) == 3000
        logs = "".join(g.output()[-1500:] for g in gates)
        assert whoami_calls(backends) - before == 1000, logs
        # warm now: the local caches answer, Kratos and Redis hear nothing new
        assert (await get_all(gates, tokens[:100])).count(200) == 300
        assert whoami_calls(backends) - before == 1000
    # nothing in Redis names the credential
    keys = server.cli("KEYS", "*")
    assert tokens[0] not in keys
    raw = redis.Redis(port=server.port)
    entries = [raw.get(_entry_key(t)) for t in tokens[:5]]
    raw.close()
    assert all(e is not None and t.encode() not in e for t, e in zip(tokens, entries, strict=False))


async def test_an_altered_or_forged_entry_is_a_miss(
    tmp_path,
    backends: Backends,  # noqa: F811
    redis_servers: RedisServers,  # noqa: F811
):
    fake = backends.kratos.fake
    alice = fake.login("alice@example.com")
    mallory = fake.login("mallory@example.com")
    junk = "ory_st_junk-token-that-kratos-never-issued"
    server = redis_servers.start()
    r = aioredis.Redis(port=server.port)
    try:
        with fleet(tmp_path, backends, server, count=2) as (a, b):
            async with httpx.AsyncClient(timeout=10) as client:
                assert (await get(client, a, alice.token)).status_code == 200
                stored = await r.get(_entry_key(alice.token))
                assert stored is not None

                # altered: alice's entry now names mallory's identity (the MAC no longer fits)
                altered = stored.replace(alice.identity_id.encode(), mallory.identity_id.encode())
                assert altered != stored
                await r.set(_entry_key(alice.token), altered, px=60_000)
                before = whoami_calls(backends)
                answer = await get(client, b, alice.token)
                assert answer.status_code == 200
                assert ["x-user-id", alice.identity_id] in answer.json()["headers"]
                assert whoami_calls(backends) == before + 1  # a miss: Kratos asked again

                # forged for a junk token: alice's genuine entry copied under its key (the MAC
                # covers the key), then re-signed under a secret the gate does not have
                payload = stored[:-32]
                wrong_key = derive(b"another-secret-another-secret-0123456789", b"entry-mac")
                for forged in (stored, payload + _mac(wrong_key, _entry_key(junk), payload)):
                    await r.set(_entry_key(junk), forged, px=60_000)
                    before = whoami_calls(backends)
                    assert (await get(client, b, junk)).status_code == 401
                    assert whoami_calls(backends) == before + 1
                    await r.delete(_entry_key(junk))
                    await asyncio.sleep(2.1)  # past cache.negative_ttl: b asks again
            assert "bad MAC" in b.output()
    finally:
        await r.aclose()


def _mac(mac_key: bytes, entry_key: str, payload: bytes) -> bytes:
    return hmac.new(mac_key, entry_key.encode() + b"\x00" + payload, hashlib.sha256).digest()


async def test_a_dead_lock_holder_blocks_nobody_past_ory_timeout(
    tmp_path,
    backends: Backends,  # noqa: F811
    redis_servers: RedisServers,  # noqa: F811
):
    fake = backends.kratos.fake
    alice = fake.login("alice@example.com")
    server = redis_servers.start()
    with fleet(tmp_path, backends, server, count=1) as (a,):
        # what a holder killed mid-whoami leaves: its lock, for ory.timeout (2 s), no wake-up
        lock = _entry_key(alice.token).replace(":s:", ":lock:")
        server.cli("SET", lock, "dead-holder", "PX", "2000")
        async with httpx.AsyncClient(timeout=10) as client:
            started = time.monotonic()
            assert (await get(client, a, alice.token)).status_code == 200
            waited = time.monotonic() - started
        assert waited < 2.0 + 1.0, waited  # ory.timeout, then its own whoami
        assert whoami_calls(backends) == 1


async def test_a_local_hit_never_touches_redis_and_redis_down_degrades_to_own_whoami(
    tmp_path,
    backends: Backends,  # noqa: F811
    redis_servers: RedisServers,  # noqa: F811
):
    fake = backends.kratos.fake
    alice, bob = fake.login("alice@example.com"), fake.login("bob@example.com")
    server = redis_servers.start()
    with fleet(tmp_path, backends, server, count=1, timeout="300ms") as (a,):
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await get(client, a, alice.token)).status_code == 200
            server.stop()  # stalled: any Redis call now costs shared.timeout
            try:
                slow = 0
                for _ in range(20):
                    started = time.monotonic()
                    assert (await get(client, a, alice.token)).status_code == 200
                    took = time.monotonic() - started
                    # hits are local; once the follower counts Redis as gone (1 s of silence) it
                    # drops the local cache, and that one miss pays shared.timeout before its own
                    # whoami
                    assert took < 0.3 + 0.5, took
                    slow += took >= 0.2
                assert slow <= 1
                # a new session with Redis stalled: the gate's own whoami, never a refusal
                assert (await get(client, a, bob.token)).status_code == 200
            finally:
                server.cont()
            server.kill()
            carol = fake.login("carol@example.com")
            assert (await get(client, a, carol.token)).status_code == 200
            assert (await get(client, a, "ory_st_junk")).status_code == 401


async def test_a_revoked_session_does_not_come_back_from_redis(
    tmp_path,
    backends: Backends,  # noqa: F811
    redis_servers: RedisServers,  # noqa: F811
):
    fake = backends.kratos.fake
    ident = fake.create_identity(email="alice@example.com")
    phone, laptop = fake.create_session(ident), fake.create_session(ident)
    server = redis_servers.start()
    with fleet(tmp_path, backends, server, count=2) as (a, b):
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await get(client, a, laptop.token)).status_code == 200  # now in Redis
            revoked = await client.delete(
                f"{a.url}/sessions/{laptop.id}", headers={"X-Session-Token": phone.token}
            )
            assert revoked.status_code == 204
            # b never saw the laptop: its entry is still in Redis, but revoked since its whoami
            assert (await get(client, b, laptop.token)).status_code == 401
            # admin-style identity-wide revocation (revoke others) spares the caller's session
            assert (await get(client, a, phone.token)).status_code == 200
            tablet = fake.create_session(ident)
            assert (await get(client, a, tablet.token)).status_code == 200
            others = await client.delete(
                f"{a.url}/sessions", headers={"X-Session-Token": phone.token}
            )
            assert others.status_code == 200
            assert (await get(client, b, tablet.token)).status_code == 401
            assert (await get(client, b, phone.token)).status_code == 200


async def test_an_entry_validated_before_redis_lost_its_data_does_not_come_back_after(
    tmp_path,
    backends: Backends,  # noqa: F811
    redis_servers: RedisServers,  # noqa: F811
):
    """A whoami answer in flight while Redis restarted empty is stored after the restart: its
    revocation record is gone, the entry is not. The entry carries the generation its epoch was
    read from, so a gate that started after the restart (nothing cached, nothing cleared, no
    tombstone) does not admit it from Redis."""
    fake = backends.kratos.fake
    ident = fake.create_identity(email="alice@example.com")
    phone, laptop = fake.create_session(ident), fake.create_session(ident)
    server = redis_servers.start()
    r = aioredis.Redis(port=server.port)
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    try:
        with fleet(tmp_path / "before", backends, server, count=1) as (a,):
            async with httpx.AsyncClient(timeout=10) as client:
                assert (await get(client, a, laptop.token)).status_code == 200
                for _ in range(50):  # stored in the background
                    stored = await r.get(_entry_key(laptop.token))
                    if stored is not None:
                        break
                    await asyncio.sleep(0.05)
                assert stored is not None
                revoked = await client.delete(
                    f"{a.url}/sessions/{laptop.id}", headers={"X-Session-Token": phone.token}
                )
                assert revoked.status_code == 204
        server.restart()
        await r.aclose()
        r = aioredis.Redis(port=server.port)
        await r.set(_entry_key(laptop.token), stored, px=60_000)  # the late store lands
        with fleet(tmp_path / "after", backends, server, count=1) as (c,):
            async with httpx.AsyncClient(timeout=10) as client:
                for _ in range(100):  # c follows the new Redis (its generation is trusted)
                    ready = (await client.get(c.url + "/health/ready")).json()
                    if ready["shared"]["redis"] == "connected":
                        break
                    await asyncio.sleep(0.05)
                assert (await get(client, c, laptop.token)).status_code == 401
                assert (await get(client, c, phone.token)).status_code == 200
    finally:
        await r.aclose()


async def test_waiters_for_a_lock_are_not_held_when_redis_goes_away(
    tmp_path,
    backends: Backends,  # noqa: F811
    redis_servers: RedisServers,  # noqa: F811
):
    """A lock whose holder cannot unlock (Redis killed under it) must not hold the requests
    waiting for it until the lock lapses: losing the subscription wakes them, and they ask
    whoami themselves."""
    fake = backends.kratos.fake
    alice = fake.login("alice@example.com")
    server = redis_servers.start()
    with fleet(tmp_path, backends, server, count=1) as (a,):
        async with httpx.AsyncClient(timeout=10) as client:
            # a first miss makes the process subscribe to the wake-ups
            assert (await get(client, a, fake.login("bob@example.com").token)).status_code == 200
            lock = _entry_key(alice.token).replace(":s:", ":lock:")
            server.cli("SET", lock, "holder-in-another-process", "PX", "2000")  # ory.timeout
            started = time.monotonic()
            waiting = asyncio.create_task(get(client, a, alice.token))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # waiting for the holder's word
            server.kill()
            assert (await waiting).status_code == 200
            waited = time.monotonic() - started
        # without the wake-up: the lock's 2 s, then its own whoami
        assert waited < 1.5, waited


async def test_a_flapping_redis_is_one_log_line_not_one_per_flap(
    tmp_path,
    backends: Backends,  # noqa: F811
    redis_servers: RedisServers,  # noqa: F811
):
    fake = backends.kratos.fake
    server = redis_servers.start()
    with fleet(tmp_path, backends, server, count=1, timeout="100ms") as (a,):
        async with httpx.AsyncClient(timeout=10) as client:
            for n in range(3):  # stalled, then back, three times; a new session each way
                server.stop()
                try:
                    token = fake.login(f"down{n}@example.com").token
                    assert (await get(client, a, token)).status_code == 200
                finally:
                    server.cont()
                token = fake.login(f"up{n}@example.com").token
                assert (await get(client, a, token)).status_code == 200
        output = a.output()
    assert output.count("shared session cache unavailable") == 1, output
    assert output.count("shared session cache available again") == 1, output
