"""JWT verification at the handshake, in process: every way a token can be wrong."""

from __future__ import annotations

import json
import logging

import pytest

from tests.support.apps import echo
from tests.support.jwt_apps import whoami
from tests.support.jwt_keys import (
    EC_KEY,
    OTHER_SECRET,
    RSA_KEY,
    RSA_PUBLIC_PEM,
    SECRET,
    hs256_with_public_key,
    mint,
    unsigned,
)
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


async def handshake(rule: rules.JWTAuth, token: str | None, **guard_options: object) -> dict:
    """Connect with *token* as a Bearer header and send "ping".

    Returns the close ws_guard sent, or the accept when the echo came back.
    """
    guard = Guard(rules=[rule], **guard_options)  # type: ignore[arg-type]
    ws = ScriptedWebSocket(
        WSGuardMiddleware(echo, guard=guard), headers=bearer(token) if token else ()
    )
    await ws.connect()
    accept = await ws.expect("websocket.accept")
    await ws.send_text("ping")
    reply = await ws.next()
    if reply["type"] == "websocket.send":
        assert reply["text"] == "ping"
        await ws.disconnect()
        reply = accept
    await ws.finished()
    return reply


HS = rules.JWTAuth(SECRET, algorithms=["HS256"])
RS = rules.JWTAuth(RSA_PUBLIC_PEM, algorithms=["RS256"])


@pytest.mark.parametrize(
    ("rule", "token", "reason"),
    [
        (HS, None, "token_missing"),
        (HS, unsigned(), "token_invalid"),  # alg: none
        (RS, hs256_with_public_key(), "token_invalid"),  # algorithm confusion
        (RS, mint(key=SECRET, alg="HS256"), "token_invalid"),  # HS token, RS rule
        (HS, mint(key=OTHER_SECRET), "token_invalid"),  # wrong key
        (RS, mint(key=EC_KEY, alg="ES256"), "token_invalid"),
        (HS, mint(exp_in=None), "token_invalid"),  # no exp
        (HS, mint(nbf=2_000_000_000_0), "token_invalid"),  # nbf in the future
        (HS, mint(iat=2_000_000_000_0), "token_invalid"),  # issued in the future
        (HS, mint(aud="other", exp_in=3600), "token_invalid"),  # aud while none is expected
        (HS, "not-a-jwt", "token_invalid"),
        (HS, "a.b.c", "token_invalid"),
        (HS, mint()[:-3], "token_invalid"),  # truncated signature
        (HS, mint() + "x" * 9000, "token_invalid"),  # larger than max_token_bytes
        (HS, mint(exp_in=-5), "token_expired"),
    ],
    ids=[
        "missing",
        "alg-none",
        "hs256-signed-with-rs256-public-key",
        "hs256-for-rs256-rule",
        "wrong-key",
        "es256-for-rs256-rule",
        "no-exp",
        "future-nbf",
        "future-iat",
        "unexpected-aud",
        "malformed",
        "garbage-segments",
        "truncated",
        "oversized",
        "expired",
    ],
)
async def test_bad_tokens_close_with_1008(
    rule: rules.JWTAuth, token: str | None, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ws_guard")
    close = await handshake(rule, token)
    assert close == {"type": "websocket.close", "code": 1008, "reason": reason}
    if token:
        for record in caplog.records:
            assert token not in record.getMessage()
            assert token[:40] not in record.getMessage()


@pytest.mark.parametrize(
    ("audience", "issuer", "claims", "reason"),
    [
        ("api", None, {"aud": "api"}, None),
        ("api", None, {"aud": "web"}, "token_invalid"),
        ("api", None, {}, "token_invalid"),  # aud required once an audience is set
        (["api", "admin"], None, {"aud": "admin"}, None),
        (None, "https://issuer", {"iss": "https://issuer"}, None),
        (None, "https://issuer", {"iss": "https://evil"}, "token_invalid"),
        (None, ["a", "b"], {"iss": "b"}, None),
    ],
)
async def test_audience_and_issuer(
    audience: object, issuer: object, claims: dict, reason: str | None
) -> None:
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], audience=audience, issuer=issuer)  # type: ignore[arg-type]
    result = await handshake(rule, mint(**claims))
    if reason is None:
        assert result == {"type": "websocket.accept"}
    else:
        assert result == {"type": "websocket.close", "code": 1008, "reason": reason}


async def test_leeway_admits_a_just_expired_token() -> None:
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], leeway=30)
    assert await handshake(rule, mint(exp_in=-5)) == {"type": "websocket.accept"}


async def test_require_exp_false_drops_exp_and_require_adds_claims() -> None:
    no_exp = rules.JWTAuth(SECRET, algorithms=["HS256"], require_exp=False)
    assert await handshake(no_exp, mint(exp_in=None)) == {"type": "websocket.accept"}
    jti = rules.JWTAuth(SECRET, algorithms=["HS256"], require=("exp", "jti"))
    assert (await handshake(jti, mint()))["reason"] == "token_invalid"
    assert await handshake(jti, mint(jti="abc")) == {"type": "websocket.accept"}


@pytest.mark.parametrize(
    ("key", "alg", "signing_key"),
    [
        (SECRET, "HS256", SECRET),
        ("k" * 64, "HS512", "k" * 64),
        (RSA_PUBLIC_PEM, "RS256", RSA_KEY),
        (RSA_PUBLIC_PEM, "PS256", RSA_KEY),
        (EC_KEY.public_key(), "ES256", EC_KEY),
    ],
)
async def test_valid_tokens_expose_subject_and_claims(
    key: object, alg: str, signing_key: object
) -> None:
    guard = Guard(rules=[rules.JWTAuth(key, algorithms=[alg])])
    token = mint("bob", key=signing_key, alg=alg, role="admin")
    ws = ScriptedWebSocket(WSGuardMiddleware(whoami, guard=guard), headers=bearer(token))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("hello")
    who = json.loads((await ws.expect("websocket.send"))["text"])
    assert who["sub"] == "bob"
    assert who["claims"]["role"] == "admin"
    assert set(who["claims"]) == {"sub", "exp", "role"}
    await ws.expect("websocket.send", text="hello")
    info = ws.scope["ws_guard"]
    with pytest.raises(TypeError):
        info.claims["role"] = "root"  # read-only for the app
    await ws.disconnect()
    await ws.finished()
    snap = guard.metrics.snapshot()
    assert snap.handshakes_admitted == 1
    assert snap.closes_by_rule == {}


async def test_rejections_are_counted_by_reason() -> None:
    guard = Guard(rules=[rules.JWTAuth(SECRET, algorithms=["HS256"])])
    app = WSGuardMiddleware(echo, guard=guard)
    for headers in ([], bearer("junk"), bearer(mint(exp_in=-5)), bearer("junk2")):
        ws = ScriptedWebSocket(app, headers=headers)
        await ws.connect()
        await ws.expect("websocket.accept")
        await ws.expect("websocket.close", code=1008)
        await ws.finished()
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"token_missing": 1, "token_invalid": 2, "token_expired": 1}
    assert snap.handshakes_rejected == 4
    assert snap.active_connections == 0
    assert len(guard.scheduler) == 0


async def test_http_denial_is_403_without_the_token() -> None:
    guard = Guard(rules=[rules.JWTAuth(SECRET, algorithms=["HS256"])], reject="http")
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard), headers=bearer("junk"))
    await ws.connect()
    await ws.expect("websocket.http.response.start", status=403)
    await ws.expect("websocket.http.response.body", body=b"token_invalid")
    await ws.finished()


async def test_shadow_mode_counts_and_admits() -> None:
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], enforce=False)
    guard = Guard(rules=[rule])
    ws = ScriptedWebSocket(WSGuardMiddleware(whoami, guard=guard), headers=bearer("junk"))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("x")
    who = json.loads((await ws.expect("websocket.send"))["text"])
    assert who["sub"] is None
    await ws.disconnect()
    await ws.finished()
    snap = guard.metrics.snapshot()
    assert snap.shadow_breaches_by_rule == {"token_invalid": 1}
    assert snap.closes_by_rule == {}


async def test_named_rule_labels_its_closes() -> None:
    guard = Guard(rules=[rules.JWTAuth(SECRET, algorithms=["HS256"], name="jwt")])
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.expect("websocket.close", code=1008, reason="token_missing")
    await ws.finished()
    assert guard.metrics.snapshot().closes_by_rule == {"jwt": 1}


@pytest.mark.parametrize(
    ("key", "claims", "reason"),
    [
        (rules.by_user, {"sub": None}, "token_invalid"),  # no sub: no user to count
        (rules.by_user, {"sub": None, "user": "alice"}, "token_invalid"),
        (rules.by_user, {"sub": 7}, "token_invalid"),  # PyJWT >= 2.10: sub must be a string
        (rules.by_user, {"sub": "alice"}, None),
        (rules.by_ip, {"sub": None}, None),  # no per-user rule: sub stays optional
    ],
    ids=["by_user-no-sub", "by_user-other-claim", "by_user-int-sub", "by_user-sub", "by_ip"],
)
async def test_a_guard_keyed_by_user_refuses_tokens_without_a_user(
    key: object, claims: dict, reason: str | None
) -> None:
    # A token without sub has no by_user key, so it escaped every per-user
    # cap: the guard now makes JWTAuth require sub when a rule keys by user.
    claims = dict(claims)  # parametrized values are shared by the asyncio and trio runs
    sub = claims.pop("sub")
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"])
    cap = rules.MaxConnectionsPerKey(1, key=key)  # type: ignore[arg-type]
    guard = Guard(rules=[rule, cap])
    reply = await handshake_in(guard, mint(sub, **claims))
    if reason is None:
        assert reply["type"] == "websocket.accept"
    else:
        assert (reply["code"], reply["reason"]) == (1008, reason)
    assert ("sub" in rule.require) is (key is rules.by_user)


async def handshake_in(guard: Guard, token: str) -> dict:
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard), headers=bearer(token))
    await ws.connect()
    accept = await ws.expect("websocket.accept")
    await ws.send_text("ping")
    reply = await ws.next()
    if reply["type"] == "websocket.send":
        await ws.disconnect()
        reply = accept
    await ws.finished()
    return reply


async def test_the_hmac_key_is_prepared_once_not_per_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyJWT re-prepares (PEM/SSH/DER probes) every key it is given; the rule's own is
    prepared at construction and then taken as it is, handshake after handshake."""
    from jwt.algorithms import HMACAlgorithm

    prepared: list[object] = []
    real = HMACAlgorithm.prepare_key

    def counting(self: HMACAlgorithm, key: str | bytes) -> bytes:
        prepared.append(key)
        return real(self, key)

    monkeypatch.setattr(HMACAlgorithm, "prepare_key", counting)
    secret = "k" * 64  # long enough for HS512
    tokens = [mint(key=secret, alg=alg) for alg in ("HS256", "HS512", "HS256")]  # encode prepares
    prepared.clear()
    rule = rules.JWTAuth(secret, algorithms=["HS256", "HS512"])
    at_construction = len(prepared)
    assert at_construction >= 1
    for token in tokens:
        assert (await handshake(rule, token))["type"] == "websocket.accept"
    assert len(prepared) == at_construction
    # The checks still hold: a token signed with another secret, or one whose
    # header names an algorithm the rule does not take, is refused.
    assert (await handshake(rule, mint(key=OTHER_SECRET)))["reason"] == "token_invalid"
    assert (await handshake(rule, mint(key=secret, alg="HS384")))["reason"] == "token_invalid"


def test_any_other_key_object_is_still_prepared_and_checked() -> None:
    """Only the rule's own key passes unprepared: a PEM public key given as an
    HMAC secret is still refused by PyJWT's probe (algorithm confusion)."""
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"])
    token = hs256_with_public_key()
    assert rule.verifier.decode(token, RSA_PUBLIC_PEM) is rule.verifier.invalid
    claims = rule.verifier.decode(mint(), SECRET.encode())  # an equal key, another object
    assert isinstance(claims, dict)
    assert claims["sub"] == "alice"
