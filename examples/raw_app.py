"""A plain ASGI echo app, no framework, guarded by ws_guard.

Run this file (or serve it from this file's directory with
``uvicorn raw_app:app``); the WebSocket is at ws://127.0.0.1:8000/ws:

    python -m pip install ws-guard "uvicorn[standard]"
    python examples/raw_app.py

``WSGuardMiddleware(app, guard=guard)`` wraps any ASGI callable. The app's
own messages pass through unchanged: a ``websocket.close`` before
``websocket.accept`` (here on ``/members``) is the server's HTTP 403, and a
close after accept reaches the client with the app's code and reason.
"""

from typing import Any

import uvicorn

from ws_guard import Guard, WSGuardMiddleware, rules

guard = Guard(
    rules=[
        rules.MaxMessageSize(64 * 1024),  # 1009 message_too_big
        rules.MessageTypes(text=True, binary=False),  # 1003 unsupported_data
    ],
)


async def lifespan(receive: Any, send: Any) -> None:
    # Answering the lifespan lets the server run ws_guard's startup and drain.
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


async def echo(scope: Any, receive: Any, send: Any) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    if scope["path"] == "/members" and b"session" not in dict(scope["headers"]).get(b"cookie", b""):
        await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return  # the client left, or ws_guard closed the connection (same code)
        await send({"type": "websocket.send", "text": message.get("text")})


async def plain_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif scope["type"] == "websocket":
        await echo(scope, receive, send)
    else:  # http: nothing here
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not found"})


app = WSGuardMiddleware(plain_app, guard=guard)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=8000)
