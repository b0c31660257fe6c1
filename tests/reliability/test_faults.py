"""Fault injection between real servers: the gate fails closed, answers promptly, recovers.

Every test runs the Kratos fake, the echo app and the gate under uvicorn on 127.0.0.1, with a
`FaultProxy` (faultproxy.py) between the gate and Kratos and another between the gate and the
app. A test switches a proxy into a fault and checks what a user would notice:

* the app receives no request the gate did not validate (every request it sees carries the
  identity of a session Kratos confirmed, none of the denied paths);
* clients get 503 (401 where Kratos said so, 502/504 for the app) within the configured
  timeout plus a margin, not after a hang;
* switching the proxy back to pass-through is enough: the next request is admitted, with no
  restart of the gate;
* afterwards the tasks on the gate's loop, and the test process' file descriptors (counted
  with both proxies' connections hung up, so that idle keep-alive connections opening and
  expiring do not blur the count), come back to where they were before the fault.

Slow-loris clients are here too. Under uvicorn (these tests) nothing bounds how long a client
may take to send its request head: uvicorn starts its keep-alive timer only after a response,
so a trickling client costs one file descriptor (and no task) for as long as it keeps
trickling. In production granian drops it after `serve.HEADER_READ_TIMEOUT_MS`. A request
body that stops arriving for `upstream.timeout` is answered 408 and its upstream connection
released (the last test: found by this suite, fixed in proxy.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from faultproxy import FaultProxy
from gate_stack import Stack, settings_for

from apps import EchoApp
from resources import PeakRSS, gate_task_count, until
from sessiongate.gate import Gate
from sessiongate.testing import CreatedSession, FakeKratosServer, UvicornThread, serve_thread

MB = 1 << 20
ORY_TIMEOUT = 1.0
UPSTREAM_TIMEOUT = 1.0
CONNECT_TIMEOUT = 1.0
#: "Promptly": the configured timeout plus this, on a shared 2-core host.
MARGIN = 1.5
#: Requests sent into each fault at once: a per-request leak of even one socket shows.
BURST = 8
WHOAMI = ("GET", "/sessions/whoami")


# -- the stack ----------------------------------------------------------------------------------
@dataclass
class FaultStack(Stack):
    kratos_proxy: FaultProxy
    app_proxy: FaultProxy


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


@pytest.fixture
def make_faulty(gate_server: str) -> Iterator[Callable[..., FaultStack]]:
    """gate → FaultProxy → Kratos fake, gate → FaultProxy → EchoApp; short timeouts."""
    started: list[Callable[[], None]] = []

    def build(**overrides: Any) -> FaultStack:
        kratos = FakeKratosServer().start()
        started.append(kratos.stop)
        kratos_proxy = FaultProxy(_port(kratos.public_url)).start()
        started.append(kratos_proxy.stop)
        app = EchoApp()
        upstream = UvicornThread(app)
        upstream.start()
        started.append(upstream.stop)
        app_proxy = FaultProxy(upstream.port).start()
        started.append(app_proxy.stop)
        sections: dict[str, Any] = {
            "ory": {"timeout": ORY_TIMEOUT},
            "upstream": {"timeout": UPSTREAM_TIMEOUT, "connect_timeout": CONNECT_TIMEOUT},
        }
        for key, value in overrides.items():
            sections[key] = {**sections.get(key, {}), **value}
        gate = Gate(settings_for(kratos_proxy.url, app_proxy.url, **sections))
        server = serve_thread(gate_server, gate, lifespan="on")
        server.start()
        started.append(server.stop)
        return FaultStack(kratos, app, gate, server, upstream, kratos_proxy, app_proxy)

    yield build
    for stop in reversed(started):
        stop()


# -- helpers ------------------------------------------------------------------------------------
def token(session: CreatedSession) -> dict[str, str]:
    return {"X-Session-Token": session.token}


def login(stack: FaultStack, name: str) -> CreatedSession:
    return stack.fake.login(f"{name}@example.com")


def fds() -> int:
    return psutil.Process().num_fds()


@dataclass(frozen=True)
class Baseline:
    fds: int
    tasks: int


async def _hung_up_fds(stack: FaultStack) -> int:
    """Descriptors once both proxies hung up on every connection through them and the count
    stopped moving (at most ~2.5 s). Idle keep-alive connections come and go on the servers'
    own timers (uvicorn drops them after 5 s); with none left the count is exact, and a socket
    the gate failed to close stays counted."""
    stack.kratos_proxy.hang_up()
    stack.app_proxy.hang_up()
    readings: list[int] = []
    for _ in range(50):
        readings.append(fds())
        if len(readings) >= 3 and len(set(readings[-3:])) == 1:
            break
        await asyncio.sleep(0.05)
    return readings[-1]


async def _quiet_tasks(stack: FaultStack) -> int:
    """The gate's task count once three readings in a row agree (at most ~2.5 s)."""
    readings: list[int] = []
    for _ in range(50):
        readings.append(gate_task_count(stack))
        if len(readings) >= 3 and len(set(readings[-3:])) == 1:
            break
        await asyncio.sleep(0.05)
    return readings[-1]


async def assert_back_to(stack: FaultStack, baseline: Baseline, seconds: float = 5.0) -> None:
    """The gate's tasks, then (with every proxied connection hung up) the descriptors, are
    back where they were. Tasks first: hanging up would end a request stuck on a socket."""
    settled = await until(lambda: gate_task_count(stack) <= baseline.tasks, seconds)
    assert settled, f"gate tasks {gate_task_count(stack)}, baseline {baseline.tasks}"
    deadline = time.monotonic() + seconds
    now = await _hung_up_fds(stack)
    while now > baseline.fds and time.monotonic() < deadline:
        now = await _hung_up_fds(stack)
    assert now <= baseline.fds, f"fds {now}, baseline {baseline.fds}"


def assert_only_validated_reached_app(stack: FaultStack, admitted: list[CreatedSession]) -> None:
    """Nothing denied reached the app; everything that did carries a confirmed identity."""
    identities = {s.identity_id for s in admitted}
    for request in stack.app.requests:
        assert not request["path"].startswith("/denied/"), request["path"]
        users = [v for k, v in request["headers"] if k == "x-user-id"]
        assert users, request["path"]
        assert users[0] in identities, (request["path"], users)


def assert_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == status


def assert_unavailable(response: httpx.Response) -> None:
    assert_error(response, 503)
    assert int(response.headers["retry-after"]) >= 1


async def _admit(stack: FaultStack, session: CreatedSession) -> None:
    async with stack.client() as c:
        r = await c.get("/warm", headers=token(session))
        assert r.status_code == 200, r.text


async def warm_up(stack: FaultStack) -> tuple[CreatedSession, Baseline]:
    """The baseline after one admitted request; then a second session of the same user is
    admitted too (a new whoami), so the fault meets pooled keep-alive connections to Kratos
    and to the app, as it would in production."""
    await _admit(stack, login(stack, "warm"))
    baseline = Baseline(await _hung_up_fds(stack), await _quiet_tasks(stack))
    warm = login(stack, "warm")
    await _admit(stack, warm)
    return warm, baseline


async def timed_burst(
    stack: FaultStack, sessions: list[CreatedSession], prefix: str = "/denied/"
) -> tuple[list[httpx.Response], float]:
    async with stack.client() as c:
        started = time.monotonic()
        answers = await asyncio.gather(
            *(c.get(f"{prefix}{i}", headers=token(s)) for i, s in enumerate(sessions))
        )
        return list(answers), time.monotonic() - started


async def served_meanwhile(
    stack: FaultStack, headers: dict[str, str], task: asyncio.Future[Any], *, at_least: int
) -> list[float]:
    """Latencies of the requests another client completed, one after another, while `task`
    was still running: at least `at_least` of them. The task is awaited at the end."""
    latencies: list[float] = []
    async with stack.client() as c:
        for i in range(300):  # bounded: >= 0.05 s each
            if task.done():
                break
            started = time.monotonic()
            r = await c.get(f"/meanwhile/{i}", headers=headers)
            assert r.status_code == 200, r.text
            if not task.done():
                latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.05)
    await task
    assert len(latencies) >= at_least, f"only {len(latencies)} served meanwhile"
    return latencies


# -- Kratos faults ------------------------------------------------------------------------------
def _session_body(stack: FaultStack, *, active: bool) -> bytes:
    """A real whoami answer from the fake, with `active` set as asked."""
    alice = login(stack, "template")
    r = httpx.get(stack.kratos.public_url + "/sessions/whoami", headers=token(alice), timeout=5)
    assert r.status_code == 200
    return json.dumps({**r.json(), "active": active}).encode()


KRATOS_FAULTS: dict[str, Callable[[FaultProxy], None]] = {
    "refused": lambda p: p.refuse(),
    "reset-on-accept": lambda p: p.reset_on_accept(),
    "never-answers": lambda p: p.blackhole(),
    "answers-too-slowly": lambda p: p.delay(ORY_TIMEOUT + 2),
    "500": lambda p: p.serve(500, b'{"error":{"code":500,"status":"Internal Server Error"}}'),
    "502": lambda p: p.serve(502, b"<html>bad gateway</html>", content_type="text/html"),
    "503": lambda p: p.serve(503, b"no healthy upstream", content_type="text/plain"),
    "200-truncated-body": lambda p: p.truncate(after=40),
    "200-not-json": lambda p: p.serve(200, b"<html>welcome</html>", content_type="text/html"),
    "200-empty-json": lambda p: p.serve(200, b"{}"),
    "reset-mid-body": lambda p: p.reset(after=40),
}
#: Faults the proxy applies per request (the others are a dead listener): it counts them.
REQUEST_FAULTS = set(KRATOS_FAULTS) - {"refused", "reset-on-accept"}


@pytest.mark.parametrize("fault", list(KRATOS_FAULTS))
async def test_kratos_fault_is_a_prompt_503_and_the_gate_recovers(make_faulty, fault):
    stack = make_faulty()
    warm, baseline = await warm_up(stack)
    users = [login(stack, f"{fault}-{i}") for i in range(BURST)]
    KRATOS_FAULTS[fault](stack.kratos_proxy)

    answers, elapsed = await timed_burst(stack, users)
    for r in answers:
        assert_unavailable(r)
    assert elapsed < ORY_TIMEOUT + MARGIN, elapsed
    if fault in REQUEST_FAULTS:
        assert stack.kratos_proxy.faulted >= BURST  # the fault is what they met
    assert_only_validated_reached_app(stack, [warm])

    # Kratos is back: the very users refused a moment ago are admitted, no restart needed
    stack.kratos_proxy.passthrough()
    async with stack.client() as c:
        for user in users[:2]:
            r = await c.get("/again", headers=token(user))
            assert r.status_code == 200, r.text
            assert stack.app.last_headers()["x-user-id"] == [user.identity_id]
    assert_only_validated_reached_app(stack, [warm, *users[:2]])
    await assert_back_to(stack, baseline)


async def test_kratos_saying_the_session_is_inactive_is_a_401_and_the_gate_recovers(make_faulty):
    stack = make_faulty()
    warm, baseline = await warm_up(stack)
    inactive = _session_body(stack, active=False)
    users = [login(stack, f"inactive-{i}") for i in range(BURST)]
    stack.kratos_proxy.serve(200, inactive)

    answers, elapsed = await timed_burst(stack, users)
    for r in answers:
        assert_error(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert elapsed < ORY_TIMEOUT + MARGIN, elapsed
    assert stack.kratos_proxy.faulted >= BURST
    assert_only_validated_reached_app(stack, [warm])

    stack.kratos_proxy.passthrough()
    async with stack.client() as c:
        r = await c.get("/again", headers=token(users[0]))
        assert r.status_code == 200, r.text
    assert_only_validated_reached_app(stack, [warm, users[0]])
    await assert_back_to(stack, baseline)


async def test_during_a_kratos_outage_only_sessions_validated_within_ttl_pass(make_faulty):
    """A session validated before the outage rides on its cache entry, and only until that
    lapses; new sessions wait for Kratos; when Kratos is back both pass, no restart."""
    ttl = 1.0
    stack = make_faulty(cache={"ttl": ttl})
    warm, baseline = await warm_up(stack)
    alice, bob = login(stack, "alice"), login(stack, "bob")
    asked = stack.fake.count(*WHOAMI)
    async with stack.client() as c:
        assert (await c.get("/before", headers=token(alice))).status_code == 200
        validated = time.monotonic()
        stack.kratos_proxy.refuse()

        r = await c.get("/cached", headers=token(alice))
        assert r.status_code == 200, "validated moments ago: served from the cache"
        assert time.monotonic() - validated < ttl, "too slow to tell cache from Kratos"
        assert_unavailable(await c.get("/denied/bob", headers=token(bob)))

        # once alice's entry lapses she is not admitted on the strength of a stale answer
        lapsed: list[httpx.Response] = []
        for _ in range(40):  # bounded: ttl + ~2 s
            lapsed.append(await c.get("/during", headers=token(alice)))
            if lapsed[-1].status_code != 200:
                break
            await asyncio.sleep(0.05)
        assert_unavailable(lapsed[-1])
        assert time.monotonic() - validated < ttl + MARGIN
        during = [req for req in stack.app.requests if req["path"] == "/during"]
        assert len(during) == sum(r.status_code == 200 for r in lapsed)

        stack.kratos_proxy.passthrough()
        for user in (alice, bob):
            r = await c.get("/back", headers=token(user))
            assert r.status_code == 200, r.text
            assert stack.app.last_headers()["x-user-id"] == [user.identity_id]
    assert_only_validated_reached_app(stack, [warm, alice, bob])
    assert stack.fake.count(*WHOAMI) == asked + 3  # alice, then alice and bob after the outage
    await assert_back_to(stack, baseline)


# -- protected-app faults -----------------------------------------------------------------------
APP_DOWN: dict[str, Callable[[FaultProxy], None]] = {
    "refused": lambda p: p.refuse(),
    "reset-on-accept": lambda p: p.reset_on_accept(),
}


@pytest.mark.parametrize("fault", list(APP_DOWN))
async def test_app_down_is_a_prompt_502_and_the_gate_recovers(make_faulty, fault):
    stack = make_faulty()
    warm, baseline = await warm_up(stack)
    APP_DOWN[fault](stack.app_proxy)

    answers, elapsed = await timed_burst(stack, [warm] * BURST, prefix="/down/")
    for r in answers:
        assert_error(r, 502)
    assert elapsed < CONNECT_TIMEOUT + MARGIN, elapsed
    assert not any(r["path"].startswith("/down/") for r in stack.app.requests)

    stack.app_proxy.passthrough()
    async with stack.client() as c:
        r = await c.get("/back", headers=token(warm))
        assert r.status_code == 200, r.text
    assert_only_validated_reached_app(stack, [warm])
    await assert_back_to(stack, baseline)


APP_SILENT: dict[str, Callable[[FaultProxy], None]] = {
    "answers-too-slowly": lambda p: p.delay(UPSTREAM_TIMEOUT + 5, only=b"/stuck"),
    "never-answers": lambda p: p.blackhole(only=b"/stuck"),
}


@pytest.mark.parametrize("fault", list(APP_SILENT))
async def test_app_not_answering_is_a_504_after_upstream_timeout(make_faulty, fault):
    stack = make_faulty()
    warm, baseline = await warm_up(stack)
    APP_SILENT[fault](stack.app_proxy)

    async def stuck() -> tuple[httpx.Response, float]:
        async with stack.client() as c:
            started = time.monotonic()
            r = await c.get("/stuck", headers=token(warm))
            return r, time.monotonic() - started

    task = asyncio.ensure_future(stuck())
    assert await until(lambda: stack.app_proxy.faulted >= 1, 2)
    latencies = await served_meanwhile(stack, token(warm), task, at_least=3)
    r, elapsed = task.result()
    assert_error(r, 504)
    assert UPSTREAM_TIMEOUT - 0.1 <= elapsed < UPSTREAM_TIMEOUT + MARGIN, elapsed
    assert max(latencies) < 0.5, latencies
    # the gate gave up and hung up: the held request never reaches the app, even later
    assert await until(lambda: stack.app_proxy.open_links() <= 1, 2)
    assert not any(req["path"] == "/stuck" for req in stack.app.requests)

    stack.app_proxy.passthrough()
    async with stack.client() as c:
        r = await c.get("/stuck", headers=token(warm))
        assert r.status_code == 200, r.text
    assert_only_validated_reached_app(stack, [warm])
    await assert_back_to(stack, baseline)


async def test_app_answering_an_unsolicited_101_is_a_502(make_faulty):
    """A plain request answered `101 Switching Protocols`: relayed, the client would take its
    connection for another protocol. The gate answers 502 and the connection stays HTTP."""
    stack = make_faulty()
    warm, baseline = await warm_up(stack)
    stack.app_proxy.serve(101, headers=(("Upgrade", "websocket"),), only=b"/switch")
    async with stack.client() as c:
        r = await c.get("/switch", headers=token(warm))
        assert_error(r, 502)
        r = await c.get("/after", headers=token(warm))  # same client, next request
        assert r.status_code == 200, r.text
    assert stack.app_proxy.faulted == 1
    stack.app_proxy.passthrough()
    assert_only_validated_reached_app(stack, [warm])
    await assert_back_to(stack, baseline)


async def test_app_reset_mid_response_breaks_only_that_response(make_faulty):
    stack = make_faulty(upstream={"timeout": 5})
    warm, baseline = await warm_up(stack)
    total = 64 * MB
    # 1 MB of body reaches the client, the app side then stalls 1.5 s and resets
    stack.app_proxy.reset(after=MB, hold=1.5, only=b"/big/")
    got = 0
    streaming = asyncio.Event()

    async def doomed() -> BaseException | None:
        nonlocal got
        async with stack.client() as c:
            try:
                async with c.stream("GET", f"/big/{total}", headers=token(warm)) as r:
                    assert r.status_code == 200
                    async for chunk in r.aiter_raw():
                        got += len(chunk)
                        streaming.set()
            except httpx.HTTPError as exc:
                return exc
        return None

    task = asyncio.ensure_future(doomed())
    await asyncio.wait_for(streaming.wait(), 5)
    latencies = await served_meanwhile(stack, token(warm), task, at_least=3)
    error = task.result()
    assert isinstance(error, httpx.RemoteProtocolError | httpx.ReadError), error
    assert 0 < got < total
    assert max(latencies) < 0.5, latencies
    assert stack.app_proxy.faulted == 1

    stack.app_proxy.passthrough()
    async with stack.client() as c:
        r = await c.get(f"/big/{MB}", headers=token(warm))
        assert r.status_code == 200
        assert len(r.content) == MB
    assert_only_validated_reached_app(stack, [warm])
    await assert_back_to(stack, baseline)


async def test_huge_app_response_streams_in_bounded_memory_while_others_are_served(make_faulty):
    stack = make_faulty()
    warm, baseline = await warm_up(stack)
    total = 200 * MB
    got = 0

    async def download() -> None:
        nonlocal got
        async with stack.client() as c, c.stream("GET", f"/big/{total}", headers=token(warm)) as r:
            assert r.status_code == 200
            async for chunk in r.aiter_raw():
                got += len(chunk)

    with PeakRSS() as rss:
        task = asyncio.ensure_future(download())
        latencies = await served_meanwhile(stack, token(warm), task, at_least=3)
    print(f"200 MB through the gate: RSS +{rss.growth / MB:.0f} MB, others {latencies}")
    assert got == total
    assert rss.growth < 64 * MB
    assert max(latencies) < 1.0, latencies
    assert_only_validated_reached_app(stack, [warm])
    await assert_back_to(stack, baseline)


# -- slow-loris clients -------------------------------------------------------------------------
async def _trickle(
    writer: asyncio.StreamWriter, data: bytes, every: float, stop: asyncio.Event
) -> int:
    """Send `data` a byte at a time until it is all sent, `stop` is set or the server hangs
    up; the bytes sent."""
    for sent, byte in enumerate(data):
        if stop.is_set():
            return sent
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            return sent
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
    return len(data)


async def test_clients_trickling_their_headers_do_not_hold_up_others(make_faulty):
    """20 clients each send their request head a byte every 0.5 s for ~4 s. Under uvicorn
    nothing cuts them off (granian does, after serve.HEADER_READ_TIMEOUT_MS); what matters
    here is that they cost no task and slow nobody else down."""
    stack = make_faulty()
    warm, baseline = await warm_up(stack)
    head = (
        b"GET /loris HTTP/1.1\r\nHost: gate.test\r\nX-Session-Token: "
        + warm.token.encode()
        + b"\r\n\r\n"
    )
    stop = asyncio.Event()
    conns = [await asyncio.open_connection("127.0.0.1", stack.gate_server.port) for _ in range(20)]
    lorises = [asyncio.ensure_future(_trickle(w, head, 0.5, stop)) for _, w in conns]
    try:
        hold = asyncio.ensure_future(asyncio.sleep(4))  # the lorises' time on stage
        latencies = await served_meanwhile(stack, token(warm), hold, at_least=5)
        assert max(latencies) < 0.5, latencies
        assert gate_task_count(stack) <= baseline.tasks, "a half-sent request must cost no task"
    finally:
        stop.set()
        await asyncio.gather(*lorises)
        for _, w in conns:
            w.close()
    assert not any(r["path"] == "/loris" for r in stack.app.requests)
    assert_only_validated_reached_app(stack, [warm])
    await assert_back_to(stack, baseline)


async def test_a_client_trickling_its_body_does_not_hold_up_others(make_faulty):
    """An admitted upload trickling a byte every 0.5 s gets through (the gate's upstream idle
    timeout only starts once the body is sent; a body this small is gathered before an
    upstream connection is taken), and costs others nothing; an
    unauthenticated one is answered 401 before its body and never reaches the app."""
    stack = make_faulty()
    warm, baseline = await warm_up(stack)
    body = b"0123456789"
    head = (
        "POST /upload HTTP/1.1\r\nHost: gate.test\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n"
    ).encode()

    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gate_server.port)
    writer.write(head + b"X-Session-Token: " + warm.token.encode() + b"\r\n\r\n")
    await writer.drain()

    async def upload() -> bytes:
        await _trickle(writer, body, 0.5, asyncio.Event())
        return await asyncio.wait_for(reader.read(65536), 5)

    started = time.monotonic()
    task = asyncio.ensure_future(upload())
    try:
        latencies = await served_meanwhile(stack, token(warm), task, at_least=5)
    finally:
        writer.close()
    assert task.result().startswith(b"HTTP/1.1 200 ")
    # not cut off by upstream.timeout although the upload took several times that
    assert time.monotonic() - started > 3 * UPSTREAM_TIMEOUT
    assert max(latencies) < 0.5, latencies
    uploads = [r for r in stack.app.requests if r["path"] == "/upload"]
    assert [u["body_size"] for u in uploads] == [len(body)]

    # without a session: answered at once, the body never awaited, the app never asked
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gate_server.port)
    try:
        writer.write(head.replace(b"/upload", b"/denied/upload") + b"\r\n" + body[:1])
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n"), ORY_TIMEOUT + MARGIN)
    finally:
        writer.close()
    assert first.startswith(b"HTTP/1.1 401 ")
    assert_only_validated_reached_app(stack, [warm])
    await assert_back_to(stack, baseline)


async def test_stalled_uploads_do_not_starve_other_clients(make_faulty):
    """Two admitted clients start uploads and stop sending; with upstream.max_connections=2
    a third client must still be served once the stall exceeded upstream.timeout."""
    stack = make_faulty(upstream={"max_connections": 2})
    warm, baseline = await warm_up(stack)
    head = (
        b"POST /upload HTTP/1.1\r\nHost: gate.test\r\nContent-Length: 10\r\n"
        b"X-Session-Token: " + warm.token.encode() + b"\r\n\r\n0"
    )
    stalled = [await asyncio.open_connection("127.0.0.1", stack.gate_server.port) for _ in (1, 2)]
    try:
        for _, w in stalled:
            w.write(head)
            await w.drain()
        # a stalled upload should be given up after upstream.timeout of silence, and the
        # next waiting request get its connection within connect_timeout
        deadline = time.monotonic() + UPSTREAM_TIMEOUT + CONNECT_TIMEOUT + MARGIN
        statuses: list[int] = []
        async with stack.client() as c:
            while time.monotonic() < deadline:  # each try lasts up to connect_timeout
                statuses.append((await c.get("/other", headers=token(warm))).status_code)
                if statuses[-1] == 200:
                    break
        assert statuses[-1] == 200, statuses
        for r, _ in stalled:  # the stalled clients were told why
            answer = await asyncio.wait_for(r.read(200), UPSTREAM_TIMEOUT + MARGIN)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
    finally:
        for _, w in stalled:
            w.close()
    await assert_back_to(stack, baseline)
