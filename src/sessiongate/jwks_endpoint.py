"""The identity token's public keys over HTTP (README, "Identity token"): served at
`identity_token.jwks_path` without a session, in proxy mode (gate.py) and middleware mode
(middleware.py) alike.

Owns only the answer: GET/HEAD → the key set identity_token.py built (public members only),
cacheable for JWKS_MAX_AGE; any other method → 405. Nothing is served with `source: kratos`
(Kratos publishes its own keys).
"""

from __future__ import annotations

from starlette.types import Scope, Send

from sessiongate.identity_token import IdentityTokens
from sessiongate.responses import send_error

#: A JWKS answer's `Cache-Control: max-age` (seconds): how long a rotation waits between
#: publishing a new key and signing with it (README, "Rotating the keys").
JWKS_MAX_AGE = 300


class JwksEndpoint:
    def __init__(self, path: str, body: bytes) -> None:
        self.path = path
        self.body = body

    @classmethod
    def of(cls, tokens: IdentityTokens | None, path: str) -> JwksEndpoint | None:
        """The endpoint when the gate signs tokens itself (source gate), else None."""
        if tokens is None or not tokens.jwks_body:
            return None
        return cls(path, tokens.jwks_body)

    def matches(self, scope: Scope) -> bool:
        return scope["type"] == "http" and scope["path"] == self.path

    async def __call__(self, scope: Scope, send: Send) -> None:
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await send_error(
                send,
                405,
                reason="The key set is read with GET.",
                headers=[(b"allow", b"GET, HEAD")],
                head=False,
            )
            return
        body = self.body
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"public, max-age=%d" % JWKS_MAX_AGE),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
