"""The sessions page's HTML: what the user reads, built from Kratos' session JSON.

Plain server-rendered HTML with no inline script or style (the page's CSP allows neither): the
current session first, then the others, each a card with the device (a readable browser and OS
from the user agent, by ua-parser), IP address and location "as reported at sign-in", the
sign-in time (ISO 8601 in `<time datetime>`, localised by the page's script), the methods and
the AAL. Every string from a session is attacker-controlled: `escape` HTML-escapes it and shows
control and bidirectional-override characters as code points. Status messages come from a
fixed list (`STATUS_TEXT`), never from the request. The stylesheet and script live in
`static/` beside this module.
"""

from __future__ import annotations

import html
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from importlib.resources import files
from typing import Any

__all__ = [
    "ASSETS",
    "STATUS_TEXT",
    "Listing",
    "SessionsView",
    "describe_device",
    "escape",
    "message_page",
    "newest_first",
    "refusal_page",
]

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


# -- the device, from the user agent --------------------------------------------------------
def describe_device(user_agent: str) -> str:
    """See `_describe_device`; the memo's key is bounded (a user agent is the client's)."""
    return _describe_device(user_agent[:512])


@lru_cache(maxsize=2048)
def _describe_device(user_agent: str) -> str:
    """`Chrome 131 on Linux`, `Mobile Safari 17.5 on iOS 17.5 (iPhone)`; `Unknown device`.

    ua-parser (the maintained uap-core rules) reads the string; the result is plain text that
    the caller escapes like any other (a user agent is whatever the client sent)."""
    if not user_agent:
        return "Unknown device"
    from ua_parser import parse as parse_user_agent  # here: only a page shown loads its rules

    result = parse_user_agent(user_agent[:512])
    browser = os_name = device = ""
    if result.user_agent is not None and result.user_agent.family != "Other":
        ua = result.user_agent
        browser = " ".join(p for p in (ua.family, _version(ua.major, ua.minor)) if p)
    if result.os is not None and result.os.family != "Other":
        system = result.os
        os_name = " ".join(p for p in (system.family, _version(system.major, system.minor)) if p)
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


# -- the list as read ---------------------------------------------------------------------
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


def newest_first(session: dict[str, Any]) -> float:
    when = _instant(session.get("authenticated_at")) or _instant(session.get("issued_at"))
    return -(when.timestamp() if when else 0.0)


# -- HTML -----------------------------------------------------------------------------------
# controls and bidirectional overrides: shown as code points, so that a user agent or a
# location cannot reorder or hide what the page says around it
# (Unicode's control, format and line/paragraph separator categories: bidi marks, zero-width
# characters, the byte order mark, U+2028/2029...)
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _shown(char: str) -> str:
    if unicodedata.category(char) in _INVISIBLE_CATEGORIES:
        return f"[U+{ord(char):04X}]"
    return char


def escape(value: Any) -> str:
    text = str(value)
    if not text.isprintable():  # the common case needs no walk (isprintable covers them all)
        text = "".join(map(_shown, text))
    return html.escape(text, quote=True)


@dataclass(slots=True)
class SessionsView:
    """One rendering of the page; `render()` is pure (it runs in a worker thread)."""

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
            f'<header class="sg-top"><h1>{escape(self.title)}</h1>',
            f'<p class="sg-who">Signed in as <strong>{escape(who)}</strong></p>',
        ]
        if self.return_url is not None:
            parts.append(
                f'<p class="sg-back"><a href="{escape(self.return_url)}">Back to the app</a></p>'
            )
        parts.append("</header>")
        if self.status is not None:
            kind = "sg-error" if self.status in _ERROR_STATUSES else "sg-done"
            role = "alert" if self.status in _ERROR_STATUSES else "status"
            text = escape(STATUS_TEXT[self.status])
            if self.status == "current" and self.logout_url:
                text += f' <a href="{escape(self.logout_url)}">Sign out</a>'
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
                f'<form class="sg-all" method="post" action="{escape(self.action)}">'
                f"{self._hidden('revoke_others')}"
                '<button type="submit" class="sg-button sg-danger">'
                "Sign out all other sessions</button></form>"
            )
        if not count:
            out.append(
                '<p class="sg-empty">No other active sessions: this device is the only one '
                "signed in.</p>"
            )
        if listing.sessions:
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
                f'<p class="sg-more">{escape(hidden)} not shown (this page lists at most '
                f"{self.max_others + 1} sessions). "
                "“Sign out all other sessions” signs them out too.</p>"
            )
        out.append("</section>")
        return "".join(out)

    def _hidden(self, action: str, session_id: str | None = None) -> str:
        fields = [("action", action), ("csrf", self.token)]
        if session_id is not None:
            fields.append(("session", session_id))
        return "".join(f'<input type="hidden" name="{n}" value="{escape(v)}">' for n, v in fields)

    def _card(self, session: dict[str, Any], index: int, *, current: bool) -> str:
        device = _first_device(session)
        agent = device.get("user_agent")
        agent = agent if isinstance(agent, str) else ""
        name = describe_device(agent)
        heading = f"sg-s{index}"
        css = "sg-card sg-current" if current else "sg-card"
        out = [f'<article class="{css}" aria-labelledby="{heading}">']
        out.append(f'<h3 id="{heading}">{escape(name)}')
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
            f"<dd>{escape(ip) if isinstance(ip, str) and ip else 'Unknown'}</dd>"
            "<dt>Location <small>(as reported at sign-in)</small></dt>"
            f"<dd>{escape(location) if isinstance(location, str) and location else 'Unknown'}</dd>"
        )
        out.append(f"<dt>Sign-in methods</dt><dd>{escape(_methods(session))}</dd>")
        aal = session.get("authenticator_assurance_level")
        aal = aal if isinstance(aal, str) else ""
        level = f"{aal.upper()} ({_AAL[aal]})" if aal in _AAL else (aal or "Unknown")
        out.append(f"<dt>Assurance level</dt><dd>{escape(level)}</dd>")
        if agent:
            raw = escape(agent[:512])
            out.append(f'<dt>Browser details</dt><dd><code class="sg-agent">{raw}</code></dd>')
        out.append("</dl>")
        if current:
            if self.logout_url:
                out.append(
                    '<p class="sg-here">You are using this session now. To end it, '
                    f'<a class="sg-button" href="{escape(self.logout_url)}">Sign out</a></p>'
                )
            else:
                out.append('<p class="sg-here">You are using this session now.</p>')
        else:
            sid = session.get("id")
            out.append(
                f'<form method="post" action="{escape(self.action)}">'
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
    app_css = f'<link rel="stylesheet" href="{escape(stylesheet)}">' if stylesheet else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>"
        f'<link rel="stylesheet" href="{escape(css_url)}">{app_css}'
        f'<script src="{escape(js_url)}" defer></script></head>'
    )


def message_page(title: str, text: str, link: str = "") -> bytes:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title></head><body><main><h1>{escape(title)}</h1>"
        f"<p>{escape(text)}</p>{link}</main></body></html>"
    ).encode()


def refusal_page(reason: str, page: str) -> bytes:
    return message_page(
        "Request refused",
        f"{reason} Nothing was changed.",
        f'<p><a href="{escape(page)}">Back to your sessions</a></p>',
    )


# -- assets ---------------------------------------------------------------------------------
def _asset(name: str) -> bytes:
    return files("sessiongate").joinpath("static", name).read_bytes()


#: The page's own stylesheet and script, served below its path.
ASSETS = {
    "/sessions.css": (_asset("sessions.css"), b"text/css; charset=utf-8"),
    "/sessions.js": (_asset("sessions.js"), b"text/javascript; charset=utf-8"),
}
