"""ASGI servers as real processes on 127.0.0.1, one command line per server.

Each server runs its own CLI in a process group of its own
(``tests/support/children.py``), so a signal reaches it (and granian's
worker) as it would from a process manager, and nothing outlives the test.
The child imports this checkout's ws_guard and ``tests`` (``SERVER_PATH``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.support.children import running
from tests.support.paths import ROOT, SERVER_PATH
from tests.support.servers import free_port

#: Seconds a server gets to start listening.
START_TIMEOUT = 30.0


def _command(server: str, port: int, app: str) -> list[str]:
    """The command line that serves *app* (``module:attr``) with *server* on *port*."""
    python = [sys.executable, "-m"]
    if server == "granian":
        return [
            *python,
            "granian",
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--log-level",
            "warning",
            app,
        ]
    if server == "daphne":
        return [*python, "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "1", app]
    if server.startswith("uvicorn-"):
        return [
            *python,
            "uvicorn",
            "--ws",
            server.removeprefix("uvicorn-"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--lifespan",
            "on",
            "--log-level",
            "warning",
            app,
        ]
    if server in ("hypercorn-asyncio", "hypercorn-trio"):
        worker = server.removeprefix("hypercorn-")
        return [*python, "hypercorn", "-k", worker, "-b", f"127.0.0.1:{port}", app]
    raise ValueError(f"unknown server {server!r}")


@dataclass
class ServerProcess:
    """A running server: its name, ``host:port`` and process (the group leader)."""

    server: str
    base: str
    process: subprocess.Popen[Any]

    def url(self, path: str) -> str:
        return f"ws://{self.base}{path}"

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://{self.base}{path}", timeout=10) as response:
            return bytes(response.read())


@contextlib.contextmanager
def server_process(
    server: str, app: str, *, sig: int = signal.SIGTERM, **popen: Any
) -> Iterator[ServerProcess]:
    """Serve *app* with *server*, an id of ``tests/e2e/test_server_matrix.SERVERS``.

    Yields once the port accepts connections; on exit the process group gets
    *sig*, then SIGKILL after the grace of :func:`tests.support.children.stop`.
    """
    port = free_port()
    command = _command(server, port, app)
    env = dict(os.environ, PYTHONPATH=SERVER_PATH)
    with running(command, sig=sig, cwd=ROOT, env=env, **popen) as process:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{server} did not listen on {port}") from None
                time.sleep(0.05)
        yield ServerProcess(server, f"127.0.0.1:{port}", process)
