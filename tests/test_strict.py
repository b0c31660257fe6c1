"""`shared.consistency: strict`: a revocation through any gate process is refused on the very next
request at every other one; Redis unreachable means 503 (fail closed). Real Redis, real gates."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from redis_servers import RedisServers, redis_servers  # noqa: F401
from sessiongate.cache import CachedSession
from sessiongate.config import Shared
from sessiongate.shared_redis import connect
from sessiongate.strict import Revocation, RevocationRecords
from shared_fleet import fleet, get, whoami_calls
from test_cli import Backends, backends  # noqa: F401


async def test_a_revocation_at_one_process_is_refused_on_the_next_request_at_the_other(
    tmp_path,
    backends: Backends,  # noqa: F811
    redis_servers: RedisServers,  # noqa: F811
):
    fake = backends.kratos.fake
    ident = fake.create_identity(email="alice@example.com")
    phone, laptop, tablet = (fake.create_session(ident) for _ in range(3))
    server = redis_servers.start()
    with fleet(tmp_path, backends, server, count=2, consistency="strict") as (a, b):
        async with httpx.AsyncClient(timeout=10) as client:
            for gate in (a, b):
                for s in (phone, laptop, tablet):
                    assert (await get(client, gate, s.token)).status_code == 200
            warm = whoami_calls(backends)
            for s in (phone, laptop, tablet):  # cached: no whoami, one Redis round trip each
                assert (await get(client, b, s.token)).status_code == 200
            assert whoami_calls(backends) == warm

            # the phone revokes the laptop through gate a; b refuses it on the very next request
            revoked = await client.delete(
                f"{a.url}/sessions/{laptop.id}", headers={"X-Session-Token": phone.token}
            )
            assert revoked.status_code == 204
            assert (await get(client, b, laptop.token)).status_code == 401
            assert (await get(client, b, phone.token)).status_code == 200

            # logout (API flow) through b: a refuses the tablet at once
            out = await client.request(
                "DELETE",
                f"{b.url}/self-service/logout/api",
                json={"session_token": tablet.token},
            )
            assert out.status_code == 204
            assert (await get(client, a, tablet.token)).status_code == 401
            assert (await get(client, a, phone.token)).status_code == 200

            # Redis forgets the gate's check script (SCRIPT FLUSH, as after a restart): the
            # next hit loads it again, neither a 503 nor a whoami
            warm = whoami_calls(backends)
            server.cli("SCRIPT", "FLUSH")
            assert (await get(client, a, phone.token)).status_code == 200
            assert (await get(client, a, laptop.token)).status_code == 401
            assert whoami_calls(backends) == warm


async def test_redis_down_in_strict_mode_is_503_and_nothing_is_relayed(
    tmp_path,
    backends: Backends,  # noqa: F811
    redis_servers: RedisServers,  # noqa: F811
):
    fake = backends.kratos.fake
    ident = fake.create_identity(email="alice@example.com")
    phone, laptop = fake.create_session(ident), fake.create_session(ident)
    server = redis_servers.start()
    with fleet(tmp_path, backends, server, count=1, consistency="strict") as (a,):
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await get(client, a, phone.token)).status_code == 200
            server.kill()
            cached = await get(client, a, phone.token)
            assert cached.status_code == 503
            assert cached.headers["retry-after"]
            assert (await get(client, a, laptop.token)).status_code == 503  # new: 503 too
            # a revocation with no record is not relayed: Kratos still has the laptop's session
            refused = await client.delete(
                f"{a.url}/sessions/{laptop.id}", headers={"X-Session-Token": phone.token}
            )
            assert refused.status_code == 503
            assert fake.is_session_active(laptop.id)
            server.restart()  # back (empty): served again, without a restart of the gate
            assert await until_status(client, a, phone.token, 200)


@pytest.mark.parametrize("loss", ["restart", "flushall"])
async def test_a_revocation_lost_with_redis_data_is_still_refused_on_the_next_request(
    tmp_path,
    backends: Backends,  # noqa: F811
    redis_servers: RedisServers,  # noqa: F811
    loss,
):
    """Redis restarted empty (or flushed) right after a revocation that gate b had not read
    from the stream yet (b was cut off from Redis at that moment): the record and the event
    are gone, yet b refuses the session on its very next request, before its follower notices
    the gap. Every other session keeps working (at most one whoami each)."""
    fake = backends.kratos.fake
    ident = fake.create_identity(email="alice@example.com")
    phone, laptop, tablet = (fake.create_session(ident) for _ in range(3))
    bob = fake.login("bob@example.com")
    server = redis_servers.start()
    with fleet(tmp_path, backends, server, count=2, consistency="strict") as (a, b):
        async with httpx.AsyncClient(timeout=10) as client:
            assert await until_connected(client, b)
            for gate in (a, b):
                for s in (phone, laptop, tablet, bob):
                    assert (await get(client, gate, s.token)).status_code == 200
            # b stalls with its Redis connections cut, so the revocation's event never reaches
            # it; b must resume within its follower's 1 s of silence (else it would drop its
            # cache on the silence alone and prove nothing)
            os.kill(b.proc.pid, signal.SIGSTOP)
            try:
                server.cli("CLIENT", "KILL", "TYPE", "normal")
                revoked = await client.delete(
                    f"{a.url}/sessions/{laptop.id}", headers={"X-Session-Token": phone.token}
                )
                assert revoked.status_code == 204
                server.restart() if loss == "restart" else server.cli("FLUSHALL")
            finally:
                os.kill(b.proc.pid, signal.SIGCONT)
            before = whoami_calls(backends)
            assert (await get(client, b, laptop.token)).status_code == 401
            for s in (phone, tablet, bob):
                assert (await get(client, b, s.token)).status_code == 200
            assert whoami_calls(backends) - before <= 4  # at most one whoami each
            # the followers notice the gap (each drops its cache once): served from the caches
            # again, and the laptop still refused everywhere
            for _ in range(20):
                await asyncio.sleep(0.2)
                for gate in (a, b):
                    assert (await get(client, gate, laptop.token)).status_code == 401
                warm = whoami_calls(backends)
                for gate in (a, b):
                    for s in (phone, tablet, bob):
                        assert (await get(client, gate, s.token)).status_code == 200
                if whoami_calls(backends) == warm:
                    break
            else:
                raise AssertionError("the caches never served again")


async def test_epochs_never_go_back_when_redis_loses_its_counter(
    redis_servers: RedisServers,  # noqa: F811
):
    """Redis lost its data but not its generation key (restored from an older snapshot, or a
    replica that lagged promoted): the epoch counter starts again lower. A revocation recorded
    afterwards must still be above the epoch of every entry validated before, or that entry
    would outlive its revocation. Real Redis, the records as the gates use them."""
    server = redis_servers.start()
    shared = Shared(redis_url=server.url)
    client = connect(shared)
    records = RevocationRecords(client, shared, keep=120.0)
    records.trusted = lambda: b"g1"  # as a follower of that generation would
    server.cli("SET", "sessiongate:generation", "g1")
    try:
        for n in range(50):  # revocations of other sessions: the counter is at 50 or more
            await records.confirm(Revocation(session_id=f"other-{n}"))
        entry = CachedSession.of("s1", "i1", time.time() + 3600, b"{}")
        records.tag(entry, await records.stamp())  # read before its whoami
        assert entry.epoch >= 50
        assert await records.still_valid(entry)

        server.restart()  # empty...
        server.cli("SET", "sessiongate:generation", "g1")  # ...but the same generation
        revoked = await records.confirm(Revocation(session_id="s1"))
        assert not await records.still_valid(entry)
        assert revoked > entry.epoch
        # the identity-wide and clear records too
        other = CachedSession.of("s2", "i2", time.time() + 3600, b"{}")
        records.tag(other, (entry.epoch, b"g1"))
        assert await records.still_valid(other)
        await records.confirm(Revocation(identity_id="i2"))
        assert not await records.still_valid(other)
    finally:
        await client.aclose()


async def until_connected(client, gate, seconds=5.0) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(int(seconds / 0.05)):
        ready = (await client.get(gate.url + "/health/ready")).json()
        if ready.get("shared", {}).get("redis") == "connected":
            return True
        await asyncio.sleep(0.05)
    return False


async def until_status(client, gate, token, status, seconds=3.0) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(int(seconds / 0.1)):
        if (await get(client, gate, token)).status_code == status:
            return True
        await asyncio.sleep(0.1)
    return False
