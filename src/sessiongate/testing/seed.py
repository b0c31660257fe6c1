"""Seed files for the Kratos fake: identities and their sessions, validated with pydantic.

identities:
  - email: alice@example.com          # or traits: {email: ...}
    traits: {name: Alice}
    state: active                     # or inactive
    available_aal: aal1               # aal2: has a second factor
    sessions: [{aal: aal1, expires_in: 3600, user_agent: "curl"}]
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from sessiongate.testing.app import KratosFake
from sessiongate.testing.store import CreatedSession

DEFAULT_SEED = Path(__file__).with_name("demo_seed.yaml")


class SeedSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    aal: Literal["aal0", "aal1", "aal2"] = "aal1"
    expires_in: float | None = Field(default=None, gt=0, description="seconds")
    ip_address: str = "127.0.0.1"
    user_agent: str = "sessiongate-demo"


class SeedIdentity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str | None = None
    traits: dict[str, Any] = Field(default_factory=dict)
    state: Literal["active", "inactive"] = "active"
    available_aal: Literal["aal1", "aal2"] = "aal1"
    external_id: str = ""
    password: str | None = None  # enables the fake's login page for this identity
    sessions: list[SeedSession] = Field(default_factory=list)


class Seed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    identities: list[SeedIdentity] = Field(default_factory=list)


def load_seed(path: Path) -> Seed:
    with path.open(encoding="utf-8") as fh:
        return Seed.model_validate(yaml.safe_load(fh) or {})


def apply_seed(fake: KratosFake, seed: Seed) -> list[tuple[str, CreatedSession]]:
    """Create the seed's identities and sessions; returns (email or id, session) pairs."""
    created = []
    for entry in seed.identities:
        iid = fake.create_identity(
            entry.traits,
            email=entry.email,
            state=entry.state,
            available_aal=entry.available_aal,
            external_id=entry.external_id,
        )
        if entry.password:
            fake.set_password(iid, entry.password)
        for spec in entry.sessions:
            sess = fake.create_session(
                iid,
                aal=spec.aal,
                expires_in=timedelta(seconds=spec.expires_in) if spec.expires_in else None,
                devices=[{"ip_address": spec.ip_address, "user_agent": spec.user_agent}],
            )
            created.append((entry.email or entry.traits.get("email") or iid, sess))
    return created
