"""Gate test fixtures: `make_stack(fake_options, app, **overrides)` and `stack` (gate_stack.py),
and `gate_server`: the server a test runs the gate under, each test once per server (uvicorn,
and granian: the default of `sessiongate serve`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gate_stack import Stack, settings_for

from apps import EchoApp
from sessiongate.gate import Gate
from sessiongate.testing import SERVERS, FakeKratosServer, UvicornThread, serve_thread


@pytest.fixture(params=SERVERS)
def gate_server(request: pytest.FixtureRequest) -> str:
    """ "uvicorn" or "granian": run the test's gate under each (`serve_thread`)."""
    return str(request.param)


@pytest.fixture
def make_stack_under() -> Iterator[Callable[[str], Callable[..., Stack]]]:
    """`make_stack_under(server)`: a `make_stack` whose gates run under `server`."""
    started: list[Callable[[], None]] = []

    def under(server: str) -> Callable[..., Stack]:
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
            gate_server = serve_thread(server, gate, lifespan="on")
            gate_server.start()
            started.append(gate_server.stop)
            return Stack(kratos, app, gate, gate_server, upstream)

        return build

    yield under
    for stop in reversed(started):
        stop()


@pytest.fixture
def make_stack(make_stack_under: Callable[[str], Callable[..., Stack]]) -> Callable[..., Stack]:
    """Gate stacks under uvicorn; modules that test the server level override this to run
    under each server (`gate_server`)."""
    return make_stack_under("uvicorn")


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()
