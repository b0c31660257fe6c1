"""pytest plugin (registered through the `pytest11` entry point) with Kratos fake fixtures.

* `kratos_fake`: a fresh in-process `KratosFake` (two-port URLs on 127.0.0.1:4433/4434, which
  are only names here: drive it with `httpx.ASGITransport(app=kratos_fake)`).
* `kratos_server`: a fresh `FakeKratosServer` on free loopback ports, for code that needs a real
  socket; `kratos_server.fake` is its `KratosFake`.
* `make_kratos_fake(seed=None, **options)` / `make_kratos_server(seed=None, **options)`: the
  same with `KratosFake` options (`now=...` fixes the clock) and a seed (a YAML path, a dict in
  the seed format of `sessiongate.testing.seed`, or a `Seed`); servers stop at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from sessiongate.testing.app import KratosFake
from sessiongate.testing.server import FakeKratosServer


@pytest.fixture
def kratos_fake() -> KratosFake:
    return KratosFake()


@pytest.fixture
def kratos_server() -> Iterator[FakeKratosServer]:
    with FakeKratosServer() as server:
        yield server


@pytest.fixture
def make_kratos_fake() -> Callable[..., KratosFake]:
    def make(seed: Any = None, **options: Any) -> KratosFake:
        fake = KratosFake(**options)
        if seed is not None:
            fake.load_seed(seed)
        return fake

    return make


@pytest.fixture
def make_kratos_server() -> Iterator[Callable[..., FakeKratosServer]]:
    with ExitStack() as stack:

        def make(seed: Any = None, **options: Any) -> FakeKratosServer:
            server = stack.enter_context(FakeKratosServer(**options))
            if seed is not None:
                server.fake.load_seed(seed)
            return server

        yield make
