"""A real headless Chromium driven over the DevTools protocol, for browser tests.

The browser is Debian's ``chromium``, started with a fresh profile and
``--remote-debugging-port=0``; Chromium writes the port it chose into
``DevToolsActivePort`` in the profile, and the test drives the page with the
real ``websockets`` client: ``Runtime.evaluate`` runs an expression in the
page, ``Page.navigate`` loads another URL, ``Page.captureScreenshot`` takes a
picture. A missing binary skips the test (fails it in CI), see ``services``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import websockets

from tests.support.children import spawn, stop
from tests.support.services import require_binary

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--no-default-browser-check",
    "--window-size=1200,900",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)

_TRUTHY = object()  # wait_for's default: any truthy value


class Page:
    """One page target: call DevTools methods, evaluate JavaScript, wait, screenshot."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command; return its result (events in between are skipped)."""
        ident = next(self._ids)
        await self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            reply = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if reply.get("id") == ident:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return dict(reply["result"])

    async def evaluate(self, expression: str) -> Any:
        """The value of *expression* in the page; a promise is awaited first."""
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(
        self, expression: str, timeout: float = 10.0, *, equals: Any = _TRUTHY
    ) -> Any:
        """Poll *expression* until it is truthy (or ``== equals``); return its value.

        An expression that throws (the page is still loading) counts as not yet.
        After *timeout* seconds the test fails with the last value.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.evaluate(expression)
            except RuntimeError as exc:
                value = exc
            else:
                if (value == equals) if equals is not _TRUTHY else value:
                    return value
            if time.monotonic() > deadline:
                wanted = "truthy" if equals is _TRUTHY else repr(equals)
                raise AssertionError(
                    f"{expression!r} still {value!r} after {timeout} s, expected {wanted}"
                )
            await asyncio.sleep(0.05)

    async def screenshot(self, path: Path) -> None:
        result = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(result["data"]))


@contextlib.asynccontextmanager
async def open_page(url: str = "about:blank") -> AsyncIterator[Page]:
    """Start headless Chromium on *url* with a fresh profile; yield its page."""
    binary = require_binary("chromium")
    with tempfile.TemporaryDirectory(
        prefix="ws-guard-chromium-", ignore_cleanup_errors=True
    ) as profile_dir:
        profile = Path(profile_dir)
        log_path = profile / "chromium.log"
        with log_path.open("wb") as log:
            # A session of its own: the browser's helpers join its group, stopped together.
            process = spawn(
                [binary, *FLAGS, f"--user-data-dir={profile}", url],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            port = await _devtools_port(profile / "DevToolsActivePort", process, log_path)
            target = await _page_socket(port, url)
            async with websockets.connect(target, proxy=None, max_size=None, open_timeout=10) as ws:
                yield Page(ws)
        finally:
            stop(process, signal.SIGTERM, grace=10)  # then SIGKILL for helpers that outlived it


async def _devtools_port(path: Path, process: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int(path.read_text().splitlines()[0])
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"chromium exited with {process.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError("chromium did not open its DevTools port within 30 s")
        await asyncio.sleep(0.05)


async def _page_socket(port: int, url: str) -> str:
    deadline = time.monotonic() + 15
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        while True:
            targets = (await client.get(f"http://127.0.0.1:{port}/json/list")).json()
            for target in targets:
                if target.get("type") == "page" and "webSocketDebuggerUrl" in target:
                    return str(target["webSocketDebuggerUrl"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"no page target for {url} in {targets}")
            await asyncio.sleep(0.05)
