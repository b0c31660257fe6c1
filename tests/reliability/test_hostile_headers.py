"""The Ory credential and client-chosen routing headers, in every spelling, under both servers.

The gate runs as users run it, `sessiongate serve` in a subprocess, once with granian and once
with uvicorn (`listen.server`): what a header name becomes (case, `_`, duplicates) is the
server's doing before the gate sees it, so each class is sent raw over a socket to both. The
Kratos fake and the app (`EchoApp`) run in this process, so what reached the app is visible.

Classes (test_hostile_input.py has the identity and forwarding headers):
* the Ory credential: `X-Session-Token` in every spelling and duplicated, `Authorization` with
  a Bearer in any case and spacing, the session cookie among others: absent at the app,
  whichever credential the gate used;
* path-override and client-address headers (`X-Original-URL` ... `X-Host`): absent at the app
  from an untrusted peer, on public and protected paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_hostile_input import by_canonical, exchange, request_bytes, spellings

from apps import EchoApp
from sessiongate.testing import FakeKratosServer, UvicornThread
from test_cli import Backends, clean_env, free_port, gate_config, serve

CREDENTIAL = ("x-session-token",)
ROUTING = (
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-forwarded-prefix",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-url-scheme",
    "front-end-https",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-host",
    "x-original-host",
)
BEARERS = [
    b"Authorization: Bearer evil-bearer",
    b"authorization: bearer evil-bearer",
    b"AUTHORIZATION: BEARER evil-bearer",
    b"Authorization: Bearer  evil-bearer",
    b"Authorization: Bearer\tevil-bearer",
    b"Authorization: bEaReR evil-bearer",
]


def lines_for(names: tuple[str, ...], value: str) -> list[bytes]:
    """Every spelling of every name, each twice (a first-only check must not let one pass)."""
    out = [
        f"{s}: {value}-{i}".encode()
        for n in names
        for i, s in enumerate(spellings(n.title()))
        if s.lower().replace("_", "-") == n  # two-word names: no `X-Host_`, a header of its own
    ]
    return out + out


class Served:
    def __init__(self, backends: Backends, port: int) -> None:
        self.backends, self.port = backends, port

    @property
    def fake(self) -> Any:
        return self.backends.kratos.fake

    def send(self, target: bytes, *lines: bytes) -> list[tuple[str, str]]:
        """The request's headers as the app received them (the reply must be a 200)."""
        before = len(self.backends.app.requests)
        reply = exchange(self.port, request_bytes(target, *lines))
        assert reply.status == 200, reply
        assert len(self.backends.app.requests) == before + 1
        return self.backends.app.requests[-1]["headers"]


@pytest.fixture(scope="module", params=["granian", "uvicorn"])
def served(request, tmp_path_factory) -> Iterator[Served]:
    kratos = FakeKratosServer().start()
    upstream = UvicornThread(EchoApp())
    upstream.start()
    backends = Backends(kratos, upstream.app, upstream)  # type: ignore[arg-type]
    port = free_port()
    access = {
        "login_url": "http://127.0.0.1:4433/self-service/login/browser",
        "public_paths": ["/public/*"],
    }
    path = gate_config(
        tmp_path_factory.mktemp(request.param),
        backends,
        port,
        listen={"host": "127.0.0.1", "port": port, "server": request.param},
        access=access,
    )
    try:
        with serve(path.parent, ["--config", str(path)], clean_env(), port):
            yield Served(backends, port)
    finally:
        upstream.stop()
        kratos.stop()


def no_credential(received: list[tuple[str, str]], *secrets: str) -> None:
    assert by_canonical(received, CREDENTIAL) == {}, received
    assert [v for n, v in received if n.lower() == "authorization"] == [], received
    cookies = [v for n, v in received if n.lower() == "cookie"]
    assert not [c for c in cookies if "ory_" in c], cookies
    for secret in secrets:
        assert secret not in repr(received)
    assert "evil" not in repr(received), received


def test_the_corpus_is_the_class_not_the_example() -> None:
    assert len(lines_for(CREDENTIAL, "x")) >= 18
    assert len(lines_for(ROUTING, "x")) >= 300


@pytest.mark.parametrize("used", ["token", "cookie", "bearer"])
def test_no_spelling_of_the_ory_credential_reaches_the_app(served: Served, used: str) -> None:
    alice = served.fake.login("alice@example.com")
    cookie = served.fake.cookie_header(alice)
    # The credential the gate uses comes first; every other form follows, except those that
    # would take precedence over it (credentials.py: token, then cookie, then Bearer).
    token_lines = lines_for(CREDENTIAL, "evil")
    later_tokens = [ln for ln in token_lines if ln.split(b":")[0].lower() != b"x-session-token"]
    lines = {
        "token": [
            b"X-Session-Token: " + alice.token.encode(),
            *token_lines,
            b"Cookie: theme=dark; ory_session_x=evil-cookie",
            *BEARERS,
        ],
        "cookie": [
            b"Cookie: theme=dark; " + cookie.encode(),
            b"Cookie: ory_session_x=evil-cookie",
            *later_tokens,
            *BEARERS,
        ],
        "bearer": [
            b"Authorization: Bearer " + alice.token.encode(),
            b"Cookie: theme=dark",
            *later_tokens,
            *BEARERS,
        ],
    }[used]
    received = served.send(b"/private", *lines)
    assert by_canonical(received, ("x-user-id",)) == {"x-user-id": [alice.identity_id]}
    no_credential(received, alice.token, cookie.split("=", 1)[1])
    assert "theme=dark" in "; ".join(v for n, v in received if n.lower() == "cookie")


def test_no_spelling_of_the_ory_credential_reaches_a_public_path(served: Served) -> None:
    alice = served.fake.login("alice@example.com")
    lines = [b"Cookie: " + served.fake.cookie_header(alice).encode(), *BEARERS]
    received = served.send(b"/public/page", *lines, *lines_for(CREDENTIAL, "evil"))
    no_credential(received, alice.token)


@pytest.mark.parametrize("target", [b"/private", b"/public/page"])
def test_no_spelling_of_a_routing_header_reaches_the_app(served: Served, target: bytes) -> None:
    alice = served.fake.login("alice@example.com")
    token = b"X-Session-Token: " + alice.token.encode()
    for name in ROUTING:  # one name a request: granian answers 431 past 100 header lines
        received = served.send(target, token, *lines_for((name,), "evil"))
        assert by_canonical(received, ROUTING) == {}, received
        assert "evil" not in repr(received), received
