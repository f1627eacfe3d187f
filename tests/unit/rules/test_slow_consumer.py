"""``rules.SlowConsumer``: a send that waits too long for the client, on an injected clock.

The server here holds each send until the test makes it writable, as
uvicorn's websockets-sansio and wsproto stacks wait on ``writable`` while
the transport's buffer is full. Runs on asyncio and trio.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import anyio
import pytest

from tests.support.helpers import websocket_scope
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard._core.tasks import Job, on_asyncio, spawn, wait_done
from ws_guard.errors import ConfigurationError
from ws_guard.testing import ManualClock
from ws_guard.types import ASGIApp, Message

SLOW_CLOSE = {"type": "websocket.close", "code": 1008, "reason": "slow_consumer"}
SLOW_DISCONNECT = {"type": "websocket.disconnect", "code": 1008, "reason": "slow_consumer"}


class StallingServer:
    """One connection whose sends wait while the client is not reading.

    ``stall()`` fills the client's buffer: every later send waits until
    ``drain()``. ``sent`` is what reached the client, in order.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.sent: list[Message] = []
        self.writable = anyio.Event()
        self.writable.set()
        self.incoming: list[Message] = [{"type": "websocket.connect"}]
        self.more = anyio.Event()
        self.task: Job[Any] | None = None

    def stall(self) -> None:
        self.writable = anyio.Event()

    def drain(self) -> None:
        self.writable.set()

    async def receive(self) -> Message:
        while not self.incoming:
            self.more = anyio.Event()
            await self.more.wait()
        return self.incoming.pop(0)

    async def send(self, message: Message) -> None:
        await self.writable.wait()  # what uvicorn's sansio stack does first
        self.sent.append(message)

    def start(self) -> None:
        self.task = spawn(self.app(websocket_scope(), self.receive, self.send))

    async def finished(self) -> None:
        assert self.task is not None
        with anyio.fail_after(3):
            await wait_done(self.task)
        self.task.result()


class Streamer:
    """An app that accepts, sends each of ``messages`` when told, then reads once."""

    def __init__(self) -> None:
        self.go = anyio.Event()
        self.returned: list[str] = []
        self.received: list[Message] = []
        self.send_used: Any = None
        self.queue: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.send_used = send
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            while not self.queue:
                self.go = anyio.Event()
                await self.go.wait()
            text = self.queue.pop(0)
            if text == "read":
                self.received.append(await receive())
                return
            await send({"type": "websocket.send", "text": text})
            self.returned.append(text)

    def push(self, *texts: str) -> None:
        self.queue.extend(texts)
        self.go.set()


async def settle() -> None:
    for _ in range(20):
        await anyio.sleep(0)


async def until(condition: Any, what: str) -> None:
    with anyio.fail_after(2):
        while not condition():
            await anyio.sleep(0)
    assert condition(), what


async def advance(guard: Guard, clock: ManualClock, to: float, step: float = 0.01) -> None:
    """Move the clock to *to* in small steps, running what is due at each.

    What the loop's timer does: a deadline runs (about) when it is due, not
    at the end of a long jump.
    """
    while clock.now + step < to:
        clock.now = round(clock.now + step, 6)
        guard.scheduler.run_due()
        await settle()
    clock.now = to
    guard.scheduler.run_due()
    await settle()


def start(guard: Guard) -> tuple[StallingServer, Streamer]:
    app = Streamer()
    server = StallingServer(WSGuardMiddleware(app, guard=guard))
    server.start()
    return server, app


async def test_a_send_waiting_past_the_limit_closes_1008_and_returns_dropped() -> None:
    clock = ManualClock(100.0)
    guard = Guard(rules=[rules.SlowConsumer(2.0)], clock=clock)
    server, app = start(guard)
    app.push("a")  # returns at once; arms the deadline for a look at 100.5
    await until(lambda: app.returned == ["a"], "first send returned")
    await advance(guard, clock, 100.5)  # the look finds nothing pending and stops
    assert len(guard.scheduler) == 0
    server.stall()
    app.push("b")  # arms again, stamped exactly: 100.5
    await settle()
    await advance(guard, clock, 102.49)
    assert app.returned == ["a"]  # still waiting, under the limit
    assert guard.metrics.snapshot().closes_by_rule == {}
    await advance(guard, clock, 102.5)
    await until(lambda: app.returned == ["a", "b"], "the pending send returned")
    app.push("c", "read")  # a send after the close is dropped; the read sees the close
    await until(lambda: app.received != [], "the app's read returned")
    assert app.received == [SLOW_DISCONNECT]
    server.drain()  # the client reads again: the close frame is the next thing it gets
    await server.finished()
    assert server.sent == [
        {"type": "websocket.accept"},
        {"type": "websocket.send", "text": "a"},
        SLOW_CLOSE,
    ]
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_code) == {1008: 1}
    assert dict(snap.closes_by_rule) == {"slow_consumer": 1}
    assert dict(snap.closes_by_initiator) == {"guard": 1}
    assert snap.dropped_sends == 2  # "b", ended by the guard, and "c"
    assert snap.active_connections == 0
    assert len(guard.scheduler) == 0


async def test_a_send_seen_at_the_next_look_closes_at_most_a_quarter_limit_late() -> None:
    clock = ManualClock(100.0)
    guard = Guard(rules=[rules.SlowConsumer(2.0)], clock=clock)
    server, app = start(guard)
    app.push("a")  # arms the deadline: a look at 100.5
    await until(lambda: app.returned == ["a"], "first send returned")
    clock.now = 100.2
    server.stall()
    app.push("b")  # starts at 100.2 under the armed deadline: no clock read, not stamped
    await settle()
    await advance(guard, clock, 102.49)  # stamped at the 100.5 look: never closed early
    assert guard.metrics.snapshot().closes_by_rule == {}
    await advance(guard, clock, 102.5)  # 2.3 s after it started: within 2 + 2 / 4
    await until(lambda: app.returned == ["a", "b"], "the pending send returned")
    assert dict(guard.metrics.snapshot().closes_by_rule) == {"slow_consumer": 1}
    app.push("read")
    server.drain()
    await server.finished()
    assert app.received == [SLOW_DISCONNECT]


async def test_sends_that_each_wait_under_the_limit_never_close() -> None:
    clock = ManualClock(100.0)
    guard = Guard(rules=[rules.SlowConsumer(2.0)], clock=clock)
    server, app = start(guard)
    for i in range(6):  # each waits 1.5 s: 9 s of waiting in all, never 2 s at once
        server.stall()
        app.push(f"m{i}")
        await settle()
        clock.now += 1.5
        guard.scheduler.run_due()
        server.drain()
        await until(lambda i=i: len(app.returned) == i + 1, "send returned")
        assert len(guard.scheduler) <= 1  # one deadline per connection, never one per send
    app.push("read")
    await settle()
    assert guard.metrics.snapshot().closes_by_rule == {}
    assert app.returned == [f"m{i}" for i in range(6)]
    server.incoming.append({"type": "websocket.disconnect", "code": 1000})
    server.more.set()
    await server.finished()
    assert app.received == [{"type": "websocket.disconnect", "code": 1000}]


async def test_sends_that_return_at_once_cost_one_look_per_quarter_limit() -> None:
    clock = ManualClock(100.0)
    guard = Guard(rules=[rules.SlowConsumer(1.0)], clock=clock)
    server, app = start(guard)
    fired = 0
    for i in range(50):  # 0.1 s apart: 5 s of sending
        app.push(f"m{i}")
        await until(lambda i=i: len(app.returned) == i + 1, "send returned")
        assert len(guard.scheduler) == 1  # one deadline for the connection, never one per send
        clock.now += 0.1
        fired += guard.scheduler.run_due()
    assert 10 <= fired <= 20  # at most one look every 0.25 s, re-armed by the next send
    assert guard.metrics.snapshot().closes_by_rule == {}
    server.incoming.append({"type": "websocket.disconnect", "code": 1000})
    server.more.set()
    app.push("read")
    await server.finished()
    assert len(guard.scheduler) == 0


async def test_shadow_reports_once_and_the_send_keeps_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(100.0)
    guard = Guard(rules=[rules.SlowConsumer(1.0, enforce=False)], clock=clock)
    server, app = start(guard)
    await until(lambda: server.sent == [{"type": "websocket.accept"}], "accepted")
    server.stall()
    app.push("a")
    await settle()
    for now in (101.0, 102.0, 105.0):
        clock.now = now
        guard.scheduler.run_due()
        await settle()
    assert app.returned == []  # not unblocked
    snap = guard.metrics.snapshot()
    assert dict(snap.shadow_breaches_by_rule) == {"slow_consumer": 1}
    assert dict(snap.closes_by_rule) == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "code=1008 rule=slow_consumer" in warnings[0]
    server.drain()
    await until(lambda: app.returned == ["a"], "the send went out once the client read")
    assert server.sent[-1] == {"type": "websocket.send", "text": "a"}
    server.incoming.append({"type": "websocket.disconnect", "code": 1000})
    server.more.set()
    app.push("read")
    await server.finished()


async def test_a_shadow_rule_and_an_enforcing_one_each_act_at_their_own_limit() -> None:
    clock = ManualClock(100.0)
    guard = Guard(
        rules=[
            rules.SlowConsumer(3.0, name="slow_close"),
            rules.SlowConsumer(1.0, enforce=False, name="slow_watch"),
        ],
        clock=clock,
    )
    server, app = start(guard)
    await until(lambda: server.sent == [{"type": "websocket.accept"}], "accepted")
    server.stall()
    app.push("a")
    await settle()
    clock.now = 101.0
    guard.scheduler.run_due()
    await settle()
    snap = guard.metrics.snapshot()
    assert (dict(snap.shadow_breaches_by_rule), dict(snap.closes_by_rule)) == (
        {"slow_watch": 1},
        {},
    )
    clock.now = 103.0
    guard.scheduler.run_due()
    await until(lambda: app.returned == ["a"], "the pending send returned")
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_rule) == {"slow_close": 1}
    app.push("read")
    server.drain()
    await server.finished()
    assert app.received == [SLOW_DISCONNECT]
    assert server.sent[-1] == SLOW_CLOSE


async def test_the_cancel_reaches_the_task_that_sends_not_the_handler() -> None:
    clock = ManualClock(100.0)
    guard = Guard(rules=[rules.SlowConsumer(2.0)], clock=clock)
    events: list[object] = []
    go = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})

        async def pusher() -> None:
            await go.wait()
            await send({"type": "websocket.send", "text": "x"})
            events.append("send returned")

        async with anyio.create_task_group() as group:
            group.start_soon(pusher)
            events.append(await receive())  # the handler itself waits on the client

    server = StallingServer(WSGuardMiddleware(app, guard=guard))
    server.start()
    await until(lambda: server.sent == [{"type": "websocket.accept"}], "accepted")
    server.stall()
    go.set()
    await settle()
    clock.now = 102.0
    guard.scheduler.run_due()
    await until(lambda: events == ["send returned"], "the pusher's send returned")
    server.drain()
    await until(lambda: server.sent[-1] == SLOW_CLOSE, "the close frame went out")
    server.incoming.append({"type": "websocket.disconnect", "code": 1008})  # the client's answer
    server.more.set()
    await server.finished()
    assert events == ["send returned", SLOW_DISCONNECT]
    assert server.sent == [{"type": "websocket.accept"}, SLOW_CLOSE]


async def test_without_the_rule_the_app_gets_the_plain_send_path() -> None:
    plain = Guard(rules=[rules.MaxMessageSize(10)])
    watched = Guard(rules=[rules.MaxMessageSize(10), rules.SlowConsumer(5)])
    assert plain.plan.send_rules == ()
    assert [limit for limit, _ in watched.plan.send_rules] == [5.0]
    # The watched send is chosen per backend when the app is called: one task's
    # open sends in the watch's slots on asyncio, a cancel scope each elsewhere.
    watched_name = "send_watched" if on_asyncio() else "send_watched_aside"
    for guard, name in ((plain, "send"), (watched, watched_name)):
        server, app = start(guard)
        await until(lambda s=server: s.sent == [{"type": "websocket.accept"}], "accepted")
        assert app.send_used.__name__ == name
        server.incoming.append({"type": "websocket.disconnect", "code": 1000})
        server.more.set()
        app.push("read")
        await server.finished()


@pytest.mark.parametrize(
    ("seconds", "message"),
    [
        (0, "SlowConsumer seconds must be a positive number of seconds, not 0"),
        (-1.0, "SlowConsumer seconds must be a positive number of seconds, not -1.0"),
        (True, "SlowConsumer seconds must be a positive number of seconds, not True"),
        ("5", "SlowConsumer seconds must be a positive number of seconds, not '5'"),
        (math.nan, "SlowConsumer seconds must be a positive number of seconds, not nan"),
        (math.inf, "SlowConsumer seconds must be a positive number of seconds, not inf"),
        (None, "SlowConsumer seconds must be a positive number of seconds, not None"),
        (5000, "SlowConsumer seconds is in seconds (at most 600); 5000 looks like milliseconds"),
        (1e6, "SlowConsumer seconds is in seconds (at most 600); 1000000 is far too long"),
    ],
)
def test_a_bad_limit_is_refused_with_its_value(seconds: object, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        rules.SlowConsumer(seconds)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_enforce_and_name_are_checked_like_every_rule() -> None:
    with pytest.raises(ConfigurationError, match="enforce must be True or False, not 'no'"):
        rules.SlowConsumer(1, enforce="no")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="rule name must be a non-empty string, not ''"):
        rules.SlowConsumer(1, name="")
    rule = rules.SlowConsumer(1.5, name="stream", enforce=False)
    assert repr(rule) == "SlowConsumer(1.5, name='stream', enforce=False)"


async def test_sends_from_two_tasks_are_each_timed_and_both_end_at_the_close() -> None:
    clock = ManualClock(100.0)
    guard = Guard(rules=[rules.SlowConsumer(2.0)], clock=clock)
    returned: list[str] = []
    go = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})

        async def pusher(text: str, start: anyio.Event) -> None:
            await start.wait()
            await send({"type": "websocket.send", "text": text})
            returned.append(text)

        later = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(pusher, "first", go)
            group.start_soon(pusher, "second", later)
            await go.wait()
            await settle()
            clock.now = 101.0
            later.set()  # the second send starts a second after the first
        returned.append(str(await receive()))

    server = StallingServer(WSGuardMiddleware(app, guard=guard))
    server.start()
    await until(lambda: server.sent == [{"type": "websocket.accept"}], "accepted")
    server.stall()
    go.set()
    await settle()
    clock.now = 101.9
    guard.scheduler.run_due()
    await settle()
    assert returned == []
    clock.now = 102.0  # the first send's limit: both pending sends end
    guard.scheduler.run_due()
    await until(lambda: len(returned) == 3, "both sends and the read returned")
    assert sorted(returned[:2]) == ["first", "second"]
    assert returned[2] == str(SLOW_DISCONNECT)
    server.drain()
    await server.finished()
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_rule) == {"slow_consumer": 1}
    assert snap.dropped_sends == 2
    assert server.sent == [{"type": "websocket.accept"}, SLOW_CLOSE]


async def test_a_send_still_pending_after_another_returned_is_timed_on_its_own() -> None:
    clock = ManualClock(100.0)
    guard = Guard(rules=[rules.SlowConsumer(2.0)], clock=clock)
    returned: list[str] = []
    go = {"first": anyio.Event(), "second": anyio.Event()}
    second_out = anyio.Event()

    class HoldsSecond(StallingServer):
        """Holds the frame "second" after the client reads again, until the test says."""

        async def send(self, message: Message) -> None:
            if message.get("text") == "second":
                await second_out.wait()
            await super().send(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})

        async def pusher(text: str) -> None:
            await go[text].wait()
            await send({"type": "websocket.send", "text": text})
            returned.append(text)

        async with anyio.create_task_group() as group:
            group.start_soon(pusher, "first")
            group.start_soon(pusher, "second")
        returned.append(str(await receive()))

    server = HoldsSecond(WSGuardMiddleware(app, guard=guard))
    server.start()
    await until(lambda: server.sent == [{"type": "websocket.accept"}], "accepted")
    server.stall()
    go["first"].set()  # pending from 100.0
    await settle()
    clock.now = 101.0
    go["second"].set()  # pending from 101.0, while the first still waits
    await settle()
    guard.scheduler.run_due()  # the look due at 100.5, late: "second" stamped 101.0
    server.drain()  # the client reads: "first" goes out, "second" stays held
    await until(lambda: returned == ["first"], "first returned")
    await advance(guard, clock, 102.99)  # past the first send's limit (102.0)
    assert returned == ["first"]  # the second has waited under 2 s
    assert dict(guard.metrics.snapshot().closes_by_rule) == {}
    await advance(guard, clock, 103.0)  # the second's own stamp plus the limit
    await until(lambda: len(returned) == 3, "the second send and the read returned")
    assert returned[1:] == ["second", str(SLOW_DISCONNECT)]
    second_out.set()
    await server.finished()
    assert dict(guard.metrics.snapshot().closes_by_rule) == {"slow_consumer": 1}
    assert server.sent == [
        {"type": "websocket.accept"},
        {"type": "websocket.send", "text": "first"},
        SLOW_CLOSE,
    ]


async def test_a_dropped_send_yields_so_a_send_only_app_cannot_starve_the_loop() -> None:
    clock = ManualClock(100.0)
    guard = Guard(rules=[rules.SlowConsumer(1.0)], clock=clock)
    ticks = [0]
    seen: list[int] = []
    stop = anyio.Event()
    go = anyio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks[0] += 1
            await anyio.sleep(0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await go.wait()
        await send({"type": "websocket.send", "text": "held"})  # ended by the guard
        before = ticks[0]
        for _ in range(50):  # dropped at once: a loop with no await of its own
            await send({"type": "websocket.send", "text": "more"})
        seen.append(ticks[0] - before)

    server = StallingServer(WSGuardMiddleware(app, guard=guard))
    server.start()
    await until(lambda: server.sent == [{"type": "websocket.accept"}], "accepted")
    server.stall()
    go.set()
    await settle()
    ticking = spawn(ticker())
    clock.now = 101.0
    guard.scheduler.run_due()
    await until(lambda: seen != [], "the app's loop ended")
    stop.set()
    await wait_done(ticking)
    server.drain()
    await server.finished()
    assert seen[0] >= 49  # the other task ran between the dropped sends
    assert guard.metrics.snapshot().dropped_sends == 51
