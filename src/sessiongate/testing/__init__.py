"""A faithful in-process Ory Kratos (v26.2.0) for tests: `KratosFake` and its real-server runner.

    from sessiongate.testing import KratosFake
    fake = KratosFake()
    alice = fake.login("alice@example.com")
    # httpx.AsyncClient(transport=httpx.ASGITransport(app=fake)) ... X-Session-Token: alice.token

`FakeKratosServer` runs the same fake under uvicorn on 127.0.0.1; the pytest plugin in
`sessiongate.testing.plugin` offers both as the `kratos_fake` and `kratos_server` fixtures.
"""

from sessiongate.testing.app import KratosFake
from sessiongate.testing.server import (
    SERVERS,
    FakeKratosServer,
    GranianThread,
    UvicornThread,
    serve_thread,
)
from sessiongate.testing.store import CreatedSession
from sessiongate.testing.tokenizer import TokenizeTemplate

__all__ = [
    "SERVERS",
    "CreatedSession",
    "FakeKratosServer",
    "GranianThread",
    "KratosFake",
    "TokenizeTemplate",
    "UvicornThread",
    "serve_thread",
]
