"""A real ``hypercorn -k trio`` server process, and what the trio e2e tests read from it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import websockets

from tests.support.children import running
from tests.support.paths import ROOT, SERVER_PATH
from tests.support.servers import free_port


@contextlib.contextmanager
def hypercorn_trio(app: str, **popen: Any) -> Iterator[tuple[str, subprocess.Popen[Any]]]:
    """``hypercorn -k trio <app>`` on 127.0.0.1; yields its host:port and process."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=SERVER_PATH)
    args = [sys.executable, "-m", "hypercorn", "-k", "trio", "-b", f"127.0.0.1:{port}", app]
    with running(args, cwd=ROOT, env=env, **popen) as process:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("hypercorn -k trio did not listen") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}", process


def http(base: str, path: str, method: str = "GET") -> bytes:
    request = urllib.request.Request(f"http://{base}{path}", method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return bytes(response.read())


async def closed_with(ws: Any) -> tuple[int, str]:
    """Read until the server's close; its code and reason."""
    while True:
        try:
            await ws.recv()
        except websockets.ConnectionClosed:
            break
    assert ws.close_code is not None
    return ws.close_code, ws.close_reason or ""
