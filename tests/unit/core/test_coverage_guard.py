"""``Guard`` startup from many tasks at once, and lifespan messages it does not know.

A server without lifespan starts the guard on the first connections, which
may arrive together: the rules, gauges and storage start exactly once. The
middleware reads ``lifespan.startup`` and ``lifespan.shutdown`` only; any
other lifespan message (a newer ASGI spec's) goes to the app untouched.
In process.
"""

from __future__ import annotations

import anyio

from tests.support.apps import echo
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket
from ws_guard.types import Message, Receive, Scope, Send


class CountingRule(rules.Rule):
    """Counts its startups and shutdowns; admits everyone."""

    stage = rules.Stage.AUTH

    def __init__(self) -> None:
        super().__init__()
        self.startups = 0
        self.shutdowns = 0

    async def startup(self, guard: Guard) -> None:
        self.startups += 1
        await anyio.sleep(0)  # let the other starters reach the lock meanwhile

    async def shutdown(self, guard: Guard) -> None:
        self.shutdowns += 1


async def test_concurrent_startups_start_the_guard_once() -> None:
    rule = CountingRule()
    guard = Guard(rules=[rule])
    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(guard.startup)
    assert guard.started
    assert rule.startups == 1
    await guard.startup()  # once started, a later call returns at once
    assert rule.startups == 1
    await guard.shutdown()
    assert rule.shutdowns == 1


async def test_first_connections_arriving_together_start_the_guard_once() -> None:
    rule = CountingRule()
    guard = Guard(rules=[rule])
    app = WSGuardMiddleware(echo, guard=guard)
    clients = [ScriptedWebSocket(app) for _ in range(3)]
    for ws in clients:
        await ws.connect()  # no await between them reaches the guard's startup first
    for ws in clients:
        await ws.expect("websocket.accept")
        await ws.disconnect()
        await ws.finished()
    assert rule.startups == 1
    assert guard.metrics.snapshot().handshakes_admitted == 3
    await guard.shutdown()


async def test_an_unknown_lifespan_message_reaches_the_app_untouched() -> None:
    rule = CountingRule()
    guard = Guard(rules=[rule])
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "lifespan.shutdown":
                return

    incoming: list[Message] = [
        {"type": "lifespan.custom", "value": 1},
        {"type": "lifespan.startup"},
        {"type": "lifespan.shutdown"},
    ]

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        raise AssertionError(f"the app sent nothing here, yet {message} arrived")

    middleware = WSGuardMiddleware(app, guard=guard)
    await middleware({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert seen == [
        {"type": "lifespan.custom", "value": 1},
        {"type": "lifespan.startup"},
        {"type": "lifespan.shutdown"},
    ]
    assert (rule.startups, rule.shutdowns) == (1, 1)  # only the two it knows
    assert not guard.started
