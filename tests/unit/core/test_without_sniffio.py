"""ws_guard needs no sniffio: anyio does not depend on it, only trio does.

A plain ``pip install ws-guard`` has anyio, limits and PyJWT; sniffio comes
only with trio. Without it only asyncio can be running, and ws_guard must
import and guard connections there. A fresh interpreter with sniffio made
unimportable runs a guarded connection through ``ws_guard.testing``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.children import running

SRC = Path(__file__).resolve().parents[3] / "src"

PROBE = r"""
import sys
sys.modules["sniffio"] = None  # import sniffio now raises ModuleNotFoundError
import asyncio
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard._core import tasks as _tasks
from ws_guard.testing import ScriptedWebSocket

assert _tasks._sniffio is None
assert _tasks.current_run() is None

async def echo(scope, receive, send):
    await receive()
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message.get("text")})

async def main():
    assert _tasks.backend() == "asyncio"
    guard = Guard(rules=[rules.MaxMessageSize(4)])
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("hi")
    await ws.expect("websocket.send", text="hi")
    await ws.send_text("too long")
    await ws.expect("websocket.close", code=1009, reason="message_too_big")
    await ws.finished()
    print(dict(guard.metrics.snapshot().closes_by_code))

asyncio.run(main())
try:
    _tasks.backend()
except RuntimeError:
    print("outside a loop: RuntimeError")
"""


def test_ws_guard_guards_on_asyncio_without_sniffio() -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    with running(
        [sys.executable, "-c", PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as probe:
        out, err = probe.communicate(timeout=60)
    assert probe.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["{1009: 1}", "outside a loop: RuntimeError"]
