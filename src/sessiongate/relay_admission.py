"""Who may use the relay's admin routes: an admin key, or a session matching an identity rule.

* `Authorization: Bearer <key>` admits when it equals one of the gate's admin keys (compared in
  constant time against every key). A bearer that is no admin key is never used as a session
  token: it is not sent to Kratos at all.
* Otherwise, when `sessions_api.admin.allow_identities` rules exist, the caller's own session
  (cookie or `X-Session-Token` only) is authenticated as for any request and checked against
  them. A rule is an identity id, or `path=value` where `value` is read as JSON when it parses
  (`true`, `1`, `"1"`, `[...]` are a boolean, a number, a string, …) and as a plain string
  otherwise (`state=active`); the session's value must be equal as JSON: the same type and the
  same value (`1` matches the number 1 or 1.0, never the string "1" nor `true`).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from sessiongate.authenticate import Authenticator
from sessiongate.cache import CachedSession
from sessiongate.credentials import Credential

_MISSING = object()


def rule_value(text: str) -> Any:
    """A rule's expected value: JSON when it parses, else the text itself as a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def json_equal(actual: Any, expected: Any) -> bool:
    """Equal as JSON values: booleans are not numbers, numbers are not strings."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(actual, int | float) and isinstance(expected, int | float):
        return actual == expected
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(map(json_equal, actual, expected))
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(
            json_equal(actual[k], expected[k]) for k in actual
        )
    return type(actual) is type(expected) and actual == expected


class AdminAdmission:
    def __init__(self, keys: list[str], rules: list[str], authenticator: Authenticator) -> None:
        self.keys = [k.encode() for k in keys]
        self.authenticator = authenticator
        self.ids: list[str] = []
        self.rules: list[tuple[tuple[str, ...], Any]] = []
        for rule in rules:
            path, sep, value = rule.partition("=")
            if sep:
                self.rules.append((tuple(path.split(".")), rule_value(value)))
            else:
                self.ids.append(rule.lower())

    def is_admin_key(self, authorization: bytes) -> bool:
        if authorization[:7].lower() != b"bearer " or not self.keys:
            return False
        presented = authorization[7:]
        matched = False
        for key in self.keys:  # every key: timing says nothing about which one matched
            matched |= hmac.compare_digest(presented, key)
        return matched

    async def admit(
        self, authorization: bytes, session: Credential | None
    ) -> tuple[int, str] | None:
        """None when admitted, else (status, reason). `session`: cookie or X-Session-Token."""
        if self.is_admin_key(authorization):
            return None
        if (self.ids or self.rules) and session is not None:
            result = await self.authenticator.authenticate(session)
            if isinstance(result, CachedSession):
                if self.matches(result.session):
                    return None
                return 403, "This identity may not use the admin session API."
            if result.retry_after:  # Kratos unreachable or overloaded: we cannot tell
                return 503, result.reason or "The session service is unreachable."
        return 401, "Admin credentials are missing or invalid."

    def matches(self, session: dict[str, Any]) -> bool:
        identity_id = _lookup_present(session, ("identity", "id"))
        if isinstance(identity_id, str):
            for allowed in self.ids:
                if hmac.compare_digest(allowed, identity_id.lower()):
                    return True
        for path, expected in self.rules:
            actual = _lookup_present(session, path)
            if actual is not _MISSING and json_equal(actual, expected):
                return True
        return False


def _lookup_present(session: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = session
    for key in path:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return _MISSING
    return node
