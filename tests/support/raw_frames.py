"""Raw WebSocket frames for a client on a plain socket (RFC 6455 section 5).

For tests that need what the ``websockets`` client cannot do: put a whole
burst of messages on the wire in one write, so the server reads them all
at once, then read every frame the server sent back, in order.
"""

from __future__ import annotations

import os
import socket
import struct

from tests.support.slow_reader import _exactly

#: A text frame's opcode, and a close frame's.
TEXT, CLOSE = 0x1, 0x8


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
    texts: list[str] = []
    while True:
        header = _exactly(sock, 2)
        if header is None:
            return texts, None
        opcode, length = header[0] & 0x0F, header[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", _exactly(sock, 2) or b"\0\0")[0]
        elif length == 127:
            length = struct.unpack("!Q", _exactly(sock, 8) or bytes(8))[0]
        payload = _exactly(sock, length)
        if payload is None:
            return texts, None
        if opcode == CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            return texts, (code, payload[2:].decode())
        texts.append(payload.decode())
