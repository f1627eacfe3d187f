"""The first guarded handshake imports nothing: no blocking work on a connection's path.

An import on the event loop blocks every connection on it (importing
``limits.storage`` took ~50 ms, flagged by Starlette's blocking-call
checker). ws_guard imports at construction, so even under a server without
lifespan, where the guard starts on its first connection, the first
handshake and message import no module.

Each case runs in a fresh interpreter (the test process has imported
everything already): a real uvicorn serves a guarded app, a first
connection to an unguarded path lets uvicorn do its own first-connection
imports, and then ``sys.modules`` is compared around the first guarded
connection.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.children import running
from tests.support.paths import SERVER_PATH
from tests.support.redis_server import redis_server

pytestmark = pytest.mark.e2e


PROBE = r"""
import asyncio, json, sys, time
import jwt as pyjwt
from websockets.asyncio.client import connect
from tests.support.servers import serve
from ws_guard import Guard, WSGuardMiddleware, load, rules

storage, lifespan = sys.argv[1], sys.argv[2]
SECRET = "s" * 32

seen = {}

async def app(scope, receive, send):
    if scope["type"] != "websocket":
        return  # no lifespan support: the guard starts on its first connection
    # Read in the server's event loop: started means started in that loop.
    seen["started"] = guard.started
    await receive()
    await send({"type": "websocket.accept"})
    while (await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": "echo"})

guard = Guard(
    rules=[
        rules.MaxMessageSize(1024),
        rules.MessageTypes(text=True, binary=False),
        rules.Content(lambda m: True, name="ok"),
        rules.MessageRate("20/second"),
        rules.MessageRate("600/minute", key=rules.by_user),
        rules.ConnectRate("10/minute", key=rules.by_ip),
        rules.MaxConnectionsPerKey(3, key=rules.by_user),
        rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token")),
    ] if storage != "none" else [],
    load=[load.ConnectionCount(limit=100), load.EventLoopLag(limit=0.25)],
    storage="memory://" if storage == "none" else storage,
    paths=["/ws"],
)
token = pyjwt.encode({"sub": "u", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")

async def main():
    with serve(WSGuardMiddleware(app, guard=guard), lifespan=lifespan) as server:
        async with connect(server.url + "/warm") as ws:
            await ws.send("x")
            await ws.recv()
        before = set(sys.modules)
        async with connect(server.url + "/ws?token=" + token) as ws:
            await ws.send("x")
            await ws.recv()
        new = sorted(set(sys.modules) - before)
        print(json.dumps({"started": seen.get("started"), "new": new}))

asyncio.run(main())
"""


def first_connection_imports(storage: str, lifespan: str) -> dict[str, object]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SERVER_PATH
    with running(
        [sys.executable, "-c", PROBE, storage, lifespan],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as probe:
        out, err = probe.communicate(timeout=60)
    assert probe.returncode == 0, err.decode()
    result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("lifespan", ["off", "on"])
@pytest.mark.parametrize("storage", ["none", "memory://"])
def test_the_first_guarded_connection_imports_no_module(storage: str, lifespan: str) -> None:
    assert first_connection_imports(storage, lifespan) == {"started": True, "new": []}


def test_the_first_connection_with_redis_storage_imports_no_module() -> None:
    with redis_server() as redis:
        assert first_connection_imports(redis.url, "off") == {"started": True, "new": []}
