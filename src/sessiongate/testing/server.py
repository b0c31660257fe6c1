"""Runs ASGI apps under real uvicorn servers on loopback, each in its own thread.

`UvicornThread` binds its socket before the app is built, so a fake can know its own URL
(Kratos builds absolute logout URLs from its configured base URL) even on a free port.
`FakeKratosServer` is a started `KratosFake` on one or two ports.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from sessiongate.testing.app import KratosFake


def bind_loopback(port: int = 0, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


class UvicornThread:
    """One uvicorn server for `app` on an already-bound socket, started and stopped on demand."""

    def __init__(
        self, app: ASGIApp | None = None, sock: socket.socket | None = None, **config: Any
    ) -> None:
        self.sock = sock or bind_loopback()
        self.app = app
        self.config = config
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        assert self.app is not None, "set .app before start()"
        # proxy_headers off: behind loopback uvicorn would otherwise trust X-Forwarded-*
        options = {
            "log_level": "warning",
            "lifespan": "off",
            "access_log": False,
            "proxy_headers": False,
        }
        options.update(self.config)
        self._server = uvicorn.Server(uvicorn.Config(self.app, **options))
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[self.sock])),  # type: ignore[union-attr]
            name=f"uvicorn-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"uvicorn on port {self.port} did not start")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> UvicornThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FakeKratosServer:
    """A `KratosFake` served on 127.0.0.1: public port, plus an admin port unless one-port.

    with FakeKratosServer() as kratos:
        alice = kratos.fake.login("alice@example.com")
        httpx.get(kratos.public_url + "/sessions/whoami", headers={"X-Session-Token": ...})
    """

    def __init__(
        self,
        *,
        public_port: int = 0,
        admin_port: int = 0,
        api_key: str | None = None,
        **fake_options: Any,
    ) -> None:
        self._public = UvicornThread(sock=bind_loopback(public_port))
        self._admin = None if api_key else UvicornThread(sock=bind_loopback(admin_port))
        self.fake = KratosFake(
            public_url=self._public.url,
            admin_url=self._admin.url if self._admin else None,
            api_key=api_key,
            **fake_options,
        )
        self._public.app = self.fake
        if self._admin is not None:
            self._admin.app = self.fake.admin_app

    @property
    def public_url(self) -> str:
        return self.fake.public_url

    @property
    def admin_url(self) -> str:
        return self.fake.admin_url

    def start(self) -> FakeKratosServer:
        self._public.start()
        if self._admin is not None:
            self._admin.start()
        return self

    def stop(self) -> None:
        self._public.stop()
        if self._admin is not None:
            self._admin.stop()

    def __enter__(self) -> FakeKratosServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
