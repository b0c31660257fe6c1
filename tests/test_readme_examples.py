"""The README's examples run as written (against the Kratos fake instead of a real Kratos)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from sessiongate.testing import FakeKratosServer, UvicornThread

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _python_block(marker: str) -> str:
    for block in re.findall(r"```python\n(.*?)```", README, re.S):
        if marker in block:
            return block
    raise AssertionError(f"no python block with {marker!r} in the README")


def test_fastapi_middleware_example_works() -> None:
    source = _python_block("SessionGateMiddleware")
    with FakeKratosServer() as kratos:
        source = source.replace("http://127.0.0.1:4433", kratos.public_url)
        namespace: dict[str, object] = {}
        exec(compile(source, "README.md", "exec"), namespace)  # noqa: S102 - our own README
        alice = kratos.fake.login("alice@example.com")
        with UvicornThread(namespace["app"]) as server:  # type: ignore[arg-type]
            ok = httpx.get(server.url + "/me", headers={"X-Session-Token": alice.token})
            assert ok.status_code == 200
            assert ok.json() == {"identity": alice.identity_id}
            assert httpx.get(server.url + "/me").status_code == 401


def test_in_process_fake_example_works() -> None:
    source = _python_block("ASGITransport(app=fake)")
    body = "async def _example():\n" + "".join(f"    {line}\n" for line in source.splitlines())
    namespace: dict[str, object] = {}
    exec(compile(body, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    import asyncio

    asyncio.run(namespace["_example"]())  # type: ignore[arg-type]


def test_middleware_metrics_example_works() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from metrics_page import Page
    from sessiongate.config import Settings

    source = _python_block("gated.metrics_app")
    with FakeKratosServer() as kratos:
        app = Starlette(routes=[Route("/a", lambda request: PlainTextResponse("app"))])
        settings = Settings.model_validate({"ory": {"public_url": kratos.public_url}})
        namespace: dict[str, object] = {"app": app, "settings": settings}
        exec(compile(source, "README.md", "exec"), namespace)  # noqa: S102 - our own README
        alice = kratos.fake.login("alice@example.com")
        with UvicornThread(namespace["server"], lifespan="on") as server:  # type: ignore[arg-type]
            r = httpx.get(server.url + "/a", headers={"X-Session-Token": alice.token})
            assert r.text == "app"
            assert httpx.get(server.url + "/a").status_code == 401
            for _ in range(100):  # the answer may reach us before the request is counted
                page = Page(httpx.get(server.url + "/metrics").text)
                if page.total("sessiongate_requests_total") == 2:
                    break
                time.sleep(0.02)
            assert page.value("sessiongate_requests_total", decision="allowed", reason="") == 1
            assert (
                page.value("sessiongate_requests_total", decision="denied", reason="no_credential")
                == 1
            )
