"""Keys and token minting for the JWT tests (real PyJWT, real keys)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SECRET = "0123456789abcdef0123456789abcdef"  # 32 bytes: the HS256 minimum
OTHER_SECRET = "fedcba9876543210fedcba9876543210"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def mint(
    sub: str | None = "alice",
    *,
    key: Any = SECRET,
    alg: str = "HS256",
    exp_in: float | None = 3600,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A signed token; ``exp`` is ``exp_in`` seconds from now (an int, as issuers write it).

    The default hour outlives the whole test run: parametrized tokens are
    minted at collection, long before their test runs.
    """
    payload: dict[str, Any] = dict(claims)
    if sub is not None:
        payload["sub"] = sub
    if exp_in is not None:
        payload["exp"] = int(time.time() + exp_in)
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(sub: str = "alice", exp_in: float = 3600) -> str:
    """An ``alg: none`` token, as an attacker writes it."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = _b64(json.dumps({"sub": sub, "exp": int(time.time() + exp_in)}).encode())
    return f"{header}.{body}."


def hs256_with_public_key(sub: str = "alice") -> str:
    """Algorithm confusion: HS256 'signed' with the RS256 public key as the secret.

    PyJWT refuses to sign with a PEM as HMAC secret, so sign by hand.
    """
    import hashlib
    import hmac

    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps({"sub": sub, "exp": int(time.time() + 3600)}).encode())
    signing_input = f"{header}.{body}".encode()
    signature = hmac.new(RSA_PUBLIC_PEM, signing_input, hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"
