"""`KratosFake`: Ory Kratos v26.2.0's session endpoints as an ASGI app, to the letter.

Every handler follows `../shared/kratos/CONTRACT.md` §4.1-4.13, in the order Kratos checks
things, with its quirks kept on purpose: whoami's 401 without `error.id`, 204 for revoking a
foreign session, `count` over rows in any state, 200 `[]` for an unknown identity, the #3883
pagination defect (switchable), relative `Link` URLs. Two shapes:

* two-port (self-hosted): `fake` is the public API, `fake.admin_app` the unauthenticated admin
  API, which adds the `/admin` prefix to paths that lack it;
* one-port (Ory Network, `api_key` set): `fake` serves both, `/admin/...` needs
  `Authorization: Bearer <api key>`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, Literal
from urllib.parse import urlencode, urljoin, urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sessiongate.herodot import error_bytes, error_headers
from sessiongate.testing.credentials import (
    CookieCodec,
    FoundToken,
    bearer_token,
    find_token,
    first_cookie,
)
from sessiongate.testing.gomux import GoMux, go_redirect
from sessiongate.testing.login_ui import login_routes
from sessiongate.testing.pagination import (
    KeysetToken,
    MigrationPage,
    PageTokenError,
    go_atoi,
    go_first_nonempty,
    go_get,
    keyset_link_header,
)
from sessiongate.testing.store import (
    AAL,
    Clock,
    CreatedSession,
    Device,
    IdentityState,
    Session,
    Store,
)
from sessiongate.testing.tokenizer import Tokenizer, TokenizeTemplate
from sessiongate.uuids import InvalidUUID, parse_uuid

RequiredAAL = Literal["highest_available", "aal1"]

SUCCESS_CONTENT_TYPE = "application/json; charset=utf-8"
NO_CACHE = "private, no-cache, no-store, must-revalidate"
ALL_WHOAMI_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "CONNECT", "OPTIONS", "TRACE"]

REASON_NO_SESSION_WHOAMI = "No valid session credentials found in the request."
REASON_NO_SESSION_COOKIE = "No valid session cookie found."
REASON_AAL = (
    "An active session was found but it does not fulfill the requested Authenticator "
    "Assurance Level. Please verify yourself with a second factor to resolve this issue."
)
MESSAGE_AAL = "Session does not fulfill the requested Authenticator Assurance Level"
MESSAGE_NOT_FOUND_DB = "Unable to locate the resource"
REASON_SESSION_INACTIVE = "No active session was found in this request."
MESSAGE_SESSION_INACTIVE = "request does not have a valid authentication session"
#: gorilla/securecookie v1.1.1's errMacInvalid, as `RefreshCookie` surfaces it (a plain error:
#: herodot makes it a 500 with err.Error() as the message).
MESSAGE_COOKIE_INVALID = "securecookie: the value is not valid"
REASON_NATIVE_LOGOUT_403 = (
    "The provided Ory Session Token could not be found, is invalid, or otherwise malformed."
)
REASON_LOGOUT_TOKEN_MISMATCH = (
    "Unable to log out because the logout token in the URL query does not match the session cookie."
)

_TOKEN_TEXT = re.compile(r"^[!-~]+$")
_COOKIE_VALUE = re.compile(r"^[!#-+\--:<-\[\]-~]+$")  # RFC 6265 cookie-octet

_GO_BOOLS = {
    "1": True,
    "t": True,
    "T": True,
    "TRUE": True,
    "true": True,
    "True": True,
    "0": False,
    "f": False,
    "F": False,
    "FALSE": False,
    "false": False,
    "False": False,
}


class KratosError(Exception):
    """A herodot error a handler answers with."""

    def __init__(
        self,
        code: int,
        *,
        id: str = "",
        reason: str = "",
        message: str | None = None,
        details: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        headers: list[tuple[str, str]] | None = None,
        enhanced: bool = False,
    ) -> None:
        super().__init__(reason or message or str(code))
        self.code, self.id, self.reason, self.message = code, id, reason, message
        self.details, self.extra, self.headers = details, extra, headers or []
        # An error with its own JSON (herodot's `EnhanceJSONError`) skips the enhancer that
        # adds `X-Request-ID` as `error.request` (herodot v0.10.8 json.go:61-66).
        self.enhanced = enhanced


def go_json(value: Any) -> bytes:
    """json.NewEncoder(w).Encode's output: compact, <, > and & escaped, and a final newline."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.encode() + b"\n"


def http_date(value: datetime) -> str:
    return format_datetime(value, usegmt=True)


def accepts_json(headers: Headers) -> bool:
    """Kratos' `AcceptsJSON`: negotiate between text/html (default) and application/json."""
    accept = headers.get("accept", "")
    if not accept:
        return False
    best, best_q, best_wild = "text/html", -1.0, 3
    for offer in ("text/html", "application/json"):
        otype, osub = offer.split("/")
        for spec in accept.split(","):
            mime, *params = (p.strip() for p in spec.split(";"))
            q = 1.0
            for param in params:
                key, _, val = param.partition("=")
                if key.strip() == "q":
                    try:
                        q = float(val)
                    except ValueError:
                        q = 0.0
            stype, _, ssub = mime.partition("/")
            if mime == "*/*":
                wild = 2
            elif stype == otype and ssub == "*":
                wild = 1
            elif stype == otype and ssub == osub:
                wild = 0
            else:
                continue
            if q > best_q or (q == best_q and wild < best_wild):
                best, best_q, best_wild = offer, q, wild
    return best == "application/json" and best_q > 0


def is_json_request(headers: Headers) -> bool:
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    return accepts_json(headers) or ctype == "application/json"


Handler = Callable[[Request], Awaitable[Response]]


class KratosFake:
    """The fake Kratos. Call it as the public ASGI app; `admin_app` is the admin port."""

    def __init__(
        self,
        public_url: str = "http://127.0.0.1:4433",
        admin_url: str | None = "http://127.0.0.1:4434",
        *,
        api_key: str | None = None,
        required_aal: RequiredAAL = "highest_available",
        pagination_defect: bool = True,
        faster_session_extend: bool = False,
        session_lifespan: timedelta = timedelta(hours=24),
        earliest_possible_extend: timedelta | None = None,
        cacheable_sessions: bool = False,
        cacheable_sessions_max_age: timedelta = timedelta(minutes=1),
        cookie_name: str = "ory_kratos_session",
        cookie_domain: str = "",
        cookie_secure: bool = True,
        allowed_return_urls: list[str] | None = None,
        default_browser_return_to: str | None = None,
        error_ui_url: str | None = None,
        tokenize_templates: dict[str, TokenizeTemplate] | None = None,
        now: datetime | None = None,
    ) -> None:
        self.public_url = public_url.rstrip("/")
        self.api_key = api_key
        # One-port (Ory Network) when an API key guards /admin; otherwise two ports.
        self.admin_url = self.public_url if api_key else (admin_url or self.public_url).rstrip("/")
        self.required_aal = required_aal
        self.pagination_defect = pagination_defect
        self.faster_session_extend = faster_session_extend
        self.session_lifespan = session_lifespan
        self.earliest_possible_extend = earliest_possible_extend or session_lifespan
        self.cacheable_sessions = cacheable_sessions
        self.cacheable_sessions_max_age = cacheable_sessions_max_age
        self.cookie_name = cookie_name
        self.cookie_domain = cookie_domain
        self.cookie_secure = cookie_secure
        self.allowed_return_urls = [self.public_url, *(allowed_return_urls or [])]
        self.default_browser_return_to = default_browser_return_to or self.public_url + "/"
        self.error_ui_url = error_ui_url or self.public_url + "/error"
        self.csrf_cookie_name = "csrf_token_" + hashlib.sha256(self.public_url.encode()).hexdigest()
        self.clock = Clock()
        if now is not None:  # a fixed start: the clock stands still until advanced
            self.clock.set(now, frozen=True)
        self.store = Store(self.clock, self.public_url)
        self.cookies = CookieCodec()
        self.tokenizer = Tokenizer(
            self.public_url,
            tokenize_templates if tokenize_templates is not None else {"jwt": TokenizeTemplate()},
        )
        #: Every request the fake answered, as (method, path); tests count whoami calls with it.
        self.requests: list[tuple[str, str]] = []
        #: ...and their headers, as (method, path, {lower-case name: last value}): what a
        #: client sent along (X-Request-Id, traceparent).
        self.received: list[tuple[str, str, dict[str, str]]] = []
        self._passwords: dict[str, bytes] = {}
        admin_routes = self._admin_routes()
        public_routes = self._public_routes() + login_routes(self)
        self._public = GoMux(public_routes + (admin_routes if api_key else []))
        self._admin = GoMux(admin_routes)
        self._admin_port = _AdminPort(self)

    # -- helper API for tests and users -----------------------------------------------------
    def create_identity(
        self,
        traits: dict[str, Any] | None = None,
        *,
        email: str | None = None,
        state: IdentityState = "active",
        available_aal: AAL = "aal1",
        external_id: str = "",
        metadata_public: Any = None,
        identity_id: str | None = None,
    ) -> str:
        """Add an identity; returns its id. `available_aal="aal2"` means it has a 2nd factor;
        `identity_id` fixes the id (any form gofrs/uuid reads; stored canonical)."""
        traits = dict(traits or {})
        if email is not None:
            traits.setdefault("email", email)
        return self.store.add_identity(
            traits,
            state=state,
            available_aal=available_aal,
            external_id=external_id,
            metadata_public=metadata_public,
            identity_id=parse_uuid(identity_id) if identity_id is not None else None,
        ).id

    def set_password(self, identity_id: str, password: str) -> None:
        """Enable the fake's login page for this identity (see `login_ui.py`)."""
        self._passwords[identity_id] = hashlib.sha256(password.encode()).digest()

    def check_password(self, email: str, password: str) -> str | None:
        """The identity id when `email`'s password matches and the identity is active."""
        digest = hashlib.sha256(password.encode()).digest()
        for ident in self.store.identities.values():
            stored = self._passwords.get(ident.id)
            if ident.email == email and stored and secrets.compare_digest(stored, digest):
                return ident.id if ident.state == "active" else None
        return None

    def return_to_allowed(self, return_to: str) -> str | None:
        """`return_to` resolved, if `selfservice.allowed_return_urls` admits it."""
        return self._return_to_allowed(return_to)

    def create_session(
        self,
        identity_id: str,
        *,
        aal: AAL = "aal1",
        expires_in: timedelta | None = None,
        devices: list[dict[str, str | None]] | None = None,
        session_id: str | None = None,
        token: str | None = None,
        logout_token: str | None = None,
        cookie: str | None = None,
        active: bool = True,
        expires_at: datetime | None = None,
    ) -> CreatedSession:
        """Log the identity in: returns the session id, token, cookie value and logout token.

        Everything random can be fixed: `session_id`, `token`, `logout_token`, `cookie` (the
        cookie value the fake will accept for this session). `active=False` makes a revoked
        session; `expires_in` ≤ 0 (or an `expires_at` in the past) an expired one."""
        if expires_in is not None and expires_at is not None:
            raise ValueError("give expires_in or expires_at, not both")
        for name, value in (("token", token), ("logout_token", logout_token)):
            if value is not None and not _TOKEN_TEXT.match(value):
                raise ValueError(f"{name} must be visible ASCII without spaces")
        if cookie is not None and (not _COOKIE_VALUE.match(cookie) or cookie in self.cookies.fixed):
            raise ValueError("cookie must be a new RFC 6265 cookie value")
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        device_list = [
            Device(
                str(uuid.uuid4()),
                d.get("ip_address", "127.0.0.1"),
                d.get("user_agent", "sessiongate-testing"),
                d.get("location") or "",
            )
            for d in (devices if devices is not None else [{}])
        ]
        sess = self.store.add_session(
            identity_id,
            aal=aal,
            lifespan=expires_in if expires_in is not None else self.session_lifespan,
            devices=device_list,
            session_id=parse_uuid(session_id) if session_id is not None else None,
            token=token,
            logout_token=logout_token,
            active=active,
            expires_at=expires_at,
        )
        if cookie is not None:
            self.cookies.fixed[cookie] = (sess.token, sess.expires_at)
        return CreatedSession(
            id=sess.id,
            identity_id=identity_id,
            token=sess.token,
            cookie=cookie or self.cookies.encode(sess.token, sess.expires_at),
            logout_token=sess.logout_token,
        )

    def login(self, email: str, **session_kwargs: Any) -> CreatedSession:
        """A session for the identity with this email, created on first use."""
        for ident in self.store.identities.values():
            if ident.email == email:
                return self.create_session(ident.id, **session_kwargs)
        return self.create_session(self.create_identity(email=email), **session_kwargs)

    def revoke_session(self, session_id: str) -> None:
        with self.store.lock:
            self.store.sessions[session_id].active = False

    def expire_session(self, session_id: str) -> None:
        with self.store.lock:
            self.store.sessions[session_id].expires_at = self.clock.now()

    def delete_session(self, session_id: str) -> None:
        self.store.delete_session(session_id)

    def set_identity_state(self, identity_id: str, state: IdentityState) -> None:
        self.store.set_identity_state(identity_id, state)

    def advance_clock(self, seconds: float | timedelta) -> None:
        """Move the fake's time forward (sessions expire, extend windows open)."""
        self.clock.advance(seconds)

    def set_clock(self, when: datetime, *, frozen: bool = True) -> None:
        """Jump the fake's time to `when`; frozen (the default) keeps it there until advanced."""
        self.clock.set(when, frozen=frozen)

    def now(self) -> datetime:
        """The fake's current time."""
        return self.clock.now()

    def load_seed(self, seed: Any) -> list[tuple[str, CreatedSession]]:
        """Apply a seed: a YAML file path, a dict in the seed format, or a `Seed`."""
        from sessiongate.testing.seed import apply_seed, as_seed  # seed.py imports this module

        return apply_seed(self, as_seed(seed))

    def session(self, session_id: str) -> Session:
        return self.store.sessions[session_id]

    def is_session_active(self, session_id: str) -> bool:
        """The fake's truth: would whoami accept this session right now?"""
        sess = self.store.sessions.get(session_id)
        return sess is not None and self.store.is_active(sess)

    def cookie_header(self, created: CreatedSession) -> str:
        return f"{self.cookie_name}={created.cookie}"

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r == (method, path))

    @property
    def jwks(self) -> dict[str, Any]:
        return self.tokenizer.jwks()

    @property
    def admin_app(self) -> ASGIApp:
        """The self-hosted admin port (4434): unauthenticated, `/admin` prefix added if absent."""
        return self._admin_port

    # -- ASGI entry points ------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._public(scope, receive, send)
            return
        await self._dispatch(self._public, scope, receive, send, public=True)

    async def admin_asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._admin(scope, receive, send)
            return
        if not scope["path"].startswith("/admin"):
            scope = dict(
                scope,
                path="/admin" + scope["path"],
                raw_path=b"/admin" + scope.get("raw_path", scope["path"].encode()),
            )
        await self._dispatch(self._admin, scope, receive, send, public=False)

    async def _dispatch(
        self, router: GoMux, scope: Scope, receive: Receive, send: Send, *, public: bool
    ) -> None:
        if scope["type"] != "http":
            return
        self.requests.append((scope["method"], scope["path"]))
        self.received.append(
            (
                scope["method"],
                scope["path"],
                {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            )
        )
        method = scope["method"]

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                # Kratos' router middleware: every GET, whatever the status (CONTRACT §2).
                if method == "GET":
                    headers.append((b"cache-control", NO_CACHE.encode()))
                if public:  # nosurf wraps the public router and varies on Cookie
                    headers.append((b"vary", b"Cookie"))
                message = dict(message, headers=headers)
            await send(message)

        await router(scope, receive, send_with_headers)

    # -- routes -----------------------------------------------------------------------------
    def _public_routes(self) -> list[Route]:
        return [
            Route("/sessions/whoami", self._wrap(self.whoami), methods=ALL_WHOAMI_METHODS),
            Route("/sessions", self._wrap(self.list_my_sessions), methods=["GET"]),
            Route("/sessions", self._wrap(self.disable_my_other_sessions), methods=["DELETE"]),
            Route("/sessions/{id}", self._wrap(self.disable_my_session), methods=["DELETE"]),
            Route(
                "/identities/{id}/sessions", self._wrap(self.redirect_to_admin), methods=["DELETE"]
            ),
            Route(
                "/self-service/logout/browser",
                self._wrap(self.create_browser_logout_flow),
                methods=["GET"],
            ),
            Route("/self-service/logout", self._wrap(self.update_logout_flow), methods=["GET"]),
            Route(
                "/self-service/logout/api",
                self._wrap(self.perform_native_logout),
                methods=["DELETE"],
            ),
            Route("/health/alive", self.health, methods=["GET"]),
            Route("/health/ready", self.health, methods=["GET"]),
        ]

    def _admin_routes(self) -> list[Route]:
        a = self._admin_only
        return [
            Route("/admin/sessions", a(self.list_sessions), methods=["GET"]),
            Route("/admin/sessions", a(self.redirect_to_public), methods=["DELETE"]),
            Route("/admin/sessions/whoami", a(self.redirect_to_public), methods=["GET"]),
            Route("/admin/sessions/{id}", a(self.get_session), methods=["GET"]),
            Route("/admin/sessions/{id}", a(self.disable_session), methods=["DELETE"]),
            Route("/admin/sessions/{id}/extend", a(self.extend_session), methods=["PATCH"]),
            Route(
                "/admin/identities/{id}/sessions", a(self.list_identity_sessions), methods=["GET"]
            ),
            Route(
                "/admin/identities/{id}/sessions",
                a(self.delete_identity_sessions),
                methods=["DELETE"],
            ),
            # selfservice/flow/logout/handler.go:65-67: the admin port sends logout to public
            Route(
                "/admin/self-service/logout/browser", a(self.redirect_to_public), methods=["GET"]
            ),
            Route("/admin/self-service/logout/api", a(self.redirect_to_public), methods=["DELETE"]),
            Route("/admin/self-service/logout", a(self.redirect_to_public), methods=["GET"]),
            Route("/admin/health/alive", self.health, methods=["GET"]),
            Route("/admin/health/ready", self.health, methods=["GET"]),
        ]

    def _wrap(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except KratosError as err:
                return self.error_response(request, err)

        return endpoint

    def _admin_only(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            if self.api_key is not None:
                presented = request.headers.get("authorization", "")
                expected = f"Bearer {self.api_key}"
                if not secrets.compare_digest(presented.encode(), expected.encode()):
                    return self.error_response(
                        request, KratosError(401, reason="The API key is missing or invalid.")
                    )
            return await handler(request)

        return self._wrap(endpoint)

    # -- response helpers -------------------------------------------------------------------
    def error_response(self, request: Request, err: KratosError) -> Response:
        body = error_bytes(
            err.code,
            id=err.id,
            reason=err.reason,
            message=err.message,
            request_id="" if err.enhanced else request.headers.get("x-request-id", ""),
            details=err.details,
            extra=err.extra,
        )
        body = body.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")
        body += b"\n"  # herodot writes with json.NewEncoder (json.go:190)
        response = Response(body, status_code=err.code)
        response.raw_headers = [
            (b"content-length", str(len(body)).encode()),
            *error_headers(err.id),
            *((k.lower().encode(), v.encode()) for k, v in err.headers),
        ]
        return response

    @staticmethod
    def json_response(
        body: Any, status: int = 200, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        data = go_json(body)
        response = Response(data, status_code=status)
        response.raw_headers = [
            (b"content-length", str(len(data)).encode()),
            (b"content-type", SUCCESS_CONTENT_TYPE.encode()),
            *((k.lower().encode(), v.encode()) for k, v in headers or []),
        ]
        return response

    @staticmethod
    def empty_response(
        status: int = 204, *, json_type: bool = False, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        response = Response(b"", status_code=status)
        raw = [(k.lower().encode(), v.encode()) for k, v in headers or []]
        if json_type:  # some 204 handlers still send a JSON content type (CONTRACT §2)
            raw.insert(0, (b"content-type", SUCCESS_CONTENT_TYPE.encode()))
        response.raw_headers = raw
        return response

    def session_cookie(self, token: str, expires_at: datetime) -> str:
        max_age = max(int((expires_at - self.clock.now()).total_seconds()), 0)
        parts = [f"{self.cookie_name}={self.cookies.encode(token, expires_at)}", "Path=/"]
        if self.cookie_domain:
            parts.append(f"Domain={self.cookie_domain}")
        parts += [f"Expires={http_date(expires_at)}", f"Max-Age={max_age}", "HttpOnly"]
        if self.cookie_secure:
            parts.append("Secure")
        parts.append("SameSite=Lax")
        return "; ".join(parts)

    def expired_session_cookie(self) -> str:
        value = self.cookies.encode("", None)  # Kratos writes a non-empty encoded value
        parts = [f"{self.cookie_name}={value}", "Path=/"]
        if self.cookie_domain:
            parts.append(f"Domain={self.cookie_domain}")
        parts += ["Expires=Thu, 01 Jan 1970 00:00:01 GMT", "Max-Age=0", "HttpOnly"]
        if self.cookie_secure:
            parts.append("Secure")
        parts.append("SameSite=Lax")
        return "; ".join(parts)

    def csrf_cookie(self) -> str:
        parts = [
            f"{self.csrf_cookie_name}={secrets.token_urlsafe(32)}",
            "Path=/",
            "Max-Age=31536000",
            "HttpOnly",
        ]
        if self.cookie_secure:
            parts += ["Secure", "SameSite=Lax"]
        else:  # nosurf forces Lax on a cookie that is not Secure
            parts.append("SameSite=Lax")
        return "; ".join(parts)

    # -- session lookup ---------------------------------------------------------------------
    def fetch(self, request: Request) -> tuple[Session | None, FoundToken | None]:
        """FetchFromRequest: the active session for the request's credential, if any."""
        found = find_token(request.headers, self.cookie_name, self.cookies)
        if found is None:
            return None, None
        sess = self.store.by_token(found.token)
        if sess is None or not self.store.is_active(sess):
            return None, found
        return sess, found

    def satisfies_aal(self, sess: Session) -> bool:
        order = {"aal0": 0, "aal1": 1, "aal2": 2, "aal3": 3}
        if self.required_aal == "aal1":
            return order[sess.aal] >= 1
        ident = self.store.identities[sess.identity_id]
        return order[sess.aal] >= max(order[ident.available_aal], 1)

    def aal_error(self) -> KratosError:
        url = f"{self.public_url}/self-service/login/browser?aal=aal2"
        return KratosError(
            403,
            id="session_aal2_required",
            reason=REASON_AAL,
            message=MESSAGE_AAL,
            details={"redirect_browser_to": url},
            extra={"redirect_browser_to": url},
            enhanced=True,  # session/manager.go:64-71: ErrAALNotSatisfied.EnhanceJSONError
        )

    # -- public endpoints -------------------------------------------------------------------
    async def whoami(self, request: Request) -> Response:
        """§4.1 GET /sessions/whoami (toSession)."""
        sess, found = self.fetch(request)
        if sess is None:
            headers = []
            if self.cacheable_sessions and found is None:
                headers.append(("Ory-Session-Cache-For", "60"))
            raise KratosError(401, reason=REASON_NO_SESSION_WHOAMI, headers=headers)
        if not self.satisfies_aal(sess):
            raise self.aal_error()
        tokenized = None
        # handler.go:245-246: `Query().Get("tokenize_as")` and `!= ""`: empty means not asked
        template = go_get(request.query_params, "tokenize_as") or None
        if template is not None:
            if template not in self.tokenizer.templates:
                raise KratosError(400, reason=f'Unable to find tokenizer template "{template}".')
            ident = self.store.identities[sess.identity_id]
            tokenized = self.tokenizer.tokenize(
                template,
                now=self.clock.now(),
                session_id=sess.id,
                identity_id=ident.id,
                external_id=ident.external_id,
            )
        headers = [("X-Kratos-Authenticated-Identity-Id", sess.identity_id)]
        if self.cacheable_sessions and template is None:
            remaining = (sess.expires_at - self.clock.now()).total_seconds()
            cache_for = min(remaining, self.cacheable_sessions_max_age.total_seconds())
            headers.append(("Ory-Session-Cache-For", str(max(int(cache_for), 0))))
        # RefreshCookie (session/manager_http.go:113-136, called at handler.go:266) looks at any
        # session cookie present, whichever credential won: undecodable → 500 (the headers set
        # so far stay); older than the session → re-issued for the session that was found.
        raw_cookie = first_cookie(request.headers, self.cookie_name)
        if raw_cookie is not None:
            decoded = self.cookies.decode(raw_cookie)
            if decoded is None:
                raise KratosError(500, message=MESSAGE_COOKIE_INVALID, headers=headers)
            if decoded[1] is None or decoded[1] < sess.expires_at:
                headers.append(("Set-Cookie", self.session_cookie(sess.token, sess.expires_at)))
        body = self.store.session_json(sess, identity="full", devices="list", tokenized=tokenized)
        return self.json_response(body, headers=headers)

    async def list_my_sessions(self, request: Request) -> Response:
        """§4.2 GET /sessions (listMySessions): my *other* active sessions."""
        sess, _ = self.fetch(request)
        if sess is None:
            raise KratosError(401, reason=REASON_NO_SESSION_COOKIE)
        if not self.satisfies_aal(sess):
            raise self.aal_error()
        rows = [
            s
            for s in self.store.sessions_of(sess.identity_id)
            if s.id != sess.id and s.active and self.store.unexpired(s)
        ]
        return self._migration_page(request, rows)

    def _migration_page(self, request: Request, rows: list[Session]) -> Response:
        page = MigrationPage.parse(request.query_params)
        items = rows[page.slice(len(rows), kratos_defect=self.pagination_defect)]
        body = [self.store.session_json(s, identity="row", devices="list") for s in items]
        headers = [
            ("X-Total-Count", str(len(rows))),
            ("Link", page.link_header(request.url.path, request.query_params, len(rows))),
        ]
        return self.json_response(body, headers=headers)

    async def disable_my_session(self, request: Request) -> Response:
        """§4.3 DELETE /sessions/{id} (disableMySession): revoke one of my sessions."""
        raw_id = request.path_params["id"]
        if raw_id == "whoami":
            return await self.whoami(request)
        sess, _ = self.fetch(request)
        if sess is None:
            raise KratosError(401, reason=REASON_NO_SESSION_COOKIE)
        target = self._uuid(raw_id)
        if target == sess.id:
            raise KratosError(400, message="cannot revoke current session")
        with self.store.lock:
            other = self.store.sessions.get(target)
            if other is not None and other.identity_id == sess.identity_id:
                other.active = False
        return self.empty_response(204, json_type=True)

    async def disable_my_other_sessions(self, request: Request) -> Response:
        """§4.4 DELETE /sessions: revoke all my other sessions; count rows in any state."""
        sess, _ = self.fetch(request)
        if sess is None:
            raise KratosError(401, reason=REASON_NO_SESSION_COOKIE)
        count = 0
        with self.store.lock:
            for other in self.store.sessions_of(sess.identity_id):
                if other.id != sess.id:
                    other.active = False
                    count += 1
        return self.json_response({"count": count})

    async def redirect_to_admin(self, request: Request) -> Response:
        return self._redirect_307(self.admin_url + "/admin" + request.url.path, request)

    async def redirect_to_public(self, request: Request) -> Response:
        path = request.url.path.removeprefix("/admin")
        return self._redirect_307(self.public_url + path, request)

    @staticmethod
    def _redirect_307(location: str, request: Request) -> Response:
        if request.url.query:
            location += "?" + request.url.query
        return KratosFake.go_redirect(request, location, 307)

    @staticmethod
    def go_redirect(
        request: Request, location: str, status: int, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        """Go's `http.Redirect` (x/redir/port_redirect.go:25,39, logout/handler.go:376)."""
        body, redirect_headers = go_redirect(location, status, request.method)
        response = Response(body, status_code=status)
        response.raw_headers = [
            (k.lower().encode(), v.encode()) for k, v in [*redirect_headers, *(headers or [])]
        ]
        if body:
            response.raw_headers.append((b"content-length", str(len(body)).encode()))
        return response

    async def health(self, request: Request) -> Response:
        """Kratos' liveness and readiness probes, on both ports."""
        return self.json_response({"status": "ok"})

    # -- logout -----------------------------------------------------------------------------
    def _flow_error(self, request: Request, err: KratosError) -> Response:
        """errorx.Forward: JSON requests get the error, browsers a 303 to the error UI."""
        if is_json_request(request.headers):
            return self.error_response(request, err)
        location = f"{self.error_ui_url}?{urlencode({'id': str(uuid.uuid4())})}"
        return self.go_redirect(request, location, 303)  # selfservice/errorx/manager.go:81

    def _return_to_allowed(self, return_to: str) -> str | None:
        target = urlsplit(urljoin(self.public_url + "/", return_to))
        if target.scheme not in ("http", "https"):
            return None
        for allowed in self.allowed_return_urls:
            base = urlsplit(allowed)
            if (target.scheme, target.netloc) == (base.scheme, base.netloc) and (
                target.path.startswith(base.path.rstrip("/"))
            ):
                return target.geturl()
        return None

    def _csrf_middleware_cookie(self, request: Request) -> list[tuple[str, str]]:
        """nosurf sets its cookie on a safe request that does not carry one yet."""
        if self.csrf_cookie_name in request.cookies:
            return []
        return [("Set-Cookie", self.csrf_cookie())]

    async def create_browser_logout_flow(self, request: Request) -> Response:
        """§4.11 GET /self-service/logout/browser (createBrowserLogoutFlow)."""
        csrf = self._csrf_middleware_cookie(request)
        sess, _ = self.fetch(request)
        if sess is None:
            return self._with_headers(
                self._flow_error(
                    request,
                    KratosError(
                        401,
                        id="session_inactive",
                        reason=REASON_SESSION_INACTIVE,
                        message=MESSAGE_SESSION_INACTIVE,
                    ),
                ),
                csrf,
            )
        params = [("token", sess.logout_token)]
        return_to = go_get(request.query_params, "return_to")
        if return_to:
            if self._return_to_allowed(return_to) is None:
                return self._with_headers(
                    self._flow_error(
                        request,
                        KratosError(
                            400,
                            id="self_service_flow_return_to_forbidden",
                            reason=f'Requested return_to URL "{return_to}" is not allowed.',
                        ),
                    ),
                    csrf,
                )
            params.append(("return_to", return_to))
        body = {
            "logout_url": f"{self.public_url}/self-service/logout?{urlencode(params)}",
            "logout_token": sess.logout_token,
        }
        return self.json_response(body, headers=csrf)

    async def update_logout_flow(self, request: Request) -> Response:
        """§4.12 GET /self-service/logout?token=…: revoke, clear the cookie, 204 or 303."""
        csrf = self._csrf_middleware_cookie(request)
        token = go_get(request.query_params, "token", "")
        if not token:
            return self._with_headers(
                self._flow_error(
                    request, KratosError(400, reason="Please include a token in the URL query.")
                ),
                csrf,
            )
        sess, _ = self.fetch(request)
        if sess is None:
            return self._with_headers(
                self._flow_error(
                    request,
                    KratosError(
                        401,
                        id="session_inactive",
                        reason=REASON_SESSION_INACTIVE,
                        message=MESSAGE_SESSION_INACTIVE,
                    ),
                ),
                csrf,
            )
        if not secrets.compare_digest(token.encode(), sess.logout_token.encode()):
            return self._with_headers(
                self._flow_error(request, KratosError(403, reason=REASON_LOGOUT_TOKEN_MISMATCH)),
                csrf,
            )
        cookies = list(csrf)
        cookies.extend(self._purge(request))
        cookies.append(("Set-Cookie", self.csrf_cookie()))  # the token is regenerated
        if is_json_request(request.headers):
            return self.empty_response(204, headers=cookies)
        return_to = go_get(request.query_params, "return_to")
        location = (self._return_to_allowed(return_to) if return_to else None) or (
            self.default_browser_return_to
        )
        return self.go_redirect(request, location, 303, headers=cookies)

    def _purge(self, request: Request) -> list[tuple[str, str]]:
        """PurgeFromRequest: revoke by Bearer if present, else by cookie (and clear it)."""
        bearer = bearer_token(request.headers)
        if bearer:
            self._revoke_token(bearer)
            return []
        raw = first_cookie(request.headers, self.cookie_name)
        decoded = self.cookies.decode(raw) if raw is not None else None
        if decoded is None or not decoded[0]:
            return []  # found through X-Session-Token only: nothing revoked, still success
        self._revoke_token(decoded[0])
        return [("Set-Cookie", self.expired_session_cookie())]

    def _revoke_token(self, token: str) -> bool:
        with self.store.lock:
            sess = self.store.by_token(token)
            if sess is None:
                return False
            sess.active = False
            return True

    async def perform_native_logout(self, request: Request) -> Response:
        """§4.13 DELETE /self-service/logout/api: the body's session token is the credential."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await request.body()
        if ctype != "application/json" or not body:
            raise KratosError(
                400,
                reason="The request body must be JSON "
                "(Content-Type: application/json) and must not be empty.",
            )
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise KratosError(400, reason="Unable to decode the JSON payload.") from exc
        if not isinstance(payload, dict) or not isinstance(payload.get("session_token"), str):
            raise KratosError(
                400, reason='The property "session_token" is required and must be a string.'
            )
        if not self._revoke_token(payload["session_token"]):
            raise KratosError(403, reason=REASON_NATIVE_LOGOUT_403)
        return self.empty_response(204)

    @staticmethod
    def _with_headers(response: Response, headers: list[tuple[str, str]]) -> Response:
        response.raw_headers.extend((k.lower().encode(), v.encode()) for k, v in headers)
        return response

    # -- admin endpoints --------------------------------------------------------------------
    @staticmethod
    def _uuid(raw: str) -> str:
        try:
            return parse_uuid(raw)
        except InvalidUUID as exc:
            raise KratosError(400, message=str(exc)) from exc

    @staticmethod
    def _active_filter(request: Request) -> bool | None:
        raw = go_get(request.query_params, "active")
        if not raw:  # Kratos: `activeRaw != ""` guards the parse; empty means absent
            return None
        if raw not in _GO_BOOLS:
            raise KratosError(400, message="could not parse parameter active")
        return _GO_BOOLS[raw]

    @staticmethod
    def _expand(request: Request) -> set[str]:
        out: set[str] = set()
        for value in request.query_params.getlist("expand"):
            if value.lower() not in ("identity", "devices"):
                raise KratosError(400, reason=f"Could not parse expand option: {value}")
            out.add(value.lower())
        return out

    def _matches_active(self, sess: Session, active: bool | None) -> bool:
        if active is None:
            return True
        is_live = sess.active and self.store.unexpired(sess)
        return is_live if active else not is_live

    async def list_sessions(self, request: Request) -> Response:
        """§4.5 GET /admin/sessions (listSessions): keyset pagination, no X-Total-Count."""
        query = request.query_params
        active = self._active_filter(request)  # parsed before pagination, as Kratos does
        # keysetpagination.Parse (oryx/pagination/keysetpagination/header.go:91-112): the first
        # non-empty page_token, then page_size (strconv.Atoi); either failing is this 400
        # (session/handler.go adminListSessions).
        bad_size = KratosError(400, message="could not parse parameter page_size")
        parts = None
        if token_text := go_first_nonempty(query, "page_token"):
            try:
                parts = KeysetToken.parse(token_text)
            except PageTokenError as err:
                raise bad_size from err
        size = 250
        if size_text := go_first_nonempty(query, "page_size"):
            parsed = go_atoi(size_text)
            if parsed is None:
                raise bad_size
            size = 250 if parsed <= 0 else min(parsed, 1000)
        expand = self._expand(request)  # before the persister looks at the token's id
        token = KeysetToken.first()
        if parts is not None:
            try:
                token = KeysetToken.from_parts(parts)
            except PageTokenError as err:
                raise KratosError(
                    400, reason="The page token is invalid, do not craft your own page tokens"
                ) from err
        rows = [
            s
            for s in self.store.all_sessions()
            if self._matches_active(s, active) and token.admits(s.created_at, s.id)
        ]
        if token.created_at is None:  # paginator.go:116-121,163: then ORDER BY id ASC alone
            rows.sort(key=lambda s: s.id)
        rows = rows[: size + 1]
        next_token = None
        if len(rows) > size:
            rows = rows[:size]
            next_token = KeysetToken(rows[-1].id, rows[-1].created_at)
        body = [
            self.store.session_json(
                s,
                identity="row_with_schema_url" if "identity" in expand else "none",
                devices="list" if "devices" in expand else "null",
            )
            for s in rows
        ]
        link = keyset_link_header(request.url.path, query, size, next_token)
        return self.json_response(body, headers=[("Link", link)])

    async def get_session(self, request: Request) -> Response:
        """§4.6 GET /admin/sessions/{id} (getSession); revoked and expired ones too."""
        if request.path_params["id"] == "whoami":
            return await self.redirect_to_public(request)
        sid = self._uuid(request.path_params["id"])
        expand = self._expand(request)
        sess = self.store.sessions.get(sid)
        if sess is None:
            raise KratosError(404, message=MESSAGE_NOT_FOUND_DB)
        body = self.store.session_json(
            sess,
            identity="full" if "identity" in expand else "none",
            devices="list" if "devices" in expand else "empty",
        )
        return self.json_response(body)

    async def disable_session(self, request: Request) -> Response:
        """§4.7 DELETE /admin/sessions/{id}: revoke whoever owns it; 404 if unknown."""
        sid = self._uuid(request.path_params["id"])
        with self.store.lock:
            sess = self.store.sessions.get(sid)
            if sess is None:
                raise KratosError(404, message=MESSAGE_NOT_FOUND_DB)
            sess.active = False
        return self.empty_response(204, json_type=True)

    async def list_identity_sessions(self, request: Request) -> Response:
        """§4.8 GET /admin/identities/{id}/sessions: includes current and inactive ones."""
        iid = self._uuid(request.path_params["id"])
        active = self._active_filter(request)
        rows = [s for s in self.store.sessions_of(iid) if self._matches_active(s, active)]
        return self._migration_page(request, rows)

    async def delete_identity_sessions(self, request: Request) -> Response:
        """§4.9 DELETE /admin/identities/{id}/sessions: hard delete; 404 when nothing went."""
        iid = self._uuid(request.path_params["id"])
        with self.store.lock:
            rows = self.store.sessions_of(iid)
            for sess in rows:
                self.store.delete_session(sess.id)
        if not rows:
            raise KratosError(404, message=MESSAGE_NOT_FOUND_DB)
        return self.empty_response(204)

    async def extend_session(self, request: Request) -> Response:
        """§4.10 PATCH /admin/sessions/{id}/extend: new expiry, `active` flag untouched."""
        sid = self._uuid(request.path_params["id"])
        with self.store.lock:
            sess = self.store.sessions.get(sid)
            if sess is None:
                raise KratosError(404, message=MESSAGE_NOT_FOUND_DB)
            now = self.clock.now()
            if sess.expires_at - self.earliest_possible_extend < now:
                sess.expires_at = now + self.session_lifespan
        if self.faster_session_extend:
            return self.empty_response(204)
        return self.json_response(self.store.session_json(sess, identity="full", devices="empty"))


class _AdminPort:
    """An object, not a bound method, so servers detect it as an ASGI3 app."""

    def __init__(self, fake: KratosFake) -> None:
        self._fake = fake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._fake.admin_asgi(scope, receive, send)
