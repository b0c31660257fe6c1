"""Stage 4b: the identity as a signed JWT for the app (README, "Identity token").

`IdentityTokens.attach(entry)` gives the token header for an admitted session. It is kept on the
`CachedSession`, so a cache hit costs one comparison, never a signature:

* `source: gate`: the gate signs the token with `identity_token.keys_file`'s signing key
  (signing_keys.py) for the first request of a cached session that passes (never for a session
  only the relay looked up), and signs a new one only once a request comes in the last tenth
  of the token's lifetime (as Oathkeeper's id_token mutator). `exp` is now + `ttl`, never past
  the session's `expires_at` (such a token is kept until its exp, then there is none: the
  session ends within the second); the claims are `iss`, `aud`,
  `iat`, `nbf`, `exp`, `jti` and the `claims` mapping's dot paths into the session (`*` takes
  every item of a list: `authentication_methods.*.method` gives `amr`).
* `source: kratos`: whoami is asked with `tokenize_as`, and the JWT Kratos puts in `tokenized`
  is forwarded as it is; the cache entry lives no longer than that token's own `exp`
  (authenticate.py), and the relay never hands the field to a client that did not ask for it
  (`without_tokenized`).

No token, no pass: `attach` returns None and the gate answers 503; the app never gets a request
without its token. The header's name is one of the gate's own: every client-sent spelling is
stripped (config.py `spoofable_headers`), and when it is `Authorization` that is every client
`Authorization`, on every path.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sessiongate.cache import CachedSession
from sessiongate.config import Settings
from sessiongate.identity_headers import lookup

if TYPE_CHECKING:
    from sessiongate.signing_keys import KeySet

log = logging.getLogger("sessiongate.identity_token")

#: A token is signed again once this fraction of its lifetime has passed (Oathkeeper's rule).
RENEW_AFTER = 0.9
Header = tuple[bytes, bytes]
#: A compact JWS: three base64url segments, no padding, nothing else (RFC 7515 section 7.1)
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def claim_value(session: Any, path: tuple[str, ...]) -> Any:
    """The value at a dot path; `*` maps the rest of the path over a list (None-free, deduped
    when the values are strings or numbers)."""
    if "*" not in path:
        return lookup(session, path)
    star = path.index("*")
    items = lookup(session, path[:star]) if star else session
    if not isinstance(items, list):
        return None
    rest = path[star + 1 :]
    values = [v for item in items if (v := claim_value(item, rest)) is not None]
    if all(isinstance(v, str | int | float) for v in values):
        values = list(dict.fromkeys(values))
    return values


def kratos_token(session: Any) -> tuple[str, float] | None:
    """The JWT Kratos put in whoami's `tokenized`, with its `exp`; None if there is none.

    Its signature is Kratos' business and the app's (whoami's answer is trusted as a whole):
    the gate only checks its form (it goes into a header) and reads `exp`, to keep the token
    no longer than it is valid. That `exp` is the template's `ttl` after whoami, which Kratos
    does not cap at the session's `expires_at` (README, "Kratos' own tokenizer")."""
    token = session.get("tokenized") if isinstance(session, dict) else None
    if not isinstance(token, str) or _COMPACT_JWS.fullmatch(token) is None:
        return None  # it goes into a header: nothing but a compact JWS (a refused template)
    import jwt  # here: only a gate with identity tokens loads the JOSE and crypto libraries

    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return None
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return None
    return token, float(exp)


def without_tokenized(body: bytes) -> bytes:
    """whoami's body minus `tokenized` (a cached answer relayed to a client that did not ask)."""
    if b'"tokenized"' not in body:
        return body
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict) or "tokenized" not in data:
        return body
    token = data.pop("tokenized")
    if isinstance(token, str):
        # Kratos writes it last and compact: cut it out, so the rest stays Kratos' own bytes
        exact = b',"tokenized":"' + token.encode() + b'"'
        if exact in body:
            return body.replace(exact, b"", 1)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


class IdentityTokens:
    """Compiled once from settings; `attach` runs per admitted request (a comparison)."""

    def __init__(
        self,
        *,
        header: str,
        source: str,
        issuer: str = "",
        audience: str = "",
        ttl: float = 60.0,
        claims: dict[str, str] | None = None,
        keys: KeySet | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = header.lower().encode("ascii")
        self.bearer = self.name == b"authorization"
        self.source = source
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl
        self.claims = [(name, tuple(path.split("."))) for name, path in (claims or {}).items()]
        self.keys = keys
        self._monotonic = monotonic
        self._wall = wall
        if source == "gate":
            assert keys is not None, "source gate signs with keys"
            self._headers = {"kid": keys.signing.kid, "typ": "JWT"}
        # the JWKS answer's body (jwks_endpoint.py), built once: the keys never change
        self.jwks_body = (
            json.dumps(keys.public_jwks(), separators=(",", ":")).encode() if keys else b""
        )
        self.minted = 0  # tokens signed by this process (tests assert: none per request)

    @classmethod
    def from_settings(cls, settings: Settings) -> IdentityTokens | None:
        token = settings.identity_token
        if not token.enabled:
            return None
        keys = None
        if token.source == "gate":
            from sessiongate.signing_keys import load_keys

            assert token.keys_file is not None, "validated with the settings"
            keys = load_keys(token.keys_file, token.signing_kid)  # KeysFileError: config
        return cls(
            header=token.header,
            source=token.source,
            issuer=settings.token_issuer,
            audience=settings.token_audience,
            ttl=settings.token_ttl,
            claims=token.claims,
            keys=keys,
        )

    # -- per request ------------------------------------------------------------------------
    def attach(self, entry: CachedSession) -> Header | None:
        """The token header for this session: the one kept on the entry while it is fresh,
        else a new one (signed, or read from Kratos' answer); None: no token (answer 503).

        Made on the first request that needs it (never for a session only the relay looked
        up), then kept: a cache hit costs this comparison."""
        if self._monotonic() < entry.token_renew:
            return entry.token  # None: no token until the entry dies (fail closed)
        try:
            session = entry.parsed if entry.parsed is not None else json.loads(entry.body)
        except ValueError:
            return None
        return self.from_session(entry, session)

    # -- per session ------------------------------------------------------------------------
    def from_session(self, entry: CachedSession, session: dict[str, Any]) -> Header | None:
        """Give `entry` its token from its session JSON (when it is first or again due).
        None, kept on the entry for good, when there is none to give: Kratos' answer carries
        no token (or an expired one), or the session ends within the current second."""
        if self.source == "kratos":
            found = kratos_token(session)
            left = found[1] - self._wall() if found is not None else 0.0
            if found is None or left <= 0:
                return self._none(entry)
            value = found[0].encode("ascii")
            renew = self._monotonic() + left  # never: the entry dies at exp (authenticate.py)
        else:
            signed = self._sign(entry, session)
            if signed is None:
                return self._none(entry)
            value, renew = signed
        header = (self.name, b"Bearer " + value if self.bearer else value)
        entry.token, entry.token_renew = header, renew
        return header

    @staticmethod
    def _none(entry: CachedSession) -> None:
        entry.token, entry.token_renew = None, math.inf
        return None

    def _sign(self, entry: CachedSession, session: dict[str, Any]) -> tuple[bytes, float] | None:
        now = self._wall()
        mono = self._monotonic()
        iat = math.floor(now)
        end = math.floor(entry.expires_at)  # exp is whole seconds, never past the session
        if end <= now:
            return None  # a token would be expired when signed: none (the entry dies soon)
        exp = min(math.floor(now + self.ttl), end)
        claims: dict[str, Any] = {}
        for name, path in self.claims:
            value = claim_value(session, path)
            if value is not None:
                claims[name] = value
        claims.update(
            {
                "iss": self.issuer,
                "aud": self.audience,
                "iat": iat,
                "nbf": iat,
                "exp": exp,
                "jti": str(uuid.uuid4()),
            }
        )
        import jwt

        assert self.keys is not None
        signing = self.keys.signing
        token = jwt.encode(claims, signing.private, algorithm=signing.alg, headers=self._headers)
        self.minted += 1
        # signed again by the first request in the last tenth of its lifetime; capped by the
        # session, a renewal could not extend it: kept until its exp, then no token (the entry
        # dies with the session a moment later)
        renew = mono + (exp - now if exp == end else max(0.0, (exp - now) * RENEW_AFTER))
        return token.encode("ascii"), renew
