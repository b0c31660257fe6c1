"""The sessions page over HTTP: what a browser is sent, the CSRF refusals, Kratos' list read page
by page, and failures (the browser flows are in test_sessions_page_browser.py)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import httpx
import pytest
from sessions_page_stack import PAGE, PageStack, csrf_of

from redis_servers import RedisServers, redis_servers  # noqa: F401
from sessiongate.config import Settings
from sessiongate.gate import Gate
from sessiongate.sessions_page import CsrfTokens
from shared_fleet import fleet, get
from test_cli import Backends, backends  # noqa: F401

ALICE = "alice@example.com"


def _sessions(stack: PageStack, count: int, **kwargs: object) -> list:  # type: ignore[type-arg]
    ident = stack.fake.create_identity(email=ALICE)
    return [stack.fake.create_session(ident, **kwargs) for _ in range(count)]  # type: ignore[arg-type]


# -- what the page is sent with ---------------------------------------------------------------
async def test_the_page_needs_a_session_and_sends_browsers_to_login(
    make_page_stack: Callable[..., PageStack],
) -> None:
    stack = make_page_stack()
    async with stack.client() as client:
        answer = await client.get(PAGE + "?status=revoked")
        assert answer.status_code == 303
        login = stack.fake.public_url + "/self-service/login/browser?return_to="
        assert answer.headers["location"] == (
            login
            + "http%3A%2F%2F127.0.0.1%3A"
            + str(stack.server.port)
            + "%2F.sessiongate%2Fsessions%3Fstatus%3Drevoked"
        )
        api = await client.get(PAGE, headers={"accept": "application/json"})
        assert api.status_code == 401  # not a browser: the gate's usual 401
        posted = await client.post(
            PAGE, data={"action": "revoke_others", "csrf": "x"}, headers=stack.form_headers()
        )
        # a form post: no redirect (form-action 'self' would stop it), a link to sign in
        assert posted.status_code == 401
        assert f'<a href="{login}' in posted.text
        assert "nothing was changed" in posted.text
    assert stack.revokes() == 0


async def test_headers_no_store_no_framing_no_referrer_no_inline_script(
    make_page_stack: Callable[..., PageStack],
) -> None:
    stack = make_page_stack(
        page={"stylesheet": "https://cdn.example.com/app.css", "title": "Devices <& you>"},
        cors={"allowed_origins": ["http://127.0.0.1:9"]},
    )
    (current,) = _sessions(stack, 1)
    async with stack.client(current) as client:
        answer = await client.get(PAGE, headers={"origin": "http://127.0.0.1:9"})
        assert answer.status_code == 200
        headers = answer.headers
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert headers["cache-control"] == "no-store"
        assert headers["referrer-policy"] == "no-referrer"
        policy = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy
        assert "script-src 'self';" in policy
        assert "unsafe-inline" not in policy
        assert "style-src 'self' https://cdn.example.com;" in policy
        assert "form-action 'self'" in policy
        # an allowed CORS origin still cannot read the page (nor its CSRF tokens)
        assert "access-control-allow-origin" not in headers
        page = answer.text
        assert "<title>Devices &lt;&amp; you&gt;</title>" in page
        assert '<link rel="stylesheet" href="https://cdn.example.com/app.css">' in page
        assert "<script>" not in page
        assert "<style" not in page
        assert re.search(r"<[^>]*\s(on\w+|style)=", page) is None  # no inline handlers
        for asset, ctype in (("sessions.css", "text/css"), ("sessions.js", "text/javascript")):
            got = await client.get(f"{PAGE}/{asset}")
            assert got.status_code == 200
            assert got.headers["content-type"].startswith(ctype)
            assert f'{PAGE}/{asset}"' in page
        assert (await client.get(PAGE + "/other")).status_code == 404
        assert (await client.put(PAGE)).status_code == 405
        # the status shown comes from a fixed list, never from the query
        shown = await client.get(PAGE + "?status=%3Cscript%3Ex")
        assert "<script>x" not in shown.text
        assert "&lt;script" not in shown.text


# -- CSRF ---------------------------------------------------------------------------------------
async def test_forged_posts_are_refused_and_change_nothing(
    make_page_stack: Callable[..., PageStack],
) -> None:
    stack = make_page_stack()
    current, other, third = _sessions(stack, 3)
    fake = stack.fake
    async with stack.client(current) as client, stack.client(other) as other_client:
        token = csrf_of((await client.get(PAGE)).text)
        token_of_other = csrf_of((await other_client.get(PAGE)).text)
        good = {"action": "revoke", "session": other.id}
        same_origin = stack.form_headers()
        cases = [
            ("missing token", good, same_origin),
            ("wrong token", {**good, "csrf": token[:-4] + "AAAA"}, same_origin),
            ("another session's token", {**good, "csrf": token_of_other}, same_origin),
            ("cross-site", {**good, "csrf": token}, {"origin": "http://127.0.0.1:9"}),
            ("cross-site fetch", {**good, "csrf": token}, {"sec-fetch-site": "same-site"}),
            ("null origin alone", {**good, "csrf": token}, {"origin": "null"}),
            ("no origin at all", {**good, "csrf": token}, {}),
            (
                "two origins",
                {**good, "csrf": token},
                [("origin", stack.url), ("origin", "http://127.0.0.1:9")],
            ),
        ]
        for label, form, headers in cases:
            answer = await client.post(PAGE, data=form, headers=headers)
            assert answer.status_code == 403, label
            assert "Nothing was changed" in answer.text, label
            assert answer.headers["cache-control"] == "no-store"
        # a repeated field is ambiguous: not taken
        doubled = await client.post(
            PAGE,
            content=f"action=revoke&session={other.id}&csrf={token}&csrf={token}",
            headers={**same_origin, "content-type": "application/x-www-form-urlencoded"},
        )
        assert doubled.status_code == 403
        assert stack.revokes() == 0
        assert all(fake.is_session_active(s.id) for s in (current, other, third))

        # the same token from the page, posted as the page does: accepted
        answer = await client.post(PAGE, data={**good, "csrf": token}, headers=same_origin)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith(PAGE + "?status=revoked&proof=")
        # the message is shown with the redirect's proof only: a crafted link (no proof, or the
        # proof of another status) shows none
        said = "The session was signed out"
        assert said in (await client.get(answer.headers["location"])).text
        assert said not in (await client.get(PAGE + "?status=revoked")).text
        swapped = answer.headers["location"].replace("status=revoked", "status=revoked_others")
        assert "All other sessions were signed out" not in (await client.get(swapped)).text
        # ...and with the gate's own Origin (a browser whose page sent a Referer)
        answer = await client.post(
            PAGE, data={"action": "revoke_others", "csrf": token}, headers={"origin": stack.url}
        )
        assert answer.headers["location"].startswith(PAGE + "?status=revoked_others&proof=")
    assert [fake.is_session_active(s.id) for s in (current, other, third)] == [True, False, False]


async def test_the_current_session_is_not_signed_out_from_the_list(
    make_page_stack: Callable[..., PageStack],
) -> None:
    stack = make_page_stack()
    current, other = _sessions(stack, 2)
    async with stack.client(current) as client:
        token = csrf_of((await client.get(PAGE)).text)
        answer = await client.post(
            PAGE,
            data={"action": "revoke", "session": current.id.upper(), "csrf": token},
            headers=stack.form_headers(),
        )
        assert answer.headers["location"].startswith(PAGE + "?status=current&proof=")
        shown = await client.get(answer.headers["location"])
        status = re.search(r'<p class="sg-status[^>]*>(.*?)</p>', shown.text)
        assert status is not None
        assert "cannot be signed out from this list" in status.group(1)
        assert "/self-service/logout?token=ory_lo_" in status.group(1)  # the logout link
        bad = await client.post(
            PAGE,
            data={"action": "revoke", "session": "../sessions", "csrf": token},
            headers=stack.form_headers(),
        )
        assert bad.headers["location"].startswith(PAGE + "?status=invalid&proof=")
    assert stack.revokes() == 0
    assert stack.fake.is_session_active(current.id)
    assert stack.fake.is_session_active(other.id)


async def test_a_page_left_open_too_long_asks_to_try_again(
    make_page_stack: Callable[..., PageStack],
) -> None:
    stack = make_page_stack()
    current, other = _sessions(stack, 2)
    page = stack.gate.sessions_page
    assert page is not None
    async with stack.client(current) as client:
        token = csrf_of((await client.get(PAGE)).text)
        page.tokens.max_age = -120  # every token is too old now
        answer = await client.post(
            PAGE,
            data={"action": "revoke", "session": other.id, "csrf": token},
            headers=stack.form_headers(),
        )
        assert answer.headers["location"].startswith(PAGE + "?status=expired&proof=")
        shown = await client.get(answer.headers["location"])
        assert '<p class="sg-status sg-error" role="alert">This page was open too long' in (
            shown.text
        )
    assert stack.revokes() == 0
    assert stack.fake.is_session_active(other.id)


def test_tokens_are_bound_to_the_session_the_key_and_an_age() -> None:
    secret = b"k" * 32
    one, two = CsrfTokens(secret), CsrfTokens(secret)
    token = one.issue("session-a", now=1000)
    assert two.check("session-a", token, now=1001) == "ok"  # another process, same secret
    assert two.check("session-b", token, now=1001) == "bad"
    assert CsrfTokens(None).check("session-a", token, now=1001) == "bad"  # a per-process key
    assert two.check("session-a", token, now=1000 + two.max_age + 1) == "expired"
    assert two.check("session-a", "", now=1001) == "bad"
    assert two.check("session-a", token.replace(".", "..", 1), now=1001) == "bad"


def test_without_the_secret_the_gate_warns_at_start_up(
    make_page_stack: Callable[..., PageStack],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("SESSIONGATE_SECRET", raising=False)
    with caplog.at_level(logging.WARNING, logger="sessiongate"):
        Gate(Settings.model_validate({"sessions_page": {"enabled": True}}))
    assert "SESSIONGATE_SECRET is not set" in caplog.text
    assert "random key of this process" in caplog.text


# -- Kratos' list, page by page ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("others", "max_sessions", "lists", "shown", "more"),
    [
        (5, 100, 3, 5, None),  # pages of 2: 2, 2, 1 (short: the end)
        (4, 100, 2, 4, None),  # 2, 2: X-Total-Count says that was all
        (5, 3, 1, 2, "3 more not shown"),  # two others wanted: one page
        (0, 100, 1, 0, None),
        (3, 1, 1, 0, "3 more not shown"),
    ],
)
async def test_the_list_is_read_page_by_page_and_never_further_than_needed(
    make_page_stack: Callable[..., PageStack],
    others: int,
    max_sessions: int,
    lists: int,
    shown: int,
    more: str | None,
) -> None:
    stack = make_page_stack(page={"max_sessions": max_sessions})
    assert stack.gate.sessions_page is not None
    stack.gate.sessions_page.page_size = 2
    ident = stack.fake.create_identity(email=ALICE)
    created = [
        stack.fake.create_session(ident, devices=[{"user_agent": f"agent-{n}"}])
        for n in range(others + 1)
    ]
    current = created[-1]  # the newest; the others are listed newest first
    async with stack.client(current) as client:
        before = stack.fake.count("GET", "/sessions")
        page = (await client.get(PAGE)).text
    assert stack.fake.count("GET", "/sessions") - before == lists
    listed = re.findall(r"agent-(\d+)</code>", page)
    assert listed[0] == str(others)  # the current session first
    assert listed[1:] == [str(n) for n in range(others - 1, others - 1 - shown, -1)]
    assert f'Other sessions <span class="sg-count">({others})</span>' in page
    if more is None:
        assert "not shown" not in page
    else:
        assert more in page


# -- failures ---------------------------------------------------------------------------------
async def test_kratos_unreachable_the_page_says_so_and_signs_nobody_out(
    make_page_stack: Callable[..., PageStack],
) -> None:
    stack = make_page_stack()
    current, other = _sessions(stack, 2)
    async with stack.client(current) as client:
        token = csrf_of((await client.get(PAGE)).text)  # the session is cached now
        stack.kratos.stop()
        shown = await client.get(PAGE)
        assert shown.status_code == 503
        assert "could not be loaded" in shown.text
        assert "This device" in shown.text  # the cached current session is still shown
        answer = await client.post(
            PAGE,
            data={"action": "revoke", "session": other.id, "csrf": token},
            headers=stack.form_headers(),
        )
        assert answer.headers["location"].startswith(PAGE + "?status=unavailable&proof=")
    assert stack.fake.is_session_active(other.id)


# -- several processes ---------------------------------------------------------------------------
async def test_a_form_from_one_process_works_at_another_and_every_process_forgets(
    tmp_path,
    backends: Backends,  # noqa: F811
    redis_servers: RedisServers,  # noqa: F811
) -> None:
    """Two `sessiongate serve` processes, one Redis, one SESSIONGATE_SECRET: the page rendered
    by one, its form posted to the other; the signed-out session is refused by both at once."""
    fake = backends.kratos.fake
    ident = fake.create_identity(email=ALICE)
    phone, laptop = fake.create_session(ident), fake.create_session(ident)
    server = redis_servers.start()
    on = {"sessions_page": {"enabled": True}}
    with fleet(tmp_path, backends, server, count=2, sections=on) as (a, b):
        async with httpx.AsyncClient(timeout=10) as client:
            for gate in (a, b):  # the laptop's session is cached at both
                assert (await get(client, gate, laptop.token)).status_code == 200
            as_phone = {"X-Session-Token": phone.token, "Accept": "text/html"}
            shown = await client.get(a.url + PAGE, headers=as_phone)
            assert shown.status_code == 200
            form = {"action": "revoke", "session": laptop.id, "csrf": csrf_of(shown.text)}
            done = await client.post(
                b.url + PAGE,
                data=form,
                headers={**as_phone, "Origin": "null", "Sec-Fetch-Site": "same-origin"},
            )
            assert done.headers["location"].startswith(PAGE + "?status=revoked&proof=")
            for gate in (a, b):
                assert (await get(client, gate, laptop.token)).status_code == 401
                assert (await get(client, gate, phone.token)).status_code == 200
