"""IdleTimeout and MaxLifetime in process, on an injected clock: exact deadlines, no sleeps."""

from __future__ import annotations

import asyncio
import math
import random

import anyio
import pytest

from tests.support.apps import echo
from tests.support.helpers import FixedRandom, sent_close
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard.testing import ManualClock, ScriptedWebSocket
from ws_guard.types import Message, Receive, Scope, Send

IDLE = {"type": "websocket.close", "code": 1001, "reason": "idle_timeout"}


async def settle() -> None:
    """Let the close tasks a deadline spawned run (they are in-process, no I/O)."""
    for _ in range(5):
        await anyio.sleep(0)


async def opened(guard: Guard, app: object = echo) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(WSGuardMiddleware(app, guard=guard))  # type: ignore[arg-type]
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def echo_round(ws: ScriptedWebSocket, text: str) -> None:
    await ws.send_text(text)
    await ws.expect("websocket.send", text=text)


async def leave(*clients: ScriptedWebSocket) -> None:
    """Each client leaves, answering a guard close with its code as real clients do."""
    for ws in clients:
        close = sent_close(ws)
        await ws.disconnect(1000 if close is None else close["code"])
        await ws.finished()


# -- IdleTimeout ------------------------------------------------------------------------
async def test_idle_connection_closes_exactly_at_its_deadline() -> None:
    clock = ManualClock(100.0)
    guard = Guard(rules=[rules.IdleTimeout(5)], clock=clock)
    ws = await opened(guard)
    assert len(guard.scheduler) == 1
    assert guard.scheduler.run_due(104.999) == 0
    await settle()
    assert not ws.closed
    clock.now = 105.0
    assert guard.scheduler.run_due() == 1
    assert await ws.next() == IDLE
    await ws.disconnect(1001)
    await ws.finished()
    snap = guard.metrics.snapshot()
    assert snap.closes_by_code == {1001: 1}
    assert snap.closes_by_rule == {"idle_timeout": 1}
    assert len(guard.scheduler) == 0


async def test_a_message_moves_the_deadline_to_last_message_plus_seconds() -> None:
    clock = ManualClock(100.0)
    guard = Guard(rules=[rules.IdleTimeout(5)], clock=clock)
    ws = await opened(guard)
    clock.now = 103.0
    await echo_round(ws, "hi")  # idle again from 103: the end moves to 108
    clock.now = 105.0
    assert guard.scheduler.run_due() == 1  # the first deadline fires and re-arms
    assert len(guard.scheduler) == 1
    assert guard.scheduler.run_due(107.999) == 0
    await settle()
    assert not ws.closed
    clock.now = 106.5
    await echo_round(ws, "again")  # the end moves to 111.5, no new deadline yet
    assert len(guard.scheduler) == 1
    clock.now = 108.0
    assert guard.scheduler.run_due() == 1
    clock.now = 111.499
    assert guard.scheduler.run_due() == 0
    clock.now = 111.5
    assert guard.scheduler.run_due() == 1
    assert await ws.next() == IDLE
    await leave(ws)


async def test_app_sends_are_not_activity() -> None:
    """A server that streams to a client that never writes still closes it as idle."""
    clock = ManualClock(100.0)
    guard = Guard(rules=[rules.IdleTimeout(5)], clock=clock)
    go = anyio.Event()

    async def pusher(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await go.wait()
        await send({"type": "websocket.send", "text": "tick"})
        message = await receive()
        assert message == {"type": "websocket.disconnect", "code": 1001, "reason": "idle_timeout"}

    ws = await opened(guard, pusher)
    clock.now = 104.0
    go.set()
    assert await ws.next() == {"type": "websocket.send", "text": "tick"}
    clock.now = 105.0
    assert guard.scheduler.run_due() == 1
    assert await ws.next() == IDLE
    await leave(ws)


async def test_idle_clock_starts_at_admission_an_app_that_never_accepts_is_idle() -> None:
    clock = ManualClock(100.0)
    guard = Guard(rules=[rules.IdleTimeout(5)], clock=clock)
    never = anyio.Event()

    async def never_accepts(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await never.wait()

    ws = ScriptedWebSocket(WSGuardMiddleware(never_accepts, guard=guard))
    await ws.connect()
    await settle()
    assert [d.when for d in guard.scheduler._heap if not d.cancelled] == [105.0]
    clock.now = 105.0
    assert guard.scheduler.run_due() == 1
    # Accepted by ws_guard and closed, so that a browser can read the code.
    await ws.expect("websocket.accept")
    assert await ws.next() == IDLE
    never.set()
    await leave(ws)
    assert guard.metrics.snapshot().closes_by_rule == {"idle_timeout": 1}


async def test_shadow_idle_counts_once_per_idle_stretch_and_keeps_the_connection() -> None:
    clock = ManualClock(100.0)
    guard = Guard(rules=[rules.IdleTimeout(5, enforce=False, name="idle")], clock=clock)
    ws = await opened(guard)
    for now in (105.0, 110.0, 115.0):  # one stretch: counted once, still watched
        clock.now = now
        assert guard.scheduler.run_due() == 1
        await settle()
    assert not ws.closed
    assert guard.metrics.snapshot().shadow_breaches_by_rule == {"idle": 1}
    assert len(guard.scheduler) == 1
    clock.now = 116.0
    await echo_round(ws, "back")  # a new stretch from 116: counted again at 121
    for now, count in ((120.0, 1), (121.0, 2), (126.0, 2)):
        clock.now = now
        guard.scheduler.run_due()
        await settle()
        assert guard.metrics.snapshot().shadow_breaches_by_rule == {"idle": count}, now
    assert not ws.closed
    await echo_round(ws, "still open")
    await leave(ws)
    assert guard.metrics.snapshot().closes_by_code == {1000: 1}
    assert len(guard.scheduler) == 0


async def test_deadlines_are_cancelled_when_the_client_leaves() -> None:
    clock = ManualClock(100.0)
    guard = Guard(rules=[rules.IdleTimeout(5), rules.MaxLifetime(60)], clock=clock)
    clients = [await opened(guard) for _ in range(3)]
    assert len(guard.scheduler) == 6
    await leave(*clients)
    assert len(guard.scheduler) == 0
    clock.now = 1000.0
    assert guard.scheduler.run_due() == 0
    assert guard.metrics.snapshot().closes_by_code == {1000: 3}


async def test_re_arming_keeps_the_connections_deadline_list_short() -> None:
    clock = ManualClock(100.0)
    guard = Guard(rules=[rules.IdleTimeout(5)], clock=clock)
    ws = await opened(guard)
    (conn,) = guard.live_connections
    for period in range(1, 50):  # a message every period: one re-arm each
        clock.now = 100.0 + 5 * period - 1
        await echo_round(ws, "x")
        clock.now = 100.0 + 5 * period
        assert guard.scheduler.run_due() == 1
    assert len(guard.scheduler) == 1
    assert conn._deadlines is not None
    assert len(conn._deadlines) <= 8
    await leave(ws)


@pytest.mark.asyncio_only  # counts handles in asyncio's timer heap; trio has no call_at
async def test_many_idle_connections_arm_one_loop_timer() -> None:
    """Real clock: 200 connections with both rules hold 400 deadlines and one timer."""
    guard = Guard(rules=[rules.IdleTimeout(60), rules.MaxLifetime(120)])
    loop = asyncio.get_running_loop()

    def our_timers() -> int:
        fire = guard.scheduler._fire
        scheduled = loop._scheduled  # type: ignore[attr-defined]
        return sum(1 for h in scheduled if not h.cancelled() and h._callback == fire)

    clients = [await opened(guard) for _ in range(200)]
    assert len(guard.scheduler) == 400
    assert guard.scheduler.timer_armed
    assert our_timers() == 1
    await leave(*clients)
    assert len(guard.scheduler) == 0
    assert not guard.scheduler.timer_armed
    assert our_timers() == 0


# -- MaxLifetime ------------------------------------------------------------------------
async def test_lifetime_ends_at_seconds_plus_the_drawn_jitter_with_a_drawn_hint() -> None:
    clock = ManualClock(100.0)
    rule = rules.MaxLifetime(100, random_source=FixedRandom(0.5))  # jitter 10, hint <= 5
    guard = Guard(rules=[rule], clock=clock)
    ws = await opened(guard)
    assert guard.scheduler.run_due(204.999) == 0  # 100 + 100 + 0.5 * 10
    await echo_round(ws, "alive")
    clock.now = 205.0
    assert guard.scheduler.run_due() == 1
    close = {"type": "websocket.close", "code": 1001, "reason": "max_lifetime; retry-after=2.5"}
    assert await ws.next() == close
    await leave(ws)
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"max_lifetime": 1}
    assert snap.closes_by_code == {1001: 1}


async def test_lifetime_uses_the_guards_random_source_and_its_own_label() -> None:
    clock = ManualClock(0.0)
    rule = rules.MaxLifetime(10, jitter=2, retry_after=1, name="rotate")
    guard = Guard(rules=[rule], clock=clock, random_source=FixedRandom(0.25))
    ws = await opened(guard)
    clock.now = 10.5
    assert guard.scheduler.run_due() == 1
    close = {"type": "websocket.close", "code": 1001, "reason": "max_lifetime; retry-after=0.3"}
    assert await ws.next() == close  # 0.25 s rounded up to a tenth: never early
    await leave(ws)
    assert guard.metrics.snapshot().closes_by_rule == {"rotate": 1}


async def test_lifetimes_spread_over_the_jitter_window() -> None:
    clock = ManualClock(0.0)
    rule = rules.MaxLifetime(100, jitter=20, random_source=random.Random(7))
    guard = Guard(rules=[rule], clock=clock)
    clients = [await opened(guard) for _ in range(20)]
    ends = sorted(d.when for d in guard.scheduler._heap if not d.cancelled)
    assert len(set(ends)) == 20
    assert ends[0] >= 100.0
    assert ends[-1] <= 120.0
    assert ends[-1] - ends[0] > 10.0  # spread, not bunched
    clock.now = ends[9]
    assert guard.scheduler.run_due() == 10
    await settle()
    assert sum(ws.closed for ws in clients) == 10
    await leave(*clients)


async def test_shadow_lifetime_is_counted_once_and_the_connection_stays() -> None:
    clock = ManualClock(0.0)
    rule = rules.MaxLifetime(10, jitter=0, enforce=False)
    guard = Guard(rules=[rule], clock=clock)
    ws = await opened(guard)
    clock.now = 10.0
    assert guard.scheduler.run_due() == 1
    await settle()
    assert len(guard.scheduler) == 0
    await echo_round(ws, "still here")
    assert guard.metrics.snapshot().shadow_breaches_by_rule == {"max_lifetime": 1}
    await leave(ws)


async def test_both_rules_together_the_earlier_end_wins() -> None:
    clock = ManualClock(0.0)
    lifetime = rules.MaxLifetime(8, jitter=0, random_source=FixedRandom(0.0))
    guard = Guard(rules=[rules.IdleTimeout(5), lifetime], clock=clock)
    ws = await opened(guard)
    clock.now = 4.0
    await echo_round(ws, "a")  # idle end moves to 9; lifetime ends at 8
    clock.now = 8.0
    assert guard.scheduler.run_due() == 2
    close: Message = await ws.next()
    assert close == {
        "type": "websocket.close",
        "code": 1001,
        "reason": "max_lifetime; retry-after=0",
    }
    await leave(ws)
    assert len(guard.scheduler) == 0


# -- configuration ----------------------------------------------------------------------
@pytest.mark.parametrize("seconds", [0, -1, math.nan, math.inf, True, "5", None, 86_401, 300_000])
def test_bad_seconds_are_refused_naming_the_value(seconds: object) -> None:
    for make in (rules.IdleTimeout, rules.MaxLifetime):
        with pytest.raises(ConfigurationError) as caught:
            make(seconds)  # type: ignore[arg-type]
        text = str(caught.value)
        assert "seconds" in text
        assert repr(seconds) in text or f"{seconds:.0f}" in text


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"jitter": -1}, "-1"),
        ({"jitter": 61}, "61"),
        ({"jitter": math.nan}, "nan"),
        ({"retry_after": -0.5}, "-0.5"),
        ({"retry_after": 601}, "601"),
        ({"random_source": "seeded"}, "'seeded'"),
        ({"enforce": "no"}, "'no'"),
        ({"name": ""}, "''"),
    ],
)
def test_bad_lifetime_settings_are_refused(kwargs: dict[str, object], shown: str) -> None:
    with pytest.raises(ConfigurationError, match=shown):
        rules.MaxLifetime(60, **kwargs)  # type: ignore[arg-type]


def test_defaults() -> None:
    rule = rules.MaxLifetime(3600)
    assert (rule.seconds, rule.jitter, rule.retry_after) == (3600.0, 360.0, 5.0)
    assert rules.MaxLifetime(60, jitter=0).jitter == 0.0
    idle = rules.IdleTimeout(30)
    assert idle.seconds == 30.0
    assert idle.timed_out.reason == "idle_timeout"
    assert idle.timed_out.code == 1001
