"""ws_guard.client.connect against a real guarded uvicorn, with the real websockets client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.support.apps import echo
from tests.support.client_rules import TestToken
from tests.support.helpers import eventually
from tests.support.servers import free_port, serve
from ws_guard import Guard, WSGuardMiddleware, load, rules
from ws_guard.client import (
    Backoff,
    GaveUp,
    RandomDelay,
    ReconnectPolicy,
    RefreshThenRetry,
    Retry,
    Stop,
    connect,
    retry_after_hint,
)

pytestmark = pytest.mark.e2e


def fast_policy(**kwargs) -> ReconnectPolicy:
    """The default table with short back-off, so tests stay quick (hints still win)."""
    overrides = {code: Backoff(initial=0.05) for code in (1001, 1006, 1011, 1013)}
    overrides[1012] = RandomDelay(0.0, 0.05)
    overrides.update(kwargs.pop("overrides", {}))
    return ReconnectPolicy(overrides=overrides, **kwargs)


async def echo_once(ws, text: str = "ping") -> str:
    await ws.send(text)
    return await asyncio.wait_for(ws.recv(), 5)


async def every_connection(connections, body) -> None:
    """Run *body* on each connection until the iteration ends (or raises GaveUp)."""
    async for ws in connections:
        await body(ws)


async def expect_refused(ws) -> None:
    assert await refused(ws)


async def refused(ws) -> bool:
    """True when *ws* was closed right after the handshake (accept-then-close)."""
    try:
        await asyncio.wait_for(ws.recv(), 5)
    except ConnectionClosed:
        return True
    return False


@pytest.mark.parametrize("reject", ["close", "http"])
async def test_1013_backs_off_until_a_slot_frees(reject: str) -> None:
    guard = Guard(
        load=[load.ConnectionCount(limit=1)], reject=reject, random_source=random.Random(3)
    )
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws"
        holder = await websockets.connect(url)  # takes the only slot
        assert await echo_once(holder) == "ping"
        decisions: list = []
        released_at: list[float] = []

        async def release() -> None:
            await holder.close()
            released_at.append(time.monotonic())

        def on_decision(decision) -> None:
            decisions.append((time.monotonic(), decision))
            asyncio.get_running_loop().create_task(release())

        async with contextlib.aclosing(
            connect(url, policy=fast_policy(), on_decision=on_decision)
        ) as connections:
            async for ws in connections:
                try:  # the canonical loop: a connection may close at any time
                    assert await echo_once(ws, "admitted") == "admitted"
                except ConnectionClosed:
                    continue
                admitted_at = time.monotonic()
                break

        assert len(decisions) == 1
        decided_at, decision = decisions[0]
        assert isinstance(decision, Retry)
        assert (decision.code, decision.attempt) == (1013, 1)
        assert decision.reason.startswith("overloaded; retry-after=")
        hint = retry_after_hint(decision.reason)
        assert hint is not None
        assert hint >= 1
        assert hint <= decision.delay <= hint + 0.05  # never before the hint, jitter on top
        assert admitted_at - decided_at >= hint - 0.05  # it really waited
        assert admitted_at - decided_at < hint + 3
        # Every connection has ended on the server (holder, refused, admitted):
        # the counters are final.
        await eventually(lambda: guard.metrics.snapshot().active_connections == 0)
        snap = guard.metrics.snapshot()
        # The refusal is counted as what the client got: 1013, or HTTP 503.
        refused = 1013 if reject == "close" else 503
        assert snap.closes_by_code == {refused: 1, 1000: 2}
        assert snap.closes_by_rule == {"overloaded": 1}
        assert snap.handshakes_rejected == 1
        assert snap.handshakes_admitted == 2


@pytest.mark.parametrize("source", ["query", "header", "subprotocol"])
async def test_token_expired_refreshes_through_the_provider_and_reconnects(source: str) -> None:
    rule = TestToken(source, marker="bearer")
    guard = Guard(rules=[rule])
    tokens = iter(["short-1", "good-2"])
    calls: list[str] = []

    async def provider() -> str:
        calls.append("call")
        return next(tokens)

    decisions: list = []
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws?room=1"
        seen_codes = []
        async with contextlib.aclosing(
            connect(
                url,
                provider,
                policy=fast_policy(),
                token_source=source,
                token_name="bearer" if source == "subprotocol" else None,
                on_decision=decisions.append,
            )
        ) as connections:
            async for ws in connections:
                if source == "subprotocol":
                    assert ws.subprotocol == "bearer"
                assert await echo_once(ws) == "ping"
                if len(calls) == 1:
                    with pytest.raises(ConnectionClosed) as info:
                        await asyncio.wait_for(ws.recv(), 5)  # the token expires while idle
                    seen_codes.append((info.value.rcvd.code, info.value.rcvd.reason))
                    continue
                break
    assert seen_codes == [(1008, "token_expired")]
    assert decisions == [RefreshThenRetry(0.0, 1008, "token_expired", 1)]
    assert calls == ["call", "call"]
    assert rule.seen == ["short-1", "good-2"]
    if source == "query":  # the token joins the URL's own query, replacing none of it
        assert rule.queries == [
            {"room": ["1"], "token": ["short-1"]},
            {"room": ["1"], "token": ["good-2"]},
        ]
    else:
        assert rule.queries == [{"room": ["1"]}, {"room": ["1"]}]


@pytest.mark.parametrize("reject", ["close", "http"])
async def test_token_expired_at_the_handshake_refreshes(reject: str) -> None:
    rule = TestToken("query")
    guard = Guard(rules=[rule], reject=reject)
    tokens = iter(["expired-1", "good-2"])
    decisions: list = []
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        async with contextlib.aclosing(
            connect(server.url + "/ws", lambda: next(tokens), on_decision=decisions.append)
        ) as connections:
            async for ws in connections:
                try:
                    assert await echo_once(ws) == "ping"
                except ConnectionClosed:
                    continue
                break
    assert decisions == [RefreshThenRetry(0.0, 1008, "token_expired", 1)]
    assert rule.seen == ["expired-1", "good-2"]


@pytest.mark.parametrize("reject", ["close", "http"])
async def test_invalid_token_stops_with_the_reason(reject: str) -> None:
    guard = Guard(rules=[TestToken("query")], reject=reject)
    decisions: list = []
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        connections = connect(server.url + "/ws", lambda: "forged", on_decision=decisions.append)
        with pytest.raises(GaveUp) as info:
            await every_connection(connections, expect_refused)
    assert (info.value.code, info.value.reason) == (1008, "token_invalid")
    assert decisions == [
        Stop(1008, "token_invalid", 1, "policy violation: the server would refuse a retry again")
    ]


async def test_token_expired_without_a_provider_gives_up() -> None:
    guard = Guard(rules=[TestToken("query")])
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        connections = connect(server.url + "/ws?token=expired-0")
        with pytest.raises(GaveUp) as info:
            await every_connection(connections, expect_refused)
    assert (info.value.code, info.value.reason) == (1008, "token_expired")
    assert "no token_provider" in str(info.value)


async def test_a_content_rule_breach_stops(caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard(rules=[rules.Content(lambda m: "http://" not in m, name="no_links")])
    decisions: list = []
    made: list = []

    async def break_the_rule(ws) -> None:
        made.append(ws)
        assert await echo_once(ws, "fine") == "fine"
        await ws.send("see http://spam.example")
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)

    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        connections = connect(server.url + "/ws", on_decision=decisions.append)
        with pytest.raises(GaveUp) as info:
            await every_connection(connections, break_the_rule)
    assert len(made) == 1
    assert (info.value.code, info.value.reason) == (1008, "content:no_links")
    assert decisions == [
        Stop(1008, "content:no_links", 1, "policy violation: the server would refuse a retry again")
    ]
    assert guard.metrics.snapshot().closes_by_code == {1008: 1}
    client_logs = [r for r in caplog.records if r.name == "ws_guard.client"]
    assert [r.levelno for r in client_logs] == [logging.WARNING]
    assert "code=1008 reason='content:no_links' attempt=1: stop" in client_logs[0].getMessage()


async def test_a_normal_close_ends_the_iteration_quietly() -> None:
    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return await echo(scope, receive, send)
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        await send({"type": "websocket.close", "code": 1000, "reason": "bye"})

    decisions: list = []
    with serve(WSGuardMiddleware(app, guard=Guard())) as server:
        rounds = 0
        async for ws in connect(server.url + "/ws", on_decision=decisions.append):
            rounds += 1
            await ws.send("hello")
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
    assert rounds == 1
    assert decisions == [Stop(1000, "bye", 1, "the server closed the connection normally")]


async def test_1012_reconnects_after_a_short_random_delay() -> None:
    class Restart(rules.Rule):
        """Closes with 1012 on "restart", the way a draining server does."""

        def checker(self, conn):
            restart = self.breach(1012, "restarting", retry_after=0)
            return lambda message: restart if message.get("text") == "restart" else None

    decisions: list = []
    with serve(WSGuardMiddleware(echo, guard=Guard(rules=[Restart()]))) as server:
        rounds = 0
        async for ws in connect(
            server.url + "/ws", policy=fast_policy(), on_decision=decisions.append
        ):
            rounds += 1
            if rounds == 2:
                assert await echo_once(ws) == "ping"
                break
            await ws.send("restart")
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
    assert len(decisions) == 1
    assert isinstance(decisions[0], Retry)
    assert (decisions[0].code, decisions[0].reason) == (1012, "restarting; retry-after=0")
    assert 0.0 <= decisions[0].delay <= 0.05


async def test_a_refused_tcp_connect_backs_off_then_gives_up() -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"  # nothing listens there
    decisions: list = []
    policy = ReconnectPolicy(
        overrides={1006: Backoff(initial=0.01)}, max_attempts=3, random_source=random.Random(5)
    )
    connections = connect(url, policy=policy, on_decision=decisions.append)
    with pytest.raises(GaveUp) as info:
        await every_connection(connections, expect_refused)  # never called: nothing listens
    assert [(type(d), d.code, d.attempt) for d in decisions] == [
        (Retry, 1006, 1),
        (Retry, 1006, 2),
        (Retry, 1006, 3),
        (Stop, 1006, 4),
    ]
    # attempt n waits within [step, 2 * step], step = 0.01 s * 2 ** (n - 1)
    delays = [d.delay for d in decisions[:3]]
    assert all(0.01 * 2**i <= delay <= 0.02 * 2**i for i, delay in enumerate(delays)), delays
    assert info.value.code == 1006
    assert "gave up after 3 reconnect attempts" in str(info.value)


async def test_a_close_the_client_starts_is_backed_off_like_a_drop() -> None:
    decisions: list = []
    with serve(WSGuardMiddleware(echo, guard=Guard())) as server:
        rounds = 0
        async for ws in connect(
            server.url + "/ws", policy=fast_policy(), on_decision=decisions.append
        ):
            rounds += 1
            if rounds == 1:
                await ws.close()  # our own 1000 is not the server saying "stop"
                continue
            if rounds == 2:
                continue  # asking for the next one while this is open closes it
            break
    assert [(type(d), d.code, d.attempt) for d in decisions] == [(Retry, 1006, 1), (Retry, 1006, 2)]


async def test_leaving_the_loop_and_aclose_closes_the_connection() -> None:
    guard = Guard()
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        connections = connect(server.url + "/ws")
        async for ws in connections:
            assert await echo_once(ws) == "ping"
            break
        assert guard.metrics.snapshot().active_connections == 1
        await connections.aclose()
        assert ws.state is websockets.State.CLOSED
        await eventually(lambda: guard.metrics.snapshot().active_connections == 0)
        assert guard.metrics.snapshot().closes_by_code == {1000: 1}


async def test_tokens_never_reach_the_client_log(caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard(rules=[TestToken("query")])
    tokens = iter(["expired-SECRET1", "good-SECRET2"])
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        async with contextlib.aclosing(connect(server.url + "/ws", lambda: next(tokens))) as conns:
            async for ws in conns:
                try:
                    assert await echo_once(ws) == "ping"
                except ConnectionClosed:
                    continue
                break
    client_logs = [r.getMessage() for r in caplog.records if r.name == "ws_guard.client"]
    assert client_logs == [
        "ws_guard client: close code=1008 reason='token_expired' attempt=1: "
        "refresh token, retry in 0.00 s"
    ]
    assert "SECRET" not in caplog.text
