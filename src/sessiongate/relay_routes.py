"""The relay's route table: which gate paths are Kratos' session routes, and the upstream target.

Only Kratos' exact routes belong to the relay; any other path (`/sessions-report`,
`/admin/dashboard`, `/sessions/a/b`) goes on to the gatekeeper and the app. A route's `{id}` is
parsed by Kratos' own rules (gofrs/uuid, `sessiongate.uuids`) and only its canonical form is put
into the upstream path, which is built from the route's template and never from the request's
(percent-decoded) path. The query string is decoded and re-encoded, so no `?`, `#` or `/` from
the client can change which Kratos endpoint is called.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from sessiongate.uuids import parse_uuid

_ID = "[^/]+"  # anything but `/`: a malformed id is Kratos' 400, not the app's business


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: str  # Kratos' path, `{id}` for the one parameter
    handler: str
    admin: bool = False
    whoami_id: bool = False  # Kratos gives `{id}=whoami` a meaning of its own on this route
    pattern: re.Pattern[str] = re.compile("")
    name: str = ""  # the route's label in the metrics (`sessiongate_relay_requests_total`)

    def upstream_path(self, canonical_id: str | None) -> str:
        """Kratos' path, from the template and a validated id only."""
        if canonical_id is None:
            return self.template
        return self.template.replace("{id}", canonical_id)


def _route(method: str, template: str, handler: str, name: str, **flags: bool) -> Route:
    regex = "^" + re.escape(template).replace(r"\{id\}", f"(?P<id>{_ID})") + "$"
    return Route(method, template, handler, pattern=re.compile(regex), name=name, **flags)


PUBLIC_ROUTES = [
    _route("GET", "/sessions/whoami", "whoami", "whoami"),
    _route("GET", "/sessions", "relay_public", "list_sessions"),
    _route("DELETE", "/sessions", "revoke_others", "revoke_other_sessions"),
    _route("DELETE", "/sessions/{id}", "revoke_one", "revoke_session", whoami_id=True),
    _route("GET", "/self-service/logout/browser", "logout_flow", "logout_browser_flow"),
    _route("GET", "/self-service/logout", "logout_browser", "logout"),
    _route("DELETE", "/self-service/logout/api", "logout_api", "logout_api"),
]
ADMIN_ROUTES = [
    _route("GET", "/admin/sessions", "relay_admin", "admin_list_sessions", admin=True),
    _route(
        "GET",
        "/admin/sessions/{id}",
        "relay_admin",
        "admin_get_session",
        admin=True,
        whoami_id=True,
    ),
    _route("DELETE", "/admin/sessions/{id}", "admin_disable", "admin_disable_session", admin=True),
    _route(
        "PATCH",
        "/admin/sessions/{id}/extend",
        "admin_extend",
        "admin_extend_session",
        admin=True,
    ),
    _route(
        "GET",
        "/admin/identities/{id}/sessions",
        "relay_admin",
        "admin_list_identity_sessions",
        admin=True,
    ),
    _route(
        "DELETE",
        "/admin/identities/{id}/sessions",
        "admin_delete_identity",
        "admin_delete_identity_sessions",
        admin=True,
    ),
]
#: Every route's metrics label: a fixed set (README, "Metrics").
ROUTE_NAMES = frozenset(r.name for r in PUBLIC_ROUTES + ADMIN_ROUTES)


@dataclass(frozen=True, slots=True)
class Matched:
    route: Route
    raw_id: str | None  # the decoded `{id}` as the client sent it (validated later)


class RouteTable:
    """Kratos' session routes under `prefix`; admin routes only when enabled."""

    def __init__(self, prefix: str, *, admin: bool) -> None:
        self.prefix = prefix.rstrip("/")
        self.routes = PUBLIC_ROUTES + (ADMIN_ROUTES if admin else [])
        # every request on the gate asks; most are the app's and stop at this prefix test
        self._heads = tuple({"/" + r.template.split("/", 2)[1] for r in self.routes})

    def kratos_path(self, path: str) -> str | None:
        """The Kratos path this gate path names, or None when it is no relay route."""
        if self.prefix:
            if not path.startswith(self.prefix + "/"):
                return None
            path = path[len(self.prefix) :]
        if not path.startswith(self._heads):
            return None
        for route in self.routes:
            if route.pattern.match(path):
                return path
        return None

    def find(self, method: str, path: str) -> Matched | list[str]:
        """The route for this method and Kratos path, else the methods the path allows."""
        allowed: list[str] = []
        for route in self.routes:
            match = route.pattern.match(path)
            if match is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return Matched(route, match.groupdict().get("id"))
            allowed.append(route.method)
        return allowed


def canonical_id(route: Route, raw_id: str | None) -> str | None:
    """The id to put into Kratos' URL; raises uuids.InvalidUUID for what Kratos would refuse."""
    if raw_id is None:
        return None
    if route.whoami_id and raw_id == "whoami":
        return raw_id
    return parse_uuid(raw_id)


def reencode_query(raw: bytes) -> str:
    """The query string, decoded pair by pair and encoded again: only `k=v&...`, no `#`."""
    if not raw:
        return ""
    out = []
    for piece in raw.split(b"&"):
        if not piece:
            continue
        name, sep, value = piece.partition(b"=")
        name = unquote_to_bytes(name.replace(b"+", b" "))
        value = unquote_to_bytes(value.replace(b"+", b" "))
        out.append(quote(name, safe="") + ("=" + quote(value, safe="") if sep else ""))
    return "&".join(out)
