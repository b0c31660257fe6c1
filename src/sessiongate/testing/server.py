"""Runs ASGI apps under real servers on loopback, each in its own thread.

`UvicornThread` binds its socket before the app is built, so a fake can know its own URL
(Kratos builds absolute logout URLs from its configured base URL) even on a free port.
`GranianThread` runs an app under granian, the gate's default server, with the options
`sessiongate serve` gives it (granian's embedded server, on the thread's own uvloop loop), so
the gate's server-level tests run under both servers (`serve_thread`).
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
        self.loop: asyncio.AbstractEventLoop | None = None  # the app's loop, once started
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
        self._server = server = uvicorn.Server(uvicorn.Config(self.app, **options))

        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            await server.serve(sockets=[self.sock])

        self._thread = threading.Thread(
            target=lambda: asyncio.run(serve()), name=f"uvicorn-{self.port}", daemon=True
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


class GranianThread:
    """One granian server (ASGI, HTTP/1.1, WebSockets) for `app` on a free loopback port, in
    its own thread; the interface of `UvicornThread`. Of uvicorn's options it takes `lifespan`
    ("on" or "off") and `backlog`; the others (proxy and Server headers) are uvicorn's own:
    granian never rewrites the peer from X-Forwarded-* nor adds a Server header."""

    def __init__(self, app: ASGIApp | None = None, **config: Any) -> None:
        with socket.socket() as probe:  # granian binds its own socket: a free port, now
            probe.bind(("127.0.0.1", 0))
            self._port = int(probe.getsockname()[1])
        self.app = app
        self.config = config
        self._server: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the app's loop, once started
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        import uvloop
        from granian.constants import HTTPModes, Interfaces
        from granian.http import HTTP1Settings
        from granian.log import LogLevels
        from granian.server.embed import Server

        from sessiongate.serve import HEADER_READ_TIMEOUT_MS

        assert self.app is not None, "set .app before start()"
        lifespan = self.config.get("lifespan", "off") == "on"
        self._server = Server(
            self.app,
            address="127.0.0.1",
            port=self.port,
            interface=Interfaces.ASGI if lifespan else Interfaces.ASGINL,
            http=HTTPModes.http1,
            http1_settings=HTTP1Settings(header_read_timeout=HEADER_READ_TIMEOUT_MS),
            websockets=True,
            backlog=self.config.get("backlog", 1024),
            # granian's lines (an exception escaping the app included) reach the process'
            # loggers, under `_granian`, as `sessiongate serve` routes them
            log_level=LogLevels.warning,
            log_dictconfig={
                "version": 1,
                "disable_existing_loggers": False,
                "loggers": {"_granian": {"handlers": [], "propagate": True}},
            },
        )
        loop = self.loop = uvloop.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._server.serve())
            finally:  # its selector, pipes and eventfd: a thread per test must not leak them
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"granian-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while True:  # listening once a connection is accepted
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"granian on port {self.port} did not start")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        server, loop, thread = self._server, self.loop, self._thread
        if server is None or loop is None or thread is None or not thread.is_alive():
            return

        def interrupt() -> None:
            server.interrupt_signal = True
            server.main_loop_interrupt.set()

        loop.call_soon_threadsafe(interrupt)
        thread.join(timeout)

    def __enter__(self) -> GranianThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: The servers `serve_thread` can run an app under.
SERVERS = ("uvicorn", "granian")


def serve_thread(server: str, app: ASGIApp, **config: Any) -> UvicornThread | GranianThread:
    """A not yet started thread serving `app` under `server` ("uvicorn" or "granian")."""
    if server == "granian":
        return GranianThread(app, **config)
    if server == "uvicorn":
        return UvicornThread(app, **config)
    raise ValueError(f"unknown server {server!r}; one of {SERVERS}")


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
