"""pytest plugin (registered through the `pytest11` entry point) with Kratos fake fixtures.

* `kratos_fake`: a fresh in-process `KratosFake` (two-port URLs on 127.0.0.1:4433/4434, which
  are only names here: drive it with `httpx.ASGITransport(app=kratos_fake)`).
* `kratos_server`: a fresh `FakeKratosServer` on free loopback ports, for code that needs a real
  socket; `kratos_server.fake` is its `KratosFake`.
"""

from __future__ import annotations

from collections.abc import Iterator

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
