"""`tokenize_as` for the Kratos fake: session → JWT signed with a key generated per fake.

Claims as in CONTRACT §4.1: `jti`, `iss` (public URL), `exp` (now + template TTL), `nbf`, `iat`,
`sid` (session id), `sub` (identity id, or `external_id` when the template says so), plus the
template's static claims standing in for Kratos' jsonnet mapper.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm


@dataclass(frozen=True)
class TokenizeTemplate:
    ttl: timedelta = timedelta(minutes=1)
    subject_source: str = "id"  # or "external_id"
    claims: dict[str, Any] = field(default_factory=dict)


class Tokenizer:
    def __init__(self, issuer: str, templates: dict[str, TokenizeTemplate]) -> None:
        self.issuer = issuer
        self.templates = templates
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.kid = str(uuid.uuid4())

    def jwks(self) -> dict[str, Any]:
        """The public key set, so tests can verify the tokens they receive."""
        jwk = json.loads(ECAlgorithm.to_jwk(self._key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "ES256"})
        return {"keys": [jwk]}

    def tokenize(
        self, name: str, *, now: datetime, session_id: str, identity_id: str, external_id: str
    ) -> str:
        template = self.templates[name]  # the caller checks the name first
        subject = external_id if template.subject_source == "external_id" else identity_id
        claims = dict(template.claims)
        claims.update(
            {
                "jti": str(uuid.uuid4()),
                "iss": self.issuer,
                "exp": int((now + template.ttl).timestamp()),
                "nbf": int(now.timestamp()),
                "iat": int(now.timestamp()),
                "sid": session_id,
                "sub": subject,
            }
        )
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid})
