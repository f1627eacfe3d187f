"""Expiry deadlines on the real loop clock: connections with one exp share one loop timer."""

from __future__ import annotations

from tests.support.apps import echo
from tests.support.jwt_keys import SECRET, mint
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket


async def test_connections_with_the_same_exp_share_one_loop_timer() -> None:
    guard = Guard(rules=[rules.JWTAuth(SECRET, algorithms=["HS256"])], app_exit_timeout=None)
    app = WSGuardMiddleware(echo, guard=guard)
    token = mint(exp_in=600)
    sockets = []
    timers = set()
    for _ in range(30):
        ws = ScriptedWebSocket(app, headers=[(b"authorization", f"Bearer {token}".encode())])
        await ws.connect()
        await ws.expect("websocket.accept")
        sockets.append(ws)
        timers.add(id(guard.scheduler._timer))
    # One deadline each, on one millisecond: the first connection's timer
    # serves them all (the clock reads' jitter would otherwise re-arm it
    # for about every other connection).
    assert len(guard.scheduler) == 30
    assert len(timers) == 1
    (when,) = {d.when for d in guard.scheduler._heap}
    assert abs(when * 1000 - round(when * 1000)) < 1e-6  # on the millisecond grid
    for ws in sockets:
        await ws.disconnect()
        await ws.finished()
    assert len(guard.scheduler) == 0
    assert not guard.scheduler.timer_armed
