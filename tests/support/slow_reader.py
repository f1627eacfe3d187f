"""A WebSocket client that stops reading: a raw socket, for slow-consumer tests.

The real ``websockets`` client reads in the background, so it cannot stall
a server; this one completes the handshake, then reads nothing until the
test calls :func:`read_to_close`, which reads every frame to the end and
returns the close frame's code and reason, if one came.
"""

from __future__ import annotations

import base64
import os
import socket
import struct

#: A small receive buffer, so the server's buffers fill after a few hundred KiB.
RCVBUF = 64 * 1024


def stalled_client(port: int, path: str = "/ws") -> socket.socket:
    """Handshake on 127.0.0.1:*port*; the socket is positioned at the first frame."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)  # byte by byte: leave every frame unread
        if not chunk:
            raise ConnectionError(f"closed during the handshake after {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {head!r}")
    return sock


def _exactly(sock: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def frames_until_close(sock: socket.socket) -> tuple[list[bytes], tuple[int, str] | None]:
    """Every data frame's payload until the server's close: (payloads, (code, reason) or None)."""
    payloads: list[bytes] = []
    while True:
        header = _exactly(sock, 2)
        if header is None:
            return payloads, None
        opcode, length = header[0] & 0x0F, header[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", _exactly(sock, 2) or b"\0\0")[0]
        elif length == 127:
            length = struct.unpack("!Q", _exactly(sock, 8) or bytes(8))[0]
        payload = _exactly(sock, length)
        if payload is None:
            return payloads, None
        if opcode == 0x8:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            return payloads, (code, payload[2:].decode())
        payloads.append(payload)


def read_to_close(sock: socket.socket) -> tuple[int, tuple[int, str] | None]:
    """Read server frames until a close frame or EOF: (data frames read, (code, reason) or None)."""
    payloads, close = frames_until_close(sock)
    return len(payloads), close
