"""What a real ``websockets`` client sees of a server, in one comparable value."""

from __future__ import annotations

from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus


async def outcome(url: str, *send: str) -> tuple[Any, ...]:
    """Connect to *url*, send each of *send*, read until the close.

    ``("http", status)`` when the handshake was refused over HTTP, else
    ``("closed", messages received, (code, reason))``; the last item is
    ``None`` when the connection ended without a close frame.
    """
    try:
        async with connect(url, open_timeout=5, close_timeout=5) as ws:
            for text in send:
                await ws.send(text)
            received = []
            try:
                while True:
                    received.append(await ws.recv())
            except ConnectionClosed as closed:
                rcvd = closed.rcvd
                return ("closed", tuple(received), rcvd and (rcvd.code, rcvd.reason))
    except InvalidStatus as refused:
        return ("http", refused.response.status_code)
