"""What bounds a server's memory against big and compressed messages (docs/servers.md).

The server assembles (and, with permessage-deflate, decompresses) a whole
message before ws_guard sees it, so ``rules.MaxMessageSize`` cannot bound
memory: the server's own settings must. Each test starts a real server as a
subprocess on a free port with the settings docs/servers.md recommends, sends
an over-size message, or a compression bomb (20 MiB of one letter, about 20 KB
on the wire) where deflate is on, and asserts the server's exact close and how
far its peak resident memory grew.

The peak is the kernel's high-water mark (``VmHWM`` in ``/proc/<pid>/status``,
reset through ``/proc/<pid>/clear_refs``, Linux >= 4.0): a decompressed bomb is
freed within milliseconds, which sampling RSS would miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.paths import ROOT, SERVER_PATH
from tests.support.servers import free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset"
    ),
]

MIB = 1024 * 1024
SERVER_MAX = MIB  # --ws-max-size / websocket_max_message_size in every test
BOMB = "a" * (20 * MIB)  # deflates about 1000:1
OVER = "a" * (2 * MIB)  # twice the server's limit, sent uncompressed
#: Peak growth a bounded server stays under: one message of SERVER_MAX plus
#: buffers (measured: at most 2 MiB).
BOUNDED = 8 * MIB
#: Peak growth that shows a bomb was decompressed in full (measured: ~60 MiB,
#: the text, its UTF-8 copy and the assembled message).
UNBOUNDED = 20 * MIB


@contextlib.contextmanager
def server_process(argv: list[str], port: int) -> Iterator[psutil.Process]:
    """Run ``python -m <argv>`` serving ``tests.support.memory_app:app`` on *port*.

    Always stopped.
    """
    env = dict(os.environ, PYTHONPATH=SERVER_PATH)
    proc = subprocess.Popen(
        [sys.executable, "-m", *argv],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not listen on {port} (exit {proc.poll()})")
            time.sleep(0.05)
        yield psutil.Process(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def uvicorn(ws: str, *, deflate: bool, port: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "uvicorn",
        "tests.support.memory_app:app",
        "--port",
        str(port),
        "--ws",
        ws,
        "--ws-max-size",
        str(SERVER_MAX),
        "--ws-per-message-deflate",
        str(deflate).lower(),
        "--log-level",
        "critical",
        *extra,
    ]


def hypercorn(port: int, tmp_path: Path) -> list[str]:
    config = tmp_path / "hypercorn.toml"
    config.write_text(f"websocket_max_message_size = {SERVER_MAX}\n")
    # -w 0: serve in this process, not in a spawned worker we would not measure.
    return [
        "hypercorn",
        "tests.support.memory_app:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--config",
        str(config),
        "-w",
        "0",
    ]


def peak_rss(process: psutil.Process) -> int:
    """The process' peak resident set since the last reset, in bytes."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc status")


def reset_peak(process: psutil.Process) -> int:
    """Reset the peak to the current RSS (read with psutil) and return that."""
    Path(f"/proc/{process.pid}/clear_refs").write_text("5")
    return int(process.memory_info().rss)


async def warm_up(url: str) -> None:
    """One echo, so imports and first-connection allocations are behind the baseline."""
    async with connect(url, open_timeout=10) as ws:
        await ws.send("warm")
        assert await asyncio.wait_for(ws.recv(), 10) == "warm"


async def send_and_wait_for_close(ws: ClientConnection, message: str, timeout: float) -> None:
    """Send *message* and read until the server's close frame has arrived."""
    with contextlib.suppress(ConnectionClosed):
        await ws.send(message)
    deadline = time.monotonic() + timeout
    with contextlib.suppress(ConnectionClosed):
        while ws.protocol.close_rcvd is None and time.monotonic() < deadline:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.1)


async def peak_growth_of(
    process: psutil.Process, url: str, message: str, *, compress: bool
) -> tuple[int, int, str]:
    """Send *message* on a fresh connection: (close code, peak growth, close reason)."""
    await warm_up(url)
    base = reset_peak(process)
    async with connect(
        url, open_timeout=10, compression="deflate" if compress else None, close_timeout=10
    ) as ws:
        negotiated = bool(ws.protocol.extensions)
        assert negotiated == compress, ws.protocol.extensions
        await send_and_wait_for_close(ws, message, timeout=10)
        received = ws.protocol.close_rcvd
        assert received is not None, "the server never sent a close frame"
    growth = peak_rss(process) - base
    return received.code, growth, received.reason


# -- safe settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ws", "extra", "bomb_reason", "over_reason"),
    [
        pytest.param(
            "websockets-sansio",
            (),
            f"frame exceeds limit of {SERVER_MAX} bytes",
            f"frame with {len(OVER)} bytes exceeds limit of {SERVER_MAX} bytes",
            id="websockets-sansio",
        ),
        pytest.param("websockets", ("--ws-max-queue", "4"), "", "", id="websockets-legacy"),
    ],
)
async def test_websockets_stacks_bound_memory_with_deflate_on(
    ws: str, extra: tuple[str, ...], bomb_reason: str, over_reason: str
) -> None:
    """websockets decompresses at most ws_max_size bytes: a bomb costs nothing."""
    port = free_port()
    with server_process(uvicorn(ws, deflate=True, port=port, extra=extra), port) as process:
        url = f"ws://127.0.0.1:{port}/ws"
        code, growth, reason = await peak_growth_of(process, url, BOMB, compress=True)
        assert (code, reason) == (1009, bomb_reason)
        assert growth < BOUNDED, f"peak grew {growth / MIB:.1f} MiB on a bomb"
        code, growth, reason = await peak_growth_of(process, url, OVER, compress=False)
        assert (code, reason) == (1009, over_reason)
        assert growth < BOUNDED, f"peak grew {growth / MIB:.1f} MiB on an over-size message"


async def test_wsproto_with_deflate_off_bounds_memory_and_negotiates_no_compression() -> None:
    port = free_port()
    with server_process(uvicorn("wsproto", deflate=False, port=port), port) as process:
        url = f"ws://127.0.0.1:{port}/ws"
        async with connect(url, open_timeout=10, compression="deflate") as ws:
            assert ws.protocol.extensions == []  # asked for deflate, got none
        code, growth, reason = await peak_growth_of(process, url, OVER, compress=False)
        assert (code, reason) == (1009, f"Message exceeds the maximum size ({SERVER_MAX} bytes)")
        assert growth < BOUNDED, f"peak grew {growth / MIB:.1f} MiB on an over-size message"


# -- current server behaviour, documented as unsafe with compression ------------------


async def test_server_behaviour_wsproto_decompresses_a_bomb_past_ws_max_size() -> None:
    """Documents uvicorn 0.55 + wsproto 1.3: the limit is checked after decompression.

    wsproto inflates each read (up to 256 KiB compressed, ~1000:1) without a
    bound; uvicorn counts the result and only then closes 1009. If this test
    starts failing, the server got fixed: update docs/servers.md.
    """
    port = free_port()
    with server_process(uvicorn("wsproto", deflate=True, port=port), port) as process:
        url = f"ws://127.0.0.1:{port}/ws"
        code, growth, reason = await peak_growth_of(process, url, BOMB, compress=True)
    assert (code, reason) == (1009, f"Message exceeds the maximum size ({SERVER_MAX} bytes)")
    assert growth > UNBOUNDED, f"peak grew only {growth / MIB:.1f} MiB: wsproto now bounds it?"


async def test_server_behaviour_hypercorn_decompresses_a_bomb_past_its_limit(
    tmp_path: Path,
) -> None:
    """Documents hypercorn 0.18: deflate is always offered, and checked after inflating.

    ``websocket_max_message_size`` still closes 1009 (no reason), but only after
    wsproto inflated what was read, with no bound. An over-size plain message
    gets the close frame at once and stays bounded.
    """
    port = free_port()
    with server_process(hypercorn(port, tmp_path), port) as process:
        url = f"ws://127.0.0.1:{port}/ws"
        code, growth, reason = await peak_growth_of(process, url, BOMB, compress=True)
        assert (code, reason) == (1009, "")
        assert growth > UNBOUNDED, f"peak grew only {growth / MIB:.1f} MiB: hypercorn bounds it?"
        code, growth, reason = await peak_growth_of(process, url, OVER, compress=False)
        assert (code, reason) == (1009, "")
        assert growth < BOUNDED, f"peak grew {growth / MIB:.1f} MiB on an over-size message"
