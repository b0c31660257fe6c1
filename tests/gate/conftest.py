"""A real stack on 127.0.0.1 for the gate's tests: Kratos fake, echo app, gate under uvicorn."""

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


@dataclass
class Stack:
    kratos: FakeKratosServer
    app: EchoApp
    gate: Gate
    gate_server: UvicornThread
    upstream_server: UvicornThread

    @property
    def fake(self) -> KratosFake:
        return self.kratos.fake

    @property
    def url(self) -> str:
        return self.gate_server.url

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10, **kwargs)


def settings_for(kratos_url: str, upstream_url: str, **overrides: Any) -> Settings:
    data: dict[str, Any] = {
        "ory": {"public_url": kratos_url, "timeout": 2},
        "upstream": {"url": upstream_url, "timeout": 3, "connect_timeout": 1},
        "access": {
            "login_url": "http://127.0.0.1:4433/self-service/login/browser",
            "public_paths": ["/health/*", "/public/*"],
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Settings.model_validate(data)


@pytest.fixture
def make_stack() -> Iterator[Callable[..., Stack]]:
    started: list[Callable[[], None]] = []

    def build(fake_options: dict[str, Any] | None = None, **overrides: Any) -> Stack:
        kratos = FakeKratosServer(**(fake_options or {})).start()
        started.append(kratos.stop)
        app = EchoApp()
        upstream = UvicornThread(app)
        upstream.start()
        started.append(upstream.stop)
        gate = Gate(settings_for(kratos.public_url, upstream.url, **overrides))
        gate_server = UvicornThread(gate, lifespan="on")
        gate_server.start()
        started.append(gate_server.stop)
        return Stack(kratos, app, gate, gate_server, upstream)

    yield build
    for stop in reversed(started):
        stop()


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()
