"""The gate's long-lived clients for Kratos: whoami, readiness, and the relay's calls.

whoami runs once per new credential, but a cold start (a restart, a deploy, a login wave) sends
hundreds at once, and httpx's pool bookkeeping grows with the pool on every request: 1000 new
sessions together took more than the 5 s timeout through httpx here. So whoami goes through an
aiohttp session (as the upstream proxy does); the relay's occasional calls keep httpx. When
tests inject an httpx transport (a `KratosFake` in-process), whoami uses it too. Only the one
credential header is ever sent, with the request's X-Request-Id and trace context (tracing.py:
those of the request whose task makes the call); the Ory API key goes only to admin endpoints.
With OpenTelemetry each whoami call is a CLIENT span.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import aiohttp
import httpx

from sessiongate.credentials import Credential
from sessiongate.tracing import outgoing

if TYPE_CHECKING:
    from sessiongate.config import Settings
    from sessiongate.tracing import Tracing

#: A whoami body larger than this is not a session (Kratos' are 1-4 KB): fail closed, unread.
MAX_WHOAMI_BYTES = 1024 * 1024


class KratosUnavailable(Exception):
    """Kratos could not be asked: connection refused or reset, timeout, protocol error.

    `kind` is the metrics' whoami outcome: `timeout`, `connection_error`, or `other` (an
    answer that cannot be a session, such as an oversized body)."""

    def __init__(self, message: str, *, kind: str = "connection_error") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class KratosAnswer:
    status: int
    headers: Mapping[str, str]  # case-insensitive (httpx.Headers or aiohttp's CIMultiDict)
    body: bytes


class KratosClient:
    def __init__(
        self,
        public_url: str,
        admin_url: str | None = None,
        *,
        timeout: float = 5.0,
        api_key: str | None = None,
        max_connections: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
        admin_transport: httpx.AsyncBaseTransport | None = None,
        tokenize_as: str | None = None,
    ) -> None:
        self.public_url = public_url.rstrip("/")
        self.admin_url = (admin_url or public_url).rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        common = {"timeout": httpx.Timeout(timeout), "follow_redirects": False, "trust_env": False}
        self.public = httpx.AsyncClient(
            base_url=self.public_url, limits=limits, transport=transport, **common
        )
        self.admin = httpx.AsyncClient(
            base_url=self.admin_url, limits=limits, transport=admin_transport or transport, **common
        )
        self.max_connections = max_connections
        self._in_process = transport is not None
        # identity_token.source kratos: every whoami asks Kratos' tokenizer for the app's JWT
        self._whoami_path = "/sessions/whoami" + (
            "?tokenize_as=" + quote(tokenize_as, safe="") if tokenize_as else ""
        )
        self._whoami_url = self.public_url + self._whoami_path
        self._fast: aiohttp.ClientSession | None = None
        self.tracing: Tracing | None = None  # OpenTelemetry spans (set by the gate)
        parts = urlsplit(self.public_url)
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        # for spans: the URL without any userinfo
        self._span_target = (
            f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}"
            f"{parts.path}/sessions/whoami",
            parts.hostname or "",
            parts.port,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> KratosClient:
        """The client the settings describe (`ory.*`, the API key from the environment, and
        `tokenize_as` with identity_token source kratos): the gate's, the middleware's and
        `check-config --online`'s."""
        from sessiongate.config import ory_api_key

        ory = settings.ory
        return cls(
            ory.public_url,
            ory.admin_base,
            timeout=ory.timeout,
            api_key=ory_api_key(),
            max_connections=ory.max_inflight,
            transport=transport,
            tokenize_as=settings.whoami_tokenize_as,
        )

    def _fast_session(self) -> aiohttp.ClientSession:
        if self._fast is None or self._fast.closed:
            self._fast = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections, limit_per_host=0, ttl_dns_cache=60
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                skip_auto_headers=("User-Agent",),
            )
        return self._fast

    async def whoami(self, credential: Credential) -> KratosAnswer:
        headers = {"Accept": "application/json", **credential.whoami_headers()}
        tracing = self.tracing
        if tracing is None:
            headers.update(outgoing())
            return await self._whoami(headers)
        with tracing.whoami(*self._span_target) as span:
            headers.update(outgoing())  # inside the span: Kratos' parent is this call
            answer = await self._whoami(headers)
            tracing.answered(span, answer.status)
            return answer

    async def _whoami(self, headers: dict[str, str]) -> KratosAnswer:
        try:
            # one deadline for the whole exchange: a Kratos trickling bytes must not outlast it
            async with asyncio.timeout(self.timeout):
                if self._in_process:
                    return await self._send(self.public, "GET", self._whoami_path, headers)
                return await self._whoami_fast(headers)
        except TimeoutError as exc:
            raise KratosUnavailable("whoami took longer than ory.timeout", kind="timeout") from exc

    async def _whoami_fast(self, headers: dict[str, str]) -> KratosAnswer:
        try:
            async with self._fast_session().get(
                self._whoami_url, headers=headers, allow_redirects=False
            ) as response:
                length = response.content_length
                if length is not None and length > MAX_WHOAMI_BYTES:
                    raise KratosUnavailable("whoami body too large", kind="other")
                chunks, size = [], 0
                async for chunk in response.content.iter_any():
                    size += len(chunk)
                    if size > MAX_WHOAMI_BYTES:
                        raise KratosUnavailable("whoami body too large", kind="other")
                    chunks.append(chunk)
                body = b"".join(chunks)
                return KratosAnswer(response.status, response.headers, body)
        except aiohttp.ClientError as exc:  # refused, reset, truncated, protocol errors
            kind = "timeout" if isinstance(exc, TimeoutError) else "connection_error"
            raise KratosUnavailable(type(exc).__name__, kind=kind) from exc

    async def ready(self) -> bool:
        try:
            answer = await self._send(self.public, "GET", "/health/ready")
        except KratosUnavailable:
            return False
        return answer.status == 200

    async def _send(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
    ) -> KratosAnswer:
        try:
            response = await client.request(method, path, headers=headers)
        except httpx.RequestError as exc:  # transport, timeout, and undecodable bodies
            kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection_error"
            raise KratosUnavailable(type(exc).__name__, kind=kind) from exc
        return KratosAnswer(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        if self._fast is not None:
            await self._fast.close()
            self._fast = None
        await self.public.aclose()
        await self.admin.aclose()
