"""A subprotocol token offered more than once leaves no copy in the app's scope.

``from_subprotocol`` takes the entry after the marker; a client (or a
proxy) may offer the token again, in the same ``Sec-WebSocket-Protocol``
line or on a line of its own (RFC 6455 section 11.3.4 allows the header to
repeat). Every copy goes: from ``scope["subprotocols"]``, from each header
line, and a line left with nothing is dropped. In process, real PyJWT.
"""

from __future__ import annotations

import pytest

from tests.support.apps import Recorder
from tests.support.jwt_keys import SECRET, mint
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket

TOKEN = mint()
PROTOCOL = b"sec-websocket-protocol"


async def seen_by_app(
    subprotocols: list[str], lines: list[bytes]
) -> tuple[Recorder, dict[str, object]]:
    """Connect offering *subprotocols* (header *lines*); the app and ws_guard's accept."""
    app = Recorder()
    guard = Guard(
        rules=[rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_subprotocol())]
    )
    ws = ScriptedWebSocket(
        WSGuardMiddleware(app, guard=guard),
        headers=[(b"host", b"example.com"), *((PROTOCOL, line) for line in lines)],
        subprotocols=subprotocols,
    )
    await ws.connect()
    accept = await ws.expect("websocket.accept")
    await ws.disconnect()
    await ws.finished()
    return app, dict(accept)


@pytest.mark.parametrize(
    ("subprotocols", "lines", "app_subprotocols", "app_lines"),
    [
        (  # the token again on a line of its own: that line is dropped
            ["access_token", TOKEN, TOKEN],
            [f"access_token, {TOKEN}".encode(), TOKEN.encode()],
            ["access_token"],
            [b"access_token"],
        ),
        (  # the token before the marker too, beside another protocol
            [TOKEN, "chat", "access_token", TOKEN],
            [f"{TOKEN}, chat".encode(), f"access_token, {TOKEN}".encode()],
            ["chat", "access_token"],
            [b"chat", b"access_token"],
        ),
        (  # every line holds only the token but the marker's
            ["access_token", TOKEN, TOKEN],
            [b"access_token", TOKEN.encode(), f" {TOKEN} ,{TOKEN}".encode()],
            ["access_token"],
            [b"access_token"],
        ),
    ],
)
async def test_every_copy_of_the_token_is_removed(
    subprotocols: list[str], lines: list[bytes], app_subprotocols: list[str], app_lines: list[bytes]
) -> None:
    app, accept = await seen_by_app(subprotocols, lines)
    assert accept == {"type": "websocket.accept", "subprotocol": "access_token"}
    (scope,) = app.scopes
    assert scope["subprotocols"] == app_subprotocols
    assert [v for k, v in scope["headers"] if k == PROTOCOL] == app_lines
    assert scope["headers"][0] == (b"host", b"example.com")  # other lines untouched
    assert TOKEN not in repr(scope)
