"""Reading a real ``websockets`` client connection to the server's close."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from websockets.exceptions import ConnectionClosed


async def server_close(ws: Any, timeout: float = 5.0) -> tuple[int | None, str | None]:
    """Read (and drop) messages until the connection closes; its close code and reason.

    Fails the test when no close arrives within *timeout* seconds.
    """

    async def drain() -> None:
        while True:
            await ws.recv()

    with contextlib.suppress(ConnectionClosed):
        await asyncio.wait_for(drain(), timeout)  # drain() only ends by raising
    return ws.close_code, ws.close_reason
