"""``JWTAuth`` with a ``PyJWK`` key: the JWK's own algorithm binds the rule.

A JWK names its algorithm (RFC 7517 section 4.4, ``alg``); a rule that also
accepted another algorithm with the same key material would invite the
algorithm confusion RFC 8725 section 2.1 warns about, so a mismatch is a
``ConfigurationError`` that names both. A matching JWK verifies tokens like
the key it holds. In process, real PyJWT keys.
"""

from __future__ import annotations

import json

import jwt
import pytest
from jwt import PyJWK

from tests.support.apps import echo
from tests.support.helpers import handshake_outcome
from tests.support.jwt_keys import EC_KEY, OTHER_SECRET, RSA_KEY, SECRET, mint
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules


def rsa_jwk(alg: str = "RS256") -> PyJWK:
    data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    return PyJWK({**data, "alg": alg})


def hmac_jwk(secret: str = SECRET) -> PyJWK:
    return PyJWK(
        json.loads(jwt.algorithms.HMACAlgorithm.to_jwk(secret.encode())) | {"alg": "HS256"}
    )


@pytest.mark.parametrize(
    ("key", "algorithms", "message"),
    [
        (
            rsa_jwk("RS256"),
            ["RS256", "RS384"],
            "JWTAuth key is a JWK for 'RS256', it cannot verify ['RS384']",
        ),
        (
            rsa_jwk("RS512"),
            ["RS256"],
            "JWTAuth key is a JWK for 'RS512', it cannot verify ['RS256']",
        ),
        (hmac_jwk(), ["HS512"], "JWTAuth key is a JWK for 'HS256', it cannot verify ['HS512']"),
    ],
)
def test_a_jwk_for_another_algorithm_is_refused(
    key: PyJWK, algorithms: list[str], message: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        rules.JWTAuth(key, algorithms=algorithms)
    assert str(info.value) == message


def test_the_message_never_holds_the_secret() -> None:
    with pytest.raises(ConfigurationError) as info:
        rules.JWTAuth(hmac_jwk(), algorithms=["HS384"])
    assert SECRET not in str(info.value)


async def handshake(rule: rules.JWTAuth, token: str) -> dict[str, object]:
    """Connect with *token* in ``?token=``; the close ws_guard sent, or the accept after an echo."""
    guard = Guard(rules=[rule])
    app = WSGuardMiddleware(echo, guard=guard)
    return await handshake_outcome(app, query_string=f"token={token}".encode())


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (mint(key=RSA_KEY, alg="RS256"), {"type": "websocket.accept"}),
        (mint(key=RSA_KEY, alg="RS384"), {"code": 1008, "reason": "token_invalid"}),
        (mint(key=EC_KEY, alg="ES256"), {"code": 1008, "reason": "token_invalid"}),
        (mint(key=SECRET, alg="HS256"), {"code": 1008, "reason": "token_invalid"}),
    ],
)
async def test_a_matching_rsa_jwk_verifies_only_its_own_tokens(
    token: str, expected: dict[str, object]
) -> None:
    rule = rules.JWTAuth(rsa_jwk(), algorithms=["RS256"], token=rules.from_query("token"))
    reply = await handshake(rule, token)
    assert {k: reply[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (mint(key=SECRET), {"type": "websocket.accept"}),
        (mint(key=OTHER_SECRET), {"code": 1008, "reason": "token_invalid"}),
    ],
)
async def test_a_matching_hmac_jwk_verifies_with_its_secret(
    token: str, expected: dict[str, object]
) -> None:
    rule = rules.JWTAuth(hmac_jwk(), algorithms=["HS256"], token=rules.from_query("token"))
    reply = await handshake(rule, token)
    assert {k: reply[k] for k in expected} == expected
