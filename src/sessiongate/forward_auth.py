"""Forward auth: the decision endpoint a proxy asks before each request (README, "Behind your
proxy"), for nginx `auth_request`, ingress-nginx, Traefik `forwardAuth`, Caddy `forward_auth` and
Envoy `ext_authz`.

`ForwardAuth` owns `forward_auth.path` and every path below it: every call there is answered
here, whatever its method, and never proxied. What it owns:

* who may ask: the TCP peer (never a header) must be in `forward_auth.trusted_callers`, else 403;
* which request is judged: the original request is read only from the header family that
  `forward_auth.source` names, never by falling back to another family (a proxy that passes
  the client's own headers on would otherwise let the client pick the path that is judged):
  `forwarded` = X-Forwarded-Method, -Proto, -Host and -Uri; `original` = X-Original-Method and
  X-Original-URL; `path` = the call's path after `forward_auth.path` (and its query), method,
  Host and scheme. A missing value, one sent twice with different values, one with bytes
  outside visible ASCII, an oversized one (`MAX_TARGET` for the URI), a URI that is not
  origin-form or an unknown method is 400, never a pass;
* how it is judged: the original request becomes an ASGI scope (method, scheme, one Host,
  path, raw_path, query, and the call's own credential and content-negotiation headers) and
  goes through the proxy mode's `Gatekeeper` (`quick`, then `judge`), so public paths, aal2,
  the login redirect, `return_to`, the cache, the relay's evictions and the shared mode are
  exactly proxy mode's;
* what it answers: allowed → exactly 200 with an empty body, the identity headers computed for
  the session (none on a public path), `cookie` = the call's cookies minus the Ory session
  cookies (what the app may see), and `x-envoy-auth-headers-to-remove` naming the credential
  headers and every identity header this answer does not set (so neither the Ory token nor a
  client's own identity header reaches the app); with the identity token in Authorization,
  `authorization` on every answer (the proxy sets the answer's after its removals). Denied →
  as proxy mode: 401 (403 for aal2) in Kratos' envelope, a 303 to the login page for a
  browser navigation, 503 + Retry-After when Kratos is down; with `deny_browsers: header` the
  browser gets 401 with the login URL in `X-Sessiongate-Login` instead (nginx's
  `auth_request` turns a 3xx into 500).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from urllib.parse import quote, unquote

from starlette.types import ASGIApp, Receive, Scope, Send

from sessiongate.authenticate import Denial
from sessiongate.cache import CachedSession
from sessiongate.client_address import TrustedProxies
from sessiongate.config import Settings
from sessiongate.credentials import is_bearer, without_session_cookies
from sessiongate.decide import Decider, host_origin
from sessiongate.gatekeeper import (
    NO_CREDENTIAL,
    REQUEST_ORIGIN,
    WWW_AUTHENTICATE,
    Gatekeeper,
    Pass,
)
from sessiongate.observe import RECORD, record_of
from sessiongate.responses import send_error

log = logging.getLogger("sessiongate.forward_auth")
RawHeaders = list[tuple[bytes, bytes]]

#: The longest original request target (path and query) judged: nginx's default
#: `large_client_header_buffers` (8 KiB) refuses longer request lines before they get here.
MAX_TARGET = 8192
MAX_HOST = 300  # a DNS name (253) with a port, or a bracketed IPv6 address with a port
LOGIN_HEADER = b"x-sessiongate-login"  # deny_browsers: header → where to send the browser
REMOVE_HEADER = b"x-envoy-auth-headers-to-remove"
ORIGIN_MEMO = 4096

#: The IANA HTTP Method Registry (RFC 9110 and its extensions), PRI (HTTP/2's preface) aside.
#: Methods are case-sensitive. Anything else is no request a proxy forwarded: 400.
KNOWN_METHODS = frozenset(
    {
        *("ACL", "BASELINE-CONTROL", "BIND", "CHECKIN", "CHECKOUT", "CONNECT", "COPY"),
        *("DELETE", "GET", "HEAD", "LABEL", "LINK", "LOCK", "MERGE", "MKACTIVITY"),
        *("MKCALENDAR", "MKCOL", "MKREDIRECTREF", "MKWORKSPACE", "MOVE", "OPTIONS"),
        *("ORDERPATCH", "PATCH", "POST", "PROPFIND", "PROPPATCH", "PUT", "QUERY", "REBIND"),
        *("REPORT", "SEARCH", "TRACE", "UNBIND", "UNCHECKOUT", "UNLINK", "UNLOCK", "UPDATE"),
        *("UPDATEREDIRECTREF", "VERSION-CONTROL"),
    }
)
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}  # ws: a handshake

_FAMILIES: dict[str, tuple[bytes, ...]] = {
    "forwarded": (
        b"x-forwarded-method",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-uri",
    ),
    "original": (b"x-original-method", b"x-original-url"),
    "path": (),
}
_NAMES = {
    name: name.decode().title().replace("Url", "URL") for f in _FAMILIES.values() for name in f
}
# Never carried from the call into the original request: the call's own framing and Host, and
# every family's headers (the original request has none of them)
_NOT_CARRIED = frozenset({b"host", b"content-length", b"transfer-encoding", *_NAMES})
_VISIBLE = re.compile(rb"[\x21-\x7e]+")
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://([^/?]*)(.*)", re.DOTALL)


class BadInput(ValueError):
    """The call does not describe one well-formed original request: 400."""


class ForwardAuth:
    """Answers decision calls on `forward_auth.path` (and below); passes the rest to `app`."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        gatekeeper: Gatekeeper,
        *,
        refuses_origin: Callable[[Scope], bool] | None = None,
    ) -> None:
        fa = settings.forward_auth
        assert fa.source is not None, "validated with the settings"
        self.app = app
        self.path = fa.path
        self._below = fa.path + "/"
        self._raw_prefix = fa.path.encode("ascii")  # unreserved characters only: raw == decoded
        self.source = fa.source
        self._family = _FAMILIES[fa.source]
        self.header_mode = fa.deny_browsers == "header"
        self.callers = TrustedProxies(fa.trusted_callers)  # the TCP peer, never a header
        self._origins: dict[tuple[str, bytes], str | None] = {}
        self.gatekeeper = gatekeeper
        self.cookie_matcher = gatekeeper.cookie_matcher
        self.strip_credentials = settings.upstream.strip_credentials
        # a genuine CORS preflight passes without a session when the gate does CORS, as in
        # proxy mode (browsers send preflights without credentials)
        self.preflights_pass = settings.cors.enabled
        # a WebSocket handshake from a foreign Origin authenticated by cookie: refused (CSWSH)
        self.refuses_origin = refuses_origin
        identity = gatekeeper.identity
        self._identity_names = [name for name, _ in identity.fields]
        if identity.session_header is not None:
            self._identity_names.append(identity.session_header)
        tokens = gatekeeper.tokens
        # the identity token: set on a pass, else named for removal (a client's copy never
        # reaches the app). In Authorization, `authorization` is named on every answer, a pass
        # with the token too: the client's Authorization may be the Ory session token, and a
        # proxy that does not copy the answer's Authorization would pass it on to the app.
        # The proxy sets the answer's after its removals (README, "Identity token").
        self._token_in_authorization = tokens is not None and tokens.bearer
        if tokens is not None and not tokens.bearer:
            self._identity_names.append(tokens.name)

    def matches(self, path: str) -> bool:
        return path == self.path or path.startswith(self._below)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and self.matches(scope["path"]):
            await self.decide(scope, send)
        elif kind == "websocket" and self.matches(scope["path"]):
            await send({"type": "websocket.close", "code": 1008})  # decisions are HTTP calls
        else:
            await self.app(scope, receive, send)

    async def decide(self, scope: Scope, send: Send) -> None:
        head = scope["method"] == "HEAD"  # the call's own: what its answer may carry
        record = record_of(scope)
        if not self.callers.peer_is_trusted(scope):
            if record is not None:
                record.decide("denied", "untrusted_caller")
            await send_error(
                send, 403, reason="This address may not ask for forward-auth decisions.", head=head
            )
            return
        try:
            original, websocket = self.original_request(scope)
        except BadInput as exc:
            if record is not None:
                record.decide("bad_request", "bad_forwarded")
            log.debug("forward auth: 400: %s", exc)
            await send_error(send, 400, reason=str(exc), head=head)
            return
        gatekeeper = self.gatekeeper
        if record is not None:
            # the decision is the original request's: the gatekeeper notes it there
            original[RECORD] = record
        if self.preflights_pass and Decider.is_preflight(original["method"], original["headers"]):
            if record is not None:
                record.decide("public", "preflight")
            await self._allow(send, scope["headers"], None)
            return
        if (
            websocket
            and self.refuses_origin is not None
            and self.refuses_origin({**original, "type": "websocket"})
        ):
            if record is not None:
                record.decide("denied", "foreign_origin")
            await send_error(send, 403, reason="Cross-site WebSocket handshake.", head=head)
            return
        result = gatekeeper.quick(original) or await gatekeeper.judge(original)
        if isinstance(result, Pass):
            if record is not None:
                session = result.session
                record.decide("public" if session is None else "allowed")
                record.identity_id = "" if session is None else session.identity_id
            await self._allow(send, scope["headers"], result.session, result.token)
            return
        if self.header_mode and await self._login_header(original, send, result, head):
            return
        await gatekeeper.answer_denial(original, send, result, head=head)

    # -- the original request -----------------------------------------------------------------
    def original_request(self, scope: Scope) -> tuple[Scope, bool]:
        """The original request as an ASGI scope, and whether it is a WebSocket handshake.
        Raises BadInput when the call does not describe one well-formed request."""
        family = self._family
        found: dict[bytes, bytes] = {}
        call_hosts: list[bytes] = []
        carried: RawHeaders = [(b"host", b"")]  # the original Host goes first, set below
        websocket = False
        for name, value in scope["headers"]:
            if name in family:
                seen = found.get(name)
                if seen is not None and seen != value:
                    raise BadInput(f"{_NAMES[name]} was sent twice with different values.")
                found[name] = value
            elif name not in _NOT_CARRIED:
                carried.append((name, value))
                if name == b"upgrade" and b"websocket" in value.lower():
                    websocket = True
            elif name == b"host":
                call_hosts.append(value)
        source = self.source
        if source == "forwarded":
            method = _method(_one(found, b"x-forwarded-method", 32))
            proto = _one(found, b"x-forwarded-proto", 8).decode("ascii").lower()
            scheme = _SCHEMES.get(proto)
            if scheme is None:
                raise BadInput("X-Forwarded-Proto must be http, https, ws or wss.")
            websocket = websocket or proto in ("ws", "wss")
            host = _one(found, b"x-forwarded-host", MAX_HOST)
            target = _one(found, b"x-forwarded-uri", MAX_TARGET)
            if not target.startswith(b"/"):
                raise BadInput("X-Forwarded-Uri must be origin-form: /path?query.")
        elif source == "original":
            method = _method(_one(found, b"x-original-method", 32))
            url = _one(found, b"x-original-url", MAX_TARGET + MAX_HOST + 8)
            parts = _ABSOLUTE.fullmatch(url)
            proto = parts.group(1).decode("ascii").lower() if parts else ""
            if parts is None or proto not in _SCHEMES:
                raise BadInput("X-Original-URL must be an absolute http(s) URL.")
            scheme = _SCHEMES[proto]
            websocket = websocket or proto in ("ws", "wss")
            host, target = parts.group(2), parts.group(3)
            if not target.startswith(b"/"):
                if target and not target.startswith(b"?"):
                    raise BadInput("X-Original-URL must be an absolute http(s) URL.")
                target = b"/" + target
        else:  # path: the call itself, minus the decision path
            method = _method(scope["method"].encode("latin-1"))
            scheme = scope.get("scheme", "http")
            if len(call_hosts) != 1:
                raise BadInput("The call must carry exactly one Host header.")
            host = call_hosts[0]
            raw = scope.get("raw_path") or quote(scope["path"]).encode("ascii")
            raw = raw.split(b"?", 1)[0]
            if not raw.startswith(self._raw_prefix):
                raise BadInput(f"The call's path must start with {self.path} as written.")
            target = raw[len(self._raw_prefix) :] or b"/"
            if not target.startswith(b"/"):
                raise BadInput(f"The original path must follow {self.path}/.")
            if scope.get("query_string"):
                target += b"?" + scope["query_string"]
            _check_text("The original request target", target, MAX_TARGET)
            _check_text("Host", host, MAX_HOST)
        if len(target) > MAX_TARGET:
            raise BadInput(f"The original request target is longer than {MAX_TARGET} bytes.")
        if b"#" in target:
            raise BadInput("The original request target must not carry a fragment (#).")
        origin = self._origin(scheme, host)
        if origin is None:
            raise BadInput("The original Host is not a host name or address with a port.")
        raw_path, _, query = target.partition(b"?")
        carried[0] = (b"host", host)
        original: Scope = {
            "type": "http",
            "asgi": scope.get("asgi", {"version": "3.0"}),
            "http_version": scope.get("http_version", "1.1"),
            "method": method,
            "scheme": scheme,
            # decoded as ASGI servers decode it (invalid UTF-8 as U+FFFD: never public)
            "path": unquote(raw_path.decode("ascii")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": carried,
            "client": scope.get("client"),
            "server": scope.get("server"),
        }
        if source != "path":
            # its own origin, which a proxy stated: return_to names it (when it is allowed)
            original[REQUEST_ORIGIN] = origin
        return original, websocket

    def _origin(self, scheme: str, host: bytes) -> str | None:
        """`host_origin`, remembered: a proxy sends the same few hosts over and over."""
        key = (scheme, host)
        try:
            return self._origins[key]
        except KeyError:
            pass
        origin = host_origin(scheme, host.decode("ascii"))
        if len(self._origins) >= ORIGIN_MEMO:
            self._origins.clear()
        self._origins[key] = origin
        return origin

    # -- answers ------------------------------------------------------------------------------
    async def _allow(
        self,
        send: Send,
        call_headers: RawHeaders,
        session: CachedSession | None,
        token: tuple[bytes, bytes] | None = None,
    ) -> None:
        headers: RawHeaders = [(b"content-length", b"0"), (b"cache-control", b"no-store")]
        set_names: set[bytes] = set()
        if session is not None:
            session.add_identity_headers(headers)
            set_names.update(session.header_names)
        if token is not None:
            headers.append(token)
            set_names.add(token[0])
        remove = [name for name in self._identity_names if name not in set_names]
        cookies: list[str] = []
        bearer = not_bearer = False
        for name, value in call_headers:
            if name == b"cookie":
                cookies.append(value.decode("latin-1"))
            elif name == b"authorization":
                if is_bearer(value):
                    bearer = True
                else:
                    not_bearer = True
        if self._token_in_authorization:
            remove.append(b"authorization")  # every client Authorization, whatever its scheme
        if self.strip_credentials:
            matcher = self.cookie_matcher
            kept = "; ".join(
                rest for value in cookies if (rest := without_session_cookies(value, matcher))
            )
            remove.append(b"x-session-token")
            if (bearer or not not_bearer) and not self._token_in_authorization:
                remove.append(b"authorization")
        else:
            kept = "; ".join(value for value in cookies if value)
        if kept:
            headers.append((b"cookie", kept.encode("latin-1")))
        else:
            remove.append(b"cookie")
        if remove:
            headers.append((REMOVE_HEADER, b",".join(remove)))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _login_header(self, original: Scope, send: Send, denial: Denial, head: bool) -> bool:
        """deny_browsers: header: a browser navigation gets 401 + X-Sessiongate-Login."""
        location = self.gatekeeper.browser_redirect(original, denial)
        if location is None:
            return False
        record = record_of(original)
        if record is not None:  # a login redirect the proxy makes from this 401
            record.denied(denial.kind, redirected=True, credential=denial is not NO_CREDENTIAL)
        aal = denial.kind == "aal"
        await send_error(
            send,
            401,
            reason="A session with a higher authenticator assurance level is required."
            if aal
            else denial.reason,
            error_id="session_aal2_required" if aal else "",
            headers=[WWW_AUTHENTICATE, (LOGIN_HEADER, location.encode("latin-1"))],
            head=head,
        )
        return True


def _check_text(what: str, value: bytes, limit: int) -> None:
    if len(value) > limit:
        raise BadInput(f"{what} is longer than {limit} bytes.")
    if _VISIBLE.fullmatch(value) is None:
        raise BadInput(
            f"{what} must be visible ASCII (no spaces, control characters or 8-bit bytes)."
        )


def _one(found: dict[bytes, bytes], name: bytes, limit: int) -> bytes:
    value = found.get(name)
    if value is None:
        raise BadInput(f"{_NAMES[name]} is missing: the original request is read from it.")
    _check_text(_NAMES[name], value, limit)
    return value


def _method(value: bytes) -> str:
    method = value.decode("latin-1")
    if method not in KNOWN_METHODS:
        raise BadInput("The original method is not an HTTP method.")
    return method
