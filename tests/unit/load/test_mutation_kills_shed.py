"""Shedding open connections (``load/shedding.py``): what mutation testing found unchecked.

The configuration messages, ``fraction=1`` allowed, a priority that raises
(logged once with the gauge's name, connections still shed, and the timer
keeps its interval), and one tick per interval on the injected clock.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from tests.support.apps import echo
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, load
from ws_guard.testing import ManualClock as Clock
from ws_guard.testing import ScriptedWebSocket


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fraction": 0}, "ShedOpen fraction must be a positive number, not 0"),
        ({"fraction": 1.5}, "ShedOpen fraction must be at most 1, not 1.5"),
        ({"priority": 3}, "ShedOpen priority must be callable, not 3"),
    ],
)
def test_bad_shed_options_name_the_option_and_value(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load.ShedOpen(**options)
    assert str(raised.value) == message


def test_a_fraction_of_one_is_allowed() -> None:
    assert load.ShedOpen(fraction=1).fraction == 1


async def opened(guard: Guard, n: int) -> list[ScriptedWebSocket]:
    clients = []
    for _ in range(n):
        ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
        await ws.connect()
        await ws.expect("websocket.accept")
        clients.append(ws)
    return clients


async def test_a_raising_priority_is_logged_once_sheds_anyway_and_keeps_the_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def priority(conn: Any) -> float:
        raise ZeroDivisionError("bug in the priority")

    clock = Clock(0.0)
    depth = [100.0]  # past the limit from the start
    gauge = load.Gauge(
        lambda: depth[0],
        10,
        name="queue",
        shed_open=load.ShedOpen(after=0.0, fraction=0.5, interval=2.0, priority=priority),
    )
    guard = Guard(load=[gauge], clock=clock)
    await guard.startup()
    depth[0] = 0.0
    clients = await opened(guard, 2)
    depth[0] = 100.0
    with caplog.at_level(logging.ERROR, logger="ws_guard"):
        # The tick reads the clock: move it, then run what is due.
        for t, ticks in ((1.9, 0), (2.0, 1), (3.9, 0), (4.0, 1)):
            clock.now = t
            assert guard.scheduler.run_due() == ticks, t
            await anyio.sleep(0)  # let the close of a shed connection go out
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "ws_guard ShedOpen priority of queue raised ZeroDivisionError('bug in the priority'); "
        "shedding those connections first or newest first"
    ]
    assert errors[0].exc_info is not None
    # A broken order still sheds: one connection per tick (half of those left, at least one).
    assert gauge.open_sheds == 2
    for ws in clients:
        # The close goes out on a task of its own (after any queued notice):
        # wait for the frame itself rather than for a fixed number of turns.
        await ws.expect("websocket.close", code=1013)
        assert ws.closed
        await ws.disconnect(1013)
        await ws.finished()
    await guard.shutdown()
