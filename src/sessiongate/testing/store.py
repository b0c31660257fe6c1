"""The Kratos fake's in-memory state: identities, sessions, a movable clock, and their JSON.

This module owns what Kratos keeps in its database and how Kratos v26.2.0 serialises it
(CONTRACT §3): key order, the computed `active` and `authenticator_assurance_level`, Go's
timestamp format, and which parts of an identity each endpoint loads. The HTTP behaviour lives
in `app.py`; tests and users drive this store through the typed helpers on `KratosFake`.
"""

from __future__ import annotations

import base64
import secrets
import string
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

AAL = Literal["aal0", "aal1", "aal2", "aal3"]
IdentityState = Literal["active", "inactive"]

_TOKEN_ALPHABET = string.ascii_letters + string.digits


def new_token(prefix: str) -> str:
    """`ory_st_` / `ory_lo_` followed by 32 alphanumerics, as Kratos mints them (CONTRACT §1)."""
    return prefix + "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(32))


def go_time(value: datetime) -> str:
    """RFC 3339 in Go's nanosecond form: UTC `Z`, fractional trailing zeros trimmed."""
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += "." + f"{value.microsecond:06d}".rstrip("0")
    return text + "Z"


class Clock:
    """Wall-clock time plus an offset that tests move, or a frozen instant that moves only when
    told to; thread-safe enough for a fake."""

    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._frozen_at: datetime | None = None
        self._last = datetime.min.replace(tzinfo=UTC)
        self._lock = threading.Lock()

    @property
    def frozen(self) -> bool:
        return self._frozen_at is not None

    def now(self) -> datetime:
        frozen = self._frozen_at
        return frozen if frozen is not None else datetime.now(UTC) + self._offset

    def advance(self, seconds: float | timedelta) -> None:
        delta = seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
        with self._lock:
            if self._frozen_at is not None:
                self._frozen_at += delta
            else:
                self._offset += delta

    def set(self, when: datetime, *, frozen: bool = True) -> None:
        """Jump to `when` (naive means UTC); frozen: time stands still there until advanced."""
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        with self._lock:
            if frozen:
                self._frozen_at = when.astimezone(UTC)
            else:
                self._frozen_at = None
                self._offset = when - datetime.now(UTC)

    def tick(self) -> datetime:
        """A strictly increasing `now`, so `created_at` ordering is total as in a database."""
        with self._lock:
            now = self.now()
            if now <= self._last:
                now = self._last + timedelta(microseconds=1)
            self._last = now
            return now


@dataclass
class Identity:
    id: str
    traits: dict[str, Any]
    state: IdentityState = "active"
    available_aal: AAL = "aal1"  # "aal2" once the identity has a second factor
    schema_id: str = "default"
    external_id: str = ""
    metadata_public: Any = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    state_changed_at: datetime | None = None
    address_ids: dict[str, str] = field(default_factory=dict)

    @property
    def email(self) -> str | None:
        email = self.traits.get("email") if isinstance(self.traits, dict) else None
        return email if isinstance(email, str) else None


@dataclass
class Device:
    id: str
    ip_address: str | None
    user_agent: str | None
    location: str = ""


@dataclass
class AuthMethod:
    method: str
    aal: AAL
    completed_at: datetime


@dataclass
class Session:
    id: str
    token: str
    logout_token: str
    identity_id: str
    active: bool  # the stored flag; the serialised `active` is computed (see `is_active`)
    expires_at: datetime
    authenticated_at: datetime
    issued_at: datetime
    created_at: datetime
    methods: list[AuthMethod]
    devices: list[Device]

    @property
    def aal(self) -> AAL:
        """Recomputed from the methods, as `SetAuthenticatorAssuranceLevel` does."""
        levels = {m.aal for m in self.methods}
        if not self.methods:
            return "aal0"
        if "aal1" in levels and "aal2" in levels:
            return "aal2"
        return "aal1"


@dataclass(frozen=True)
class CreatedSession:
    """What a login hands out: the session id, its token, the browser cookie, the logout token."""

    id: str
    identity_id: str
    token: str
    cookie: str
    logout_token: str


def _identity_json(ident: Identity, *, full: bool, schema_url: str) -> dict[str, Any]:
    """Identity as embedded in a session (CONTRACT §3.2); `full` also loads the addresses."""
    out: dict[str, Any] = {"id": ident.id}
    if ident.external_id:
        out["external_id"] = ident.external_id
    out["schema_id"] = ident.schema_id
    out["schema_url"] = schema_url
    out["state"] = ident.state
    if ident.state_changed_at is not None:
        out["state_changed_at"] = go_time(ident.state_changed_at)
    out["traits"] = ident.traits
    if full and ident.email:
        created, updated = go_time(ident.created_at), go_time(ident.updated_at)
        out["verifiable_addresses"] = [
            {
                "id": ident.address_ids["verifiable"],
                "value": ident.email,
                "verified": False,
                "via": "email",
                "status": "pending",
                "created_at": created,
                "updated_at": updated,
            }
        ]
        out["recovery_addresses"] = [
            {
                "id": ident.address_ids["recovery"],
                "value": ident.email,
                "via": "email",
                "created_at": created,
                "updated_at": updated,
            }
        ]
    out["metadata_public"] = ident.metadata_public
    out["created_at"] = go_time(ident.created_at)
    out["updated_at"] = go_time(ident.updated_at)
    out["organization_id"] = None
    return out


IdentityLoad = Literal["none", "row", "row_with_schema_url", "full"]
DevicesLoad = Literal["null", "empty", "list"]


class Store:
    """Identities and sessions, keyed the ways Kratos looks them up. Every mutation is locked."""

    def __init__(self, clock: Clock, public_url: str) -> None:
        self.clock = clock
        self.public_url = public_url.rstrip("/")
        self.identities: dict[str, Identity] = {}
        self.sessions: dict[str, Session] = {}
        self._by_token: dict[str, str] = {}
        self.lock = threading.RLock()

    # -- identities -------------------------------------------------------------------------
    def add_identity(
        self,
        traits: dict[str, Any],
        *,
        state: IdentityState = "active",
        available_aal: AAL = "aal1",
        external_id: str = "",
        metadata_public: Any = None,
        identity_id: str | None = None,
    ) -> Identity:
        if identity_id is not None and identity_id in self.identities:
            raise ValueError(f"identity {identity_id} exists already")
        now = self.clock.tick()
        ident = Identity(
            id=identity_id or str(uuid.uuid4()),
            traits=traits,
            state=state,
            available_aal=available_aal,
            external_id=external_id,
            metadata_public=metadata_public,
            created_at=now,
            updated_at=now,
            state_changed_at=now,
            address_ids={"verifiable": str(uuid.uuid4()), "recovery": str(uuid.uuid4())},
        )
        with self.lock:
            self.identities[ident.id] = ident
        return ident

    def set_identity_state(self, identity_id: str, state: IdentityState) -> None:
        with self.lock:
            ident = self.identities[identity_id]
            ident.state = state
            ident.state_changed_at = ident.updated_at = self.clock.tick()

    # -- sessions ---------------------------------------------------------------------------
    def add_session(
        self,
        identity_id: str,
        *,
        aal: AAL = "aal1",
        lifespan: timedelta,
        devices: list[Device],
        methods: list[AuthMethod] | None = None,
        session_id: str | None = None,
        token: str | None = None,
        logout_token: str | None = None,
        active: bool = True,
        expires_at: datetime | None = None,
    ) -> Session:
        """A session row; `lifespan` may be ≤ 0 (already expired), `expires_at` overrides it."""
        now = self.clock.tick()
        if methods is None:
            methods = _methods_for(aal, now)
        sess = Session(
            id=session_id or str(uuid.uuid4()),
            token=token or new_token("ory_st_"),
            logout_token=logout_token or new_token("ory_lo_"),
            identity_id=identity_id,
            active=active,
            expires_at=expires_at if expires_at is not None else now + lifespan,
            authenticated_at=now,
            issued_at=now,
            created_at=now,
            methods=methods,
            devices=devices,
        )
        with self.lock:
            if identity_id not in self.identities:
                raise KeyError(f"no identity {identity_id}")
            if sess.id in self.sessions:
                raise ValueError(f"session {sess.id} exists already")
            if sess.token in self._by_token:
                raise ValueError("that session token is in use already")
            if any(s.logout_token == sess.logout_token for s in self.sessions.values()):
                raise ValueError("that logout token is in use already")
            self.sessions[sess.id] = sess
            self._by_token[sess.token] = sess.id
        return sess

    def by_token(self, token: str) -> Session | None:
        sid = self._by_token.get(token)
        return self.sessions.get(sid) if sid else None

    def delete_session(self, session_id: str) -> None:
        with self.lock:
            sess = self.sessions.pop(session_id, None)
            if sess is not None:
                self._by_token.pop(sess.token, None)

    def sessions_of(self, identity_id: str) -> list[Session]:
        """The identity's session rows, newest first (`created_at` desc)."""
        rows = [s for s in self.sessions.values() if s.identity_id == identity_id]
        rows.sort(key=lambda s: s.created_at, reverse=True)
        return rows

    def all_sessions(self) -> list[Session]:
        """Every row, ordered `created_at` desc then `id` asc, as the admin list reads them."""
        rows = list(self.sessions.values())
        rows.sort(key=lambda s: s.id)
        rows.sort(key=lambda s: s.created_at, reverse=True)
        return rows

    # -- state as Kratos computes it --------------------------------------------------------
    def unexpired(self, sess: Session) -> bool:
        return sess.expires_at >= self.clock.now()

    def is_active(self, sess: Session, *, identity_loaded: bool = True) -> bool:
        """Stored flag, not expired, and (if the identity was loaded) the identity is active."""
        if not (sess.active and sess.expires_at > self.clock.now()):
            return False
        if identity_loaded:
            ident = self.identities.get(sess.identity_id)
            return ident is not None and ident.state == "active"
        return True

    def session_json(
        self,
        sess: Session,
        *,
        identity: IdentityLoad,
        devices: DevicesLoad,
        tokenized: str | None = None,
    ) -> dict[str, Any]:
        """The Session body in Kratos' key order, with the identity/devices rules of §3.1."""
        ident = self.identities.get(sess.identity_id)
        out: dict[str, Any] = {
            "id": sess.id,
            "active": self.is_active(sess, identity_loaded=identity != "none"),
            "expires_at": go_time(sess.expires_at),
            "authenticated_at": go_time(sess.authenticated_at),
            "authenticator_assurance_level": sess.aal,
            "authentication_methods": [
                {"method": m.method, "aal": m.aal, "completed_at": go_time(m.completed_at)}
                for m in sess.methods
            ],
            "issued_at": go_time(sess.issued_at),
        }
        if identity == "none" or ident is None:
            out["identity"] = None
        else:
            schema_url = "" if identity == "row" else self.schema_url(ident)
            out["identity"] = _identity_json(ident, full=identity == "full", schema_url=schema_url)
        if devices == "null":
            out["devices"] = None
        elif devices == "empty":
            out["devices"] = []
        else:
            out["devices"] = [
                {
                    "id": d.id,
                    "ip_address": d.ip_address,
                    "user_agent": d.user_agent,
                    "location": d.location,
                }
                for d in sess.devices
            ]
        if tokenized:
            out["tokenized"] = tokenized
        return out

    def schema_url(self, ident: Identity) -> str:
        encoded = base64.urlsafe_b64encode(ident.schema_id.encode()).decode().rstrip("=")
        return f"{self.public_url}/schemas/{encoded}"


def _methods_for(aal: AAL, now: datetime) -> list[AuthMethod]:
    """Authentication methods that make Kratos compute the requested AAL."""
    if aal == "aal0":
        return []
    methods = [AuthMethod("password", "aal1", now)]
    if aal in ("aal2", "aal3"):
        methods.append(AuthMethod("totp", "aal2", now))
    return methods
