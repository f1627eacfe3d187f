"""An app that reports who ws_guard says the client is, then echoes."""

from __future__ import annotations

import json

from tests.support.apps import echoed, http_ok
from ws_guard import connection_info
from ws_guard.types import Receive, Scope, Send


async def whoami(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept, send ``{"sub": ..., "claims": ...}`` after the first message, then echo.

    Reading the identity after the first ``receive()`` works for every token
    source, including ``from_first_message`` (whose message the app never sees).
    """
    if scope["type"] != "websocket":
        await http_ok(scope, receive, send)
        return
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    first = True
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if first:
            first = False
            info = connection_info(scope)
            assert info is not None
            claims = dict(info.claims) if info.claims is not None else None
            who = {"sub": info.subject, "claims": claims, "subprotocols": scope["subprotocols"]}
            await send({"type": "websocket.send", "text": json.dumps(who)})
        await send(echoed(message))
