"""The sessions page (`sessions_page.*`): where a user sees their sessions and signs them out.

Owns `sessions_page.path` and its two assets below it (`sessions.css`, `sessions.js`):

* GET: behind the gate's session check (no session: the usual login redirect with `return_to`
  back here). The current session first, marked, then the identity's other active sessions,
  newest first, at most `max_sessions` in all. Kratos' list is read page by page with
  `page`/`per_page` from page 1 until a short page (its `next` link repeats the first page,
  ory/kratos#3883), and never a page more than the list needs.
* POST: the forms "Sign out this session" and "Sign out all other sessions" (after the session
  ended: 401 with a link to sign in, since `form-action` forbids redirecting a form post to
  the login page's origin). The request must
  come from this page (Origin, or `Sec-Fetch-Site: same-origin` where the page's
  `Referrer-Policy: no-referrer` makes browsers send `Origin: null`) and carry a CSRF token
  bound to the caller's session (`CsrfTokens`). Kratos' DELETE then goes through the relay's own
  handlers (`RelayHandlers.revoke_one` / `revoke_others`): the cache is evicted, and in the
  shared mode published, before the browser hears back. The answer is a 303 back to the page
  with a status from a fixed list. The current session is never signed out from the list
  (Kratos refuses too): the page offers Kratos' logout link instead.

Everything a session carries (traits, user agents, addresses, locations) is attacker-controlled
and escaped. Pages are `no-store`, cannot be framed, send no Referer and run no inline script.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from starlette.types import Receive, Scope, Send
from ua_parser import parse as parse_user_agent

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
from sessiongate.uuids import InvalidUUID, parse_uuid

__all__ = ["PAGE_SIZE", "CsrfTokens", "SessionsPage", "describe_device"]

log = logging.getLogger("sessiongate.sessions_page")

PAGE_SIZE = 50  # sessions per Kratos list call (Kratos' default is 250, its maximum 1000)
TOKEN_MAX_AGE = 4 * 3600  # seconds a rendered page's forms stay valid
MAX_FORM = 4096  # bytes of a form post
_ROUTES: dict[str, Route] = {r.name: r for r in PUBLIC_ROUTES}
_JSON = [(b"accept", b"application/json")]
RawHeaders = list[tuple[bytes, bytes]]

# What a redirect back to the page may report: fixed texts, never text from the request.
STATUS_TEXT = {
    "revoked": "The session was signed out. That device must sign in again.",
    "revoked_others": "All other sessions were signed out. Only this device is still signed in.",
    "current": (
        "That is the session you are using now: it cannot be signed out from this list. "
        "To end it, sign out."
    ),
    "expired": "This page was open too long, so nothing was changed. Please try again.",
    "failed": "Nothing was changed: the session service refused the request. Please try again.",
    "unavailable": "Nothing was changed: the session service is unreachable. Try again later.",
    "invalid": "Nothing was changed: the request did not name a session.",
}
_ERROR_STATUSES = frozenset({"expired", "failed", "unavailable", "invalid"})

_METHODS = {
    "password": "Password",
    "oidc": "Social sign-in",
    "totp": "Authenticator app",
    "lookup_secret": "Recovery code",
    "webauthn": "Security key",
    "code": "One-time code",
    "passkey": "Passkey",
    "profile": "Profile",
    "saml": "SAML single sign-on",
    "link_recovery": "Recovery link",
    "code_recovery": "Recovery code",
}
_AAL = {"aal1": "one factor", "aal2": "two factors", "aal3": "three factors", "aal0": "none"}


# -- CSRF -----------------------------------------------------------------------------------
class CsrfTokens:
    """Per-page tokens: `ts.nonce.mac`, the MAC an HMAC-SHA256 over the session id, the time
    and the nonce. A token only works for the session it was rendered for, and for
    `max_age` seconds. The key comes from `SESSIONGATE_SECRET` (the same on every process, so
    a form may be posted to any of them) or, without it, is random to this process."""

    def __init__(self, secret: bytes | None, *, max_age: float = TOKEN_MAX_AGE) -> None:
        self.per_process = secret is None
        root = secret if secret is not None else secrets.token_bytes(SECRET_MIN_BYTES)
        # a key of its own: the shared mode keys its Redis digests with the same secret
        self._key = hmac.new(root, b"sessiongate sessions_page csrf v1", hashlib.sha256).digest()
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


# -- the device, from the user agent --------------------------------------------------------
@lru_cache(maxsize=2048)
def describe_device(user_agent: str) -> str:
    """`Chrome 131 on Linux`, `Mobile Safari 17.5 on iOS 17.5 (iPhone)`; `Unknown device`.

    ua-parser (the maintained uap-core rules) reads the string; the result is plain text that
    the caller escapes like any other (a user agent is whatever the client sent)."""
    if not user_agent:
        return "Unknown device"
    result = parse_user_agent(user_agent[:512])
    browser = os_name = device = ""
    if result.user_agent is not None and result.user_agent.family != "Other":
        ua = result.user_agent
        browser = " ".join(p for p in (ua.family, _version(ua.major, ua.minor)) if p)
    if result.os is not None and result.os.family != "Other":
        os = result.os
        os_name = " ".join(p for p in (os.family, _version(os.major, os.minor)) if p)
    if result.device is not None and result.device.family not in ("Other", "Generic Smartphone"):
        device = result.device.family
    if not browser and not os_name:
        return f"Unknown device ({device})" if device else "Unknown device"
    text = f"{browser or 'A browser'} on {os_name}" if os_name else browser
    if device and device not in text:
        text += f" ({device})"
    return text


def _version(major: str | None, minor: str | None) -> str:
    if not major:
        return ""
    return f"{major}.{minor}" if minor and minor != "0" else major


# -- reading Kratos' list -------------------------------------------------------------------
@dataclass(slots=True)
class Listing:
    """The other sessions as read, or why they could not be."""

    sessions: list[dict[str, Any]] = field(default_factory=list)
    total: int | None = None  # Kratos' X-Total-Count: the identity's other active sessions
    more: bool = False  # more exist than were read
    status: int = 200  # Kratos' answer when it was not a list; 503: unreachable


def _instant(value: Any) -> datetime | None:
    """An RFC 3339 time from Kratos (nanoseconds trimmed to what Python keeps), in UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _newest_first(session: dict[str, Any]) -> float:
    when = _instant(session.get("authenticated_at")) or _instant(session.get("issued_at"))
    return -(when.timestamp() if when else 0.0)


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
        self.tokens = CsrfTokens(secret if secret is not None else shared_secret())
        # The shared mode: awaited after a revocation, so its evictions reach Redis before the
        # browser is sent back (set by the gate, as for the relay)
        self.published: Callable[[], Awaitable[object]] | None = None
        self.css_url = f"{self.path}/sessions.css"
        self.js_url = f"{self.path}/sessions.js"
        self.headers = _page_headers(self.stylesheet)

    def owns(self, path: str) -> bool:
        return path == self.path or path.startswith(self.path + "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        record = record_of(scope)
        if record is not None:
            record.decide("gate", "sessions_page")
        if path != self.path:
            asset = _ASSETS.get(path[len(self.path) :])
            if asset is None or method not in ("GET", "HEAD"):
                await _send_html(send, 404, _message_page("Not found", "No such page."))
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
                _message_page("Method not allowed", "Use the page's buttons."),
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
        body = _message_page(
            "Your session has ended",
            "This device is signed out, so nothing was changed.",
            f'<p><a href="{_e(login)}">Sign in again</a></p>',
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
        own = self.decider.origin(scope.get("scheme", "http"), scope["headers"])
        back = None
        if self.return_url is not None and own is not None:
            back = safe_return_to(self.return_url, own, self.decider.allowed_return_to)
        view = _View(
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
        others = sorted(seen.values(), key=_newest_first)
        listing.sessions = others[:want]
        if listing.total is not None:
            listing.more = listing.total > len(listing.sessions)
        else:
            listing.more = len(others) > want
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
                _refusal("The request did not come from this page.", self.path),
                self.headers,
            )
            return
        form = await self._read_form(receive)
        if form is None:
            await _send_html(
                send, 400, _refusal("The form could not be read.", self.path), self.headers
            )
            return
        caller = await self._caller(scope, send)
        if caller is None:
            return
        current, credential = caller
        verdict = self.tokens.check(current.session_id, form.get("csrf", ""))
        if verdict == "expired":
            await self._back(send, "expired")
            return
        if verdict != "ok":
            await _send_html(
                send,
                403,
                _refusal(
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
            await self._revoke_others(scope, send, credential)
        else:
            await self._back(send, "invalid")

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
            await self._back(send, "invalid")
            return
        if target == current.session_id:  # Kratos refuses it (400) and so does the page
            await self._back(send, "current")
            return
        call = self._call(scope, "revoke_session", credential, "", target_id=target)
        answer = await self._revoking(self.handlers.revoke_one, call)
        await self._after(scope, send, answer, "revoked")

    async def _revoke_others(self, scope: Scope, send: Send, credential: Credential | None) -> None:
        call = self._call(scope, "revoke_other_sessions", credential, "")
        answer = await self._revoking(self.handlers.revoke_others, call)
        await self._after(scope, send, answer, "revoked_others")

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

    async def _after(self, scope: Scope, send: Send, answer: Answer | None, done: str) -> None:
        if answer is None or answer.status == 503:
            await self._back(send, "unavailable")
        elif answer.ok:
            await self._back(send, done)
        elif answer.status == 401:
            await self._session_ended(scope, send)
        else:
            await self._back(send, "failed")

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
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_deadline):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > MAX_FORM:
                        return None
                    chunks.append(chunk)
                    if not message.get("more_body"):
                        break
        except TimeoutError:
            return None
        try:
            pairs = parse_qs(
                b"".join(chunks).decode("ascii"),
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

    async def _back(self, send: Send, status: str) -> None:
        await self._redirect(send, with_query(self.path, status=status))

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


# -- HTML -----------------------------------------------------------------------------------
# controls and bidirectional overrides: shown as code points, so that a user agent or a
# location cannot reorder or hide what the page says around it
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _e(value: Any) -> str:
    text = _INVISIBLE.sub(lambda m: f"[U+{ord(m.group(0)):04X}]", str(value))
    return html.escape(text, quote=True)


@dataclass(slots=True)
class _View:
    title: str
    css_url: str
    js_url: str
    stylesheet: str | None
    action: str
    current: dict[str, Any]
    listing: Listing
    max_others: int
    token: str
    logout_url: str | None
    return_url: str | None
    status: str | None

    def render(self) -> bytes:
        identity = self.current.get("identity")
        who = _identity_label(identity if isinstance(identity, dict) else {})
        parts = [
            _head(self.title, self.css_url, self.js_url, self.stylesheet),
            '<body><main class="sg-page">',
            f'<header class="sg-top"><h1>{_e(self.title)}</h1>',
            f'<p class="sg-who">Signed in as <strong>{_e(who)}</strong></p>',
        ]
        if self.return_url is not None:
            parts.append(
                f'<p class="sg-back"><a href="{_e(self.return_url)}">Back to the app</a></p>'
            )
        parts.append("</header>")
        if self.status is not None:
            kind = "sg-error" if self.status in _ERROR_STATUSES else "sg-done"
            role = "alert" if self.status in _ERROR_STATUSES else "status"
            text = _e(STATUS_TEXT[self.status])
            if self.status == "current" and self.logout_url:
                text += f' <a href="{_e(self.logout_url)}">Sign out</a>'
            parts.append(f'<p class="sg-status {kind}" role="{role}">{text}</p>')
        parts.append(
            '<section aria-labelledby="sg-current-h"><h2 id="sg-current-h">This device</h2>'
        )
        parts.append(self._card(self.current, 0, current=True))
        parts.append("</section>")
        parts.append(self._others())
        parts.append(
            '<p class="sg-note">IP addresses and locations are as reported at sign-in: the '
            "identity service records them from the signing-in request's headers, which a "
            "device can set itself. Treat them as hints, not proof.</p>"
        )
        parts.append("</main></body></html>")
        return "".join(parts).encode()

    def _others(self) -> str:
        listing = self.listing
        out = ['<section aria-labelledby="sg-others-h">']
        if listing.status != 200:
            out.append('<h2 id="sg-others-h">Other sessions</h2>')
            out.append(
                '<p class="sg-status sg-error" role="alert">Your other sessions could not be '
                "loaded: the session service did not answer. Reload the page to try again.</p>"
            )
            out.append("</section>")
            return "".join(out)
        count = listing.total if listing.total is not None else len(listing.sessions)
        out.append(
            f'<h2 id="sg-others-h">Other sessions <span class="sg-count">({count})</span></h2>'
        )
        if listing.sessions or count:
            out.append(
                f'<form class="sg-all" method="post" action="{_e(self.action)}">'
                f"{self._hidden('revoke_others')}"
                '<button type="submit" class="sg-button sg-danger">'
                "Sign out all other sessions</button></form>"
            )
        if not listing.sessions:
            out.append(
                '<p class="sg-empty">No other active sessions: this device is the only one '
                "signed in.</p>"
                if not count
                else ""
            )
        else:
            out.append('<ul class="sg-list">')
            for index, session in enumerate(listing.sessions, start=1):
                out.append(f"<li>{self._card(session, index, current=False)}</li>")
            out.append("</ul>")
        if listing.more:
            hidden = (
                f"{count - len(listing.sessions)} more"
                if listing.total is not None
                else "More sessions"
            )
            out.append(
                f'<p class="sg-more">{_e(hidden)} not shown (this page lists at most '
                f"{self.max_others + 1} sessions). "
                "“Sign out all other sessions” signs them out too.</p>"
            )
        out.append("</section>")
        return "".join(out)

    def _hidden(self, action: str, session_id: str | None = None) -> str:
        fields = [("action", action), ("csrf", self.token)]
        if session_id is not None:
            fields.append(("session", session_id))
        return "".join(f'<input type="hidden" name="{n}" value="{_e(v)}">' for n, v in fields)

    def _card(self, session: dict[str, Any], index: int, *, current: bool) -> str:
        device = _first_device(session)
        agent = device.get("user_agent")
        agent = agent if isinstance(agent, str) else ""
        name = describe_device(agent)
        heading = f"sg-s{index}"
        css = "sg-card sg-current" if current else "sg-card"
        out = [f'<article class="{css}" aria-labelledby="{heading}">']
        out.append(f'<h3 id="{heading}">{_e(name)}')
        if current:
            out.append(' <span class="sg-badge">This device</span>')
        out.append("</h3><dl>")
        when = _instant(session.get("authenticated_at")) or _instant(session.get("issued_at"))
        if when is not None:
            iso = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            out.append(f'<dt>Signed in</dt><dd><time datetime="{iso}" data-local>{iso}</time></dd>')
        ip = device.get("ip_address")
        location = device.get("location")
        out.append(
            "<dt>IP address <small>(as reported at sign-in)</small></dt>"
            f"<dd>{_e(ip) if isinstance(ip, str) and ip else 'Unknown'}</dd>"
            "<dt>Location <small>(as reported at sign-in)</small></dt>"
            f"<dd>{_e(location) if isinstance(location, str) and location else 'Unknown'}</dd>"
        )
        out.append(f"<dt>Sign-in methods</dt><dd>{_e(_methods(session))}</dd>")
        aal = session.get("authenticator_assurance_level")
        aal = aal if isinstance(aal, str) else ""
        level = f"{aal.upper()} ({_AAL[aal]})" if aal in _AAL else (aal or "Unknown")
        out.append(f"<dt>Assurance level</dt><dd>{_e(level)}</dd>")
        if agent:
            out.append(
                f'<dt>Browser details</dt><dd><code class="sg-agent">{_e(agent[:512])}</code></dd>'
            )
        out.append("</dl>")
        if current:
            if self.logout_url:
                out.append(
                    '<p class="sg-here">You are using this session now. To end it, '
                    f'<a class="sg-button" href="{_e(self.logout_url)}">Sign out</a></p>'
                )
            else:
                out.append('<p class="sg-here">You are using this session now.</p>')
        else:
            sid = session.get("id")
            out.append(
                f'<form method="post" action="{_e(self.action)}">'
                f"{self._hidden('revoke', str(sid))}"
                f'<button type="submit" class="sg-button" aria-describedby="{heading}">'
                "Sign out this session</button></form>"
            )
        out.append("</article>")
        return "".join(out)


def _first_device(session: dict[str, Any]) -> dict[str, Any]:
    devices = session.get("devices")
    if isinstance(devices, list) and devices and isinstance(devices[0], dict):
        return devices[0]
    return {}


def _methods(session: dict[str, Any]) -> str:
    names = []
    methods = session.get("authentication_methods")
    for entry in methods if isinstance(methods, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("method"), str):
            continue
        method = entry["method"]
        label = _METHODS.get(method, method)
        provider = entry.get("provider")
        if isinstance(provider, str) and provider:
            label += f" ({provider})"
        if label not in names:
            names.append(label)
    return ", ".join(names) or "Unknown"


def _identity_label(identity: dict[str, Any]) -> str:
    traits = identity.get("traits")
    if isinstance(traits, dict):
        for key in ("email", "username", "phone"):
            value = traits.get(key)
            if isinstance(value, str) and value:
                return value[:200]
    return str(identity.get("id", "your account"))


def _head(title: str, css_url: str, js_url: str, stylesheet: str | None) -> str:
    app_css = f'<link rel="stylesheet" href="{_e(stylesheet)}">' if stylesheet else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title>"
        f'<link rel="stylesheet" href="{_e(css_url)}">{app_css}'
        f'<script src="{_e(js_url)}" defer></script></head>'
    )


def _message_page(title: str, text: str, link: str = "") -> bytes:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title></head><body><main><h1>{_e(title)}</h1>"
        f"<p>{_e(text)}</p>{link}</main></body></html>"
    ).encode()


def _refusal(reason: str, page: str) -> bytes:
    return _message_page(
        "Request refused",
        f"{reason} Nothing was changed.",
        f'<p><a href="{_e(page)}">Back to your sessions</a></p>',
    )


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


_CSS = b"""/* sessiongate sessions page: readable on its own; the app's stylesheet may follow */
:root{color-scheme:light dark;--fg:#1b1b1f;--muted:#55575d;--bg:#fff;--card:#f6f7f9;
--line:#d0d3d9;--accent:#0b57d0;--danger:#b3261e;--ok:#146c2e}
@media (prefers-color-scheme:dark){:root{--fg:#e6e6ea;--muted:#b4b6bd;--bg:#121316;
--card:#1c1e22;--line:#3a3d44;--accent:#8ab4f8;--danger:#f2b8b5;--ok:#6dd58c}}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
.sg-page{max-width:52rem;margin:0 auto;padding:1.5rem 1rem 3rem}
h1{font-size:1.75rem;margin:0 0 .25rem}h2{font-size:1.25rem;margin:2rem 0 .75rem}
h3{font-size:1.05rem;margin:0 0 .5rem;overflow-wrap:anywhere}
.sg-who,.sg-back{margin:.25rem 0;color:var(--muted)}
.sg-who strong{color:var(--fg);overflow-wrap:anywhere}
a{color:var(--accent)}
.sg-status{padding:.75rem 1rem;border-radius:.5rem;border:1px solid var(--line);
border-left-width:.35rem;margin:1rem 0}
.sg-done{border-left-color:var(--ok)}.sg-error{border-left-color:var(--danger)}
.sg-list{list-style:none;margin:0;padding:0;display:grid;gap:1rem}
.sg-card{background:var(--card);border:1px solid var(--line);border-radius:.75rem;
padding:1rem 1.25rem}
.sg-current{border-color:var(--accent);border-width:2px}
.sg-badge{display:inline-block;font-size:.8rem;font-weight:600;padding:.1rem .5rem;
border-radius:1rem;background:var(--accent);color:var(--bg);vertical-align:middle}
dl{display:grid;grid-template-columns:minmax(10rem,auto) 1fr;gap:.35rem 1rem;margin:0 0 1rem}
dt{color:var(--muted)}dd{margin:0;overflow-wrap:anywhere}
dt small{font-size:.8em}
.sg-agent{font-size:.8rem;word-break:break-all}
.sg-button{display:inline-block;font:inherit;font-weight:600;min-height:2.75rem;
padding:.5rem 1rem;border-radius:.5rem;border:1px solid var(--accent);background:transparent;
color:var(--accent);cursor:pointer;text-decoration:none}
.sg-button:hover{background:var(--accent);color:var(--bg)}
.sg-button:focus-visible,a:focus-visible{outline:3px solid var(--accent);outline-offset:2px}
.sg-danger{border-color:var(--danger);color:var(--danger)}
.sg-danger:hover{background:var(--danger);color:var(--bg)}
.sg-all{margin:0 0 1rem}
.sg-here{margin:0}.sg-note,.sg-more,.sg-empty{color:var(--muted);font-size:.9rem}
@media (max-width:36rem){dl{grid-template-columns:1fr;gap:0}dd{margin-bottom:.5rem}
.sg-button{width:100%;text-align:center}.sg-page{padding:1rem .75rem 2rem}}
"""

_JS = b"""// sessiongate sessions page: sign-in times in the reader's own locale and time zone.
// Without JavaScript the page shows them in ISO 8601 (UTC).
(function () {
  "use strict";
  var format;
  try {
    format = new Intl.DateTimeFormat(undefined, {dateStyle: "medium", timeStyle: "short"});
  } catch (e) {
    return;
  }
  var times = document.querySelectorAll("time[data-local]");
  for (var i = 0; i < times.length; i++) {
    var iso = times[i].getAttribute("datetime");
    var when = new Date(iso);
    if (!isNaN(when.getTime())) {
      times[i].title = iso;
      times[i].textContent = format.format(when);
    }
  }
})();
"""

_ASSETS = {
    "/sessions.css": (_CSS, b"text/css; charset=utf-8"),
    "/sessions.js": (_JS, b"text/javascript; charset=utf-8"),
}
