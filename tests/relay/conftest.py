"""The gate with its session relay, in front of a Kratos fake (two ports) and an echo app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from apps import EchoApp
from sessiongate.config import Settings
from sessiongate.gate import Gate
from sessiongate.testing import FakeKratosServer, KratosFake, UvicornThread

ADMIN_KEY = "gate-admin-key-0123456789"


@dataclass
class RelayStack:
    kratos: FakeKratosServer
    app: EchoApp
    gate: Gate
    server: UvicornThread
    prefix: str

    @property
    def fake(self) -> KratosFake:
        return self.kratos.fake

    @property
    def url(self) -> str:
        """The gate's base URL including the sessions_api prefix (what an SDK is given)."""
        return self.server.url + self.prefix

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.server.url, timeout=10, **kwargs)


@pytest.fixture
def make_relay(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., RelayStack]]:
    """make_relay(prefix="", admin=False, fake_options=None, **settings overrides)."""
    stops: list[Callable[[], None]] = []

    def build(
        prefix: str = "",
        admin: bool = False,
        fake_options: dict[str, Any] | None = None,
        admin_keys: str = ADMIN_KEY,
        **overrides: Any,
    ) -> RelayStack:
        kratos = FakeKratosServer(**(fake_options or {})).start()
        stops.append(kratos.stop)
        app = EchoApp()
        upstream = UvicornThread(app)
        upstream.start()
        stops.append(upstream.stop)
        monkeypatch.setenv("SESSIONGATE_ADMIN_KEYS", admin_keys)
        data: dict[str, Any] = {
            "ory": {"public_url": kratos.public_url, "admin_url": kratos.admin_url, "timeout": 3},
            "upstream": {"url": upstream.url, "timeout": 5},
            "sessions_api": {"prefix": prefix, "admin": {"enabled": admin}},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        gate = Gate(Settings.model_validate(data))
        server = UvicornThread(gate, lifespan="on")
        server.start()
        stops.append(server.stop)
        return RelayStack(kratos, app, gate, server, prefix)

    yield build
    for stop in reversed(stops):
        stop()
