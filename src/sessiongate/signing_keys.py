"""The identity token's signing keys: a JWKS file with private keys (README, "Identity token").

Owns reading and checking `identity_token.keys_file` (each problem a message that starts with
the key path it is about), the public key set the gate serves at `identity_token.jwks_path`
(public members only, never a private one), and the keys of `sessiongate keys generate`.

Rules: the file is a JWKS (`{"keys": [...]}`) that no other user may access and its group may
not write (at most 0640: it holds private keys; checked on the open file, then read from it);
every key has a `kid` (unique) and an `alg` among ES256 (P-256), EdDSA (Ed25519) and RS256
(RSA of 2048 bits or more), matching its key type; at least one key is private, and the signing
key (`signing_kid`, default the first private key) must be. A key without its private part is
published only: the state of an old key after a
rotation, kept until the last token it signed has expired.

PyJWT does the JOSE work: it signed faster than joserfc here (ES256 39 vs 46 µs, EdDSA 44 vs
49 µs, RS256 261 vs 266 µs per token, same claims; README "Identity token"), it is a dependency
already, and the gate mints a token once per cached session, so key management is all it needs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

KEYS_FILE = "identity_token.keys_file"
SIGNING_KID = "identity_token.signing_kid"
#: alg → (kty, crv) the key must have (crv None: RSA)
ALGORITHMS: dict[str, tuple[str, str | None]] = {
    "ES256": ("EC", "P-256"),
    "EdDSA": ("OKP", "Ed25519"),
    "RS256": ("RSA", None),
}
MIN_RSA_BITS = 2048
#: Refused permission bits: group write, and any access for other users (0600 and 0640 pass)
UNSAFE_MODE = 0o027
_PRIVATE = (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey)
# the members RFC 7638 hashes for a thumbprint (the kid `keys generate` gives)
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}


class KeysFileError(ValueError):
    """The keys file cannot be used; `problems` are `key.path: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    alg: str
    private: Any | None  # a `cryptography` private key; None for a published-only key
    public_jwk: dict[str, Any]  # what the JWKS endpoint publishes for it


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[SigningKey, ...]
    signing: SigningKey

    def public_jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk for k in self.keys]}


def load_keys(path: str | os.PathLike[str], signing_kid: str | None = None) -> KeySet:
    """The key set in `path`, checked; raises KeysFileError naming every problem found."""
    where = f"{KEYS_FILE}: {path}"
    try:
        # opened first, then checked and read through the same handle: what is checked is
        # what is read (no swap between a stat and a read); non-blocking: a FIFO never hangs
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | os.O_CLOEXEC)
    except OSError as exc:
        raise KeysFileError([f"{where}: cannot read it: {exc.strerror or exc}"]) from exc
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise KeysFileError([f"{where}: not a regular file"])
        if mode & UNSAFE_MODE:
            raise KeysFileError(
                [
                    f"{where}: other users may access it, or its group may write it (mode "
                    f"{stat.S_IMODE(mode):04o}), and it holds private keys; chmod 600 it (or "
                    f"640 for a group the gate runs in)"
                ]
            )
        try:
            raw = handle.read()
        except OSError as exc:
            raise KeysFileError([f"{where}: cannot read it: {exc.strerror or exc}"]) from exc
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise KeysFileError([f"{where}: not JSON: {exc}"]) from exc
    raw_keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(raw_keys, list) or not raw_keys:
        raise KeysFileError([f'{where}: not a JWKS: expected {{"keys": [...]}} with keys in it'])
    problems: list[str] = []
    keys: list[SigningKey] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_keys):
        try:
            key = _key(raw, i)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if key.kid in seen:
            problems.append(f"{where}: kid {key.kid!r} is used twice")
        seen.add(key.kid)
        keys.append(key)
    if problems:
        raise KeysFileError(problems)
    private = [k for k in keys if k.private is not None]
    if not private:
        raise KeysFileError(
            [f"{where}: no private key in it (only public keys); the gate signs with one"]
        )
    if signing_kid is None:
        return KeySet(tuple(keys), private[0])
    chosen = next((k for k in keys if k.kid == signing_kid), None)
    if chosen is None:
        raise KeysFileError([f"{SIGNING_KID}: {signing_kid!r} is not a kid in {path}"])
    if chosen.private is None:
        raise KeysFileError(
            [f"{SIGNING_KID}: {signing_kid!r} has no private part in {path}: it cannot sign"]
        )
    return KeySet(tuple(keys), chosen)


def _key(raw: Any, index: int) -> SigningKey:
    if not isinstance(raw, dict):
        raise ValueError(f"key #{index + 1} is not a JSON object")
    kid = raw.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError(f"key #{index + 1} has no kid (each key needs one)")
    alg = raw.get("alg")
    if alg not in ALGORITHMS:
        raise ValueError(
            f"key {kid!r}: alg {alg!r} is not supported; use one of " + ", ".join(ALGORITHMS)
        )
    kty, crv = ALGORITHMS[alg]
    if raw.get("kty") != kty or (crv is not None and raw.get("crv") != crv):
        expected = kty + (f" with crv {crv}" if crv else "")
        raise ValueError(f"key {kid!r}: alg {alg} needs kty {expected}")
    if raw.get("use") not in (None, "sig"):
        raise ValueError(f"key {kid!r}: use is {raw.get('use')!r}; a signing key has use sig")
    try:
        parsed = jwt.PyJWK(raw, algorithm=alg).key
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise ValueError(f"key {kid!r}: not a valid {kty} key ({exc})") from None
    private = parsed if isinstance(parsed, _PRIVATE) else None
    public = parsed.public_key() if private is not None else parsed
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        raise ValueError(f"key {kid!r}: RSA keys need {MIN_RSA_BITS} bits or more")
    jwk = jwt.get_algorithm_by_name(alg).to_jwk(public, as_dict=True)
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return SigningKey(kid, alg, private, jwk)


# -- sessiongate keys generate ----------------------------------------------------------------
def new_private_jwk(alg: str = "ES256") -> dict[str, Any]:
    """A new private JWK for `alg`, its kid the RFC 7638 thumbprint of its public part."""
    if alg == "ES256":
        key: Any = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
    elif alg == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise ValueError(f"unsupported alg {alg!r}; use one of " + ", ".join(ALGORITHMS))
    jwk = jwt.get_algorithm_by_name(alg).to_jwk(key, as_dict=True)
    jwk.pop("kid", None)
    return {"kid": thumbprint(jwk), "alg": alg, "use": "sig", **jwk}


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: base64url(SHA-256(the required public members, sorted, compact JSON))."""
    members = {m: jwk[m] for m in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":")).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def write_keys_file(
    path: str | os.PathLike[str], jwks: dict[str, Any], *, like: os.stat_result | None = None
) -> None:
    """Write `jwks` to `path` atomically (a reader sees the old or the new): mode 0600, or
    with `like` (the file it replaces) that file's mode, owner and group, so a file shared
    with the gate's group (0640) stays readable by it."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if like is not None:
            # owner and group first: a group-readable mode is set only once the group is right
            os.fchown(fd, like.st_uid, like.st_gid)
            os.fchmod(fd, stat.S_IMODE(like.st_mode) & ~UNSAFE_MODE)
        else:
            os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(jwks, out, indent=2)
            out.write("\n")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
