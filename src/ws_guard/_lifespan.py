"""The lifespan answer of ws_guard's own small ASGI apps (status page, metrics, admin)."""

from __future__ import annotations

from ws_guard.types import Receive, Send


async def acknowledge_lifespan(receive: Receive, send: Send) -> None:
    """Answer startup and shutdown as complete: the guard is started by the app it guards."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
