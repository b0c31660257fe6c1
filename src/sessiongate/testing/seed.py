"""Seed files for the Kratos fake: identities and their sessions, validated with pydantic.

now: 2030-01-01T00:00:00Z               # optional: the fake's clock starts here, frozen
identities:
  - email: alice@example.com            # or traits: {email: ...}
    id: 6ba7b810-9dad-11d1-80b4-00c04fd430c8   # optional fixed id
    traits: {name: Alice}
    state: active                       # or inactive
    available_aal: aal1                 # aal2: has a second factor
    sessions:
      - id: 0f8fad5b-d9cb-469f-a165-70867728950e   # optional fixed id
        token: alice-laptop-token       # optional fixed session token
        logout_token: alice-logout      # optional fixed logout token
        cookie: alice-laptop-cookie     # optional fixed cookie value
        aal: aal2
        active: false                   # a revoked session
        expires_in: -60                 # seconds; <= 0: already expired (or expires_at: ...)
        devices: [{ip_address: 10.0.0.1, user_agent: curl, location: Berlin}]
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sessiongate.testing.app import KratosFake
from sessiongate.testing.store import CreatedSession

DEFAULT_SEED = Path(__file__).with_name("demo_seed.yaml")


class SeedDevice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ip_address: str | None = "127.0.0.1"
    user_agent: str | None = "sessiongate-demo"
    location: str = ""


class SeedSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    token: str | None = None
    logout_token: str | None = None
    cookie: str | None = None
    aal: Literal["aal0", "aal1", "aal2"] = "aal1"
    active: bool = True  # false: revoked
    expires_in: float | None = Field(default=None, description="seconds; <= 0 is expired")
    expires_at: datetime | None = None
    # shorthand for one device; `devices` lists any number (an empty list: none)
    ip_address: str = "127.0.0.1"
    user_agent: str = "sessiongate-demo"
    devices: list[SeedDevice] | None = None

    @model_validator(mode="after")
    def _one_expiry(self) -> SeedSession:
        if self.expires_in is not None and self.expires_at is not None:
            raise ValueError("give expires_in or expires_at, not both")
        return self


class SeedIdentity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    email: str | None = None
    traits: dict[str, Any] = Field(default_factory=dict)
    state: Literal["active", "inactive"] = "active"
    available_aal: Literal["aal1", "aal2"] = "aal1"
    external_id: str = ""
    metadata_public: Any = None
    password: str | None = None  # enables the fake's login page for this identity
    sessions: list[SeedSession] = Field(default_factory=list)


class Seed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    now: datetime | None = None
    identities: list[SeedIdentity] = Field(default_factory=list)


def load_seed(path: Path) -> Seed:
    with path.open(encoding="utf-8") as fh:
        return Seed.model_validate(yaml.safe_load(fh) or {})


def as_seed(source: Seed | Mapping[str, Any] | str | Path) -> Seed:
    """A `Seed` from itself, a dict in the seed format, or a YAML file's path."""
    if isinstance(source, Seed):
        return source
    if isinstance(source, Mapping):
        return Seed.model_validate(dict(source))
    return load_seed(Path(source))


def apply_seed(fake: KratosFake, seed: Seed) -> list[tuple[str, CreatedSession]]:
    """Create the seed's identities and sessions; returns (email or id, session) pairs."""
    if seed.now is not None:
        fake.set_clock(seed.now)
    created = []
    for entry in seed.identities:
        iid = fake.create_identity(
            entry.traits,
            email=entry.email,
            state=entry.state,
            available_aal=entry.available_aal,
            external_id=entry.external_id,
            metadata_public=entry.metadata_public,
            identity_id=entry.id,
        )
        if entry.password:
            fake.set_password(iid, entry.password)
        for spec in entry.sessions:
            devices = (
                [d.model_dump() for d in spec.devices]
                if spec.devices is not None
                else [{"ip_address": spec.ip_address, "user_agent": spec.user_agent}]
            )
            sess = fake.create_session(
                iid,
                aal=spec.aal,
                expires_in=timedelta(seconds=spec.expires_in)
                if spec.expires_in is not None
                else None,
                expires_at=spec.expires_at,
                devices=devices,
                session_id=spec.id,
                token=spec.token,
                logout_token=spec.logout_token,
                cookie=spec.cookie,
                active=spec.active,
            )
            created.append((entry.email or entry.traits.get("email") or iid, sess))
    return created
