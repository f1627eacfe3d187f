"""Headless Chromium driven over the DevTools protocol, for browser tests.

The browser is Debian's ``chromium``, started with a fresh profile and
``--remote-debugging-port=0``; the port it picks is read from the
``DevToolsActivePort`` file, and the page is driven with the real
``websockets`` client: ``Runtime.evaluate`` runs an expression in the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import websockets

from services import require_binary

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
)


class Page:
    """One page target; :meth:`evaluate` returns the expression's value."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def evaluate(self, expression: str, *, await_promise: bool = False) -> Any:
        call_id = next(self._ids)
        params = {"expression": expression, "returnByValue": True, "awaitPromise": await_promise}
        await self.ws.send(
            json.dumps({"id": call_id, "method": "Runtime.evaluate", "params": params})
        )
        while True:
            reply = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if reply.get("id") != call_id:
                continue  # an event
            if "error" in reply:
                raise RuntimeError(f"DevTools error: {reply['error']}")
            result = reply["result"]
            if "exceptionDetails" in result:
                raise RuntimeError(f"page raised: {result['exceptionDetails']}")
            return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float) -> Any:
        """Poll *expression* until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still falsy after {timeout} s")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def open_page(url: str) -> AsyncIterator[Page]:
    """Start headless Chromium on *url* and connect to the page over DevTools."""
    binary = require_binary("chromium")
    with tempfile.TemporaryDirectory(prefix="ws-guard-chromium-") as profile:
        process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its helpers share the group we end below
        )
        try:
            port = await _devtools_port(Path(profile) / "DevToolsActivePort", process)
            target = await _page_target(port, url)
            async with websockets.connect(target, max_size=None) as ws:
                yield Page(ws)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


async def _devtools_port(path: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int(path.read_text().splitlines()[0])
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode} before DevTools was up")
        if time.monotonic() > deadline:
            raise RuntimeError("chromium did not open its DevTools port within 30 s")
        await asyncio.sleep(0.05)


async def _page_target(port: int, url: str) -> str:
    deadline = time.monotonic() + 15
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as reply:
            targets = json.load(reply)
        for target in targets:
            if target.get("type") == "page" and target.get("url", "").startswith(url):
                return str(target["webSocketDebuggerUrl"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"no page target for {url} in {targets}")
        await asyncio.sleep(0.05)
