"""`shared.consistency: strict`: a revocation through any gate process is refused on the very next
request at every other one; Redis unreachable means 503 (fail closed). Real Redis, real gates."""

from __future__ import annotations

import asyncio

import httpx

from redis_servers import RedisServers, redis_servers  # noqa: F401
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


async def until_status(client, gate, token, status, seconds=3.0) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(int(seconds / 0.1)):
        if (await get(client, gate, token)).status_code == status:
            return True
        await asyncio.sleep(0.1)
    return False
