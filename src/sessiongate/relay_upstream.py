"""The relay's calls to Kratos: only what Kratos needs goes out, Kratos' answer comes back.

A relayed request carries `Accept`, `Content-Type`, the request's X-Request-Id and trace context
(tracing.outgoing), the body and either the caller's one credential (public routes) or the
gate's own `ORY_API_KEY` (admin routes). Its URL is the route's upstream path (built from
validated parts, see `relay_routes`) plus the re-encoded query. The answer keeps status, body
and headers, except hop-by-hop, CORS and X-Request-Id headers; `Link` and `Location` are
rewritten to the gate, `Set-Cookie` domains when configured.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx
from starlette.types import Scope

from sessiongate.credentials import Credential
from sessiongate.kratos import KratosClient
from sessiongate.relay_rewrite import UrlRewriter, rewrite_cookie_domain
from sessiongate.relay_routes import Route
from sessiongate.tracing import outgoing

RawHeaders = list[tuple[bytes, bytes]]

_FORWARDED = (b"accept", b"content-type")
_DROP_FROM_KRATOS = frozenset(
    {
        "content-length",
        "content-encoding",  # httpx hands us the decoded body
        "transfer-encoding",
        "connection",
        "keep-alive",
        "date",
        "server",
        "x-request-id",  # the gate's own goes back to the client
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-expose-headers",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-max-age",
    }
)


class _HideLogoutToken(logging.Filter):
    """httpx logs every request's URL at INFO; the logout URL's query is the logout token."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(a, httpx.URL) and a.query for a in record.args
        ):
            record.args = tuple(
                a.copy_with(query=b"token=REDACTED")
                if isinstance(a, httpx.URL) and a.path.endswith("/self-service/logout")
                else a
                for a in record.args
            )
        return True


logging.getLogger("httpx").addFilter(_HideLogoutToken())


@dataclass(slots=True)
class Call:
    """One relayed request, validated: the handlers and the Kratos call see only this."""

    scope: Scope
    route: Route
    target_id: str | None  # the route's `{id}`, canonical (or `whoami` where Kratos allows it)
    query: str  # re-encoded
    headers: RawHeaders
    body: bytes
    credential: Credential | None
    method: str  # the Kratos method: the request's, or the route's for the sessions page's forms

    @property
    def upstream_path(self) -> str:
        return self.route.upstream_path(self.target_id)


@dataclass(slots=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class KratosRelay:
    def __init__(
        self, kratos: KratosClient, rewriter: UrlRewriter, cookie_domain: str | None
    ) -> None:
        self.kratos = kratos
        self.rewriter = rewriter
        self.cookie_domain = cookie_domain

    async def send(self, call: Call, *, admin: bool, forward_credential: bool = True) -> Answer:
        headers: dict[str, str] = {}
        for name, value in call.headers:
            if name in _FORWARDED:
                headers[name.decode("latin-1")] = value.decode("latin-1")
        headers.update(outgoing())
        if admin:
            if self.kratos.api_key:
                headers["Authorization"] = f"Bearer {self.kratos.api_key}"
            client = self.kratos.admin
        else:
            if forward_credential and call.credential is not None:
                headers.update(call.credential.whoami_headers())
            client = self.kratos.public
        path = call.upstream_path
        url = httpx.URL(path + ("?" + call.query if call.query else ""))
        if url.path != path or url.fragment:  # cannot happen with validated parts: fail closed
            raise RuntimeError(f"relay built an upstream URL off its route: {path!r}")
        method = "GET" if call.method == "HEAD" else call.method
        response = await client.request(method, url, headers=headers, content=call.body or None)
        out = []
        for name, value in response.headers.multi_items():
            lname = name.lower()
            if lname in _DROP_FROM_KRATOS:
                continue
            if lname == "link":
                value = self.rewriter.rewrite_link(value, call.scope)
            elif lname == "location":
                value = self.rewriter.rewrite_url(value, call.scope)
            elif lname == "set-cookie" and self.cookie_domain:
                value = rewrite_cookie_domain(value, self.cookie_domain)
            out.append((lname, value))
        return Answer(response.status_code, out, response.content)
