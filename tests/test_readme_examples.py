"""The README's examples run as written (against the Kratos fake instead of a real Kratos)."""

from __future__ import annotations

import re
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
