"""The session relay: Kratos' own session routes, mounted on the gate (beside the proxy).

So that the official Ory SDKs work with the gate as their base URL, the gate answers Kratos'
paths (under `sessions_api.prefix`) by relaying them to Kratos with only what Kratos needs: the
one credential, `Accept`, `Content-Type` and the body. Answers come back faithfully (status,
body, every `Set-Cookie`, `X-Total-Count`, `Cache-Control`, `Ory-Error-Id`), with URLs that
point at Kratos (`Link`, `Location`, `logout_url`) rewritten to point at the gate.

The relay keeps the gate's cache truthful: after Kratos confirms (2xx) a revocation, logout,
delete or extend, the affected cache entries are evicted before the client hears back, so the
very next request anywhere on the gate sees the change. `GET /sessions/whoami` is answered from
the cache when it is fresh.

Admin routes are off by default; when on, a caller is admitted by one of the gate's admin keys
(`Authorization: Bearer`, constant-time compare) or by its own session matching
`allow_identities`. The gate then calls Kratos' admin API with its own `ORY_API_KEY` and never
forwards the caller's `Authorization`.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.types import Receive, Scope, Send

from sessiongate.cache import NEGATIVE, CachedSession
from sessiongate.config import Settings, origin_of
from sessiongate.credentials import (
    CookieMatcher,
    Credential,
    MalformedCredential,
    find_credential,
)
from sessiongate.gatekeeper import Gatekeeper
from sessiongate.herodot import error_bytes
from sessiongate.identity_headers import lookup
from sessiongate.kratos import KratosAnswer, KratosClient
from sessiongate.responses import send_error

log = logging.getLogger("sessiongate.relay")


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
RawHeaders = list[tuple[bytes, bytes]]

MAX_BODY = 64 * 1024
_UUIDISH = r"[^/]+"
_LINK_URL = re.compile(r"<([^>]*)>")
_DROP_FROM_KRATOS = frozenset(
    {
        "content-length",
        "content-encoding",  # httpx hands us the decoded body
        "transfer-encoding",
        "connection",
        "keep-alive",
        "date",
        "server",
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-expose-headers",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-max-age",
    }
)
WHOAMI_401 = error_bytes(401, reason="No valid session credentials found in the request.")


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: str
    admin: bool = False


def _route(method: str, path: str, handler: str, *, admin: bool = False) -> Route:
    regex = "^" + path.replace("{id}", f"(?P<id>{_UUIDISH})") + "$"
    return Route(method, re.compile(regex), handler, admin)


PUBLIC_ROUTES = [
    _route("GET", "/sessions/whoami", "whoami"),
    _route("GET", "/sessions", "relay_public"),
    _route("DELETE", "/sessions", "revoke_others"),
    _route("DELETE", "/sessions/{id}", "revoke_one"),
    _route("GET", "/self-service/logout/browser", "relay_public"),
    _route("GET", "/self-service/logout", "logout_browser"),
    _route("DELETE", "/self-service/logout/api", "logout_api"),
]
ADMIN_ROUTES = [
    _route("GET", "/admin/sessions", "relay_admin", admin=True),
    _route("GET", "/admin/sessions/{id}", "relay_admin", admin=True),
    _route("DELETE", "/admin/sessions/{id}", "admin_disable", admin=True),
    _route("PATCH", "/admin/sessions/{id}/extend", "admin_extend", admin=True),
    _route("GET", "/admin/identities/{id}/sessions", "relay_admin", admin=True),
    _route("DELETE", "/admin/identities/{id}/sessions", "admin_delete_identity", admin=True),
]


@dataclass(slots=True)
class Call:
    """One relayed request, as the handlers see it."""

    scope: Scope
    path: str  # the Kratos path (prefix removed)
    route: Route
    params: dict[str, str]
    headers: RawHeaders
    body: bytes
    credential: Credential | None


@dataclass(slots=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class SessionsRelay:
    def __init__(
        self,
        settings: Settings,
        kratos: KratosClient,
        gatekeeper: Gatekeeper,
        *,
        admin_keys: list[str],
        is_allowed_origin: Callable[[str], bool],
    ) -> None:
        api = settings.sessions_api
        self.prefix = api.prefix.rstrip("/")
        self.kratos = kratos
        self.gatekeeper = gatekeeper
        self.cache = gatekeeper.cache
        self.cookie_domain = api.cookie_domain
        self.admin_enabled = api.admin.enabled
        self.admin_keys = [k.encode() for k in admin_keys]
        self.allow_rules = api.admin.allow_identities
        self.routes = PUBLIC_ROUTES + (ADMIN_ROUTES if self.admin_enabled else [])
        self.is_allowed_origin = is_allowed_origin
        self.kratos_origins = {
            origin_of(settings.ory.public_url): urlsplit(settings.ory.public_url).path,
            origin_of(settings.ory.admin_base): urlsplit(settings.ory.admin_base).path,
        }
        self._heads = ("/sessions", "/self-service/logout", "/admin/")

    # -- routing ----------------------------------------------------------------------------
    def kratos_path(self, path: str) -> str | None:
        """The Kratos path this gate path relays to, or None when it is not a relay route."""
        if self.prefix:
            if not path.startswith(self.prefix + "/"):
                return None
            path = path[len(self.prefix) :]
        if not path.startswith(self._heads) or (
            path.startswith("/admin/") and not self.admin_enabled
        ):
            return None
        return path

    def matches(self, path: str) -> bool:
        return self.kratos_path(path) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = self.kratos_path(scope["path"])
        assert path is not None
        method = scope["method"]
        route, params = None, {}
        allowed_methods = []
        for candidate in self.routes:
            match = candidate.pattern.match(path)
            if match:
                allowed_methods.append(candidate.method)
                if candidate.method == method or (method == "HEAD" and candidate.method == "GET"):
                    route, params = candidate, match.groupdict()
                    break
        if route is None:
            if allowed_methods:
                await send_error(
                    send,
                    405,
                    reason="Method not allowed.",
                    headers=[(b"allow", ", ".join(allowed_methods).encode())],
                )
            else:
                await send_error(send, 404, reason="No such session route on this gate.")
            return
        body = await self._read_body(receive)
        if body is None:
            await send_error(send, 413, reason=f"Request bodies are limited to {MAX_BODY} bytes.")
            return
        try:
            credential = find_credential(scope["headers"], self.gatekeeper.cookie_matcher)
        except MalformedCredential as exc:
            await send_error(send, 400, reason=str(exc).capitalize() + ".")
            return
        call = Call(scope, path, route, params, scope["headers"], body, credential)
        if method in ("DELETE", "PATCH", "POST") and not self._origin_ok(call):
            await send_error(
                send,
                403,
                reason="Cross-origin request refused: the Origin is "
                "neither this gate nor an allowed CORS origin.",
            )
            return
        if route.admin:
            refusal = await self._admit_admin(call)
            if refusal is not None:
                status, reason = refusal
                retry = [(b"retry-after", b"2")] if status == 503 else None
                await send_error(send, status, reason=reason, headers=retry)
                return
        handler: Callable[[Call], Awaitable[Answer]] = getattr(self, route.handler)
        try:
            answer = await handler(call)
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            log.warning("Kratos relay %s %s failed: %s", method, path, type(exc).__name__)
            await send_error(
                send,
                503,
                reason="The session service is unreachable.",
                headers=[(b"retry-after", b"2")],
            )
            return
        await self._send(scope, send, answer)

    # -- handlers ---------------------------------------------------------------------------
    async def whoami(self, call: Call) -> Answer:
        """From the cache when fresh (Kratos' own bytes), else relayed and then cached."""
        cred = call.credential
        query = call.scope.get("query_string", b"")
        if cred is None or query:  # tokenize_as and friends: always Kratos' fresh answer
            return await self.relay_public(call)
        hit = self.cache.get(cred.cache_key)
        if isinstance(hit, CachedSession):
            return self._from_cache(hit)
        if hit is NEGATIVE:
            return Answer(
                401,
                [
                    ("content-type", "application/json"),
                    ("ory-error-id", ""),
                    ("cache-control", _NO_STORE),
                ],
                WHOAMI_401,
            )
        started = time.monotonic()
        answer = await self.relay_public(call)
        # Cache what Kratos said, as the gate would have; the client gets Kratos' own answer
        # (including a refreshed cookie after an extend, which is never cached).
        self.gatekeeper.authenticator.classify(
            cred.cache_key,
            KratosAnswer(answer.status, httpx.Headers(answer.headers), answer.body),
            started,
        )
        return answer

    @staticmethod
    def _from_cache(entry: CachedSession) -> Answer:
        headers = [
            ("content-type", "application/json; charset=utf-8"),
            ("x-kratos-authenticated-identity-id", entry.identity_id),
            ("cache-control", _NO_STORE),
            ("vary", "Cookie"),
        ]
        return Answer(200, headers, entry.body)

    async def relay_public(self, call: Call) -> Answer:
        return await self._relay(call, admin=False)

    async def relay_admin(self, call: Call) -> Answer:
        return await self._relay(call, admin=True)

    async def revoke_one(self, call: Call) -> Answer:
        answer = await self._relay(call, admin=False)
        if 200 <= answer.status < 300 and call.params.get("id") != "whoami":
            self.cache.evict_session(_canonical_id(call.params["id"]))
        return answer

    async def revoke_others(self, call: Call) -> Answer:
        current = await self._caller_session(call.credential)
        answer = await self._relay(call, admin=False)
        if 200 <= answer.status < 300 and current is not None:
            self.cache.evict_identity(current.identity_id, except_session=current.session_id)
        elif 200 <= answer.status < 300:
            # Kratos revoked the others for a caller the gate could not resolve (an aal1
            # session of a 2FA identity, which whoami refuses; Kratos briefly unreachable):
            # its identity is unknown here, so no entry can be trusted any more.
            self.cache.clear()
        return answer

    async def logout_browser(self, call: Call) -> Answer:
        current = await self._caller_session(call.credential)
        answer = await self._relay(call, admin=False)
        # 204 (JSON) or 303 (browser) is success; a 303 can also be an error page, and then
        # evicting only costs one extra whoami, while keeping a logged-out session is wrong.
        if answer.status in (204, 303) and current is not None:
            self.cache.evict_session(current.session_id)
        return answer

    async def logout_api(self, call: Call) -> Answer:
        token = _session_token(call.body)
        target = None
        if token:
            try:
                # find_credential vets the token (visible ASCII, bounded) as for a header
                found = find_credential([(b"x-session-token", token.encode())], CookieMatcher([]))
                target = await self._caller_session(found)
            except MalformedCredential:
                target = None
        answer = await self._relay(call, admin=False, forward_credential=False)
        if 200 <= answer.status < 300 and target is not None:
            self.cache.evict_session(target.session_id)
        return answer

    async def admin_disable(self, call: Call) -> Answer:
        answer = await self._relay(call, admin=True)
        if 200 <= answer.status < 300:
            self.cache.evict_session(_canonical_id(call.params["id"]))
        return answer

    async def admin_extend(self, call: Call) -> Answer:
        answer = await self._relay(call, admin=True)
        if 200 <= answer.status < 300:
            self.cache.forget_session(_canonical_id(call.params["id"]))
        return answer

    async def admin_delete_identity(self, call: Call) -> Answer:
        answer = await self._relay(call, admin=True)
        if 200 <= answer.status < 300:
            self.cache.evict_identity(_canonical_id(call.params["id"]))
        return answer

    # -- Kratos calls -----------------------------------------------------------------------
    async def _relay(self, call: Call, *, admin: bool, forward_credential: bool = True) -> Answer:
        headers: dict[str, str] = {}
        for name, value in call.headers:
            if name in (b"accept", b"content-type", b"x-request-id"):
                headers[name.decode("latin-1")] = value.decode("latin-1")
        if admin:
            if self.kratos.api_key:
                headers["Authorization"] = f"Bearer {self.kratos.api_key}"
            client = self.kratos.admin
        else:
            if forward_credential and call.credential is not None:
                headers.update(call.credential.whoami_headers())
            client = self.kratos.public
        target = call.path
        query = call.scope.get("query_string", b"")
        if query:
            target += "?" + query.decode("latin-1")
        method = "GET" if call.scope["method"] == "HEAD" else call.scope["method"]
        response = await client.request(method, target, headers=headers, content=call.body or None)
        out = []
        for name, value in response.headers.multi_items():
            lname = name.lower()
            if lname in _DROP_FROM_KRATOS:
                continue
            if lname == "link":
                value = self.rewrite_link(value, call.scope)
            elif lname == "location":
                value = self.rewrite_url(value, call.scope)
            elif lname == "set-cookie" and self.cookie_domain:
                value = rewrite_cookie_domain(value, self.cookie_domain)
            out.append((lname, value))
        body = response.content
        if call.route.handler == "relay_public" and call.path == "/self-service/logout/browser":
            body = self._rewrite_logout_url(body, call.scope)
        return Answer(response.status_code, out, body)

    async def _caller_session(self, credential: Credential | None) -> CachedSession | None:
        if credential is None:
            return None
        result = await self.gatekeeper.authenticator.authenticate(credential)
        return result if isinstance(result, CachedSession) else None

    # -- admission --------------------------------------------------------------------------
    async def _admit_admin(self, call: Call) -> tuple[int, str] | None:
        """None when admitted, else (status, reason)."""
        authorization = dict(call.headers).get(b"authorization", b"")
        if authorization[:7].lower() == b"bearer " and self.admin_keys:
            presented = authorization[7:]
            # Compare with every key so timing says nothing about which one matched.
            matched = False
            for key in self.admin_keys:
                matched |= hmac.compare_digest(presented, key)
            if matched:
                return None
        if self.allow_rules and call.credential is not None:
            result = await self.gatekeeper.authenticator.authenticate(call.credential)
            if isinstance(result, CachedSession):
                if self._rules_admit(result.session):
                    return None
                return 403, "This identity may not use the admin session API."
            if result.retry_after:  # Kratos unreachable or overloaded: we cannot tell
                return 503, result.reason or "The session service is unreachable."
        return 401, "Admin credentials are missing or invalid."

    def _rules_admit(self, session: dict[str, Any]) -> bool:
        identity_id = str(lookup(session, ("identity", "id")))
        for rule in self.allow_rules:
            path, sep, expected = rule.partition("=")
            if not sep:
                if hmac.compare_digest(rule.lower(), identity_id.lower()):
                    return True
                continue
            actual = lookup(session, tuple(path.split(".")))
            if actual is not None and str(actual) == expected:
                return True
        return False

    def _origin_ok(self, call: Call) -> bool:
        """Cookie-authenticated state changes need our own or an allowed CORS Origin."""
        if call.credential is None or call.credential.kind != "cookie":
            return True
        origin = dict(call.headers).get(b"origin")
        if origin is None:
            return True
        text = origin.decode("latin-1")
        gate_origin = self.gatekeeper.decider.origin(call.scope.get("scheme", "http"), call.headers)
        if gate_origin is not None and text == gate_origin:
            return True
        return self.is_allowed_origin(text)

    # -- rewriting --------------------------------------------------------------------------
    def gate_base(self, scope: Scope) -> str:
        origin = self.gatekeeper.decider.origin(scope.get("scheme", "http"), scope["headers"])
        return (origin or "") + self.prefix

    def rewrite_url(self, url: str, scope: Scope) -> str:
        """A Kratos URL (relative, or absolute on a Kratos origin) → the same path on the gate."""
        if url.startswith("/") and not url.startswith("//"):
            return self.gate_base(scope) + url
        try:
            origin = origin_of(url)
        except ValueError:
            return url
        base_path = self.kratos_origins.get(origin)
        if base_path is None:
            return url
        rest = url[len(url.split("/", 3)[0]) + 2 + len(url.split("/", 3)[2]) :]
        boundaries = (base_path + "/", base_path + "?", base_path + "#")
        if base_path and (rest == base_path or rest.startswith(boundaries)):
            rest = rest[len(base_path) :]  # only at a segment boundary: /base.evil is not /base
        base = self.gate_base(scope)
        if not base.startswith("http") and rest.startswith(("//", "/\\")):
            return url  # with no known gate origin this would read as scheme-relative //host
        return base + (rest or "/")

    def rewrite_link(self, value: str, scope: Scope) -> str:
        return _LINK_URL.sub(lambda m: f"<{self.rewrite_url(m.group(1), scope)}>", value)

    def _rewrite_logout_url(self, body: bytes, scope: Scope) -> bytes:
        try:
            data = json.loads(body)
        except ValueError:
            return body
        if not isinstance(data, dict) or not isinstance(data.get("logout_url"), str):
            return body
        data["logout_url"] = self.rewrite_url(data["logout_url"], scope)
        return json.dumps(data, separators=(",", ":")).encode()

    # -- I/O --------------------------------------------------------------------------------
    @staticmethod
    async def _read_body(receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    @staticmethod
    async def _send(scope: Scope, send: Send, answer: Answer) -> None:
        body = b"" if scope["method"] == "HEAD" else answer.body
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
        if answer.status not in (204, 304):
            headers.append((b"content-length", str(len(answer.body)).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if answer.status == 204 else body})


_NO_STORE = "private, no-cache, no-store, must-revalidate"


def rewrite_cookie_domain(cookie: str, domain: str) -> str:
    parts = [p for p in cookie.split(";") if not p.strip().lower().startswith("domain=")]
    parts.insert(1, f" Domain={domain}")
    return ";".join(parts)


def _canonical_id(raw: str) -> str:
    """The id as Kratos reports it: gofrs/uuid also accepts {…}, urn:uuid:… and bare hex."""
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        return raw.lower()


def _session_token(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    token = data.get("session_token") if isinstance(data, dict) else None
    return token if isinstance(token, str) and token else None
