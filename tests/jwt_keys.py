"""Test keys and token minting for the verifier, gateway and verify-jwt tests (keys made per process)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from functools import cache
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

SECRET = "test-legacy-jwt-secret-with-at-least-32-characters"
ISSUER = "https://testref.supabase.co/auth/v1"
USER = "6d1f1f4e-8f7a-4c59-9b0e-0123456789ab"
OTHER_USER = "0b6e3c1a-2222-4333-8444-555566667777"


@dataclass(frozen=True)
class Keys:
    ec: ec.EllipticCurvePrivateKey
    rsa: rsa.RSAPrivateKey
    ec_kid: str = "ec-key-1"
    rsa_kid: str = "rsa-key-1"

    def ec_jwk(self, kid: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True)
        return {**data, "kid": kid or self.ec_kid, "alg": "ES256", "use": "sig"}

    def rsa_jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True)
        return {**data, "kid": self.rsa_kid, "alg": "RS256", "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.ec_jwk(), self.rsa_jwk()]}


@cache
def keys() -> Keys:
    return Keys(ec=ec.generate_private_key(ec.SECP256R1()), rsa=rsa.generate_private_key(65537, 2048))


def user_claims(sub: str = USER, now: float | None = None, **overrides: Any) -> dict[str, Any]:
    at = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": ISSUER, "aud": "authenticated", "sub": sub, "role": "authenticated", "iat": at,
        "exp": at + 3600, "aal": "aal1", "session_id": str(uuid.uuid4()), "is_anonymous": False,
        "email": "user@example.test",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def hs256(claims: dict[str, Any], secret: str | bytes = SECRET, **headers: Any) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return jwt.encode(claims, key, algorithm="HS256", headers=headers or None)


def es256(claims: dict[str, Any], kid: str | None = None, key: ec.EllipticCurvePrivateKey | None = None,
          **headers: Any) -> str:
    return jwt.encode(claims, key or keys().ec, algorithm="ES256",
                      headers={"kid": keys().ec_kid if kid is None else kid, **headers})


def rs256(claims: dict[str, Any], **headers: Any) -> str:
    return jwt.encode(claims, keys().rsa, algorithm="RS256", headers={"kid": keys().rsa_kid, **headers})


def tamper_payload(token: str, **changes: Any) -> str:
    """Same header and signature, different payload."""
    import base64
    import json

    head, body, sig = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(changes)
    raw = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{head}.{raw}.{sig}"
