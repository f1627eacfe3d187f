"""JWKS keys from a real HTTP endpoint on 127.0.0.1: caching, rotation, outages."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import anyio
import pytest
import sniffio

from tests.support.apps import echo
from tests.support.jwks_server import JWKSServer, new_rsa_key
from tests.support.jwt_keys import hs256_with_public_key, mint
from tests.support.servers import free_port
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.testing import ManualClock as Clock
from ws_guard.testing import ScriptedWebSocket
from ws_guard.types import Message, Receive, Scope, Send

KEY_A = new_rsa_key()
KEY_B = new_rsa_key()


@pytest.fixture
def jwks_server() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        server.publish(a=KEY_A)
        yield server


def rs(key: object, kid: str, sub: str = "alice", **claims: object) -> str:
    return mint(sub, key=key, alg="RS256", headers={"kid": kid}, **claims)


async def connect(guard: Guard, token: str) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(
        WSGuardMiddleware(echo, guard=guard),
        headers=[(b"authorization", f"Bearer {token}".encode())],
    )
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def outcome(guard: Guard, token: str) -> dict:
    """The close ws_guard sent, or ``{"accepted": True}`` once an echo came back."""
    ws = await connect(guard, token)
    await ws.send_text("ping")
    reply = await ws.next(timeout=10)
    if reply["type"] == "websocket.send":
        await ws.disconnect()
        reply = {"accepted": True}
    await ws.finished(timeout=10)
    return reply


def make_guard(url: str, clock: Clock, policy: str = "allow", **jwks: object) -> Guard:
    jwks.setdefault("cooldown", 30)
    source = rules.JWKS(url, clock=clock, **jwks)  # type: ignore[arg-type]
    rule = rules.JWTAuth(algorithms=["RS256"], jwks_url=source)
    return Guard(rules=[rule], on_storage_error=policy)


async def test_keys_are_fetched_once_at_startup_and_cached(jwks_server: JWKSServer) -> None:
    guard = make_guard(jwks_server.url, Clock(0.0))
    await guard.startup()
    assert jwks_server.hits == 1
    for _ in range(3):
        assert await outcome(guard, rs(KEY_A, "a")) == {"accepted": True}
    assert jwks_server.hits == 1  # a known kid never leaves the loop
    await guard.shutdown()


async def test_fetched_lazily_without_startup(jwks_server: JWKSServer) -> None:
    guard = make_guard(jwks_server.url, Clock(0.0))
    rule = guard.rules[0]
    assert isinstance(rule, rules.JWTAuth)
    assert rule.jwks is not None
    rule.jwks.cached("a")  # nothing fetched yet: the handshake fetches
    assert await outcome(guard, rs(KEY_A, "a")) == {"accepted": True}
    assert jwks_server.hits >= 1


async def test_rotation_unknown_kid_triggers_one_refresh(jwks_server: JWKSServer) -> None:
    clock = Clock(0.0)
    guard = make_guard(jwks_server.url, clock)
    await guard.startup()
    jwks_server.publish(b=KEY_B)  # rotate: a retired, b introduced
    # Within the cooldown of the last fetch, an unknown kid is refused without a fetch.
    clock.now = 10
    assert await outcome(guard, rs(KEY_B, "b")) == {
        "type": "websocket.close",
        "code": 1008,
        "reason": "token_invalid",
    }
    assert jwks_server.hits == 1
    # Past the cooldown, one refresh finds the new key.
    clock.now = 31
    assert await outcome(guard, rs(KEY_B, "b")) == {"accepted": True}
    assert jwks_server.hits == 2
    # The retired key is gone with the refresh: its tokens are refused, no new fetch.
    assert (await outcome(guard, rs(KEY_A, "a")))["reason"] == "token_invalid"
    # A kid the endpoint never lists: one refresh past the cooldown, then invalid.
    clock.now = 70
    assert (await outcome(guard, rs(KEY_B, "nope")))["reason"] == "token_invalid"
    assert jwks_server.hits == 3
    assert (await outcome(guard, rs(KEY_B, "nope")))["reason"] == "token_invalid"
    assert jwks_server.hits == 3


async def test_key_set_is_refetched_after_its_lifespan(jwks_server: JWKSServer) -> None:
    clock = Clock(0.0)
    guard = make_guard(jwks_server.url, clock, lifespan=60)
    await guard.startup()
    clock.now = 59
    assert await outcome(guard, rs(KEY_A, "a")) == {"accepted": True}
    assert jwks_server.hits == 1
    clock.now = 61
    assert await outcome(guard, rs(KEY_A, "a")) == {"accepted": True}
    assert jwks_server.hits == 2


@pytest.mark.parametrize(
    "token",
    [
        hs256_with_public_key(),  # no kid; HS256 with the public key as secret
        mint(key="s" * 32, alg="HS256", headers={"kid": "a"}),  # HS256 under a known kid
        rs(KEY_B, "a"),  # right kid, wrong key
        rs(KEY_A, "a", aud="x"),
        mint(key=KEY_A, alg="RS256"),  # no kid
    ],
    ids=["confusion", "hs256-known-kid", "wrong-key", "aud", "no-kid"],
)
async def test_bad_tokens_with_jwks(jwks_server: JWKSServer, token: str) -> None:
    guard = make_guard(jwks_server.url, Clock(0.0))
    await guard.startup()
    assert (await outcome(guard, token))["reason"] == "token_invalid"


async def test_unreachable_at_startup_allow_means_token_invalid(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks"
    guard = make_guard(url, Clock(0.0), policy="allow", retry=0)
    await guard.startup()  # does not raise: the app starts, the failure is counted
    assert guard.metrics.snapshot().storage_errors == 1
    token = rs(KEY_A, "a")
    close = await outcome(guard, token)
    assert close == {"type": "websocket.close", "code": 1008, "reason": "token_invalid"}
    assert guard.metrics.snapshot().storage_errors == 2  # the handshake tried again
    logs = [r.getMessage() for r in caplog.records]
    assert any("jwks fetch failed" in m and "on_storage_error=allow" in m for m in logs)
    assert all(token not in m for m in logs)


async def test_unreachable_deny_means_1013(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks"
    guard = make_guard(url, Clock(0.0), policy="deny", retry=0)
    await guard.startup()
    close = await outcome(guard, rs(KEY_A, "a"))
    assert close == {"type": "websocket.close", "code": 1013, "reason": "storage_unavailable"}
    assert guard.metrics.snapshot().closes_by_rule == {"storage_unavailable": 1}


async def test_failed_fetches_are_not_retried_within_retry_interval() -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks"
    clock = Clock(0.0)
    guard = make_guard(url, clock, retry=5)
    await guard.startup()
    for _ in range(3):
        assert (await outcome(guard, rs(KEY_A, "a")))["reason"] == "token_invalid"
    assert guard.metrics.snapshot().storage_errors == 1  # one attempt, not four
    clock.now = 5
    await outcome(guard, rs(KEY_A, "a"))
    assert guard.metrics.snapshot().storage_errors == 2


@pytest.mark.parametrize(("policy", "expected"), [("allow", None), ("deny", 1013)])
async def test_stale_keys_during_an_outage(policy: str, expected: int | None) -> None:
    clock = Clock(0.0)
    with JWKSServer() as server:
        server.publish(a=KEY_A)
        guard = make_guard(server.url, clock, policy=policy, lifespan=60)
        await guard.startup()
    clock.now = 61  # the set is stale and the endpoint is gone
    result = await outcome(guard, rs(KEY_A, "a"))
    if expected is None:
        assert result == {"accepted": True}  # allow: the last good keys still verify
    else:
        assert result == {"type": "websocket.close", "code": 1013, "reason": "storage_unavailable"}
    assert guard.metrics.snapshot().storage_errors == 1


async def test_http_error_and_empty_set_are_storage_errors(jwks_server: JWKSServer) -> None:
    jwks_server.status = 500
    guard = make_guard(jwks_server.url, Clock(0.0), retry=0)
    await guard.startup()
    jwks_server.status = 200
    jwks_server.publish()  # no keys at all
    assert (await outcome(guard, rs(KEY_A, "a")))["reason"] == "token_invalid"
    assert guard.metrics.snapshot().storage_errors == 2


async def test_refresh_with_a_rotated_key_waits_for_the_fetch(jwks_server: JWKSServer) -> None:
    """The in-band refresh needs a fetch: later messages wait for its verdict."""
    clock = Clock(0.0)
    guard = make_guard(jwks_server.url, clock)
    await guard.startup()
    ws = await connect(guard, rs(KEY_A, "a", exp_in=30))
    jwks_server.publish(a=KEY_A, b=KEY_B)
    clock.now = 31
    refresh = json.dumps({"type": "auth.refresh", "token": rs(KEY_B, "b", gen=2)})
    await ws.send_text(refresh)
    await ws.send_text("after")
    await ws.expect("websocket.send", text="after", timeout=10)
    assert ws.scope["ws_guard"].claims["gen"] == 2
    assert jwks_server.hits == 2
    # Another subject under the new key: refused.
    await ws.send_text(json.dumps({"type": "auth.refresh", "token": rs(KEY_B, "b", "eve")}))
    await ws.expect("websocket.close", code=1008, reason="token_invalid")
    await ws.disconnect(1008)
    await ws.finished()


async def test_first_message_with_a_key_fetch(jwks_server: JWKSServer) -> None:
    source = rules.JWKS(jwks_server.url, clock=Clock(0.0))
    rule = rules.JWTAuth(algorithms=["RS256"], jwks_url=source, token=rules.from_first_message(5))
    guard = Guard(rules=[rule])  # no startup: the first message triggers the fetch
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text(rs(KEY_A, "a", "fm"))
    await ws.send_text("hello")
    await ws.expect("websocket.send", text="hello", timeout=10)
    assert ws.scope["ws_guard"].subject == "fm"
    await ws.disconnect()
    await ws.finished()


async def _receive_within(receive: Receive, seconds: float) -> Message | None:
    """The next message, or None when none came within *seconds* (the receive is cancelled)."""
    if sniffio.current_async_library() == "asyncio":
        try:
            return await asyncio.wait_for(receive(), seconds)
        except asyncio.TimeoutError:
            return None
    with anyio.move_on_after(seconds):
        return await receive()
    return None


async def _impatient(scope: Scope, receive: Receive, send: Send) -> None:
    """Echoes, but waits only 50 ms per receive, as many apps do.

    asyncio.wait_for on asyncio (the receive runs in a task it cancels on
    Python 3.11), anyio.move_on_after on trio (a cancel scope).
    """
    await receive()
    await send({"type": "websocket.accept"})
    scope["timeouts"] = 0
    while True:
        message = await _receive_within(receive, 0.05)
        if message is None:
            scope["timeouts"] += 1
            continue
        if message["type"] == "websocket.disconnect":
            return
        subject = scope["ws_guard"].subject
        await send({"type": "websocket.send", "text": f"{message['text']} as {subject}"})


async def test_a_receive_cancelled_during_a_key_fetch_keeps_the_decision(
    jwks_server: JWKSServer,
) -> None:
    """A wait_for that times out while a token waits for its key loses no decision.

    The cancelled receive leaves the check running; the next receive settles
    it before reading on. Without that, the message after a first-message
    token would reach the app unauthenticated, and a refresh for another
    subject would never close the connection.
    """
    clock = Clock(0.0)
    jwks_server.publish(b=KEY_B)
    source = rules.JWKS(jwks_server.url, clock=clock)
    rule = rules.JWTAuth(algorithms=["RS256"], jwks_url=source, token=rules.from_first_message(5))
    guard = Guard(rules=[rule])
    ws = ScriptedWebSocket(WSGuardMiddleware(_impatient, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")  # the guard started: key "b" is known
    # The token's key "a" is not: verifying it waits for a (slow) fetch.
    jwks_server.publish(a=KEY_A, b=KEY_B)
    jwks_server.delay = 0.3
    clock.now = 31
    await ws.send_text(rs(KEY_A, "a", "fm"))
    await ws.send_text("hello")
    await ws.expect("websocket.send", text="hello as fm", timeout=10)
    assert ws.scope["timeouts"] >= 3  # the app's receive was cancelled during the fetch
    # A refresh for another subject under a key not fetched yet: closed, not lost.
    key_c = new_rsa_key()
    jwks_server.publish(a=KEY_A, b=KEY_B, c=key_c)
    clock.now = 62
    await ws.send_text(json.dumps({"type": "auth.refresh", "token": rs(key_c, "c", "eve")}))
    await ws.send_text("after")
    await ws.expect("websocket.close", code=1008, reason="token_invalid", timeout=10)
    await ws.disconnect(1008)
    await ws.finished()
    assert jwks_server.hits == 3
    assert guard.metrics.snapshot().closes_by_rule == {"token_invalid": 1}


def test_jwks_options_are_checked() -> None:
    from ws_guard import ConfigurationError

    for options in ({"lifespan": 0}, {"cooldown": -1}, {"timeout": float("nan")}, {"retry": True}):
        with pytest.raises(ConfigurationError):
            rules.JWKS("http://127.0.0.1/jwks", **options)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _quiet_storage_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ws_guard")
