"""Shared fixtures: the Kratos fake with httpx clients whose every response is spec-checked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import httpx
import pytest

from sessiongate.testing import KratosFake
from spec_check import check_response


async def _check(response: httpx.Response) -> None:
    await response.aread()
    check_response(response)


def checked_client(app, base_url: str) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    """An httpx client on an in-process ASGI app; every response goes through the spec check."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=base_url,
        event_hooks={"response": [_check]},
        follow_redirects=False,
    )


class FakeClients:
    def __init__(self, fake: KratosFake, public: httpx.AsyncClient, admin: httpx.AsyncClient):
        self.fake, self.public, self.admin = fake, public, admin


@pytest.fixture
async def make_kratos() -> AsyncIterator[Callable[..., FakeClients]]:
    """Build a fake with options and its checked public and admin clients."""
    async with AsyncExitStack() as stack:

        def build(**options: object) -> FakeClients:
            fake = KratosFake(**options)  # type: ignore[arg-type]
            public = checked_client(fake, fake.public_url)
            admin_app = fake if fake.api_key else fake.admin_app
            admin = checked_client(admin_app, fake.admin_url)
            stack.push_async_callback(public.aclose)
            stack.push_async_callback(admin.aclose)
            return FakeClients(fake, public, admin)

        yield build


@pytest.fixture
def kratos(make_kratos: Callable[..., FakeClients]) -> FakeClients:
    """The default fake (Kratos' defaults: highest_available, #3883 on, 200 extend)."""
    return make_kratos()
