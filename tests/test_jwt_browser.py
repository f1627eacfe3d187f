"""The subprotocol token source in a real browser (headless Chromium over DevTools).

Browsers can set no header on a WebSocket except ``Sec-WebSocket-Protocol``,
and they fail a handshake whose response picks none of the offered
subprotocols: the page then sees 1006 and no reason. These tests check that a
browser gets in with ``["access_token", jwt]``, and that a refused or expired
token reaches the page as 1008 with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from jwt_apps import whoami
from jwt_keys import SECRET, mint
from servers import ServerThread, serve
from services import require_binary
from ws_guard import Guard, WSGuardMiddleware, rules

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

# Opens a socket from the page and resolves with what the page could observe.
SCRIPT = """
new Promise((resolve) => {
  const seen = {messages: []};
  const ws = new WebSocket(%(url)s, %(protocols)s);
  ws.onopen = () => { seen.protocol = ws.protocol; if (%(say)s) ws.send("hi"); };
  ws.onmessage = (e) => {
    seen.messages.push(e.data);
    if (%(leave)s && seen.messages.length == 2) ws.close(1000);
  };
  ws.onclose = (e) => { seen.code = e.code; seen.reason = e.reason; resolve(seen); };
})
"""


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_subprotocol())
    with serve(WSGuardMiddleware(whoami, guard=Guard(rules=[rule]))) as thread:
        yield thread


@contextlib.asynccontextmanager
async def page() -> AsyncIterator[Any]:
    binary = require_binary("chromium")
    with tempfile.TemporaryDirectory() as profile:
        process = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 20
            while not port_file.exists() or not port_file.read_text().strip():
                assert process.poll() is None, "chromium exited early"
                assert time.monotonic() < deadline, "chromium did not open its DevTools port"
                await asyncio.sleep(0.05)
            port = port_file.read_text().split()[0]
            async with httpx.AsyncClient() as http:
                targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
            target = next(t for t in targets if t["type"] == "page")
            async with connect(target["webSocketDebuggerUrl"], proxy=None, max_size=None) as ws:
                yield ws
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


_ids = itertools.count(1)


async def run_in_page(devtools: Any, url: str, protocols: list[str], *, say: bool) -> dict:
    expression = SCRIPT % {
        "url": json.dumps(url),
        "protocols": json.dumps(protocols),
        "say": "true" if say else "false",
        "leave": "true" if say else "false",
    }
    ident = next(_ids)
    await devtools.send(
        json.dumps(
            {
                "id": ident,
                "method": "Runtime.evaluate",
                "params": {"expression": expression, "awaitPromise": True, "returnByValue": True},
            }
        )
    )
    while True:
        reply = json.loads(await asyncio.wait_for(devtools.recv(), 15))
        if reply.get("id") == ident:
            return dict(reply["result"]["result"]["value"])


async def test_browser_subprotocol_token(server: ServerThread) -> None:
    url = f"{server.url}/ws"
    async with page() as devtools:
        ok = await run_in_page(devtools, url, ["access_token", mint("browser")], say=True)
        assert ok["protocol"] == "access_token"
        assert json.loads(ok["messages"][0])["sub"] == "browser"
        assert ok["messages"][1] == "hi"
        assert ok["code"] == 1000

        expired = await run_in_page(devtools, url, ["access_token", mint(exp_in=-1)], say=False)
        assert (expired["code"], expired["reason"]) == (1008, "token_expired")

        started = time.time()
        token = mint("soon", exp_in=2)
        live = await run_in_page(devtools, url, ["access_token", token], say=False)
        assert (live["code"], live["reason"]) == (1008, "token_expired")
        assert time.time() - started < 3.5
