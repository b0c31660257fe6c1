"""The sessions page (`sessions_page.*`): where a user sees their sessions and signs them out.

Owns `sessions_page.path` and its two assets below it (`sessions.css`, `sessions.js`):

* GET: behind the gate's session check (no session: the usual login redirect with `return_to`
  back here). The current session first, marked, then the identity's other active sessions,
  newest first, at most `max_sessions` in all. Kratos' list is read page by page with
  `page`/`per_page` from page 1 until a short page (its `next` link repeats the first page,
  ory/kratos#3883), and never a page more than the list needs.
* POST: the forms "Sign out this session" and "Sign out all other sessions". The request must
  come from this page (Origin, or `Sec-Fetch-Site: same-origin` where the page's
  `Referrer-Policy: no-referrer` makes browsers send `Origin: null`) and carry a CSRF token
  bound to the caller's session (`CsrfTokens`). Kratos' DELETE then goes through the relay's own
  handlers (`RelayHandlers.revoke_one` / `revoke_others`): the cache is evicted, and in the
  shared mode published, before the browser hears back. The answer is a 303 back to the page
  with a status from a fixed list. The current session is never signed out from the list
  (Kratos refuses too): the page offers Kratos' logout link instead. A post whose session has
  ended gets 401 and a link to sign in: `form-action 'self'` would stop a redirect to the
  login page's origin.

The HTML is `sessions_view`'s. Pages are `no-store`, cannot be framed, send no Referer and run
no inline script.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from starlette.types import Receive, Scope, Send

from sessiongate.authenticate import Denial
from sessiongate.cache import CachedSession
from sessiongate.config import SECRET_MIN_BYTES, Settings, origin_of, shared_secret
from sessiongate.credentials import Credential, MalformedCredential, find_credential
from sessiongate.gatekeeper import Gatekeeper, Pass
from sessiongate.observe import record_of
from sessiongate.redirects import safe_return_to, with_query
from sessiongate.relay_handlers import RelayHandlers
from sessiongate.relay_routes import PUBLIC_ROUTES, Route
from sessiongate.relay_upstream import Answer, Call
from sessiongate.request_body import read_body
from sessiongate.sessions_view import (
    ASSETS,
    STATUS_TEXT,
    Listing,
    SessionsView,
    escape,
    message_page,
    newest_first,
    refusal_page,
)
from sessiongate.uuids import InvalidUUID, parse_uuid

__all__ = ["PAGE_SIZE", "CsrfTokens", "SessionsPage"]

log = logging.getLogger("sessiongate.sessions_page")

PAGE_SIZE = 50  # sessions per Kratos list call (Kratos' default is 250, its maximum 1000)
TOKEN_MAX_AGE = 4 * 3600  # seconds a rendered page's forms stay valid
STATUS_MAX_AGE = 120  # seconds the page shows what an action did (its redirect's proof)
MAX_FORM = 4096  # bytes of a form post
_ROUTES: dict[str, Route] = {r.name: r for r in PUBLIC_ROUTES}
_JSON = [(b"accept", b"application/json")]
RawHeaders = list[tuple[bytes, bytes]]


# -- CSRF -----------------------------------------------------------------------------------
def _proven(session_id: str, status: str) -> str:
    """What a status proof is bound to: this session and this status."""
    return f"{session_id}\x00status\x00{status}"


class CsrfTokens:
    """Per-page tokens: `ts.nonce.mac`, the MAC an HMAC-SHA256 over the session id, the time
    and the nonce. A token only works for the session it was rendered for, and for
    `max_age` seconds. The key comes from `SESSIONGATE_SECRET` (the same on every process, so
    a form may be posted to any of them) or, without it, is random to this process."""

    def __init__(
        self,
        secret: bytes | None,
        *,
        max_age: float = TOKEN_MAX_AGE,
        purpose: bytes = b"sessiongate sessions_page csrf v1",
    ) -> None:
        self.per_process = secret is None
        root = secret if secret is not None else secrets.token_bytes(SECRET_MIN_BYTES)
        # a key of its own: the shared mode keys its Redis digests with the same secret
        self._key = hmac.new(root, purpose, hashlib.sha256).digest()
        self.max_age = max_age

    def _mac(self, session_id: str, stamp: str, nonce: str) -> str:
        message = f"{session_id}\x00{stamp}\x00{nonce}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, session_id: str, *, now: float | None = None) -> str:
        stamp = str(int(time.time() if now is None else now))
        nonce = secrets.token_urlsafe(16)
        return f"{stamp}.{nonce}.{self._mac(session_id, stamp, nonce)}"

    def check(self, session_id: str, token: str, *, now: float | None = None) -> str:
        """`ok`, `expired` (a genuine token, too old) or `bad`."""
        parts = token.split(".")
        if len(parts) != 3 or len(token) > 200 or not parts[0].isdigit():
            return "bad"
        stamp, nonce, mac = parts
        if not hmac.compare_digest(mac.encode(), self._mac(session_id, stamp, nonce).encode()):
            return "bad"
        age = (time.time() if now is None else now) - int(stamp)
        return "ok" if -60 <= age <= self.max_age else "expired"


# -- the page -------------------------------------------------------------------------------
class SessionsPage:
    """The ASGI app of `sessions_page.path` (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        gatekeeper: Gatekeeper,
        handlers: RelayHandlers,
        *,
        relay_mounted: bool,
        secret: bytes | None = None,
    ) -> None:
        """`handlers`: the relay's (or, with the relay off, built alike: `RelayHandlers.
        for_gate`); `relay_mounted`: the relay answers Kratos' logout link under the gate's
        URL, else the link goes to Kratos itself. `secret`: default `SESSIONGATE_SECRET`."""
        page = settings.sessions_page
        self.path = page.path
        self.title = page.title
        self.stylesheet = page.stylesheet
        self.return_url = page.return_url
        self.max_sessions = page.max_sessions
        self.page_size = PAGE_SIZE
        self.gatekeeper = gatekeeper
        self.decider = gatekeeper.decider
        self.handlers = handlers
        self.relay_mounted = relay_mounted
        self.body_deadline = settings.ory.timeout
        key = secret if secret is not None else shared_secret()
        self.tokens = CsrfTokens(key)
        # the message after an action is shown only with the proof its redirect carried: a
        # link cannot make the page say "signed out" when nothing was
        self.proofs = CsrfTokens(
            key, max_age=STATUS_MAX_AGE, purpose=b"sessiongate sessions_page status v1"
        )
        # The shared mode: awaited after a revocation, so its evictions reach Redis before the
        # browser is sent back (set by the gate, as for the relay)
        self.published: Callable[[], Awaitable[object]] | None = None
        self.css_url = f"{self.path}/sessions.css"
        self.js_url = f"{self.path}/sessions.js"
        self.headers = _page_headers(self.stylesheet)

    def owns(self, path: str) -> bool:
        """The page's path or one below it (its stylesheet and script)."""
        return path == self.path or path.startswith(self.path + "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        record = record_of(scope)
        if record is not None:
            record.decide("gate", "sessions_page")
        if path != self.path:
            asset = ASSETS.get(path[len(self.path) :])
            if asset is None or method not in ("GET", "HEAD"):
                await _send_html(send, 404, message_page("Not found", "No such page."))
                return
            body, ctype = asset
            await _send(send, 200, body, [(b"content-type", ctype), *_ASSET_HEADERS], method)
            return
        if method in ("GET", "HEAD"):
            await self._show(scope, send)
        elif method == "POST":
            await self._act(scope, receive, send)
        else:
            await _send_html(
                send,
                405,
                message_page("Method not allowed", "Use the page's buttons."),
                [(b"allow", b"GET, HEAD, POST")],
            )

    # -- who is asking -------------------------------------------------------------------
    async def _caller(
        self, scope: Scope, send: Send
    ) -> tuple[CachedSession, Credential | None] | None:
        """The caller's session and credential, or None once the denial is answered (a
        browser: the login redirect, `return_to` this page)."""
        result = await self.gatekeeper.judge(scope)
        if isinstance(result, Pass) and result.session is not None:
            record = record_of(scope)
            if record is not None:
                record.identity_id = result.session.identity_id
            try:
                credential = find_credential(scope["headers"], self.gatekeeper.cookie_matcher)
            except MalformedCredential:  # judge parsed the same headers: cannot happen
                credential = None
            return result.session, credential
        denial = (
            result
            if isinstance(result, Denial)
            else Denial("anonymous", "No valid session credentials found in the request.")
        )
        if scope["method"] == "POST" and denial.kind == "anonymous":
            await self._session_ended(scope, send)
            return None
        await self.gatekeeper.answer_denial(scope, send, denial)
        return None

    async def _session_ended(self, scope: Scope, send: Send) -> None:
        """A form posted after its session ended: 401 and a link to sign in (then back here).

        Not a redirect: `form-action 'self'` also holds for the redirects that follow a form
        post, so browsers would refuse one to the login page on another origin."""
        login = self.gatekeeper.login_redirect(self._as_page(scope))
        body = message_page(
            "Your session has ended",
            "This device is signed out, so nothing was changed.",
            f'<p><a href="{escape(login)}">Sign in again</a></p>',
        )
        await _send_html(send, 401, body, self.headers)

    def _as_page(self, scope: Scope) -> Scope:
        return {**scope, "method": "GET", "raw_path": self.path.encode(), "query_string": b""}

    # -- GET -----------------------------------------------------------------------------
    async def _show(self, scope: Scope, send: Send) -> None:
        caller = await self._caller(scope, send)
        if caller is None:
            return
        current, credential = caller
        listing, logout_url = await asyncio.gather(
            self._others(scope, credential, current.session_id),
            self._logout_url(scope, credential),
        )
        if listing.status == 401:  # the session ended between the check and the list
            await self._redirect(send, self.gatekeeper.login_redirect(scope))
            return
        status = _query_value(scope, "status")
        proof = _query_value(scope, "proof") or ""
        if (
            status is not None
            and self.proofs.check(_proven(current.session_id, status), proof) != "ok"
        ):
            status = None
        own = self.decider.origin(scope.get("scheme", "http"), scope["headers"])
        back = None
        if self.return_url is not None and own is not None:
            back = safe_return_to(self.return_url, own, self.decider.allowed_return_to)
        view = SessionsView(
            title=self.title,
            css_url=self.css_url,
            js_url=self.js_url,
            stylesheet=self.stylesheet,
            action=self.path,
            current=current.session,
            listing=listing,
            max_others=self.max_sessions - 1,
            token=self.tokens.issue(current.session_id),
            logout_url=logout_url,
            return_url=back,
            status=status if status in STATUS_TEXT else None,
        )
        # ua-parser's rules are regular expressions: a long list is rendered off the loop
        body = await asyncio.to_thread(view.render)
        code = 200 if listing.status == 200 else 503
        await _send_html(send, code, body, self.headers, head=scope["method"] == "HEAD")

    async def _others(
        self, scope: Scope, credential: Credential | None, current_id: str
    ) -> Listing:
        """Kratos' `GET /sessions`, page 1, 2, ... until a short page or enough sessions."""
        want = self.max_sessions - 1
        size = max(1, min(want, self.page_size))
        last_page = max(1, math.ceil(want / size))
        listing = Listing()
        seen: dict[str, dict[str, Any]] = {}
        for page in range(1, last_page + 1):
            try:
                answer = await self.handlers.relay_public(
                    self._call(scope, "list_sessions", credential, f"page={page}&per_page={size}")
                )
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                log.warning("sessions page: listing sessions failed: %s", type(exc).__name__)
                return Listing(status=503)
            items = _json_list(answer)
            if items is None:
                return Listing(status=answer.status if answer.status != 200 else 502)
            total = _total_count(answer)
            if total is not None:
                listing.total = total
            for item in items:
                sid = item.get("id")
                # #3883: pages may repeat; and the current session is shown on its own
                if isinstance(sid, str) and sid not in seen and sid != current_id:
                    seen[sid] = item
            if len(items) < size or len(seen) >= want:
                break
            if listing.total is not None and len(seen) >= listing.total:
                break
        others = sorted(seen.values(), key=newest_first)
        listing.sessions = others[:want]
        if listing.total is not None:
            listing.more = listing.total > len(listing.sessions)
        else:
            # without a count, a last page read full may have had more behind it
            listing.more = len(others) > want or (len(items) == size and len(seen) >= want)
        return listing

    async def _logout_url(self, scope: Scope, credential: Credential | None) -> str | None:
        """Kratos' browser logout link for this session (through the relay when it is
        mounted, so the gate's cache forgets the session too), or None."""
        call = self._call(scope, "logout_browser_flow", credential, "")
        try:
            if self.relay_mounted:
                answer = await self.handlers.logout_flow(call)
            else:
                answer = await self.handlers.relay_public(call)
        except (httpx.TransportError, httpx.TimeoutException):
            return None
        if answer.status != 200:
            return None
        try:
            url = json.loads(answer.body).get("logout_url")
        except (ValueError, AttributeError):
            return None
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            return None
        return url

    # -- POST ----------------------------------------------------------------------------
    async def _act(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._from_this_page(scope):
            await _send_html(
                send,
                403,
                refusal_page("The request did not come from this page.", self.path),
                self.headers,
            )
            return
        form = await self._read_form(receive)
        if form is None:
            await _send_html(
                send, 400, refusal_page("The form could not be read.", self.path), self.headers
            )
            return
        caller = await self._caller(scope, send)
        if caller is None:
            return
        current, credential = caller
        verdict = self.tokens.check(current.session_id, form.get("csrf", ""))
        if verdict == "expired":
            await self._back(send, "expired", current.session_id)
            return
        if verdict != "ok":
            await _send_html(
                send,
                403,
                refusal_page(
                    "The form's security token is missing or not valid for your session.",
                    self.path,
                ),
                self.headers,
            )
            return
        action = form.get("action")
        if action == "revoke":
            await self._revoke_one(scope, send, current, credential, form.get("session", ""))
        elif action == "revoke_others":
            await self._revoke_others(scope, send, credential, current.session_id)
        else:
            await self._back(send, "invalid", current.session_id)

    async def _revoke_one(
        self,
        scope: Scope,
        send: Send,
        current: CachedSession,
        credential: Credential | None,
        raw_id: str,
    ) -> None:
        try:
            target = parse_uuid(raw_id)
        except InvalidUUID:
            await self._back(send, "invalid", current.session_id)
            return
        if target == current.session_id:  # Kratos refuses it (400) and so does the page
            await self._back(send, "current", current.session_id)
            return
        call = self._call(scope, "revoke_session", credential, "", target_id=target)
        answer = await self._revoking(self.handlers.revoke_one, call)
        await self._after(scope, send, answer, "revoked", current.session_id)

    async def _revoke_others(
        self, scope: Scope, send: Send, credential: Credential | None, session_id: str
    ) -> None:
        call = self._call(scope, "revoke_other_sessions", credential, "")
        answer = await self._revoking(self.handlers.revoke_others, call)
        await self._after(scope, send, answer, "revoked_others", session_id)

    async def _revoking(
        self, handler: Callable[[Call], Awaitable[Answer]], call: Call
    ) -> Answer | None:
        try:
            answer = await handler(call)
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            log.warning("sessions page: sign-out failed: %s", type(exc).__name__)
            return None
        if self.published is not None:
            await self.published()  # every process forgets the session before we answer
        return answer

    async def _after(
        self, scope: Scope, send: Send, answer: Answer | None, done: str, session_id: str
    ) -> None:
        if answer is None or answer.status == 503:
            await self._back(send, "unavailable", session_id)
        elif answer.ok:
            await self._back(send, done, session_id)
        elif answer.status == 401:
            await self._session_ended(scope, send)
        else:
            await self._back(send, "failed", session_id)

    def _from_this_page(self, scope: Scope) -> bool:
        """A form post from this gate's own pages.

        `Sec-Fetch-Site` (browsers set it; scripts cannot) must say `same-origin` when present.
        An `Origin` must be the gate's own; `Origin: null` is what browsers send for a page
        with `Referrer-Policy: no-referrer`, and passes only with `same-origin`. A post with
        neither is refused (this page is for browsers, and they send one or the other)."""
        headers = scope["headers"]
        origins = [v for k, v in headers if k == b"origin"]
        sites = [v for k, v in headers if k == b"sec-fetch-site"]
        if len(origins) > 1 or len(sites) > 1:
            return False
        if sites and sites[0] != b"same-origin":
            return False
        if origins and origins[0] != b"null":
            own = self.decider.origin(scope.get("scheme", "http"), headers)
            return own is not None and origins[0].decode("latin-1") == own
        return bool(sites)

    async def _read_form(self, receive: Receive) -> dict[str, str] | None:
        body = await read_body(receive, limit=MAX_FORM, deadline=self.body_deadline)
        if not isinstance(body, bytes):
            return None  # gone, too large, or too slow
        try:
            pairs = parse_qs(
                body.decode("ascii"),
                keep_blank_values=True,
                strict_parsing=False,
                max_num_fields=8,
            )
        except (UnicodeDecodeError, ValueError):
            return None
        # one value each: a repeated field is ambiguous, so it is not taken at all
        return {k: v[0] for k, v in pairs.items() if len(v) == 1}

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _call(
        scope: Scope,
        route: str,
        credential: Credential | None,
        query: str,
        *,
        target_id: str | None = None,
    ) -> Call:
        spec = _ROUTES[route]
        return Call(scope, spec, target_id, query, _JSON, b"", credential, spec.method)

    async def _back(self, send: Send, status: str, session_id: str) -> None:
        proof = self.proofs.issue(_proven(session_id, status))
        await self._redirect(send, with_query(self.path, status=status, proof=proof))

    async def _redirect(self, send: Send, location: str) -> None:
        await _send(
            send,
            303,
            b"",
            [(b"location", location.encode("latin-1")), *_REDIRECT_HEADERS],
            "POST",
        )


def _query_value(scope: Scope, name: str) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[0] if values and len(values) == 1 else None


def _json_list(answer: Answer) -> list[dict[str, Any]] | None:
    if answer.status != 200:
        return None
    try:
        data = json.loads(answer.body)
    except ValueError:
        return None
    if not isinstance(data, list):
        return None
    return [item for item in data if isinstance(item, dict)]


def _total_count(answer: Answer) -> int | None:
    for name, value in answer.headers:
        if name == "x-total-count" and value.isdigit():
            return int(value)
    return None


# -- headers and assets ---------------------------------------------------------------------
def _page_headers(stylesheet: str | None) -> RawHeaders:
    extra = ""
    if stylesheet is not None and not stylesheet.startswith("/"):
        extra = " " + origin_of(stylesheet)  # the app's CSS, its fonts and images
    policy = (
        "default-src 'none'; script-src 'self'; "
        f"style-src 'self'{extra}; img-src 'self' data:{extra}; font-src 'self'{extra}; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    return [
        (b"content-security-policy", policy.encode("latin-1")),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
    ]


_BASE_HEADERS: RawHeaders = [
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]
_REDIRECT_HEADERS: RawHeaders = [
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
]
_ASSET_HEADERS: RawHeaders = [
    (b"cache-control", b"public, max-age=300"),
    (b"x-content-type-options", b"nosniff"),
]


async def _send(send: Send, status: int, body: bytes, headers: RawHeaders, method: str) -> None:
    all_headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


async def _send_html(
    send: Send,
    status: int,
    body: bytes,
    headers: RawHeaders | None = None,
    *,
    head: bool = False,
) -> None:
    policy = headers if headers is not None else _page_headers(None)
    names = {name for name, _ in policy}
    all_headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        *[h for h in _BASE_HEADERS if h[0] not in names],
        *policy,
    ]
    await _send(send, status, body, all_headers, "HEAD" if head else "GET")
