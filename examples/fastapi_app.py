"""A FastAPI echo endpoint guarded by ws_guard, with its metrics for Prometheus.

Install, then serve from this file's directory; the WebSocket is at
ws://127.0.0.1:8000/ws and the metrics at http://127.0.0.1:8000/metrics:

    python -m pip install "ws-guard[prometheus]" fastapi "uvicorn[standard]"
    uvicorn fastapi_app:app
"""

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from ws_guard import Guard, WSGuardMiddleware, metrics_app, rules

guard = Guard(
    rules=[
        rules.MaxMessageSize(64 * 1024),  # 1009 message_too_big
        # receive_text() cannot take a binary frame; refuse it with a close code.
        rules.MessageTypes(text=True, binary=False),  # 1003 unsupported_data
    ],
    paths=["/ws"],
)

app = FastAPI()
app.add_middleware(WSGuardMiddleware, guard=guard)
# A route answers GET /metrics itself; app.mount("/metrics", ...) would
# answer it with a 307 redirect to /metrics/.
app.add_route("/metrics", metrics_app(guard))


@app.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass
