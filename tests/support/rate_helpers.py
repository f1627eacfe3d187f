"""Shared bits of the rate-limit tests: a test-only subject rule and a fake clock."""

from __future__ import annotations

import asyncio
from typing import Any

import websockets

from ws_guard import rules
from ws_guard._core.connection import Connection
from ws_guard._core.decisions import Close
from ws_guard.testing import ManualClock, ScriptedWebSocket


class HeaderSubject(rules.Rule):
    """Test-only stand-in for JWT auth: the subject is the ``x-user`` header."""

    stage = rules.Stage.AUTH
    provides_subject = True

    async def admit(self, conn: Connection) -> Close | None:
        conn.subject = conn.header("x-user")
        return None


class Clock(ManualClock):
    """A settable clock for Guard(clock=...), at 1000 s unless told."""

    def __init__(self, now: float = 1000.0) -> None:
        super().__init__(now)


def user(name: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-user", name.encode())]


async def read_until_closed(ws: Any, timeout: float = 5.0) -> tuple[list[Any], int, str]:
    """Every message until the server closes, then the close code and reason."""
    received: list[Any] = []
    try:
        while True:
            received.append(await asyncio.wait_for(ws.recv(), timeout))
    except websockets.ConnectionClosed as exc:
        if exc.rcvd is None:
            raise AssertionError("the connection ended without a close frame") from exc
        return received, exc.rcvd.code, exc.rcvd.reason


async def echoes(ws: ScriptedWebSocket, n: int, text: str = "m") -> None:
    """Send *n* texts (``m0``, ``m1``, ...) and expect each echoed back at once."""
    for i in range(n):
        await ws.send_text(f"{text}{i}")
        await ws.expect("websocket.send", text=f"{text}{i}")
