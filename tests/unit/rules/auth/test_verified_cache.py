"""JWTAuth(verified_cache=N): a reconnect with the same token skips the signature check.

In process, on an injected clock; a hit must answer exactly as a decode
would (expiry with the leeway, the clock going back, revocation, a key
that left the JWKS).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.jwks_server import JWKSServer, new_rsa_key
from tests.support.jwt_keys import SECRET, mint
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, connection_info, rules
from ws_guard.rules.auth.auth_rule import Claims
from ws_guard.rules.auth.verified_cache import MAX_CACHED_TOKEN
from ws_guard.testing import ManualClock, ScriptedWebSocket

T0 = 1000.0


class Counted(rules.JWTAuth):
    """JWTAuth that counts its signature checks (every PyJWT decode)."""

    decodes = 0

    def decode(self, token: str, key: Any) -> Any:
        self.decodes += 1
        return super().decode(token, key)


def setup(size: int = 10, **options: Any) -> tuple[Guard, Counted, ManualClock]:
    clock = ManualClock(T0)
    rule = Counted(SECRET, algorithms=["HS256"], verified_cache=size, **options)
    return Guard(rules=[rule], clock=clock, app_exit_timeout=None), rule, clock


async def handshake(guard: Guard, token: str) -> tuple[dict[str, Any], ScriptedWebSocket]:
    """The close the client got, or ``{"accepted": True}`` with the open socket."""
    ws = ScriptedWebSocket(
        WSGuardMiddleware(echo, guard=guard),
        headers=[(b"authorization", f"Bearer {token}".encode())],
    )
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("ping")
    reply = await ws.next()
    if reply["type"] == "websocket.close":
        await ws.finished()
        return reply, ws
    return {"accepted": True}, ws


async def outcome(guard: Guard, token: str) -> dict[str, Any]:
    result, ws = await handshake(guard, token)
    if result.get("accepted"):
        await ws.disconnect()
        await ws.finished()
    return result


def loop_time_of(exp: float) -> float:
    return T0 + (exp - time.time())


EXPIRED = {"type": "websocket.close", "code": 1008, "reason": "token_expired"}
INVALID = {"type": "websocket.close", "code": 1008, "reason": "token_invalid"}
REVOKED = {"type": "websocket.close", "code": 1008, "reason": "token_revoked"}


@pytest.mark.parametrize("size", [-1, 1.5, True, "10", None, 100_001])
def test_bad_sizes_are_refused_with_the_value(size: object) -> None:
    with pytest.raises(ConfigurationError, match=f"verified_cache.*{size!r}"):
        rules.JWTAuth(SECRET, algorithms=["HS256"], verified_cache=size)  # type: ignore[arg-type]


def test_off_by_default_and_with_zero() -> None:
    assert rules.JWTAuth(SECRET, algorithms=["HS256"]).verifier.cache is None
    assert rules.JWTAuth(SECRET, algorithms=["HS256"], verified_cache=0).verifier.cache is None


async def test_a_reused_token_is_checked_once_and_each_connection_gets_its_own_claims() -> None:
    guard, rule, _ = setup()
    token = mint("alice", roles=["admin"])
    first, ws1 = await handshake(guard, token)
    second, ws2 = await handshake(guard, token)
    assert first == second == {"accepted": True}
    assert rule.decodes == 1
    assert rule.verifier.cache is not None
    assert (rule.verifier.cache.hits, rule.verifier.cache.misses) == (1, 1)
    info1, info2 = connection_info(ws1.scope), connection_info(ws2.scope)
    assert info1 is not None
    assert info2 is not None
    assert info1.claims is not None
    assert info2.claims is not None
    assert type(info1.claims) is type(info2.claims) is MappingProxyType  # as without the cache
    assert dict(info1.claims) == dict(info2.claims)
    assert info1.subject == info2.subject == "alice"
    info1.claims["roles"].append("root")  # a nested claim is the connection's own
    info2.claims["roles"].append("sudo")  # the cache's copy too
    third, ws3 = await handshake(guard, token)
    assert third == {"accepted": True}
    info3 = connection_info(ws3.scope)
    assert info3 is not None
    assert info3.claims is not None
    assert (info1.claims["roles"], info2.claims["roles"], info3.claims["roles"]) == (
        ["admin", "root"],
        ["admin", "sudo"],
        ["admin"],
    )
    assert rule.decodes == 1
    for ws in (ws1, ws2, ws3):
        await ws.disconnect()
        await ws.finished()


async def test_a_hit_past_exp_closes_token_expired_with_the_leeway() -> None:
    guard, rule, clock = setup(leeway=5)
    token = mint(exp_in=30)
    assert await outcome(guard, token) == {"accepted": True}
    deadline = loop_time_of(_exp(token)) + 5  # exp + leeway on the guard's clock
    clock.now = deadline - 0.1
    assert await outcome(guard, token) == {"accepted": True}
    clock.now = deadline + 0.1
    assert await outcome(guard, token) == EXPIRED
    assert rule.decodes == 1  # both answered from the cache
    assert guard.metrics.snapshot().closes_by_rule == {"token_expired": 1}
    # Expired stays expired: the entry is dropped.
    assert rule.verifier.cache is not None
    assert len(rule.verifier.cache) == 0


async def test_a_hit_when_the_clock_went_back_before_nbf_is_invalid() -> None:
    guard, rule, clock = setup()
    token = mint(nbf=int(time.time()) - 10)
    assert await outcome(guard, token) == {"accepted": True}
    clock.now = T0 - 60  # before nbf on the guard's clock
    assert await outcome(guard, token) == INVALID
    assert rule.decodes == 1


async def test_revocation_applies_to_a_hit() -> None:
    guard, rule, _ = setup()
    token = mint("mallory", jti="t-1")
    assert await outcome(guard, token) == {"accepted": True}
    await guard.revoke(jti="t-1", until=time.time() + 600)
    assert await outcome(guard, token) == REVOKED
    assert rule.decodes == 1  # the hit, refused by the revocation check after it


async def test_only_verified_tokens_are_kept() -> None:
    guard, rule, _ = setup()
    bad = mint(key="another-secret-0123456789abcdef-0123")
    expired = mint(exp_in=-10)
    for _ in range(2):
        assert await outcome(guard, bad) == INVALID
        assert await outcome(guard, expired) == EXPIRED
    assert rule.decodes == 4
    assert rule.verifier.cache is not None
    assert len(rule.verifier.cache) == 0


async def test_the_cache_is_bounded_least_recently_used_first() -> None:
    guard, rule, _ = setup(size=2)
    a, b, c = mint("a"), mint("b"), mint("c")
    for token in (a, b, a, c):  # a used again before c comes: b is the one dropped
        assert await outcome(guard, token) == {"accepted": True}
    assert rule.decodes == 3
    cache = rule.verifier.cache
    assert cache is not None
    assert len(cache) == 2
    assert await outcome(guard, a) == {"accepted": True}
    assert await outcome(guard, c) == {"accepted": True}
    assert rule.decodes == 3
    assert await outcome(guard, b) == {"accepted": True}
    assert rule.decodes == 4


async def test_a_token_longer_than_4_kib_is_checked_every_time() -> None:
    guard, rule, _ = setup(max_token_bytes=8192)
    token = mint(pad="x" * MAX_CACHED_TOKEN)
    assert len(token) > MAX_CACHED_TOKEN
    for _ in range(2):
        assert await outcome(guard, token) == {"accepted": True}
    assert rule.decodes == 2


def _exp(token: str) -> int:
    import jwt

    claims: Claims = jwt.decode(token, options={"verify_signature": False})
    return int(claims["exp"])


KEY_A = new_rsa_key()
KEY_B = new_rsa_key()


@pytest.fixture
def jwks_server() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        server.publish(a=KEY_A, b=KEY_B)
        yield server


async def test_a_key_dropped_from_the_jwks_takes_its_cached_tokens_with_it(
    jwks_server: JWKSServer,
) -> None:
    clock = ManualClock(0.0)
    source = rules.JWKS(jwks_server.url, clock=clock, cooldown=30, lifespan=300)
    rule = Counted(algorithms=["RS256"], jwks_url=source, verified_cache=10)
    guard = Guard(rules=[rule])
    await guard.startup()
    token_a = mint(key=KEY_A, alg="RS256", headers={"kid": "a"})
    token_b = mint(key=KEY_B, alg="RS256", headers={"kid": "b"})
    for _ in range(2):
        assert await outcome(guard, token_a) == {"accepted": True}
        assert await outcome(guard, token_b) == {"accepted": True}
    assert rule.decodes == 2
    jwks_server.publish(b=KEY_B)  # a retired
    clock.now = 301  # the set's lifespan is over: the next token fetches it again
    assert await outcome(guard, token_b) == {"accepted": True}
    assert jwks_server.hits == 2
    assert rule.decodes == 3  # b checked again under the new set
    assert await outcome(guard, token_a) == INVALID  # not from the cache: no key "a" now
    assert await outcome(guard, token_b) == {"accepted": True}
    assert rule.decodes == 3  # a refused at the key lookup, b from the cache again
    await guard.shutdown()
