"""The request record (observe.py): what each kind of request leaves for the observers.

A recording observer on a real gate (uvicorn, Kratos fake, echo app): the decision, reason,
status, identity and timings of allowed, public, denied, redirected, failing and malformed
requests, as the metrics and the access log will read them.
"""

from __future__ import annotations

import asyncio

import pytest
from gate_stack import Stack

from sessiongate.observe import DECISIONS, REASONS, RequestRecord, bounded

HTML = "text/html,application/xhtml+xml"


class Recorder:
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def finish(self, scope, record: RequestRecord) -> None:  # type: ignore[no-untyped-def]
        self.records.append(record)

    async def last(self) -> RequestRecord:
        # the server may hand the answer to the client before the request's task returns
        for _ in range(100):
            if self.records:
                return self.records.pop()
            await asyncio.sleep(0.01)
        raise AssertionError("no record")


@pytest.fixture
def observed(make_stack) -> tuple[Stack, Recorder]:  # type: ignore[no-untyped-def]
    stack = make_stack(sessions_api={"enabled": True})
    recorder = Recorder()
    stack.gate.observers.add(recorder)
    return stack, recorder


async def test_allowed_public_and_denied_requests(observed):
    stack, recorder = observed
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as client:
        r = await client.get("/orders?secret=1", headers={"X-Session-Token": alice.token})
        assert r.status_code == 200
        record = await recorder.last()
        assert (record.decision, record.reason, record.status) == ("allowed", "", 200)
        assert record.identity_id == alice.identity_id
        assert record.path == "/orders"  # never the query
        assert 0 < record.overhead <= record.duration
        assert record.upstream_at > record.started

        await client.get("/public/a")
        record = await recorder.last()
        assert (record.decision, record.identity_id, record.status) == ("public", "", 200)

        await client.get("/orders")
        record = await recorder.last()
        assert (record.decision, record.reason, record.status) == ("denied", "no_credential", 401)
        assert record.upstream_at == 0.0  # the app was never called
        assert record.overhead == record.duration

        await client.get("/orders", headers={"X-Session-Token": "ory_st_unknown"})
        record = await recorder.last()
        assert (record.decision, record.reason) == ("denied", "invalid_session")

        await client.get("/orders", headers={"Accept": HTML})
        record = await recorder.last()
        assert (record.decision, record.reason, record.status) == (
            "redirected",
            "no_credential",
            303,
        )


async def test_gate_answers_relay_and_bad_requests(observed):
    stack, recorder = observed
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as client:
        await client.get("/health/alive")
        record = await recorder.last()
        assert (record.decision, record.reason) == ("gate", "health")

        await client.get("/sessions", headers={"X-Session-Token": alice.token})
        record = await recorder.last()
        assert (record.decision, record.status) == ("relay", 200)

        await client.get("/orders", headers={"X-Session-Token": "x" * 9000})
        record = await recorder.last()
        assert (record.decision, record.reason, record.status) == (
            "bad_request",
            "malformed_credential",
            400,
        )


async def test_kratos_down_and_the_app_down(make_stack):
    stack = make_stack()
    recorder = Recorder()
    stack.gate.observers.add(recorder)
    alice = stack.fake.login("alice@example.com")
    async with stack.client() as client:
        assert (await client.get("/a", headers={"X-Session-Token": alice.token})).status_code == 200
        await recorder.last()
        stack.upstream_server.stop()
        r = await client.get("/a", headers={"X-Session-Token": alice.token})
        assert r.status_code == 502
        record = await recorder.last()
        assert (record.decision, record.upstream_error, record.status) == ("allowed", "502", 502)
        stack.kratos.stop()
        bob = stack.fake.login("bob@example.com")
        r = await client.get("/a", headers={"X-Session-Token": bob.token})
        assert r.status_code == 503
        record = await recorder.last()
        assert (record.decision, record.reason) == ("unavailable", "kratos_unavailable")


def test_every_decision_and_reason_is_bounded():
    record = RequestRecord(0.0, "GET", "/")
    record.decide("allowed")
    assert bounded(record) == ("allowed", "")
    record.decide("made-up", "user-controlled")
    assert bounded(record) == ("unknown", "unknown")
    for kind in ("anonymous", "aal", "malformed", "unavailable", "rate_limited", "overloaded"):
        record.denied(kind, redirected=False, credential=True)
        assert record.decision in DECISIONS
        assert record.reason in REASONS
