"""``status_app`` and ``metrics_app`` as raw ASGI apps: lifespan, methods, other scopes.

Each can run alone under a server (so it completes lifespan itself), answers
only ``GET`` and ``HEAD`` (405 with ``Allow`` otherwise, RFC 9110 section
15.5.6), and leaves a WebSocket scope untouched: it sends nothing, so the
server refuses the handshake (HTTP 403 on uvicorn). Scripted ASGI exchanges.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ws_guard import ConfigurationError, Guard, metrics_app, status_app
from ws_guard.types import Message, Scope

App = Callable[[Scope, Any, Any], Awaitable[None]]


async def exchange(app: App, scope: Scope, incoming: list[Message]) -> list[Message]:
    """Run *app* on *scope*, feeding *incoming*; every message it sent."""
    queue = list(incoming)
    sent: list[Message] = []

    async def receive() -> Message:
        if not queue:
            raise AssertionError(f"the app read past the script; it sent {sent}")
        return queue.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def apps(guard: Guard) -> list[App]:
    return [status_app(guard), metrics_app(guard)]


@pytest.mark.parametrize("which", [0, 1])
async def test_lifespan_completes_and_ignores_other_messages(which: int) -> None:
    app = apps(Guard())[which]
    sent = await exchange(
        app,
        {"type": "lifespan"},
        [
            {"type": "lifespan.startup"},
            {"type": "lifespan.unknown"},  # a newer server's message: not ours to answer
            {"type": "lifespan.shutdown"},
        ],
    )
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]


@pytest.mark.parametrize("which", [0, 1])
async def test_a_websocket_scope_gets_nothing(which: int) -> None:
    app = apps(Guard())[which]
    scope = {"type": "websocket", "path": "/status.json", "headers": []}
    assert await exchange(app, scope, [{"type": "websocket.connect"}]) == []


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("method", ["POST", "DELETE", "OPTIONS"])
async def test_other_methods_get_405_with_allow(which: int, method: str) -> None:
    app = apps(Guard())[which]
    sent = await exchange(app, {"type": "http", "method": method, "path": "/", "headers": []}, [])
    body = b"method not allowed\n"
    assert sent == [
        {
            "type": "http.response.start",
            "status": 405,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"allow", b"GET, HEAD"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        },
        {"type": "http.response.body", "body": body},
    ]


async def test_status_head_has_the_headers_of_get_and_no_body() -> None:
    guard = Guard()
    app = status_app(guard)
    scope: Scope = {"type": "http", "path": "/", "headers": []}
    get = await exchange(app, {**scope, "method": "GET"}, [])
    head = await exchange(app, {**scope, "method": "HEAD"}, [])
    served = json.loads(get[1]["body"])
    expected = guard.metrics.snapshot().as_dict()
    assert served.pop("taken_at") <= expected.pop("taken_at")
    assert served == expected
    get_headers, head_headers = dict(get[0]["headers"]), dict(head[0]["headers"])
    assert get_headers[b"content-length"] == str(len(get[1]["body"])).encode()
    # The length of the body GET would send now (taken_at is the wall clock: it may differ).
    assert int(head_headers.pop(b"content-length")) > 0
    del get_headers[b"content-length"]
    assert (
        head_headers
        == get_headers
        == {
            b"content-type": b"application/json",
            b"cache-control": b"no-store",
        }
    )
    assert head[0]["status"] == get[0]["status"] == 200
    assert head[1] == {"type": "http.response.body", "body": b""}


@pytest.mark.parametrize("build", [status_app, metrics_app])
@pytest.mark.parametrize("guard", [None, "guard", object])
def test_anything_but_a_guard_is_refused(build: Callable[[Any], object], guard: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        build(guard)
    assert str(info.value) == f"{build.__name__} needs a Guard, not {guard!r}"
