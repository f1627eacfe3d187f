"""Control plane on real uvicorn with the real ``websockets`` client (memory storage).

``guard.disconnect()`` and ``guard.revoke()`` run on the server's loop, as
an app's own code would call them; the client sees the close frame.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.apps import echo
from tests.support.fault_tools import on_server, until
from tests.support.jwt_keys import SECRET, mint
from tests.support.servers import UVICORN_WS, ServerThread, serve
from tests.support.ws_closes import server_close
from ws_guard import Guard, WSGuardMiddleware, rules

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated"),
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated"),
    pytest.mark.filterwarnings("ignore:remove second argument of ws_handler"),
]


def jwt_guard() -> Guard:
    return Guard(
        rules=[rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token"))]
    )


async def echoes(ws: ClientConnection) -> None:
    await ws.send("ping")
    assert await asyncio.wait_for(ws.recv(), 5) == "ping"


async def no_connections(server: ServerThread, guard: Guard) -> None:
    await until(
        lambda: on_server(server, lambda: guard.metrics.snapshot().active_connections == 0),
        what="every connection finished",
    )


@pytest.mark.parametrize("kind", UVICORN_WS)
async def test_disconnect_by_subject_closes_that_users_sockets_only(kind: str) -> None:
    guard = jwt_guard()
    with serve(WSGuardMiddleware(echo, guard=guard), kind) as server:
        url = server.url + "/ws?token="
        async with (
            connect(url + mint("alice")) as a1,
            connect(url + mint("alice")) as a2,
            connect(url + mint("bob")) as bob,
        ):
            for ws in (a1, a2, bob):
                await echoes(ws)
            listed = await on_server(server, guard.connections)
            assert sorted(c.subject for c in listed) == ["alice", "alice", "bob"]
            closed = server.call(guard.disconnect(subject="alice", code=4003, reason="blocked"))
            assert closed == 2
            assert await server_close(a1) == (4003, "blocked")
            assert await server_close(a2) == (4003, "blocked")
            await echoes(bob)
        await no_connections(server, guard)
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"disconnect": 2}
    assert snap.closes[(4003, "disconnect", "server")] == 2
    assert snap.disconnects == 2


async def test_revoke_closes_the_open_socket_and_refuses_the_token_and_its_refresh() -> None:
    guard = jwt_guard()
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws?token="
        token = mint("alice", jti="t-1")
        async with connect(url + token) as ws, connect(url + mint("alice", jti="t-2")) as other:
            await echoes(ws)
            await echoes(other)
            assert server.call(guard.revoke(jti="t-1", until=time.time() + 60)) == 1
            assert await server_close(ws) == (1008, "token_revoked")
            await echoes(other)  # the user's other token still works
            # A refresh to a revoked token closes the connection instead of extending it.
            server.call(guard.revoke(jti="t-3", until=time.time() + 60))
            refresh = mint("alice", jti="t-3", exp_in=7200)
            await other.send(json.dumps({"type": "auth.refresh", "token": refresh}))
            assert await server_close(other) == (1008, "token_revoked")
        async with connect(url + token) as ws:  # the handshake: accept, then close
            assert await server_close(ws) == (1008, "token_revoked")
        await no_connections(server, guard)
    snap = guard.metrics.snapshot()
    assert snap.closes == {
        (1008, "token_revoked", "server"): 1,
        (1008, "token_revoked", "guard"): 2,
    }
    assert (snap.revocations, snap.revocations_in_force, snap.disconnects) == (2, 2, 1)


async def test_autoban_bans_after_n_policy_closes_and_lets_the_key_back_after_the_ban() -> None:
    guard = Guard(
        rules=[
            rules.AutoBan(after=2, within=60, ban=1),
            rules.Content(lambda m: "bad" not in m, name="no_bad"),
        ]
    )
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws"
        for _ in range(2):
            async with connect(url) as ws:
                await ws.send("bad")
                assert await server_close(ws) == (1008, "content:no_bad")
        async with connect(url) as ws:
            assert await server_close(ws) == (1008, "banned; retry-after=1")
        bans = await on_server(server, lambda: guard.ban_store.listing())
        assert [(b.key, b.shadow) for b in bans] == [("127.0.0.1", False)]

        async def admitted() -> bool:
            async with connect(url) as ws:
                try:
                    await ws.send("ping")
                    return await asyncio.wait_for(ws.recv(), 5) == "ping"
                except ConnectionClosed:  # still banned: the accept-then-close
                    return False

        # The ban ends about 1 s after it began: poll on the real condition, bounded.
        waited = await until(admitted, timeout=3.0, what="admitted after the ban")
        assert waited < 2.0
        await no_connections(server, guard)
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule["content:no_bad"] == 2
    assert snap.closes_by_rule["banned"] >= 1
    assert snap.bans == 1
