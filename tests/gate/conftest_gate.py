"""Gate test fixtures: `make_stack(fake_options, app, **overrides)` and `stack` (gate_stack.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gate_stack import Stack, settings_for

from apps import EchoApp
from sessiongate.gate import Gate
from sessiongate.testing import FakeKratosServer, UvicornThread


@pytest.fixture
def make_stack() -> Iterator[Callable[..., Stack]]:
    started: list[Callable[[], None]] = []

    def build(
        fake_options: dict[str, Any] | None = None, app: Any = None, **overrides: Any
    ) -> Stack:
        kratos = FakeKratosServer(**(fake_options or {})).start()
        started.append(kratos.stop)
        app = EchoApp() if app is None else app
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
