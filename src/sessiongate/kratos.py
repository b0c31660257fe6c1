"""The gate's one long-lived client for Kratos: whoami, readiness, and (later) the relay.

httpx is fine here: Kratos is called once per new credential and per cache lifetime, not per
request. The transport is swappable so tests can run a `KratosFake` in-process. Only the one
credential header is ever sent; the Ory API key goes only to admin endpoints.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from sessiongate.credentials import Credential


class KratosUnavailable(Exception):
    """Kratos could not be asked: connection refused or reset, timeout, protocol error."""


@dataclass(frozen=True, slots=True)
class KratosAnswer:
    status: int
    headers: httpx.Headers
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

    async def whoami(self, credential: Credential) -> KratosAnswer:
        try:
            # httpx's timeout bounds each read; a Kratos trickling bytes must not outlast it
            async with asyncio.timeout(self.timeout):
                return await self._send(
                    self.public,
                    "GET",
                    "/sessions/whoami",
                    headers={"Accept": "application/json", **credential.whoami_headers()},
                )
        except TimeoutError as exc:
            raise KratosUnavailable("whoami took longer than ory.timeout") from exc

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
            raise KratosUnavailable(type(exc).__name__) from exc
        return KratosAnswer(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        await self.public.aclose()
        await self.admin.aclose()
