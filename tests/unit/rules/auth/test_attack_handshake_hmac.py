"""``JWTAuth`` with an HMAC key hands PyJWT its prepared key: every verdict is still PyJWT's own.

Differential: for each key form (str, bytes, a JWK) and algorithm list, every
token of a hostile set is accepted by the rule exactly when plain
``jwt.decode`` with the same key and algorithms accepts it. Keys PyJWT
refuses as HMAC secrets (a PEM public key, an SSH key, too short) are
refused at construction.
"""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.jwt_keys import (
    OTHER_SECRET,
    RSA_KEY,
    RSA_PUBLIC_PEM,
    SECRET,
    hs256_with_public_key,
    mint,
    unsigned,
)
from ws_guard import rules
from ws_guard.errors import ConfigurationError
from ws_guard.rules.auth.verifier import _PreparedHMAC

# Tokens are minted with keys shorter than some hashes want, on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

LONG = "k" * 64  # long enough for HS512
ALL_HMAC = ["HS256", "HS384", "HS512"]


def tokens() -> list[str]:
    found = [unsigned(), hs256_with_public_key(), mint(key=RSA_KEY, alg="RS256")]
    for key in (SECRET, SECRET.encode(), OTHER_SECRET, LONG, LONG.encode(), "x" * 64):
        for alg in ALL_HMAC:
            token = mint(key=key, alg=alg)
            found.append(token)
            found.append(token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    return found


def pyjwt_accepts(token: str, key: Any, algorithms: list[str]) -> bool:
    try:
        jwt.decode(token, key, algorithms=algorithms)
    except jwt.PyJWTError:
        return False
    return True


@pytest.mark.parametrize(
    ("key", "algorithms"),
    [
        (SECRET, ["HS256"]),
        (SECRET.encode(), ["HS256"]),
        (LONG, ALL_HMAC),
        (LONG.encode(), ALL_HMAC),
        (LONG, ["HS512"]),
        (
            jwt.PyJWK(
                {"kty": "oct", "k": jwt.utils.base64url_encode(LONG.encode()).decode()}, "HS384"
            ),
            ["HS384"],
        ),
    ],
    ids=["str", "bytes", "str-all", "bytes-all", "str-hs512", "jwk-hs384"],
)
def test_every_token_gets_pyjwts_verdict(key: Any, algorithms: list[str]) -> None:
    rule = rules.JWTAuth(key, algorithms=algorithms)
    plain_key = key.key if isinstance(key, jwt.PyJWK) else key
    # The prepared-key path is the one under test, not PyJWT's own.
    for name in algorithms:
        assert isinstance(rule.verifier._pyjwt._jws.get_algorithm_by_name(name), _PreparedHMAC)
    verdicts = [
        (isinstance(rule.verify_now(token), dict), pyjwt_accepts(token, plain_key, algorithms))
        for token in tokens()
    ]
    assert [ours for ours, _ in verdicts] == [theirs for _, theirs in verdicts]
    assert sum(ours for ours, _ in verdicts) >= len(algorithms)  # the right tokens pass


def test_the_prepared_key_is_used_again_by_the_rule_after_bind() -> None:
    """``require_claims`` (called again when the rule is bound) keeps PyJWT's verdicts."""
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], require=["jti"])
    assert isinstance(rule.verify_now(mint(jti="1")), dict)
    assert not isinstance(rule.verify_now(mint()), dict)  # no jti
    assert not isinstance(rule.verify_now(mint(key=OTHER_SECRET, jti="1")), dict)


SSH_PUBLIC = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
)


@pytest.mark.parametrize(
    "key",
    [RSA_PUBLIC_PEM, RSA_PUBLIC_PEM.decode(), SSH_PUBLIC, SSH_PUBLIC.decode(), "short", b""],
    ids=["pem-bytes", "pem-str", "ssh-bytes", "ssh-str", "short", "empty"],
)
def test_keys_pyjwt_refuses_as_hmac_secrets_are_refused_at_construction(key: object) -> None:
    with pytest.raises(ConfigurationError, match="JWTAuth"):
        rules.JWTAuth(key, algorithms=["HS256"])


def test_a_jwks_with_an_hmac_key_is_not_given_the_fast_path() -> None:
    """No rule key (a JWKS): PyJWT's own HMAC algorithm, untouched."""
    rule = rules.JWTAuth(jwks_url="https://issuer.example/jwks.json", algorithms=["RS256"])
    registered = rule.verifier._pyjwt._jws.get_algorithm_by_name("HS256")
    assert type(registered) is jwt.algorithms.HMACAlgorithm
