"""The sessions page's test stack: Kratos fake (with its login page), echo app, the gate with
`sessions_page.enabled`, all under uvicorn on 127.0.0.1; the gate's URL is known before the fake
starts, so the fake's login may send browsers back to it."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from apps import EchoApp
from sessiongate.config import Settings
from sessiongate.gate import Gate
from sessiongate.testing import CreatedSession, FakeKratosServer, KratosFake, UvicornThread

PAGE = "/.sessiongate/sessions"
PASSWORD = "correct horse battery staple"
SECRET = "s" * 40


@dataclass
class PageStack:
    kratos: FakeKratosServer
    app: EchoApp
    gate: Gate
    server: UvicornThread

    @property
    def fake(self) -> KratosFake:
        return self.kratos.fake

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def page_url(self) -> str:
        return self.server.url + PAGE

    def client(self, session: CreatedSession | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"accept": "text/html"}
        if session is not None:
            headers["cookie"] = self.fake.cookie_header(session)
        return httpx.AsyncClient(base_url=self.url, timeout=10, headers=headers, **kwargs)

    def form_headers(self) -> dict[str, str]:
        """What a browser sends with this page's forms (Referrer-Policy: no-referrer)."""
        return {"origin": "null", "sec-fetch-site": "same-origin"}

    def revokes(self) -> int:
        """Kratos DELETE calls so far (one session, or all others)."""
        return sum(1 for method, _ in self.fake.requests if method == "DELETE")


def csrf_of(page_html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page_html)
    assert match, page_html
    return match.group(1)


@pytest.fixture
def make_page_stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., PageStack]]:
    """make_page_stack(secret=SECRET, page=None, **settings overrides)."""
    stops: list[Callable[[], None]] = []

    def build(secret: str | None = SECRET, page: dict[str, Any] | None = None, **overrides: Any):
        if secret is None:
            monkeypatch.delenv("SESSIONGATE_SECRET", raising=False)
        else:
            monkeypatch.setenv("SESSIONGATE_SECRET", secret)
        server = UvicornThread(None, lifespan="on")  # bound now: its URL is known
        kratos = FakeKratosServer(cookie_secure=False, allowed_return_urls=[server.url]).start()
        stops.append(kratos.stop)
        app = EchoApp()
        upstream = UvicornThread(app)
        upstream.start()
        stops.append(upstream.stop)
        data: dict[str, Any] = {
            "ory": {"public_url": kratos.public_url, "admin_url": kratos.admin_url, "timeout": 3},
            "upstream": {"url": upstream.url, "timeout": 5},
            "sessions_page": {"enabled": True, "return_url": "/", **(page or {})},
        }
        data.update(overrides)
        gate = Gate(Settings.model_validate(data))
        server.app = gate
        server.start()
        stops.append(server.stop)
        return PageStack(kratos, app, gate, server)

    yield build
    for stop in reversed(stops):
        stop()
