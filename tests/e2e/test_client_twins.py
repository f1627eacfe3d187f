"""ws_guard.client against a real daphne: the private-range twins decided as their RFC codes.

daphne refuses RFC close codes and drops every reason, so ws_guard sends
the twin (code + 3000) without a reason (docs/servers.md, "daphne"). The
same client code runs against the server-matrix app on daphne and on
uvicorn, and must make the same decisions: a 4008 stops as a 1008 does, a
4013 backs off and reconnects as a 1013 does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.support.server_procs import ServerProcess, server_process
from ws_guard.client import Backoff, Decision, GaveUp, ReconnectPolicy, Retry, Stop, connect

pytestmark = [pytest.mark.e2e]

APP = "tests.support.matrix_app:app"
#: daphne sends twins; uvicorn, the RFC codes: the client must not care.
SERVERS = {"daphne": 3000, "uvicorn-websockets-sansio": 0}


@pytest.fixture(scope="module", params=list(SERVERS))
def served(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    with server_process(request.param, APP) as running:
        yield running


def quick_policy() -> ReconnectPolicy:
    """The default table with a short 1013 back-off (a twin 4013 uses it too)."""
    return ReconnectPolicy(overrides={1013: Backoff(initial=0.05)})


async def test_a_content_breach_stops_as_1008(served: ServerProcess) -> None:
    decisions: list[Decision] = []
    connections = connect(served.url("/ws"), policy=quick_policy(), on_decision=decisions.append)

    async def breach_every_connection() -> None:
        async with contextlib.aclosing(connections):
            async for ws in connections:
                await ws.send("http://x")  # the matrix app's no_links rule
                with contextlib.suppress(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)

    with pytest.raises(GaveUp) as gave_up:
        await breach_every_connection()
    expected = ReconnectPolicy().decide(1008, "", 1)
    assert isinstance(expected, Stop)
    code = 1008 + SERVERS[served.server]
    reason = "" if SERVERS[served.server] else "content:no_links"
    assert decisions == [Stop(code, reason, 1, expected.why)]
    assert gave_up.value.decision == decisions[0]


async def test_a_shed_handshake_backs_off_and_reconnects_as_1013(served: ServerProcess) -> None:
    decisions: list[Decision] = []
    holder = await websockets.connect(served.url("/shed"))  # takes the only slot
    await holder.send("a")
    assert await holder.recv() == "a"

    def on_decision(decision: Decision) -> None:
        decisions.append(decision)
        asyncio.get_running_loop().create_task(holder.close())  # frees the slot

    connections = connect(served.url("/shed"), policy=quick_policy(), on_decision=on_decision)
    async with contextlib.aclosing(connections):
        async for ws in connections:
            try:
                await ws.send("admitted")
                assert await asyncio.wait_for(ws.recv(), 5) == "admitted"
            except ConnectionClosed:
                continue
            break
    (decision,) = decisions
    assert isinstance(decision, Retry)
    assert (decision.code, decision.attempt) == (1013 + SERVERS[served.server], 1)
    if SERVERS[served.server]:
        assert decision.reason == ""  # daphne drops it: the back-off is the policy's own
        assert 0.05 <= decision.delay <= 0.1
    else:
        assert decision.reason.startswith("overloaded; retry-after=")
