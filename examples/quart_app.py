"""A Quart echo endpoint guarded by ws_guard.

Install, then run this file (or serve it from this file's directory with
``uvicorn quart_app:app``); the WebSocket is at ws://127.0.0.1:8000/ws:

    python -m pip install ws-guard quart "uvicorn[standard]"
    python examples/quart_app.py

Quart wraps its ASGI callable in ``app.asgi_app``, so the guard goes there and
``app`` stays a Quart object (``app.run()`` and ``quart run`` keep working).
Quart's own refusals pass through unchanged: ``abort(403)`` before the
connection is accepted (here ``/members``) is Quart's HTTP 403 response, and
``websocket.close(code, reason)`` after it is the client's close frame.
"""

import uvicorn
from quart import Quart, abort, websocket

from ws_guard import Guard, WSGuardMiddleware, rules

guard = Guard(
    rules=[
        rules.MaxMessageSize(64 * 1024),  # 1009 message_too_big
        rules.MessageTypes(text=True, binary=False),  # 1003 unsupported_data
    ],
    paths=["/ws", "/members"],
)

app = Quart(__name__)


@app.websocket("/ws")
async def echo() -> None:
    # Quart accepts on the first receive and cancels this handler when the
    # connection closes, whoever closed it (the client or ws_guard).
    while True:
        await websocket.send(await websocket.receive())


@app.websocket("/members")
async def members() -> None:
    if "session" not in websocket.cookies:
        abort(403)  # before accept: Quart's own HTTP 403 response
    await websocket.send("welcome")


app.asgi_app = WSGuardMiddleware(app.asgi_app, guard=guard)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=8000)
