"""No secret ever reaches a log record, whatever the gate is asked and whatever goes wrong.

This module owns that promise (`sessiongate.logs`: "the gate never logs credentials"). It runs a
representative session through a real gate, with every logger at DEBUG (the gate's, httpx's,
httpcore's, aiohttp's, uvicorn's, asyncio's) and a handler on the root logger and on every
logger that does not propagate to it (plus pytest's caplog): valid, invalid, malformed and
revoked tokens, cookies and bearers; the session relay (whoami, list, revoke, logout); the
admin routes with the gate's admin key (the gate then uses its own `ORY_API_KEY`); the app
down (502) and Kratos down (503). Then every record's message, arguments, exception text,
stack and extra attributes are searched for every token, cookie value, admin key and the Ory
API key, raw and percent-encoded. The same goes for what the gate's log writer wrote (logs.py:
the JSON lines `sessiongate serve` writes, access lines with the identity included, every
record of the run besides), and query strings too. The logs must not be empty: a capture that
saw nothing would prove nothing.

The Prometheus metrics page gets the same search after the same scenario, with session and
identity ids and a query string added (`test_no_secret_reaches_the_metrics_page`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from apps import EchoApp
from metrics_page import settled_page
from sessiongate.access_log import AccessLog
from sessiongate.config import Settings
from sessiongate.gate import Gate
from sessiongate.logs import LogWriter, ToWriter
from sessiongate.testing import CreatedSession, FakeKratosServer, UvicornThread

ORY_API_KEY = "ory_pat_LogSecrecyApiKey7f3c9a1e5b2d8f40"
ADMIN_KEY = "gate-admin-LogSecrecyKey-4e8a2c6f1b9d3e7a"
WRONG_ADMIN_KEY = "gate-admin-WrongGuess-9d1c7b3a5e2f8c4b"
UNKNOWN_TOKEN = "ory_st_UnknownTokenNeverIssued0123456789"
UNKNOWN_COOKIE = "MTcwMDAwMDAwMHxVbmtub3duQ29va2llVmFsdWVOZXZlcklzc3VlZA=="
MALFORMED_TOKEN = "ory_st_Malformed\xe9TokenWith8bitBytes42"
OVERSIZED_TOKEN = "ory_st_OversizedToken" + "Q" * 5000
QUERY_SECRET = "qs-LogSecrecyQuerySecret-2b7e9c4a1f6d3e8b"
COOKIE = "ory_kratos_session"


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def record_texts(record: logging.LogRecord) -> list[str]:
    """Everything of a record a handler or formatter could write out."""
    texts = [str(record.msg), repr(record.args)]
    with contextlib.suppress(TypeError, ValueError):  # a broken format: the rest still counts
        texts.append(record.getMessage())
    if record.exc_info:
        texts.append(logging.Formatter().formatException(record.exc_info))
    texts += [record.exc_text or "", record.stack_info or ""]
    texts += [repr(v) for k, v in vars(record).items() if k not in _STANDARD]
    return texts


def leaks(records: list[logging.LogRecord], secrets: dict[str, str]) -> list[tuple[str, str, str]]:
    """(secret's label, logger, text) for every record that shows a secret in any form."""
    found = []
    for record in records:
        blob = "\n".join(record_texts(record))
        for label, secret in secrets.items():
            middle = secret[len(secret) // 2 - 8 : len(secret) // 2 + 8]  # a truncated echo too
            forms = {secret, quote(secret, safe=""), repr(secret)[1:-1], middle}
            if any(form in blob for form in forms):
                found.append((label, record.name, blob[:300]))
    return found


def leaks_in_text(text: str, secrets: dict[str, str]) -> list[tuple[str, str]]:
    """(secret's label, line) for every written line that shows a secret in any form."""
    found = []
    for line in text.splitlines():
        for label, secret in secrets.items():
            middle = secret[len(secret) // 2 - 8 : len(secret) // 2 + 8]
            forms = {secret, quote(secret, safe=""), json.dumps(secret)[1:-1], middle}
            if any(form in line for form in forms):
                found.append((label, line[:300]))
    return found


@dataclass
class SecretStack:
    kratos: FakeKratosServer
    app: EchoApp
    upstream: UvicornThread
    gate_server: UvicornThread
    writer: LogWriter  # the JSON lines: access lines (identity on) and every record
    written: io.StringIO

    def lines(self) -> str:
        self.writer.flush()
        return self.written.getvalue()

    @property
    def url(self) -> str:
        return self.gate_server.url


@pytest.fixture
def secret_stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[SecretStack]:
    monkeypatch.setenv("ORY_API_KEY", ORY_API_KEY)
    monkeypatch.setenv("SESSIONGATE_ADMIN_KEYS", ADMIN_KEY)
    # one port, /admin guarded by the API key: the gate's ORY_API_KEY must really be sent
    kratos = FakeKratosServer(api_key=ORY_API_KEY).start()
    app = EchoApp()
    upstream = UvicornThread(app)
    upstream.start()
    settings = Settings.model_validate(
        {
            "ory": {"public_url": kratos.public_url, "timeout": 2},
            "upstream": {"url": upstream.url, "timeout": 3, "connect_timeout": 1},
            "access": {"public_paths": ["/public/*"]},
            "sessions_api": {"admin": {"enabled": True}},
            "log": {"level": "debug", "identity": True},
        }
    )
    gate = Gate(settings)
    # as `sessiongate serve --log.format json` writes: access lines through a writer thread
    written = io.StringIO()
    writer = LogWriter(written, as_json=True)
    gate.observers.add(AccessLog(writer, identity=True))
    # uvicorn sets its loggers' levels when a server starts: put them back afterwards
    uvicorn_loggers = [
        logging.getLogger(n) for n in ("uvicorn.error", "uvicorn.access", "uvicorn.asgi")
    ]
    uvicorn_levels = [(lg, lg.level) for lg in uvicorn_loggers]
    # as `sessiongate serve --log-level debug` runs uvicorn, but leaving logging to this test
    gate_server = UvicornThread(
        gate,
        lifespan="on",
        log_level="debug",
        log_config=None,
        access_log=True,
        proxy_headers=False,
        server_header=False,
    )
    gate_server.start()
    try:
        yield SecretStack(kratos, app, upstream, gate_server, writer, written)
    finally:
        writer.stop()
        gate_server.stop()
        upstream.stop()
        kratos.stop()
        for lg, level in uvicorn_levels:
            lg.setLevel(level)


@pytest.fixture
def capture_everything(
    secret_stack: SecretStack, caplog: pytest.LogCaptureFixture
) -> Iterator[Capture]:
    """DEBUG everywhere, a handler on the root and on each logger that does not propagate.
    Installed after the servers started: uvicorn configures its loggers when a server starts."""
    capture = Capture()
    to_writer = ToWriter(secret_stack.writer)  # every record also as a JSON line
    caplog.set_level(logging.DEBUG)
    root = logging.getLogger()
    loggers = [root] + [
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    saved = [(lg, lg.level, lg.disabled) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.disabled = False
        if lg is root or not lg.propagate:
            lg.addHandler(capture)
            if lg.name != "uvicorn.access":  # off in `sessiongate serve`
                lg.addHandler(to_writer)
    try:
        yield capture
    finally:
        for lg, level, disabled in saved:
            lg.setLevel(level)
            lg.disabled = disabled
            lg.removeHandler(capture)
            lg.removeHandler(to_writer)


def session_secrets(label: str, session: CreatedSession) -> dict[str, str]:
    return {f"{label}.token": session.token, f"{label}.cookie": session.cookie}


@dataclass
class Scenario:
    statuses: dict[str, int]
    secrets: dict[str, str]  # label → secret
    logout_tokens: dict[str, str]


async def run_scenario(secret_stack: SecretStack) -> Scenario:
    """Every kind of request the gate answers, ending with the app and then Kratos down."""
    fake = secret_stack.kratos.fake
    alice, bob, carol, carol2, dave, erin = (
        fake.login(f"{name}@example.com")
        for name in ("alice", "bob", "carol", "carol", "dave", "erin")
    )
    fake.revoke_session(bob.id)
    secrets: dict[str, str] = {
        "ory_api_key": ORY_API_KEY,
        "admin_key": ADMIN_KEY,
        "wrong_admin_key": WRONG_ADMIN_KEY,
        "unknown_token": UNKNOWN_TOKEN,
        "unknown_cookie": UNKNOWN_COOKIE,
        "malformed_token": MALFORMED_TOKEN,
        "oversized_token": OVERSIZED_TOKEN,
    }
    for label, session in [("alice", alice), ("bob", bob), ("carol", carol)]:
        secrets.update(session_secrets(label, session))
    for label, session in [("carol2", carol2), ("dave", dave), ("erin", erin)]:
        secrets.update(session_secrets(label, session))

    statuses: dict[str, int] = {}

    async def call(label: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        r = await client.request(method, path, **kwargs)
        statuses[label] = r.status_code
        return r

    token = {"X-Session-Token": alice.token}
    cookie = {"Cookie": f"{COOKIE}={alice.cookie}"}
    async with httpx.AsyncClient(base_url=secret_stack.url, timeout=10) as client:
        # the proxy: valid, cached, every kind of credential
        await call("token", "GET", "/a", headers=token)
        await call("token-cached", "GET", "/a", headers=token)
        await call("query", "GET", f"/a?access_token={QUERY_SECRET}&x=1", headers=token)
        await call("cookie", "POST", "/b", headers=cookie, content=alice.token.encode())
        await call("bearer", "GET", "/c", headers={"Authorization": f"Bearer {alice.token}"})
        # refused: unknown, revoked, malformed, oversized, none at all
        await call("unknown", "GET", "/d", headers={"X-Session-Token": UNKNOWN_TOKEN})
        await call("unknown-cookie", "GET", "/d", headers={"Cookie": f"{COOKIE}={UNKNOWN_COOKIE}"})
        await call("revoked", "GET", "/e", headers={"Authorization": f"Bearer {bob.token}"})
        await call("revoked-cookie", "GET", "/e", headers={"Cookie": f"{COOKIE}={bob.cookie}"})
        await call(
            "malformed", "GET", "/f", headers={"X-Session-Token": MALFORMED_TOKEN.encode("latin-1")}
        )
        await call("oversized", "GET", "/g", headers={"X-Session-Token": OVERSIZED_TOKEN})
        await call("browser", "GET", "/h", headers={"Accept": "text/html"})
        await call("public", "GET", "/public/x", headers={"X-Session-Token": UNKNOWN_TOKEN})
        # the relay
        await call("whoami-cached", "GET", "/sessions/whoami", headers=token)
        whoami = "/sessions/whoami"
        await call("whoami-miss", "GET", whoami, headers={"X-Session-Token": dave.token})
        await call("whoami-bad", "GET", whoami, headers={"X-Session-Token": UNKNOWN_TOKEN})
        await call("list", "GET", "/sessions", headers={"Cookie": f"{COOKIE}={carol.cookie}"})
        carols = {"X-Session-Token": carol.token}
        await call("revoke-one", "DELETE", f"/sessions/{carol2.id}", headers=carols)
        await call("revoke-others", "DELETE", "/sessions", headers=carols)
        flow = await call("logout-flow", "GET", "/self-service/logout/browser", headers=cookie)
        logout_url = urlsplit(flow.json()["logout_url"])
        await call(
            "logout",
            "GET",
            f"{logout_url.path}?{logout_url.query}",
            headers={**cookie, "Accept": "application/json"},
        )
        await call(
            "logout-api",
            "DELETE",
            "/self-service/logout/api",
            content=json.dumps({"session_token": dave.token}).encode(),
            headers={"Content-Type": "application/json"},
        )
        # admin routes: the gate's admin key in, the Ory API key out to Kratos
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        await call("admin-list", "GET", "/admin/sessions", headers=admin)
        await call("admin-get", "GET", f"/admin/sessions/{erin.id}", headers=admin)
        await call("admin-extend", "PATCH", f"/admin/sessions/{erin.id}/extend", headers=admin)
        await call("admin-disable", "DELETE", f"/admin/sessions/{erin.id}", headers=admin)
        await call(
            "admin-wrong-key",
            "GET",
            "/admin/sessions",
            headers={"Authorization": f"Bearer {WRONG_ADMIN_KEY}"},
        )
        # the app down, then Kratos down
        secret_stack.upstream.stop()
        await call("app-down", "GET", "/i", headers=carols)  # alice has logged out by now
        secret_stack.kratos.stop()
        await call("kratos-down", "GET", "/j", headers={"X-Session-Token": erin.token})
        await call(
            "kratos-down-cookie", "GET", "/j", headers={"Cookie": f"{COOKIE}={carol.cookie}"}
        )
        await call(
            "kratos-down-relay", "GET", "/sessions/whoami", headers={"X-Session-Token": erin.token}
        )
        await call("kratos-down-admin", "GET", "/admin/sessions", headers=admin)
    # in query strings: the test's client and uvicorn's access log write those, not the gate
    logout_tokens = {f"{n}.logout_token": s.logout_token for n, s in [("alice", alice)]}
    logout_tokens["query_secret"] = QUERY_SECRET
    return Scenario(statuses, secrets, logout_tokens)


async def test_no_secret_reaches_any_log_record(
    secret_stack: SecretStack, capture_everything: Capture, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = await run_scenario(secret_stack)
    secrets = scenario.secrets
    # the scenario really happened as described (otherwise a clean log would mean little)
    assert scenario.statuses == {
        "token": 200,
        "token-cached": 200,
        "query": 200,
        "cookie": 200,
        "bearer": 200,
        "unknown": 401,
        "unknown-cookie": 401,
        "revoked": 401,
        "revoked-cookie": 401,
        "malformed": 400,
        "oversized": 400,
        "browser": 303,
        "public": 200,
        "whoami-cached": 200,
        "whoami-miss": 200,
        "whoami-bad": 401,
        "list": 200,
        "revoke-one": 204,
        "revoke-others": 200,
        "logout-flow": 200,
        "logout": 204,
        "logout-api": 204,
        "admin-list": 200,
        "admin-get": 200,
        "admin-extend": 200,
        "admin-disable": 204,
        "admin-wrong-key": 401,
        "app-down": 502,
        "kratos-down": 503,
        "kratos-down-cookie": 503,
        "kratos-down-relay": 503,
        "kratos-down-admin": 503,
    }

    records = capture_everything.records
    names = {r.name for r in records}
    assert records, "nothing was logged: the capture is broken"
    # the gate's own warnings, the relay's httpx client and the server all got through
    assert {"sessiongate.authenticate", "sessiongate.relay", "sessiongate.proxy"} <= names, names
    assert "httpx" in names, names
    assert any(n.startswith("uvicorn") for n in names), names
    assert len(records) >= 30, len(records)

    assert leaks(records, secrets) == []
    assert leaks(caplog.records, secrets) == []

    # the JSON lines: one access line per request (identity on), the records besides
    written = secret_stack.lines()
    lines = [json.loads(line) for line in written.splitlines()]
    # (the gate's default access observer logs through `logging` too: "message" lines)
    access = [x for x in lines if x["logger"] == "sessiongate.access" and "status" in x]
    assert len(access) == len(scenario.statuses), len(access)
    assert any("identity_id" in line for line in access)
    assert len(lines) > len(access) + 30, len(lines)  # the records went through too
    assert leaks_in_text(written, secrets) == []
    access_text = "\n".join(json.dumps(line) for line in access)
    assert leaks_in_text(access_text, scenario.logout_tokens) == []  # no query string

    # the search does find a secret when one is logged, even through a non-propagating logger
    canary = logging.getLogger("uvicorn.access")
    canary.info("%s", {"headers": [("x-session-token", secrets["alice.token"])]})
    assert [label for label, *_ in leaks(capture_everything.records, secrets)] == ["alice.token"]
    # ... and in the written lines (an access line cannot carry one: a record does here)
    logging.getLogger("sessiongate.canary").warning("token %s", secrets["bob.token"])
    assert [label for label, _ in leaks_in_text(secret_stack.lines(), secrets)] == ["bob.token"]


async def test_the_gate_does_not_log_logout_tokens_or_queries(
    secret_stack: SecretStack, capture_everything: Capture
) -> None:
    scenario = await run_scenario(secret_stack)
    assert scenario.statuses["logout"] == 204
    # Only the gate's own records: those its server thread emitted, minus uvicorn's access log
    # (off in `sessiongate serve`; on here). The test's own client and the Kratos fake's server
    # log the URL too, but they are not the gate.
    gate_thread = f"uvicorn-{secret_stack.gate_server.port}"
    records = [
        r
        for r in capture_everything.records
        if r.threadName == gate_thread and r.name != "uvicorn.access"
    ]
    assert [r for r in records if r.levelno >= logging.INFO]
    assert leaks(records, scenario.logout_tokens) == []


async def test_no_secret_reaches_the_metrics_page(secret_stack: SecretStack) -> None:
    """The metrics page (what Prometheus scrapes) after the same scenario: no token, cookie
    value, key, session id, identity id, path or query string, in any form."""
    scenario = await run_scenario(secret_stack)
    gate = secret_stack.gate_server.app
    # one more with a query string (Kratos is down by now: refused, and still counted)
    query_secret = "QuerySecretNeverALabel7c1e"
    async with httpx.AsyncClient(base_url=secret_stack.url, timeout=10) as client:
        await client.get(f"/k/{query_secret}-path?token={query_secret}")
    page = await settled_page(gate, len(scenario.statuses) + 1)
    # the page is the real one: every request of the scenario counted
    assert page.total("sessiongate_requests_total") == len(scenario.statuses) + 1
    assert page.value("sessiongate_kratos_whoami_total", outcome="401") >= 1
    assert page.total("sessiongate_relay_requests_total") >= 10
    store = secret_stack.kratos.fake.store
    secrets = {
        **scenario.secrets,
        **scenario.logout_tokens,
        **{f"session {sid}": sid for sid in store.sessions},
        **{f"identity {iid}": iid for iid in store.identities},
        "query": query_secret,
    }
    record = logging.makeLogRecord({"msg": page.text})  # the same search as for log records
    assert leaks([record], secrets) == []
    # the search does find one when it is there
    assert leaks([logging.makeLogRecord({"msg": page.text + query_secret})], secrets)
