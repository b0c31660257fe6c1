"""A minimal login page for the Kratos fake, so a person (or a browser test) can log in.

Not part of Kratos' session contract: real Kratos answers `GET /self-service/login/browser`
with a login *flow* and a redirect to your login UI. The fake short-cuts that: the same URL
shows a form, and `POST /self-service/login` checks the password set with
`KratosFake.set_password`, records the device as Kratos does (user agent; IP address and location
from the request's headers), issues the session cookie exactly as Kratos does (CONTRACT §5) and
sends the browser back to `return_to` when it is allowed, else to the default return URL.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from sessiongate.testing.app import KratosFake

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in (Kratos fake)</title>
<style>body{{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto}}
label,input,button{{display:block;width:100%;margin:.4rem 0}}.err{{color:#b00}}</style></head>
<body><h1>Sign in</h1><p>Kratos fake: demo users use the password <code>demo</code>.</p>
{error}<form method="post" action="{action}">
<input type="hidden" name="return_to" value="{return_to}">
<input type="hidden" name="aal" value="{aal}">
<label>Email <input name="identifier" type="email" autocomplete="username" required
 value="{identifier}"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"
 required></label>
<button type="submit">Sign in</button></form></body></html>"""


def _page(
    fake: KratosFake,
    *,
    return_to: str,
    aal: str,
    identifier: str = "",
    error: str = "",
    status: int = 200,
) -> Response:
    body = _PAGE.format(
        action=html.escape(fake.public_url + "/self-service/login"),
        return_to=html.escape(return_to),
        aal=html.escape(aal),
        identifier=html.escape(identifier),
        error=f'<p class="err" role="alert">{html.escape(error)}</p>' if error else "",
    )
    return HTMLResponse(body, status_code=status)


# Kratos takes a login's IP address from the first of these headers present (CONTRACT §3.1)
_IP_HEADERS = ("true-client-ip", "cf-connecting-ip", "x-real-ip", "x-forwarded-for")


def _device(request: Request) -> dict[str, str | None]:
    """The device Kratos records at login: user agent, IP address and location as the
    request's headers report them (any client can set them), else the peer's address."""
    ip = request.client.host if request.client else None
    for name in _IP_HEADERS:
        value = request.headers.get(name)
        if value:
            ip = value.split(",")[0].strip() if name == "x-forwarded-for" else value
            break
    place = [request.headers.get(n, "") for n in ("cf-ipcity", "cf-ipcountry")]
    return {
        "ip_address": ip,
        "user_agent": request.headers.get("user-agent"),
        "location": ", ".join(p for p in place if p),
    }


def login_routes(fake: KratosFake) -> list[Route]:
    async def show(request: Request) -> Response:
        return _page(
            fake,
            return_to=request.query_params.get("return_to", ""),
            aal=request.query_params.get("aal", "aal1"),
        )

    async def submit(request: Request) -> Response:
        # urlencoded forms only: no multipart parser needed for a login page
        form = {
            k: v[0]
            for k, v in parse_qs(
                (await request.body()).decode("utf-8", "replace"), keep_blank_values=True
            ).items()
        }
        identifier = form.get("identifier", "")
        password = form.get("password", "")
        return_to = form.get("return_to", "")
        aal = "aal2" if form.get("aal") == "aal2" else "aal1"
        identity_id = fake.check_password(identifier, password)
        if identity_id is None:
            return _page(
                fake,
                return_to=return_to,
                aal=aal,
                identifier=identifier,
                error="The provided credentials are invalid.",
                status=400,
            )
        created = fake.create_session(identity_id, aal=aal, devices=[_device(request)])
        target = (fake.return_to_allowed(return_to) if return_to else None) or (
            fake.default_browser_return_to
        )
        response = RedirectResponse(target, status_code=303)
        response.raw_headers.append(
            (
                b"set-cookie",
                fake.session_cookie(created.token, fake.session(created.id).expires_at).encode(),
            )
        )
        return response

    return [
        Route("/self-service/login/browser", show, methods=["GET"]),
        Route("/self-service/login", submit, methods=["POST"]),
    ]
