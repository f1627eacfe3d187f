"""A real ``redis-server`` on a free port, for the Redis-backed tests.

No persistence (``--save "" --appendonly no``), so a restart starts empty,
like a crashed cache. ``kill()`` and ``start()`` on the same port let tests
take Redis away mid-run and bring it back. Each server runs in a session of
its own and is killed with its whole group on every way out (``children``).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.children import running, spawn, stop
from tests.support.servers import free_port
from tests.support.services import require_binary


class RedisServer:
    def __init__(
        self, binary: str, port: int | None = None, *, args: tuple[str, ...] = (), cwd: str = "."
    ) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = args
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.process = spawn(
            [
                self.binary,
                *self.args,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            cwd=self.cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._wait_ready(self.process, timeout)
        except BaseException:  # also KeyboardInterrupt: no redis-server outlives its start
            self.kill()
            raise

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ping():
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)

    def ping(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), 0.2) as sock,
        ):
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    def kill(self) -> None:
        """Take Redis away at once, as a crash would."""
        if self.process is not None:
            stop(self.process, signal.SIGKILL)
            self.process = None

    def command(self, *args: str) -> bytes:
        """One raw command, for checks from the test itself (reply's first line)."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), 2) as sock:
            sock.sendall(payload.encode())
            return sock.recv(65536)

    def zcard(self, key: str) -> int:
        """Members of the sorted set *key* (a cap's slots), read by the test itself."""
        return int(self.command("ZCARD", key).strip().lstrip(b":"))


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(require_binary("redis-server"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@contextlib.contextmanager
def redis_cluster() -> Iterator[str]:
    """A one-node Redis Cluster owning every slot; yields its ``redis+cluster://`` URI."""
    binary = require_binary("redis-server")
    with tempfile.TemporaryDirectory() as workdir:
        node = RedisServer(
            binary,
            # The bus port defaults to port + 10000, past 65535 for a high free port.
            args=(
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *("--cluster-port", str(free_port())),
            ),
            cwd=workdir,
        )
        node.start()
        try:
            node.command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
            deadline = time.monotonic() + 10
            while b"cluster_state:ok" not in node.command("CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the one-node cluster never reached cluster_state:ok")
                time.sleep(0.05)
            yield f"redis+cluster://127.0.0.1:{node.port}"
        finally:
            node.kill()


@contextlib.contextmanager
def redis_sentinel() -> Iterator[str]:
    """A Redis primary watched by one Sentinel; yields its ``redis+sentinel://`` URI."""
    binary = require_binary("redis-server")
    with tempfile.TemporaryDirectory() as workdir, redis_server() as primary:
        port = free_port()
        config = Path(workdir) / "sentinel.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\nsentinel monitor primary 127.0.0.1 {primary.port} 1\n"
        )
        with running(
            [binary, str(config), "--sentinel"],
            sig=signal.SIGKILL,
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as sentinel:
            probe = RedisServer(binary, port)
            deadline = time.monotonic() + 10
            while b"127.0.0.1" not in _command_or_empty(
                probe, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "primary"
            ):
                if sentinel.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis sentinel did not come up")
                time.sleep(0.05)
            yield f"redis+sentinel://127.0.0.1:{port}/primary"


def _command_or_empty(server: RedisServer, *args: str) -> bytes:
    try:
        return server.command(*args)
    except OSError:
        return b""
