"""Sign time of the identity token's candidate JOSE libraries (README, "Identity token").

    .venv/bin/pip install -e '.[bench]' && .venv/bin/python bench/sign_time.py

Same claims as the gate's default mapping, key objects prepared once (as the gate holds them),
best of 5 runs; each library's token is checked by the other first.
"""

from __future__ import annotations

import time
import timeit
import warnings

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwt as jjwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

NOW = int(time.time())
CLAIMS = {
    "iss": "https://gate.example.com",
    "aud": "https://app.example.com",
    "sub": "9f425a8d-7efc-4768-8f23-7647a74fdf13",
    "sid": "f9b7e3c1-1111-2222-3333-444455556666",
    "email": "alice@example.com",
    "aal": "aal1",
    "amr": ["password"],
    "iat": NOW,
    "nbf": NOW,
    "exp": NOW + 60,
    "jti": "0b6c4a43-7a4b-4b8e-9d51-3f0f7b1c2d3e",
}


def main() -> None:
    warnings.simplefilter("ignore")  # joserfc warns on every EdDSA use (RFC 9864)
    keys = {
        "ES256": (ec.generate_private_key(ec.SECP256R1()), ECKey),
        "EdDSA": (ed25519.Ed25519PrivateKey.generate(), OKPKey),
        "RS256": (rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAKey),
    }
    for alg, (key, kind) in keys.items():
        jkey = kind.import_key(key)
        n = 300 if alg == "RS256" else 2000

        def pyjwt_sign(key=key, alg=alg) -> str:  # type: ignore[no-untyped-def]
            return jwt.encode(CLAIMS, key, algorithm=alg, headers={"kid": "k1"})

        def joserfc_sign(jkey=jkey, alg=alg) -> str:  # type: ignore[no-untyped-def]
            return jjwt.encode({"alg": alg, "kid": "k1"}, CLAIMS, jkey, algorithms=[alg])

        jwt.decode(joserfc_sign(), key.public_key(), algorithms=[alg], audience=CLAIMS["aud"])
        jjwt.decode(pyjwt_sign(), jkey, algorithms=[alg])
        for name, sign in (("PyJWT", pyjwt_sign), ("joserfc", joserfc_sign)):
            best = min(timeit.repeat(sign, number=n, repeat=5)) / n * 1e6
            print(f"{alg:6} {name:8} {best:7.1f} µs per signature")


if __name__ == "__main__":
    main()
