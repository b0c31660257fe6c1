"""`sessiongate demo`: the Kratos fake, a small legacy app with no auth, and the gate in front.

Everything listens on 127.0.0.1: Kratos fake public 4433 / admin 4434 (with a login page),
the sample app on 8080, the gate on 4455. Open the gate's URL in a browser, sign in as
alice@example.com / demo, and the app greets you by the identity headers the gate adds and
links to the gate's sessions page (`sessions_page`).
"""

from __future__ import annotations

import asyncio
import html
import os
import secrets
import socket
import sys

import uvicorn
from starlette.types import Receive, Scope, Send

from sessiongate.config import SECRET_ENV, SessionsPageSettings, Settings
from sessiongate.gate import Gate
from sessiongate.testing.app import KratosFake
from sessiongate.testing.seed import DEFAULT_SEED, apply_seed, load_seed

SESSIONS_PAGE = SessionsPageSettings.model_fields["path"].default  # the gate's sessions page


async def legacy_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An app with no authentication of its own: it trusts the gate's headers."""
    if scope["type"] != "http":
        return
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    if scope["path"] == "/health/alive":
        body, ctype = b"ok", b"text/plain"
    else:
        email = headers.get("x-user-email", "stranger")
        shown = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
            for k, v in sorted(headers.items())
            if k.startswith("x-")
        )
        body = (
            f"<!doctype html><html lang=en><meta charset=utf-8><title>Legacy app</title>"
            f"<h1>Hello, {html.escape(email)}!</h1>"
            f"<p>This app has no login of its own; sessiongate checked your Ory session and "
            f"added these headers:</p><table>{shown}</table>"
            f'<p><a href="{SESSIONS_PAGE}">Your sessions</a>: where you are signed in, and '
            f"signing other devices out (a page the gate serves for this app).</p></html>"
        ).encode()
        ctype = b"text/html; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def run_demo(
    *,
    host: str = "127.0.0.1",
    gate_port: int = 4455,
    kratos_port: int = 4433,
    admin_port: int = 4434,
    app_port: int = 8080,
) -> int:
    ports = {"gate": gate_port, "kratos": kratos_port, "kratos admin": admin_port, "app": app_port}
    busy = [f"{name} ({port})" for name, port in ports.items() if not _port_free(host, port)]
    if busy:
        print(f"error: port(s) in use on {host}: {', '.join(busy)}", file=sys.stderr)
        return 2
    gate_url = f"http://{host}:{gate_port}"
    kratos_url = f"http://{host}:{kratos_port}"
    fake = KratosFake(
        public_url=kratos_url,
        admin_url=f"http://{host}:{admin_port}",
        cookie_secure=False,
        allowed_return_urls=[gate_url],
        default_browser_return_to=gate_url + "/",
    )
    created = apply_seed(fake, load_seed(DEFAULT_SEED))
    settings = Settings.model_validate(
        {
            "listen": {"host": host, "port": gate_port},
            "public_url": gate_url,
            "ory": {"public_url": kratos_url, "admin_url": f"http://{host}:{admin_port}"},
            "upstream": {"url": f"http://{host}:{app_port}"},
            "access": {
                "login_url": kratos_url + "/self-service/login/browser",
                "public_paths": ["/health/**"],
            },
            "sessions_page": {"enabled": True, "return_url": "/"},
        }
    )
    # one process: the sessions page's CSRF key may be this run's own
    os.environ.setdefault(SECRET_ENV, secrets.token_urlsafe(32))
    gate = Gate(settings)
    print("sessiongate demo: all on 127.0.0.1, Ctrl+C stops it")
    print(f"  the gate (open this):  {gate_url}/   sign in as alice@example.com / demo")
    print(f"  your sessions:         {gate_url}{SESSIONS_PAGE}")
    print(f"  Kratos fake:           {kratos_url} (admin {admin_port})")
    print(f"  unprotected app:       http://{host}:{app_port}/")
    print(f"  API call with a token: curl -H 'X-Session-Token: {created[0][1].token}' {gate_url}/")
    sys.stdout.flush()

    def server(app, port: int) -> uvicorn.Server:  # type: ignore[no-untyped-def]
        return uvicorn.Server(
            uvicorn.Config(
                app, host=host, port=port, log_level="warning", lifespan="off", access_log=False
            )
        )

    servers = [
        server(fake, kratos_port),
        server(fake.admin_app, admin_port),
        server(legacy_app, app_port),
        server(gate, gate_port),
    ]

    async def serve_all() -> None:
        try:
            await asyncio.gather(*(s.serve() for s in servers))
        finally:
            await gate.aclose()

    asyncio.run(serve_all())
    return 0
