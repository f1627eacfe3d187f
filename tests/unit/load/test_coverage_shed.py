"""``ShedOpen`` with nothing to shed: a sustained overload and no open connection.

The timer keeps running while the gauge stays tripped and sheds nothing
(there is nobody to close); the first connection that opens later is shed
at the next interval, as the overload still holds. Handshakes meanwhile are
refused 1013 by the gauge itself. In process, injected clock.
"""

from __future__ import annotations

import re

from tests.support.apps import echo
from tests.support.rate_helpers import Clock
from ws_guard import Guard, WSGuardMiddleware, load
from ws_guard.testing import ScriptedWebSocket

OVERLOADED = re.compile(r"overloaded; retry-after=\d+(?:\.\d)?")


async def test_a_sustained_overload_with_no_open_connection_sheds_nothing() -> None:
    clock = Clock(10.0)
    lag = load.EventLoopLag(
        limit=0.25,
        hold=1.0,
        window=1.0,
        shed_open=load.ShedOpen(after=2.0, fraction=0.5),
        enforce=False,  # shadow: handshakes pass, so a connection can open while tripped
    )
    guard = Guard(load=[lag], clock=clock)
    await guard.startup()
    for t in (10.0, 11.0, 12.0, 13.0, 14.0):  # tripped since t=10, sustained from t=12
        clock.now = t
        lag.record(t, 0.5)
        guard.scheduler.run_due()
    reading = guard.metrics.snapshot().gauges[0]
    assert (reading.open_sheds, reading.shadow_sheds) == (0, 0)  # nobody to shed
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    reading = guard.metrics.snapshot().gauges[0]
    assert (reading.open_sheds, reading.shadow_sheds) == (0, 1)  # the handshake, in shadow
    clock.now = 15.0
    lag.record(15.0, 0.5)
    guard.scheduler.run_due()  # the timer still runs: the one open connection is chosen
    reading = guard.metrics.snapshot().gauges[0]
    assert (reading.open_sheds, reading.shadow_sheds) == (0, 2)  # shadow: counted, not closed
    await ws.send_text("still here")
    await ws.expect("websocket.send", text="still here")
    await ws.disconnect()
    await ws.finished()
    await guard.shutdown()
