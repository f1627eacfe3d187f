"""Raw WebSocket frames for a client on a plain socket (RFC 6455 section 5).

For tests that need what the ``websockets`` client cannot do: put a whole
burst of messages on the wire in one write, so the server reads them all
at once, then read every frame the server sent back, in order.
"""

from __future__ import annotations

import os
import socket

from tests.support.slow_reader import frames_until_close

#: A text frame's opcode.
TEXT = 0x1


def masked_text(text: str) -> bytes:
    """One final, masked text frame carrying *text* (a client must mask, section 5.3)."""
    payload = text.encode()
    if len(payload) > 125:
        raise ValueError(f"only short frames here, not {len(payload)} bytes")
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | TEXT, 0x80 | len(payload)]) + mask + body


def frames_to_close(sock: socket.socket) -> tuple[list[str], tuple[int, str] | None]:
    """The text of every data frame until the server's close: (texts, (code, reason) or None)."""
    payloads, close = frames_until_close(sock)
    return [payload.decode() for payload in payloads], close
